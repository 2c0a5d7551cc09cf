// Package e2e runs carve's node path end to end on real, activated logical
// volumes: carve-csi --mode=node is started as a separate process (test/driver)
// and driven over its Unix socket with a real CSI gRPC client, the way kubelet
// and the sidecars drive it; outcomes are checked on the system itself (lvm
// reports, /proc/self/mountinfo, statfs, bytes read back from the devices).
//
// It needs root, lvm2, e2fsprogs, xfsprogs and working device-mapper, so it
// skips unless CARVE_E2E_VG names an existing volume group on such a system
// (the QEMU VM of hack/vm: see test/e2e/README.md and test/e2e/run-vm.sh).
// With CARVE_E2E_REQUIRE=1 an unusable environment fails instead of skipping,
// so a broken rig can never look green.
//
// The volume group must be dedicated to the test: it must hold no carve LV
// when the test starts, and the test fails if any is left when it ends.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// Scenario results, counted by run (subtests run one after another).
var (
	nPassed, nFailed, nSkipped int
)

// The environment, checked once by TestMain.
var (
	e2eVG      string // volume group under test
	e2eExtent  int64  // its extent size in bytes
	skipReason string // why the environment cannot run the scenarios, "" if it can
)

func TestMain(m *testing.M) {
	e2eVG = os.Getenv("CARVE_E2E_VG")
	e2eExtent, skipReason = checkEnv(e2eVG)
	code := m.Run()
	switch {
	case skipReason != "":
		fmt.Printf("e2e node path: 0 passed, 0 failed (not run: %s)\n", skipReason)
	case nSkipped > 0:
		fmt.Printf("e2e node path: %d passed, %d failed, %d skipped\n", nPassed, nFailed, nSkipped)
	default:
		fmt.Printf("e2e node path: %d passed, %d failed\n", nPassed, nFailed)
	}
	if code != 0 && nFailed == 0 {
		fmt.Println("e2e node path: FAIL outside the scenarios (set-up or clean-up; see the log above)")
	}
	os.Exit(code)
}

// checkEnv returns the VG's extent size, or why the scenarios cannot run here.
func checkEnv(vg string) (int64, string) {
	if vg == "" {
		return 0, "CARVE_E2E_VG is not set; these scenarios need an existing LVM volume group with working " +
			"device-mapper (test/e2e/run-vm.sh runs them in the QEMU VM)"
	}
	if os.Geteuid() != 0 {
		return 0, "not root (the node path formats and mounts logical volumes)"
	}
	// /dev/mapper/control may exist and still fail with ENODEV: open it.
	f, err := os.OpenFile("/dev/mapper/control", os.O_RDWR, 0)
	if err != nil {
		return 0, fmt.Sprintf("device-mapper is not usable, so logical volumes cannot be activated (%v)", err)
	}
	f.Close()
	for _, tool := range []string{"lvm", "mkfs.ext4", "mkfs.xfs", "resize2fs", "xfs_growfs", "blkid", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return 0, fmt.Sprintf("%s is not installed", tool)
		}
	}
	out, err := exec.Command("lvm", "vgs", "--reportformat", "json", "--units", "b", "--nosuffix",
		"-o", "vg_name,vg_extent_size", vg).Output()
	if err != nil {
		return 0, fmt.Sprintf("volume group %q cannot be read: %v: %s", vg, err, stderrOf(err))
	}
	var rep struct {
		Report []struct {
			VG []struct {
				Name   string `json:"vg_name"`
				Extent string `json:"vg_extent_size"`
			} `json:"vg"`
		} `json:"report"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return 0, fmt.Sprintf("vgs %s: %v: %s", vg, err, out)
	}
	for _, r := range rep.Report {
		for _, v := range r.VG {
			if v.Name == vg {
				var ext int64
				if _, err := fmt.Sscan(v.Extent, &ext); err != nil || ext <= 0 {
					return 0, fmt.Sprintf("volume group %q: bad extent size %q", vg, v.Extent)
				}
				return ext, ""
			}
		}
	}
	return 0, fmt.Sprintf("volume group %q is not in the vgs report: %s", vg, bytes.TrimSpace(out))
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(bytes.TrimSpace(ee.Stderr))
	}
	return ""
}

// requireEnv skips (or, with CARVE_E2E_REQUIRE=1, fails) when the scenarios
// cannot run here.
func requireEnv(t *testing.T) {
	t.Helper()
	if skipReason == "" {
		return
	}
	if os.Getenv("CARVE_E2E_REQUIRE") == "1" {
		t.Fatalf("CARVE_E2E_REQUIRE=1 but the e2e scenarios cannot run: %s", skipReason)
	}
	t.Skipf("skipping the e2e node path: %s", skipReason)
}

// run runs one scenario as a subtest and counts its outcome. Subtests that
// -test.run filters out are not counted.
func run(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	ran, skipped := false, false
	ok := t.Run(name, func(t *testing.T) {
		ran = true
		defer func() { skipped = t.Skipped() }()
		f(t)
	})
	switch {
	case !ran:
	case !ok:
		nFailed++
	case skipped:
		nSkipped++
	default:
		nPassed++
	}
}
