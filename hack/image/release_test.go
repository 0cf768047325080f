package main

import (
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestReleasePushesIndexAndSBOMAndNeverMovesATag releases to an in-process
// registry (the referrers API on, as hack/registry runs it): the tag names
// an index whose image holds both binaries and has its SBOM, which says it
// covers the extra binary, as a referrer; the same build again is accepted;
// another build under the same version, of either binary, is refused and
// the tag still names the first.
func TestReleasePushesIndexAndSBOMAndNeverMovesATag(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir()) // anonymous: no credentials of this machine
	srv := httptest.NewServer(registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	dir := t.TempDir()
	first, second := staticBinary(t, dir, "first"), staticBinary(t, dir, "second")
	receiver, receiver2 := staticBinary(t, dir, "receiver"), staticBinary(t, dir, "receiver2")
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----"), 0o644); err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimPrefix(srv.URL, "http://") + "/ehr/ehr-operator:v1.2.3"
	opts := func(bin, recv string) options {
		return options{push: ref, platforms: platforms{"amd64": bin}, path: "/ehr-operator", cmd: "manager",
			extraPath: "/ehr-receiver", extraPlatforms: platforms{"amd64": recv},
			uid: 65532, version: "v1.2.3", caCerts: ca}
	}

	if err := release(opts(first, receiver)); err != nil {
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
	img, err := remote.Image(tag.Context().Digest(im.Manifests[0].Digest.String()))
	if err != nil {
		t.Fatal(err)
	}
	files, contents := imageFiles(t, img)
	for f, bin := range map[string]string{"ehr-operator": first, "ehr-receiver": receiver} {
		want, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		if h := files[f]; h == nil || h.Mode != 0o755 || contents[f] != string(want) {
			t.Errorf("/%s in the pushed image: %+v, %d bytes; want a 755 file, the %d of %s", f, h, len(contents[f]), len(want), bin)
		}
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
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	var doc spdxDocument
	err = json.NewDecoder(rc).Decode(&doc)
	rc.Close()
	if err != nil || len(doc.Packages) == 0 || doc.Packages[0].SPDXID != "SPDXRef-Package-main" ||
		!strings.Contains(doc.Packages[0].Comment, "describes the image's /ehr-receiver") {
		t.Errorf("SBOM %v %+v: want its main package to say it describes /ehr-receiver too", err, doc.Packages)
	}
	pushed, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}

	if err := release(opts(first, receiver)); err != nil {
		t.Errorf("the same build released again (a re-run): %v", err)
	}
	for _, o := range []options{opts(second, receiver), opts(first, receiver2)} {
		err = release(o)
		if err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Errorf("another build (%v, %v) under a released version: %v, want a refusal", o.platforms, o.extraPlatforms, err)
		}
	}
	if d, err := remote.Head(tag); err != nil || d.Digest != pushed {
		t.Errorf("the tag names %v (%v) after the refused release, want the first index %s", d, err, pushed)
	}
}

// TestReleaseRefusesWhatTheSBOMWouldNotCover: release checks the extra
// binaries as it checks the main ones, wants one per platform, and refuses
// one that links a module the main binary does not (the image's SBOM is
// made from the main binary's modules), before pushing anything. The other
// way round, the main binary linking more, is released.
func TestReleaseRefusesWhatTheSBOMWouldNotCover(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	srv := httptest.NewServer(registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	mod := testModule(t, t.TempDir())
	plain, withCmp := moduleBinary(t, mod, "plain", "amd64"), moduleBinary(t, mod, "withcmp", "amd64")
	plainArm := moduleBinary(t, mod, "plain", "arm64")
	ref := strings.TrimPrefix(srv.URL, "http://") + "/ehr/ehr-operator:v1.2.3"
	opts := func(bin string, extra platforms) options {
		o := options{push: ref, platforms: platforms{"amd64": bin}, path: "/ehr-operator", uid: 65532, version: "v1.2.3", extraPlatforms: extra}
		if extra != nil {
			o.extraPath = "/ehr-receiver"
		}
		return o
	}

	for _, tc := range []struct {
		name string
		o    options
		want string
	}{
		{"an extra module", opts(plain, platforms{"amd64": withCmp}), "links modules the main binary does not: github.com/google/go-cmp@v"},
		{"another architecture's extra binary", opts(plain, platforms{"amd64": plainArm}), "was built for linux/arm64, not linux/amd64"},
		{"extra binaries for other platforms", opts(plain, platforms{"arm64": plainArm}), "--extra-platform is for linux/{arm64}, --platform for linux/{amd64}"},
		{"--extra-path alone", options{push: ref, platforms: platforms{"amd64": plain}, path: "/ehr-operator", extraPath: "/ehr-receiver"}, "--extra-path needs an --extra-platform"},
	} {
		err := release(tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("release with %s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := remote.Head(tag); err == nil {
		t.Fatalf("the tag names %s after refused releases, want nothing pushed", d.Digest)
	}

	if err := release(opts(withCmp, platforms{"amd64": plain})); err != nil {
		t.Errorf("release of a main binary linking more than the extra one: %v", err)
	}
	if _, err := remote.Head(tag); err != nil {
		t.Errorf("the tag after the accepted release: %v", err)
	}
}

// TestCoveredBy: the main binary's build information describes the extra
// binary's if the main modules, toolchains and, as compiled, the modules
// are the same or a subset.
func TestCoveredBy(t *testing.T) {
	mainBI := func() *debug.BuildInfo {
		return &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Path: "example.com/op", Version: "(devel)"},
			Deps: []*debug.Module{
				{Path: "example.com/a", Version: "v1.0.0"},
				{Path: "example.com/b", Version: "v1.0.0", Replace: &debug.Module{Path: "example.com/fork", Version: "v1.1.0"}},
			}}
	}
	for _, tc := range []struct {
		name string
		edit func(extra *debug.BuildInfo)
		want string // "": covered
	}{
		{"the same", func(*debug.BuildInfo) {}, ""},
		{"fewer modules", func(e *debug.BuildInfo) { e.Deps = e.Deps[1:] }, ""},
		{"another main module", func(e *debug.BuildInfo) { e.Main.Path = "example.com/other" }, `main module is "example.com/other"`},
		{"another main version", func(e *debug.BuildInfo) { e.Main.Version = "v1.0.0" }, `main module is "example.com/op" v1.0.0`},
		{"another toolchain", func(e *debug.BuildInfo) { e.GoVersion = "go1.25.0" }, "built by go1.25.0"},
		{"a module main lacks", func(e *debug.BuildInfo) {
			e.Deps = append(e.Deps, &debug.Module{Path: "example.com/z", Version: "v0.1.0"}, &debug.Module{Path: "example.com/c", Version: "v2.0.0"})
		}, "does not: example.com/c@v2.0.0, example.com/z@v0.1.0"},
		{"another version of a module", func(e *debug.BuildInfo) { e.Deps[0] = &debug.Module{Path: "example.com/a", Version: "v1.0.1"} }, "example.com/a@v1.0.1"},
		{"the module main replaces, unreplaced", func(e *debug.BuildInfo) { e.Deps[1] = &debug.Module{Path: "example.com/b", Version: "v1.0.0"} }, "example.com/b@v1.0.0"},
		{"the replacement itself", func(e *debug.BuildInfo) { e.Deps[1] = &debug.Module{Path: "example.com/fork", Version: "v1.1.0"} }, ""},
	} {
		extra := mainBI()
		tc.edit(extra)
		err := coveredBy(extra, mainBI())
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q (empty: covered)", tc.name, err, tc.want)
		}
	}
}

// testModule writes, under dir, a module of two commands: plain links no
// module, withcmp links go-cmp. Built offline: go-cmp is in the module
// cache (this package's tests use it) and hack's go.sum vouches for it.
func testModule(t *testing.T, dir string) string {
	t.Helper()
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*github\.com/google/go-cmp (v\S+)`).FindSubmatch(gomod)
	if m == nil {
		t.Fatal("hack/go.mod does not require github.com/google/go-cmp")
	}
	gosum, err := os.ReadFile("../go.sum")
	if err != nil {
		t.Fatal(err)
	}
	var sums []string
	for _, l := range strings.Split(string(gosum), "\n") {
		if strings.HasPrefix(l, "github.com/google/go-cmp "+string(m[1])) {
			sums = append(sums, l)
		}
	}
	files := map[string]string{
		"go.mod":          "module example.com/rel\n\ngo 1.22\n\nrequire github.com/google/go-cmp " + string(m[1]) + "\n",
		"go.sum":          strings.Join(sums, "\n") + "\n",
		"plain/main.go":   "package main\n\nfunc main() { println(\"plain\") }\n",
		"withcmp/main.go": "package main\n\nimport \"github.com/google/go-cmp/cmp\"\n\nfunc main() { println(cmp.Equal(1, 2)) }\n",
	}
	for f, body := range files {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// moduleBinary builds the command cmd of the module in dir as a static
// linux/arch program, without the network.
func moduleBinary(t *testing.T, dir, cmd, arch string) string {
	t.Helper()
	bin := filepath.Join(dir, cmd+"-"+arch)
	c := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-o", bin, "./"+cmd)
	c.Dir = dir
	c.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch, "GOFLAGS=", "GO111MODULE=on",
		"GOWORK=off", "GOPROXY=off", "GOTOOLCHAIN=local")
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("building %s for %s: %v\n%s", cmd, arch, err, out)
	}
	return bin
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
