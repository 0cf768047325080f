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
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestBuildWritesLoadableImage builds an image the way `make image` does
// and reads it back as `ctr images import` would: the tag, the config
// (non-root user, entrypoint, default command) and the files of the layer,
// among them both binaries; the same inputs again give the same digest.
func TestBuildWritesLoadableImage(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "fake-binary")
	if err := os.WriteFile(bin, []byte("#!binary"), 0o600); err != nil {
		t.Fatal(err)
	}
	receiver := filepath.Join(dir, "fake-receiver")
	if err := os.WriteFile(receiver, []byte("#!receiver"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "image.tar")
	o := options{binary: bin, path: "/ehr-operator", extra: receiver, extraPath: "/ehr-receiver", cmd: "manager",
		tag: "ehr-operator:test", out: out, uid: 65532, version: "test", caCerts: ca}
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

	files, contents := imageFiles(t, img)
	for _, f := range []string{"ehr-operator", "ehr-receiver", "etc/passwd", "etc/group", "tmp", "home/nonroot",
		"etc/ssl/certs/ca-certificates.crt"} {
		if files[f] == nil {
			t.Errorf("%s is missing from the layer", f)
		}
	}
	for f, want := range map[string]string{"ehr-operator": "#!binary", "ehr-receiver": "#!receiver"} {
		if h := files[f]; h != nil && (h.Mode != 0o755 || h.Typeflag != tar.TypeReg || contents[f] != want) {
			t.Errorf("/%s: mode %o, type %c, content %q; want a 755 file of %q", f, h.Mode, h.Typeflag, contents[f], want)
		}
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

	// Reproducible: the same inputs, another output file, the same digest.
	o.out = filepath.Join(dir, "again.tar")
	if err := build(o); err != nil {
		t.Fatalf("build again: %v", err)
	}
	again, err := tarball.ImageFromPath(o.out, &tag)
	if err != nil {
		t.Fatal(err)
	}
	d1, err1 := img.Digest()
	d2, err2 := again.Digest()
	if err1 != nil || err2 != nil || d1 != d2 {
		t.Errorf("the same inputs gave the images %v (%v) and %v (%v), want one digest", d1, err1, d2, err2)
	}
}

// imageFiles are the headers and contents of img's files, by name without
// a trailing slash.
func imageFiles(t *testing.T, img v1.Image) (map[string]*tar.Header, map[string]string) {
	t.Helper()
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
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		contents[n] = string(b)
	}
	return files, contents
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

// TestBuildRejectsAnIncompleteExtraBinary: each extra-binary flag without
// the others, or an extra binary at the main one's path, is an error naming
// the flag, and no image is written.
func TestBuildRejectsAnIncompleteExtraBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.WriteFile(bin, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(*options)
		want string
	}{
		{"--extra without --extra-path", func(o *options) { o.extra = bin }, "need --extra-path"},
		{"--extra-path without --extra", func(o *options) { o.extraPath = "/ehr-receiver" }, "needs --extra FILE"},
		{"--extra-platform in build mode", func(o *options) {
			o.extraPath, o.extraPlatforms = "/ehr-receiver", platforms{"amd64": bin}
		}, "--extra-platform is for release mode"},
		{"the main binary's path", func(o *options) { o.extra, o.extraPath = bin, "ehr-operator" }, "is also --path"},
		{"a host file's path", func(o *options) { o.extra, o.extraPath = bin, "/etc/passwd" }, "etc/passwd is twice"},
		{"a missing extra binary", func(o *options) {
			o.extra, o.extraPath = filepath.Join(dir, "absent"), "/ehr-receiver"
		}, "while reading the binary for /ehr-receiver"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, "o.tar")
			o := options{binary: bin, path: "/ehr-operator", tag: "x:y", out: out, uid: 65532}
			tc.edit(&o)
			if err := build(o); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("build: %v, want an error with %q", err, tc.want)
			}
			if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("an image was written (%v)", err)
			}
		})
	}
}
