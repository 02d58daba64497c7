// nixoci-estargz: the eStargz side of bench/cold-rtt.sh (issue 13, item 6).
//
// Debian 12 ships stargz-snapshotter 0.12 only as a Go library (no
// containerd-stargz-grpc, no ctr-remote), so this one binary gives the bench
// the three things it needs from it:
//
//	nixoci-estargz snapshotter -root DIR -address SOCK [-config FILE]
//	    the stargz snapshotter as a containerd proxy plugin (gRPC snapshots
//	    API on a unix socket), what containerd-stargz-grpc does upstream
//	nixoci-estargz convert IN-OCI-DIR OUT-OCI-DIR
//	    every layer of an OCI image layout rebuilt as eStargz (gzip -9 as
//	    ctr-remote's default, no prioritized files), the TOC digest and
//	    uncompressed size annotated on each layer descriptor
//	nixoci-estargz rpull -address SOCK REF
//	    a lazy pull into containerd with the stargz snapshotter: the layer
//	    descriptors get the remote-snapshot labels (what ctr-remote rpull
//	    adds), so layers are mounted from the registry instead of fetched
//
// Built by bench/estargz.sh with GO111MODULE=off against /usr/share/gocode.
package main

import (
	"fmt"
	"os"
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: nixoci-estargz snapshotter|convert|rpull ARGS (see bench/estargz/main.go)")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "snapshotter":
		err = runSnapshotter(os.Args[2:])
	case "convert":
		err = runConvert(os.Args[2:])
	case "rpull":
		err = runRpull(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "nixoci-estargz %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
