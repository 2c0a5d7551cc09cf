package pmem

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// zeroChunk is what wipeDevice writes at a time where the device cannot zero itself.
const zeroChunk = 1 << 20

// devWait bounds the wait for a new namespace's device node.
var devWait = 10 * time.Second

// wipeDevice zeroes all size bytes of a new namespace's block device. A
// namespace made where an earlier one was shows that one's data: without
// this, a new volume would come up holding the previous volume's bytes (a
// raw block volume would read them; a filesystem would be mounted instead of
// made). It asks the kernel to zero the range (BLKZEROOUT, which writes zero
// pages where the device has no zeroing of its own, as pmem has not), and
// writes zeroes itself where the ioctl does not apply (a regular file in
// tests). It opens the device O_EXCL, so a device in use is never touched.
func wipeDevice(dev string, size int64) error {
	var f *os.File
	var err error
	for deadline := time.Now().Add(devWait); ; {
		// The node appears asynchronously after the namespace is enabled.
		f, err = os.OpenFile(dev, os.O_WRONLY|unix.O_EXCL, 0)
		if err == nil || !errors.Is(err, fs.ErrNotExist) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("pmem: wiping new volume %s: %w", dev, err)
	}
	defer f.Close()
	r := [2]uint64{0, uint64(size)}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&r)))
	if errno == unix.ENOTTY || errno == unix.EINVAL || errno == unix.EOPNOTSUPP {
		zeros := make([]byte, zeroChunk)
		for off := int64(0); off < size && err == nil; off += zeroChunk {
			_, err = f.WriteAt(zeros[:min(zeroChunk, size-off)], off)
		}
	} else if errno != 0 {
		err = errno
	}
	if err != nil {
		return fmt.Errorf("pmem: zeroing new volume %s: %w", dev, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("pmem: wiping new volume %s: %w", dev, err)
	}
	return f.Close()
}
