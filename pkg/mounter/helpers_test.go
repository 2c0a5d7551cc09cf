package mounter

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/carve-csi/carve/test/loopdev"
)

// env is one test's scratch area: a temp dir for mount points and the loop
// devices it took. Every loop device is followed by a cleanup that unmounts
// whatever is still mounted under the temp dir, so mounts are gone before
// loopdev detaches the device, even when the test failed half way.
type env struct {
	t    *testing.T
	m    *Mounter
	base string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: mounting needs root")
	}
	// Resolved, because mountinfo lists resolved paths.
	base, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, m: New(), base: base}
	e.cleanupMounts()
	return e
}

// loop attaches a loop device of size bytes (at most 2 per test: the machine
// has 8 and other packages' tests share them).
func (e *env) loop(size int64) string {
	e.t.Helper()
	dev := loopdev.New(e.t, size)
	e.cleanupMounts()
	return dev
}

func (e *env) path(elem ...string) string {
	return filepath.Join(append([]string{e.base}, elem...)...)
}

// cleanupMounts registers a sweep of mounts left under base. A test that
// passed must have unmounted everything itself, so leftovers fail it; after
// a failure they are expected and only removed.
func (e *env) cleanupMounts() {
	t := e.t
	t.Cleanup(func() {
		left := mountsUnder(t, e.base)
		if len(left) == 0 {
			return
		}
		if !t.Failed() {
			t.Errorf("still mounted under %s at the end of the test: %v", e.base, left)
		}
		for range maxStackedMounts {
			left = mountsUnder(t, e.base)
			if len(left) == 0 {
				return
			}
			for _, p := range slices.Backward(left) {
				if err := unix.Unmount(p, 0); err != nil {
					// Busy or dead: detach it so the loop device can go.
					_ = unix.Unmount(p, unix.MNT_DETACH)
				}
			}
		}
		t.Errorf("could not unmount %v", mountsUnder(t, e.base))
	})
}

// mountsUnder lists mount points at or below dir, read straight from
// /proc/self/mountinfo (independent of the code under test).
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatalf("parse mountinfo: %v", err)
	}
	var out []string
	for _, mi := range infos {
		p := unescapeMountPath(mi.MountPoint)
		if p == dir || strings.HasPrefix(p, dir+"/") {
			out = append(out, p)
		}
	}
	return out
}

// mountCount is how many mounts are stacked at exactly path.
func mountCount(t *testing.T, path string) int {
	t.Helper()
	n := 0
	for _, p := range mountsUnder(t, path) {
		if p == path {
			n++
		}
	}
	return n
}

// topMount is the mountinfo entry on top at path, read independently.
func topMount(t *testing.T, path string) mount.MountInfo {
	t.Helper()
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatalf("parse mountinfo: %v", err)
	}
	var found *mount.MountInfo
	for i := range infos {
		if unescapeMountPath(infos[i].MountPoint) == path {
			found = &infos[i]
		}
	}
	if found == nil {
		t.Fatalf("%s is not in /proc/self/mountinfo", path)
	}
	return *found
}

// blkidType is the filesystem type blkid finds on dev, "" for none.
func blkidType(t *testing.T, dev string) string {
	t.Helper()
	out, err := exec.Command("blkid", "-p", "-s", "TYPE", "-o", "value", dev).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 2 {
			return ""
		}
		t.Fatalf("blkid %s: %v", dev, err)
	}
	return strings.TrimSpace(string(out))
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// growLoop enlarges the loop device's backing file and makes the kernel
// re-read the size, as an LV extension would.
func growLoop(t *testing.T, dev string, size int64) {
	t.Helper()
	backing := strings.TrimSpace(run(t, "losetup", "-n", "-O", "BACK-FILE", dev))
	if err := os.Truncate(backing, size); err != nil {
		t.Fatal(err)
	}
	run(t, "losetup", "-c", dev)
	got := strings.TrimSpace(run(t, "blockdev", "--getsize64", dev))
	if got != strconv.FormatInt(size, 10) {
		t.Fatalf("%s is %s bytes after growing, want %d", dev, got, size)
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	// Sync so the blocks are allocated (ext4 and xfs allocate lazily) and
	// statfs sees them.
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustEqual(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: got %q, want %q", what, got, want)
	}
}

// mountTmpfs mounts a small tmpfs at dir: a mount point that is not a
// block-backed volume.
func mountTmpfs(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("carve-test", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs at %s: %v", dir, err)
	}
}

// mountStaleFUSE leaves a FUSE mount at dir whose server is gone: opening
// /dev/fuse, mounting with that fd and closing it aborts the connection, and
// every access then fails with ENOTCONN, like a crashed FUSE daemon.
func mountStaleFUSE(t *testing.T, dir string) {
	t.Helper()
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR, 0)
	if err != nil {
		t.Skipf("skipping: no FUSE to fake a stale mount: %v", err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	opts := "fd=" + strconv.Itoa(fd) + ",rootmode=40000,user_id=0,group_id=0"
	err = unix.Mount("carve-stale", dir, "fuse", 0, opts)
	unix.Close(fd)
	if err != nil {
		t.Skipf("skipping: cannot mount FUSE to fake a stale mount: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != unix.ENOTCONN {
		t.Fatalf("stat of the dead FUSE mount %s: got %v, want ENOTCONN", dir, err)
	}
}
