// Package lvmtest gives tests a real LVM volume group on a loop device.
//
// The volume group is metadata-only: the lvm.conf written here sets
// `global { activation = 0 }`, so lvcreate, lvextend, lvremove and the
// reports work without device-mapper (the kernels carve's tests run on have
// none: plain lvcreate fails with "/dev/mapper/control: open failed"), and no
// /dev/<vg>/<lv> node ever appears. Activation stays off even where
// device-mapper is available (see DeviceMapperAvailable): it keeps every
// command at about 50 ms, leaves no dm devices behind when a test dies, and
// makes the tests behave the same on every machine.
//
// The configuration only accepts the test's own loop device (devices/filter
// and global_filter), does not consult udev, a devices file or hints, and
// keeps no metadata backups or archives, so nothing is written under /etc/lvm
// and the host's own volume groups are invisible to the test. Commands find it
// through LVM_SYSTEM_DIR, which exec.Host passes through (see Env).
package lvmtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/carve-csi/carve/pkg/backend/report"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/test/loopdev"
)

// ConfigTemplate is the lvm.conf written by WriteConfig; %[1]s is the loop device.
const ConfigTemplate = `# Written by carve's test/lvmtest: metadata-only LVM on one loop device.
devices {
	filter = [ "a|^%[1]s$|", "r|.*|" ]
	global_filter = [ "a|^%[1]s$|", "r|.*|" ]
	obtain_device_list_from_udev = 0
	use_devicesfile = 0
	hints = "none"
}
global {
	# No device-mapper on the test machines: metadata only, no /dev/<vg>/<lv>.
	activation = 0
}
backup {
	backup = 0
	archive = 0
}
`

// WriteConfig writes dir/lvm.conf for a metadata-only VG on loopDev. Point a
// process at it with LVM_SYSTEM_DIR=<dir> (see Env).
func WriteConfig(dir, loopDev string) error {
	if !strings.HasPrefix(loopDev, "/dev/") || strings.ContainsAny(loopDev, "|\"$ \n") {
		return fmt.Errorf("lvmtest: unexpected device path %q", loopDev)
	}
	return os.WriteFile(filepath.Join(dir, "lvm.conf"), []byte(fmt.Sprintf(ConfigTemplate, loopDev)), 0o644)
}

// Env is the environment that points lvm2 at a config dir from WriteConfig.
// It also sets LVM_SUPPRESS_FD_WARNINGS=1: lvm warns on stderr about every
// open descriptor it inherits ("File descriptor 10 (/dev/null) leaked on lvm
// invocation"), and test runners and shells often pass some down to go test.
func Env(dir string) []string {
	return []string{"LVM_SYSTEM_DIR=" + dir, "LVM_SUPPRESS_FD_WARNINGS=1"}
}

// DeviceMapperAvailable reports whether the kernel has device-mapper. The
// control node may exist and still fail to open with ENODEV, so open it.
func DeviceMapperAvailable() bool {
	f, err := os.OpenFile("/dev/mapper/control", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// VG describes a test volume group; NewVG returns its parts, NewVGInfo all of it.
type VG struct {
	Name      string
	LoopDev   string
	ConfigDir string     // holds lvm.conf; LVM_SYSTEM_DIR=<ConfigDir>
	Runner    *exec.Host // runs lvm with the test configuration
}

// NewVG creates a volume group of about sizeBytes on a fresh loop device and
// returns its name and a runner configured to see it. It skips the test when
// not root, lvm is not installed or no loop device is free. The VG and PV are
// removed at cleanup, before the loop device is detached.
func NewVG(t testing.TB, sizeBytes int64) (vg string, runner *exec.Host) {
	t.Helper()
	v := NewVGInfo(t, sizeBytes, "")
	return v.Name, v.Runner
}

// NewVGInfo is NewVG returning everything; name "" picks a unique
// carvetest<random> name (a fixed name is safe too: only this test's loop
// device is visible through the configuration).
func NewVGInfo(t testing.TB, sizeBytes int64, name string) *VG {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: real lvm2 tests need root")
	}
	if _, err := osexec.LookPath("lvm"); err != nil {
		t.Skip("skipping: lvm2 not installed (apt-get install lvm2)")
	}
	// Registered first, so its cleanup (losetup -d) runs after ours (LIFO).
	dev := loopdev.New(t, sizeBytes)
	dir := t.TempDir()
	if err := WriteConfig(dir, dev); err != nil {
		t.Fatal(err)
	}
	if name == "" {
		var b [6]byte
		if _, err := rand.Read(b[:]); err != nil {
			t.Fatal(err)
		}
		name = "carvetest" + hex.EncodeToString(b[:])
	}
	v := &VG{
		Name:      name,
		LoopDev:   dev,
		ConfigDir: dir,
		Runner:    &exec.Host{Env: Env(dir)},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := func(args ...string) error {
		_, err := v.Runner.Run(ctx, "lvm", args...)
		return err
	}
	if err := run("pvcreate", "-y", dev); err != nil {
		t.Fatalf("lvmtest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := v.Runner.Run(ctx, "lvm", "pvremove", "-y", "-ff", dev); err != nil {
			t.Errorf("lvmtest cleanup: %v", err)
		}
	})
	if err := run("vgcreate", "-y", name, dev); err != nil {
		t.Fatalf("lvmtest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := v.Runner.Run(ctx, "lvm", "vgremove", "-f", name); err != nil {
			t.Errorf("lvmtest cleanup: %v", err)
		}
	})
	return v
}

// LV is one logical volume as lvs reports it.
type LV struct {
	Name, Tags string
	SizeBytes  int64
}

// LVs lists every LV in vg with one lvs JSON report. Tests audit with it
// instead of the backend under test.
func LVs(ctx context.Context, runner exec.Runner, vg string) ([]LV, error) {
	out, err := runner.Run(ctx, "lvm", "lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
		"-o", "lv_name,lv_tags,lv_size", vg)
	if err != nil {
		return nil, err
	}
	var rep struct {
		Report []struct {
			LV []struct {
				Name string `json:"lv_name"`
				Tags string `json:"lv_tags"`
				Size string `json:"lv_size"`
			} `json:"lv"`
		} `json:"report"`
	}
	if _, _, err := report.Decode(out, &rep); err != nil {
		return nil, fmt.Errorf("lvs report: %w: %s", err, out)
	}
	var lvs []LV
	for _, r := range rep.Report {
		for _, lv := range r.LV {
			size, err := strconv.ParseInt(strings.TrimSpace(lv.Size), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("lvs report: size %q of %s: %w", lv.Size, lv.Name, err)
			}
			lvs = append(lvs, LV{Name: lv.Name, Tags: lv.Tags, SizeBytes: size})
		}
	}
	return lvs, nil
}

// CarveLVs lists the names of the LVs in vg that carry carve's owner tag
// (duplicates kept, so callers can check for them).
func CarveLVs(ctx context.Context, runner exec.Runner, vg string) ([]string, error) {
	lvs, err := LVs(ctx, runner, vg)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, lv := range lvs {
		if strings.Contains(lv.Tags, "carve.owner=") {
			names = append(names, lv.Name)
		}
	}
	return names, nil
}

// VGFigures is one volume group's size, free space and extent size in bytes, as vgs reports them.
type VGFigures struct {
	SizeBytes, FreeBytes, ExtentBytes int64
}

// VGReport reads vg's figures with one vgs JSON report: the tool's own view,
// which audits compare the driver's capacity against.
func VGReport(ctx context.Context, runner exec.Runner, vg string) (VGFigures, error) {
	out, err := runner.Run(ctx, "lvm", "vgs", "--reportformat", "json", "--units", "b", "--nosuffix",
		"-o", "vg_size,vg_free,vg_extent_size", vg)
	if err != nil {
		return VGFigures{}, err
	}
	var rep struct {
		Report []struct {
			VG []struct {
				Size   string `json:"vg_size"`
				Free   string `json:"vg_free"`
				Extent string `json:"vg_extent_size"`
			} `json:"vg"`
		} `json:"report"`
	}
	if _, _, err := report.Decode(out, &rep); err != nil || len(rep.Report) != 1 || len(rep.Report[0].VG) != 1 {
		return VGFigures{}, fmt.Errorf("vgs report for %s: %v: %s", vg, err, out)
	}
	r := rep.Report[0].VG[0]
	var f VGFigures
	for _, x := range []struct {
		field, s string
		dst      *int64
	}{{"vg_size", r.Size, &f.SizeBytes}, {"vg_free", r.Free, &f.FreeBytes}, {"vg_extent_size", r.Extent, &f.ExtentBytes}} {
		n, err := strconv.ParseInt(strings.TrimSpace(x.s), 10, 64)
		if err != nil || n < 0 {
			return VGFigures{}, fmt.Errorf("vgs report for %s: %s %q: %v", vg, x.field, x.s, err)
		}
		*x.dst = n
	}
	return f, nil
}

// Config is an lvm.conf for a metadata-only VG: like ConfigTemplate, over
// any number of devices and, with ArchiveDir and BackupDir set, with
// metadata backups and archives on (as on most hosts, whose lvm.conf carve
// uses through nsenter).
type Config struct {
	Devices               []string
	ArchiveDir, BackupDir string
}

// Write writes dir/lvm.conf.
func (c Config) Write(dir string) error {
	var accept strings.Builder
	for _, d := range c.Devices {
		if !strings.HasPrefix(d, "/dev/") || strings.ContainsAny(d, "|\"$ \n") {
			return fmt.Errorf("lvmtest: unexpected device path %q", d)
		}
		fmt.Fprintf(&accept, `"a|^%s$|", `, d)
	}
	backup := "backup = 0\n\tarchive = 0"
	if c.ArchiveDir != "" {
		backup = fmt.Sprintf("backup = 1\n\tbackup_dir = %q\n\tarchive = 1\n\tarchive_dir = %q", c.BackupDir, c.ArchiveDir)
	}
	conf := fmt.Sprintf(`# Written by carve's test/lvmtest: metadata-only LVM.
devices {
	filter = [ %[1]s"r|.*|" ]
	global_filter = [ %[1]s"r|.*|" ]
	obtain_device_list_from_udev = 0
	use_devicesfile = 0
	hints = "none"
}
global {
	activation = 0
}
backup {
	%[2]s
}
`, accept.String(), backup)
	return os.WriteFile(filepath.Join(dir, "lvm.conf"), []byte(conf), 0o644)
}

// Multi is a volume group over several loop devices.
type Multi struct {
	VG
	LoopDevs []string
	conf     Config
}

// NewMultiVG creates volume group name over n fresh loop devices of
// sizeBytes each (skipping like NewVGInfo); name "" picks a unique one. Everything is removed at cleanup.
func NewMultiVG(t testing.TB, n int, sizeBytes int64, name string) *Multi {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: real lvm2 tests need root")
	}
	if _, err := osexec.LookPath("lvm"); err != nil {
		t.Skip("skipping: lvm2 not installed (apt-get install lvm2)")
	}
	if name == "" {
		var b [6]byte
		if _, err := rand.Read(b[:]); err != nil {
			t.Fatal(err)
		}
		name = "carvetest" + hex.EncodeToString(b[:])
	}
	m := &Multi{}
	for i := 0; i < n; i++ {
		m.LoopDevs = append(m.LoopDevs, loopdev.New(t, sizeBytes))
	}
	dir := t.TempDir()
	m.conf = Config{Devices: m.LoopDevs}
	if err := m.conf.Write(dir); err != nil {
		t.Fatal(err)
	}
	m.VG = VG{Name: name, LoopDev: m.LoopDevs[0], ConfigDir: dir, Runner: &exec.Host{Env: Env(dir)}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := func(args ...string) {
		t.Helper()
		if _, err := m.Runner.Run(ctx, "lvm", args...); err != nil {
			t.Fatalf("lvmtest: %v", err)
		}
	}
	run(append([]string{"pvcreate", "-y"}, m.LoopDevs...)...)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := m.Runner.Run(ctx, "lvm", append([]string{"pvremove", "-y", "-ff"}, m.LoopDevs...)...); err != nil {
			t.Errorf("lvmtest cleanup: %v", err)
		}
	})
	run(append([]string{"vgcreate", "-y", name}, m.LoopDevs...)...)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := m.Runner.Run(ctx, "lvm", "vgremove", "-f", name); err != nil {
			t.Errorf("lvmtest cleanup: %v", err)
		}
	})
	return m
}

// HideDevice makes lvm stop seeing dev, as when the disk is unplugged or
// its loop device detached: the VG then misses a PV ("WARNING: Couldn't find
// device with uuid ..."; lvm2 prints the same for a detached loop device).
// The device is taken out of the filter rather than detached so that the
// test gives it back (registered cleanup) and the VG can be removed.
func (m *Multi) HideDevice(t testing.TB, dev string) {
	t.Helper()
	hidden := m.conf
	hidden.Devices = nil
	for _, d := range m.conf.Devices {
		if d != dev {
			hidden.Devices = append(hidden.Devices, d)
		}
	}
	if err := hidden.Write(m.ConfigDir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.conf.Write(m.ConfigDir); err != nil {
			t.Error(err)
		}
	})
}

// EnableArchive turns metadata backups and archives on (directories under
// the test's temp dir) and returns the archive and backup directories.
func (v *VG) EnableArchive(t testing.TB, devices ...string) (archiveDir, backupDir string) {
	t.Helper()
	archiveDir, backupDir = filepath.Join(v.ConfigDir, "archive"), filepath.Join(v.ConfigDir, "backup")
	for _, d := range []string{archiveDir, backupDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if len(devices) == 0 {
		devices = []string{v.LoopDev}
	}
	if err := (Config{Devices: devices, ArchiveDir: archiveDir, BackupDir: backupDir}).Write(v.ConfigDir); err != nil {
		t.Fatal(err)
	}
	return archiveDir, backupDir
}
