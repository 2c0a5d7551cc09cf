// Package mounter holds the node's filesystem operations for carve: format and
// mount a logical volume at its staging path, bind-publish it to pods (as a
// filesystem or as a raw block device), unmount, report usage and grow a
// filesystem. It wraps k8s.io/mount-utils so carve formats, fscks and mounts
// exactly the way kubelet and other CSI drivers do.
//
// Every operation is idempotent so that a retried CSI call converges, but the
// Mounter does no locking: the CSI layer serializes calls per volume ID.
package mounter

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
)

// Filesystems carve formats. ext4 is the default, as in kubelet and mount-utils.
const (
	FSTypeExt4    = "ext4"
	FSTypeXFS     = "xfs"
	DefaultFSType = FSTypeExt4
)

// Sentinel errors, matched with errors.Is, so the CSI layer can choose the
// gRPC code without parsing messages.
var (
	// ErrNotFound: the path (target, device or source) does not exist.
	// Errors wrapping it also wrap fs.ErrNotExist.
	ErrNotFound = errors.New("path does not exist")
	// ErrNotMounted: the path exists but is not a mount point.
	ErrNotMounted = errors.New("not a mount point")
	// ErrMountedElsewhere: the target is already a mount point, but of a
	// different device or directory than the one requested.
	ErrMountedElsewhere = errors.New("target is already mounted from a different source")
	// ErrIncompatibleMount: the target is already a mount of the requested
	// source, but read-only where read-write was asked or the reverse.
	ErrIncompatibleMount = errors.New("target is already mounted with a different read-only setting")
	// ErrFilesystemMismatch: the device already holds a filesystem (or a
	// partition table) other than the requested one. carve never reformats.
	ErrFilesystemMismatch = errors.New("device holds a different filesystem")
	// ErrUnsupportedFilesystem: the requested fsType is not ext4 or xfs.
	ErrUnsupportedFilesystem = errors.New("unsupported filesystem type")
	// ErrNotBlockDevice: a path that must be a block device node is not one.
	ErrNotBlockDevice = errors.New("not a block device")
	// ErrStaleMount: the path is a mount point whose filesystem no longer
	// answers (ENOTCONN, ESTALE, EIO, ...). Unmount clears it.
	ErrStaleMount = errors.New("stale or corrupted mount")
)

const (
	dirMode  = 0o750
	fileMode = 0o640
	// maxStackedMounts bounds the unmount loop: a target mounted several
	// times over needs one umount per layer.
	maxStackedMounts = 16
)

// Mounter performs format, mount, unmount, stats and resize on the node.
// The zero value is not usable; call New.
type Mounter struct {
	sfm      *mount.SafeFormatAndMount
	resizer  *mount.ResizeFs
	procInfo string // mountinfo file, /proc/self/mountinfo
	sysBlock string // block devices by number, /sys/dev/block
}

// New returns a Mounter that runs the host's mount, umount, blkid, mkfs.*,
// fsck, resize2fs and xfs_growfs.
//
// mount and umount run directly, never wrapped in `systemd-run --scope`
// (mount-utils' New does that on a host where systemd runs): the scope only
// keeps a FUSE daemon alive when kubelet restarts, and carve mounts ext4, xfs
// and binds, which have none. On such a host it cost a probe run and then a
// second process and a transient systemd unit for every mount (issue 13).
func New() *Mounter {
	return NewWith(utilexec.New(), mount.NewWithoutSystemd(""))
}

// NewWith returns a Mounter that runs blkid, mkfs.*, fsck, resize2fs and
// xfs_growfs through e and mounts and unmounts through mi (tests count the
// tools a CSI call runs this way). Every tool run is logged with its
// duration at --v=4 (toollog.go).
func NewWith(e utilexec.Interface, mi mount.Interface) *Mounter {
	e, mi = timedExec{e}, timedMount{mi}
	return &Mounter{
		sfm:      &mount.SafeFormatAndMount{Interface: mi, Exec: e},
		resizer:  mount.NewResizeFs(e),
		procInfo: "/proc/self/mountinfo",
		sysBlock: "/sys/dev/block",
	}
}

// MountOptions builds the option list for a mount: flags in order without
// empty entries and duplicates, "ro"/"rw" removed from them and "ro" appended
// when readOnly is set or flags asked for "ro" (read-only wins a conflict).
// Unknown flags such as "dax" pass through untouched.
func MountOptions(readOnly bool, flags []string) []string {
	out := make([]string, 0, len(flags)+1)
	for _, f := range flags {
		switch {
		case f == "":
		case f == "ro":
			readOnly = true
		case f == "rw":
		case slices.Contains(out, f):
		default:
			out = append(out, f)
		}
	}
	if readOnly {
		out = append(out, "ro")
	}
	return out
}

// mountFSOptions is what FormatAndMount passes to mount(8): options, then
// "nouuid" for xfs, then "defaults" (last, as mount-utils' FormatAndMount
// passes it). A clone or a volume restored from a snapshot is a block copy
// with its source's filesystem UUID, and xfs refuses to mount a second
// filesystem with the UUID of a mounted one ("Filesystem has duplicate UUID",
// xfs(5) nouuid); ext4 does not check. Found by a newcomer's review of the
// snapshot story (issue 14): the second of several clones could not mount.
func mountFSOptions(fsType string, options []string) []string {
	out := slices.Clone(options)
	if fsType == FSTypeXFS && !slices.Contains(out, "nouuid") {
		out = append(out, "nouuid")
	}
	return append(out, "defaults")
}

// FormatAndMount mounts the filesystem on device at target (a directory,
// created 0750 if missing), first formatting the device with fsType ("" means
// ext4) if blkid finds nothing on it. options are passed to mount(8); "ro"
// among them mounts read-only, after formatting a blank device. It never
// reformats: an existing filesystem of another type is ErrFilesystemMismatch;
// an existing one of fsType gets `fsck -a` before a read-write mount, with
// mount-utils' rules (checkFilesystem);
// a blank device below MinSizeBytes(fsType) is ErrDeviceTooSmall. Errors are
// one line; a tool's whole output is logged at --v=4.
//
// Idempotent: if target is already a mount of device, it returns nil (or
// ErrIncompatibleMount on a read-only or DAX mismatch); if it is a mount of
// anything else, ErrMountedElsewhere. A stale mount at target is unmounted first.
//
// "dax" among the options asks for a DAX mount (see dax.go): a device that
// cannot do DAX, or a mount that comes up without it, is ErrDAXUnsupported.
func (m *Mounter) FormatAndMount(device, target, fsType string, options []string) error {
	return m.FormatAndMountUUID(device, target, fsType, "", options)
}

// FormatAndMountUUID is FormatAndMount, but a filesystem it makes gets UUID
// uuid (mkfs.ext4 -U, mkfs.xfs -m uuid=; "" lets mkfs pick one): the proof
// an inline volume's zeroing finished (backend.CreateRequest.FormatUUID).
// An existing filesystem is mounted whatever its UUID: the backend checked
// it before the device reached here.
func (m *Mounter) FormatAndMountUUID(device, target, fsType, uuid string, options []string) error {
	fsType, err := normalizeFSType(fsType)
	if err != nil {
		return err
	}
	devStat, err := statBlockDevice(device)
	if err != nil {
		return err
	}
	readOnly := slices.Contains(options, "ro")
	dax := WantsDAX(options)
	if dax {
		ok, err := m.DAXSupported(device)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: %s is not a DAX-capable device (its sysfs queue/dax is not 1): only persistent memory mounts with -o dax",
				ErrDAXUnsupported, device)
		}
	}

	mounted, err := m.prepareTarget(target, true)
	if err != nil {
		return err
	}
	if mounted {
		mi, err := m.mountInfo(target)
		if err != nil {
			return err
		}
		// Compare device numbers, not names: the same LV is /dev/vg/lv,
		// /dev/mapper/vg-lv and /dev/dm-N.
		if mi.Root != "/" || uint32(mi.Major) != unix.Major(devStat.Rdev) || uint32(mi.Minor) != unix.Minor(devStat.Rdev) {
			return fmt.Errorf("%w: %s is a %s mount of %s (%d:%d, root %s), not of %s",
				ErrMountedElsewhere, target, mi.FsType, mi.Source, mi.Major, mi.Minor, mi.Root, device)
		}
		if isReadOnly(mi) != readOnly {
			return fmt.Errorf("%w: %s is mounted from %s with read-only=%t, requested read-only=%t",
				ErrIncompatibleMount, target, device, isReadOnly(mi), readOnly)
		}
		if dax && !hasDAX(mi) {
			return fmt.Errorf("%w: %s is mounted from %s without DAX, which was requested", ErrIncompatibleMount, target, device)
		}
		klog.V(4).InfoS("Already mounted", "device", device, "target", target)
		return nil
	}

	// carve probes once and mounts through mount-utils' plain mount, not its
	// FormatAndMount: that one probes again with blkid and fscks the filesystem
	// made a moment ago (two processes per mount, each slow under emulation:
	// issue 13). mount-utils also only warns when
	// the existing filesystem differs and then mounts it anyway; carve
	// refuses, so a wrong fsType is never silently accepted (and a device with
	// data is never handed to mkfs).
	existing, err := m.sfm.GetDiskFormat(device)
	if err != nil {
		return oneLine("probe filesystem on "+device+" (blkid)", err)
	}
	if existing != "" && existing != fsType {
		return fmt.Errorf("%w: %s holds %q, requested %q; refusing to mount or reformat it",
			ErrFilesystemMismatch, device, existing, fsType)
	}
	switch {
	case existing == "":
		// Formatted here, also for a read-only mount: a new volume (an inline
		// one, or a PVC staged read-only first) has nothing on it to protect,
		// and mount-utils would refuse it as "unformatted ... read-only mode".
		if err := checkBlank(device); err != nil {
			return err
		}
		var formatOptions []string
		if dax {
			formatOptions = daxFormatOptions(fsType)
		}
		if uuid != "" {
			formatOptions = append(formatOptions, uuidFormatOptions(fsType, uuid)...)
		}
		if err := m.format(device, fsType, formatOptions); err != nil {
			return err
		}
	case !readOnly:
		// As mount-utils: an existing filesystem is checked before a
		// read-write mount.
		if err := m.checkFilesystem(device); err != nil {
			return err
		}
	}
	if err := m.sfm.Mount(device, target, fsType, mountFSOptions(fsType, options)); err != nil {
		return oneLine(fmt.Sprintf("mount %s at %s as %s", device, target, fsType), err)
	}
	if dax {
		if ok, err := m.MountedWithDAX(target); err != nil || !ok {
			if uerr := m.sfm.Unmount(target); uerr != nil {
				klog.ErrorS(uerr, "Cannot unmount a mount that came up without DAX", "target", target)
			}
			if err != nil {
				return fmt.Errorf("%w: checking the DAX mount of %s at %s: %w; unmounted it", ErrDAXUnsupported, device, target, err)
			}
			return fmt.Errorf("%w: the %s filesystem on %s mounted at %s without DAX (the kernel log says why); unmounted it",
				ErrDAXUnsupported, fsType, device, target)
		}
	}
	klog.InfoS("Mounted filesystem", "device", device, "target", target, "fsType", fsType, "options", options, "formatted", existing == "")
	return nil
}

// BindMount publishes the mounted filesystem at source (the staging path) at
// target, a directory created 0750 if missing. readOnly makes the bind
// read-only: mount-utils binds, then remounts with "bind,remount,ro", which
// makes only this bind read-only, not the staging mount. source must itself be
// a mount point (ErrNotMounted otherwise), so an unstaged volume is never
// replaced by the empty directory under it.
//
// Idempotent like FormatAndMount: the same source already bound at target is
// nil, a read-only mismatch is ErrIncompatibleMount, another source is
// ErrMountedElsewhere.
func (m *Mounter) BindMount(source, target string, readOnly bool, options []string) error {
	srcMounted, err := m.IsMountPoint(source)
	if err != nil {
		return fmt.Errorf("bind source: %w", err)
	}
	if !srcMounted {
		return fmt.Errorf("%w: bind source %s", ErrNotMounted, source)
	}
	srcStat, err := os.Stat(source)
	if err != nil {
		return fmt.Errorf("bind source: %w", pathError(source, err))
	}
	if !srcStat.IsDir() {
		return fmt.Errorf("bind source %s is not a directory", source)
	}

	mounted, err := m.prepareTarget(target, true)
	if err != nil {
		return err
	}
	if mounted {
		// A bind mount's root is the source directory itself: same st_dev
		// and inode.
		tgtStat, err := os.Stat(target)
		if err != nil {
			return fmt.Errorf("stat target %s: %w", target, err)
		}
		if !os.SameFile(srcStat, tgtStat) {
			return fmt.Errorf("%w: %s is mounted, but is not a bind mount of %s", ErrMountedElsewhere, target, source)
		}
		return m.checkReadOnly(target, source, readOnly)
	}

	opts := MountOptions(readOnly, append(slices.Clone(options), "bind"))
	if err := m.sfm.Mount(source, target, "", opts); err != nil {
		m.undoPartialMount(target)
		return oneLine(fmt.Sprintf("bind mount %s at %s", source, target), err)
	}
	klog.InfoS("Bind mounted", "source", source, "target", target, "readOnly", readOnly, "options", opts)
	return nil
}

// BindBlock publishes a raw block device: it creates target as an empty file
// (and its parent directory, 0750) and bind mounts the device node onto it.
// Idempotent: the same device already bound at target is nil; another device
// or file is ErrMountedElsewhere; a read-only mismatch is ErrIncompatibleMount.
//
// readOnly marks the bind read-only, but the kernel does not check mount
// flags when a device node is opened for writing, so it does NOT stop writes
// to the device through target; enforcement has to come from elsewhere
// (container runtime device permissions).
func (m *Mounter) BindBlock(device, target string, readOnly bool) error {
	devStat, err := statBlockDevice(device)
	if err != nil {
		return err
	}
	mounted, err := m.prepareTarget(target, false)
	if err != nil {
		return err
	}
	if mounted {
		var st unix.Stat_t
		if err := unix.Stat(target, &st); err != nil {
			return fmt.Errorf("stat target %s: %w", target, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFBLK || st.Rdev != devStat.Rdev {
			return fmt.Errorf("%w: %s is mounted, but is not a bind mount of block device %s", ErrMountedElsewhere, target, device)
		}
		return m.checkReadOnly(target, device, readOnly)
	}

	opts := MountOptions(readOnly, []string{"bind"})
	if err := m.sfm.Mount(device, target, "", opts); err != nil {
		m.undoPartialMount(target)
		return oneLine(fmt.Sprintf("bind mount block device %s at %s", device, target), err)
	}
	klog.InfoS("Bind mounted block device", "device", device, "target", target, "readOnly", readOnly)
	return nil
}

// Unmount unmounts target (every layer, if mounted more than once, and also
// when the mount is stale) and then removes it: the directory or, for a raw
// block target, the file. A missing target is success. A directory that is
// still not empty after unmounting is an error: it is left in place rather
// than deleting data that was written under an unmounted path.
func (m *Mounter) Unmount(target string) error {
	for i := 0; ; i++ {
		mounted, err := m.IsMountPoint(target)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		stale := errors.Is(err, ErrStaleMount)
		if err != nil && !stale {
			return err
		}
		if !mounted {
			break
		}
		if i == maxStackedMounts {
			return fmt.Errorf("%s is still mounted after %d unmounts", target, maxStackedMounts)
		}
		if err := m.sfm.Unmount(target); err != nil {
			return oneLine("unmount "+target, err)
		}
		klog.InfoS("Unmounted", "target", target, "stale", stale)
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove unmounted target %s: %w", target, err)
	}
	return nil
}

// IsMountPoint reports whether path is a mount point, bind mounts included.
// A missing path is (false, ErrNotFound). A mount point whose filesystem does
// not answer may be (true, ErrStaleMount).
func (m *Mounter) IsMountPoint(path string) (bool, error) {
	mounted, err := m.sfm.IsMountPoint(path)
	switch {
	case err == nil:
		return mounted, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, notFound(path, err)
	case isStale(err):
		return true, fmt.Errorf("%w: %s: %w", ErrStaleMount, path, err)
	default:
		return false, fmt.Errorf("check mount point %s: %w", path, err)
	}
}

// IsBlockDevice reports whether path is a block device node (following
// symlinks, so /dev/vg/lv counts). A missing path is ErrNotFound.
func (m *Mounter) IsBlockDevice(path string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return false, pathError(path, err)
	}
	return st.Mode&unix.S_IFMT == unix.S_IFBLK, nil
}

// Resize grows the filesystem on device, mounted at mountPath, to the size of
// the device: resize2fs for ext4 (online), xfs_growfs for xfs. It is a no-op
// when there is nothing to grow. mountPath must be a mount of device
// (ErrNotMounted / ErrMountedElsewhere otherwise).
func (m *Mounter) Resize(device, mountPath string) error {
	devStat, err := statBlockDevice(device)
	if err != nil {
		return err
	}
	mi, err := m.mountInfo(mountPath)
	if err != nil {
		return err
	}
	if uint32(mi.Major) != unix.Major(devStat.Rdev) || uint32(mi.Minor) != unix.Minor(devStat.Rdev) {
		return fmt.Errorf("%w: %s is a mount of %s (%d:%d), not of %s", ErrMountedElsewhere, mountPath, mi.Source, mi.Major, mi.Minor, device)
	}
	klog.InfoS("Resizing filesystem", "device", device, "mountPath", mountPath, "fsType", mi.FsType)
	if _, err := m.resizer.Resize(device, mountPath); err != nil {
		return oneLine(fmt.Sprintf("resize %s filesystem on %s mounted at %s", mi.FsType, device, mountPath), err)
	}
	klog.InfoS("Resized filesystem", "device", device, "mountPath", mountPath)
	return nil
}

// prepareTarget makes sure target exists (a directory if dir, else a file in
// a directory), unmounts a stale mount found there, and reports whether it is
// a mount point.
func (m *Mounter) prepareTarget(target string, dir bool) (bool, error) {
	st, err := os.Stat(target)
	if err != nil && isStale(err) {
		// As kubelet does: a dead mount is cleared and the mount redone.
		klog.InfoS("Unmounting stale mount", "target", target, "err", err)
		if err := m.sfm.Unmount(target); err != nil {
			return false, fmt.Errorf("%w: %w", ErrStaleMount, oneLine("unmount "+target, err))
		}
		st, err = os.Stat(target)
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if dir {
			if err := os.MkdirAll(target, dirMode); err != nil {
				return false, fmt.Errorf("create target directory: %w", err)
			}
			return false, nil
		}
		if err := os.MkdirAll(filepath.Dir(target), dirMode); err != nil {
			return false, fmt.Errorf("create target parent directory: %w", err)
		}
		f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY, fileMode)
		if err != nil {
			return false, fmt.Errorf("create target file: %w", err)
		}
		if err := f.Close(); err != nil {
			return false, fmt.Errorf("create target file: %w", err)
		}
		return false, nil
	case err != nil:
		return false, fmt.Errorf("stat target %s: %w", target, err)
	case dir && !st.IsDir():
		return false, fmt.Errorf("target %s exists and is not a directory", target)
	case !dir && st.IsDir():
		return false, fmt.Errorf("target %s exists and is a directory, a raw block target must be a file", target)
	}
	return m.IsMountPoint(target)
}

// checkReadOnly compares the read-only state of the mount at target with the
// requested one, for the idempotent paths.
func (m *Mounter) checkReadOnly(target, source string, readOnly bool) error {
	mi, err := m.mountInfo(target)
	if err != nil {
		return err
	}
	if isReadOnly(mi) != readOnly {
		return fmt.Errorf("%w: %s is bound from %s with read-only=%t, requested read-only=%t",
			ErrIncompatibleMount, target, source, isReadOnly(mi), readOnly)
	}
	klog.V(4).InfoS("Already bind mounted", "source", source, "target", target)
	return nil
}

// undoPartialMount removes what a failed bind left behind: mount-utils binds
// first and applies the options in a second remount, so a failed remount
// leaves a read-write bind that must not stay published.
func (m *Mounter) undoPartialMount(target string) {
	if mounted, _ := m.IsMountPoint(target); mounted {
		if err := m.sfm.Unmount(target); err != nil {
			klog.ErrorS(err, "Failed to undo partial mount", "target", target)
			return
		}
		klog.InfoS("Unmounted partial mount", "target", target)
	}
}

func normalizeFSType(fsType string) (string, error) {
	switch fsType {
	case "":
		return DefaultFSType, nil
	case FSTypeExt4, FSTypeXFS:
		return fsType, nil
	}
	return "", fmt.Errorf("%w: %q (supported: %s, %s)", ErrUnsupportedFilesystem, fsType, FSTypeExt4, FSTypeXFS)
}

func statBlockDevice(device string) (*unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Stat(device, &st); err != nil {
		return nil, pathError(device, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil, fmt.Errorf("%w: %s", ErrNotBlockDevice, device)
	}
	return &st, nil
}

func isReadOnly(mi *mount.MountInfo) bool {
	return slices.Contains(mi.MountOptions, "ro")
}

// isStale reports errors that a dead mount returns for any access, the same
// set as mount.IsCorruptedMnt minus EACCES/EWOULDBLOCK, which an ordinary
// permission problem or lock also produces.
func isStale(err error) bool {
	for _, e := range []syscall.Errno{unix.ENOTCONN, unix.ESTALE, unix.EIO, unix.EHOSTDOWN, unix.ENODEV} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func notFound(path string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrNotFound, path, err)
}

// pathError maps a stat error: missing -> ErrNotFound, dead mount ->
// ErrStaleMount, anything else wrapped as is.
func pathError(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return notFound(path, err)
	case isStale(err):
		return fmt.Errorf("%w: %s: %w", ErrStaleMount, path, err)
	}
	return fmt.Errorf("stat %s: %w", path, err)
}
