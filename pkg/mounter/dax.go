package mounter

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// DAX (direct access) mounts map persistent memory straight into the page
// cache's place. FormatAndMount does them when its options contain "dax" (or
// "dax=always"): the device must be DAX-capable (sysfs queue/dax of its
// block device is 1: a PMEM namespace in fsdax mode, or a device-mapper
// device on one), a new filesystem is made DAX-ready (ext4 with a page-sized
// block, xfs without reflink), and the mount must come up with DAX, which the
// kernel otherwise drops silently (xfs: "DAX unsupported by block device.
// Turning off DAX."). Any of these failing is ErrDAXUnsupported, before
// anything is formatted, or after unmounting again.

// ErrDAXUnsupported: DAX was asked for on a device or filesystem that cannot do it.
var ErrDAXUnsupported = errors.New("DAX is not supported")

// OptionDAX is the mount option that asks for DAX.
const OptionDAX = "dax"

// WantsDAX reports whether mount options ask for DAX.
func WantsDAX(options []string) bool {
	return slices.Contains(options, OptionDAX) || slices.Contains(options, "dax=always")
}

// DAXSupported reports whether the block device (by its device number) can
// do DAX, from /sys/dev/block/<major>:<minor>/queue/dax (a partition's
// answer is its disk's).
func (m *Mounter) DAXSupported(device string) (bool, error) {
	st, err := statBlockDevice(device)
	if err != nil {
		return false, err
	}
	ok, err := m.daxSupported(unix.Major(st.Rdev), unix.Minor(st.Rdev))
	if err != nil {
		return false, fmt.Errorf("DAX capability of %s: %w", device, err)
	}
	return ok, nil
}

func (m *Mounter) daxSupported(maj, mnr uint32) (bool, error) {
	dir, err := filepath.EvalSymlinks(filepath.Join(m.sysBlock, fmt.Sprintf("%d:%d", maj, mnr)))
	if err != nil {
		return false, err
	}
	b, err := os.ReadFile(filepath.Join(dir, "queue", "dax"))
	if errors.Is(err, fs.ErrNotExist) {
		b, err = os.ReadFile(filepath.Join(filepath.Dir(dir), "queue", "dax"))
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil // a kernel without the attribute has no DAX for it either
	}
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// daxFormatOptions are the mkfs options a DAX filesystem needs: ext4 blocks
// of the page size (mke2fs picks 1 KiB below 512 MiB, and DAX then fails),
// xfs without reflink.
func daxFormatOptions(fsType string) []string {
	switch fsType {
	case FSTypeExt4:
		return []string{"-b", strconv.Itoa(os.Getpagesize())}
	case FSTypeXFS:
		return []string{"-m", "reflink=0"}
	}
	return nil
}

// hasDAX reports whether a mount runs with DAX ("dax" or "dax=always" among
// its superblock options, as ext4 and xfs show it).
func hasDAX(mi *mount.MountInfo) bool {
	for _, o := range append(slices.Clone(mi.SuperOptions), mi.MountOptions...) {
		if o == OptionDAX || o == "dax=always" {
			return true
		}
	}
	return false
}

// MountedWithDAX reports whether the mount at path runs with DAX.
func (m *Mounter) MountedWithDAX(path string) (bool, error) {
	mi, err := m.mountInfo(path)
	if err != nil {
		return false, err
	}
	return hasDAX(mi), nil
}
