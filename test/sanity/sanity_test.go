// Package sanity runs the CSI conformance suite (csi-test's sanity package)
// against carve-csi --mode=node on a Unix socket, with a real lvm2 pool.
//
// On a host without device-mapper (metadata-only LVM on a loop device) the
// specs that must stage or publish a real device are skipped, each with its
// reason. With CARVE_SANITY_VG=<existing VG> (the VM rig), nothing is skipped;
// CARVE_SANITY_POOL=<--pool value> then replaces the default pool
// (default=lvm:<VG>), e.g. an lvm-thin pool in that VG.
package sanity

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	. "github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	. "github.com/onsi/gomega"

	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/test/driver"
	"github.com/carve-csi/carve/test/lvmtest"
)

// needDevice lists the specs that mount or bind a real device node, with why.
var needDevice = map[string]string{
	"should remove target path":                                    "publishes a mount volume",
	"should work if node-expand is called after node-publish":      "stages and publishes a mount volume",
	"should fail when volume does not exist on the specified path": "stages and publishes a mount volume",
	"is already mounted at a different target path":                "stages and publishes a mount volume",
	"Node Service should work":                                     "stages and publishes a mount volume",
	"Node Service should be idempotent":                            "stages and publishes a mount volume",
	"should return health for a valid volume":                      "stages a mount volume (NodeGetVolumeHealth)",
}

func TestSanity(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: csi-sanity with real lvm2 needs root")
	}
	vg, env, full := os.Getenv("CARVE_SANITY_VG"), []string(nil), true
	var runner exec.Runner
	if vg == "" {
		info := lvmtest.NewVGInfo(t, 256<<30, "")
		vg, env, full, runner = info.Name, lvmtest.Env(info.ConfigDir), false, info.Runner
	} else {
		runner = &exec.Host{}
	}
	root := t.TempDir()
	kubelet := filepath.Join(root, "kubelet")
	for _, d := range []string{"pods", "plugins"} {
		if err := os.MkdirAll(filepath.Join(kubelet, d), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	pool := "default=lvm:" + vg
	if p := os.Getenv("CARVE_SANITY_POOL"); p != "" && full {
		pool = p
	}
	t.Logf("pool: %s", pool)
	p := driver.Start(t, env, "--mode=node", "--nodeid=sanity-node", "--pool="+pool,
		"--kubelet-dir="+kubelet, "--v=4")

	cfg := sanity.NewTestConfig()
	cfg.Address = p.Socket
	cfg.TargetPath = filepath.Join(kubelet, "pods", "target")
	cfg.StagingPath = filepath.Join(kubelet, "plugins", "staging")
	cfg.TestVolumeSize = 64 << 20
	cfg.TestVolumeExpandSize = 128 << 20
	cfg.IdempotentCount = 2
	sanity.GinkgoTest(&cfg)

	RegisterFailHandler(Fail)
	suite, reporter := GinkgoConfiguration()
	if !full {
		for spec, why := range needDevice {
			t.Logf("skipping %q: %s, and this kernel has no device-mapper (the VM rig runs it)", spec, why)
			suite.SkipStrings = append(suite.SkipStrings, spec)
		}
	}
	reporter.Succinct, reporter.NoColor = true, true
	ReportAfterSuite("carve summary", func(r Report) {
		var pass, fail, skip, skipDevice int
		for _, s := range r.SpecReports {
			switch {
			case s.LeafNodeType != types.NodeTypeIt:
			case s.State.Is(types.SpecStatePassed):
				pass++
			case s.State.Is(types.SpecStateFailureStates):
				fail++
			case s.State.Is(types.SpecStateSkipped | types.SpecStatePending):
				skip++
				for spec := range needDevice {
					if strings.Contains(s.FullText(), spec) {
						skipDevice++
						break
					}
				}
			}
		}
		fmt.Printf("\ncsi-sanity: %d passed, %d failed, %d skipped (%d of them for lack of a device; the rest need capabilities carve does not offer)\n",
			pass, fail, skip, skipDevice)
	})
	passed := RunSpecs(t, "carve csi-sanity", suite, reporter)
	if !passed {
		t.Errorf("csi-sanity failed")
	}
	auditNoVolumes(t, runner, vg)
}

// auditNoVolumes fails the test if the suite left any carve LV behind.
func auditNoVolumes(t *testing.T, runner exec.Runner, vg string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	left, err := lvmtest.CarveLVs(ctx, runner, vg)
	if err != nil {
		t.Fatalf("leak audit: %v", err)
	}
	if len(left) > 0 {
		t.Errorf("leak audit: carve LVs left in %s after csi-sanity: %v", vg, left)
	} else {
		t.Logf("leak audit: no carve LV left in %s", vg)
	}
}
