package main

import (
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestReleasePushesIndexAndSBOMAndNeverMovesATag releases to an in-process
// registry (the referrers API on, as hack/registry runs it): the tag names
// an index whose image has its SBOM as a referrer; the same build again is
// accepted; another build under the same version is refused and the tag
// still names the first.
func TestReleasePushesIndexAndSBOMAndNeverMovesATag(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir()) // anonymous: no credentials of this machine
	srv := httptest.NewServer(registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	dir := t.TempDir()
	first, second := staticBinary(t, dir, "first"), staticBinary(t, dir, "second")
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----"), 0o644); err != nil {
		t.Fatal(err)
	}
	zoneinfo := filepath.Join(dir, "zoneinfo")
	if err := os.MkdirAll(zoneinfo, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(zoneinfo, "UTC"), []byte("TZif"), 0o644); err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimPrefix(srv.URL, "http://") + "/ehr/ehr-operator:v1.2.3"
	opts := func(bin string) options {
		return options{push: ref, platforms: platforms{"amd64": bin}, path: "/ehr-operator", cmd: "manager",
			uid: 65532, version: "v1.2.3", caCerts: ca, tzdata: zoneinfo}
	}

	if err := release(opts(first)); err != nil {
		t.Fatalf("first release: %v", err)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(tag)
	if err != nil {
		t.Fatalf("the tag does not name an index: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Platform == nil || im.Manifests[0].Platform.Architecture != "amd64" {
		t.Fatalf("index manifests %+v, want one linux/amd64 image", im.Manifests)
	}
	refs, err := remote.Referrers(tag.Context().Digest(im.Manifests[0].Digest.String()))
	if err != nil {
		t.Fatal(err)
	}
	rm, err := refs.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(rm.Manifests) != 1 {
		t.Fatalf("%d referrers of the image, want its SBOM", len(rm.Manifests))
	}
	sbom, err := remote.Image(tag.Context().Digest(rm.Manifests[0].Digest.String()))
	if err != nil {
		t.Fatal(err)
	}
	layers, err := sbom.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("SBOM layers %d, %v; want one", len(layers), err)
	}
	if mt, _ := layers[0].MediaType(); mt != spdxJSON {
		t.Errorf("SBOM layer media type %q, want %q", mt, spdxJSON)
	}
	pushed, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}

	if err := release(opts(first)); err != nil {
		t.Errorf("the same build released again (a re-run): %v", err)
	}
	err = release(opts(second))
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("another build under a released version: %v, want a refusal", err)
	}
	if d, err := remote.Head(tag); err != nil || d.Digest != pushed {
		t.Errorf("the tag names %v (%v) after the refused release, want the first index %s", d, err, pushed)
	}
}

// staticBinary builds a small static linux/amd64 program that prints word.
func staticBinary(t *testing.T, dir, word string) string {
	t.Helper()
	src := filepath.Join(dir, word+".go")
	if err := os.WriteFile(src, []byte("package main\n\nfunc main() { println(\""+word+"\") }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, word)
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=", "GO111MODULE=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", word, err, out)
	}
	return bin
}
