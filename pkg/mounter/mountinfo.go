package mounter

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// DeviceOf returns the block device a mount point is backed by, as a real
// /dev path (/dev/dm-3 for an LVM volume, never a /dev/vg/lv symlink), so
// callers compare it with filepath.EvalSymlinks of their own device path.
// For a raw block target (a device node bind-mounted onto a file) it is that
// device. A path that is not a mount point is ErrNotMounted; a mount that is
// not backed by a block device (tmpfs, ...) is ErrNotBlockDevice.
func (m *Mounter) DeviceOf(mountPath string) (string, error) {
	mi, err := m.mountInfo(mountPath)
	if err != nil {
		return "", err
	}
	// A bind-mounted device node shows up in mountinfo as a devtmpfs mount;
	// the device is the node itself.
	var st unix.Stat_t
	if err := unix.Stat(mountPath, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK {
		return devicePath(unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	// The mount's device number is authoritative; the source string is only
	// what was passed to mount(8).
	if mi.Major != 0 {
		if p, err := devicePath(uint32(mi.Major), uint32(mi.Minor)); err == nil {
			return p, nil
		}
	}
	if strings.HasPrefix(mi.Source, "/dev/") {
		if p, err := filepath.EvalSymlinks(mi.Source); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s is a %s mount of %q", ErrNotBlockDevice, mountPath, mi.FsType, mi.Source)
}

// mountInfo returns the mountinfo entry of the mount at path: the top one
// when several are stacked there. ErrNotMounted if there is none.
func (m *Mounter) mountInfo(path string) (*mount.MountInfo, error) {
	want := resolvePath(path)
	infos, err := mount.ParseMountInfo(m.procInfo)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", m.procInfo, err)
	}
	var found *mount.MountInfo
	for i := range infos {
		// Later lines are mounted on top of earlier ones at the same path.
		if unescapeMountPath(infos[i].MountPoint) == want {
			found = &infos[i]
		}
	}
	if found == nil {
		if _, err := os.Lstat(path); err != nil {
			return nil, pathError(path, err)
		}
		return nil, fmt.Errorf("%w: %s", ErrNotMounted, path)
	}
	return found, nil
}

// resolvePath turns path into the form the kernel lists in mountinfo:
// absolute, symlinks resolved. Resolution fails on a stale mount point (its
// lstat fails); the cleaned absolute path is then the best guess.
func resolvePath(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = path
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		return r
	}
	return filepath.Clean(abs)
}

// unescapeMountPath undoes the octal escapes (\040 for a space, \011, \012,
// \134) the kernel uses in mountinfo paths.
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// devicePath maps a device number to its /dev node through sysfs, which
// names the kernel device (dm-3, loop0) whatever symlinks udev created.
func devicePath(major, minor uint32) (string, error) {
	uevent := fmt.Sprintf("/sys/dev/block/%d:%d/uevent", major, minor)
	f, err := os.Open(uevent)
	if err != nil {
		return "", fmt.Errorf("look up block device %d:%d: %w", major, minor, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if name, ok := strings.CutPrefix(sc.Text(), "DEVNAME="); ok {
			return "/dev/" + name, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read %s: %w", uevent, err)
	}
	return "", fmt.Errorf("no DEVNAME in %s", uevent)
}

// OtherMounts lists the other mount points of the filesystem mounted at path
// (same device, e.g. the bind mounts of a staged volume), so the node can
// refuse a second publish of a single-writer volume.
func (m *Mounter) OtherMounts(path string) ([]string, error) {
	mi, err := m.mountInfo(path)
	if err != nil {
		return nil, err
	}
	infos, err := mount.ParseMountInfo(m.procInfo)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", m.procInfo, err)
	}
	self := resolvePath(path)
	var out []string
	for i := range infos {
		p := unescapeMountPath(infos[i].MountPoint)
		if infos[i].Major == mi.Major && infos[i].Minor == mi.Minor && p != self {
			out = append(out, p)
		}
	}
	return out, nil
}
