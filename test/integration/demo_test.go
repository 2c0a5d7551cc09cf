package integration

import (
	"context"
	"fmt"
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

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/names"
)

const demoSize = 4 * gi // the blog post's 4Gi scratch volume

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
		{"5-expansion", d.expansion},
		{"6-bad-input", d.badInput},
		{"7-delete-everything", d.deleteEverything},
		{"8-benchmark", d.benchmark},
	}
	for _, s := range steps {
		ok := t.Run(s.name, func(t *testing.T) {
			s.fn(t)
			r.checkProcs(t)
		})
		if !ok {
			t.FailNow()
		}
	}
}

type demo struct {
	r       *rig
	initial map[string]capRow // capacity of the empty cluster
	pods    []string          // demo pods that exist, in creation order
	bound   []time.Duration   // pod creation -> PVC bound, controller mode
}

// 1. CSIStorageCapacity objects appear, one per node, each equal to the VG's free space.
func (d *demo) capacityPublished(t *testing.T) {
	r := d.r
	start := time.Now()
	d.initial = r.waitCapacityExact(t, "empty cluster")
	t.Logf("CSIStorageCapacity objects exact after %v", time.Since(start).Round(time.Millisecond))
	t.Logf("\n%s", r.kubectlCapacities(t))
	t.Logf("\n%s", r.capTable("capacity per node, empty cluster (VG FREE: vgs on the node's VG)", d.initial, nil))
	for _, n := range r.nodes {
		row := d.initial[n.name]
		if row.Capacity <= 19*gi || row.MaxVolume != row.Capacity {
			t.Errorf("%s: capacity %d, maximum volume %d; want about 20Gi, equal", n.name, row.Capacity, row.MaxVolume)
		}
	}
	// NodeStorage: the admin's view.
	var list v1alpha1.NodeStorageList
	if err := r.cl.List(context.Background(), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != nodeCount {
		t.Errorf("%d NodeStorage objects, want %d", len(list.Items), nodeCount)
	}
	t.Logf("\n$ kubectl get nodestorages\n%s", r.kubectlOut(t, "get", "nodestorages"))
}

// 2. One pod with a 4Gi generic ephemeral volume.
func (d *demo) firstPod(t *testing.T) {
	r := d.r
	before := r.waitCapacityExact(t, "before the first pod")
	created := r.createPod(t, "demo-1", demoSize)
	_, boundAt := r.waitBound(t, "demo-1")
	took := boundAt.Sub(created)
	d.bound = append(d.bound, took)
	d.pods = append(d.pods, "demo-1")
	v := r.volumeOf(t, "demo-1", demoSize)
	after := r.waitCapacityExact(t, "after the first pod")
	for _, n := range r.nodes {
		want := before[n.name].Capacity
		if n.name == v.Node {
			want -= v.LVSize
		}
		if got := after[n.name].Capacity; got != want {
			t.Errorf("%s: capacity %d after the first volume, want %d", n.name, got, want)
		}
	}
	t.Logf("pod demo-1 -> PVC %s bound in %s; scheduled to %s; PV %s; LV %s/%s %dMi",
		v.PVC, ms(took), v.Node, v.PV, r.node(v.Node).vg.Name, v.ID, v.LVSize/mi)
	t.Logf("\n%s\n%s", r.capTable("before demo-1", before, nil), r.capTable("after demo-1 (4Gi on "+v.Node+")", after, before))
	t.Logf("\n%s", r.kubectlCapacities(t))
}

// 3. Pods until one fits nowhere; it waits for "did not have enough free
// storage"; deleting a pod frees the space and the pending pod gets it.
func (d *demo) fillUntilFull(t *testing.T) {
	r := d.r
	start := r.waitCapacityExact(t, "before filling")
	fits := 0
	for _, n := range r.nodes {
		fits += int(start[n.name].MaxVolume / demoSize)
	}
	t.Logf("the VGs can hold %d more 4Gi volumes", fits)
	var pending, message string
	placed := map[string]int{}
	for i := 2; pending == ""; i++ {
		if i > fits+5 {
			t.Fatalf("%d pods created; the cluster should have been full after %d", i-1, fits+1)
		}
		pod := fmt.Sprintf("demo-%d", i)
		created := r.createPod(t, pod, demoSize)
		waitFor(t, "pod "+pod+" bound or unschedulable for storage", waitLong, 20*time.Millisecond, func() (bool, string) {
			pvc, err := r.cs.CoreV1().PersistentVolumeClaims(podNS).Get(context.Background(), claimOf(pod), metav1.GetOptions{})
			if err == nil && pvc.Status.Phase == corev1.ClaimBound {
				took := time.Since(created)
				d.bound = append(d.bound, took)
				d.pods = append(d.pods, pod)
				return true, ""
			}
			if msg, ok := r.unschedulableForStorage(pod); ok {
				pending, message = pod, msg
				return true, ""
			}
			return false, r.podState(pod)
		})
		if pending != "" {
			break
		}
		v := r.volumeOf(t, pod, demoSize)
		placed[v.Node]++
		// Exact after every create (and the scheduler's view is current for the next pod).
		r.waitCapacityExact(t, "after "+pod)
	}
	full := r.waitCapacityExact(t, "full")
	for _, n := range r.nodes {
		if full[n.name].MaxVolume >= demoSize {
			t.Errorf("%s still has room for 4Gi (%d) yet %s was unschedulable: %s", n.name, full[n.name].MaxVolume, pending, message)
		}
	}
	if len(d.pods)-1 != fits {
		t.Errorf("%d more pods fit, want %d", len(d.pods)-1, fits)
	}
	t.Logf("%d pods bound (per node %v); %s is Pending: %q", len(d.pods), placed, pending, message)
	for _, e := range r.events(podNS, "Pod", pending) {
		if e.Reason == "FailedScheduling" && strings.Contains(e.Message, "did not have enough free storage") {
			t.Logf("event on pod %s: %s %s: %s", pending, e.Type, e.Reason, e.Message)
			break
		}
	}
	t.Logf("\n%s", r.capTable("cluster full", full, d.initial))
	t.Logf("\n$ kubectl get localvolumes -o wide\n%s", r.kubectlOut(t, "get", "localvolumes", "-o", "wide"))
	t.Logf("\n$ kubectl get nodestorages\n%s", r.kubectlOut(t, "get", "nodestorages"))

	// Delete the first pod: its PVC goes with it (owner reference, garbage
	// collector), the PV is deleted, the LV removed, the capacity returns and
	// the pending pod takes the space.
	victim := r.volumeOf(t, d.pods[0], demoSize)
	deleted := r.deletePod(t, victim.Pod)
	d.pods = d.pods[1:]
	waitFor(t, "LV "+victim.ID+" removed from "+victim.Node, waitLong, 50*time.Millisecond, func() (bool, string) {
		lvs, err := r.node(victim.Node).lvs(context.Background())
		if err != nil {
			return false, err.Error()
		}
		_, still := lvs[victim.ID]
		return !still, fmt.Sprintf("LVs on %s: %v", victim.Node, lvs)
	})
	lvGone := time.Since(deleted)
	_, boundAt := r.waitBound(t, pending)
	v := r.volumeOf(t, pending, demoSize)
	d.pods = append(d.pods, pending)
	if v.Node != victim.Node {
		t.Errorf("pending pod %s went to %s; the freed space is on %s", pending, v.Node, victim.Node)
	}
	after := r.waitCapacityExact(t, "after the swap")
	t.Logf("deleted %s on %s: LV gone after %s; pending %s scheduled to %s and bound %s after the delete",
		victim.Pod, victim.Node, ms(lvGone), pending, v.Node, ms(boundAt.Sub(deleted)))
	t.Logf("\n%s", r.capTable("after deleting "+victim.Pod+" and binding "+pending, after, d.initial))
	r.audit(t, "after step 3", len(d.pods))
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
		v := r.volumeOf(t, pod, demoSize)
		if _, ok := keep[v.Node]; ok {
			drop = append(drop, pod)
		} else {
			keep[v.Node] = pod
		}
	}
	deleted := time.Now()
	for _, pod := range drop {
		r.deletePod(t, pod)
	}
	d.pods = nil
	for _, n := range r.nodes {
		if p, ok := keep[n.name]; ok {
			d.pods = append(d.pods, p)
		}
	}
	r.audit(t, fmt.Sprintf("after deleting %d pods at once", len(drop)), len(d.pods))
	t.Logf("%d pods deleted at once, everything consistent after %s", len(drop), ms(time.Since(deleted)))

	known := map[string]bool{}
	var list v1alpha1.LocalVolumeList
	if err := r.cl.List(ctx, &list); err != nil {
		t.Fatal(err)
	}
	for _, lv := range list.Items {
		known[lv.Name] = true
	}
	for _, n := range r.nodes {
		if err := n.proc.signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}
	paused := true
	resume := func() {
		if paused {
			for _, n := range r.nodes {
				_ = n.proc.signal(syscall.SIGCONT)
			}
			paused = false
		}
	}
	defer resume()
	provStarts := r.provisioner.startCount()
	created := r.createPod(t, "crash-create", demoSize)
	var lv v1alpha1.LocalVolume
	waitFor(t, "the controller's LocalVolume for crash-create", waitLong, 20*time.Millisecond, func() (bool, string) {
		var list v1alpha1.LocalVolumeList
		if err := r.cl.List(ctx, &list); err != nil {
			return false, err.Error()
		}
		for _, x := range list.Items {
			if !known[x.Name] {
				lv = x
				return true, ""
			}
		}
		return false, r.podState("crash-create")
	})
	r.controller.stop(syscall.SIGKILL)
	killed := time.Now()
	pvc, err := r.cs.CoreV1().PersistentVolumeClaims(podNS).Get(ctx, claimOf("crash-create"), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pvc.Status.Phase == corev1.ClaimBound {
		t.Fatalf("PVC bound before the controller was killed: the crash missed the window")
	}
	t.Logf("LocalVolume %s (node %s, phase %q) appeared %s after the pod; SIGKILLed the controller; PVC %s",
		lv.Name, lv.Spec.NodeName, lv.Status.Phase, ms(killed.Sub(created)), pvc.Status.Phase)

	// The node acts while the controller is down.
	resume()
	waitFor(t, "LocalVolume "+lv.Name+" Ready with the controller down", waitLong, 50*time.Millisecond, func() (bool, string) {
		x := &v1alpha1.LocalVolume{}
		if err := r.cl.Get(ctx, client.ObjectKey{Name: lv.Name}, x); err != nil {
			return false, err.Error()
		}
		return x.Status.Phase == v1alpha1.PhaseReady, fmt.Sprintf("phase %q %s", x.Status.Phase, x.Status.Message)
	})
	// The sidecars exit when they lose the CSI connection and are restarted
	// like containers (counted below).
	r.startAndWait(t, r.controller, r.ctrlSock)
	restarted := time.Now()
	_, boundAt := r.waitBound(t, "crash-create")
	v := r.volumeOf(t, "crash-create", demoSize)
	d.pods = append(d.pods, "crash-create")
	if v.ID != lv.Name {
		t.Errorf("PV %s uses volume %s, the LocalVolume made before the crash was %s", v.PV, v.ID, lv.Name)
	}
	// Exactly once: one LocalVolume and one LV for this PV.
	s := r.audit(t, "after the controller crash", len(d.pods))
	n := 0
	for _, x := range s.lvols {
		if x.Spec.VolumeName == v.PV {
			n++
		}
	}
	lvCount := 0
	for _, lvs := range s.lvs {
		if _, ok := lvs[v.ID]; ok {
			lvCount++
		}
	}
	if n != 1 || lvCount != 1 {
		t.Errorf("volume %s: %d LocalVolumes, %d LVs; want exactly one of each", v.PV, n, lvCount)
	}
	t.Logf("controller restarted %s after the kill; PVC bound %s after the restart (%s after the pod); provisioner restarted %d time(s); volume %s created exactly once on %s",
		ms(restarted.Sub(killed)), ms(boundAt.Sub(restarted)), ms(boundAt.Sub(created)), r.provisioner.startCount()-provStarts, v.ID, v.Node)
}

// 4b. SIGKILL a node while its LocalVolume waits for it with a deletion
// timestamp (the node is paused so that the window is certain); restart it.
func (d *demo) nodeCrash(t *testing.T) {
	r := d.r
	ctx := context.Background()
	v := r.volumeOf(t, "crash-create", demoSize)
	n := r.node(v.Node)
	before := r.waitCapacityExact(t, "before the node crash")
	if err := n.proc.signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			_ = n.proc.signal(syscall.SIGCONT)
		}
	}()
	deleted := r.deletePod(t, "crash-create")
	d.pods = remove(d.pods, "crash-create")
	var lv v1alpha1.LocalVolume
	waitFor(t, "LocalVolume "+v.ID+" with a deletion timestamp", waitLong, 20*time.Millisecond, func() (bool, string) {
		if err := r.cl.Get(ctx, client.ObjectKey{Name: v.ID}, &lv); err != nil {
			return false, err.Error()
		}
		return lv.DeletionTimestamp != nil, fmt.Sprintf("finalizers %v, phase %s", lv.Finalizers, lv.Status.Phase)
	})
	lvs, err := n.lvs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := lvs[v.ID]; !ok {
		t.Fatalf("LV %s is gone although its node was paused", v.ID)
	}
	n.proc.stop(syscall.SIGKILL)
	stopped = false
	killed := time.Now()
	t.Logf("LocalVolume %s being deleted %s after the pod delete (finalizers %v), LV still on %s; SIGKILLed %s",
		v.ID, ms(killed.Sub(deleted)), lv.Finalizers, n.name, n.name)
	r.startAndWait(t, n.proc, n.sock)
	restarted := time.Now()
	waitFor(t, "LocalVolume, LV, PV and PVC of crash-create gone", waitLong, 50*time.Millisecond, func() (bool, string) {
		var left []string
		if err := r.cl.Get(ctx, client.ObjectKey{Name: v.ID}, &v1alpha1.LocalVolume{}); !apierrors.IsNotFound(err) {
			left = append(left, fmt.Sprintf("LocalVolume (%v)", err))
		}
		if lvs, err := n.lvs(ctx); err != nil || lvs[v.ID] != 0 {
			left = append(left, fmt.Sprintf("LV (%v)", err))
		}
		if _, err := r.cs.CoreV1().PersistentVolumes().Get(ctx, v.PV, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			left = append(left, fmt.Sprintf("PV (%v)", err))
		}
		if _, err := r.cs.CoreV1().PersistentVolumeClaims(podNS).Get(ctx, v.PVC, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			left = append(left, fmt.Sprintf("PVC (%v)", err))
		}
		return len(left) == 0, "left: " + strings.Join(left, ", ")
	})
	gone := time.Now()
	r.audit(t, "after the node crash", len(d.pods))
	after := r.waitCapacityExact(t, "after the node crash")
	if got, want := after[n.name].Capacity, before[n.name].Capacity+v.LVSize; got != want {
		t.Errorf("%s: capacity %d after the delete, want %d", n.name, got, want)
	}
	t.Logf("%s restarted; LocalVolume, LV, PV and PVC gone %s after the restart (%s after the pod delete)",
		n.name, ms(gone.Sub(restarted)), ms(gone.Sub(deleted)))
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
	v := r.volumeOf(t, d.pods[0], demoSize)
	before := r.waitCapacityExact(t, "before expansion")
	const newSize = 6 * gi
	patch := fmt.Sprintf(`{"spec":{"resources":{"requests":{"storage":"%d"}}}}`, newSize)
	start := time.Now()
	if _, err := r.cs.CoreV1().PersistentVolumeClaims(podNS).Patch(ctx, v.PVC, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("patch PVC %s: %v", v.PVC, err)
	}
	n := r.node(v.Node)
	waitFor(t, "LV "+v.ID+" and PV "+v.PV+" at 6Gi", waitLong, 50*time.Millisecond, func() (bool, string) {
		lvs, err := n.lvs(ctx)
		if err != nil {
			return false, err.Error()
		}
		pv, err := r.cs.CoreV1().PersistentVolumes().Get(ctx, v.PV, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		q := pv.Spec.Capacity[corev1.ResourceStorage]
		return lvs[v.ID] == newSize && q.Value() == newSize, fmt.Sprintf("LV %d, PV %s", lvs[v.ID], q.String())
	})
	took := time.Since(start)
	after := r.waitCapacityExact(t, "after expansion")
	if got, want := after[n.name].Capacity, before[n.name].Capacity-(newSize-demoSize); got != want {
		t.Errorf("%s: capacity %d after expanding by 2Gi, want %d", n.name, got, want)
	}
	for _, o := range r.nodes {
		if o != n && after[o.name].Capacity != before[o.name].Capacity {
			t.Errorf("%s: capacity changed by an expansion on %s", o.name, n.name)
		}
	}
	lv := &v1alpha1.LocalVolume{}
	if err := r.cl.Get(ctx, client.ObjectKey{Name: v.ID}, lv); err != nil {
		t.Fatal(err)
	}
	if lv.Spec.SizeBytes != newSize || lv.Status.CurrentSizeBytes != newSize {
		t.Errorf("LocalVolume %s: spec %d, status %d; want %d", lv.Name, lv.Spec.SizeBytes, lv.Status.CurrentSizeBytes, newSize)
	}
	pvc, err := r.cs.CoreV1().PersistentVolumeClaims(podNS).Get(ctx, v.PVC, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var conds []string
	for _, c := range pvc.Status.Conditions {
		conds = append(conds, string(c.Type))
	}
	pvcCap := pvc.Status.Capacity[corev1.ResourceStorage]
	t.Logf("PVC %s 4Gi -> 6Gi: LV %s/%s and PV at 6Gi after %s; PVC status capacity %s, conditions %v (no kubelet: no node expansion)",
		v.PVC, n.vg.Name, v.ID, ms(took), pvcCap.String(), conds)
	t.Logf("\n%s", r.capTable("after expanding "+v.PVC+" on "+n.name, after, before))
	r.audit(t, "after expansion", len(d.pods))
}

// 6. Bad input: a pool that exists nowhere, a size no node can hold, a
// LocalVolume by hand for a node that does not exist.
func (d *demo) badInput(t *testing.T) {
	r := d.r
	ctx := context.Background()
	before, err := r.state(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		class, pool, claim string
		size               int64
		code, text         string
	}{
		{"carve-nope", "nope", "bad-pool", gi, "InvalidArgument", "nope"},
		{"carve-lvm-immediate", poolName, "too-big", 100 * gi, "ResourceExhausted", "no node"},
	}
	for _, c := range cases {
		// Immediate binding: provisioning starts without a pod, so the error
		// reaches the PVC (with WaitForFirstConsumer the scheduler would keep
		// the pod Pending for lack of capacity, which step 3 shows).
		sc := storageClass(c.class, c.pool, storagev1.VolumeBindingImmediate)
		if _, err := r.cs.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		pvc := &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: c.claim, Namespace: podNS},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				StorageClassName: &c.class,
				Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceStorage: *resource.NewQuantity(c.size, resource.BinarySI)}},
			},
		}
		if _, err := r.cs.CoreV1().PersistentVolumeClaims(podNS).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var event corev1.Event
		waitFor(t, "ProvisioningFailed on PVC "+c.claim, waitLong, 100*time.Millisecond, func() (bool, string) {
			var seen []string
			for _, e := range r.events(podNS, "PersistentVolumeClaim", c.claim) {
				seen = append(seen, e.Reason+": "+e.Message)
				if e.Reason == "ProvisioningFailed" && strings.Contains(e.Message, c.code) && strings.Contains(e.Message, c.text) {
					event = e
					return true, ""
				}
			}
			return false, strings.Join(seen, " | ")
		})
		got, err := r.cs.CoreV1().PersistentVolumeClaims(podNS).Get(ctx, c.claim, metav1.GetOptions{})
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
		t.Logf("PVC %s (class %s, pool %s, %dGi): %s %s from %s: %s", c.claim, c.class, c.pool, c.size/gi,
			event.Type, event.Reason, from, event.Message)
		if err := r.cs.CoreV1().PersistentVolumeClaims(podNS).Delete(ctx, c.claim, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := r.cs.StorageV1().StorageClasses().Delete(ctx, c.class, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	after, err := r.state(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.lvCount() != before.lvCount() || len(after.lvols) != len(before.lvols) || len(after.pvs) != len(before.pvs) {
		t.Errorf("bad input created something: LVs %d -> %d, LocalVolumes %d -> %d, PVs %d -> %d",
			before.lvCount(), after.lvCount(), len(before.lvols), len(after.lvols), len(before.pvs), len(after.pvs))
	}

	// A LocalVolume written by hand for a node that does not exist, with the
	// node finalizer as if a node had once taken it: the releaser marks it
	// Failed and drops the finalizer, so it can be deleted.
	ghost := &v1alpha1.LocalVolume{
		ObjectMeta: metav1.ObjectMeta{Name: names.VolumeID("ghost-volume"), Labels: map[string]string{topologyKey: "ghost"},
			Finalizers: []string{v1alpha1.Finalizer}},
		Spec: v1alpha1.LocalVolumeSpec{VolumeName: "ghost-volume", NodeName: "ghost", Pool: poolName, SizeBytes: gi},
	}
	if err := r.cl.Create(ctx, ghost); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the releaser to fail and release LocalVolume "+ghost.Name, waitLong, 100*time.Millisecond, func() (bool, string) {
		x := &v1alpha1.LocalVolume{}
		if err := r.cl.Get(ctx, client.ObjectKeyFromObject(ghost), x); err != nil {
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
	if err := r.cl.Delete(ctx, ghost); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "LocalVolume "+ghost.Name+" deleted", waitLong, 100*time.Millisecond, func() (bool, string) {
		err := r.cl.Get(ctx, client.ObjectKeyFromObject(ghost), &v1alpha1.LocalVolume{})
		return apierrors.IsNotFound(err), fmt.Sprintf("%v", err)
	})
	// Nothing wedged: a new pod still gets its volume.
	created := r.createPod(t, "after-bad-input", demoSize)
	_, boundAt := r.waitBound(t, "after-bad-input")
	r.volumeOf(t, "after-bad-input", demoSize)
	d.pods = append(d.pods, "after-bad-input")
	t.Logf("after the bad input a new pod is bound in %s", ms(boundAt.Sub(created)))
	r.audit(t, "after bad input", len(d.pods))
}

// 7. Delete everything: nothing may be left.
func (d *demo) deleteEverything(t *testing.T) {
	r := d.r
	ctx := context.Background()
	start := time.Now()
	d.deleteAllPods(t)
	s := r.audit(t, "after deleting everything", 0)
	final := r.waitCapacityExact(t, "empty again")
	for _, n := range r.nodes {
		if final[n.name].Capacity != d.initial[n.name].Capacity {
			t.Errorf("%s: capacity %d at the end, %d at the start", n.name, final[n.name].Capacity, d.initial[n.name].Capacity)
		}
	}
	pvcs, err := r.cs.CoreV1().PersistentVolumeClaims(podNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(pvcs.Items) != 0 || s.lvCount() != 0 {
		t.Errorf("left over: %d PVCs, %d LVs", len(pvcs.Items), s.lvCount())
	}
	t.Logf("everything deleted and clean after %s", ms(time.Since(start)))
	t.Logf("\n%s", r.capTable("the end: capacity as at the start", final, d.initial))
}

func (d *demo) deleteAllPods(t *testing.T) {
	r := d.r
	ctx := context.Background()
	pods, err := r.cs.CoreV1().Pods(podNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		r.deletePod(t, p.Name)
	}
	d.pods = nil
	waitFor(t, "every PVC and carve PV gone", waitLong, 100*time.Millisecond, func() (bool, string) {
		pvcs, err := r.cs.CoreV1().PersistentVolumeClaims(podNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		s, err := r.state(ctx)
		if err != nil {
			return false, err.Error()
		}
		return len(pvcs.Items) == 0 && len(s.pvs) == 0 && s.lvCount() == 0,
			fmt.Sprintf("%d PVCs, %d PVs, %d LVs", len(pvcs.Items), len(s.pvs), s.lvCount())
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
			r.waitCapacityExact(t, prefix+" sample") // every sample starts from exact capacity
			pod := fmt.Sprintf("%s-%d", prefix, i)
			created := r.createPod(t, pod, demoSize)
			_, boundAt := r.waitBound(t, pod)
			ds = append(ds, boundAt.Sub(created))
		}
		return ds
	}
	central := run("bench-controller")
	r.audit(t, "controller-mode benchmark", samples)
	d.deleteAllPods(t)
	r.audit(t, "controller-mode benchmark cleaned up", 0)

	// Distributed mode: the central controller and its sidecars go away; one
	// provisioner per node talks to that node's carve-csi (node-local Controller).
	for _, p := range []*proc{r.provisioner, r.resizer, r.controller} {
		p.stop(syscall.SIGTERM)
	}
	// The central provisioner's CSIStorageCapacity objects have no owner
	// (--capacity-ownerref-level=-1): remove them as an uninstall would.
	if err := r.cs.StorageV1().CSIStorageCapacities(carveNS).DeleteCollection(ctx, metav1.DeleteOptions{},
		metav1.ListOptions{LabelSelector: "csi.storage.k8s.io/managed-by=external-provisioner"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range r.nodes {
		// The node DaemonSet has no provisioner in deploy/; the controller's
		// ServiceAccount carries external-provisioner's permissions.
		p := r.newProc("csi-provisioner-"+n.name, true, []string{"NAMESPACE=" + carveNS, "NODE_NAME=" + n.name},
			filepath.Join(r.bin, "csi-provisioner"), append(r.provisionerArgs(n.sock), "--node-deployment")...)
		if err := p.start(); err != nil {
			t.Fatal(err)
		}
		r.distributed = append(r.distributed, p)
	}
	rows := r.waitCapacityExact(t, "distributed mode")
	for _, n := range r.nodes {
		if rows[n.name].ManagedBy != "external-provisioner-"+n.name {
			t.Errorf("%s: capacity managed by %q", n.name, rows[n.name].ManagedBy)
		}
	}
	dist := run("bench-distributed")
	waitFor(t, fmt.Sprint(samples)+" LVs and PVs, no LocalVolume (node-local controller)", waitLong, 100*time.Millisecond, func() (bool, string) {
		s, err := r.state(ctx)
		if err != nil {
			return false, err.Error()
		}
		return s.lvCount() == samples && len(s.pvs) == samples && len(s.lvols) == 0,
			fmt.Sprintf("%d LVs, %d PVs, %d LocalVolumes", s.lvCount(), len(s.pvs), len(s.lvols))
	})
	d.deleteAllPods(t)
	r.waitCapacityExact(t, "distributed mode cleaned up")

	sortD := func(ds []time.Duration) string {
		s := append([]time.Duration(nil), ds...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		var out []string
		for _, x := range s {
			out = append(out, ms(x))
		}
		return strings.Join(out, " ")
	}
	mc, md := median(central), median(dist)
	t.Logf("controller mode samples:  %s", sortD(central))
	t.Logf("distributed mode samples: %s", sortD(dist))
	t.Logf("pod->PVC bound: controller mode median %s, distributed median %s, ratio %.2f",
		ms(mc), ms(md), float64(mc)/float64(md))
	if len(d.bound) > 0 {
		t.Logf("(demo pods in steps 2-3, controller mode: median %s over %d)", ms(median(d.bound)), len(d.bound))
	}
}
