package mounter

import (
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"k8s.io/klog/v2"
	utilexec "k8s.io/utils/exec"

	"github.com/carve-csi/carve/pkg/superblock"
)

// Smallest devices (bytes) that mkfs accepts for the filesystems carve makes,
// measured with sparse files and loop devices (TestMinSizeMatchesMkfs checks
// them against the installed tools):
//   - xfs: mkfs.xfs of xfsprogs 5.19 and later refuses data sections under
//     300 MiB ("Filesystem must be larger than 300MB."; 6.1.0: 314572799 bytes
//     fail, 314572800 work), with or without -m reflink=0.
//   - ext4: mke2fs 1.47.0 works from 106496 bytes with its default 1 KiB
//     blocks for small devices, but from 229376 bytes with the page-sized
//     blocks carve asks for on DAX devices; the larger figure is the minimum.
const (
	MinXFSBytes  = 300 << 20
	MinExt4Bytes = 224 << 10
)

// ErrDeviceTooSmall: the device is smaller than the filesystem's minimum
// (MinSizeBytes), so it cannot be formatted; nothing was written to it.
var ErrDeviceTooSmall = errors.New("device is smaller than the filesystem's minimum")

// MinSizeBytes is the smallest device, in bytes, that carve can format with
// fsType ("" = ext4); 0 for a type carve does not make.
func MinSizeBytes(fsType string) int64 {
	switch fsType {
	case "", FSTypeExt4:
		return MinExt4Bytes
	case FSTypeXFS:
		return MinXFSBytes
	}
	return 0
}

// format makes a fsType filesystem on device with the arguments mount-utils
// uses (ext4 -F -m0, xfs -f, formatOptions first). carve formats itself
// rather than through mount-utils so that a read-only first mount gets a
// filesystem too, and so that a failure is one line naming the cause.
func (m *Mounter) format(device, fsType string, formatOptions []string) error {
	size, err := deviceSize(device)
	if err != nil {
		return err
	}
	if min := MinSizeBytes(fsType); size < min {
		return fmt.Errorf("%w: %s has %d bytes, %s needs at least %d (%s)", ErrDeviceTooSmall, device, size, fsType, min, humanBytes(min))
	}
	args := []string{device}
	switch fsType {
	case FSTypeExt4:
		args = []string{"-F", "-m0", device}
	case FSTypeXFS:
		args = []string{"-f", device}
	}
	args = append(append([]string(nil), formatOptions...), args...)
	klog.InfoS("Formatting device", "device", device, "fsType", fsType, "args", args)
	out, err := m.sfm.Exec.Command("mkfs."+fsType, args...).CombinedOutput()
	if err != nil {
		return toolError("mkfs."+fsType+" "+device, err, out)
	}
	return nil
}

// checkBlank refuses to format device when its first bytes cannot be read or
// hold an ext4 or xfs superblock, though blkid reported nothing: blkid exits
// 2 both when it finds nothing and when it cannot open or read the device
// (mount-utils takes either for "unformatted"), and mkfs over a volume that
// was only unreadable for a moment would destroy its data (issue 13's
// review found the same confusion in inline volumes' retries).
func checkBlank(device string) error {
	found, err := superblock.UUIDs(device)
	if err != nil {
		return fmt.Errorf("blkid found no filesystem on %s, but %w: refusing to format it", device, err)
	}
	if len(found) > 0 {
		return fmt.Errorf("blkid found no filesystem on %s, but it holds an ext4 or xfs superblock (UUID %s): refusing to format it", device, strings.Join(found, ", "))
	}
	return nil
}

// uuidFormatOptions are the mkfs options that give the new filesystem UUID
// uuid (mke2fs(8) -U, mkfs.xfs(8) -m uuid=).
func uuidFormatOptions(fsType, uuid string) []string {
	switch fsType {
	case FSTypeExt4:
		return []string{"-U", uuid}
	case FSTypeXFS:
		return []string{"-m", "uuid=" + uuid}
	}
	return nil
}

// fsck(8) exit codes that mount-utils acts on.
const (
	fsckCorrected   = 1
	fsckUncorrected = 4
)

// checkFilesystem runs `fsck -a device` on an existing filesystem before a
// read-write mount, with mount-utils' rules (SafeFormatAndMount's
// checkAndRepairFilesystem, which it does not export): exit 4 (errors left
// uncorrected) is an error, anything else (corrected, fsck missing, other
// failures) is logged and the mount goes on.
func (m *Mounter) checkFilesystem(device string) error {
	out, err := m.sfm.Exec.Command("fsck", "-a", device).CombinedOutput()
	if err == nil {
		return nil
	}
	var ee utilexec.ExitError
	switch {
	case errors.As(err, &ee) && ee.ExitStatus() == fsckUncorrected:
		return toolError("fsck -a "+device+": errors left uncorrected", err, out)
	case errors.As(err, &ee) && ee.ExitStatus() == fsckCorrected:
		klog.InfoS("fsck corrected errors", "device", device)
	default:
		klog.InfoS("fsck failed; mounting anyway, as mount-utils does", "device", device, "err", err, "output", string(out))
	}
	return nil
}

// deviceSize is the size of a block device in bytes (its end, by seeking).
func deviceSize(device string) (int64, error) {
	f, err := os.Open(device)
	if err != nil {
		return 0, pathError(device, err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", device, err)
	}
	return size, nil
}

func humanBytes(b int64) string {
	switch {
	case b%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", b>>20)
	case b%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", b>>10)
	}
	return fmt.Sprintf("%d bytes", b)
}

// maxCause bounds the tool's words quoted in an error.
const maxCause = 240

// toolError is a failed tool's error on one line: what ran, the exit status
// and the line of its output that says why. The whole output goes to the log
// at --v=4: mkfs.xfs alone prints 1.5 KB of usage text after its one-line reason.
func toolError(what string, err error, output []byte) error {
	klog.V(4).InfoS("Tool failed", "command", what, "err", err, "output", string(output))
	if cause := causeLine(string(output)); cause != "" {
		return &lineError{msg: fmt.Sprintf("%s: %v: %s", what, err, cause), err: err}
	}
	return &lineError{msg: fmt.Sprintf("%s: %v", what, err), err: err}
}

// lineError has a one-line message of its own and keeps the cause for errors.Is.
type lineError struct {
	msg string
	err error
}

func (e *lineError) Error() string { return e.msg }
func (e *lineError) Unwrap() error { return e.err }

var (
	// versionBanner is the first line e2fsprogs tools print: "mke2fs 1.47.0 (5-Feb-2023)".
	versionBanner = regexp.MustCompile(`^\S+ [0-9]+\.[0-9]+(\.[0-9]+)* \([^)]*\)$`)
	// noise are lines that never say why: usage text, mount(8)'s pointer to
	// dmesg, mount-utils' echo of the command, util-linux fsck's banner.
	noise = []string{"usage:", "dmesg(1) may have more information", "mounting command:", "mounting arguments:",
		"unmounting arguments:", "/*", "discarding device blocks", "fsck from util-linux"}
)

// causeLine picks the first line of a tool's output that says why it failed,
// trimmed and at most maxCause bytes; "" if there is none.
func causeLine(output string) string {
	for _, l := range strings.Split(output, "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "Output:"))
		if l == "" || versionBanner.MatchString(l) || isNoise(l) {
			continue
		}
		if len(l) > maxCause {
			l = l[:maxCause] + "..."
		}
		return l
	}
	return ""
}

func isNoise(l string) bool {
	low := strings.ToLower(l)
	for _, n := range noise {
		if strings.HasPrefix(low, n) {
			return true
		}
	}
	return false
}

// oneLine turns a multi-line error from mount-utils (mount, umount, fsck,
// resize2fs, xfs_growfs and blkid runs, whose messages carry the tool's whole
// output) into one line: its first line and the line of the output that says
// why. The full text goes to the log at --v=4; errors.Is still sees err.
func oneLine(what string, err error) error {
	if err == nil {
		return nil
	}
	text := err.Error()
	first, rest, multi := strings.Cut(text, "\n")
	if !multi {
		return fmt.Errorf("%s: %w", what, err)
	}
	klog.V(4).InfoS("Tool failed", "operation", what, "err", text)
	// mount-utils' resize errors start the output on the first line:
	// "resize of device X failed: exit status 1. resize2fs output: <banner>".
	if i := strings.Index(strings.ToLower(first), " output: "); i >= 0 {
		first, rest = first[:i], first[i+len(" output: "):]+"\n"+rest
		if j := strings.LastIndex(first, ". "); j >= 0 {
			first = first[:j] // the tool's name before "output:"
		}
	}
	msg := what + ": " + strings.TrimSpace(first)
	if cause := causeLine(rest); cause != "" {
		msg += ": " + cause
	}
	return &lineError{msg: msg, err: err}
}
