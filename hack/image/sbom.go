package main

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"runtime/debug"
	"sort"
	"strings"
	"time"
)

// The SBOM is an SPDX 2.3 JSON document (https://spdx.github.io/spdx-spec/v2.3/)
// made from the module list Go records in the binary itself
// (debug/buildinfo), so it lists exactly what was linked, with the go.sum
// hash of each module.

type spdxDocument struct {
	SPDXVersion       string             `json:"spdxVersion"`
	DataLicense       string             `json:"dataLicense"`
	SPDXID            string             `json:"SPDXID"`
	Name              string             `json:"name"`
	DocumentNamespace string             `json:"documentNamespace"`
	CreationInfo      spdxCreationInfo   `json:"creationInfo"`
	Packages          []spdxPackage      `json:"packages"`
	Relationships     []spdxRelationship `json:"relationships"`
}

type spdxCreationInfo struct {
	Created  string   `json:"created"`
	Creators []string `json:"creators"`
}

type spdxPackage struct {
	SPDXID           string            `json:"SPDXID"`
	Name             string            `json:"name"`
	VersionInfo      string            `json:"versionInfo"`
	DownloadLocation string            `json:"downloadLocation"`
	FilesAnalyzed    bool              `json:"filesAnalyzed"`
	PrimaryPurpose   string            `json:"primaryPackagePurpose,omitempty"`
	Checksums        []spdxChecksum    `json:"checksums,omitempty"`
	ExternalRefs     []spdxExternalRef `json:"externalRefs,omitempty"`
	Comment          string            `json:"comment,omitempty"`
}

type spdxChecksum struct {
	Algorithm string `json:"algorithm"`
	Value     string `json:"checksumValue"`
}

type spdxExternalRef struct {
	Category string `json:"referenceCategory"`
	Type     string `json:"referenceType"`
	Locator  string `json:"referenceLocator"`
}

type spdxRelationship struct {
	Element string `json:"spdxElementId"`
	Type    string `json:"relationshipType"`
	Related string `json:"relatedSpdxElement"`
}

// spdxFromBuildInfo describes one binary: its main module (the root, with
// the build settings), the Go standard library of its toolchain and every
// module linked in (a replaced module as its replacement, which is what was
// compiled). binaryDigest (sha256 hex) makes the document's namespace
// unique; version is the main module's when Go recorded none ("(devel)").
// alsoDescribes names another binary of the image that the document covers
// (release checks that it does: coveredBy); SPDX has no place for a second
// binary of the same packages, so the main package's comment says so.
func spdxFromBuildInfo(bi *debug.BuildInfo, name, version, binaryDigest, alsoDescribes string, created time.Time) spdxDocument {
	m := bi.Main
	if m.Version == "" || m.Version == "(devel)" {
		m.Version = version
	}
	main := goPackage(m)
	main.SPDXID = "SPDXRef-Package-main"
	main.PrimaryPurpose = "APPLICATION"
	var settings []string
	for _, s := range bi.Settings {
		settings = append(settings, s.Key+"="+s.Value)
	}
	sort.Strings(settings)
	main.Comment = "built by " + bi.GoVersion + " with " + strings.Join(settings, " ")
	if alsoDescribes != "" {
		main.Comment += "; also describes the image's " + alsoDescribes +
			", built from the same module by the same toolchain, whose modules are all listed here"
	}
	std := spdxPackage{
		SPDXID: "SPDXRef-Package-stdlib", Name: "stdlib", VersionInfo: bi.GoVersion,
		DownloadLocation: "https://go.dev/dl/", PrimaryPurpose: "LIBRARY",
		ExternalRefs: []spdxExternalRef{purl("stdlib", strings.TrimPrefix(bi.GoVersion, "go"))},
	}
	doc := spdxDocument{
		SPDXVersion: "SPDX-2.3", DataLicense: "CC0-1.0", SPDXID: "SPDXRef-DOCUMENT", Name: name,
		DocumentNamespace: "https://github.com/insighthealth/ehr-operator/spdx/" + spdxIDPart(name) + "-" + binaryDigest,
		CreationInfo: spdxCreationInfo{
			Created:  created.UTC().Format(time.RFC3339),
			Creators: []string{"Tool: ehr-operator-hack-image"},
		},
		Packages: []spdxPackage{main, std},
		Relationships: []spdxRelationship{
			{"SPDXRef-DOCUMENT", "DESCRIBES", main.SPDXID},
			{main.SPDXID, "DEPENDS_ON", std.SPDXID},
		},
	}
	for _, m := range bi.Deps {
		p := goPackage(*compiled(m))
		doc.Packages = append(doc.Packages, p)
		doc.Relationships = append(doc.Relationships, spdxRelationship{main.SPDXID, "DEPENDS_ON", p.SPDXID})
	}
	return doc
}

// compiled is the module that was compiled for m: its replacement if it
// has one.
func compiled(m *debug.Module) *debug.Module {
	if m.Replace != nil {
		return m.Replace
	}
	return m
}

// goPackage is one Go module as an SPDX package: a purl, and the go.sum
// hash ("h1:" is base64 of a SHA-256) as its SHA256 checksum.
func goPackage(m debug.Module) spdxPackage {
	p := spdxPackage{
		SPDXID: "SPDXRef-Package-go-" + spdxIDPart(m.Path), Name: m.Path, VersionInfo: m.Version,
		DownloadLocation: "NOASSERTION", PrimaryPurpose: "LIBRARY",
		ExternalRefs: []spdxExternalRef{purl(m.Path, m.Version)},
	}
	if h, ok := strings.CutPrefix(m.Sum, "h1:"); ok {
		if b, err := base64.StdEncoding.DecodeString(h); err == nil && len(b) == 32 {
			p.Checksums = []spdxChecksum{{"SHA256", hex.EncodeToString(b)}}
		}
	}
	return p
}

func purl(path, version string) spdxExternalRef {
	return spdxExternalRef{"PACKAGE-MANAGER", "purl", fmt.Sprintf("pkg:golang/%s@%s", path, version)}
}

// spdxIDPart keeps what an SPDX identifier allows (letters, digits, '.'
// and '-'), so a module path becomes e.g. github.com-lib-pq.
func spdxIDPart(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-':
			return r
		}
		return '-'
	}, s)
}
