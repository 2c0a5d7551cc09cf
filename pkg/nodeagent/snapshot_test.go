package nodeagent

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

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

// countingSnaps is a snapshotting pool that counts the calls that change devices.
type countingSnaps struct {
	backendtest.Snapshots
	snaps, snapDeletes, clones, creates atomic.Int32
}

func (c *countingSnaps) CreateSnapshot(ctx context.Context, id, name, src string) (*backend.Snapshot, error) {
	c.snaps.Add(1)
	return c.Snapshots.CreateSnapshot(ctx, id, name, src)
}

func (c *countingSnaps) DeleteSnapshot(ctx context.Context, id string) error {
	err := c.Snapshots.DeleteSnapshot(ctx, id)
	if err == nil {
		c.snapDeletes.Add(1)
	}
	return err
}

func (c *countingSnaps) CreateFrom(ctx context.Context, req backend.CreateRequest, src string) (*backend.Volume, error) {
	c.clones.Add(1)
	return c.Snapshots.CreateFrom(ctx, req, src)
}

func (c *countingSnaps) Create(ctx context.Context, req backend.CreateRequest) (*backend.Volume, error) {
	c.creates.Add(1)
	return c.Snapshots.Create(ctx, req)
}

// snapRig is a node with a thin-like pool "thin" (the default) and a thick
// in-memory pool "thick", over a fake API server.
type snapRig struct {
	t      *testing.T
	agent  *Agent
	snaps  Snapshots
	c      client.WithWatch
	thin   *countingSnaps
	thick  *backendtest.Memory
	writes atomic.Int32
}

func newSnapRig(t *testing.T, objs ...client.Object) *snapRig {
	t.Helper()
	r := &snapRig{t: t, thin: &countingSnaps{Snapshots: backendtest.NewSnapshots("thin", 10*gib, 4*mib)},
		thick: backendtest.NewMemory("thick", 10*gib, 4*mib)}
	vols, err := volume.NewManager([]volume.Pool{{Name: "thin", Backend: r.thin}, {Name: "thick", Backend: r.thick}}, "thin")
	if err != nil {
		t.Fatal(err)
	}
	scheme, err := Scheme()
	if err != nil {
		t.Fatal(err)
	}
	count := func() { r.writes.Add(1) }
	r.c = fake.NewClientBuilder().WithScheme(scheme).
		WithStatusSubresource(&v1alpha1.LocalVolume{}, &v1alpha1.LocalSnapshot{}, &v1alpha1.NodeStorage{}).
		WithObjects(append([]client.Object{node("uid-1")}, objs...)...).
		WithInterceptorFuncs(interceptor.Funcs{
			Create: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.CreateOption) error {
				count()
				return c.Create(ctx, o, opts...)
			},
			Update: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.UpdateOption) error {
				count()
				return c.Update(ctx, o, opts...)
			},
			Patch: func(ctx context.Context, c client.WithWatch, o client.Object, p client.Patch, opts ...client.PatchOption) error {
				count()
				return c.Patch(ctx, o, p, opts...)
			},
			SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, o client.Object, opts ...client.SubResourceUpdateOption) error {
				count()
				return c.SubResource(sub).Update(ctx, o, opts...)
			},
			SubResourcePatch: func(ctx context.Context, c client.Client, sub string, o client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
				count()
				return c.SubResource(sub).Patch(ctx, o, p, opts...)
			},
		}).Build()
	r.agent = &Agent{NodeName: nodeName, Vols: vols, Locks: &keylock.Locks{}, Client: r.c}
	r.snaps = Snapshots{A: r.agent}
	return r
}

func newLS(name, source string) *v1alpha1.LocalSnapshot {
	return &v1alpha1.LocalSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: names.SnapshotID(name), Generation: 1},
		Spec:       v1alpha1.LocalSnapshotSpec{SnapshotName: name, NodeName: nodeName, SourceVolumeID: source},
	}
}

func (r *snapRig) reconcileSnap(name string) error {
	r.t.Helper()
	_, err := r.snaps.Reconcile(context.Background(), reconcile.Request{NamespacedName: types.NamespacedName{Name: name}})
	return err
}

func (r *snapRig) mustReconcileSnap(name string) {
	r.t.Helper()
	if err := r.reconcileSnap(name); err != nil {
		r.t.Fatalf("reconcile LocalSnapshot %s: %v", name, err)
	}
}

func (r *snapRig) mustReconcileLV(name string) {
	r.t.Helper()
	if _, err := r.agent.Reconcile(context.Background(), reconcile.Request{NamespacedName: types.NamespacedName{Name: name}}); err != nil {
		r.t.Fatalf("reconcile LocalVolume %s: %v", name, err)
	}
}

func (r *snapRig) getLS(name string) *v1alpha1.LocalSnapshot {
	r.t.Helper()
	ls := &v1alpha1.LocalSnapshot{}
	if err := r.c.Get(context.Background(), types.NamespacedName{Name: name}, ls); err != nil {
		r.t.Fatalf("get LocalSnapshot %s: %v", name, err)
	}
	return ls
}

func (r *snapRig) getLV(name string) *v1alpha1.LocalVolume {
	r.t.Helper()
	lv := &v1alpha1.LocalVolume{}
	if err := r.c.Get(context.Background(), types.NamespacedName{Name: name}, lv); err != nil {
		r.t.Fatalf("get LocalVolume %s: %v", name, err)
	}
	return lv
}

func (r *snapRig) published(pool string) v1alpha1.PoolStatus {
	r.t.Helper()
	ns := &v1alpha1.NodeStorage{}
	if err := r.c.Get(context.Background(), types.NamespacedName{Name: nodeName}, ns); err != nil {
		r.t.Fatalf("get NodeStorage: %v", err)
	}
	for _, p := range ns.Status.Pools {
		if p.Name == pool {
			return p
		}
	}
	r.t.Fatalf("NodeStorage has no pool %s: %+v", pool, ns.Status)
	return v1alpha1.PoolStatus{}
}

func hasSnapFinalizer(ls *v1alpha1.LocalSnapshot) bool {
	for _, f := range ls.Finalizers {
		if f == v1alpha1.Finalizer {
			return true
		}
	}
	return false
}

// A LocalSnapshot of a Ready volume: finalizer first, then the thin snapshot
// (through volume.Manager.CreateSnapshot), then NodeStorage with the
// snapshot's share of the budget, then status Ready with id, size and
// creation time. Reconciling again, or by a restarted agent, writes nothing
// and takes nothing.
func TestSnapshotReadyIdempotentAndRestart(t *testing.T) {
	src := newLV("pvc-src", 2*gib, "")
	ls := newLS("snap-1", src.Name)
	r := newSnapRig(t, src, ls)
	r.mustReconcileLV(src.Name)
	r.mustReconcileSnap(ls.Name)

	got := r.getLS(ls.Name)
	if !hasSnapFinalizer(got) {
		t.Fatalf("no finalizer: %v", got.Finalizers)
	}
	snap, err := r.thin.GetSnapshot(context.Background(), ls.Name)
	if err != nil || snap.SourceID != src.Name || snap.Name != "snap-1" {
		t.Fatalf("snapshot in the pool: %+v, %v", snap, err)
	}
	st := got.Status
	if st.Phase != v1alpha1.PhaseReady || st.SnapshotID != ls.Name || st.SizeBytes != 2*gib || !st.ReadyToUse ||
		st.CreationTime == nil || st.CreationTime.Unix() != snap.CreationTime || st.ObservedGeneration != 1 || st.Code != "" {
		t.Fatalf("status %+v", st)
	}
	if p := r.published("thin"); p.FreeBytes != 10*gib-4*gib {
		t.Fatalf("NodeStorage free %d when Ready was written, want 6GiB (volume and snapshot 2GiB each)", p.FreeBytes)
	}

	rv, writes, calls := got.ResourceVersion, r.writes.Load(), r.thin.snaps.Load()
	r.mustReconcileSnap(ls.Name)
	restarted := Snapshots{A: &Agent{NodeName: nodeName, Vols: r.agent.Vols, Locks: &keylock.Locks{}, Client: r.c}}
	if _, err := restarted.Reconcile(context.Background(), reconcile.Request{NamespacedName: types.NamespacedName{Name: ls.Name}}); err != nil {
		t.Fatal(err)
	}
	if got := r.getLS(ls.Name); got.ResourceVersion != rv {
		t.Fatalf("repeat reconcile changed the object: rv %s -> %s", rv, got.ResourceVersion)
	}
	if r.writes.Load() != writes || r.thin.snaps.Load() != calls {
		t.Fatalf("repeat reconcile wrote %d times and took %d snapshots", r.writes.Load()-writes, r.thin.snaps.Load()-calls)
	}
}

// Failures are reported with the codes the node-local controller returns,
// take nothing, and are not retried at the same generation.
func TestSnapshotFailures(t *testing.T) {
	thick := newLV("pvc-thick", gib, "thick")
	src := newLV("pvc-src", gib, "")
	other := newLV("pvc-other", gib, "")
	unknown := newLS("snap-unknown", names.VolumeID("pvc-nowhere"))
	onThick := newLS("snap-thick", thick.Name)
	mismatch := newLS("snap-mismatch", src.Name)
	mismatch.Name = names.SnapshotID("snap-other-name")
	r := newSnapRig(t, thick, src, other, unknown, onThick, mismatch)
	for _, lv := range []string{thick.Name, src.Name, other.Name} {
		r.mustReconcileLV(lv)
	}
	// snap-taken exists already, of another volume (taken on this node before).
	if _, err := r.agent.Vols.CreateSnapshot(context.Background(), "snap-taken", other.Name); err != nil {
		t.Fatal(err)
	}
	taken := newLS("snap-taken", src.Name)
	if err := r.c.Create(context.Background(), taken); err != nil {
		t.Fatal(err)
	}
	snapsBefore := r.thin.snaps.Load()
	for _, tc := range []struct {
		ls       *v1alpha1.LocalSnapshot
		code     string
		contains string
	}{
		{unknown, "NotFound", "pvc-nowhere"},
		{onThick, "InvalidArgument", "lvm-thin"},
		{taken, "AlreadyExists", other.Name},
		{mismatch, "InvalidArgument", "not the snapshot id"},
	} {
		r.mustReconcileSnap(tc.ls.Name)
		got := r.getLS(tc.ls.Name)
		if got.Status.Phase != v1alpha1.PhaseFailed || got.Status.Code != tc.code || !strings.Contains(got.Status.Message, tc.contains) ||
			got.Status.ObservedGeneration != 1 {
			t.Errorf("%s: status %+v, want Failed/%s mentioning %q", tc.ls.Name, got.Status, tc.code, tc.contains)
		}
		// Permanent: not retried until the spec changes.
		rv := got.ResourceVersion
		r.mustReconcileSnap(tc.ls.Name)
		if r.getLS(tc.ls.Name).ResourceVersion != rv {
			t.Errorf("%s: a permanent failure was retried at the same generation", tc.ls.Name)
		}
	}
	if n := r.thin.snaps.Load() - snapsBefore; n != 0 {
		t.Errorf("%d snapshot calls reached the pool, want none", n)
	}
	if s, _ := r.thin.ListSnapshots(context.Background()); len(s) != 1 {
		t.Errorf("snapshots in the pool: %+v, want only the one taken before", s)
	}
}

// Deleting a LocalSnapshot removes its snapshot exactly once, publishes the
// freed budget before the finalizer goes, and leaves alone a snapshot of
// that id that belongs to another source.
func TestSnapshotDeleteExactlyOnce(t *testing.T) {
	src := newLV("pvc-src", 2*gib, "")
	ls := newLS("snap-del", src.Name)
	r := newSnapRig(t, src, ls)
	r.mustReconcileLV(src.Name)
	r.mustReconcileSnap(ls.Name)
	if err := r.c.Delete(context.Background(), r.getLS(ls.Name)); err != nil {
		t.Fatal(err)
	}
	if got := r.getLS(ls.Name); got.DeletionTimestamp.IsZero() {
		t.Fatal("finalizer did not hold the object")
	}
	// A restarted agent finds the deletion: it converges the same way.
	restarted := Snapshots{A: &Agent{NodeName: nodeName, Vols: r.agent.Vols, Locks: &keylock.Locks{}, Client: r.c}}
	if _, err := restarted.Reconcile(context.Background(), reconcile.Request{NamespacedName: types.NamespacedName{Name: ls.Name}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.thin.GetSnapshot(context.Background(), ls.Name); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("snapshot still there: %v", err)
	}
	if err := r.c.Get(context.Background(), types.NamespacedName{Name: ls.Name}, &v1alpha1.LocalSnapshot{}); !apierrors.IsNotFound(err) {
		t.Fatalf("object not released: %v", err)
	}
	if p := r.published("thin"); p.FreeBytes != 8*gib {
		t.Fatalf("NodeStorage free %d when the finalizer went, want 8GiB", p.FreeBytes)
	}
	r.mustReconcileSnap(ls.Name)
	if n := r.thin.snapDeletes.Load(); n != 1 {
		t.Fatalf("%d snapshot deletions, want exactly 1", n)
	}
	if _, err := r.thin.Get(context.Background(), src.Name); err != nil {
		t.Fatalf("the source volume went with its snapshot: %v", err)
	}

	// A LocalSnapshot that failed with AlreadyExists names a snapshot of
	// another source: its deletion must not remove that snapshot.
	other := newLV("pvc-other", gib, "")
	if err := r.c.Create(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	r.mustReconcileLV(other.Name)
	if _, err := r.agent.Vols.CreateSnapshot(context.Background(), "snap-shared", other.Name); err != nil {
		t.Fatal(err)
	}
	clash := newLS("snap-shared", src.Name)
	if err := r.c.Create(context.Background(), clash); err != nil {
		t.Fatal(err)
	}
	r.mustReconcileSnap(clash.Name)
	if got := r.getLS(clash.Name); got.Status.Code != "AlreadyExists" {
		t.Fatalf("clash: %+v", got.Status)
	}
	if err := r.c.Delete(context.Background(), r.getLS(clash.Name)); err != nil {
		t.Fatal(err)
	}
	r.mustReconcileSnap(clash.Name)
	if _, err := r.thin.GetSnapshot(context.Background(), clash.Name); err != nil {
		t.Fatalf("another source's snapshot was removed with a LocalSnapshot that did not take it: %v", err)
	}
	if n := r.thin.snapDeletes.Load(); n != 1 {
		t.Fatalf("%d snapshot deletions, want still 1", n)
	}
}

// A snapshot that vanished after it was Ready is reported NotFound, never
// taken again (a new one would hold other data); another node's
// LocalSnapshot is not touched.
func TestSnapshotVanishedAndOtherNode(t *testing.T) {
	src := newLV("pvc-src", gib, "")
	ls := newLS("snap-gone", src.Name)
	elsewhere := newLS("snap-elsewhere", src.Name)
	elsewhere.Spec.NodeName = "node-b"
	r := newSnapRig(t, src, ls, elsewhere)
	r.mustReconcileLV(src.Name)
	r.mustReconcileSnap(ls.Name)
	if err := r.thin.DeleteSnapshot(context.Background(), ls.Name); err != nil {
		t.Fatal(err)
	}
	r.mustReconcileSnap(ls.Name)
	if got := r.getLS(ls.Name); got.Status.Phase != v1alpha1.PhaseFailed || got.Status.Code != "NotFound" || got.Status.SnapshotID != ls.Name {
		t.Fatalf("status %+v, want Failed/NotFound", got.Status)
	}
	if n := r.thin.snaps.Load(); n != 1 {
		t.Fatalf("%d snapshots taken, want 1", n)
	}
	writes := r.writes.Load()
	r.mustReconcileSnap(elsewhere.Name)
	if got := r.getLS(elsewhere.Name); r.writes.Load() != writes || hasSnapFinalizer(got) || got.Status.Phase != "" {
		t.Fatalf("another node's LocalSnapshot was touched: %+v", got)
	}
}

// A LocalVolume with spec.source is made through the manager's clone path
// (createFrom) in the source's pool, at least the source's size; again
// after a restart it is found, not copied twice. A source that does not
// exist, or a thick pool's volume, fails with NotFound or InvalidArgument
// naming lvm-thin and nothing is made.
func TestVolumeFromSource(t *testing.T) {
	src := newLV("pvc-src", 2*gib, "")
	thick := newLV("pvc-thick", gib, "thick")
	ls := newLS("snap-src", src.Name)
	fromSnap := newLV("pvc-from-snap", 3*gib, "thin")
	fromSnap.Spec.Source = &v1alpha1.VolumeSource{Kind: v1alpha1.SourceSnapshot, ID: ls.Name}
	fromVol := newLV("pvc-from-vol", 2*gib, "thin")
	fromVol.Spec.Source = &v1alpha1.VolumeSource{Kind: v1alpha1.SourceVolume, ID: src.Name}
	missing := newLV("pvc-from-missing", gib, "thin")
	missing.Spec.Source = &v1alpha1.VolumeSource{Kind: v1alpha1.SourceSnapshot, ID: names.SnapshotID("nowhere")}
	wrongKind := newLV("pvc-from-wrong-kind", 2*gib, "thin")
	wrongKind.Spec.Source = &v1alpha1.VolumeSource{Kind: v1alpha1.SourceSnapshot, ID: src.Name}
	fromThick := newLV("pvc-from-thick", gib, "thick")
	fromThick.Spec.Source = &v1alpha1.VolumeSource{Kind: v1alpha1.SourceVolume, ID: thick.Name}
	r := newSnapRig(t, src, thick, ls, fromSnap, fromVol, missing, wrongKind, fromThick)
	r.mustReconcileLV(src.Name)
	r.mustReconcileLV(thick.Name)
	r.mustReconcileSnap(ls.Name)

	for _, lv := range []*v1alpha1.LocalVolume{fromSnap, fromVol} {
		r.mustReconcileLV(lv.Name)
		got := r.getLV(lv.Name)
		dev, err := r.thin.Get(context.Background(), lv.Name)
		if err != nil || dev.Source != lv.Spec.Source.ID || dev.SizeBytes != lv.Spec.SizeBytes {
			t.Fatalf("%s: device %+v, %v; want a copy of %s with %d bytes", lv.Name, dev, err, lv.Spec.Source.ID, lv.Spec.SizeBytes)
		}
		if got.Status.Phase != v1alpha1.PhaseReady || got.Status.CurrentSizeBytes != dev.SizeBytes {
			t.Fatalf("%s: status %+v", lv.Name, got.Status)
		}
	}
	if n := r.thin.clones.Load(); n != 2 {
		t.Fatalf("%d copies made, want 2", n)
	}
	restarted := &Agent{NodeName: nodeName, Vols: r.agent.Vols, Locks: &keylock.Locks{}, Client: r.c}
	writes := r.writes.Load()
	for _, lv := range []string{fromSnap.Name, fromVol.Name} {
		if _, err := restarted.Reconcile(context.Background(), reconcile.Request{NamespacedName: types.NamespacedName{Name: lv}}); err != nil {
			t.Fatal(err)
		}
	}
	if r.thin.clones.Load() != 2 || r.writes.Load() != writes {
		t.Fatalf("a restart copied again (%d copies) or wrote (%d)", r.thin.clones.Load(), r.writes.Load()-writes)
	}
	devsBefore := func() int { v, _ := r.agent.Vols.List(context.Background()); return len(v) }()
	for _, tc := range []struct {
		lv       *v1alpha1.LocalVolume
		code     string
		contains string
	}{
		{missing, "NotFound", "nowhere"},
		{wrongKind, "NotFound", src.Name},
		{fromThick, "InvalidArgument", "lvm-thin"},
	} {
		r.mustReconcileLV(tc.lv.Name)
		got := r.getLV(tc.lv.Name)
		if got.Status.Phase != v1alpha1.PhaseFailed || got.Status.Code != tc.code || !strings.Contains(got.Status.Message, tc.contains) {
			t.Errorf("%s: status %+v, want Failed/%s mentioning %q", tc.lv.Name, got.Status, tc.code, tc.contains)
		}
	}
	if n := func() int { v, _ := r.agent.Vols.List(context.Background()); return len(v) }(); n != devsBefore {
		t.Fatalf("%d devices after refused copies, want %d: something was half made", n, devsBefore)
	}
	if n := r.thin.creates.Load(); n != 1 { // pvc-src; copies are made by CreateFrom only
		t.Fatalf("%d empty volumes created in the thin pool, want 1", n)
	}
}
