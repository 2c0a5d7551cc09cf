package superblock

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// image is a sparse file of size bytes in a temp dir.
func image(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func mkfs(t *testing.T, argv ...string) {
	t.Helper()
	if _, err := exec.LookPath(argv[0]); err != nil {
		t.Skipf("%s not installed", argv[0])
	}
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", argv, err, out)
	}
}

// The UUIDs mkfs gave, as blkid prints them; none on a blank device; an
// xfs superblock whose mkfs had not finished (sb_inprogress) counts as none.
func TestUUIDs(t *testing.T) {
	const u = "0b7c9d2e-1111-4222-8333-444455556666"
	blank := image(t, 320<<20)
	if got, err := UUIDs(blank); err != nil || len(got) != 0 {
		t.Fatalf("blank device: %q, %v; want none", got, err)
	}

	ext := image(t, 320<<20)
	mkfs(t, "mkfs.ext4", "-q", "-F", "-m0", "-U", u, ext)
	if got, err := UUIDs(ext); err != nil || !slices.Equal(got, []string{u}) {
		t.Fatalf("ext4: %q, %v; want [%s]", got, err, u)
	}

	xfs := image(t, 320<<20)
	mkfs(t, "mkfs.xfs", "-q", "-f", "-m", "uuid="+u, xfs)
	if got, err := UUIDs(xfs); err != nil || !slices.Equal(got, []string{u}) {
		t.Fatalf("xfs: %q, %v; want [%s]", got, err, u)
	}
	if out, err := exec.Command("blkid", "-p", "-s", "UUID", "-o", "value", xfs).Output(); err == nil && string(out) != u+"\n" {
		t.Fatalf("blkid reads %q, this package %s", out, u)
	}

	f, err := os.OpenFile(xfs, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{1}, 126); err != nil { // struct xfs_dsb's sb_inprogress, as xfs_db shows it
		t.Fatal(err)
	}
	f.Close()
	if got, err := UUIDs(xfs); err != nil || len(got) != 0 {
		t.Fatalf("xfs with sb_inprogress set: %q, %v; want none", got, err)
	}
}

// A device that cannot be opened or read is an error, never "nothing there".
func TestUUIDsUnreadable(t *testing.T) {
	if got, err := UUIDs(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatalf("missing device: %q, nil error", got)
	}
	if got, err := UUIDs(image(t, 1024)); err == nil {
		t.Fatalf("device shorter than the superblocks: %q, nil error", got)
	}
	if got, err := UUIDs(t.TempDir()); err == nil {
		t.Fatalf("a directory: %q, nil error", got)
	}
}
