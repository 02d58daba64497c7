# tests/lib/lazy.sh: helpers for the lazy-read and cache tests (t01*).
# Source after lib.sh.

# det_bytes SEED N: N deterministic, incompressible bytes on stdout (AES-CTR
# of zeros), so the same store path comes out on every run and Nix keeps it.
det_bytes() {
	local key
	key=$(printf '%s' "$1" | sha256sum | cut -c1-32)
	openssl enc -aes-128-ctr -nosalt -K "$key" -iv 00000000000000000000000000000000 \
		</dev/zero 2>/dev/null | head -c "$2"
}

# make_data_path NAME FILE:MIB...: a store path NAME holding the given files
# of deterministic random bytes; prints the store path.
make_data_path() {
	local name=$1 dir spec f
	shift
	dir=$TRASH/src-$name
	rm -rf "$dir"
	mkdir -p "$dir"
	for spec in "$@"; do
		f=${spec%%:*}
		det_bytes "$name/$f" $((${spec#*:} << 20)) >"$dir/$f" || return 1
	done
	nix-store --add "$dir" && rm -rf "$dir"
}

# stat_val MNT KEY: one counter of the mount's stats xattr.
stat_val() {
	nixoci stats "$1" | awk -v k="$2" '$1 == k { print $2 }'
}

# now_ms: wall clock in milliseconds.
now_ms() { echo $(($(date +%s%N) / 1000000)); }
