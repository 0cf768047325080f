// Command image writes a single-layer container image holding a static
// binary, the entrypoint, and optionally a second one (--extra) as a
// docker-archive tar (readable by `ctr images import` and `docker load`),
// with go-containerregistry: no Docker engine or registry is needed.
// `make image` uses it for the project image, with the same content as the
// Dockerfile's distroless base (/ehr-operator and /ehr-receiver,
// /etc/passwd and /etc/group with the non-root user 65532, /tmp,
// /home/nonroot, CA certificates and the time-zone database, which
// receivers need for spec.timeZone), and for the local cluster's pause
// image.
//
//	go -C hack run ./image --binary ../bin/ehr-operator --path /ehr-operator \
//	    --extra ../bin/ehr-receiver --extra-path /ehr-receiver \
//	    --cmd manager --tag ehr-operator:dev --out ../bin/ehr-operator-image.tar
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// options are the command-line settings of one image.
type options struct {
	binary  string // file to put in the image
	path    string // where it goes, also the entrypoint
	cmd     string // default arguments, space-separated
	tag     string
	out     string
	uid     int
	version string
	source  string // org.opencontainers.image.source
	caCerts string // CA bundle to copy to /etc/ssl/certs/ca-certificates.crt; empty: none
	// An optional second binary, not the entrypoint (the operator's
	// receiver pods run /ehr-receiver from the same image).
	extra     string // its file (build mode)
	extraPath string // where it goes
	// Release mode: push an index of platforms to a registry instead of
	// writing a tar.
	push           string    // REGISTRY/REPO:TAG
	platforms      platforms // linux/ARCH=BINARY, one per platform
	extraPlatforms platforms // linux/ARCH=BINARY, the extra binary per platform
	caFile         string    // extra CA the registry's certificate chains to
}

func main() {
	var o options
	flag.StringVar(&o.binary, "binary", "", "static binary to put in the image (required)")
	flag.StringVar(&o.path, "path", "/ehr-operator", "path of the binary in the image; also the entrypoint")
	flag.StringVar(&o.extra, "extra", "", "an extra static binary to put in the image at --extra-path")
	flag.StringVar(&o.extraPath, "extra-path", "", "path of the extra binary in the image, e.g. /ehr-receiver")
	flag.StringVar(&o.cmd, "cmd", "", "default arguments (CMD), space-separated")
	flag.StringVar(&o.tag, "tag", "", "image reference, e.g. ehr-operator:dev (required)")
	flag.StringVar(&o.out, "out", "", "output tar file (required)")
	flag.IntVar(&o.uid, "uid", 65532, "numeric user and group the image runs as")
	flag.StringVar(&o.version, "version", "dev", "value of the org.opencontainers.image.version label")
	flag.StringVar(&o.source, "source", "https://github.com/insighthealth/ehr-operator", "value of the org.opencontainers.image.source label")
	flag.StringVar(&o.caCerts, "ca-certs", "", "CA bundle to include as /etc/ssl/certs/ca-certificates.crt")
	flag.StringVar(&o.push, "push", "", "release mode: push an image index with an SBOM per platform to this reference (REGISTRY/REPO:TAG)")
	flag.Var(&o.platforms, "platform", "release mode: linux/ARCH=BINARY, a static binary per platform (repeat)")
	flag.Var(&o.extraPlatforms, "extra-platform", "release mode: linux/ARCH=BINARY, the extra binary per --platform (repeat)")
	flag.StringVar(&o.caFile, "ca-file", "", "release mode: CA certificate (PEM) the registry's certificate chains to, besides the system's")
	flag.Parse()
	run := build
	switch {
	case o.push != "" && len(o.platforms) > 0:
		run = release
	case o.binary == "" || o.tag == "" || o.out == "":
		fmt.Fprintln(os.Stderr, "usage: image --binary FILE --tag REF --out FILE [--path /ehr-operator] [--extra FILE --extra-path /ehr-receiver] [--cmd ARGS] [--uid 65532]\n"+
			"       image --push REGISTRY/REPO:TAG --platform linux/amd64=FILE --platform linux/arm64=FILE\n"+
			"             [--extra-path /ehr-receiver --extra-platform linux/amd64=FILE --extra-platform linux/arm64=FILE] [--ca-file CA] [...]")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func build(o options) error {
	ref, err := name.NewTag(o.tag)
	if err != nil {
		return fmt.Errorf("while parsing tag %q: %w", o.tag, err)
	}
	if err := checkExtra(o, false); err != nil {
		return err
	}
	bin, err := readBinary(o.path, o.binary)
	if err != nil {
		return err
	}
	bins := []binary{bin}
	if o.extraPath != "" {
		extra, err := readBinary(o.extraPath, o.extra)
		if err != nil {
			return err
		}
		bins = append(bins, extra)
	}
	img, err := newImage(o, bins, runtime.GOARCH, false)
	if err != nil {
		return err
	}
	if err := tarball.WriteToFile(o.out, ref, img); err != nil {
		return fmt.Errorf("while writing %s: %w", o.out, err)
	}
	return nil
}

// checkExtra is an error if the extra binary's flags do not make a whole:
// any of them alone would silently give an image without it. In release
// mode there is an extra binary for exactly the --platform architectures.
func checkExtra(o options, releaseMode bool) error {
	given := o.extra != "" || len(o.extraPlatforms) > 0
	switch {
	case !given && o.extraPath == "":
		return nil
	case !given && releaseMode:
		return errors.New("--extra-path needs an --extra-platform linux/ARCH=FILE per --platform")
	case !given:
		return errors.New("--extra-path needs --extra FILE, the binary to put there")
	case o.extraPath == "":
		return errors.New("--extra and --extra-platform need --extra-path, where the extra binary goes in the image")
	case releaseMode && o.extra != "":
		return errors.New("--extra is for a docker-archive (--out); in release mode give --extra-platform linux/ARCH=FILE per --platform")
	case !releaseMode && len(o.extraPlatforms) > 0:
		return errors.New("--extra-platform is for release mode (--push); for a docker-archive give --extra FILE")
	case layerName(o.extraPath) == layerName(o.path):
		return fmt.Errorf("--extra-path %s is also --path: the two binaries need different paths", o.extraPath)
	}
	if a, b := o.platforms.archs(), o.extraPlatforms.archs(); releaseMode && strings.Join(a, " ") != strings.Join(b, " ") {
		return fmt.Errorf("--extra-platform is for linux/{%s}, --platform for linux/{%s}: want an extra binary for each platform, and no other",
			strings.Join(b, ","), strings.Join(a, ","))
	}
	return nil
}

// binary is a static executable and its path in the image; the first of
// an image's binaries is its entrypoint.
type binary struct {
	path string
	data []byte
}

func readBinary(path, file string) (binary, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return binary{}, fmt.Errorf("while reading the binary for %s: %w", path, err)
	}
	return binary{path, b}, nil
}

// newImage is the image of one platform (linux/arch) holding bins; oci
// gives OCI media types (for a registry's index) instead of Docker's (for
// `ctr images import` of a docker-archive).
func newImage(o options, bins []binary, arch string, oci bool) (v1.Image, error) {
	files, err := hostFiles(o.caCerts)
	if err != nil {
		return nil, err
	}
	layerTar, err := rootfs(bins, o.uid, files)
	if err != nil {
		return nil, err
	}
	var paths []string
	for _, b := range bins {
		paths = append(paths, b.path)
	}
	var lopts []tarball.LayerOption
	base := empty.Image
	if oci {
		lopts = append(lopts, tarball.WithMediaType(types.OCILayer))
		base = mutate.ConfigMediaType(mutate.MediaType(base, types.OCIManifestSchema1), types.OCIConfigJSON)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, lopts...)
	if err != nil {
		return nil, fmt.Errorf("while making the layer: %w", err)
	}
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:   layer,
		History: v1.History{CreatedBy: "hack/image: " + strings.Join(paths, ", ") + " and a non-root user", Created: v1.Time{Time: epoch}},
	})
	if err != nil {
		return nil, fmt.Errorf("while adding the layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("while reading the image config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Architecture = arch
	cf.OS = "linux"
	cf.Created = v1.Time{Time: epoch}
	cf.Config = v1.Config{
		User:       fmt.Sprintf("%d:%d", o.uid, o.uid),
		Entrypoint: []string{o.path},
		Cmd:        strings.Fields(o.cmd),
		WorkingDir: "/",
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
		Labels: map[string]string{
			"org.opencontainers.image.title":   strings.TrimPrefix(o.path, "/"),
			"org.opencontainers.image.version": o.version,
			"org.opencontainers.image.source":  o.source,
		},
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, fmt.Errorf("while setting the image config: %w", err)
	}
	return img, nil
}

// epoch is every timestamp in the image, so the same binaries always give
// the same image digest.
var epoch = time.Unix(0, 0).UTC()

// entry is one file or directory of the layer.
type entry struct {
	hdr  tar.Header
	body []byte
}

// hostFiles reads the CA bundle from the host. No zoneinfo: both binaries
// embed Go's zone database (time/tzdata).
func hostFiles(caCerts string) ([]entry, error) {
	if caCerts == "" {
		return nil, nil
	}
	b, err := os.ReadFile(caCerts)
	if err != nil {
		return nil, fmt.Errorf("while reading the CA bundle: %w", err)
	}
	return []entry{
		{tar.Header{Name: "etc/ssl/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{tar.Header{Name: "etc/ssl/certs/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{tar.Header{Name: "etc/ssl/certs/ca-certificates.crt", Typeflag: tar.TypeReg, Mode: 0o644}, b},
	}, nil
}

// layerName is path as a name in the layer's tar.
func layerName(path string) string { return strings.TrimPrefix(path, "/") }

// rootfs returns the layer's tar: the binaries, in their order (so the
// same binaries give the same bytes), plus the few files a non-root static
// binary expects (user database, a writable /tmp, a home) and host.
func rootfs(bins []binary, uid int, host []entry) ([]byte, error) {
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", uid, uid)
	group := fmt.Sprintf("root:x:0:\nnobody:x:65534:\nnonroot:x:%d:\n", uid)
	entries := []entry{
		{tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644}, []byte(passwd)},
		{tar.Header{Name: "etc/group", Typeflag: tar.TypeReg, Mode: 0o644}, []byte(group)},
		{tar.Header{Name: "home/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{tar.Header{Name: "home/nonroot/", Typeflag: tar.TypeDir, Mode: 0o700, Uid: uid, Gid: uid}, nil},
		{tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}, nil},
	}
	for _, b := range bins {
		entries = append(entries, entry{tar.Header{Name: layerName(b.path), Typeflag: tar.TypeReg, Mode: 0o755}, b.data})
	}
	entries = append(entries, host...)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	seen := map[string]bool{}
	for _, e := range entries {
		h := e.hdr
		// A second entry of a name would hide the first when unpacked.
		n := strings.TrimSuffix(h.Name, "/")
		if seen[n] {
			return nil, fmt.Errorf("%s is twice in the layer (a binary's path is another file's)", h.Name)
		}
		seen[n] = true
		h.Size = int64(len(e.body))
		h.ModTime = epoch
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			return nil, fmt.Errorf("while writing %s into the layer: %w", h.Name, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, fmt.Errorf("while writing %s into the layer: %w", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("while closing the layer: %w", err)
	}
	return buf.Bytes(), nil
}
