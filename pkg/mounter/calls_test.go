package mounter

import (
	"bytes"
	"errors"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
	testingexec "k8s.io/utils/exec/testing"
)

// recorder logs the tools a Mounter runs: blkid, mkfs, fsck through the exec
// interface, mount and umount through the mount interface (mount-utils runs
// those itself, so they are logged at that seam). The calls still happen.
type recorder struct{ log []string }

type recExec struct {
	utilexec.Interface
	r *recorder
}

func (e recExec) Command(cmd string, args ...string) utilexec.Cmd {
	e.r.log = append(e.r.log, cmd)
	return e.Interface.Command(cmd, args...)
}

type recMount struct {
	mount.Interface
	r *recorder
}

func (m recMount) Mount(source, target, fstype string, options []string) error {
	m.r.log = append(m.r.log, "mount")
	return m.Interface.Mount(source, target, fstype, options)
}

func (m recMount) MountSensitive(source, target, fstype string, options, sensitive []string) error {
	m.r.log = append(m.r.log, "mount")
	return m.Interface.MountSensitive(source, target, fstype, options, sensitive)
}

func (m recMount) Unmount(target string) error {
	m.r.log = append(m.r.log, "umount")
	return m.Interface.Unmount(target)
}

// record makes e.m log its tool calls.
func (e *env) record() *recorder {
	r := &recorder{}
	e.m = NewWith(recExec{utilexec.New(), r}, recMount{mount.New(""), r})
	return r
}

func (r *recorder) want(t *testing.T, what string, want ...string) {
	t.Helper()
	if !slices.Equal(r.log, want) {
		t.Errorf("%s ran %q, want exactly %q", what, r.log, want)
	}
	r.log = nil
}

// TestFormatAndMountToolCalls pins the tools each kind of mount runs (issue
// 13: a publish probed the device twice and fscked the filesystem it had just
// made): a blank device is probed once, formatted and mounted; an existing
// filesystem is probed once, checked and mounted read-write, or only mounted
// read-only.
func TestFormatAndMountToolCalls(t *testing.T) {
	for _, tc := range []struct {
		fsType string
		size   int64
	}{{FSTypeExt4, 64 << 20}, {FSTypeXFS, MinXFSBytes}} {
		t.Run(tc.fsType, func(t *testing.T) {
			e := newEnv(t)
			dev := e.loop(tc.size)
			r := e.record()
			target := e.path("mnt")
			if err := e.m.FormatAndMount(dev, target, tc.fsType, nil); err != nil {
				t.Fatalf("first mount: %v", err)
			}
			r.want(t, "first mount of a blank device", "blkid", "mkfs."+tc.fsType, "mount")
			if err := e.m.FormatAndMount(dev, target, tc.fsType, nil); err != nil {
				t.Fatalf("repeated mount: %v", err)
			}
			r.want(t, "repeated mount (already mounted)")
			if err := e.m.Unmount(target); err != nil {
				t.Fatal(err)
			}
			r.want(t, "unmount", "umount")
			if err := e.m.FormatAndMount(dev, target, tc.fsType, nil); err != nil {
				t.Fatalf("mount of the existing filesystem: %v", err)
			}
			r.want(t, "read-write mount of an existing filesystem", "blkid", "fsck", "mount")
			if err := e.m.Unmount(target); err != nil {
				t.Fatal(err)
			}
			r.log = nil
			if err := e.m.FormatAndMount(dev, target, tc.fsType, []string{"ro"}); err != nil {
				t.Fatalf("read-only mount of the existing filesystem: %v", err)
			}
			r.want(t, "read-only mount of an existing filesystem", "blkid", "mount")
			if err := e.m.Unmount(target); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// fakeTool answers one command of a FakeExec with output and an exit status
// (0: success; -1: the tool is not installed).
func fakeTool(out string, status int) testingexec.FakeCommandAction {
	return func(cmd string, args ...string) utilexec.Cmd {
		c := &testingexec.FakeCmd{CombinedOutputScript: []testingexec.FakeAction{func() ([]byte, []byte, error) {
			switch status {
			case 0:
				return []byte(out), nil, nil
			case -1:
				return nil, nil, utilexec.ErrExecutableNotFound
			}
			return []byte(out), nil, testingexec.FakeExitError{Status: status}
		}}}
		return testingexec.InitFakeCmd(c, cmd, args...)
	}
}

// The fsck before a read-write mount of an existing filesystem keeps
// mount-utils' rules now that carve runs it: errors left uncorrected (exit 4,
// e2fsck's words) refuse the mount; corrected errors, other failures and a
// missing fsck let it go on.
func TestFormatAndMountFsckRules(t *testing.T) {
	e := newEnv(t)
	dev := e.loop(64 << 20)
	// Recorded: `fsck -a` (util-linux 2.38.1, e2fsprogs 1.47.0) of an ext4
	// image whose root inode was cleared (debugfs -w -R "clri <2>", "ssv state 2"); exit 4.
	const uncorrected = "fsck from util-linux 2.38.1\n/tmp/fsckimg contains a file system with errors, check forced.\n" +
		"/tmp/fsckimg: Root inode is not a directory.  \n\n" +
		"/tmp/fsckimg: UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY.\n\t(i.e., without -a or -p options)\n"
	for _, tc := range []struct {
		name    string
		out     string
		status  int
		mounted bool
	}{
		{"clean", "fsck from util-linux 2.38.1\n/tmp/fsckimg: clean, 11/16384 files, 9513/65536 blocks\n", 0, true},
		{"corrected", "fsck from util-linux 2.38.1\n/tmp/fsckimg: recovering journal\n", 1, true},
		{"uncorrected", uncorrected, 4, false},
		{"fsck failed otherwise", "fsck: fsck.ext4: not found\n", 8, true},
		{"no fsck", "", -1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{}
			fe := &testingexec.FakeExec{CommandScript: []testingexec.FakeCommandAction{
				fakeTool("DEVNAME="+dev+"\nTYPE=ext4\n", 0), fakeTool(tc.out, tc.status),
			}}
			// The mount itself is recorded, not done: the device holds no filesystem.
			m := NewWith(recExec{fe, r}, recMount{mount.NewFakeMounter(nil), r})
			err := m.FormatAndMount(dev, e.path(tc.name), FSTypeExt4, nil)
			if tc.mounted {
				if err != nil {
					t.Fatalf("FormatAndMount: %v", err)
				}
				r.want(t, "mount after fsck exit "+strconv.Itoa(tc.status), "blkid", "fsck", "mount")
				return
			}
			if err == nil || !strings.Contains(err.Error(), "contains a file system with errors") || strings.Contains(err.Error(), "\n") {
				t.Fatalf("FormatAndMount after fsck exit 4: %v; want a one-line error quoting fsck", err)
			}
			r.want(t, "refused mount", "blkid", "fsck")
		})
	}
}

// On a host where systemd runs, mount-utils' New wraps every mount in
// `systemd-run --scope` (after a probe run of it): a second process and a
// transient unit per mount, which only keep FUSE daemons alive (issue 13).
// carve's mounts run mount(8) directly. The fake systemd-run first on PATH
// answers the probe and runs what it wraps, as the real one does; no mount
// may go through it.
func TestMountsRunWithoutSystemdScope(t *testing.T) {
	e := newEnv(t)
	bin := t.TempDir()
	calls := filepath.Join(bin, "calls")
	script := "#!/bin/sh\necho \"$*\" >>" + calls + "\n" +
		"while [ $# -gt 0 ] && [ \"$1\" != -- ]; do shift; done\n" +
		"[ $# -gt 0 ] || exit 0\nshift\nexec \"$@\"\n"
	if err := os.WriteFile(filepath.Join(bin, "systemd-run"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	m := New()
	src, tgt := e.path("src"), e.path("tgt")
	mountTmpfs(t, src)
	if err := m.BindMount(src, tgt, true, nil); err != nil {
		t.Fatalf("BindMount: %v", err)
	}
	if mounted, err := m.IsMountPoint(tgt); err != nil || !mounted {
		t.Errorf("after BindMount: IsMountPoint(%s) = %v, %v; want true", tgt, mounted, err)
	}
	if err := m.Unmount(tgt); err != nil {
		t.Fatalf("Unmount: %v", err)
	}
	if err := unix.Unmount(src, 0); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(calls)
	switch {
	case err == nil:
		t.Errorf("the mounts ran through systemd-run: %q", data)
	case !errors.Is(err, fs.ErrNotExist):
		t.Fatal(err)
	}
}

// Every tool a Mounter runs is logged with its duration at --v=4: the node-path
// benchmark (test/e2e) and operators read a call's tool times from these lines.
func TestToolRunsAreLogged(t *testing.T) {
	e := newEnv(t)
	dev := e.loop(64 << 20)
	var logs bytes.Buffer
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	for k, v := range map[string]string{"v": "4", "logtostderr": "false", "alsologtostderr": "false", "stderrthreshold": "FATAL"} {
		if err := fs.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	klog.SetOutput(&logs)
	t.Cleanup(func() {
		klog.Flush()
		klog.SetOutput(os.Stderr)
		for k, v := range map[string]string{"v": "0", "logtostderr": "true"} {
			_ = fs.Set(k, v)
		}
	})
	target := e.path("mnt")
	if err := e.m.FormatAndMount(dev, target, "ext4", nil); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Unmount(target); err != nil {
		t.Fatal(err)
	}
	klog.Flush()
	line := regexp.MustCompile(`"Tool ran" cmd=\["([\w.]+)"[^\]]*\] duration="([^"]+)"`)
	var ran []string
	for _, m := range line.FindAllStringSubmatch(logs.String(), -1) {
		if _, err := time.ParseDuration(m[2]); err != nil {
			t.Errorf("%s logged with duration %q: %v", m[1], m[2], err)
		}
		ran = append(ran, m[1])
	}
	if want := []string{"blkid", "mkfs.ext4", "mount", "umount"}; !slices.Equal(ran, want) {
		t.Errorf("logged tool runs %q, want %q; log:\n%s", ran, want, logs.String())
	}
}

// blkid exits 2 both when it finds nothing and when it cannot open or read
// the device, and mount-utils takes either for "unformatted". A device whose
// superblock says ext4 (blkid could not read it a moment before) or that
// cannot be read is never formatted: mkfs would destroy a volume's data.
func TestFormatRefusesUnreadOrFormatted(t *testing.T) {
	e := newEnv(t)
	dev := e.loop(64 << 20)
	if err := e.m.FormatAndMount(dev, e.path("first"), FSTypeExt4, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Unmount(e.path("first")); err != nil {
		t.Fatal(err)
	}
	r := &recorder{}
	fe := &testingexec.FakeExec{CommandScript: []testingexec.FakeCommandAction{fakeTool("", 2), fakeTool("", 0)}} // blkid: "nothing"; a mkfs that must not run
	m := NewWith(recExec{fe, r}, recMount{mount.NewFakeMounter(nil), r})
	err := m.FormatAndMount(dev, e.path("second"), FSTypeExt4, nil)
	if err == nil || !strings.Contains(err.Error(), "refusing to format") {
		t.Fatalf("FormatAndMount of an ext4 device blkid did not read: %v, want a refusal", err)
	}
	r.want(t, "FormatAndMount of an ext4 device blkid did not read", "blkid")

	if err := checkBlank(filepath.Join(t.TempDir(), "gone")); err == nil {
		t.Fatal("checkBlank of a device it cannot open: nil")
	}
	blank := e.loop(64 << 20)
	if err := checkBlank(blank); err != nil {
		t.Fatalf("checkBlank of a blank device: %v", err)
	}
}
