#!/bin/sh
# tests/lib/install-deps.sh [--update]: install the Debian packages listed in
# tests/lib/deps.txt that are missing. Needs root; with --update it runs
# apt-get update first (CI), otherwise only when something is missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
pkgs=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$here/deps.txt")
missing=
for p in $pkgs; do
	st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	case $st in *" installed") ;; *) missing="$missing $p" ;; esac
done
if [ "${1:-}" = --update ] || [ -n "$missing" ]; then
	if [ "$(id -u)" != 0 ]; then
		[ -z "$missing" ] && exit 0
		echo "install-deps: missing packages:$missing (run as root to install)" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update
	[ -z "$missing" ] || apt-get install -y $missing
fi
# podman with runc in a container cannot always set the default rlimits;
# Debian ships no containers.conf, so add one only when there is none.
if [ "$(id -u)" = 0 ] && [ ! -e /etc/containers/containers.conf ]; then
	mkdir -p /etc/containers
	printf '[containers]\ndefault_ulimits = []\n' >/etc/containers/containers.conf
fi
