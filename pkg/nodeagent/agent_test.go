package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/pkg/volume"
)

const (
	nodeName = "node-a"
	mib      = int64(1) << 20
	gib      = int64(1) << 30
)

// counting wraps a backend and counts the calls that change devices.
type counting struct {
	backend.Backend
	creates, expands, deletes atomic.Int32
	capacities                atomic.Int32 // capacity reads: one per publish
}

func (c *counting) Capacity(ctx context.Context) (backend.Capacity, error) {
	c.capacities.Add(1)
	return c.Backend.Capacity(ctx)
}

func (c *counting) Create(ctx context.Context, r backend.CreateRequest) (*backend.Volume, error) {
	c.creates.Add(1)
	return c.Backend.Create(ctx, r)
}

func (c *counting) Expand(ctx context.Context, id string, size int64) (*backend.Volume, error) {
	c.expands.Add(1)
	return c.Backend.Expand(ctx, id, size)
}

func (c *counting) Delete(ctx context.Context, id string) error {
	c.deletes.Add(1)
	return c.Backend.Delete(ctx, id)
}

func (c *counting) calls() int32 { return c.creates.Load() + c.expands.Load() + c.deletes.Load() }

type rig struct {
	t          *testing.T
	agent      *Agent
	c          client.WithWatch
	fast, slow *backendtest.Memory // "fast" is the default pool
	fastC      *counting
	writes     atomic.Int32 // create/update/patch/delete calls through the client, status included
	statusPub  atomic.Int32 // NodeStorage status updates (publishes)
	nsReads    atomic.Int32 // NodeStorage gets (each publish reads it first)
	// beforeStatus, if set, runs before each NodeStorage status update.
	beforeStatus func()
	failStatus   atomic.Int32 // fail this many NodeStorage status updates
	// lvWrite, if set, sees every LocalVolume as the agent is about to write it.
	lvWrite func(*v1alpha1.LocalVolume)
}

// node is this node's Node object, which newRig creates.
func node(uid types.UID) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, UID: uid}}
}

func (r *rig) sawLV(o client.Object) {
	if lv, ok := o.(*v1alpha1.LocalVolume); ok && r.lvWrite != nil {
		r.lvWrite(lv)
	}
}

func newRig(t *testing.T, objs ...client.Object) *rig {
	t.Helper()
	r := &rig{t: t,
		fast: backendtest.NewMemory("fast", 10*gib, 4*mib),
		slow: backendtest.NewMemory("slow", 1*gib, 4*mib),
	}
	r.fastC = &counting{Backend: r.fast}
	vols, err := volume.NewManager([]volume.Pool{{Name: "fast", Backend: r.fastC}, {Name: "slow", Backend: r.slow}}, "fast")
	if err != nil {
		t.Fatal(err)
	}
	scheme, err := Scheme()
	if err != nil {
		t.Fatal(err)
	}
	count := func() { r.writes.Add(1) }
	r.c = fake.NewClientBuilder().WithScheme(scheme).
		WithStatusSubresource(&v1alpha1.LocalVolume{}, &v1alpha1.NodeStorage{}).
		WithObjects(append([]client.Object{node("uid-1")}, objs...)...).
		WithInterceptorFuncs(interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, o client.Object, opts ...client.GetOption) error {
				if _, ok := o.(*v1alpha1.NodeStorage); ok {
					r.nsReads.Add(1)
				}
				return c.Get(ctx, key, o, opts...)
			},
			Create: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.CreateOption) error {
				count()
				return c.Create(ctx, o, opts...)
			},
			Update: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.UpdateOption) error {
				count()
				r.sawLV(o)
				return c.Update(ctx, o, opts...)
			},
			Patch: func(ctx context.Context, c client.WithWatch, o client.Object, p client.Patch, opts ...client.PatchOption) error {
				count()
				r.sawLV(o)
				return c.Patch(ctx, o, p, opts...)
			},
			SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, o client.Object, opts ...client.SubResourceUpdateOption) error {
				count()
				if _, ok := o.(*v1alpha1.NodeStorage); ok {
					if r.beforeStatus != nil {
						r.beforeStatus()
					}
					if r.failStatus.Load() > 0 {
						r.failStatus.Add(-1)
						return apierrors.NewServiceUnavailable("injected")
					}
					defer r.statusPub.Add(1)
				}
				return c.SubResource(sub).Update(ctx, o, opts...)
			},
			SubResourcePatch: func(ctx context.Context, c client.Client, sub string, o client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
				count()
				r.sawLV(o)
				return c.SubResource(sub).Patch(ctx, o, p, opts...)
			},
		}).Build()
	r.agent = &Agent{NodeName: nodeName, Vols: vols, Locks: &keylock.Locks{}, Client: r.c}
	return r
}

func newLV(csiName string, size int64, pool string) *v1alpha1.LocalVolume {
	return &v1alpha1.LocalVolume{
		ObjectMeta: metav1.ObjectMeta{Name: names.VolumeID(csiName), Generation: 1},
		Spec:       v1alpha1.LocalVolumeSpec{VolumeName: csiName, NodeName: nodeName, Pool: pool, SizeBytes: size},
	}
}

func (r *rig) reconcile(name string) error {
	r.t.Helper()
	res, err := r.agent.Reconcile(context.Background(), reconcile.Request{NamespacedName: types.NamespacedName{Name: name}})
	if res.RequeueAfter != 0 {
		r.t.Fatalf("reconcile %s asked for a timed requeue %v; it relies on returned errors only", name, res.RequeueAfter)
	}
	return err
}

func (r *rig) mustReconcile(name string) {
	r.t.Helper()
	if err := r.reconcile(name); err != nil {
		r.t.Fatalf("reconcile %s: %v", name, err)
	}
}

func (r *rig) get(name string) *v1alpha1.LocalVolume {
	r.t.Helper()
	lv := &v1alpha1.LocalVolume{}
	if err := r.c.Get(context.Background(), types.NamespacedName{Name: name}, lv); err != nil {
		r.t.Fatalf("get LocalVolume %s: %v", name, err)
	}
	return lv
}

// bump changes the spec the way the API server does: a new generation.
func (r *rig) bump(name string, change func(*v1alpha1.LocalVolumeSpec)) {
	r.t.Helper()
	lv := r.get(name)
	change(&lv.Spec)
	lv.Generation++
	if err := r.c.Update(context.Background(), lv); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) changedSignaled() bool {
	select {
	case <-r.agent.signal():
		return true
	default:
		return false
	}
}

func hasFinalizer(lv *v1alpha1.LocalVolume) bool {
	for _, f := range lv.Finalizers {
		if f == v1alpha1.Finalizer {
			return true
		}
	}
	return false
}

func (r *rig) nodeStorage() *v1alpha1.NodeStorage {
	r.t.Helper()
	ns := &v1alpha1.NodeStorage{}
	if err := r.c.Get(context.Background(), types.NamespacedName{Name: nodeName}, ns); err != nil {
		r.t.Fatalf("get NodeStorage: %v", err)
	}
	return ns
}

// wantPool is what NodeStorage must say about a healthy pool: exactly its capacity.
func wantPool(t *testing.T, m *backendtest.Memory) v1alpha1.PoolStatus {
	t.Helper()
	c, err := m.Capacity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return v1alpha1.PoolStatus{Name: m.PoolName, Type: m.Type(), TotalBytes: c.TotalBytes, FreeBytes: c.FreeBytes,
		MaxVolumeBytes: c.MaxVolumeBytes, AlignBytes: c.AlignBytes, Healthy: true}
}

// checkPublished publishes now and compares NodeStorage with the pools.
func (r *rig) checkPublished() *v1alpha1.NodeStorage {
	r.t.Helper()
	if err := r.agent.Publish(context.Background()); err != nil {
		r.t.Fatalf("publish: %v", err)
	}
	ns := r.nodeStorage()
	want := []v1alpha1.PoolStatus{wantPool(r.t, r.fast), wantPool(r.t, r.slow)}
	if len(ns.Status.Pools) != 2 || !reflect.DeepEqual(ns.Status.Pools, want) {
		r.t.Fatalf("NodeStorage pools\n got %+v\nwant %+v", ns.Status.Pools, want)
	}
	if ns.Status.DefaultPool != "fast" || ns.Status.FreeBytes != want[0].FreeBytes || ns.Status.TotalBytes != want[0].TotalBytes {
		r.t.Fatalf("NodeStorage default pool %q free %d total %d, want fast %d %d",
			ns.Status.DefaultPool, ns.Status.FreeBytes, ns.Status.TotalBytes, want[0].FreeBytes, want[0].TotalBytes)
	}
	if ns.Status.UpdateTime.IsZero() {
		r.t.Fatal("NodeStorage has no updateTime")
	}
	return ns
}

func TestCreateReadyIdempotentAndRestart(t *testing.T) {
	lv := newLV("pvc-1", 1*gib+1, "")
	r := newRig(t, lv)
	r.checkPublished()

	r.mustReconcile(lv.Name)
	got := r.get(lv.Name)
	if !hasFinalizer(got) {
		t.Fatalf("no finalizer: %v", got.Finalizers)
	}
	dev, err := r.fast.Get(context.Background(), lv.Name)
	if err != nil {
		t.Fatalf("device not created: %v", err)
	}
	if dev.SizeBytes != 1*gib+4*mib || dev.Name != "pvc-1" {
		t.Fatalf("device %+v, want 1GiB+4MiB (aligned up) for pvc-1", dev)
	}
	want := v1alpha1.LocalVolumeStatus{Phase: v1alpha1.PhaseReady, DevicePath: dev.DevicePath, CurrentSizeBytes: dev.SizeBytes,
		ObservedGeneration: 1, Message: fmt.Sprintf("%d bytes in pool fast on node node-a", dev.SizeBytes)}
	if got.Status != want {
		t.Fatalf("status\n got %+v\nwant %+v", got.Status, want)
	}
	if ns := r.nodeStorage(); ns.Status.FreeBytes != 10*gib-dev.SizeBytes {
		t.Fatalf("NodeStorage free %d when Ready was written, want %d", ns.Status.FreeBytes, 10*gib-dev.SizeBytes)
	}
	ns := r.checkPublished()
	if ns.Status.FreeBytes != 10*gib-dev.SizeBytes {
		t.Fatalf("published free %d, want %d", ns.Status.FreeBytes, 10*gib-dev.SizeBytes)
	}

	// Again, and again after a "restart" (a new agent, same cluster and pools):
	// no write, no device call, no signal.
	rv, writes, calls := got.ResourceVersion, r.writes.Load(), r.fastC.calls()
	r.mustReconcile(lv.Name)
	restarted := &Agent{NodeName: nodeName, Vols: r.agent.Vols, Locks: &keylock.Locks{}, Client: r.c}
	if _, err := restarted.Reconcile(context.Background(), reconcile.Request{NamespacedName: types.NamespacedName{Name: lv.Name}}); err != nil {
		t.Fatal(err)
	}
	if got := r.get(lv.Name); got.ResourceVersion != rv || got.Status != want {
		t.Fatalf("repeat reconcile changed the object: rv %s -> %s, status %+v", rv, got.ResourceVersion, got.Status)
	}
	if r.writes.Load() != writes || r.fastC.calls() != calls {
		t.Fatalf("repeat reconcile wrote %d times and made %d device calls", r.writes.Load()-writes, r.fastC.calls()-calls)
	}
	if r.changedSignaled() {
		t.Fatal("Changed signaled without a change")
	}
}

func TestPermanentFailuresCreateNothing(t *testing.T) {
	tooBig := newLV("too-big", 11*gib, "")
	badPool := newLV("bad-pool", gib, "nvme")
	mismatch := newLV("theirs", gib, "")
	mismatch.Spec.VolumeName = "someone-else"
	zero := newLV("zero", 0, "")
	limit := newLV("limit", gib+1, "")
	limit.Spec.LimitBytes = gib + 2 // rounds up to gib+4MiB: above the limit
	r := newRig(t, tooBig, badPool, mismatch, zero, limit)
	before := r.checkPublished()

	for _, tc := range []struct {
		lv        *v1alpha1.LocalVolume
		code      string
		finalizer bool
	}{
		{tooBig, "ResourceExhausted", true},
		{badPool, "InvalidArgument", false},
		{mismatch, "InvalidArgument", false},
		{zero, "InvalidArgument", false},
		{limit, "OutOfRange", true},
	} {
		if err := r.reconcile(tc.lv.Name); err != nil {
			t.Fatalf("%s: a permanent failure must not requeue, got %v", tc.lv.Spec.VolumeName, err)
		}
		got := r.get(tc.lv.Name)
		if got.Status.Phase != v1alpha1.PhaseFailed || got.Status.Code != tc.code || got.Status.Message == "" ||
			got.Status.ObservedGeneration != 1 || got.Status.DevicePath != "" || got.Status.CurrentSizeBytes != 0 {
			t.Fatalf("%s: status %+v, want Failed/%s with a message", tc.lv.Spec.VolumeName, got.Status, tc.code)
		}
		if hasFinalizer(got) != tc.finalizer {
			t.Fatalf("%s: finalizers %v, want finalizer=%v", tc.lv.Spec.VolumeName, got.Finalizers, tc.finalizer)
		}
		t.Logf("%s: %s: %s", tc.lv.Spec.VolumeName, got.Status.Code, got.Status.Message)
	}
	for _, m := range []*backendtest.Memory{r.fast, r.slow} {
		if vs, _ := m.List(context.Background()); len(vs) != 0 {
			t.Fatalf("pool %s has volumes after failures: %+v", m.PoolName, vs)
		}
	}
	if r.changedSignaled() {
		t.Fatal("Changed signaled though nothing changed")
	}
	if after := r.checkPublished(); after.Status.FreeBytes != before.Status.FreeBytes {
		t.Fatalf("free %d -> %d after failures", before.Status.FreeBytes, after.Status.FreeBytes)
	}

	// Not retried at the same generation: no device call, no write.
	writes, calls := r.writes.Load(), r.fastC.calls()
	r.mustReconcile(tooBig.Name)
	r.mustReconcile(mismatch.Name)
	if r.writes.Load() != writes || r.fastC.calls() != calls {
		t.Fatalf("permanent failure retried: %d writes, %d device calls", r.writes.Load()-writes, r.fastC.calls()-calls)
	}
	// A new generation is retried: now it fits.
	r.bump(tooBig.Name, func(s *v1alpha1.LocalVolumeSpec) { s.SizeBytes = 2 * gib })
	r.mustReconcile(tooBig.Name)
	if got := r.get(tooBig.Name); got.Status.Phase != v1alpha1.PhaseReady || got.Status.CurrentSizeBytes != 2*gib ||
		got.Status.ObservedGeneration != 2 || got.Status.Code != "" {
		t.Fatalf("after a smaller spec: %+v", got.Status)
	}
}

func TestNameMismatchWithDeviceIsNeverTouched(t *testing.T) {
	// A device exists under the object's name, but the object names another
	// volume: neither create, nor adopt, nor delete.
	lv := newLV("pvc-x", gib, "")
	lv.Spec.VolumeName = "pvc-y"
	r := newRig(t, lv)
	if _, err := r.fast.Create(context.Background(), backend.CreateRequest{ID: lv.Name, Name: "pvc-x", SizeBytes: gib}); err != nil {
		t.Fatal(err)
	}
	r.mustReconcile(lv.Name)
	if got := r.get(lv.Name); got.Status.Phase != v1alpha1.PhaseFailed || got.Status.Code != "InvalidArgument" || hasFinalizer(got) {
		t.Fatalf("status %+v finalizers %v", got.Status, got.Finalizers)
	}
	if err := r.c.Delete(context.Background(), r.get(lv.Name)); err != nil {
		t.Fatal(err)
	}
	if err := r.c.Get(context.Background(), types.NamespacedName{Name: lv.Name}, &v1alpha1.LocalVolume{}); !apierrors.IsNotFound(err) {
		t.Fatalf("object without our finalizer should be gone at once: %v", err)
	}
	if _, err := r.fast.Get(context.Background(), lv.Name); err != nil {
		t.Fatalf("device touched: %v", err)
	}
}

func TestOtherNodesVolumeIgnored(t *testing.T) {
	other := newLV("pvc-other", gib, "")
	other.Spec.NodeName = "node-b"
	deleting := newLV("pvc-other-2", gib, "")
	deleting.Spec.NodeName = "node-b"
	deleting.Finalizers = []string{v1alpha1.Finalizer}
	r := newRig(t, other, deleting)
	// A device with the second one's id exists here: it must survive.
	if _, err := r.fast.Create(context.Background(), backend.CreateRequest{ID: deleting.Name, Name: "pvc-other-2", SizeBytes: gib}); err != nil {
		t.Fatal(err)
	}
	if err := r.c.Delete(context.Background(), deleting); err != nil {
		t.Fatal(err)
	}
	writes, calls := r.writes.Load(), r.fastC.calls()
	r.mustReconcile(other.Name)
	r.mustReconcile(deleting.Name)
	if got := r.get(other.Name); hasFinalizer(got) || got.Status != (v1alpha1.LocalVolumeStatus{}) {
		t.Fatalf("other node's volume touched: %+v %v", got.Status, got.Finalizers)
	}
	if got := r.get(deleting.Name); !hasFinalizer(got) || got.DeletionTimestamp.IsZero() {
		t.Fatalf("other node's finalizer removed: %+v", got.ObjectMeta)
	}
	if r.writes.Load() != writes || r.fastC.calls() != calls {
		t.Fatalf("%d writes, %d device calls for other nodes' volumes", r.writes.Load()-writes, r.fastC.calls()-calls)
	}
	if _, err := r.fast.Get(context.Background(), deleting.Name); err != nil {
		t.Fatalf("device deleted for another node's object: %v", err)
	}
	if vs, _ := r.fast.List(context.Background()); len(vs) != 1 {
		t.Fatalf("devices: %+v", vs)
	}
}

func TestExpand(t *testing.T) {
	lv := newLV("pvc-grow", gib, "slow")
	r := newRig(t, lv)
	r.mustReconcile(lv.Name)
	r.changedSignaled()
	if got := r.get(lv.Name); got.Status.Phase != v1alpha1.PhaseReady || got.Status.CurrentSizeBytes != gib {
		t.Fatalf("create: %+v", got.Status)
	}
	// The slow pool (1GiB) is full; make room by growing it, as an admin would with vgextend.
	r.slow.Total = 3 * gib
	r.bump(lv.Name, func(s *v1alpha1.LocalVolumeSpec) { s.SizeBytes = 2*gib - mib })
	r.mustReconcile(lv.Name)
	dev, err := r.slow.Get(context.Background(), lv.Name)
	if err != nil || dev.SizeBytes != 2*gib {
		t.Fatalf("device after expand: %+v %v", dev, err)
	}
	got := r.get(lv.Name)
	if got.Status.Phase != v1alpha1.PhaseReady || got.Status.CurrentSizeBytes != 2*gib || got.Status.ObservedGeneration != 2 {
		t.Fatalf("status after expand: %+v", got.Status)
	}
	if ns := r.nodeStorage(); ns.Status.Pools[1].FreeBytes != gib {
		t.Fatalf("slow pool free %d in NodeStorage when the expansion showed, want 1GiB", ns.Status.Pools[1].FreeBytes)
	}
	if ns := r.checkPublished(); ns.Status.Pools[1].FreeBytes != gib {
		t.Fatalf("slow pool free %d after expand, want 1GiB", ns.Status.Pools[1].FreeBytes)
	}

	// Expanding beyond the pool: Failed/ResourceExhausted, and the status
	// still describes the device as it is.
	r.bump(lv.Name, func(s *v1alpha1.LocalVolumeSpec) { s.SizeBytes = 4 * gib })
	if err := r.reconcile(lv.Name); err != nil {
		t.Fatal(err)
	}
	got = r.get(lv.Name)
	if got.Status.Phase != v1alpha1.PhaseFailed || got.Status.Code != "ResourceExhausted" ||
		got.Status.CurrentSizeBytes != 2*gib || got.Status.DevicePath != dev.DevicePath || got.Status.ObservedGeneration != 3 {
		t.Fatalf("status after impossible expand: %+v", got.Status)
	}
	if d, _ := r.slow.Get(context.Background(), lv.Name); d.SizeBytes != 2*gib {
		t.Fatalf("device changed by a failed expand: %+v", d)
	}
	// The controller may reset the phase to have the node try again with the same spec.
	r.slow.Total = 5 * gib
	got.Status.Phase = v1alpha1.PhasePending
	if err := r.c.Status().Update(context.Background(), got); err != nil {
		t.Fatal(err)
	}
	r.mustReconcile(lv.Name)
	if got := r.get(lv.Name); got.Status.Phase != v1alpha1.PhaseReady || got.Status.CurrentSizeBytes != 4*gib {
		t.Fatalf("retry after reset: %+v", got.Status)
	}
}

func TestDelete(t *testing.T) {
	lv := newLV("pvc-del", 3*gib, "")
	keep := newLV("pvc-keep", gib, "")
	r := newRig(t, lv, keep)
	r.mustReconcile(lv.Name)
	r.mustReconcile(keep.Name)
	r.changedSignaled()
	if ns := r.checkPublished(); ns.Status.FreeBytes != 6*gib {
		t.Fatalf("free %d, want 6GiB", ns.Status.FreeBytes)
	}
	if err := r.c.Delete(context.Background(), r.get(lv.Name)); err != nil {
		t.Fatal(err)
	}
	if got := r.get(lv.Name); got.DeletionTimestamp.IsZero() {
		t.Fatal("finalizer did not hold the object")
	}
	r.mustReconcile(lv.Name)
	if _, err := r.fast.Get(context.Background(), lv.Name); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("device still there: %v", err)
	}
	if err := r.c.Get(context.Background(), types.NamespacedName{Name: lv.Name}, &v1alpha1.LocalVolume{}); !apierrors.IsNotFound(err) {
		t.Fatalf("object not released: %v", err)
	}
	if ns := r.nodeStorage(); ns.Status.FreeBytes != 9*gib {
		t.Fatalf("NodeStorage free %d when the finalizer went, want 9GiB", ns.Status.FreeBytes)
	}
	if ns := r.checkPublished(); ns.Status.FreeBytes != 9*gib {
		t.Fatalf("free %d after delete, want 9GiB", ns.Status.FreeBytes)
	}
	if _, err := r.fast.Get(context.Background(), keep.Name); err != nil {
		t.Fatalf("other device gone: %v", err)
	}
	// Reconciling the vanished object is a no-op.
	r.mustReconcile(lv.Name)
}

func TestDeleteFailureKeepsFinalizer(t *testing.T) {
	lv := newLV("pvc-stuck", gib, "")
	r := newRig(t, lv)
	r.mustReconcile(lv.Name)
	if err := r.c.Delete(context.Background(), r.get(lv.Name)); err != nil {
		t.Fatal(err)
	}
	r.fast.FailNext = fmt.Errorf("lvremove: device busy")
	if err := r.reconcile(lv.Name); err == nil {
		t.Fatal("a failed device delete must requeue")
	}
	if got := r.get(lv.Name); !hasFinalizer(got) {
		t.Fatal("finalizer removed though the device is still there")
	}
	r.mustReconcile(lv.Name)
	if _, err := r.fast.Get(context.Background(), lv.Name); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("device still there: %v", err)
	}
}

func TestTransientFailuresRetry(t *testing.T) {
	lv := newLV("pvc-flaky", gib, "")
	r := newRig(t, lv)
	// The lookup before the create fails: Unavailable, retried.
	r.fast.FailNext = fmt.Errorf("vgs: %w", backend.ErrUnavailable)
	if err := r.reconcile(lv.Name); err == nil {
		t.Fatal("transient failure must be retried (error returned)")
	}
	if got := r.get(lv.Name); got.Status.Phase != v1alpha1.PhaseFailed || got.Status.Code != "Unavailable" {
		t.Fatalf("status %+v", got.Status)
	}
	// The create itself fails with an unknown error: Internal, retried.
	r.fast.FailNext = nil
	r.fastC.Backend = failCreate{r.fast}
	if err := r.reconcile(lv.Name); err == nil {
		t.Fatal("Internal must be retried")
	}
	if got := r.get(lv.Name); got.Status.Code != "Internal" {
		t.Fatalf("status %+v", got.Status)
	}
	r.fastC.Backend = r.fast
	r.mustReconcile(lv.Name)
	got := r.get(lv.Name)
	if got.Status.Phase != v1alpha1.PhaseReady || got.Status.Code != "" || got.Status.Message == "" {
		t.Fatalf("after recovery: %+v", got.Status)
	}
	// A Ready volume whose check hits a transient error stays Ready.
	rv := got.ResourceVersion
	r.fast.FailNext = fmt.Errorf("lvs: %w", backend.ErrUnavailable)
	if err := r.reconcile(lv.Name); err == nil {
		t.Fatal("transient failure on a Ready volume must be retried")
	}
	if got := r.get(lv.Name); got.ResourceVersion != rv || got.Status.Phase != v1alpha1.PhaseReady {
		t.Fatalf("Ready volume changed by a transient error: %+v", got.Status)
	}
}

type failCreate struct{ *backendtest.Memory }

func (f failCreate) Create(context.Context, backend.CreateRequest) (*backend.Volume, error) {
	return nil, errors.New("lvcreate: exit status 5: something odd")
}

func TestVanishedDeviceIsNotRecreated(t *testing.T) {
	lv := newLV("pvc-gone", gib, "")
	r := newRig(t, lv)
	r.mustReconcile(lv.Name)
	path := r.get(lv.Name).Status.DevicePath
	if err := r.fast.Delete(context.Background(), lv.Name); err != nil {
		t.Fatal(err)
	}
	if err := r.reconcile(lv.Name); err != nil {
		t.Fatal(err)
	}
	got := r.get(lv.Name)
	if got.Status.Phase != v1alpha1.PhaseFailed || got.Status.Code != "NotFound" || got.Status.DevicePath != path {
		t.Fatalf("status %+v", got.Status)
	}
	if _, err := r.fast.Get(context.Background(), lv.Name); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("an empty device was re-created: %v", err)
	}
	// Even a new generation does not re-create it.
	r.bump(lv.Name, func(s *v1alpha1.LocalVolumeSpec) { s.SizeBytes = 2 * gib })
	r.mustReconcile(lv.Name)
	if _, err := r.fast.Get(context.Background(), lv.Name); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("an empty device was re-created: %v", err)
	}
	// Deleting it releases the object.
	if err := r.c.Delete(context.Background(), r.get(lv.Name)); err != nil {
		t.Fatal(err)
	}
	r.mustReconcile(lv.Name)
	if err := r.c.Get(context.Background(), types.NamespacedName{Name: lv.Name}, &v1alpha1.LocalVolume{}); !apierrors.IsNotFound(err) {
		t.Fatalf("object not released: %v", err)
	}
}

func TestForeignDeviceIsAlreadyExists(t *testing.T) {
	lv := newLV("pvc-foreign", gib, "")
	r := newRig(t, lv)
	r.fast.AddForeign(lv.Name)
	if err := r.reconcile(lv.Name); err != nil {
		t.Fatal(err)
	}
	if got := r.get(lv.Name); got.Status.Phase != v1alpha1.PhaseFailed || got.Status.Code != "AlreadyExists" || got.Status.DevicePath != "" {
		t.Fatalf("status %+v", got.Status)
	}
	// Wrong pool for an existing device is AlreadyExists too.
	lv2 := newLV("pvc-pool", gib, "slow")
	if err := r.c.Create(context.Background(), lv2); err != nil {
		t.Fatal(err)
	}
	if _, err := r.fast.Create(context.Background(), backend.CreateRequest{ID: lv2.Name, Name: "pvc-pool", SizeBytes: gib}); err != nil {
		t.Fatal(err)
	}
	if err := r.reconcile(lv2.Name); err != nil {
		t.Fatal(err)
	}
	if got := r.get(lv2.Name); got.Status.Code != "AlreadyExists" {
		t.Fatalf("status %+v", got.Status)
	}
	if vs, _ := r.slow.List(context.Background()); len(vs) != 0 {
		t.Fatalf("created in slow: %+v", vs)
	}
}

func TestAdoptsExistingDevice(t *testing.T) {
	// A device made by a previous run (or the node-local CSI controller) for the
	// same volume name is adopted, not duplicated.
	lv := newLV("pvc-adopt", gib, "")
	r := newRig(t, lv)
	if _, err := r.agent.Vols.Create(context.Background(), volume.CreateRequest{Name: "pvc-adopt", Range: volume.Range{RequiredBytes: gib}}); err != nil {
		t.Fatal(err)
	}
	creates := r.fastC.creates.Load()
	r.mustReconcile(lv.Name)
	if got := r.get(lv.Name); got.Status.Phase != v1alpha1.PhaseReady || got.Status.CurrentSizeBytes != gib {
		t.Fatalf("status %+v", got.Status)
	}
	if r.fastC.creates.Load() != creates {
		t.Fatal("existing device re-created")
	}
}

func TestPublishOwnerAndUnhealthyPool(t *testing.T) {
	r := newRig(t)
	ns := r.checkPublished()
	want := metav1.OwnerReference{APIVersion: "v1", Kind: "Node", Name: nodeName, UID: "uid-1"}
	if len(ns.OwnerReferences) != 1 || ns.OwnerReferences[0] != want {
		t.Fatalf("owner references %+v, want %+v", ns.OwnerReferences, want)
	}
	// The Node is re-created with a new uid: the owner follows.
	if err := r.c.Delete(context.Background(), node("")); err != nil {
		t.Fatal(err)
	}
	if err := r.c.Create(context.Background(), node("uid-2")); err != nil {
		t.Fatal(err)
	}
	ns = r.checkPublished()
	if len(ns.OwnerReferences) != 1 || ns.OwnerReferences[0].UID != "uid-2" {
		t.Fatalf("owner references %+v, want uid-2 only", ns.OwnerReferences)
	}

	// An unreadable pool is unhealthy with no capacity; the other is exact.
	r.slow.FailNext = fmt.Errorf("vgs: volume group not found: %w", backend.ErrUnavailable)
	if err := r.agent.Publish(context.Background()); err != nil {
		t.Fatal(err)
	}
	ns = r.nodeStorage()
	slow := ns.Status.Pools[1]
	if slow.Name != "slow" || slow.Healthy || slow.Message == "" || slow.FreeBytes != 0 || slow.TotalBytes != 0 || slow.MaxVolumeBytes != 0 {
		t.Fatalf("unhealthy pool published as %+v", slow)
	}
	if !reflect.DeepEqual(ns.Status.Pools[0], wantPool(t, r.fast)) {
		t.Fatalf("healthy pool %+v", ns.Status.Pools[0])
	}
	t.Logf("unhealthy pool message: %s", slow.Message)
	// Healthy again on the next publish.
	r.checkPublished()
}

func TestRunPublishesAfterChangesAndPeriodically(t *testing.T) {
	lv := newLV("pvc-run", 2*gib, "")
	r := newRig(t, lv)
	r.agent.Debounce = 50 * time.Millisecond
	r.agent.Resync = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := r.agent.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	defer func() { cancel(); wg.Wait() }()

	waitFor(t, "first publish", func() bool { return r.statusPub.Load() == 1 })
	if ns := r.nodeStorage(); ns.Status.FreeBytes != 10*gib {
		t.Fatalf("first publish free %d", ns.Status.FreeBytes)
	}
	// The reconcile publishes the new capacity itself, before Ready.
	r.mustReconcile(lv.Name)
	waitFor(t, "publish after create", func() bool { return r.statusPub.Load() == 2 })
	if ns := r.nodeStorage(); ns.Status.FreeBytes != 8*gib {
		t.Fatalf("free after create %d, want 8GiB", ns.Status.FreeBytes)
	}
	// A burst of signals is one publish (of a change made behind the agent's back).
	if _, err := r.fast.Create(context.Background(), backend.CreateRequest{ID: "x", Name: "x", SizeBytes: gib}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		r.agent.Changed()
	}
	waitFor(t, "publish after burst", func() bool { return r.statusPub.Load() >= 3 })
	time.Sleep(300 * time.Millisecond)
	if n := r.statusPub.Load(); n != 3 {
		t.Fatalf("%d publishes after a burst of 100 signals, want 1", n-2)
	}
	// A failed publish is retried.
	if _, err := r.fast.Create(context.Background(), backend.CreateRequest{ID: "y", Name: "y", SizeBytes: gib}); err != nil {
		t.Fatal(err)
	}
	r.failStatus.Store(1)
	r.agent.Changed()
	waitFor(t, "publish retried after a failure", func() bool { return r.statusPub.Load() == 4 })
}

func TestRunResync(t *testing.T) {
	r := newRig(t)
	r.agent.Resync = 30 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.agent.Run(ctx) }()
	waitFor(t, "first publish and periodic reads", func() bool { return r.statusPub.Load() == 1 && r.nsReads.Load() >= 4 })
	// The pools change behind the agent's back (e.g. an admin's lvcreate): the next resync reports it.
	if _, err := r.fast.Create(context.Background(), backend.CreateRequest{ID: "x", Name: "x", SizeBytes: gib}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "resync sees the change", func() bool {
		ns := &v1alpha1.NodeStorage{}
		return r.c.Get(context.Background(), types.NamespacedName{Name: nodeName}, ns) == nil && ns.Status.FreeBytes == 9*gib
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// TestIdleResyncWritesNothing: a resync that finds the pools as published
// writes nothing (issue 13: every node rewrote NodeStorage each minute at idle,
// only to move updateTime); a change is still written at the next resync.
func TestIdleResyncWritesNothing(t *testing.T) {
	r := newRig(t)
	r.agent.Resync = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.agent.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "first publish", func() bool { return r.statusPub.Load() == 1 })
	first := r.nodeStorage()
	writes := r.writes.Load()
	waitFor(t, "ten resyncs", func() bool { return r.nsReads.Load() >= 11 })
	if n, w := r.statusPub.Load(), r.writes.Load(); n != 1 || w != writes {
		t.Fatalf("idle resyncs wrote: %d status updates (want 1, the first), %d writes after it (want 0)", n, w-writes)
	}
	if ns := r.nodeStorage(); ns.ResourceVersion != first.ResourceVersion {
		t.Fatalf("NodeStorage changed at idle: resourceVersion %s -> %s", first.ResourceVersion, ns.ResourceVersion)
	}
	if _, err := r.slow.Create(context.Background(), backend.CreateRequest{ID: "x", Name: "x", SizeBytes: 100 * mib}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the change written by a resync", func() bool { return r.statusPub.Load() == 2 })
	if got, want := r.nodeStorage().Status.Pools[1], wantPool(t, r.slow); !reflect.DeepEqual(got, want) {
		t.Fatalf("slow pool after the change: %+v, want %+v", got, want)
	}
}

// TestConcurrentPublishesCoalesce: calls made while a publish runs share the
// next one instead of each running its own in turn (issue 13: volumes made at
// once on a node each waited for every publish before theirs), and that one
// measures what they changed.
func TestConcurrentPublishesCoalesce(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	if err := r.agent.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	r.beforeStatus = func() { once.Do(func() { close(entered); <-release }) }
	mustCreate := func(id string) {
		if _, err := r.fast.Create(ctx, backend.CreateRequest{ID: id, Name: id, SizeBytes: gib}); err != nil {
			t.Fatal(err)
		}
	}
	mustCreate("a")
	first := make(chan error, 1)
	go func() { first <- r.agent.Publish(ctx) }()
	<-entered // the first publish is writing
	measured := r.fastC.capacities.Load()
	mustCreate("b")
	const n = 10
	errs := make(chan error, n)
	for range n {
		go func() { errs <- r.agent.Publish(ctx) }()
	}
	waitFor(t, "the callers waiting", func() bool {
		r.agent.pub.mu.Lock()
		defer r.agent.pub.mu.Unlock()
		return r.agent.pub.asked == 2+n
	})
	close(release)
	for range n + 1 {
		select {
		case err := <-first:
			if err != nil {
				t.Fatal(err)
			}
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := r.fastC.capacities.Load() - measured; got != 1 {
		t.Fatalf("%d publishes after the running one for %d callers that waited for it, want 1", got, n)
	}
	if got, want := r.nodeStorage().Status.Pools[0], wantPool(t, r.fast); !reflect.DeepEqual(got, want) {
		t.Fatalf("fast pool published %+v, want %+v (with volume b)", got, want)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestChangedNeverBlocks(t *testing.T) {
	a := &Agent{}
	done := make(chan struct{})
	go func() {
		for i := 0; i < 1000; i++ {
			a.Changed()
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Changed blocked without a running publisher")
	}
}

// Issue 12 item 6: the controller's CreateVolume, ControllerExpandVolume and
// DeleteVolume return when the node writes status or drops its finalizer, and
// external-provisioner reads capacity at that moment: NodeStorage must already
// be exact whenever the agent writes a LocalVolume.
func TestCapacityExactWhenResultShows(t *testing.T) {
	lv := newLV("pvc-cap", 1*gib, "")
	r := newRig(t, lv)
	r.checkPublished()
	var checked atomic.Int32
	r.lvWrite = func(got *v1alpha1.LocalVolume) {
		c, err := r.fast.Capacity(context.Background())
		if err != nil {
			t.Error(err)
			return
		}
		ns := r.nodeStorage()
		if ns.Status.Pools[0].FreeBytes != c.FreeBytes {
			t.Errorf("LocalVolume %s written (phase %q, size %d, finalizers %v) while NodeStorage says %d bytes free, the pool %d",
				got.Name, got.Status.Phase, got.Status.CurrentSizeBytes, got.Finalizers, ns.Status.Pools[0].FreeBytes, c.FreeBytes)
		}
		checked.Add(1)
	}
	r.mustReconcile(lv.Name) // create: finalizer, then Ready
	if got := r.get(lv.Name); got.Status.Phase != v1alpha1.PhaseReady {
		t.Fatalf("phase %q after create", got.Status.Phase)
	}
	r.bump(lv.Name, func(s *v1alpha1.LocalVolumeSpec) { s.SizeBytes = 3 * gib })
	r.mustReconcile(lv.Name) // expand: Ready with the new size
	if got := r.get(lv.Name); got.Status.CurrentSizeBytes < 3*gib {
		t.Fatalf("size %d after expand", got.Status.CurrentSizeBytes)
	}
	if err := r.c.Delete(context.Background(), r.get(lv.Name)); err != nil {
		t.Fatal(err)
	}
	r.mustReconcile(lv.Name) // delete: the finalizer goes
	if err := r.c.Get(context.Background(), types.NamespacedName{Name: lv.Name}, &v1alpha1.LocalVolume{}); !apierrors.IsNotFound(err) {
		t.Fatalf("LocalVolume after delete: %v", err)
	}
	if checked.Load() < 4 {
		t.Fatalf("only %d LocalVolume writes seen", checked.Load())
	}
}

// A failed publish holds the result back: the status is written only with
// exact capacity, on the retry.
func TestResultWaitsForPublish(t *testing.T) {
	lv := newLV("pvc-wait", 1*gib, "")
	r := newRig(t, lv)
	r.checkPublished()
	r.failStatus.Store(1)
	if err := r.reconcile(lv.Name); err == nil {
		t.Fatal("reconcile succeeded although capacity could not be published")
	}
	if got := r.get(lv.Name); got.Status.Phase == v1alpha1.PhaseReady {
		t.Fatal("Ready written before capacity was published")
	}
	r.mustReconcile(lv.Name)
	if got := r.get(lv.Name); got.Status.Phase != v1alpha1.PhaseReady || r.fastC.creates.Load() != 1 {
		t.Fatalf("phase %q, %d creates after the retry", got.Status.Phase, r.fastC.creates.Load())
	}
	r.checkPublished()
}

// Issue 12 item 7: the garbage collector removes NodeStorage with its Node;
// an agent that still runs must not re-create it (without an owner it would
// outlive the Node), nor make devices for a node that is gone.
func TestNothingPublishedOrCreatedForDeletedNode(t *testing.T) {
	lv := newLV("pvc-gone", 1*gib, "")
	r := newRig(t, lv)
	r.checkPublished()
	ctx := context.Background()
	// What the Node's deletion does: Node and (by GC) NodeStorage go.
	if err := r.c.Delete(ctx, node("")); err != nil {
		t.Fatal(err)
	}
	if err := r.c.Delete(ctx, r.nodeStorage()); err != nil {
		t.Fatal(err)
	}
	if err := r.agent.Publish(ctx); err != nil {
		t.Fatalf("publish without a Node: %v", err)
	}
	if err := r.c.Get(ctx, types.NamespacedName{Name: nodeName}, &v1alpha1.NodeStorage{}); !apierrors.IsNotFound(err) {
		t.Fatalf("NodeStorage re-created for a deleted Node: %v", err)
	}
	r.mustReconcile(lv.Name)
	got := r.get(lv.Name)
	if got.Status.Phase != v1alpha1.PhaseFailed || got.Status.Code != "FailedPrecondition" || r.fastC.creates.Load() != 0 {
		t.Fatalf("LocalVolume of a deleted node: phase %q code %q (%s), %d creates", got.Status.Phase, got.Status.Code,
			got.Status.Message, r.fastC.creates.Load())
	}
	// The Node comes back: published again, owned by the new Node.
	if err := r.c.Create(ctx, node("uid-9")); err != nil {
		t.Fatal(err)
	}
	if ns := r.checkPublished(); len(ns.OwnerReferences) != 1 || ns.OwnerReferences[0].UID != "uid-9" {
		t.Fatalf("owner references %+v", ns.OwnerReferences)
	}
}

// When the Node cannot be read, an existing NodeStorage is still updated,
// but none is created without its owner.
func TestUnreadableNodeCreatesNoNodeStorage(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	forbidden := interceptor.NewClient(r.c, interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, o client.Object, opts ...client.GetOption) error {
			if isNode(o) {
				return apierrors.NewForbidden(corev1.Resource("nodes"), key.Name, errors.New("injected"))
			}
			return c.Get(ctx, key, o, opts...)
		},
	})
	r.agent.Client = forbidden
	if err := r.agent.Publish(ctx); err == nil {
		t.Fatal("publish succeeded without a NodeStorage and without reading the Node")
	}
	if err := r.c.Get(ctx, types.NamespacedName{Name: nodeName}, &v1alpha1.NodeStorage{}); !apierrors.IsNotFound(err) {
		t.Fatalf("NodeStorage created without an owner: %v", err)
	}
	r.agent.Client = r.c
	r.checkPublished()
	r.agent.Client = forbidden
	if err := r.agent.Publish(ctx); err != nil {
		t.Fatalf("updating an existing NodeStorage without reading the Node: %v", err)
	}
}

// disked is an in-memory pool built from disks (backend.DeviceLister).
type disked struct {
	*backendtest.Memory
	devs []backend.Device
	err  error
}

func (d disked) Devices(context.Context) ([]backend.Device, error) { return d.devs, d.err }

// A pool built from disks lists them in NodeStorage, the missing one too; a
// failed device read publishes the capacity without them.
func TestPublishDevices(t *testing.T) {
	pool := disked{Memory: backendtest.NewMemory("disks", 2*gib, 4*mib), devs: []backend.Device{
		{Path: "/dev/vdb", UUID: "u1", SizeBytes: gib, FreeBytes: gib / 2},
		{Path: "[unknown]", UUID: "u2", SizeBytes: gib, FreeBytes: gib, Missing: true},
	}}
	a, c, ns := publishPools(t, "disks", volume.Pool{Name: "disks", Backend: pool}, volume.Pool{Name: "plain", Backend: backendtest.NewMemory("plain", gib, 4*mib)})
	ctx := context.Background()
	want := []v1alpha1.PoolDevice{
		{Path: "/dev/vdb", UUID: "u1", SizeBytes: gib, FreeBytes: gib / 2},
		{Path: "[unknown]", UUID: "u2", SizeBytes: gib, FreeBytes: gib, Missing: true},
	}
	if len(ns.Status.Pools) != 2 || !reflect.DeepEqual(ns.Status.Pools[0].Devices, want) || ns.Status.Pools[1].Devices != nil {
		t.Fatalf("pools %+v, want the disk pool's devices %+v and none on the plain pool", ns.Status.Pools, want)
	}
	pool.err = errors.New("pvs failed")
	vols, _ := volume.NewManager([]volume.Pool{{Name: "disks", Backend: pool}}, "disks")
	a.Vols = vols
	if err := a.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, types.NamespacedName{Name: nodeName}, ns); err != nil {
		t.Fatal(err)
	}
	if p := ns.Status.Pools[0]; p.Devices != nil || !p.Healthy || p.FreeBytes != 2*gib {
		t.Fatalf("after a failed device read: %+v, want the capacity without devices", p)
	}
}

// publishPools publishes NodeStorage for pools (def the default) through a
// fake client and returns the agent, the client and what it wrote.
func publishPools(t *testing.T, def string, pools ...volume.Pool) (*Agent, client.Client, *v1alpha1.NodeStorage) {
	t.Helper()
	vols, err := volume.NewManager(pools, def)
	if err != nil {
		t.Fatal(err)
	}
	scheme, err := Scheme()
	if err != nil {
		t.Fatal(err)
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithStatusSubresource(&v1alpha1.NodeStorage{}).WithObjects(node("uid-1")).Build()
	a := &Agent{NodeName: nodeName, Vols: vols, Locks: &keylock.Locks{}, Client: c}
	ctx := context.Background()
	if err := a.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	ns := &v1alpha1.NodeStorage{}
	if err := c.Get(ctx, types.NamespacedName{Name: nodeName}, ns); err != nil {
		t.Fatal(err)
	}
	return a, c, ns
}

// TestPublishThinUsage: a thin pool's real use goes to NodeStorage beside
// its virtual figures; an inactive pool's use is left empty, not "0.00";
// other pools have no thin status.
func TestPublishThinUsage(t *testing.T) {
	thin := backendtest.Thin{Memory: backendtest.NewMemory("thin", 4*gib, 4*mib),
		Usage: backend.ThinUsage{DataBytes: 2 * gib, DataPercent: 41.5, MetadataPercent: 12.3, Active: true, VirtualBytes: gib, Overprovision: 2.5, ThresholdPercent: 90}}
	idle := backendtest.Thin{Memory: backendtest.NewMemory("idle", 4*gib, 4*mib),
		Usage: backend.ThinUsage{DataBytes: 2 * gib, Overprovision: 1, ThresholdPercent: 80}}
	_, _, ns := publishPools(t, "thin", volume.Pool{Name: "thin", Backend: thin}, volume.Pool{Name: "idle", Backend: idle},
		volume.Pool{Name: "plain", Backend: backendtest.NewMemory("plain", gib, 4*mib)})
	want := []*v1alpha1.ThinPoolStatus{
		{DataBytes: 2 * gib, DataPercent: "41.50", MetadataPercent: "12.30", VirtualBytes: gib, Overprovision: "2.5", ThresholdPercent: 90},
		{DataBytes: 2 * gib, Overprovision: "1", ThresholdPercent: 80},
		nil,
	}
	for i, p := range ns.Status.Pools {
		if !reflect.DeepEqual(p.Thin, want[i]) {
			t.Errorf("pool %s: thin %+v, want %+v", p.Name, p.Thin, want[i])
		}
	}
}

// isNode reports whether o is a Node, typed or as metadata.
func isNode(o client.Object) bool {
	if _, ok := o.(*corev1.Node); ok {
		return true
	}
	m, ok := o.(*metav1.PartialObjectMetadata)
	return ok && m.GroupVersionKind().Kind == "Node"
}

// TestPublishTrustsItsLastWrite (issue 13): a publish starts from the
// NodeStorage it last wrote, so it costs one request (the status update) and
// no read; when someone else changed or deleted the object meanwhile, the
// write fails (Conflict, NotFound) and the publish reads and writes again.
func TestPublishTrustsItsLastWrite(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.checkPublished() // the first: reads (nothing there), creates, writes status
	grow := func(id string) {
		t.Helper()
		if _, err := r.fast.Create(ctx, backend.CreateRequest{ID: id, Name: id, SizeBytes: gib}); err != nil {
			t.Fatal(err)
		}
	}
	grow("a")
	reads, writes := r.nsReads.Load(), r.writes.Load()
	r.checkPublished()
	if got, w := r.nsReads.Load()-reads-1, r.writes.Load()-writes; got != 0 || w != 1 { // -1: checkPublished's own read
		t.Fatalf("a publish after a change made %d NodeStorage reads and %d writes, want 0 and 1 (the status)", got, w)
	}

	// Someone else updates the object (a label): the write conflicts, the publish reads and retries.
	ns := r.nodeStorage()
	ns.Labels = map[string]string{"team": "storage"}
	if err := r.c.Update(ctx, ns); err != nil {
		t.Fatal(err)
	}
	grow("b")
	reads = r.nsReads.Load()
	if got := r.checkPublished(); got.Labels["team"] != "storage" {
		t.Fatalf("the publish dropped another writer's label: %v", got.Labels)
	}
	if got := r.nsReads.Load() - reads - 1; got != 1 {
		t.Fatalf("%d NodeStorage reads after a conflict, want 1", got)
	}

	// Someone deletes it: the next publish re-creates it.
	if err := r.c.Delete(ctx, r.nodeStorage()); err != nil {
		t.Fatal(err)
	}
	grow("c")
	if ns := r.checkPublished(); len(ns.OwnerReferences) != 1 || ns.OwnerReferences[0].UID != "uid-1" {
		t.Fatalf("re-created NodeStorage owned by %+v", ns.OwnerReferences)
	}
}

// TestResyncRecreatesDeletedNodeStorage: with the pools unchanged, only the
// slow resync's read can see that the object is gone; it re-creates it.
func TestResyncRecreatesDeletedNodeStorage(t *testing.T) {
	r := newRig(t)
	r.agent.Resync = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.agent.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "first publish", func() bool { return r.statusPub.Load() == 1 })
	if err := r.c.Delete(context.Background(), r.nodeStorage()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "NodeStorage re-created by a resync", func() bool {
		ns := &v1alpha1.NodeStorage{}
		return r.c.Get(context.Background(), types.NamespacedName{Name: nodeName}, ns) == nil && len(ns.Status.Pools) == 2
	})
}

// TestNodeReadFallsBackToAPIReader: the Node comes from Client (a cache in
// NewManager's client); when Client has none, as a cache that has not seen a
// Node registered a moment ago, APIReader answers.
func TestNodeReadFallsBackToAPIReader(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	var cacheReads, apiReads atomic.Int32
	stale := interceptor.NewClient(r.c, interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, o client.Object, opts ...client.GetOption) error {
			if isNode(o) {
				cacheReads.Add(1)
				if _, typed := o.(*corev1.Node); typed {
					t.Errorf("typed Node read: NewManager's cache would start a full-object Node watch")
				}
				return apierrors.NewNotFound(corev1.Resource("nodes"), key.Name)
			}
			return c.Get(ctx, key, o, opts...)
		},
	})
	api := interceptor.NewClient(r.c, interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, o client.Object, opts ...client.GetOption) error {
			if isNode(o) {
				apiReads.Add(1)
			}
			return c.Get(ctx, key, o, opts...)
		},
	})
	r.agent.Client, r.agent.APIReader = stale, api
	if err := r.agent.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	if ns := r.nodeStorage(); len(ns.OwnerReferences) != 1 || ns.OwnerReferences[0].UID != "uid-1" {
		t.Fatalf("NodeStorage owned by %+v, want the Node uid-1 read through APIReader", ns.OwnerReferences)
	}
	if cacheReads.Load() != 1 || apiReads.Load() != 1 {
		t.Fatalf("Node reads: %d from Client, %d from APIReader; want 1 and 1", cacheReads.Load(), apiReads.Load())
	}
	// A Client that has the Node answers alone.
	r.agent.Client = r.c
	if _, err := r.agent.nodeOwner(ctx); err != nil || apiReads.Load() != 1 {
		t.Fatalf("nodeOwner: %v; APIReader asked %d times, want 1 (from before)", err, apiReads.Load())
	}
}
