package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"debug/buildinfo"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"runtime/debug"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// spdxJSON is the media type of the SBOM layer and the artifact type of
// its manifest.
const spdxJSON = "application/spdx+json"

// platforms is the repeatable --platform flag: linux/ARCH=BINARY.
type platforms map[string]string

func (p *platforms) String() string { return fmt.Sprint(map[string]string(*p)) }

func (p *platforms) Set(v string) error {
	plat, bin, ok := strings.Cut(v, "=")
	arch, found := strings.CutPrefix(plat, "linux/")
	if !ok || !found || arch == "" || bin == "" {
		return fmt.Errorf("want linux/ARCH=BINARY, got %q", v)
	}
	if *p == nil {
		*p = platforms{}
	}
	(*p)[arch] = bin
	return nil
}

// archs are p's architectures, sorted.
func (p platforms) archs() []string {
	out := make([]string, 0, len(p))
	for a := range p {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

// release pushes o.push as an OCI image index of one image per platform,
// then, for each platform's image, an SBOM artifact whose subject is that
// image (found through the registry's referrers API, or the tag scheme of
// registries without it), and checks the registry lists it as a referrer.
// It prints what it pushed, with digests, on standard output.
//
// Each image holds its platform's binary and, with --extra-path, that
// platform's extra binary. Its SBOM is made from the first one's build
// information alone, so an extra binary it would not describe is refused
// (coveredBy): the SBOM then covers everything in the image.
//
// A release's tag never moves: if the tag already names another index, it
// refuses before pushing anything (clusters that pulled the old one would
// otherwise run a different image under the same version). The same
// index again, a release re-run after a failure part way, is pushed again
// harmlessly: the builds are reproducible, so the same commit makes it.
func release(o options) error {
	ctx := context.Background()
	ref, err := name.NewTag(o.push)
	if err != nil {
		return fmt.Errorf("while parsing %q: %w", o.push, err)
	}
	tr, err := registryTransport(o.caFile)
	if err != nil {
		return err
	}
	ropts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(tr), remote.WithAuthFromKeychain(authn.DefaultKeychain)}
	if err := checkExtra(o, true); err != nil {
		return err
	}

	archs := o.platforms.archs()
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	imgs := map[string]v1.Image{}
	sboms := map[string][]byte{}
	for _, arch := range archs {
		bin, bi, err := readGoBinary(o.path, o.platforms[arch], arch)
		if err != nil {
			return err
		}
		bins := []binary{bin}
		if o.extraPath != "" {
			file := o.extraPlatforms[arch]
			extra, ebi, err := readGoBinary(o.extraPath, file, arch)
			if err != nil {
				return err
			}
			if err := coveredBy(ebi, bi); err != nil {
				return fmt.Errorf("%s cannot go in the image as %s: the SBOM, made from %s, would not describe it: %w", file, o.extraPath, o.platforms[arch], err)
			}
			bins = append(bins, extra)
		}
		sum := sha256.Sum256(bin.data)
		img, err := newImage(o, bins, arch, true)
		if err != nil {
			return fmt.Errorf("linux/%s: %w", arch, err)
		}
		doc := spdxFromBuildInfo(bi, ref.RepositoryStr()+":"+ref.TagStr()+" linux/"+arch, o.version, hex.EncodeToString(sum[:]), o.extraPath, epoch)
		if sboms[arch], err = json.MarshalIndent(doc, "", "  "); err != nil {
			return err
		}
		imgs[arch] = img
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	if err := refuseMovingTag(ref, d, ropts); err != nil {
		return err
	}
	if err := remote.WriteIndex(ref, idx, ropts...); err != nil {
		return fmt.Errorf("while pushing %s: %w", ref, err)
	}
	fmt.Printf("pushed index %s@%s (tag %s)\n", ref.Context(), d, ref.TagStr())
	for _, arch := range archs {
		desc, err := partialDescriptor(imgs[arch])
		if err != nil {
			return err
		}
		art, err := pushSBOM(ref.Context(), *desc, sboms[arch], ropts)
		if err != nil {
			return fmt.Errorf("linux/%s: %w", arch, err)
		}
		refs, err := remote.Referrers(ref.Context().Digest(desc.Digest.String()), ropts...)
		if err != nil {
			return fmt.Errorf("while listing the referrers of linux/%s: %w", arch, err)
		}
		if !hasReferrer(refs, art) {
			return fmt.Errorf("the registry does not list the SBOM %s as a referrer of %s", art, desc.Digest)
		}
		fmt.Printf("pushed image linux/%s %s\n", arch, desc.Digest)
		fmt.Printf("pushed sbom  linux/%s %s (%s, subject %s)\n", arch, art, spdxJSON, desc.Digest)
	}
	return nil
}

// readGoBinary reads file, to be path in the image of linux/arch, and
// checks from its own build information that it is a static Go program for
// that platform.
func readGoBinary(path, file, arch string) (binary, *debug.BuildInfo, error) {
	b, err := readBinary(path, file)
	if err != nil {
		return binary{}, nil, err
	}
	// Of the very bytes that go into the image, not the file again.
	bi, err := buildinfo.Read(bytes.NewReader(b.data))
	if err != nil {
		return binary{}, nil, fmt.Errorf("while reading the build information of %s: %w", file, err)
	}
	if got := setting(bi.Settings, "GOARCH"); got != arch || setting(bi.Settings, "GOOS") != "linux" {
		return binary{}, nil, fmt.Errorf("%s was built for %s/%s, not linux/%s", file, setting(bi.Settings, "GOOS"), got, arch)
	}
	if setting(bi.Settings, "CGO_ENABLED") != "0" {
		return binary{}, nil, fmt.Errorf("%s is not static: build it with CGO_ENABLED=0", file)
	}
	return b, bi, nil
}

// coveredBy is an error unless the SBOM made from main's build
// information alone also describes extra: the same main module (path and
// version), the same toolchain (its stdlib package) and no module main
// lacks, compared as compiled (path@version after replacement), as the
// SBOM lists them.
func coveredBy(extra, main *debug.BuildInfo) error {
	if extra.Main.Path != main.Main.Path || extra.Main.Version != main.Main.Version {
		return fmt.Errorf("its main module is %q %s, the main binary's %q %s", extra.Main.Path, extra.Main.Version, main.Main.Path, main.Main.Version)
	}
	if extra.GoVersion != main.GoVersion {
		return fmt.Errorf("it was built by %s, the main binary by %s", extra.GoVersion, main.GoVersion)
	}
	have := map[string]bool{}
	for _, m := range main.Deps {
		have[modVersion(compiled(m))] = true
	}
	var missing []string
	for _, m := range extra.Deps {
		if mv := modVersion(compiled(m)); !have[mv] {
			missing = append(missing, mv)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("it links modules the main binary does not: %s", strings.Join(missing, ", "))
	}
	return nil
}

func modVersion(m *debug.Module) string { return m.Path + "@" + m.Version }

// refuseMovingTag is an error if ref already names a manifest other than
// want; a tag the registry does not know is fine.
func refuseMovingTag(ref name.Tag, want v1.Hash, ropts []remote.Option) error {
	desc, err := remote.Head(ref, ropts...)
	if err != nil {
		var terr *transport.Error
		if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
			return nil
		}
		return fmt.Errorf("while checking whether %s exists: %w", ref, err)
	}
	if desc.Digest == want {
		fmt.Printf("%s already names this index (%s): pushing it again\n", ref, want)
		return nil
	}
	return fmt.Errorf("%s already exists and names %s, not this build's %s: a released version is never replaced; release a new version", ref, desc.Digest, want)
}

// pushSBOM pushes an OCI artifact manifest holding sbom, whose subject is
// the image described by subject, and returns its digest.
func pushSBOM(repo name.Repository, subject v1.Descriptor, sbom []byte, ropts []remote.Option) (v1.Hash, error) {
	cfg := static.NewLayer([]byte("{}"), types.OCIEmptyJSON)
	layer := static.NewLayer(sbom, spdxJSON)
	var descs []v1.Descriptor
	for _, l := range []v1.Layer{cfg, layer} {
		if err := remote.WriteLayer(repo, l, ropts...); err != nil {
			return v1.Hash{}, fmt.Errorf("while pushing the SBOM's blobs: %w", err)
		}
		d, err := partialDescriptor(l)
		if err != nil {
			return v1.Hash{}, err
		}
		descs = append(descs, *d)
	}
	descs[1].Annotations = map[string]string{"org.opencontainers.image.title": "sbom.spdx.json"}
	m := v1.Manifest{
		SchemaVersion: 2, MediaType: types.OCIManifestSchema1, ArtifactType: spdxJSON,
		Config: descs[0], Layers: descs[1:], Subject: &subject,
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return v1.Hash{}, err
	}
	h, _, err := v1.SHA256(strings.NewReader(string(raw)))
	if err != nil {
		return v1.Hash{}, err
	}
	if err := remote.Put(repo.Digest(h.String()), rawManifest(raw), ropts...); err != nil {
		return v1.Hash{}, fmt.Errorf("while pushing the SBOM's manifest: %w", err)
	}
	return h, nil
}

// rawManifest is an OCI image manifest as pushed, byte for byte.
type rawManifest []byte

func (r rawManifest) RawManifest() ([]byte, error)        { return r, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

// described is what partialDescriptor needs: an image or a layer.
type described interface {
	Digest() (v1.Hash, error)
	Size() (int64, error)
	MediaType() (types.MediaType, error)
}

func partialDescriptor(x described) (*v1.Descriptor, error) {
	d, err := x.Digest()
	if err != nil {
		return nil, err
	}
	sz, err := x.Size()
	if err != nil {
		return nil, err
	}
	mt, err := x.MediaType()
	if err != nil {
		return nil, err
	}
	return &v1.Descriptor{MediaType: mt, Digest: d, Size: sz}, nil
}

// hasReferrer is true if idx lists h. By digest only: some registries
// (go-containerregistry's own) report the config's media type as the
// artifactType instead of the manifest's artifactType field.
func hasReferrer(idx v1.ImageIndex, h v1.Hash) bool {
	m, err := idx.IndexManifest()
	if err != nil {
		return false
	}
	for _, d := range m.Manifests {
		if d.Digest == h {
			return true
		}
	}
	return false
}

// registryTransport trusts the system's CAs and, if set, caFile (a private
// registry's own CA).
func registryTransport(caFile string) (http.RoundTripper, error) {
	tr := remote.DefaultTransport.(*http.Transport).Clone()
	if caFile == "" {
		return tr, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("while reading the registry's CA: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New(caFile + " holds no PEM certificate")
	}
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return tr, nil
}

func setting(s []debug.BuildSetting, key string) string {
	for _, kv := range s {
		if kv.Key == key {
			return kv.Value
		}
	}
	return ""
}
