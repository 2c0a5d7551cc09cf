package main

import (
	"archive/tar"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// writeLayer writes an uncompressed layer tarball with a program, a symlinked /bin (as in
// merged-/usr roots) and a link to the program.
func writeLayer(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "layer.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	add := func(h *tar.Header, body string) {
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	add(&tar.Header{Name: "usr/", Typeflag: tar.TypeDir, Mode: 0o755}, "")
	add(&tar.Header{Name: "usr/bin/", Typeflag: tar.TypeDir, Mode: 0o755}, "")
	add(&tar.Header{Name: "usr/bin/prog", Typeflag: tar.TypeReg, Mode: 0o755}, "#!/bin/true\n")
	add(&tar.Header{Name: "usr/bin/data", Typeflag: tar.TypeReg, Mode: 0o644}, "x")
	add(&tar.Header{Name: "bin", Typeflag: tar.TypeSymlink, Linkname: "usr/bin"}, "")
	add(&tar.Header{Name: "usr/bin/alias", Typeflag: tar.TypeSymlink, Linkname: "/usr/bin/prog"}, "")
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// unpack extracts an archive pack wrote, as a user would (GNU tar).
func unpack(t *testing.T, archive string) string {
	t.Helper()
	d := t.TempDir()
	if out, err := exec.Command("tar", "-x", "-f", archive, "-C", d).CombinedOutput(); err != nil {
		t.Fatalf("tar -x: %v: %s", err, out)
	}
	return d
}

func TestPackVerify(t *testing.T) {
	dir := t.TempDir()
	spec := imageSpec{Ref: "registry.example/sig/prog:v1.2.3", Layers: []string{writeLayer(t, dir)}, Entrypoint: []string{"/bin/alias"}, Env: []string{"PATH=/bin"}}
	archive := filepath.Join(dir, "prog.tar")
	if err := pack(spec, archive); err != nil {
		t.Fatalf("pack: %v", err)
	}
	layoutDir := unpack(t, archive)
	for _, f := range []string{"oci-layout", "index.json"} {
		if _, err := os.Stat(filepath.Join(layoutDir, f)); err != nil {
			t.Errorf("archive lacks %s: %v", f, err)
		}
	}
	sum, err := verify(layoutDir, imageSpec{Ref: spec.Ref, Entrypoint: spec.Entrypoint}, []string{"/bin/prog", "/usr/bin/data"})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if !strings.Contains(sum, spec.Ref) {
		t.Errorf("summary %q does not name %s", sum, spec.Ref)
	}

	bad := []struct {
		name  string
		want  imageSpec
		files []string
		msg   string
	}{
		{"other ref", imageSpec{Ref: "registry.example/sig/prog:v9", Entrypoint: spec.Entrypoint}, nil, "annotation"},
		{"other entrypoint", imageSpec{Ref: spec.Ref, Entrypoint: []string{"/bin/prog"}}, nil, "entrypoint"},
		{"missing file", imageSpec{Ref: spec.Ref, Entrypoint: spec.Entrypoint}, []string{"/sbin/lvm"}, "not in the image"},
	}
	for _, b := range bad {
		if _, err := verify(layoutDir, b.want, b.files); err == nil || !strings.Contains(err.Error(), b.msg) {
			t.Errorf("%s: verify = %v, want an error with %q", b.name, err, b.msg)
		}
	}
}

// A corrupted blob must not pass: validate.Image checks every digest.
func TestVerifyCatchesCorruptBlob(t *testing.T) {
	dir := t.TempDir()
	archive := filepath.Join(dir, "prog.tar")
	if err := pack(imageSpec{Ref: "r.example/p:1", Layers: []string{writeLayer(t, dir)}, Entrypoint: []string{"/bin/prog"}}, archive); err != nil {
		t.Fatal(err)
	}
	layoutDir := unpack(t, archive)
	blobs, _ := filepath.Glob(filepath.Join(layoutDir, "blobs", "sha256", "*"))
	var biggest string
	var size int64
	for _, b := range blobs {
		if fi, err := os.Stat(b); err == nil && fi.Size() > size {
			biggest, size = b, fi.Size()
		}
	}
	data, err := os.ReadFile(biggest)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(biggest, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(layoutDir, imageSpec{Ref: "r.example/p:1", Entrypoint: []string{"/bin/prog"}}, nil); err == nil {
		t.Fatal("verify accepted an archive with a corrupted layer blob")
	}
}

func TestLookup(t *testing.T) {
	tree := map[string]entry{
		"/usr":           {typ: tar.TypeDir, mode: 0o755},
		"/usr/bin":       {typ: tar.TypeDir, mode: 0o755},
		"/usr/bin/prog":  {typ: tar.TypeReg, mode: 0o755},
		"/usr/bin/data":  {typ: tar.TypeReg, mode: 0o644},
		"/bin":           {typ: tar.TypeSymlink, linkname: "usr/bin"},
		"/usr/bin/rel":   {typ: tar.TypeSymlink, linkname: "prog"},
		"/usr/bin/loop":  {typ: tar.TypeSymlink, linkname: "loop"},
		"/usr/bin/dirty": {typ: tar.TypeSymlink, linkname: "../bin/./prog"},
	}
	for _, c := range []struct {
		path    string
		program bool
		msg     string // "" = found
	}{
		{"/bin/prog", true, ""},
		{"/bin/rel", true, ""},
		{"/usr/bin/dirty", true, ""},
		{"/bin/data", false, ""},
		{"/bin/data", true, "not executable"},
		{"/usr/bin", true, "not a regular file"},
		{"/bin/nothing", false, "not in the image"},
		{"/bin/loop", false, "too many symlinks"},
	} {
		err := lookup(tree, c.path, c.program)
		if (c.msg == "" && err != nil) || (c.msg != "" && (err == nil || !strings.Contains(err.Error(), c.msg))) {
			t.Errorf("lookup(%s, program=%v) = %v, want %q", c.path, c.program, err, c.msg)
		}
	}
}

// A plain tar layer is stored zstd-compressed (faster to import on the emulated node), a gzip
// one as it is.
func TestPackCompression(t *testing.T) {
	dir := t.TempDir()
	plain := writeLayer(t, dir)
	gz := filepath.Join(dir, "layer.tar.gz")
	if out, err := exec.Command("sh", "-c", "gzip -n -c "+plain+" > "+gz).CombinedOutput(); err != nil {
		t.Fatalf("gzip: %v: %s", err, out)
	}
	for _, c := range []struct {
		layer string
		want  types.MediaType
	}{{plain, types.OCILayerZStd}, {gz, types.OCILayer}} {
		archive := filepath.Join(dir, "prog.tar")
		if err := pack(imageSpec{Ref: "r.example/p:1", Layers: []string{c.layer}, Entrypoint: []string{"/bin/prog"}}, archive); err != nil {
			t.Fatal(err)
		}
		idx, err := layout.ImageIndexFromPath(unpack(t, archive))
		if err != nil {
			t.Fatal(err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		img, err := idx.Image(im.Manifests[0].Digest)
		if err != nil {
			t.Fatal(err)
		}
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Layers[0].MediaType; got != c.want {
			t.Errorf("%s: layer media type %s, want %s", filepath.Base(c.layer), got, c.want)
		}
		if _, err := verify(unpack(t, archive), imageSpec{Ref: "r.example/p:1", Entrypoint: []string{"/bin/prog"}}, []string{"/usr/bin/data"}); err != nil {
			t.Errorf("%s: verify: %v", filepath.Base(c.layer), err)
		}
	}
}
