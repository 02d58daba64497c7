package main

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func blobPath(dir string, d digest.Digest) string {
	return filepath.Join(dir, "blobs", d.Algorithm().String(), d.Encoded())
}

func readJSON(path string, v interface{}) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// writeBlob stores r under its digest in the layout dir; returns digest, size.
func writeBlob(dir string, r io.Reader) (digest.Digest, int64, error) {
	bdir := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(bdir, 0755); err != nil {
		return "", 0, err
	}
	f, err := os.CreateTemp(bdir, ".tmp-")
	if err != nil {
		return "", 0, err
	}
	defer os.Remove(f.Name())
	dg := digest.Canonical.Digester()
	n, err := io.Copy(io.MultiWriter(f, dg.Hash()), r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", 0, err
	}
	d := dg.Digest()
	return d, n, os.Rename(f.Name(), blobPath(dir, d))
}

func writeJSONBlob(dir string, v interface{}) (digest.Digest, int64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", 0, err
	}
	f, err := os.CreateTemp(dir, ".json-")
	if err != nil {
		return "", 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		return "", 0, err
	}
	if _, err := f.Seek(0, 0); err != nil {
		return "", 0, err
	}
	return writeBlob(dir, f)
}

// convertLayer rebuilds one (gzip or plain) tar layer as eStargz.
func convertLayer(in, out string, l ocispec.Descriptor) (ocispec.Descriptor, digest.Digest, error) {
	f, err := os.Open(blobPath(in, l.Digest))
	if err != nil {
		return l, "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return l, "", err
	}
	// Build's defaults are ctr-remote's: gzip -9, 4 MiB chunks, no
	// prioritized files (a no-prefetch landmark is added).
	blob, err := estargz.Build(io.NewSectionReader(f, 0, st.Size()))
	if err != nil {
		return l, "", fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	defer blob.Close()
	// The uncompressed size annotation is the size of the eStargz blob
	// decompressed (the snapshotter sizes its layer cache from it), so the
	// blob is decompressed as it is written.
	pr, pw := io.Pipe()
	usize := make(chan int64, 1)
	go func() {
		var n int64
		zr, err := gzip.NewReader(pr)
		if err == nil {
			n, err = io.Copy(io.Discard, zr)
		}
		if err != nil {
			pr.CloseWithError(err)
			n = -1
		}
		io.Copy(io.Discard, pr)
		usize <- n
	}()
	d, n, err := writeBlob(out, io.TeeReader(blob, pw))
	pw.CloseWithError(err)
	un := <-usize
	if err != nil {
		return l, "", err
	}
	if un < 0 {
		return l, "", fmt.Errorf("layer %s: the eStargz blob built does not decompress", l.Digest)
	}
	desc := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageLayerGzip,
		Digest:    d,
		Size:      n,
		Annotations: map[string]string{
			estargz.TOCJSONDigestAnnotation:         blob.TOCDigest().String(),
			estargz.StoreUncompressedSizeAnnotation: strconv.FormatInt(un, 10),
		},
	}
	// DiffID is known once the blob has been read to its end.
	return desc, blob.DiffID(), nil
}

func runConvert(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: convert IN-OCI-DIR OUT-OCI-DIR")
	}
	in, out := args[0], args[1]
	var idx ocispec.Index
	if err := readJSON(filepath.Join(in, "index.json"), &idx); err != nil {
		return err
	}
	if len(idx.Manifests) != 1 {
		return fmt.Errorf("%s: want one manifest in index.json, found %d", in, len(idx.Manifests))
	}
	var man ocispec.Manifest
	if err := readJSON(blobPath(in, idx.Manifests[0].Digest), &man); err != nil {
		return err
	}
	// The config is kept as generic JSON: only rootfs.diff_ids changes.
	var cfg map[string]interface{}
	if err := readJSON(blobPath(in, man.Config.Digest), &cfg); err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0755); err != nil {
		return err
	}
	var diffIDs []string
	for i, l := range man.Layers {
		desc, diffID, err := convertLayer(in, out, l)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "nixoci-estargz convert: layer %d/%d: %d -> %d bytes\n",
			i+1, len(man.Layers), l.Size, desc.Size)
		man.Layers[i] = desc
		diffIDs = append(diffIDs, diffID.String())
	}
	rootfs, _ := cfg["rootfs"].(map[string]interface{})
	if rootfs == nil {
		return fmt.Errorf("%s: config has no rootfs", in)
	}
	rootfs["diff_ids"] = diffIDs
	cd, cs, err := writeJSONBlob(out, cfg)
	if err != nil {
		return err
	}
	man.Config.Digest, man.Config.Size = cd, cs
	man.MediaType = ocispec.MediaTypeImageManifest
	md, ms, err := writeJSONBlob(out, man)
	if err != nil {
		return err
	}
	oidx := ocispec.Index{
		Versioned: idx.Versioned,
		Manifests: []ocispec.Descriptor{{
			MediaType:   ocispec.MediaTypeImageManifest,
			Digest:      md,
			Size:        ms,
			Annotations: map[string]string{ocispec.AnnotationRefName: "latest"},
		}},
	}
	b, _ := json.Marshal(oidx)
	if err := os.WriteFile(filepath.Join(out, "index.json"), b, 0644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0644)
}
