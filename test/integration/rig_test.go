package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/carve-csi/carve/test/driver"
	"github.com/carve-csi/carve/test/k8srig"
)

// gate decides whether the test runs: only with CARVE_INTEGRATION=1 (as make
// test-integration sets it), and then missing prerequisites fail the test.
// Otherwise it skips, so that `go test ./...` does not start a control plane
// beside the other packages' tests.
func gate(t *testing.T, root string) (bin string) {
	if os.Getenv("CARVE_INTEGRATION") != "1" {
		t.Skip("skipping the control-plane integration test: set CARVE_INTEGRATION=1 (make test-integration does, after building the rig)")
	}
	missing := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("CARVE_INTEGRATION=1 but %s", fmt.Sprintf(format, args...))
	}
	if os.Geteuid() != 0 {
		missing("it needs root (loop devices, lvm2)")
	}
	for _, tool := range []string{"lvm", "losetup", "openssl", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing("%s is not installed", tool)
		}
	}
	if b := os.Getenv("CARVE_K8S_BIN"); b != "" {
		bin = b
	} else {
		bin = filepath.Join(root, ".cache", "k8s", "bin")
		check := exec.Command(filepath.Join(root, "hack", "k8s", "build.sh"), "--check")
		if out, err := check.CombinedOutput(); err != nil {
			missing("the rig binaries in %s are missing or stale (hack/k8s/build.sh --check: %v %s); run hack/k8s/build.sh",
				bin, err, strings.TrimSpace(string(out)))
		}
	}
	for _, b := range k8srig.Binaries {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			missing("%s is missing (%v); run hack/k8s/build.sh", filepath.Join(bin, b), err)
		}
	}
	return bin
}

// newRig starts the rig of test/k8srig; t.Cleanup stops it all.
func newRig(t *testing.T) *k8srig.Rig {
	root := k8srig.RepoRoot()
	bin := gate(t, root)
	// The carve binary first: a compile error should not cost a cluster.
	carve := driver.Binary(t)
	return k8srig.New(t, k8srig.Config{Root: root, Bin: bin, Carve: carve,
		Logs: os.Getenv("CARVE_INTEGRATION_LOGS"),
		// Every lvm2 command in the node logs: step 4c counts the lvremoves.
		NodeArgs: []string{"--vmodule=exec=5"}})
}
