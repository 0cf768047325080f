package main

import (
	"bufio"
	"debug/buildinfo"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSPDXFromARealBinary builds a real static binary (this command, which
// links go-containerregistry and Docker's config reader) and checks its SBOM against go.sum: the main
// module, the toolchain's standard library, and each module with its
// version, purl and go.sum hash as a SHA256 checksum.
func TestSPDXFromARealBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "image")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	doc := spdxFromBuildInfo(bi, "image linux/amd64", "v9.9.9", "0123abcd", "", epoch)
	raw, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var generic map[string]any
	if err := json.Unmarshal(raw, &generic); err != nil || generic["spdxVersion"] != "SPDX-2.3" || generic["SPDXID"] != "SPDXRef-DOCUMENT" {
		t.Fatalf("not an SPDX 2.3 document: %v %s", err, raw[:min(200, len(raw))])
	}
	if !strings.HasSuffix(doc.DocumentNamespace, "-0123abcd") {
		t.Errorf("namespace %q does not name the binary's digest", doc.DocumentNamespace)
	}

	byName := map[string]spdxPackage{}
	ids := map[string]bool{}
	for _, p := range doc.Packages {
		if ids[p.SPDXID] {
			t.Errorf("SPDXID %s twice", p.SPDXID)
		}
		ids[p.SPDXID] = true
		byName[p.Name] = p
	}
	main := doc.Packages[0]
	if wantV := bi.Main.Version; wantV == "(devel)" && main.VersionInfo != "v9.9.9" || wantV != "(devel)" && main.VersionInfo != wantV {
		t.Errorf("main module version %q; Go recorded %q, the release is v9.9.9", main.VersionInfo, wantV)
	}
	if main.Name != "github.com/insighthealth/ehr-operator/hack" || main.PrimaryPurpose != "APPLICATION" ||
		!strings.Contains(main.Comment, "CGO_ENABLED=0") {
		t.Errorf("first package %+v, want the main module, an application built with CGO_ENABLED=0", main)
	}
	if std := byName["stdlib"]; std.VersionInfo != bi.GoVersion || !strings.HasPrefix(std.VersionInfo, "go1.") {
		t.Errorf("stdlib package %+v, want version %s", std, bi.GoVersion)
	}

	// Every module go.sum has for what the binary links must be there with
	// its hash: go.sum is read independently of the build information.
	sums := goSum(t, "../go.sum")
	const gcr = "github.com/google/go-containerregistry"
	if len(bi.Deps) < 3 {
		t.Fatalf("the binary lists %d modules; it links at least %s", len(bi.Deps), gcr)
	}
	for _, m := range bi.Deps {
		p, ok := byName[m.Path]
		if !ok {
			t.Errorf("module %s missing from the SBOM", m.Path)
			continue
		}
		h1 := sums[m.Path+" "+m.Version]
		b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(h1, "h1:"))
		if h1 == "" || err != nil {
			t.Fatalf("go.sum has no h1 hash for %s %s", m.Path, m.Version)
		}
		want := []spdxChecksum{{"SHA256", hex.EncodeToString(b)}}
		if p.VersionInfo != m.Version || len(p.Checksums) != 1 || p.Checksums[0] != want[0] ||
			p.ExternalRefs[0].Locator != "pkg:golang/"+m.Path+"@"+m.Version {
			t.Errorf("package %+v, want version %s, checksum %v and its purl", p, m.Version, want)
		}
	}
	if p := byName[gcr]; p.VersionInfo != "v0.22.1" {
		t.Errorf("%s is %q in the SBOM, want v0.22.1 (hack/go.mod)", gcr, p.VersionInfo)
	}
	deps := 0
	for _, r := range doc.Relationships {
		if !ids[r.Related] {
			t.Errorf("relationship %+v names an unknown package", r)
		}
		if r.Element == main.SPDXID && r.Type == "DEPENDS_ON" {
			deps++
		}
	}
	if deps != len(bi.Deps)+1 {
		t.Errorf("main DEPENDS_ON %d packages, want %d modules and stdlib", deps, len(bi.Deps)+1)
	}
}

// goSum maps "path version" to its h1 hash.
func goSum(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && !strings.HasSuffix(f[1], "/go.mod") {
			out[f[0]+" "+f[1]] = f[2]
		}
	}
	return out
}
