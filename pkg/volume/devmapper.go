package volume

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// DeviceMapper finds an active LV's device node through device-mapper itself
// (sysfs dm/name and dev), for hosts where the /dev/<vg>/<lv> link that lvm2
// reports is missing: no udev, a container's /dev, someone's clean-up. The
// zero value reads the real /sys and /dev.
type DeviceMapper struct {
	SysRoot string // default /sys
	DevRoot string // default /dev
}

func (d DeviceMapper) sys() string {
	if d.SysRoot == "" {
		return "/sys"
	}
	return d.SysRoot
}

func (d DeviceMapper) dev() string {
	if d.DevRoot == "" {
		return "/dev"
	}
	return d.DevRoot
}

// dmName is LVM's device-mapper name of vg/lv: each '-' in either doubled,
// the two joined by one '-' (lvm2's dm_build_dm_name).
func dmName(vg, lv string) string {
	return strings.ReplaceAll(vg, "-", "--") + "-" + strings.ReplaceAll(lv, "-", "--")
}

// splitLVPath reads vg and lv from lvm2's lv_path, /dev/<vg>/<lv>.
func splitLVPath(p string) (vg, lv string, ok bool) {
	rest, found := strings.CutPrefix(filepath.Clean(p), "/dev/")
	if !found {
		return "", "", false
	}
	vg, lv, ok = strings.Cut(rest, "/")
	return vg, lv, ok && vg != "" && lv != "" && !strings.Contains(lv, "/")
}

// ErrNoDMDevice: device-mapper has no active device for the LV.
var ErrNoDMDevice = errors.New("no active device-mapper device")

// Lookup returns a block device node for the active LV vg/lv: the first of
// /dev/mapper/<dm name>, /dev/dm-N and /dev/block/MAJ:MIN that is a block
// device with the number sysfs gives for the dm device of that name.
// ErrNoDMDevice when device-mapper has none (the LV is not active).
func (d DeviceMapper) Lookup(vg, lv string) (string, error) {
	name := dmName(vg, lv)
	blocks, err := filepath.Glob(filepath.Join(d.sys(), "block", "dm-*"))
	if err != nil {
		return "", err
	}
	for _, b := range blocks {
		got, err := os.ReadFile(filepath.Join(b, "dm", "name"))
		if err != nil || strings.TrimSpace(string(got)) != name {
			continue
		}
		num, err := os.ReadFile(filepath.Join(b, "dev"))
		if err != nil {
			return "", fmt.Errorf("device-mapper device %s (%s): %w", name, filepath.Base(b), err)
		}
		majMin := strings.TrimSpace(string(num))
		var major, minor uint32
		if _, err := fmt.Sscanf(majMin, "%d:%d", &major, &minor); err != nil {
			return "", fmt.Errorf("device-mapper device %s: bad device number %q", name, majMin)
		}
		for _, p := range []string{filepath.Join(d.dev(), "mapper", name), filepath.Join(d.dev(), filepath.Base(b)),
			filepath.Join(d.dev(), "block", majMin)} {
			var st unix.Stat_t
			if unix.Stat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK &&
				unix.Major(st.Rdev) == major && unix.Minor(st.Rdev) == minor {
				return p, nil
			}
		}
		return "", fmt.Errorf("device-mapper device %s is %s (%s), but no node for it in %s/mapper, %s or %s/block",
			name, filepath.Base(b), majMin, d.dev(), d.dev(), d.dev())
	}
	return "", fmt.Errorf("%w named %s for %s/%s", ErrNoDMDevice, name, vg, lv)
}
