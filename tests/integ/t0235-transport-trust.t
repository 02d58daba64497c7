#!/bin/bash
test_description='https is never downgraded: no redirect to http, no plain-http fallback

An https registry that redirects a tag or manifest request (or a blob) to
plain http is refused with a line that says so, and the http server never
sees the request. With insecure, a TLS handshake that fails is an error: the
request is never sent again over plain http (where Basic credentials would
follow it in clear).'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/authreg.sh"

test_require_cmd docker-registry curl openssl /usr/bin/python3
test_require_nix
test_require_binaries

export HOME=$TRASH/home
unset REGISTRY_AUTH_FILE XDG_RUNTIME_DIR XDG_CONFIG_HOME DOCKER_CONFIG
mkdir -p "$HOME"

# an https front that answers /v2/ and redirects everything else to
# http://$REG (the same path): a downgrading registry or CDN
start_downgrade_front() {
	local port
	port=$(free_port) || return 1
	/usr/bin/python3 - "$port" "$CA_DIR/server.crt" "$CA_DIR/server.key" "$REG" \
		>"$TRASH/front.log" 2>&1 <<-'EOF' &
	import http.server, ssl, sys
	port, crt, key, up = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
	class H(http.server.BaseHTTPRequestHandler):
	    def do_GET(self):
	        if self.path.rstrip("/") == "/v2":
	            self.send_response(200)
	            self.send_header("Content-Length", "2")
	            self.end_headers()
	            self.wfile.write(b"{}")
	            return
	        self.send_response(307)
	        self.send_header("Location", "http://%s%s" % (up, self.path))
	        self.send_header("Content-Length", "0")
	        self.end_headers()
	    do_HEAD = do_GET
	s = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
	c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
	c.load_cert_chain(crt, key)
	s.socket = c.wrap_socket(s.socket, server_side=True)
	s.serve_forever()
	EOF
	FRONT_PID=$!
	test_atexit "kill $FRONT_PID"
	FRONT=127.0.0.1:$port
	test_wait_for 10 curl -fsS -o /dev/null --cacert "$CA_DIR/server.crt" --cacert "$CA_DIR/ca.crt" \
		"https://$FRONT/v2/"
}

test_expect_success 'setup: a CA, a plain registry with a path, the downgrading https front' '
	CA_DIR=$TRASH/ca && make_ca "$CA_DIR" &&
	start_registry && REG_LOG=$TRASH/registry-reg/log &&
	build_small_closure &&
	nixoci push "$REG/small" "$SMALL" >push.out 2>&1 &&
	start_downgrade_front
'

test_expect_success 'an https registry redirecting the tag list to http: refused, never followed' '
	n0=$(reg_log_count "$REG_LOG" "\"GET /v2/small/tags/list") &&
	! nixoci ls --cafile "$CA_DIR/ca.crt" "https://$FRONT/small" >ls.out 2>err &&
	cat err &&
	grep -q "refusing a redirect from https to plain http" err &&
	test "$(reg_log_count "$REG_LOG" "\"GET /v2/small/tags/list")" = "$n0"
'

test_expect_success 'a manifest by tag: refused the same way' '
	p=$(echo "$SMALL_CLOSURE" | head -n 1) &&
	n0=$(reg_log_count "$REG_LOG" "\"GET /v2/small/") &&
	! nixoci info --cafile "$CA_DIR/ca.crt" "https://$FRONT/small" "$p" >info.out 2>err2 &&
	cat err2 &&
	grep -q "refusing a redirect from https to plain http" err2 &&
	test "$(reg_log_count "$REG_LOG" "\"GET /v2/small/")" = "$n0"
'

test_expect_success 'insecure and a failed TLS handshake: an error, no plain-http request' '
	n0=$(reg_log_count "$REG_LOG" "\"GET /v2/") &&
	! nixoci ls --insecure "https://$REG/small" >ls2.out 2>err3 &&
	cat err3 &&
	grep -q "tls handshake failed" err3 &&
	grep -q "plain http is never tried" err3 &&
	test "$(reg_log_count "$REG_LOG" "\"GET /v2/")" = "$n0"
'

test_done
