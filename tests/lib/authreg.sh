# tests/lib/authreg.sh: registries with TLS, htpasswd or token auth, for the
# t02* tests (issue 5). Source it after lib.sh.
#
#   make_ca DIR                CA + server certificate for 127.0.0.1/127.0.0.2
#                              (DIR/ca.crt, DIR/server.crt, DIR/server.key)
#   make_htpasswd FILE USER PASS
#   docker_config DIR HOSTPORT USER PASS   writes DIR/config.json (auths.<host>.auth)
#   start_registry_cfg NAME SCHEME YAML    docker-registry with YAML appended to
#                                          the config; sets REG (HOST:PORT),
#                                          REG_LOG, REG_STORAGE; SCHEME http|https
#   reg_log_count LOG PATTERN              how many access-log lines match

make_ca() {
	local d=$1
	mkdir -p "$d" &&
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=nixoci test CA" \
		-keyout "$d/ca.key" -out "$d/ca.crt" \
		-addext basicConstraints=critical,CA:TRUE \
		-addext keyUsage=critical,keyCertSign,cRLSign >"$d/openssl.log" 2>&1 &&
	openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
		-keyout "$d/server.key" -out "$d/server.csr" >>"$d/openssl.log" 2>&1 &&
	printf '%s\n' 'subjectAltName=IP:127.0.0.1,IP:127.0.0.2,DNS:localhost' \
		'basicConstraints=CA:FALSE' 'extendedKeyUsage=serverAuth' >"$d/ext.cnf" &&
	openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
		-CAcreateserial -days 2 -extfile "$d/ext.cnf" -out "$d/server.crt" \
		>>"$d/openssl.log" 2>&1
}

make_htpasswd() {
	# docker-registry accepts bcrypt only
	htpasswd -Bbc "$1" "$2" "$3" >/dev/null 2>&1
}

docker_config() {
	local dir=$1 host=$2 user=$3 pass=$4
	mkdir -p "$dir" &&
	printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$host" \
		"$(printf '%s:%s' "$user" "$pass" | base64 -w0)" >"$dir/config.json"
}

# Up when /v2/ answers anything at all (401 included).
reg_cfg_ready() {
	local url=$1 pid=$2 cacert=$3 code
	pid_alive "$pid" || return 0
	code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
		${cacert:+--cacert "$cacert"} "$url/v2/" 2>/dev/null)
	[ -n "$code" ] && [ "$code" != 000 ]
}

start_registry_cfg() {
	local name=$1 scheme=$2 extra=$3 port dir pid try
	for try in 1 2 3; do
		port=$(free_port) || return 1
		dir=$TRASH/registry-$name
		mkdir -p "$dir/storage"
		{
			cat <<-EOF
			version: 0.1
			log:
			  level: info
			  accesslog:
			    disabled: false
			storage:
			  filesystem:
			    rootdirectory: $dir/storage
			  maintenance:
			    uploadpurging:
			      enabled: false
			EOF
			printf '%s\n' "$extra" | sed "s/@PORT@/$port/g"
		} >"$dir/config.yml"
		docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
		pid=$!
		test_atexit "stop_registry $pid"
		if test_wait_for 20 reg_cfg_ready "$scheme://127.0.0.1:$port" "$pid" \
			"${CA_DIR:+$CA_DIR/ca.crt}" && pid_alive "$pid"; then
			REG=127.0.0.1:$port
			REG_LOG=$dir/log
			REG_STORAGE=$dir/storage
			REG_PID=$pid
			return 0
		fi
		stop_registry "$pid"
		grep -q "address already in use" "$dir/log" || break
	done
	echo "docker-registry did not start; its log:" >&2
	tail -n 20 "$dir/log" >&2
	return 1
}

reg_log_count() {
	grep -c -- "$2" "$1" 2>/dev/null || true
}

# start_tokenserver DIR USER PASS: a token server (tokenserver.py) with a
# fresh signing certificate DIR/signing.crt (the registry's rootcertbundle);
# sets TOKEN_URL, TOKEN_LOG and TOKEN_EXPIRES (write a number there to change
# expires_in of the next tokens).
start_tokenserver() {
	local d=$1 pid
	mkdir -p "$d" &&
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=nixoci token signer" \
		-keyout "$d/signing.key" -out "$d/signing.crt" >"$d/openssl.log" 2>&1 || return 1
	TOKEN_LOG=$d/tokens.log
	TOKEN_EXPIRES=$d/expires_in
	: >"$TOKEN_LOG"
	/usr/bin/python3 "$TEST_LIB_DIR/tokenserver.py" --key "$d/signing.key" \
		--cert "$d/signing.crt" --issuer nixoci-test-issuer --user "$2" --password "$3" \
		--expires-in 300 --expires-in-file "$TOKEN_EXPIRES" --port-file "$d/port" \
		--log "$TOKEN_LOG" >"$d/server.log" 2>&1 &
	pid=$!
	test_atexit "kill $pid 2>/dev/null; wait $pid 2>/dev/null; true"
	test_wait_for 20 test -s "$d/port" || { cat "$d/server.log" >&2; return 1; }
	TOKEN_URL=http://127.0.0.1:$(cat "$d/port")/token
}

token_count() {
	grep -c "^token ${1:-}" "$TOKEN_LOG" || true
}

# Polls until @secs seconds have passed since @start (date +%s): a token's
# lifetime is the one thing a test has to let pass.
elapsed_since() {
	[ $(($(date +%s) - $1)) -ge "$2" ]
}

# start_redirect_front REGISTRY STORAGE_DIR: tests/lib/redirect.py in front
# of REGISTRY; sets FRONT (HOST:PORT) and REDIRECT_LOG.
start_redirect_front() {
	local pid
	REDIRECT_LOG=$TRASH/redirect.log
	/usr/bin/python3 "$TEST_LIB_DIR/redirect.py" --registry "$1" --storage-dir "$2" \
		--port-file "$TRASH/redirect.ports" --log "$REDIRECT_LOG" \
		>"$TRASH/redirect.out" 2>&1 &
	pid=$!
	test_atexit "kill $pid 2>/dev/null; wait $pid 2>/dev/null; true"
	test_wait_for 20 test -s "$TRASH/redirect.ports" || { cat "$TRASH/redirect.out" >&2; return 1; }
	FRONT=127.0.0.1:$(cut -d" " -f1 "$TRASH/redirect.ports")
}
