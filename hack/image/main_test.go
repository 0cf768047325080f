package main

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestBuildWritesLoadableImage builds an image the way `make image` does
// and reads it back as `ctr images import` would: the tag, the config
// (non-root user, entrypoint, default command) and the files of the layer.
func TestBuildWritesLoadableImage(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "fake-binary")
	if err := os.WriteFile(bin, []byte("#!binary"), 0o600); err != nil {
		t.Fatal(err)
	}
	zoneinfo := filepath.Join(dir, "zoneinfo")
	if err := os.MkdirAll(filepath.Join(zoneinfo, "America"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(zoneinfo, "right"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"America/New_York", "UTC", "right/UTC"} {
		if err := os.WriteFile(filepath.Join(zoneinfo, f), []byte("TZif"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "image.tar")
	o := options{binary: bin, path: "/ehr-operator", cmd: "manager", tag: "ehr-operator:test", out: out,
		uid: 65532, version: "test", caCerts: ca, tzdata: zoneinfo}
	if err := build(o); err != nil {
		t.Fatalf("build: %v", err)
	}

	tag, err := name.NewTag("ehr-operator:test")
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatalf("reading the image back: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	got := []string{cf.OS, cf.Config.User, strings.Join(cf.Config.Entrypoint, " "), strings.Join(cf.Config.Cmd, " ")}
	want := []string{"linux", "65532:65532", "/ehr-operator", "manager"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("config mismatch (-want +got):\n%s", diff)
	}

	files := map[string]*tar.Header{}
	contents := map[string]string{}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n := strings.TrimSuffix(h.Name, "/")
		files[n] = h
		b, _ := io.ReadAll(tr)
		contents[n] = string(b)
	}
	for _, f := range []string{"ehr-operator", "etc/passwd", "etc/group", "tmp", "home/nonroot",
		"etc/ssl/certs/ca-certificates.crt", "usr/share/zoneinfo/America/New_York", "usr/share/zoneinfo/UTC"} {
		if files[f] == nil {
			t.Errorf("%s is missing from the layer", f)
		}
	}
	if files["usr/share/zoneinfo/right/UTC"] != nil {
		t.Error("the zoneinfo \"right\" variant should be left out")
	}
	if h := files["ehr-operator"]; h != nil && (h.Mode != 0o755 || contents["ehr-operator"] != "#!binary") {
		t.Errorf("binary: mode %o, content %q; want 755 and the file's bytes", h.Mode, contents["ehr-operator"])
	}
	if h := files["tmp"]; h != nil && h.Mode != 0o1777 {
		t.Errorf("/tmp mode %o, want 1777", h.Mode)
	}
	if !strings.Contains(contents["etc/passwd"], "nonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd has no nonroot user 65532:\n%s", contents["etc/passwd"])
	}
	if h := files["home/nonroot"]; h != nil && (h.Uid != 65532 || h.Gid != 65532) {
		t.Errorf("/home/nonroot owned by %d:%d, want 65532:65532", h.Uid, h.Gid)
	}
}

// TestBuildRejectsBadInput: a missing binary or an invalid tag is an error,
// not an empty image.
func TestBuildRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	if err := build(options{binary: filepath.Join(dir, "absent"), tag: "x:y", out: filepath.Join(dir, "o.tar")}); err == nil {
		t.Error("build with a missing binary succeeded")
	}
	bin := filepath.Join(dir, "bin")
	if err := os.WriteFile(bin, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := build(options{binary: bin, path: "/bin", tag: "Not A Tag", out: filepath.Join(dir, "o.tar")}); err == nil {
		t.Error("build with an invalid tag succeeded")
	}
}
