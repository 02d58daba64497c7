package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/reference"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/containerd/containerd/snapshots/overlay/overlayutils"
	stargzfs "github.com/containerd/stargz-snapshotter/fs"
	fsconfig "github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/fs/layer"
	"github.com/containerd/stargz-snapshotter/fs/source"
	snbase "github.com/containerd/stargz-snapshotter/snapshot"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

// registryHosts: anonymous access, plain http for loopback registries (as
// the snapshotter's own resolver does for localhost), https otherwise.
// service/resolver would do the same but imports the Kubernetes CRI API,
// which Debian 12 does not package; hence also no service.NewStargzSnapshotterService.
func registryHosts(ref reference.Spec) ([]docker.RegistryHost, error) {
	// The fetcher wraps client.Transport itself, so it must be set.
	client := &http.Client{
		Transport: http.DefaultTransport.(*http.Transport).Clone(),
		Timeout:   30 * time.Second,
	}
	h := docker.RegistryHost{
		Client:       client,
		Host:         ref.Hostname(),
		Scheme:       "https",
		Path:         "/v2",
		Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
		Authorizer:   docker.NewDockerAuthorizer(docker.WithAuthClient(client)),
	}
	if local, _ := docker.MatchLocalhost(h.Host); local {
		h.Scheme = "http"
	}
	return []docker.RegistryHost{h}, nil
}

func runSnapshotter(args []string) error {
	fl := flag.NewFlagSet("snapshotter", flag.ExitOnError)
	root := fl.String("root", "", "state directory (snapshots, layer cache)")
	address := fl.String("address", "", "unix socket to serve the snapshots API on")
	cfgPath := fl.String("config", "", "TOML file with the filesystem's config (fs/config.Config, optional)")
	level := fl.String("log-level", "warn", "logrus level")
	fl.Parse(args)
	if *root == "" || *address == "" {
		return fmt.Errorf("-root and -address are required")
	}
	lvl, err := logrus.ParseLevel(*level)
	if err != nil {
		return err
	}
	logrus.SetLevel(lvl)
	// Zero values are the snapshotter's defaults (what an empty
	// /etc/containerd-stargz-grpc/config.toml gives upstream).
	var cfg fsconfig.Config
	if *cfgPath != "" {
		if _, err := toml.DecodeFile(*cfgPath, &cfg); err != nil {
			return fmt.Errorf("%s: %w", *cfgPath, err)
		}
	}
	ctx := log.WithLogger(context.Background(), logrus.NewEntry(logrus.StandardLogger()))
	snRoot := filepath.Join(*root, "snapshotter")
	if err := os.MkdirAll(snRoot, 0700); err != nil {
		return err
	}
	// The wiring of service.NewStargzSnapshotterService, minus CRI labels.
	opq := layer.OverlayOpaqueTrusted
	if userx, err := overlayutils.NeedsUserXAttr(snRoot); err == nil && userx {
		opq = layer.OverlayOpaqueUser
	}
	fs, err := stargzfs.NewFilesystem(filepath.Join(*root, "stargz"), cfg,
		stargzfs.WithGetSources(source.FromDefaultLabels(registryHosts)),
		stargzfs.WithOverlayOpaqueType(opq))
	if err != nil {
		return fmt.Errorf("filesystem: %w", err)
	}
	sn, err := snbase.NewSnapshotter(ctx, snRoot, fs, snbase.AsynchronousRemove)
	if err != nil {
		return fmt.Errorf("snapshotter: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(*address), 0700); err != nil {
		return err
	}
	os.Remove(*address) // a socket left by a killed run
	l, err := net.Listen("unix", *address)
	if err != nil {
		sn.Close()
		return err
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case s := <-sig:
		log.G(ctx).Infof("%v: stopping", s)
		srv.Stop()
	case err = <-done:
	}
	// Close unmounts every layer the snapshotter mounted (FUSE), so a bench
	// that stops it with SIGTERM leaves no mount behind.
	if cerr := sn.Close(); cerr != nil && err == nil {
		err = cerr
	}
	os.Remove(*address)
	return err
}
