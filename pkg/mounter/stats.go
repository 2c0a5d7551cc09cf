package mounter

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Stats is the usage of a volume as NodeGetVolumeStats reports it. Values are
// int64 like the CSI VolumeUsage fields. For a raw block volume only
// TotalBytes is set.
type Stats struct {
	IsBlock bool

	TotalBytes     int64
	AvailableBytes int64 // available to unprivileged users
	UsedBytes      int64

	TotalInodes int64
	FreeInodes  int64
	UsedInodes  int64
}

// Stats reports the usage of path: statfs for a mounted filesystem, the
// device size (ioctl BLKGETSIZE64) for a block device node or a raw block
// target bind-mounted from one. A missing path is ErrNotFound, a stale mount
// ErrStaleMount. A directory that is not a mount point is ErrNotMounted:
// statfs would describe whatever filesystem holds it (the node's root), not
// the volume.
func (m *Mounter) Stats(path string) (Stats, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return Stats{}, pathError(path, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		size, err := blockDeviceSize(path)
		if err != nil {
			return Stats{}, err
		}
		return Stats{IsBlock: true, TotalBytes: size}, nil
	}

	mounted, err := m.IsMountPoint(path)
	if err != nil {
		return Stats{}, err
	}
	if !mounted {
		return Stats{}, fmt.Errorf("%w: %s", ErrNotMounted, path)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return Stats{}, pathError(path, err)
	}
	// Block counts are in units of the fragment size; Frsize is 0 only on
	// very old kernels, where Bsize is the unit.
	unit := sfs.Frsize
	if unit == 0 {
		unit = sfs.Bsize
	}
	return Stats{
		TotalBytes:     int64(sfs.Blocks) * unit,
		AvailableBytes: int64(sfs.Bavail) * unit,
		UsedBytes:      int64(sfs.Blocks-sfs.Bfree) * unit,
		TotalInodes:    int64(sfs.Files),
		FreeInodes:     int64(sfs.Ffree),
		UsedInodes:     int64(sfs.Files - sfs.Ffree),
	}, nil
}

// blockDeviceSize returns the size in bytes of the block device at path.
func blockDeviceSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, pathError(path, err)
	}
	defer f.Close()
	var size uint64
	// x/sys/unix has no uint64 ioctl getter; BLKGETSIZE64 writes a u64.
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return 0, fmt.Errorf("ioctl BLKGETSIZE64 on %s: %w", path, errno)
	}
	return int64(size), nil
}
