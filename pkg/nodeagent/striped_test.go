package nodeagent

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/lvm"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/exec/exectest"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/volume"
	"github.com/carve-csi/carve/test/lvmtest"
)

// Striped LocalVolumes (controller mode) on a VG of three 64 MiB PVs (15
// extents of 4 MiB each) with a linear LV of 5 extents on the first: free
// extents 10, 15, 15, the layout of pkg/backend/lvm's striped capture. The
// scenario runs on real lvm2 (TestRealStripedLocalVolume, metadata only) and
// replayed from that run (TestStripedLocalVolume, testdata/striped.txt;
// re-record with CARVE_LVM_CAPTURE=1).
const (
	stripedVG  = "carvenodestriped"
	stripedExt = int64(4) << 20
)

// stripedScenario: the published NodeStorage carries what the controller
// needs for a striped class's maximum (devices and extent size, through
// backend.StripedMax); a LocalVolume of exactly that maximum in 2 stripes of
// 128 KiB becomes an LV with 2 stripes of 128 KiB, one extent more fails
// ResourceExhausted and 4 stripes on 3 disks InvalidArgument, the codes the
// node-local controller answers with.
func stripedScenario(t *testing.T, b *lvm.Backend, run exec.Runner) {
	ctx := context.Background()
	vols, err := volume.NewManager([]volume.Pool{{Name: "disks", Backend: b}}, "disks")
	if err != nil {
		t.Fatal(err)
	}
	scheme, err := Scheme()
	if err != nil {
		t.Fatal(err)
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithStatusSubresource(&v1alpha1.LocalVolume{}, &v1alpha1.NodeStorage{}).
		WithObjects(node("uid-1")).Build()
	r := &rig{t: t, c: c, agent: &Agent{NodeName: nodeName, Vols: vols, Locks: &keylock.Locks{}, Client: c}}

	if err := r.agent.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	p := r.nodeStorage().Status.Pools[0]
	var free []int64
	for _, d := range p.Devices {
		free = append(free, d.FreeBytes)
	}
	maxVol, n, err := backend.StripedMax(free, p.AlignBytes, 2)
	if err != nil || n != 2 || maxVol != 30*stripedExt || p.FreeBytes != 40*stripedExt || len(p.Devices) != 3 {
		t.Fatalf("published pool %+v: striped max %d (%d stripes, %v), want %d over 3 devices", p, maxVol, n, err, 30*stripedExt)
	}

	striped := func(csiName string, size int64, stripes string, stripeSize int64) *v1alpha1.LocalVolume {
		lv := newLV(csiName, size, "disks")
		lv.Spec.Stripes, lv.Spec.StripeSizeBytes = stripes, stripeSize
		if err := c.Create(ctx, lv); err != nil {
			t.Fatal(err)
		}
		_ = r.reconcile(lv.Name) // failures are in the status
		return r.get(lv.Name)
	}
	for _, tc := range []struct {
		name, stripes string
		size          int64
		code          string
	}{
		{"pvc-over", "2", maxVol + stripedExt, "ResourceExhausted"},
		{"pvc-four", "4", stripedExt, "InvalidArgument"},
	} {
		lv := striped(tc.name, tc.size, tc.stripes, 0)
		if lv.Status.Phase != v1alpha1.PhaseFailed || lv.Status.Code != tc.code {
			t.Fatalf("%s: %d bytes in %s stripes: status %+v, want Failed %s", tc.name, tc.size, tc.stripes, lv.Status, tc.code)
		}
		t.Logf("%s: %s: %s", tc.name, lv.Status.Code, lv.Status.Message)
	}
	lv := striped("pvc-max", maxVol, "2", 128<<10)
	if lv.Status.Phase != v1alpha1.PhaseReady || lv.Status.CurrentSizeBytes != maxVol {
		t.Fatalf("exactly the published striped max: status %+v, want Ready with %d bytes", lv.Status, maxVol)
	}
	out, err := run.Run(ctx, "lvm", "lvs", "-o", "lv_name,stripes,stripe_size", "--reportformat", "json", "--units", "b", "--nosuffix",
		stripedVG+"/"+lv.Name)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Report []struct {
			LV []struct {
				Stripes    string `json:"stripes"`
				StripeSize string `json:"stripe_size"`
			} `json:"lv"`
		} `json:"report"`
	}
	if err := lvm.DecodeReport(out, &rep); err != nil || len(rep.Report) != 1 || len(rep.Report[0].LV) != 1 {
		t.Fatalf("lvs %s: %v: %s", lv.Name, err, out)
	}
	if got := rep.Report[0].LV[0]; got.Stripes != "2" || got.StripeSize != "131072" {
		t.Fatalf("lvs %s: stripes %s, stripe size %s; want 2 and 131072", lv.Name, got.Stripes, got.StripeSize)
	}
	// The publish before Ready already shows both striped PVs full.
	var left []int64
	for _, d := range r.nodeStorage().Status.Pools[0].Devices {
		left = append(left, d.FreeBytes)
	}
	if want := []int64{10 * stripedExt, 0, 0}; !reflect.DeepEqual(left, want) {
		t.Fatalf("published device free bytes after the create: %v, want %v", left, want)
	}
}

func TestRealStripedLocalVolume(t *testing.T) {
	m := lvmtest.NewMultiVG(t, 3, 64<<20, stripedVG)
	ctx := context.Background()
	if _, err := m.Runner.Run(ctx, "lvm", "lvcreate", "-n", "linear", "-l", "5", "-W", "y", "-y", stripedVG, m.LoopDevs[0]); err != nil {
		t.Fatal(err)
	}
	rec := &exectest.Recorder{R: m.Runner}
	b, err := lvm.New(ctx, rec, "disks", stripedVG, "carve.csi.dev")
	if err != nil {
		t.Fatal(err)
	}
	stripedScenario(t, b, rec)
	if os.Getenv("CARVE_LVM_CAPTURE") != "" && !t.Failed() {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := exectest.WriteCapture(filepath.Join("testdata", "striped.txt"), exectest.Capture{Calls: rec.Take()}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestStripedLocalVolume(t *testing.T) {
	c, err := exectest.ReadCapture(filepath.Join("testdata", "striped.txt"))
	if err != nil {
		t.Fatal(err)
	}
	f := exectest.Replay(t, c.Calls)
	b, err := lvm.New(context.Background(), f, "disks", stripedVG, "carve.csi.dev")
	if err != nil {
		t.Fatal(err)
	}
	stripedScenario(t, b, f)
	// The recorded lvcreate is the one the node-local controller runs.
	for _, call := range c.Calls {
		if strings.Contains(strings.Join(call.Argv, " "), "lvcreate -n carve-pvc-max-") &&
			!strings.Contains(strings.Join(call.Argv, " "), " -i 2 -I 128k ") {
			t.Errorf("recorded lvcreate %q has no -i 2 -I 128k", call.Argv)
		}
	}
}
