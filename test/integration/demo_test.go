package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/test/k8srig"
)

const demoSize = 4 * k8srig.Gi // the blog post's 4Gi scratch volume

// TestCapacityDemo: see the package comment. The steps share one cluster and
// build on each other, so the first failure ends the test.
func TestCapacityDemo(t *testing.T) {
	r := newRig(t)
	d := &demo{r: r}
	steps := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"1-capacity-published", d.capacityPublished},
		{"2-first-pod", d.firstPod},
		{"3-fill-until-full", d.fillUntilFull},
		{"4a-controller-crash-in-create", d.controllerCrash},
		{"4b-node-crash-in-delete", d.nodeCrash},
		{"4c-controller-crash-in-delete", d.controllerCrashInDelete},
		{"5-expansion", d.expansion},
		{"6-bad-input", d.badInput},
		{"7-delete-everything", d.deleteEverything},
		{"8-benchmark", d.benchmark},
	}
	for _, s := range steps {
		ok := t.Run(s.name, func(t *testing.T) {
			s.fn(t)
			r.CheckProcs(t)
		})
		if !ok {
			t.FailNow()
		}
	}
}

type demo struct {
	r       *k8srig.Rig
	initial map[string]k8srig.CapRow // capacity of the empty cluster
	pods    []string                 // demo pods that exist, in creation order
	bound   []time.Duration          // pod creation -> PVC bound, controller mode
}

// 1. CSIStorageCapacity objects appear, one per node, each equal to the VG's free space.
func (d *demo) capacityPublished(t *testing.T) {
	r := d.r
	start := time.Now()
	d.initial = r.WaitCapacityExact(t, "empty cluster")
	t.Logf("CSIStorageCapacity objects exact after %v", time.Since(start).Round(time.Millisecond))
	t.Logf("\n%s", r.KubectlCapacities(t))
	t.Logf("\n%s", r.CapTable("capacity per node, empty cluster (VG FREE: vgs on the node's VG)", d.initial, nil))
	for _, n := range r.Nodes {
		row := d.initial[n.Name]
		if row.Capacity <= 19*k8srig.Gi || row.MaxVolume != row.Capacity {
			t.Errorf("%s: capacity %d, maximum volume %d; want about 20Gi, equal", n.Name, row.Capacity, row.MaxVolume)
		}
	}
	// NodeStorage: the admin's view.
	var list v1alpha1.NodeStorageList
	if err := r.CL.List(context.Background(), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != k8srig.NodeCount {
		t.Errorf("%d NodeStorage objects, want %d", len(list.Items), k8srig.NodeCount)
	}
	t.Logf("\n$ kubectl get nodestorages\n%s", r.KubectlOut(t, "get", "nodestorages"))
}

// 2. One pod with a 4Gi generic ephemeral volume.
func (d *demo) firstPod(t *testing.T) {
	r := d.r
	before := r.WaitCapacityExact(t, "before the first pod")
	created := r.CreatePod(t, "demo-1", demoSize)
	_, boundAt := r.WaitBound(t, "demo-1")
	took := boundAt.Sub(created)
	d.bound = append(d.bound, took)
	d.pods = append(d.pods, "demo-1")
	v := r.VolumeOf(t, "demo-1", demoSize)
	after := r.WaitCapacityExact(t, "after the first pod")
	for _, n := range r.Nodes {
		want := before[n.Name].Capacity
		if n.Name == v.Node {
			want -= v.LVSize
		}
		if got := after[n.Name].Capacity; got != want {
			t.Errorf("%s: capacity %d after the first volume, want %d", n.Name, got, want)
		}
	}
	t.Logf("pod demo-1 -> PVC %s bound in %s; scheduled to %s; PV %s; LV %s/%s %dMi",
		v.PVC, k8srig.MS(took), v.Node, v.PV, r.Node(v.Node).VG.Name, v.ID, v.LVSize/k8srig.Mi)
	t.Logf("\n%s\n%s", r.CapTable("before demo-1", before, nil), r.CapTable("after demo-1 (4Gi on "+v.Node+")", after, before))
	t.Logf("\n%s", r.KubectlCapacities(t))
}

// 3. Pods until one fits nowhere; it waits for "did not have enough free
// storage"; deleting a pod frees the space and the pending pod gets it.
func (d *demo) fillUntilFull(t *testing.T) {
	r := d.r
	start := r.WaitCapacityExact(t, "before filling")
	fits := 0
	for _, n := range r.Nodes {
		fits += int(start[n.Name].MaxVolume / demoSize)
	}
	t.Logf("the VGs can hold %d more 4Gi volumes", fits)
	var pending, message string
	placed := map[string]int{}
	for i := 2; pending == ""; i++ {
		if i > fits+5 {
			t.Fatalf("%d pods created; the cluster should have been full after %d", i-1, fits+1)
		}
		pod := fmt.Sprintf("demo-%d", i)
		created := r.CreatePod(t, pod, demoSize)
		k8srig.WaitFor(t, "pod "+pod+" bound or unschedulable for storage", k8srig.WaitLong, 20*time.Millisecond, func() (bool, string) {
			pvc, err := r.CS.CoreV1().PersistentVolumeClaims(k8srig.PodNS).Get(context.Background(), k8srig.ClaimOf(pod), metav1.GetOptions{})
			if err == nil && pvc.Status.Phase == corev1.ClaimBound {
				took := time.Since(created)
				d.bound = append(d.bound, took)
				d.pods = append(d.pods, pod)
				return true, ""
			}
			if msg, ok := r.UnschedulableForStorage(pod); ok {
				pending, message = pod, msg
				return true, ""
			}
			return false, r.PodState(pod)
		})
		if pending != "" {
			break
		}
		v := r.VolumeOf(t, pod, demoSize)
		placed[v.Node]++
		// Exact after every create (and the scheduler's view is current for the next pod).
		r.WaitCapacityExact(t, "after "+pod)
	}
	full := r.WaitCapacityExact(t, "full")
	for _, n := range r.Nodes {
		if full[n.Name].MaxVolume >= demoSize {
			t.Errorf("%s still has room for 4Gi (%d) yet %s was unschedulable: %s", n.Name, full[n.Name].MaxVolume, pending, message)
		}
	}
	if len(d.pods)-1 != fits {
		t.Errorf("%d more pods fit, want %d", len(d.pods)-1, fits)
	}
	t.Logf("%d pods bound (per node %v); %s is Pending: %q", len(d.pods), placed, pending, message)
	for _, e := range r.Events(k8srig.PodNS, "Pod", pending) {
		if e.Reason == "FailedScheduling" && strings.Contains(e.Message, "did not have enough free storage") {
			t.Logf("event on pod %s: %s %s: %s", pending, e.Type, e.Reason, e.Message)
			break
		}
	}
	t.Logf("\n%s", r.CapTable("cluster full", full, d.initial))
	t.Logf("\n$ kubectl get localvolumes -o wide\n%s", r.KubectlOut(t, "get", "localvolumes", "-o", "wide"))
	t.Logf("\n$ kubectl get nodestorages\n%s", r.KubectlOut(t, "get", "nodestorages"))

	// Delete the first pod: its PVC goes with it (owner reference, garbage
	// collector), the PV is deleted, the LV removed, the capacity returns and
	// the pending pod takes the space.
	victim := r.VolumeOf(t, d.pods[0], demoSize)
	deleted := r.DeletePod(t, victim.Pod)
	d.pods = d.pods[1:]
	k8srig.WaitFor(t, "LV "+victim.ID+" removed from "+victim.Node, k8srig.WaitLong, 50*time.Millisecond, func() (bool, string) {
		lvs, err := r.Node(victim.Node).LVs(context.Background())
		if err != nil {
			return false, err.Error()
		}
		_, still := lvs[victim.ID]
		return !still, fmt.Sprintf("LVs on %s: %v", victim.Node, lvs)
	})
	lvGone := time.Since(deleted)
	_, boundAt := r.WaitBound(t, pending)
	v := r.VolumeOf(t, pending, demoSize)
	d.pods = append(d.pods, pending)
	if v.Node != victim.Node {
		t.Errorf("pending pod %s went to %s; the freed space is on %s", pending, v.Node, victim.Node)
	}
	after := r.WaitCapacityExact(t, "after the swap")
	t.Logf("deleted %s on %s: LV gone after %s; pending %s scheduled to %s and bound %s after the delete",
		victim.Pod, victim.Node, k8srig.MS(lvGone), pending, v.Node, k8srig.MS(boundAt.Sub(deleted)))
	t.Logf("\n%s", r.CapTable("after deleting "+victim.Pod+" and binding "+pending, after, d.initial))
	r.Audit(t, "after step 3", len(d.pods))
}

// 4a. SIGKILL the controller after its LocalVolume appears and before the PVC
// binds. The nodes are paused (SIGSTOP) meanwhile so that the window is certain.
func (d *demo) controllerCrash(t *testing.T) {
	r := d.r
	ctx := context.Background()
	// Make room: keep one pod per node, delete the rest at once.
	keep := map[string]string{}
	var drop []string
	for _, pod := range d.pods {
		v := r.VolumeOf(t, pod, demoSize)
		if _, ok := keep[v.Node]; ok {
			drop = append(drop, pod)
		} else {
			keep[v.Node] = pod
		}
	}
	deleted := time.Now()
	for _, pod := range drop {
		r.DeletePod(t, pod)
	}
	d.pods = nil
	for _, n := range r.Nodes {
		if p, ok := keep[n.Name]; ok {
			d.pods = append(d.pods, p)
		}
	}
	r.Audit(t, fmt.Sprintf("after deleting %d pods at once", len(drop)), len(d.pods))
	t.Logf("%d pods deleted at once, everything consistent after %s", len(drop), k8srig.MS(time.Since(deleted)))

	known := map[string]bool{}
	var list v1alpha1.LocalVolumeList
	if err := r.CL.List(ctx, &list); err != nil {
		t.Fatal(err)
	}
	for _, lv := range list.Items {
		known[lv.Name] = true
	}
	for _, n := range r.Nodes {
		if err := n.Proc.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}
	paused := true
	resume := func() {
		if paused {
			for _, n := range r.Nodes {
				_ = n.Proc.Signal(syscall.SIGCONT)
			}
			paused = false
		}
	}
	defer resume()
	provStarts := r.Provisioner.StartCount()
	created := r.CreatePod(t, "crash-create", demoSize)
	var lv v1alpha1.LocalVolume
	k8srig.WaitFor(t, "the controller's LocalVolume for crash-create", k8srig.WaitLong, 20*time.Millisecond, func() (bool, string) {
		var list v1alpha1.LocalVolumeList
		if err := r.CL.List(ctx, &list); err != nil {
			return false, err.Error()
		}
		for _, x := range list.Items {
			if !known[x.Name] {
				lv = x
				return true, ""
			}
		}
		return false, r.PodState("crash-create")
	})
	r.Controller.Stop(syscall.SIGKILL)
	killed := time.Now()
	pvc, err := r.CS.CoreV1().PersistentVolumeClaims(k8srig.PodNS).Get(ctx, k8srig.ClaimOf("crash-create"), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pvc.Status.Phase == corev1.ClaimBound {
		t.Fatalf("PVC bound before the controller was killed: the crash missed the window")
	}
	t.Logf("LocalVolume %s (node %s, phase %q) appeared %s after the pod; SIGKILLed the controller; PVC %s",
		lv.Name, lv.Spec.NodeName, lv.Status.Phase, k8srig.MS(killed.Sub(created)), pvc.Status.Phase)

	// The node acts while the controller is down.
	resume()
	k8srig.WaitFor(t, "LocalVolume "+lv.Name+" Ready with the controller down", k8srig.WaitLong, 50*time.Millisecond, func() (bool, string) {
		x := &v1alpha1.LocalVolume{}
		if err := r.CL.Get(ctx, client.ObjectKey{Name: lv.Name}, x); err != nil {
			return false, err.Error()
		}
		return x.Status.Phase == v1alpha1.PhaseReady, fmt.Sprintf("phase %q %s", x.Status.Phase, x.Status.Message)
	})
	// The sidecars exit when they lose the CSI connection and are restarted
	// like containers (counted below).
	r.StartAndWait(t, r.Controller, r.CtrlSock)
	restarted := time.Now()
	_, boundAt := r.WaitBound(t, "crash-create")
	v := r.VolumeOf(t, "crash-create", demoSize)
	d.pods = append(d.pods, "crash-create")
	if v.ID != lv.Name {
		t.Errorf("PV %s uses volume %s, the LocalVolume made before the crash was %s", v.PV, v.ID, lv.Name)
	}
	// Exactly once: one LocalVolume and one LV for this PV.
	s := r.Audit(t, "after the controller crash", len(d.pods))
	n := 0
	for _, x := range s.LVols {
		if x.Spec.VolumeName == v.PV {
			n++
		}
	}
	lvCount := 0
	for _, lvs := range s.LVs {
		if _, ok := lvs[v.ID]; ok {
			lvCount++
		}
	}
	if n != 1 || lvCount != 1 {
		t.Errorf("volume %s: %d LocalVolumes, %d LVs; want exactly one of each", v.PV, n, lvCount)
	}
	t.Logf("controller restarted %s after the kill; PVC bound %s after the restart (%s after the pod); provisioner restarted %d time(s); volume %s created exactly once on %s",
		k8srig.MS(restarted.Sub(killed)), k8srig.MS(boundAt.Sub(restarted)), k8srig.MS(boundAt.Sub(created)), r.Provisioner.StartCount()-provStarts, v.ID, v.Node)
}

// 4b. SIGKILL a node while its LocalVolume waits for it with a deletion
// timestamp (the node is paused so that the window is certain); restart it.
func (d *demo) nodeCrash(t *testing.T) {
	r := d.r
	ctx := context.Background()
	v := r.VolumeOf(t, "crash-create", demoSize)
	n := r.Node(v.Node)
	before := r.WaitCapacityExact(t, "before the node crash")
	if err := n.Proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			_ = n.Proc.Signal(syscall.SIGCONT)
		}
	}()
	deleted := r.DeletePod(t, "crash-create")
	d.pods = remove(d.pods, "crash-create")
	var lv v1alpha1.LocalVolume
	k8srig.WaitFor(t, "LocalVolume "+v.ID+" with a deletion timestamp", k8srig.WaitLong, 20*time.Millisecond, func() (bool, string) {
		if err := r.CL.Get(ctx, client.ObjectKey{Name: v.ID}, &lv); err != nil {
			return false, err.Error()
		}
		return lv.DeletionTimestamp != nil, fmt.Sprintf("finalizers %v, phase %s", lv.Finalizers, lv.Status.Phase)
	})
	lvs, err := n.LVs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := lvs[v.ID]; !ok {
		t.Fatalf("LV %s is gone although its node was paused", v.ID)
	}
	n.Proc.Stop(syscall.SIGKILL)
	stopped = false
	killed := time.Now()
	t.Logf("LocalVolume %s being deleted %s after the pod delete (finalizers %v), LV still on %s; SIGKILLed %s",
		v.ID, k8srig.MS(killed.Sub(deleted)), lv.Finalizers, n.Name, n.Name)
	r.StartAndWait(t, n.Proc, n.Sock)
	restarted := time.Now()
	waitVolumeGone(t, d.r, n, v, "create")
	gone := time.Now()
	r.Audit(t, "after the node crash", len(d.pods))
	after := r.WaitCapacityExact(t, "after the node crash")
	if got, want := after[n.Name].Capacity, before[n.Name].Capacity+v.LVSize; got != want {
		t.Errorf("%s: capacity %d after the delete, want %d", n.Name, got, want)
	}
	t.Logf("%s restarted; LocalVolume, LV, PV and PVC gone %s after the restart (%s after the pod delete)",
		n.Name, k8srig.MS(gone.Sub(restarted)), k8srig.MS(gone.Sub(deleted)))
}

// 4c. SIGKILL the controller while its DeleteVolume waits for the node: the
// LocalVolume has its deletion timestamp, the node's finalizer is still on
// it (the node is paused so that the window is certain). The controller is
// restarted before the node resumes, so the provisioner's retry meets a
// LocalVolume that is already being deleted. Exactly once: one LocalVolume
// delete by the controller, one lvremove and one device removal on the node,
// then PV, PVC and LocalVolume are gone and nothing is stuck.
func (d *demo) controllerCrashInDelete(t *testing.T) {
	r := d.r
	ctx := context.Background()
	created := r.CreatePod(t, "crash-delete", demoSize)
	_, boundAt := r.WaitBound(t, "crash-delete")
	v := r.VolumeOf(t, "crash-delete", demoSize)
	t.Logf("pod crash-delete bound in %s: LV %s on %s", k8srig.MS(boundAt.Sub(created)), v.ID, v.Node)
	n := r.Node(v.Node)
	before := r.WaitCapacityExact(t, "before the controller crash in delete")
	if err := n.Proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			_ = n.Proc.Signal(syscall.SIGCONT)
		}
	}()
	ctrlStarts, provStarts := r.Controller.StartCount(), r.Provisioner.StartCount()
	deleted := r.DeletePod(t, "crash-delete")
	var lv v1alpha1.LocalVolume
	// The controller logs this line after its Delete of the LocalVolume,
	// then waits for the node: DeleteVolume is in flight.
	waiting := []string{"LocalVolume deleted, waiting for its node", v.ID}
	k8srig.WaitFor(t, "DeleteVolume of "+v.ID+" waiting for "+n.Name, k8srig.WaitLong, 20*time.Millisecond, func() (bool, string) {
		if err := r.CL.Get(ctx, client.ObjectKey{Name: v.ID}, &lv); err != nil {
			return false, err.Error()
		}
		logged := countLines(t, r.Controller.LogPath, waiting...)
		return lv.DeletionTimestamp != nil && logged == 1,
			fmt.Sprintf("deletion timestamp %v, finalizers %v, controller log lines %d", lv.DeletionTimestamp, lv.Finalizers, logged)
	})
	if !controllerutil.ContainsFinalizer(&lv, v1alpha1.Finalizer) {
		t.Fatalf("LocalVolume %s lost its finalizer %s while its node was paused: %v", v.ID, v1alpha1.Finalizer, lv.Finalizers)
	}
	lvs, err := n.LVs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := lvs[v.ID]; !ok {
		t.Fatalf("LV %s is gone although its node was paused", v.ID)
	}
	r.Controller.Stop(syscall.SIGKILL)
	killed := time.Now()
	t.Logf("LocalVolume %s being deleted (finalizers %v), DeleteVolume waiting, LV still on %s, %s after the pod delete; SIGKILLed the controller",
		v.ID, lv.Finalizers, n.Name, k8srig.MS(killed.Sub(deleted)))
	r.StartAndWait(t, r.Controller, r.CtrlSock)
	restarted := time.Now()
	if err := n.Proc.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	waitVolumeGone(t, d.r, n, v, "delete")
	gone := time.Now()
	r.Audit(t, "after the controller crash in delete", len(d.pods))
	after := r.WaitCapacityExact(t, "after the controller crash in delete")
	if got, want := after[n.Name].Capacity, before[n.Name].Capacity+v.LVSize; got != want {
		t.Errorf("%s: capacity %d after the delete, want %d", n.Name, got, want)
	}
	// Exactly once, from the logs of every start of each process.
	ctrlDeletes := countLines(t, r.Controller.LogPath, waiting...)
	lvremoves := countLines(t, n.Proc.LogPath, "lvremove", v.ID)
	removed := countLines(t, n.Proc.LogPath, "Device of deleted LocalVolume removed", v.ID)
	released := countLines(t, n.Proc.LogPath, "LocalVolume released", v.ID)
	if ctrlDeletes != 1 || lvremoves != 1 || removed != 1 || released != 1 {
		t.Errorf("volume %s: the controller deleted its LocalVolume %d time(s), the node ran lvremove %d time(s), removed the device %d time(s), released the finalizer %d time(s); want 1 each",
			v.ID, ctrlDeletes, lvremoves, removed, released)
	}
	t.Logf("controller restarted %s after the kill (starts %d -> %d), provisioner restarted %d time(s); %s resumed; LocalVolume, LV, PV and PVC gone %s after the restart (%s after the pod delete)",
		k8srig.MS(restarted.Sub(killed)), ctrlStarts, r.Controller.StartCount(), r.Provisioner.StartCount()-provStarts, n.Name,
		k8srig.MS(gone.Sub(restarted)), k8srig.MS(gone.Sub(deleted)))
	t.Logf("exactly once: LocalVolume deleted by the controller %d time, lvremove run %d time, device removed %d time, finalizer released %d time; capacity of %s back to %dMi",
		ctrlDeletes, lvremoves, removed, released, n.Name, after[n.Name].Capacity/k8srig.Mi)
}

// countLines counts the lines of a log that contain every one of subs.
// waitVolumeGone waits until the LocalVolume, the LV on n, the PV and the PVC of v are all gone.
func waitVolumeGone(t *testing.T, r *k8srig.Rig, n *k8srig.Node, v k8srig.Volume, label string) {
	t.Helper()
	ctx := context.Background()
	k8srig.WaitFor(t, "LocalVolume, LV, PV and PVC of crash-"+label+" gone", k8srig.WaitLong, 50*time.Millisecond, func() (bool, string) {
		var left []string
		if err := r.CL.Get(ctx, client.ObjectKey{Name: v.ID}, &v1alpha1.LocalVolume{}); !apierrors.IsNotFound(err) {
			left = append(left, fmt.Sprintf("LocalVolume (%v)", err))
		}
		if lvs, err := n.LVs(ctx); err != nil || lvs[v.ID] != 0 {
			left = append(left, fmt.Sprintf("LV (%v)", err))
		}
		if _, err := r.CS.CoreV1().PersistentVolumes().Get(ctx, v.PV, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			left = append(left, fmt.Sprintf("PV (%v)", err))
		}
		if _, err := r.CS.CoreV1().PersistentVolumeClaims(k8srig.PodNS).Get(ctx, v.PVC, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			left = append(left, fmt.Sprintf("PVC (%v)", err))
		}
		return len(left) == 0, "left: " + strings.Join(left, ", ")
	})
}

func countLines(t *testing.T, path string, subs ...string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
lines:
	for _, l := range strings.Split(string(b), "\n") {
		for _, s := range subs {
			if !strings.Contains(l, s) {
				continue lines
			}
		}
		n++
	}
	return n
}

func remove(s []string, x string) []string {
	var out []string
	for _, e := range s {
		if e != x {
			out = append(out, e)
		}
	}
	return out
}

// 5. Expansion through the PVC: external-resizer -> ControllerExpandVolume ->
// LocalVolume spec -> the node's lvextend.
func (d *demo) expansion(t *testing.T) {
	r := d.r
	ctx := context.Background()
	v := r.VolumeOf(t, d.pods[0], demoSize)
	before := r.WaitCapacityExact(t, "before expansion")
	const newSize = 6 * k8srig.Gi
	patch := fmt.Sprintf(`{"spec":{"resources":{"requests":{"storage":"%d"}}}}`, newSize)
	start := time.Now()
	if _, err := r.CS.CoreV1().PersistentVolumeClaims(k8srig.PodNS).Patch(ctx, v.PVC, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("patch PVC %s: %v", v.PVC, err)
	}
	n := r.Node(v.Node)
	k8srig.WaitFor(t, "LV "+v.ID+" and PV "+v.PV+" at 6Gi", k8srig.WaitLong, 50*time.Millisecond, func() (bool, string) {
		lvs, err := n.LVs(ctx)
		if err != nil {
			return false, err.Error()
		}
		pv, err := r.CS.CoreV1().PersistentVolumes().Get(ctx, v.PV, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		q := pv.Spec.Capacity[corev1.ResourceStorage]
		return lvs[v.ID] == newSize && q.Value() == newSize, fmt.Sprintf("LV %d, PV %s", lvs[v.ID], q.String())
	})
	took := time.Since(start)
	after := r.WaitCapacityExact(t, "after expansion")
	if got, want := after[n.Name].Capacity, before[n.Name].Capacity-(newSize-demoSize); got != want {
		t.Errorf("%s: capacity %d after expanding by 2Gi, want %d", n.Name, got, want)
	}
	for _, o := range r.Nodes {
		if o != n && after[o.Name].Capacity != before[o.Name].Capacity {
			t.Errorf("%s: capacity changed by an expansion on %s", o.Name, n.Name)
		}
	}
	lv := &v1alpha1.LocalVolume{}
	if err := r.CL.Get(ctx, client.ObjectKey{Name: v.ID}, lv); err != nil {
		t.Fatal(err)
	}
	if lv.Spec.SizeBytes != newSize || lv.Status.CurrentSizeBytes != newSize {
		t.Errorf("LocalVolume %s: spec %d, status %d; want %d", lv.Name, lv.Spec.SizeBytes, lv.Status.CurrentSizeBytes, newSize)
	}
	pvc, err := r.CS.CoreV1().PersistentVolumeClaims(k8srig.PodNS).Get(ctx, v.PVC, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var conds []string
	for _, c := range pvc.Status.Conditions {
		conds = append(conds, string(c.Type))
	}
	pvcCap := pvc.Status.Capacity[corev1.ResourceStorage]
	t.Logf("PVC %s 4Gi -> 6Gi: LV %s/%s and PV at 6Gi after %s; PVC status capacity %s, conditions %v (no kubelet: no node expansion)",
		v.PVC, n.VG.Name, v.ID, k8srig.MS(took), pvcCap.String(), conds)
	t.Logf("\n%s", r.CapTable("after expanding "+v.PVC+" on "+n.Name, after, before))
	r.Audit(t, "after expansion", len(d.pods))
}

// 6. Bad input: a pool that exists nowhere, a size no node can hold, a
// LocalVolume by hand for a node that does not exist.
func (d *demo) badInput(t *testing.T) {
	r := d.r
	ctx := context.Background()
	before, err := r.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		class, pool, claim string
		size               int64
		code, text         string
	}{
		{"carve-nope", "nope", "bad-pool", k8srig.Gi, "InvalidArgument", "nope"},
		{"carve-lvm-immediate", k8srig.PoolName, "too-big", 100 * k8srig.Gi, "ResourceExhausted", "no node"},
	}
	for _, c := range cases {
		// Immediate binding: provisioning starts without a pod, so the error
		// reaches the PVC (with WaitForFirstConsumer the scheduler would keep
		// the pod Pending for lack of capacity, which step 3 shows).
		sc := k8srig.StorageClass(c.class, c.pool, storagev1.VolumeBindingImmediate)
		if _, err := r.CS.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		pvc := &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: c.claim, Namespace: k8srig.PodNS},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				StorageClassName: &c.class,
				Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceStorage: *resource.NewQuantity(c.size, resource.BinarySI)}},
			},
		}
		if _, err := r.CS.CoreV1().PersistentVolumeClaims(k8srig.PodNS).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var event corev1.Event
		k8srig.WaitFor(t, "ProvisioningFailed on PVC "+c.claim, k8srig.WaitLong, 100*time.Millisecond, func() (bool, string) {
			var seen []string
			for _, e := range r.Events(k8srig.PodNS, "PersistentVolumeClaim", c.claim) {
				seen = append(seen, e.Reason+": "+e.Message)
				if e.Reason == "ProvisioningFailed" && strings.Contains(e.Message, c.code) && strings.Contains(e.Message, c.text) {
					event = e
					return true, ""
				}
			}
			return false, strings.Join(seen, " | ")
		})
		got, err := r.CS.CoreV1().PersistentVolumeClaims(k8srig.PodNS).Get(ctx, c.claim, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.Phase != corev1.ClaimPending || got.Spec.VolumeName != "" {
			t.Errorf("PVC %s: phase %s, volume %q; want Pending without a volume", c.claim, got.Status.Phase, got.Spec.VolumeName)
		}
		from := event.Source.Component
		if from == "" {
			from = event.ReportingController
		}
		t.Logf("PVC %s (class %s, pool %s, %dGi): %s %s from %s: %s", c.claim, c.class, c.pool, c.size/k8srig.Gi,
			event.Type, event.Reason, from, event.Message)
		if err := r.CS.CoreV1().PersistentVolumeClaims(k8srig.PodNS).Delete(ctx, c.claim, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := r.CS.StorageV1().StorageClasses().Delete(ctx, c.class, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	after, err := r.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.LVCount() != before.LVCount() || len(after.LVols) != len(before.LVols) || len(after.PVs) != len(before.PVs) {
		t.Errorf("bad input created something: LVs %d -> %d, LocalVolumes %d -> %d, PVs %d -> %d",
			before.LVCount(), after.LVCount(), len(before.LVols), len(after.LVols), len(before.PVs), len(after.PVs))
	}

	// A LocalVolume written by hand for a node that does not exist, with the
	// node finalizer as if a node had once taken it: the releaser marks it
	// Failed and drops the finalizer, so it can be deleted.
	ghost := &v1alpha1.LocalVolume{
		ObjectMeta: metav1.ObjectMeta{Name: names.VolumeID("ghost-volume"), Labels: map[string]string{k8srig.TopologyKey: "ghost"},
			Finalizers: []string{v1alpha1.Finalizer}},
		Spec: v1alpha1.LocalVolumeSpec{VolumeName: "ghost-volume", NodeName: "ghost", Pool: k8srig.PoolName, SizeBytes: k8srig.Gi},
	}
	if err := r.CL.Create(ctx, ghost); err != nil {
		t.Fatal(err)
	}
	k8srig.WaitFor(t, "the releaser to fail and release LocalVolume "+ghost.Name, k8srig.WaitLong, 100*time.Millisecond, func() (bool, string) {
		x := &v1alpha1.LocalVolume{}
		if err := r.CL.Get(ctx, client.ObjectKeyFromObject(ghost), x); err != nil {
			return false, err.Error()
		}
		ghost = x
		return x.Status.Phase == v1alpha1.PhaseFailed && len(x.Finalizers) == 0,
			fmt.Sprintf("phase %q code %q, finalizers %v", x.Status.Phase, x.Status.Code, x.Finalizers)
	})
	t.Logf("LocalVolume %s for node ghost: %s %s: %q, finalizers %v", ghost.Name, ghost.Status.Phase, ghost.Status.Code,
		ghost.Status.Message, ghost.Finalizers)
	if ghost.Status.Code != "FailedPrecondition" {
		t.Errorf("ghost LocalVolume code %q, want FailedPrecondition", ghost.Status.Code)
	}
	if err := r.CL.Delete(ctx, ghost); err != nil {
		t.Fatal(err)
	}
	k8srig.WaitFor(t, "LocalVolume "+ghost.Name+" deleted", k8srig.WaitLong, 100*time.Millisecond, func() (bool, string) {
		err := r.CL.Get(ctx, client.ObjectKeyFromObject(ghost), &v1alpha1.LocalVolume{})
		return apierrors.IsNotFound(err), fmt.Sprintf("%v", err)
	})
	// Nothing wedged: a new pod still gets its volume.
	created := r.CreatePod(t, "after-bad-input", demoSize)
	_, boundAt := r.WaitBound(t, "after-bad-input")
	r.VolumeOf(t, "after-bad-input", demoSize)
	d.pods = append(d.pods, "after-bad-input")
	t.Logf("after the bad input a new pod is bound in %s", k8srig.MS(boundAt.Sub(created)))
	r.Audit(t, "after bad input", len(d.pods))
}

// 7. Delete everything: nothing may be left.
func (d *demo) deleteEverything(t *testing.T) {
	r := d.r
	ctx := context.Background()
	start := time.Now()
	d.deleteAllPods(t)
	s := r.Audit(t, "after deleting everything", 0)
	final := r.WaitCapacityExact(t, "empty again")
	for _, n := range r.Nodes {
		if final[n.Name].Capacity != d.initial[n.Name].Capacity {
			t.Errorf("%s: capacity %d at the end, %d at the start", n.Name, final[n.Name].Capacity, d.initial[n.Name].Capacity)
		}
	}
	pvcs, err := r.CS.CoreV1().PersistentVolumeClaims(k8srig.PodNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(pvcs.Items) != 0 || s.LVCount() != 0 {
		t.Errorf("left over: %d PVCs, %d LVs", len(pvcs.Items), s.LVCount())
	}
	t.Logf("everything deleted and clean after %s", k8srig.MS(time.Since(start)))
	t.Logf("\n%s", r.CapTable("the end: capacity as at the start", final, d.initial))
}

func (d *demo) deleteAllPods(t *testing.T) {
	r := d.r
	ctx := context.Background()
	pods, err := r.CS.CoreV1().Pods(k8srig.PodNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		r.DeletePod(t, p.Name)
	}
	d.pods = nil
	k8srig.WaitFor(t, "every PVC and carve PV gone", k8srig.WaitLong, 100*time.Millisecond, func() (bool, string) {
		pvcs, err := r.CS.CoreV1().PersistentVolumeClaims(k8srig.PodNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		s, err := r.State(ctx)
		if err != nil {
			return false, err.Error()
		}
		return len(pvcs.Items) == 0 && len(s.PVs) == 0 && s.LVCount() == 0,
			fmt.Sprintf("%d PVCs, %d PVs, %d LVs", len(pvcs.Items), len(s.PVs), s.LVCount())
	})
}

// 8. Median pod -> PVC bound, carve's controller vs the node-local controller
// (external-provisioner --node-deployment beside each node's carve-csi).
func (d *demo) benchmark(t *testing.T) {
	r := d.r
	ctx := context.Background()
	const samples = 9 // 9 x 4Gi fits in 3 x 20Gi wherever the scheduler puts them
	run := func(prefix string) []time.Duration {
		var ds []time.Duration
		for i := 1; i <= samples; i++ {
			r.WaitCapacityExact(t, prefix+" sample") // every sample starts from exact capacity
			pod := fmt.Sprintf("%s-%d", prefix, i)
			created := r.CreatePod(t, pod, demoSize)
			_, boundAt := r.WaitBound(t, pod)
			ds = append(ds, boundAt.Sub(created))
		}
		return ds
	}
	central := run("bench-controller")
	r.Audit(t, "controller-mode benchmark", samples)
	d.deleteAllPods(t)
	r.Audit(t, "controller-mode benchmark cleaned up", 0)

	// Distributed mode: the central controller and its sidecars go away; one
	// provisioner per node talks to that node's carve-csi (node-local Controller).
	for _, p := range []*k8srig.Proc{r.Provisioner, r.Resizer, r.Controller} {
		p.Stop(syscall.SIGTERM)
	}
	// The central provisioner's CSIStorageCapacity objects have no owner
	// (--capacity-ownerref-level=-1): remove them as an uninstall would.
	if err := r.CS.StorageV1().CSIStorageCapacities(k8srig.CarveNS).DeleteCollection(ctx, metav1.DeleteOptions{},
		metav1.ListOptions{LabelSelector: "csi.storage.k8s.io/managed-by=external-provisioner"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range r.Nodes {
		// The node DaemonSet has no provisioner in deploy/; the controller's
		// ServiceAccount carries external-provisioner's permissions.
		p := r.NewProc("csi-provisioner-"+n.Name, true, []string{"NAMESPACE=" + k8srig.CarveNS, "NODE_NAME=" + n.Name},
			filepath.Join(r.Bin, "csi-provisioner"), append(r.ProvisionerArgs(t, n.Sock), "--node-deployment")...)
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		r.Distributed = append(r.Distributed, p)
	}
	rows := r.WaitCapacityExact(t, "distributed mode")
	for _, n := range r.Nodes {
		if rows[n.Name].ManagedBy != "external-provisioner-"+n.Name {
			t.Errorf("%s: capacity managed by %q", n.Name, rows[n.Name].ManagedBy)
		}
	}
	dist := run("bench-distributed")
	k8srig.WaitFor(t, fmt.Sprint(samples)+" LVs and PVs, no LocalVolume (node-local controller)", k8srig.WaitLong, 100*time.Millisecond, func() (bool, string) {
		s, err := r.State(ctx)
		if err != nil {
			return false, err.Error()
		}
		return s.LVCount() == samples && len(s.PVs) == samples && len(s.LVols) == 0,
			fmt.Sprintf("%d LVs, %d PVs, %d LocalVolumes", s.LVCount(), len(s.PVs), len(s.LVols))
	})
	d.deleteAllPods(t)
	r.WaitCapacityExact(t, "distributed mode cleaned up")

	sortD := func(ds []time.Duration) string {
		s := append([]time.Duration(nil), ds...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		var out []string
		for _, x := range s {
			out = append(out, k8srig.MS(x))
		}
		return strings.Join(out, " ")
	}
	mc, md := k8srig.Median(central), k8srig.Median(dist)
	t.Logf("controller mode samples:  %s", sortD(central))
	t.Logf("distributed mode samples: %s", sortD(dist))
	t.Logf("pod->PVC bound: controller mode median %s, distributed median %s, ratio %.2f",
		k8srig.MS(mc), k8srig.MS(md), float64(mc)/float64(md))
	if len(d.bound) > 0 {
		t.Logf("(demo pods in steps 2-3, controller mode: median %s over %d)", k8srig.MS(k8srig.Median(d.bound)), len(d.bound))
	}
}
