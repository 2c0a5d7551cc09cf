package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/test/k8srig"
	"github.com/carve-csi/carve/test/loopdev"
	"github.com/carve-csi/carve/test/lvmtest"
)

// TestStripedClassControllerMode: a StorageClass with stripes "2" in
// controller mode (carve-csi --mode=controller, external-provisioner,
// scheduler), on the rig's three nodes of which only node-1's volume group
// gets a second physical volume (real lvm2, metadata only). The class's
// CSIStorageCapacity offers node-1 exactly 2 x the emptier PV's free
// extents and the one-disk nodes nothing, so the scheduler sends the pod to
// node-1, where the LocalVolume carries stripes "2" and the LV has 2 stripes
// (lvs -o stripes).
func TestStripedClassControllerMode(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	n := r.Nodes[0]

	// A second disk in node-1's volume group; lvm.conf must accept it too.
	dev2 := loopdev.New(t, k8srig.VGSize)
	if err := (lvmtest.Config{Devices: []string{n.VG.LoopDev, dev2}}).Write(n.VG.ConfigDir); err != nil {
		t.Fatal(err)
	}
	if _, err := n.VG.Runner.Run(ctx, "lvm", "vgextend", "-y", n.VG.Name, dev2); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // before the rig removes the volume group and the loop device goes
		for _, args := range [][]string{{"vgreduce", n.VG.Name, dev2}, {"pvremove", "-y", "-ff", dev2}} {
			if out, err := n.VG.Runner.Run(context.Background(), "lvm", args...); err != nil {
				t.Logf("lvm %v: %v %s", args, err, out)
			}
		}
	})

	// The node publishes both PVs at its next capacity resync (10 s in the rig).
	k8srig.WaitFor(t, "node-1's NodeStorage listing two devices", k8srig.WaitLong, 200*time.Millisecond, func() (bool, string) {
		ns := &v1alpha1.NodeStorage{}
		if err := r.CL.Get(ctx, types.NamespacedName{Name: n.Name}, ns); err != nil {
			return false, err.Error()
		}
		for _, p := range ns.Status.Pools {
			if p.Name == k8srig.PoolName {
				return len(p.Devices) == 2 && p.AlignBytes > 0, fmt.Sprintf("%+v", p)
			}
		}
		return false, fmt.Sprintf("%+v", ns.Status)
	})
	want := stripedMax(t, n, 2)

	sc := k8srig.StorageClass("carve-striped", k8srig.PoolName, storagev1.VolumeBindingWaitForFirstConsumer)
	sc.Parameters["stripes"] = "2"
	if _, err := r.CS.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.CS.StorageV1().StorageClasses().Delete(ctx, sc.Name, metav1.DeleteOptions{}) }()
	k8srig.WaitFor(t, "CSIStorageCapacity of carve-striped", k8srig.WaitLong, 200*time.Millisecond, func() (bool, string) {
		rows, problem := r.Capacities(ctx, sc.Name)
		if problem != "" {
			return false, problem
		}
		ok := rows[n.Name].MaxVolume == want
		for _, o := range r.Nodes[1:] {
			ok = ok && rows[o.Name].MaxVolume == 0 && rows[o.Name].Capacity == 0
		}
		return ok, fmt.Sprintf("%+v, want node-1 max %d, the others 0", rows, want)
	})
	t.Logf("carve-striped: node-1 maximumVolumeSize %d bytes (2 x the emptier PV), node-2 and node-3 0", want)

	const pod = "striped"
	if _, err := r.CS.CoreV1().Pods(k8srig.PodNS).Create(ctx, k8srig.EphemeralPod(pod, sc.Name, 4*k8srig.Gi), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pvc, _ := r.WaitBound(t, pod)
	lv := &v1alpha1.LocalVolume{}
	if err := r.CL.Get(ctx, types.NamespacedName{Name: pvc.Spec.VolumeName}, lv); err != nil {
		pv, perr := r.CS.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		if perr != nil {
			t.Fatal(perr)
		}
		if err := r.CL.Get(ctx, types.NamespacedName{Name: pv.Spec.CSI.VolumeHandle}, lv); err != nil {
			t.Fatal(err)
		}
	}
	if lv.Spec.NodeName != n.Name || lv.Spec.Stripes != "2" || lv.Status.Phase != v1alpha1.PhaseReady {
		t.Fatalf("LocalVolume %s: spec %+v, status %+v; want Ready on %s with stripes 2", lv.Name, lv.Spec, lv.Status, n.Name)
	}
	out, err := n.VG.Runner.Run(ctx, "lvm", "lvs", "--noheadings", "-o", "stripes,lv_size", "--units", "b", "--nosuffix", n.VG.Name+"/"+lv.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("$ lvs -o stripes,lv_size %s/%s\n%s", n.VG.Name, lv.Name, out)
	if f := strings.Fields(string(out)); len(f) != 2 || f[0] != "2" {
		t.Fatalf("lvs -o stripes: %q, want one segment of 2 stripes", out)
	}
	r.DeletePod(t, pod)
	k8srig.WaitFor(t, "the striped LV removed", k8srig.WaitLong, 200*time.Millisecond, func() (bool, string) {
		lvs, err := n.LVs(ctx)
		if err != nil {
			return false, err.Error()
		}
		return len(lvs) == 0, fmt.Sprintf("LVs %v", lvs)
	})
}

// stripedMax is the largest LV of stripes stripes on node n by lvm's own
// figures: stripes x the free extents of the PV with the stripes-th most.
func stripedMax(t *testing.T, n *k8srig.Node, stripes int) int64 {
	out, err := n.VG.Runner.Run(context.Background(), "lvm", "pvs", "-o", "pv_free,vg_extent_size", "--reportformat", "json",
		"--units", "b", "--nosuffix", "-S", "vg_name="+n.VG.Name)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Report []struct {
			PV []struct {
				Free string `json:"pv_free"`
				Ext  string `json:"vg_extent_size"`
			} `json:"pv"`
		} `json:"report"`
	}
	if err := json.Unmarshal(out, &rep); err != nil || len(rep.Report) != 1 || len(rep.Report[0].PV) != stripes {
		t.Fatalf("pvs: %v: %s", err, out)
	}
	least := int64(-1)
	var ext int64
	for _, pv := range rep.Report[0].PV {
		free, err1 := strconv.ParseInt(pv.Free, 10, 64)
		e, err2 := strconv.ParseInt(pv.Ext, 10, 64)
		if err1 != nil || err2 != nil || e <= 0 {
			t.Fatalf("pvs: %s", out)
		}
		ext = e
		if least < 0 || free/e < least {
			least = free / e
		}
	}
	return least * int64(stripes) * ext
}
