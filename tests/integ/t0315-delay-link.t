#!/bin/bash
test_description='the benchmarks'"'"' delay link (bench/delayproxy.c)

bench/delayproxy in front of a real docker-registry: blobs and ranges come
through byte for byte (also a 24 MiB one, also over kept-alive
connections), pushes work (nixoci push, and a chunked PATCH made with
curl), each request is one log line with the fields the bench scripts read
(method, path, range=, status, bytes=), delay=MS in the control file makes
a request take at least MS ms and logs its start with inflight=, a mount
reads through it, no descriptor is left behind, and SIGTERM ends it with
status 0.'
. "$(dirname "$0")/../lib/lib.sh"
. "$TEST_LIB_DIR/faults.sh"

test_require_cmd docker-registry curl cmp
test_require_nix
test_require_fuse
test_require_binaries

MNT=$TRASH/mnt
# lines of the request log (one per request; "begin" lines only while a
# delay is set)
requests() { grep -c -- ' -> ' "$PROXY_LOG" || true; }
log_since() { tail -n +$(($1 + 1)) "$PROXY_LOG"; }
lines() { wc -l <"$PROXY_LOG"; }
# upload FILE REPO: a monolithic upload (POST, then PUT with the bytes)
# through the proxy; prints the digest
upload() {
	local d loc
	d=sha256:$(sha256sum "$1" | cut -d" " -f1)
	loc=$(curl -fsS --max-time 60 -X POST -D - -o /dev/null "http://$PROXY/v2/$2/blobs/uploads/" |
		tr -d '\r' | awk -F': ' 'tolower($1) == "location" { print $2 }') &&
	case $loc in http*) ;; *) loc=http://$PROXY$loc ;; esac &&
	case $loc in *\?*) loc="$loc&digest=$d" ;; *) loc="$loc?digest=$d" ;; esac &&
	curl -fsS --max-time 60 -X PUT -H "Content-Type: application/octet-stream" \
		--data-binary @"$1" -o /dev/null "$loc" &&
	echo "$d"
}
# the proxy's sockets: at rest only the listening one (each connection
# adds two: the client's and the registry's)
sock_count() { ls -l "/proc/$PROXY_PID/fd" | grep -c "socket:" || true; }
fds_at_most() { [ "$(sock_count)" -le "$1" ]; }
fds_over() { [ "$(sock_count)" -gt "$1" ]; }

test_expect_success 'setup: registry, the delay link in front of it' '
	start_registry &&
	start_delayproxy "$REG" &&
	grep -q "listening on 127.0.0.1:${PROXY#*:}" "$PROXY_LOG" &&
	FD0=1 &&
	test_wait_for 10 fds_at_most $FD0 &&
	echo "sockets at rest: $(sock_count)"
'

test_expect_success 'a monolithic upload and a blob GET: the same bytes, one line each' '
	head -c 300000 /dev/urandom >small.bin &&
	n=$(lines) &&
	D_SMALL=$(upload small.bin link) &&
	curl -fsS -o got.bin "http://$PROXY/v2/link/blobs/$D_SMALL" &&
	cmp small.bin got.bin &&
	log_since $n >l.out && cat l.out &&
	grep -E "^[0-9]+\.[0-9]{3} POST /v2/link/blobs/uploads/ range=- -> 202 pass bytes=[0-9]+$" l.out &&
	grep -E "^[0-9]+\.[0-9]{3} PUT /v2/link/blobs/uploads/[^ ]*digest=sha256[^ ]* range=- -> 201 pass bytes=[0-9]+$" l.out &&
	grep -E "^[0-9]+\.[0-9]{3} GET /v2/link/blobs/$D_SMALL range=- -> 200 pass bytes=300000$" l.out &&
	test "$(grep -c -- " -> " l.out)" = 3 &&
	test "$(wc -l <l.out)" = 3
'

test_expect_success 'a Range GET: those bytes, range= and bytes= logged' '
	n=$(lines) &&
	curl -fsS -r 1000-4999 -o part.bin "http://$PROXY/v2/link/blobs/$D_SMALL" &&
	tail -c +1001 small.bin | head -c 4000 >want.bin &&
	cmp want.bin part.bin &&
	log_since $n >l.out && cat l.out &&
	grep -E " GET /v2/link/blobs/$D_SMALL range=bytes=1000-4999 -> 206 pass bytes=4000$" l.out &&
	n=$(lines) &&
	curl -fsS -I -o /dev/null "http://$PROXY/v2/link/blobs/$D_SMALL" &&
	log_since $n | grep -E " HEAD /v2/link/blobs/$D_SMALL range=- -> 200 pass bytes=0$"
'

test_expect_success 'a 24 MiB blob, and requests kept alive on one connection' '
	head -c $((24 << 20)) /dev/urandom >big.bin &&
	D_BIG=$(upload big.bin link) &&
	n=$(lines) &&
	curl -fsS -o big1.bin "http://$PROXY/v2/link/blobs/$D_BIG" \
		--next -fsS -o big2.bin -r 0-99 "http://$PROXY/v2/link/blobs/$D_BIG" \
		--next -fsS -o got.bin "http://$PROXY/v2/link/blobs/$D_SMALL" &&
	cmp big.bin big1.bin && head -c 100 big.bin | cmp - big2.bin && cmp small.bin got.bin &&
	log_since $n >l.out && cat l.out &&
	grep -E " GET /v2/link/blobs/$D_BIG range=- -> 200 pass bytes=25165824$" l.out &&
	grep -E " GET /v2/link/blobs/$D_BIG range=bytes=0-99 -> 206 pass bytes=100$" l.out &&
	test "$(grep -c -- " -> " l.out)" = 3
'

test_expect_success 'a chunked PATCH upload comes through (chunk framing followed)' '
	head -c 200000 /dev/urandom >chunk.bin &&
	d=sha256:$(sha256sum chunk.bin | cut -d" " -f1) &&
	n=$(lines) &&
	loc=$(curl -fsS -X POST -D - -o /dev/null "http://$PROXY/v2/link/blobs/uploads/" |
		tr -d "\r" | awk -F": " "tolower(\$1) == \"location\" { print \$2 }") &&
	case $loc in http*) ;; *) loc=http://$PROXY$loc ;; esac &&
	loc=$(curl -fsS -X PATCH -H "Transfer-Encoding: chunked" -H "Content-Type: application/octet-stream" \
		--data-binary @chunk.bin -D - -o /dev/null "$loc" |
		tr -d "\r" | awk -F": " "tolower(\$1) == \"location\" { print \$2 }") &&
	case $loc in http*) ;; *) loc=http://$PROXY$loc ;; esac &&
	case $loc in *\?*) loc="$loc&digest=$d" ;; *) loc="$loc?digest=$d" ;; esac &&
	curl -fsS -X PUT -o /dev/null "$loc" &&
	curl -fsS -o got.bin "http://$REG/v2/link/blobs/$d" &&
	cmp chunk.bin got.bin &&
	log_since $n >l.out && cat l.out &&
	grep -E " PATCH /v2/link/blobs/uploads/[^ ]* range=- -> 202 pass bytes=" l.out &&
	test "$(grep -c -- " -> " l.out)" = 3
'

test_expect_success 'nixoci push through it, then a mount through it reads the closure' '
	build_small_closure &&
	n=$(requests) &&
	nixoci push --jobs 4 --tag small "$PROXY/small" $SMALL_CLOSURE &&
	test "$(requests)" -gt "$n" &&
	mount_store "$PROXY/small" "$MNT" "closure=small" &&
	check_mount_hashes "$MNT" $SMALL_CLOSURE &&
	unmount_store "$MNT"
'

test_expect_success 'delay=MS: a request takes at least MS ms, its start is logged with inflight=' '
	echo "mode=pass delay=300" >"$PROXY_CTL.tmp" && mv -f "$PROXY_CTL.tmp" "$PROXY_CTL" &&
	n=$(lines) &&
	t0=$(date +%s%N) &&
	curl -fsS -o got.bin "http://$PROXY/v2/link/blobs/$D_SMALL" &&
	t1=$(date +%s%N) &&
	cmp small.bin got.bin &&
	echo "took $(((t1 - t0) / 1000000)) ms" &&
	test $(((t1 - t0) / 1000000)) -ge 300 &&
	log_since $n >l.out && cat l.out &&
	grep -E "^[0-9.]+ begin GET /v2/link/blobs/$D_SMALL inflight=1$" l.out &&
	test "$(grep -c -- " -> " l.out)" = 1 &&
	: four at once: each logs its start, the last sees all four held &&
	n=$(lines) &&
	for i in 1 2 3 4; do
		curl -fsS -o /dev/null "http://$PROXY/v2/link/blobs/$D_SMALL" & eval p$i=$!
	done &&
	wait $p1 && wait $p2 && wait $p3 && wait $p4 &&
	log_since $n >l.out && cat l.out &&
	test "$(grep -c " begin GET " l.out)" = 4 &&
	test "$(grep -c -- " -> 200 pass bytes=300000" l.out)" = 4 &&
	: a body of many pieces, each held: all of it goes on &&
	head -c $((12 << 20)) /dev/urandom >mid.bin &&
	d=$(upload mid.bin link) &&
	curl -fsS --max-time 60 -o got.bin "http://$PROXY/v2/link/blobs/$d" &&
	cmp mid.bin got.bin &&
	echo "mode=pass" >"$PROXY_CTL.tmp" && mv -f "$PROXY_CTL.tmp" "$PROXY_CTL"
'

test_expect_success 'handshake=N: a new connection waits N round trips before its first request' '
	echo "mode=pass delay=300 handshake=1" >"$PROXY_CTL.tmp" && mv -f "$PROXY_CTL.tmp" "$PROXY_CTL" &&
	n=$(lines) &&
	t0=$(date +%s%N) &&
	curl -fsS -o got.bin "http://$PROXY/v2/link/blobs/$D_SMALL" \
		-w "%{time_starttransfer}\n" -o got2.bin "http://$PROXY/v2/link/blobs/$D_SMALL" >times &&
	t1=$(date +%s%N) &&
	cmp small.bin got.bin && cmp small.bin got2.bin &&
	cat times && echo "took $(((t1 - t0) / 1000000)) ms" &&
	: the first request: set-up and its own round trip, the second: its own &&
	test $(((t1 - t0) / 1000000)) -ge 900 &&
	log_since $n >l.out && cat l.out &&
	test "$(grep -cE "^[0-9.]+ connect n=[0-9]+$" l.out)" = 1 &&
	test "$(grep -c -- " -> 200 pass bytes=300000" l.out)" = 2 &&
	: without it, no connect lines &&
	echo "mode=pass delay=300" >"$PROXY_CTL.tmp" && mv -f "$PROXY_CTL.tmp" "$PROXY_CTL" &&
	n=$(lines) &&
	curl -fsS -o got.bin "http://$PROXY/v2/link/blobs/$D_SMALL" &&
	log_since $n >l.out && ! grep " connect " l.out &&
	grep "handshake 1 round trips" "${PROXY_LOG%/log}/stderr" &&
	echo "mode=pass" >"$PROXY_CTL.tmp" && mv -f "$PROXY_CTL.tmp" "$PROXY_CTL"
'

test_expect_success 'a fault word is refused on stderr (faults need faultproxy)' '
	echo "mode=reset" >"$PROXY_CTL.tmp" && mv -f "$PROXY_CTL.tmp" "$PROXY_CTL" &&
	curl -fsS -o got.bin "http://$PROXY/v2/link/blobs/$D_SMALL" &&
	cmp small.bin got.bin &&
	grep "control: ignoring mode=reset" "${PROXY_LOG%/log}/stderr" &&
	echo "mode=pass" >"$PROXY_CTL.tmp" && mv -f "$PROXY_CTL.tmp" "$PROXY_CTL"
'

test_expect_success 'a client that hangs up mid-answer: logged as cut, no descriptor left' '
	n=$(lines) &&
	{ curl -sS --max-filesize 1 -o /dev/null "http://$PROXY/v2/link/blobs/$D_BIG" 2>/dev/null; true; } &&
	/usr/bin/python3 -c "
import socket, sys
s = socket.create_connection((\"127.0.0.1\", int(sys.argv[1])))
s.sendall(b\"GET /v2/link/blobs/$D_BIG HTTP/1.1\r\nHost: x\r\n\r\n\")
s.recv(1000)
s.close()" "${PROXY#*:}" &&
	test_wait_for 10 fds_at_most "$FD0" &&
	log_since $n >l.out && cat l.out &&
	grep -E " GET /v2/link/blobs/$D_BIG range=- -> 200 cut bytes=[0-9]+$" l.out &&
	pid_alive "$PROXY_PID" &&
	curl -fsS -o got.bin "http://$PROXY/v2/link/blobs/$D_SMALL" && cmp small.bin got.bin
'

test_expect_success 'the registry goes away mid-answer and comes back: the link stays up' '
	n=$(lines) &&
	/usr/bin/python3 -c "
import os, socket, sys, time
s = socket.create_connection((\"127.0.0.1\", int(sys.argv[1])))
s.sendall(b\"GET /v2/link/blobs/$D_BIG HTTP/1.1\r\nHost: x\r\n\r\n\")
s.recv(1000)
open(\"started\", \"w\").close()
# not reading: the answer cannot be complete when the registry goes away
while not os.path.exists(\"gone\"):
    time.sleep(0.05)
s.settimeout(30)
while s.recv(65536):
    pass
print(\"the link closed the connection\")" "${PROXY#*:}" &
	reader=$! &&
	test_wait_for 10 test -e started &&
	stop_registry "$REG_PID_reg" &&
	touch gone &&
	wait_pid_status "$reader" 30 st && test "$st" = 0 &&
	test_wait_for 10 fds_at_most "$FD0" &&
	! curl -fsS -o /dev/null --max-time 5 "http://$PROXY/v2/" &&
	pid_alive "$PROXY_PID" &&
	restart_registry &&
	curl -fsS -o got.bin "http://$PROXY/v2/link/blobs/$D_SMALL" && cmp small.bin got.bin &&
	log_since $n >l.out && cat l.out &&
	grep -E " GET /v2/link/blobs/$D_BIG range=- -> 200 cut bytes=[0-9]+$" l.out
'

test_expect_success 'SIGTERM with a kept-alive connection open: exit status 0' '
	/usr/bin/python3 -c "
import socket, sys, time
s = socket.create_connection((\"127.0.0.1\", int(sys.argv[1])))
s.sendall(b\"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n\")
s.recv(1000)
time.sleep(30)" "${PROXY#*:}" &
	idle=$! &&
	st=none &&
	test_wait_for 10 fds_over "$FD0" &&
	kill -TERM "$PROXY_PID" &&
	wait_pid_status "$PROXY_PID" 10 st &&
	{ kill "$idle" 2>/dev/null; wait "$idle" 2>/dev/null; true; } &&
	echo "exit status $st" &&
	test "$st" = 0 &&
	tail -n 1 "$PROXY_LOG" | grep " stopped$"
'

test_done
