package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/containerd/stargz-snapshotter/fs/source"
)

// The prefetch size label ctr-remote rpull gives each layer (10 MiB); with
// no prioritized files in the image (the convert above adds none) the
// snapshotter prefetches nothing, so it only matters for optimized images.
const rpullPrefetchSize = 10 << 20

func runRpull(args []string) error {
	fl := flag.NewFlagSet("rpull", flag.ExitOnError)
	address := fl.String("address", "", "containerd's socket")
	ns := fl.String("namespace", "default", "containerd namespace")
	snapshotter := fl.String("snapshotter", "stargz", "the proxy snapshotter's name in containerd's config")
	fl.Parse(args)
	if *address == "" || fl.NArg() != 1 {
		return fmt.Errorf("usage: rpull -address SOCK REF")
	}
	ref := fl.Arg(0)
	client, err := containerd.New(*address)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), *ns)
	ctx, done, err := client.WithLease(ctx)
	if err != nil {
		return err
	}
	defer done(ctx)
	// Loopback registries over plain http, as ctr --plain-http and
	// docker do for localhost.
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchLocalhost)),
	})
	_, err = client.Pull(ctx, ref,
		containerd.WithResolver(resolver),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(*snapshotter),
		// The labels that make the snapshotter mount each layer from the
		// registry (reference, layer digest, the image's other layers)
		// instead of letting containerd fetch and unpack it.
		containerd.WithImageHandlerWrapper(source.AppendDefaultLabelsHandlerWrapper(ref, rpullPrefetchSize)),
	)
	return err
}
