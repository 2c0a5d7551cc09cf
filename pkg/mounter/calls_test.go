package mounter

import (
	"slices"
	"testing"

	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
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
