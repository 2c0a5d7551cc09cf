package cluster

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/pkg/volume"
)

const gib = int64(1) << 30

func nodeStorage(name string, free int64) *v1alpha1.NodeStorage {
	return &v1alpha1.NodeStorage{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: v1alpha1.NodeStorageStatus{
		DefaultPool: "fast",
		Pools:       []v1alpha1.PoolStatus{{Name: "fast", Type: "lvm", TotalBytes: 10 * gib, FreeBytes: free, MaxVolumeBytes: free, Healthy: true}},
	}}
}

// newClient holds objs and, for each NodeStorage among them, its Node (as a
// live node has); newClientOnly holds objs only.
func newClient(t *testing.T, objs ...client.Object) client.Client {
	t.Helper()
	for _, o := range objs {
		if ns, ok := o.(*v1alpha1.NodeStorage); ok {
			objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: ns.Name}})
		}
	}
	return newClientOnly(t, objs...)
}

func newClientOnly(t *testing.T, objs ...client.Object) client.WithWatch {
	t.Helper()
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return fake.NewClientBuilder().WithScheme(s).WithObjects(objs...).
		WithStatusSubresource(&v1alpha1.LocalVolume{}, &v1alpha1.LocalSnapshot{}, &v1alpha1.NodeStorage{}).
		WithInterceptorFuncs(interceptor.Funcs{Patch: bumpGeneration}).Build()
}

// bumpGeneration raises a LocalVolume's generation when a patch changes its
// spec, as the API server does and the fake client does not: the controller
// and the nodes tell an old status from a new one by it.
func bumpGeneration(ctx context.Context, c client.WithWatch, o client.Object, p client.Patch, opts ...client.PatchOption) error {
	lv, ok := o.(*v1alpha1.LocalVolume)
	if !ok {
		return c.Patch(ctx, o, p, opts...)
	}
	before := &v1alpha1.LocalVolume{}
	if err := c.Get(ctx, client.ObjectKeyFromObject(lv), before); err != nil {
		return err
	}
	if err := c.Patch(ctx, lv, p, opts...); err != nil {
		return err
	}
	if lv.Spec == before.Spec {
		return nil
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := c.Get(ctx, client.ObjectKeyFromObject(lv), lv); err != nil {
			return err
		}
		lv.Generation = before.Generation + 1
		return c.Update(ctx, lv)
	})
}

// fakeNodes plays the node agents: Ready when the pool has room, Failed otherwise;
// devices are removed (finalizer dropped) on deletion.
func fakeNodes(ctx context.Context, c client.Client, free map[string]int64, mu *sync.Mutex) {
	for ctx.Err() == nil {
		var list v1alpha1.LocalVolumeList
		_ = c.List(ctx, &list)
		for i := range list.Items {
			lv := &list.Items[i]
			if lv.Status.Phase != "" && lv.Status.ObservedGeneration >= lv.Generation && lv.Status.CurrentSizeBytes >= lv.Spec.SizeBytes {
				continue
			}
			mu.Lock()
			if lv.Spec.SizeBytes-lv.Status.CurrentSizeBytes <= free[lv.Spec.NodeName] {
				free[lv.Spec.NodeName] -= lv.Spec.SizeBytes - lv.Status.CurrentSizeBytes
				lv.Status = v1alpha1.LocalVolumeStatus{Phase: v1alpha1.PhaseReady, CurrentSizeBytes: lv.Spec.SizeBytes, ObservedGeneration: lv.Generation}
			} else {
				// As the node agent: a failed expansion reports the device's size.
				lv.Status = v1alpha1.LocalVolumeStatus{Phase: v1alpha1.PhaseFailed, Code: "ResourceExhausted", Message: "insufficient free space",
					CurrentSizeBytes: lv.Status.CurrentSizeBytes, ObservedGeneration: lv.Generation}
			}
			mu.Unlock()
			_ = c.Status().Update(ctx, lv)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCreatePlacesOnPreferredNodeWithRoomAndIsIdempotent(t *testing.T) {
	c := newClient(t, nodeStorage("n1", 1*gib), nodeStorage("n2", 8*gib), nodeStorage("n3", 8*gib))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var mu sync.Mutex
	go fakeNodes(ctx, c, map[string]int64{"n1": gib, "n2": 8 * gib, "n3": 8 * gib}, &mu)
	v := &Volumes{Client: c, Poll: 5 * time.Millisecond}
	req := CreateRequest{Name: "pvc-1", Range: volume.Range{RequiredBytes: 4 * gib},
		Preferred: []string{"n1", "n3"}, Requisite: []string{"n1", "n2", "n3"}}
	lv, err := v.Create(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	// n1 is preferred but has no room; n3 is the next preferred.
	if lv.Name != names.VolumeID("pvc-1") || lv.Spec.NodeName != "n3" || lv.Status.Phase != v1alpha1.PhaseReady || lv.Labels[NodeLabel] != "n3" {
		t.Fatalf("placed %+v", lv)
	}
	again, err := v.Create(ctx, req)
	if err != nil || again.Spec.NodeName != "n3" {
		t.Fatalf("retry: %v, %v", again, err)
	}
	req.Range.RequiredBytes = 6 * gib
	if _, err := v.Create(ctx, req); !errors.Is(err, volume.ErrIncompatible) {
		t.Fatalf("incompatible retry: %v", err)
	}
	var list v1alpha1.LocalVolumeList
	if err := c.List(ctx, &list); err != nil || len(list.Items) != 1 {
		t.Fatalf("%d LocalVolumes, want 1 (%v)", len(list.Items), err)
	}
}

func TestCreateErrors(t *testing.T) {
	c := newClient(t, nodeStorage("n1", gib), nodeStorage("n2", 2*gib),
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n3"}}) // carve-node not up on n3 yet
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var mu sync.Mutex
	// The node's real free space is smaller than published: it fails the request.
	go fakeNodes(ctx, c, map[string]int64{"n1": gib, "n2": gib}, &mu)
	v := &Volumes{Client: c, Poll: 5 * time.Millisecond}
	if _, err := v.Create(ctx, CreateRequest{Name: "big", Range: volume.Range{RequiredBytes: 3 * gib}}); !errors.Is(err, ErrNoRoom) {
		t.Fatalf("no room anywhere: %v", err)
	}
	if _, err := v.Create(ctx, CreateRequest{Name: "x", Pool: "gold", Range: volume.Range{RequiredBytes: gib}}); !errors.Is(err, ErrNoPool) {
		t.Fatalf("unknown pool: %v", err)
	}
	if _, err := v.Create(ctx, CreateRequest{Name: "x", Requisite: []string{"n9"}}); !errors.Is(err, ErrNoPool) {
		t.Fatalf("topology without carve nodes: %v", err)
	}
	// A Node whose NodeStorage is not there (yet): retryable, not ErrNoPool.
	if _, err := v.Create(ctx, CreateRequest{Name: "x", Requisite: []string{"n3"}}); !errors.Is(err, ErrNotPublished) || errors.Is(err, ErrNoPool) {
		t.Fatalf("topology of a node that publishes no storage yet: %v, want ErrNotPublished", err)
	}
	_, err := v.Create(ctx, CreateRequest{Name: "stale", Range: volume.Range{RequiredBytes: 2 * gib}, Requisite: []string{"n2"}})
	var nf *NodeFailure
	if !errors.As(err, &nf) || nf.Code != "ResourceExhausted" || nf.Node != "n2" {
		t.Fatalf("node failure: %v", err)
	}
	// The failed attempt is removed so that a retry can place it again.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var list v1alpha1.LocalVolumeList
		if err := c.List(ctx, &list); err != nil {
			t.Fatal(err)
		}
		if len(list.Items) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("failed LocalVolume left: %v", list.Items[0].Name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDeleteExpandCapacity(t *testing.T) {
	c := newClient(t, nodeStorage("n1", 5*gib), nodeStorage("n2", 3*gib))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var mu sync.Mutex
	go fakeNodes(ctx, c, map[string]int64{"n1": 5 * gib, "n2": 3 * gib}, &mu)
	v := &Volumes{Client: c, Poll: 5 * time.Millisecond}
	lv, err := v.Create(ctx, CreateRequest{Name: "pvc", Range: volume.Range{RequiredBytes: gib}, Requisite: []string{"n1"}})
	if err != nil {
		t.Fatal(err)
	}
	grown, err := v.Expand(ctx, lv.Name, volume.Range{RequiredBytes: 2 * gib})
	if err != nil || grown.Status.CurrentSizeBytes != 2*gib || grown.Spec.SizeBytes != 2*gib {
		t.Fatalf("expand: %+v, %v", grown, err)
	}
	if _, err := v.Expand(ctx, "carve-0000000000000000", volume.Range{RequiredBytes: gib}); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("expand missing: %v", err)
	}
	capa, err := v.Capacity(ctx, "n2", "")
	if err != nil || capa.FreeBytes != 3*gib {
		t.Fatalf("n2 capacity %+v, %v", capa, err)
	}
	if capa, _ := v.Capacity(ctx, "", "fast"); capa.FreeBytes != 8*gib || capa.MaxVolumeBytes != 5*gib {
		t.Fatalf("cluster capacity %+v", capa)
	}
	if capa, _ := v.Capacity(ctx, "n9", ""); capa != (backend.Capacity{}) {
		t.Fatalf("unknown node capacity %+v", capa)
	}
	if capa, _ := v.Capacity(ctx, "n1", "gold"); capa != (backend.Capacity{}) {
		t.Fatalf("unknown pool capacity %+v", capa)
	}
	for i := 0; i < 2; i++ {
		if err := v.Delete(ctx, lv.Name); err != nil {
			t.Fatalf("delete #%d: %v", i, err)
		}
	}
	if _, err := v.Get(ctx, lv.Name); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}

func TestDeleteWaitsForTheNodesFinalizer(t *testing.T) {
	lv := &v1alpha1.LocalVolume{ObjectMeta: metav1.ObjectMeta{Name: names.VolumeID("pvc"), Finalizers: []string{v1alpha1.Finalizer}},
		Spec: v1alpha1.LocalVolumeSpec{VolumeName: "pvc", NodeName: "n1", SizeBytes: gib}}
	c := newClient(t, lv)
	v := &Volumes{Client: c, Poll: 5 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := v.Delete(ctx, lv.Name); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("delete while the node holds its finalizer: %v", err)
	}
}

func TestReleaserFreesVolumesOfMissingNodes(t *testing.T) {
	gone := &v1alpha1.LocalVolume{ObjectMeta: metav1.ObjectMeta{Name: "carve-a-0000000000000000", Finalizers: []string{v1alpha1.Finalizer}},
		Spec: v1alpha1.LocalVolumeSpec{VolumeName: "a", NodeName: "gone", SizeBytes: gib}}
	live := &v1alpha1.LocalVolume{ObjectMeta: metav1.ObjectMeta{Name: "carve-b-0000000000000000", Finalizers: []string{v1alpha1.Finalizer}},
		Spec: v1alpha1.LocalVolumeSpec{VolumeName: "b", NodeName: "n1", SizeBytes: gib}}
	c := newClient(t, gone, live, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
	r := &Releaser{Client: c}
	ctx := context.Background()
	for _, lv := range []*v1alpha1.LocalVolume{gone, live} {
		if _, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: types.NamespacedName{Name: lv.Name}}); err != nil {
			t.Fatal(err)
		}
	}
	got := &v1alpha1.LocalVolume{}
	if err := c.Get(ctx, types.NamespacedName{Name: gone.Name}, got); err != nil {
		t.Fatal(err)
	}
	if len(got.Finalizers) != 0 || got.Status.Phase != v1alpha1.PhaseFailed || got.Status.Code != "FailedPrecondition" {
		t.Fatalf("volume of a missing node: %+v", got)
	}
	if err := c.Get(ctx, types.NamespacedName{Name: live.Name}, got); err != nil || len(got.Finalizers) != 1 || got.Status.Phase != "" {
		t.Fatalf("volume of a live node touched: %+v, %v", got, err)
	}
	if err := c.Delete(ctx, gone); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, types.NamespacedName{Name: gone.Name}, got); err == nil {
		t.Fatal("released volume still there after delete")
	}
}

// Issue 12 item 7: a NodeStorage left behind by an agent that outlived its
// Node counts for nothing and gets no volume.
func TestNodeStorageOfDeletedNodeIgnored(t *testing.T) {
	c := newClientOnly(t, nodeStorage("n1", 2*gib), nodeStorage("gone", 8*gib),
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v := &Volumes{Client: c, Poll: 5 * time.Millisecond}
	if capa, err := v.Capacity(ctx, "", ""); err != nil || capa.FreeBytes != 2*gib || capa.MaxVolumeBytes != 2*gib {
		t.Fatalf("capacity without topology %+v, %v; want n1's 2Gi only", capa, err)
	}
	if capa, err := v.Capacity(ctx, "gone", ""); err != nil || capa != (backend.Capacity{}) {
		t.Fatalf("capacity of a deleted node %+v, %v", capa, err)
	}
	var mu sync.Mutex
	go fakeNodes(ctx, c, map[string]int64{"n1": 2 * gib, "gone": 8 * gib}, &mu)
	lv, err := v.Create(ctx, CreateRequest{Name: "pvc-any", Range: volume.Range{RequiredBytes: gib}})
	if err != nil || lv.Spec.NodeName != "n1" {
		t.Fatalf("create without topology: %+v, %v; want it on n1", lv, err)
	}
	if _, err := v.Create(ctx, CreateRequest{Name: "pvc-big", Range: volume.Range{RequiredBytes: 4 * gib}}); !errors.Is(err, ErrNoRoom) {
		t.Fatalf("create that fits only on the deleted node: %v", err)
	}
	if _, err := v.Create(ctx, CreateRequest{Name: "pvc-pref", Range: volume.Range{RequiredBytes: gib},
		Preferred: []string{"gone"}, Requisite: []string{"gone"}}); !errors.Is(err, ErrNoPool) {
		t.Fatalf("create on the deleted node only: %v", err)
	}
}

// Issue 12 item 8: an expansion that failed (100Gi on a pool with 5Gi) can be
// retried with any size at least the current one; the spec follows, so the
// node stops retrying the failed size.
func TestFailedExpansionRetriedSmaller(t *testing.T) {
	c := newClient(t, nodeStorage("n1", 5*gib))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var mu sync.Mutex
	go fakeNodes(ctx, c, map[string]int64{"n1": 5 * gib}, &mu)
	v := &Volumes{Client: c, Poll: 5 * time.Millisecond}
	lv, err := v.Create(ctx, CreateRequest{Name: "pvc", Range: volume.Range{RequiredBytes: gib}})
	if err != nil {
		t.Fatal(err)
	}
	var nf *NodeFailure
	if _, err := v.Expand(ctx, lv.Name, volume.Range{RequiredBytes: 100 * gib}); !errors.As(err, &nf) || nf.Code != "ResourceExhausted" {
		t.Fatalf("expand beyond the pool: %v", err)
	}
	grown, err := v.Expand(ctx, lv.Name, volume.Range{RequiredBytes: 3 * gib})
	if err != nil || grown.Spec.SizeBytes != 3*gib || grown.Status.CurrentSizeBytes != 3*gib || grown.Status.Phase != v1alpha1.PhaseReady {
		t.Fatalf("retry with 3Gi after the failure: %+v, %v", grown, err)
	}
	// Fail again, then ask for less than the device has: nothing to do, and
	// the spec never drops below the device.
	if _, err := v.Expand(ctx, lv.Name, volume.Range{RequiredBytes: 50 * gib}); !errors.As(err, &nf) {
		t.Fatalf("second expand beyond the pool: %v", err)
	}
	same, err := v.Expand(ctx, lv.Name, volume.Range{RequiredBytes: 2 * gib})
	if err != nil || same.Spec.SizeBytes != 3*gib || same.Status.CurrentSizeBytes != 3*gib {
		t.Fatalf("retry below the current size: %+v, %v", same, err)
	}
}

// A cached NodeStorage reader never answers with a copy older than the one
// on the API server when an operation returned.
func TestFreshReaderAfterOperation(t *testing.T) {
	ctx := context.Background()
	direct := newClient(t, nodeStorage("n1", 5*gib))
	cache := newClientOnly(t, nodeStorage("n1", 5*gib))
	fr := &FreshReader{Cache: cache, Direct: direct}
	v := &Volumes{Client: direct, NodeStorages: fr, Poll: 5 * time.Millisecond}
	lv := &v1alpha1.LocalVolume{ObjectMeta: metav1.ObjectMeta{Name: names.VolumeID("pvc")},
		Spec: v1alpha1.LocalVolumeSpec{VolumeName: "pvc", NodeName: "n1", SizeBytes: gib}}
	if err := direct.Create(ctx, lv); err != nil {
		t.Fatal(err)
	}
	// The node frees space and publishes before the volume goes; the cache
	// has not seen that publish yet.
	setFree := func(c client.Client, free int64) {
		ns := &v1alpha1.NodeStorage{}
		if err := c.Get(ctx, types.NamespacedName{Name: "n1"}, ns); err != nil {
			t.Fatal(err)
		}
		ns.Status.Pools[0].FreeBytes = free
		if err := c.Status().Update(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	setFree(direct, 6*gib)
	if err := v.Delete(ctx, lv.Name); err != nil {
		t.Fatal(err)
	}
	if capa, err := v.Capacity(ctx, "n1", ""); err != nil || capa.FreeBytes != 6*gib {
		t.Fatalf("capacity of n1 right after the delete %+v, %v; want 6Gi", capa, err)
	}
	if capa, err := v.Capacity(ctx, "", ""); err != nil || capa.FreeBytes != 6*gib {
		t.Fatalf("capacity right after the delete %+v, %v; want 6Gi", capa, err)
	}
	// The cache catches up: it is used again (a later change it has not
	// seen, without an operation, shows only from the cache).
	setFree(cache, 6*gib)
	if capa, _ := v.Capacity(ctx, "n1", ""); capa.FreeBytes != 6*gib {
		t.Fatalf("capacity once the cache caught up %+v", capa)
	}
	setFree(cache, 7*gib)
	if capa, _ := v.Capacity(ctx, "n1", ""); capa.FreeBytes != 7*gib {
		t.Fatalf("cache not used once it caught up: %+v", capa)
	}
}
