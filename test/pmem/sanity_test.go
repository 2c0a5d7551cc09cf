package pmem

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	. "github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	. "github.com/onsi/gomega"
)

// The full csi-sanity suite against a pmem pool and against an lvm-on-pmem
// pool. Ginkgo runs one suite per process: run each test in a process of its
// own (-test.run '^TestSanityPMEM$', then '^TestSanityLVMOnPMEM$'), as
// vm-pmem.sh does.

// TestSanityPMEM: volumes are fsdax namespaces. TestVolumeSize is 62 MiB, a
// size such a namespace has exactly (64 MiB raw, 16 MiB region alignment,
// less the fsdax layout), because the suite asks for required == limit.
// The node offers no expansion (namespaces cannot grow), so the expansion
// specs skip for lack of the capability.
func TestSanityPMEM(t *testing.T) {
	reg := scratchRegion(t)
	cleanRegion(t, reg)
	runSanity(t, "pmem", "pm=pmem:"+reg, 62*mib, 0, func() []string { return carveNamespaces(t, reg) })
}

// TestSanityLVMOnPMEM: an lvm pool that carve sets up on half the region.
func TestSanityLVMOnPMEM(t *testing.T) {
	reg := scratchRegion(t)
	cleanRegion(t, reg)
	runSanity(t, "lvm-on-pmem", "pl=lvm-pmem:"+reg+":50%", 64*mib, 128*mib, func() []string {
		out := run(t, "lvm", "lvs", "--noheadings", "-o", "lv_name", "carve-lvm-pl")
		return strings.Fields(out)
	})
}

func runSanity(t *testing.T, what, pool string, size, expand int64, leftovers func() []string) {
	kubelet := newKubeletDir(t)
	n := startNode(t, kubelet, pool)
	cfg := sanity.NewTestConfig()
	cfg.Address = n.proc.Socket
	cfg.TargetPath = filepath.Join(kubelet, "pods", "target")
	cfg.StagingPath = filepath.Join(kubelet, "plugins", "staging")
	cfg.TestVolumeSize = size
	cfg.TestVolumeExpandSize = expand
	cfg.IdempotentCount = 2
	sanity.GinkgoTest(&cfg)

	RegisterFailHandler(Fail)
	suite, reporter := GinkgoConfiguration()
	reporter.Succinct, reporter.NoColor = true, true
	ReportAfterSuite("carve pmem summary", func(r Report) {
		var pass, fail, skip int
		var skipped []string
		for _, s := range r.SpecReports {
			switch {
			case s.LeafNodeType != types.NodeTypeIt:
			case s.State.Is(types.SpecStatePassed):
				pass++
			case s.State.Is(types.SpecStateFailureStates):
				fail++
			case s.State.Is(types.SpecStateSkipped | types.SpecStatePending):
				skip++
				if msg := s.Failure.Message; msg != "" && !strings.Contains(strings.Join(skipped, "|"), msg) {
					skipped = append(skipped, msg)
				}
			}
		}
		fmt.Printf("\ncsi-sanity %s: %d passed, %d failed, %d skipped (skip reasons, all capabilities carve does not offer: %s)\n",
			what, pass, fail, skip, strings.Join(skipped, "; "))
	})
	if !RunSpecs(t, "carve csi-sanity "+what, suite, reporter) {
		t.Errorf("csi-sanity %s failed", what)
	}
	if left := leftovers(); len(left) > 0 {
		t.Errorf("leak audit: volumes left after csi-sanity %s: %v", what, left)
	} else {
		t.Logf("leak audit: no carve volume left after csi-sanity %s", what)
	}
}
