// Command imagetool packs layer tarballs into an OCI image archive and checks such an archive,
// with go-containerregistry doing the image format (manifests, config, digests, index).
//
//	imagetool pack   --out FILE --ref REF --layer L.tar[.gz] [--layer ...] [--entrypoint ARG ...]
//	                 [--cmd ARG ...] [--env K=V ...] [--label K=V ...]
//	imagetool verify --layout DIR --ref REF [--entrypoint ARG ...] [--cmd ARG ...] [--file PATH ...]
//
// pack writes an OCI image layout (one linux/amd64 image, its index entry annotated with REF
// both as org.opencontainers.image.ref.name and io.containerd.image.name) and tars it into FILE:
// what `ctr images import` and `skopeo inspect oci-archive:` read. Layers are used as given
// (gzip-compressed when the file is gzip), or compressed here with zstd when the file is a plain
// tar: on the emulated test node, `ctr images import` spent 3/4 of its time decompressing gzip,
// and zstd decompresses 2-3 times faster (containerd reads both).
//
// verify reads an unpacked archive back: exactly one image, named REF, every digest, size and
// diff ID checked (validate.Image), the config's entrypoint and cmd as expected, and each PATH
// present in the flattened root filesystem, the entrypoint's program an executable file.
package main

import (
	"archive/tar"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/compression"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// Annotation keys on the index entry: the OCI one for skopeo/podman/oras, containerd's own
// because `ctr images import` rewrites an org.opencontainers.image.ref.name that is a full
// reference unless --base-name matches it, and takes io.containerd.image.name as it is.
const (
	annotationRefName        = "org.opencontainers.image.ref.name"
	annotationContainerdName = "io.containerd.image.name"
)

// platform is the only one carve builds for: the VM rig and the machines are amd64.
var platform = v1.Platform{OS: "linux", Architecture: "amd64"}

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// imageSpec is what pack builds and verify expects.
type imageSpec struct {
	Ref        string
	Layers     []string
	Entrypoint []string
	Cmd        []string
	Env        []string
	Labels     map[string]string
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: imagetool pack|verify [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "pack":
		err = runPack(os.Args[2:])
	case "verify":
		err = runVerify(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (pack or verify)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "imagetool %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func runPack(args []string) error {
	fs := flag.NewFlagSet("pack", flag.ContinueOnError)
	out := fs.String("out", "", "OCI archive to write")
	ref := fs.String("ref", "", "image reference to record in the index")
	var layers, entrypoint, cmd, env, labels list
	fs.Var(&layers, "layer", "layer tarball, bottom first (repeatable)")
	fs.Var(&entrypoint, "entrypoint", "one entrypoint argument (repeatable)")
	fs.Var(&cmd, "cmd", "one cmd argument (repeatable)")
	fs.Var(&env, "env", "K=V environment entry (repeatable)")
	fs.Var(&labels, "label", "K=V label (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || *ref == "" || len(layers) == 0 {
		return errors.New("--out, --ref and at least one --layer are required")
	}
	spec := imageSpec{Ref: *ref, Layers: layers, Entrypoint: entrypoint, Cmd: cmd, Env: env, Labels: map[string]string{}}
	for _, kv := range labels {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("--label %q is not K=V", kv)
		}
		spec.Labels[k] = v
	}
	return pack(spec, *out)
}

// buildImage assembles the image from spec's layer files.
func buildImage(spec imageSpec) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = platform.OS, platform.Architecture
	cfg.Config.Entrypoint = spec.Entrypoint
	cfg.Config.Cmd = spec.Cmd
	cfg.Config.Env = spec.Env
	if len(spec.Labels) > 0 {
		cfg.Config.Labels = spec.Labels
	}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return nil, err
	}
	for _, f := range spec.Layers {
		l, err := layerFromFile(f)
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", f, err)
		}
		if img, err = mutate.Append(img, mutate.Addendum{Layer: l, History: v1.History{CreatedBy: "carve hack/image: " + filepath.Base(f)}}); err != nil {
			return nil, fmt.Errorf("layer %s: %w", f, err)
		}
	}
	return img, nil
}

// pack writes spec as an OCI layout next to out and tars that layout into out.
func pack(spec imageSpec, out string) error {
	img, err := buildImage(spec)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(filepath.Dir(out), ".layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	err = p.AppendImage(img,
		layout.WithAnnotations(map[string]string{annotationRefName: spec.Ref, annotationContainerdName: spec.Ref}),
		layout.WithPlatform(platform))
	if err != nil {
		return fmt.Errorf("write layout: %w", err)
	}
	tmp := out + ".tmp"
	if err := tarDir(dir, tmp); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}

// tarDir writes the tree at dir into the tar file out (archive/tar's AddFS does the walking).
func tarDir(dir, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	if err := tw.AddFS(os.DirFS(dir)); err != nil {
		f.Close()
		return fmt.Errorf("tar %s: %w", dir, err)
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func runVerify(args []string) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	dir := fs.String("layout", "", "unpacked OCI archive (an OCI image layout)")
	ref := fs.String("ref", "", "image reference the index must carry")
	var entrypoint, cmd, files list
	fs.Var(&entrypoint, "entrypoint", "expected entrypoint argument (repeatable)")
	fs.Var(&cmd, "cmd", "expected cmd argument (repeatable)")
	fs.Var(&files, "file", "path that must exist in the image (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" || *ref == "" {
		return errors.New("--layout and --ref are required")
	}
	sum, err := verify(*dir, imageSpec{Ref: *ref, Entrypoint: entrypoint, Cmd: cmd}, files)
	if err != nil {
		return err
	}
	fmt.Println(sum)
	return nil
}

// verify checks the layout at dir against want and returns a one-line summary.
func verify(dir string, want imageSpec, files []string) (string, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return "", fmt.Errorf("read layout: %w", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return "", err
	}
	if len(im.Manifests) != 1 {
		return "", fmt.Errorf("index lists %d manifests, want 1", len(im.Manifests))
	}
	desc := im.Manifests[0]
	for _, k := range []string{annotationRefName, annotationContainerdName} {
		if got := desc.Annotations[k]; got != want.Ref {
			return "", fmt.Errorf("index annotation %s = %q, want %q", k, got, want.Ref)
		}
	}
	img, err := idx.Image(desc.Digest)
	if err != nil {
		return "", err
	}
	// validate's layer check reads layers through gzip only; the zstd layers are digested here.
	if err := validate.Image(img, validate.Fast); err != nil {
		return "", fmt.Errorf("image does not validate: %w", err)
	}
	if err := checkLayerDigests(img); err != nil {
		return "", fmt.Errorf("image does not validate: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return "", err
	}
	if cfg.OS != platform.OS || cfg.Architecture != platform.Architecture {
		return "", fmt.Errorf("config platform %s/%s, want %s/%s", cfg.OS, cfg.Architecture, platform.OS, platform.Architecture)
	}
	if !slices.Equal(cfg.Config.Entrypoint, want.Entrypoint) {
		return "", fmt.Errorf("entrypoint %q, want %q", cfg.Config.Entrypoint, want.Entrypoint)
	}
	if !slices.Equal(cfg.Config.Cmd, want.Cmd) {
		return "", fmt.Errorf("cmd %q, want %q", cfg.Config.Cmd, want.Cmd)
	}
	tree, err := listFiles(img)
	if err != nil {
		return "", err
	}
	for _, p := range files {
		if err := lookup(tree, p, false); err != nil {
			return "", err
		}
	}
	if len(want.Entrypoint) > 0 {
		if err := lookup(tree, want.Entrypoint[0], true); err != nil {
			return "", fmt.Errorf("entrypoint: %w", err)
		}
	}
	layers, err := img.Layers()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("ok %s: %d layer(s), %d paths, digest %s", want.Ref, len(layers), len(tree), desc.Digest), nil
}

// entry is one path of the flattened root filesystem.
type entry struct {
	typ      byte
	mode     int64
	linkname string
}

// listFiles reads the image's flattened root filesystem (mutate.Extract applies the layers).
func listFiles(img v1.Image) (map[string]entry, error) {
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	tree := map[string]entry{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return tree, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read image filesystem: %w", err)
		}
		tree[path.Clean("/"+h.Name)] = entry{typ: h.Typeflag, mode: h.Mode, linkname: h.Linkname}
	}
}

// lookup checks that p exists in tree, following symlinks (absolute or relative) as the
// kernel would inside the container, and, when program is set, that it ends at an executable
// regular file.
func lookup(tree map[string]entry, p string, program bool) error {
	cur := path.Clean("/" + p)
	for hops := 0; hops < 40; hops++ {
		e, ok := tree[cur]
		if !ok {
			// A symlinked parent directory (/bin -> usr/bin in merged-/usr roots).
			if r, ok := resolveParent(tree, cur); ok {
				cur = r
				continue
			}
			return fmt.Errorf("%s: not in the image (looked up %s)", p, cur)
		}
		switch e.typ {
		case tar.TypeSymlink:
			if path.IsAbs(e.linkname) {
				cur = path.Clean(e.linkname)
			} else {
				cur = path.Join(path.Dir(cur), e.linkname)
			}
		case tar.TypeLink:
			cur = path.Clean("/" + e.linkname)
		case tar.TypeReg:
			if program && e.mode&0o111 == 0 {
				return fmt.Errorf("%s: %s is not executable (mode %o)", p, cur, e.mode)
			}
			return nil
		default:
			if program {
				return fmt.Errorf("%s: %s is not a regular file", p, cur)
			}
			return nil
		}
	}
	return fmt.Errorf("%s: too many symlinks", p)
}

// resolveParent rewrites p when one of its parent directories is a symlink in tree.
func resolveParent(tree map[string]entry, p string) (string, bool) {
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i := 1; i < len(parts); i++ {
		dir := "/" + strings.Join(parts[:i], "/")
		e, ok := tree[dir]
		if !ok || e.typ != tar.TypeSymlink {
			continue
		}
		target := e.linkname
		if !path.IsAbs(target) {
			target = path.Join(path.Dir(dir), target)
		}
		return path.Join(append([]string{target}, parts[i:]...)...), true
	}
	return "", false
}

// layerFromFile: a gzip file as it is (OCI gzip layer), a plain tar compressed with zstd (OCI
// zstd layer).
func layerFromFile(f string) (v1.Layer, error) {
	gz, err := isGzip(f)
	if err != nil {
		return nil, err
	}
	if gz {
		return tarball.LayerFromFile(f, tarball.WithMediaType(types.OCILayer))
	}
	return tarball.LayerFromFile(f, tarball.WithCompression(compression.ZStd), tarball.WithMediaType(types.OCILayerZStd))
}

func isGzip(f string) (bool, error) {
	fh, err := os.Open(f)
	if err != nil {
		return false, err
	}
	defer fh.Close()
	magic := make([]byte, 2)
	if _, err := io.ReadFull(fh, magic); err != nil {
		return false, fmt.Errorf("layer %s: %w", f, err)
	}
	return magic[0] == 0x1f && magic[1] == 0x8b, nil
}

// checkLayerDigests: each layer's compressed bytes hash to its digest and size, and its
// uncompressed bytes (gzip or zstd, ggcr picks by the bytes) to its diff ID.
func checkLayerDigests(img v1.Image) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for i, l := range layers {
		want, err := l.Digest()
		if err != nil {
			return err
		}
		size, err := l.Size()
		if err != nil {
			return err
		}
		got, n, err := hashStream(l.Compressed)
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		if got != want || n != size {
			return fmt.Errorf("layer %d: compressed bytes hash to %s (%d bytes), manifest says %s (%d bytes)", i, got, n, want, size)
		}
		wantDiff, err := l.DiffID()
		if err != nil {
			return err
		}
		gotDiff, _, err := hashStream(l.Uncompressed)
		if err != nil {
			return fmt.Errorf("layer %d: decompress: %w", i, err)
		}
		if gotDiff != wantDiff {
			return fmt.Errorf("layer %d: uncompressed bytes hash to %s, config's diff ID is %s", i, gotDiff, wantDiff)
		}
	}
	return nil
}

// hashStream: the sha256 and length of what open returns.
func hashStream(open func() (io.ReadCloser, error)) (v1.Hash, int64, error) {
	rc, err := open()
	if err != nil {
		return v1.Hash{}, 0, err
	}
	defer rc.Close()
	return v1.SHA256(rc)
}
