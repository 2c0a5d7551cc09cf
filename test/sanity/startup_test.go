package sanity

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/carve-csi/carve/test/driver"
	"github.com/carve-csi/carve/test/lvmtest"
)

// A missing volume group ends the process at start-up with a one-line reason.
func TestStartupFailsOnMissingVG(t *testing.T) {
	info := lvmtest.NewVGInfo(t, 1<<30, "")
	cmd := exec.Command(driver.Binary(t), "--mode=node", "--nodeid=n", "--pool=fast=lvm:novg"+info.Name,
		"--kubelet-dir="+t.TempDir(), "--endpoint=unix://"+t.TempDir()+"/csi.sock")
	cmd.Env = append(os.Environ(), lvmtest.Env(info.ConfigDir)...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatal("carve-csi started without its volume group")
	}
	last := strings.TrimSpace(string(out))
	if i := strings.LastIndex(last, "\n"); i >= 0 {
		last = last[i+1:]
	}
	if !strings.HasPrefix(last, `carve-csi: pool "fast"`) || !strings.Contains(last, "novg"+info.Name) {
		t.Fatalf("last line %q does not name the pool and VG; output:\n%s", last, out)
	}
}
