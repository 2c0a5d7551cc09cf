package pmem

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// wipeBytes is how much of each end of a new volume is zeroed.
const wipeBytes = 1 << 20

// devWait bounds the wait for a new namespace's device node.
var devWait = 10 * time.Second

// Wipe is what Create does to a new namespace's block device of size bytes
// (wipeDevice); exported so that benchmarks count the same work in their bare
// arm (issue 13).
func Wipe(dev string, size int64) error { return wipeDevice(dev, size) }

// wipeDevice zeroes the first and last MiB of a new namespace's block device.
// A namespace made where an earlier one was shows that one's data: without
// this, a new volume would come up holding the previous volume's filesystem
// (which carve would then mount instead of formatting). The ends hold every
// signature blkid looks for (ext4, xfs, LVM, GPT, MD, ZFS labels), as
// lvcreate -W y wipes them for LVM volumes. It opens the device O_EXCL, so a
// device in use is never touched.
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
	zeros := make([]byte, min(int64(wipeBytes), size))
	// The head and the tail (they overlap on small devices).
	for _, off := range []int64{0, size - int64(len(zeros))} {
		if _, err := f.WriteAt(zeros, off); err != nil {
			return fmt.Errorf("pmem: wiping new volume %s at %d: %w", dev, off, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("pmem: wiping new volume %s: %w", dev, err)
	}
	return f.Close()
}
