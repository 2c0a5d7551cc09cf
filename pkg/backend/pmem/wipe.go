package pmem

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// zeroChunk is what wipeDevice writes at a time.
const zeroChunk = 4 << 20

// devWait bounds the wait for a new namespace's device node.
var devWait = 10 * time.Second

// Wipe is what Create does to a new namespace's block device of size bytes
// (wipeDevice); exported so that benchmarks count the same work in their bare
// arm (issue 13).
func Wipe(dev string, size int64) error { return wipeDevice(dev, size) }

// wipeDevice zeroes all size bytes of a new namespace's block device. A
// namespace made where an earlier one was shows that one's data: without
// this, a new volume would come up holding the previous volume's bytes (a
// raw block volume would read them; a filesystem would be mounted instead of
// made). It writes the zeroes itself: pmem has no zeroing of its own, and
// BLKZEROOUT, which then writes zero pages in the kernel, measured slower
// (VM rig, fsdax namespace: 14.35 s/GiB against 8.18 s/GiB for 4 MiB
// writes; test/disks BenchmarkVMWipeCost). It opens the device O_EXCL, so a
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
	zeros := make([]byte, zeroChunk)
	for off := int64(0); off < size; off += zeroChunk {
		if _, err := f.WriteAt(zeros[:min(zeroChunk, size-off)], off); err != nil {
			return fmt.Errorf("pmem: zeroing new volume %s at %d: %w", dev, off, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("pmem: wiping new volume %s: %w", dev, err)
	}
	return f.Close()
}
