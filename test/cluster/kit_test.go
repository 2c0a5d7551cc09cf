package cluster

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/carve-csi/carve/pkg/backend/lvm"
	"github.com/carve-csi/carve/test/lvmtest"
)

// TestLVsOnRealLVM reads carve's LVs through a CARVE_GUEST_EXEC stand-in
// that runs the command here, against real lvm2 on a loop device: names,
// sizes and tags (also a target path long enough to be split into chunks)
// come back, foreign LVs are left out, and InlineLV finds a pod's volume.
func TestLVsOnRealLVM(t *testing.T) {
	skipInCluster(t)
	v := lvmtest.NewVGInfo(t, 64<<20, "")
	ctx := context.Background()
	const owner = "carve.owner=" + Driver
	uid := "0b6f1f7c-2c55-4a8e-9a0e-7c1d2e3f4a5b"
	target := "/var/lib/kubelet/pods/" + uid + "/volumes/kubernetes.io~csi/" + strings.Repeat("v", 900) + "/mount"
	for _, lv := range []struct {
		name string
		tags []string
	}{
		{"carve-pvc-1", lvm.Tags(owner, "pvc-1", false, "")},
		{"carve-inline", lvm.Tags(owner, "csi-abc", true, target)},
		{"foreign", []string{"other.owner=x"}},
	} {
		args := []string{"lvcreate", "-n", lv.name, "-L", "8m", "-W", "y", "-y"}
		for _, tag := range lv.tags {
			args = append(args, "--addtag", tag)
		}
		if _, err := v.Runner.Run(ctx, "lvm", append(args, v.Name)...); err != nil {
			t.Fatal(err)
		}
	}
	exe := filepath.Join(t.TempDir(), "guest-exec")
	script := "#!/bin/sh\nexport LVM_SYSTEM_DIR=" + v.ConfigDir + " LVM_SUPPRESS_FD_WARNINGS=1\nexec sh -c \"$1\"\n"
	if err := os.WriteFile(exe, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	c := &Cluster{Env: Env{GuestExec: exe, VG: v.Name}}
	lvs, err := c.LVs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]LV{}
	for _, l := range lvs {
		got[l.Name] = l
	}
	if len(lvs) != 2 || got["carve-pvc-1"].Tags.Name != "pvc-1" || got["carve-inline"].Tags.TargetPath != target ||
		!got["carve-inline"].Tags.Ephemeral || got["carve-pvc-1"].SizeBytes != 8<<20 {
		t.Errorf("LVs = %+v, want carve-pvc-1 (pvc-1, 8 MiB) and carve-inline (ephemeral, the long target path), not foreign", lvs)
	}
	l, ok, err := c.InlineLV(ctx, "0b6f1f7c-2c55-4a8e-9a0e-7c1d2e3f4a5b")
	if err != nil || !ok || l.Name != "carve-inline" {
		t.Errorf("InlineLV = %q, %v, %v; want carve-inline", l.Name, ok, err)
	}
	if _, ok, _ := c.InlineLV(ctx, "another-uid"); ok {
		t.Error("InlineLV found a volume for a pod that has none")
	}
}
