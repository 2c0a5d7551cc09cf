package mounter

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMinSizeMatchesMkfs formats a loop device of exactly MinSizeBytes with
// every mkfs variant carve runs (plain and DAX-ready), and one 4 KiB smaller:
// the first must work and the second fail, so the constants are the installed
// tools' real minimums.
func TestMinSizeMatchesMkfs(t *testing.T) {
	e := newEnv(t)
	dev := e.loop(MinXFSBytes)
	for _, tc := range []struct {
		fs   string
		opts []string
		min  int64
	}{
		{FSTypeXFS, nil, MinXFSBytes},
		{FSTypeXFS, daxFormatOptions(FSTypeXFS), MinXFSBytes},
		{FSTypeExt4, daxFormatOptions(FSTypeExt4), MinExt4Bytes},
	} {
		for _, size := range []int64{tc.min, tc.min - 4096} {
			setLoopSize(t, dev, size)
			args := append(slices.Clone(tc.opts), "-f", dev)
			if tc.fs == FSTypeExt4 {
				args = append(slices.Clone(tc.opts), "-F", "-m0", dev)
			}
			out, err := exec.Command("mkfs."+tc.fs, args...).CombinedOutput()
			if size == tc.min && err != nil {
				t.Errorf("mkfs.%s %v on %d bytes (MinSizeBytes) failed: %v: %s", tc.fs, tc.opts, size, err, out)
			}
			if size < tc.min && err == nil {
				t.Errorf("mkfs.%s %v on %d bytes (below MinSizeBytes %d) worked: the minimum is lower than carve assumes", tc.fs, tc.opts, size, tc.min)
			}
			run(t, "wipefs", "-a", dev)
		}
	}
}

// setLoopSize resizes the loop device's backing file and makes the kernel re-read it.
func setLoopSize(t *testing.T, dev string, size int64) {
	t.Helper()
	backing := strings.TrimSpace(run(t, "losetup", "-n", "-O", "BACK-FILE", dev))
	if err := os.Truncate(backing, size); err != nil {
		t.Fatal(err)
	}
	run(t, "losetup", "-c", dev)
	if got, err := deviceSize(dev); err != nil || got != size {
		t.Fatalf("%s: %d bytes, %v; want %d", dev, got, err, size)
	}
}

// A blank device below the filesystem's minimum is refused before mkfs runs,
// with ErrDeviceTooSmall and a one-line message naming the minimum.
func TestFormatAndMountTooSmall(t *testing.T) {
	e := newEnv(t)
	dev := e.loop(100 * mib)
	target := e.path("staging", "small")
	err := e.m.FormatAndMount(dev, target, FSTypeXFS, nil)
	if !errors.Is(err, ErrDeviceTooSmall) {
		t.Fatalf("FormatAndMount xfs on 100 MiB: got %v, want ErrDeviceTooSmall", err)
	}
	if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "314572800") {
		t.Errorf("error %q: want one line naming the minimum 314572800", msg)
	}
	if got := blkidType(t, dev); got != "" {
		t.Errorf("device holds %q after the refusal, want nothing written", got)
	}
	if n := mountCount(t, target); n != 0 {
		t.Errorf("%s mounted after the refusal", target)
	}
	// ext4 fits on the same device.
	if err := e.m.FormatAndMount(dev, target, FSTypeExt4, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Unmount(target); err != nil {
		t.Fatal(err)
	}
}

// A blank device asked for read-only is formatted first and then mounted
// read-only (mount-utils alone refuses: "cannot mount unformatted disk ...
// read-only mode"), for both filesystems.
func TestFormatAndMountReadOnlyBlank(t *testing.T) {
	e := newEnv(t)
	dev := e.loop(MinXFSBytes)
	for _, fs := range []string{FSTypeExt4, FSTypeXFS} {
		target := e.path("ro", fs)
		if err := e.m.FormatAndMount(dev, target, fs, []string{"ro"}); err != nil {
			t.Fatalf("read-only FormatAndMount %s of a blank device: %v", fs, err)
		}
		if got := blkidType(t, dev); got != fs {
			t.Errorf("blkid type %q, want %s", got, fs)
		}
		if mi := topMount(t, target); mi.FsType != fs || !slices.Contains(mi.MountOptions, "ro") {
			t.Errorf("mount at %s: %s %v, want read-only %s", target, mi.FsType, mi.MountOptions, fs)
		}
		if err := os.WriteFile(filepath.Join(target, "f"), []byte("x"), 0o600); !errors.Is(err, unix.EROFS) {
			t.Errorf("write to the read-only mount: %v, want EROFS", err)
		}
		// Repeated: already mounted read-only.
		if err := e.m.FormatAndMount(dev, target, fs, []string{"ro"}); err != nil {
			t.Errorf("repeated read-only FormatAndMount: %v", err)
		}
		if err := e.m.Unmount(target); err != nil {
			t.Fatal(err)
		}
		run(t, "wipefs", "-a", dev)
	}
}

// Failing tools on real devices: the error is one line with the tool's
// reason, never its usage text or mount-utils' echo of the command.
func TestToolErrorsOneLineReal(t *testing.T) {
	e := newEnv(t)
	dev := e.loop(MinXFSBytes)
	err := e.m.format(dev, FSTypeXFS, []string{"-m", "bogus=1"})
	wantOneLine(t, err, "unknown option -m bogus=1", "Usage", "blocksize")

	target := e.path("bad-option")
	err = e.m.FormatAndMount(dev, target, FSTypeExt4, []string{"no-such-option"})
	wantOneLine(t, err, "wrong fs type, bad option", "Mounting arguments", "dmesg")
	if n := mountCount(t, target); n != 0 {
		t.Errorf("%s mounted", target)
	}
}

func wantOneLine(t *testing.T, err error, want string, notWant ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one naming %q", want)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || len(msg) > 600 || !strings.Contains(msg, want) {
		t.Errorf("error (%d bytes) %q: want one line with %q", len(msg), msg, want)
	}
	for _, n := range notWant {
		if strings.Contains(msg, n) {
			t.Errorf("error %q contains %q", msg, n)
		}
	}
}

// Recorded tool output (testdata: real runs on this xfsprogs and e2fsprogs)
// and mount-utils' multi-line errors become one line with the cause.
func TestToolErrorsOneLineRecorded(t *testing.T) {
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	exit1 := errors.New("exit status 1")
	err := toolError("mkfs.xfs /dev/vg/lv", exit1, read("mkfs.xfs-too-small.out"))
	wantOneLine(t, err, "Filesystem must be larger than 300MB.", "Usage", "/*")
	if !errors.Is(err, exit1) {
		t.Errorf("errors.Is lost the cause: %v", err)
	}
	wantOneLine(t, toolError("mkfs.ext4 /dev/vg/lv", exit1, read("mkfs.ext4-too-small.out")),
		"Not enough space to build proposed filesystem", "mke2fs 1.47.0")

	// mount-utils' texts, as in mount_linux.go and resizefs_linux.go.
	mountErr := errors.New("mount failed: exit status 32\nMounting command: mount\nMounting arguments: -t ext4 -o ro,defaults /dev/loop3 /t\n" +
		"Output: mount: /t: wrong fs type, bad option, bad superblock on /dev/loop3, missing codepage or helper program, or other error.\n" +
		"       dmesg(1) may have more information after failed mount system call.\n")
	err = oneLine("mount /dev/loop3 at /t as ext4", mountErr)
	wantOneLine(t, err, "mount failed: exit status 32: mount: /t: wrong fs type", "Mounting", "dmesg")
	if !errors.Is(err, mountErr) {
		t.Errorf("errors.Is lost the cause: %v", err)
	}
	resizeErr := errors.New("resize of device /dev/loop3 failed: exit status 1. resize2fs output: resize2fs 1.47.0 (5-Feb-2023)\n" +
		"resize2fs: Permission denied to resize filesystem\n")
	wantOneLine(t, oneLine("resize ext4 filesystem on /dev/loop3", resizeErr), "resize2fs: Permission denied to resize filesystem", "1.47.0")
	umountErr := errors.New("unmount failed: exit status 32\nUnmounting arguments: /t\nOutput: umount: /t: target is busy.\n")
	wantOneLine(t, oneLine("unmount /t", umountErr), "umount: /t: target is busy.", "Unmounting arguments")
	single := errors.New("exit status 2")
	if got := oneLine("probe", single).Error(); got != "probe: exit status 2" {
		t.Errorf("one-line error changed: %q", got)
	}
}
