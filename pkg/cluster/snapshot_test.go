package cluster

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/pkg/volume"
)

// readyLV is a LocalVolume its node reported Ready.
func readyLV(name, node, pool string, size int64) *v1alpha1.LocalVolume {
	return &v1alpha1.LocalVolume{
		ObjectMeta: metav1.ObjectMeta{Name: names.VolumeID(name), Labels: map[string]string{NodeLabel: node}},
		Spec:       v1alpha1.LocalVolumeSpec{VolumeName: name, NodeName: node, Pool: pool, SizeBytes: size},
		Status:     v1alpha1.LocalVolumeStatus{Phase: v1alpha1.PhaseReady, CurrentSizeBytes: size},
	}
}

// readyLS is a LocalSnapshot its node reported Ready.
func readyLS(name, node, pool, source string, size int64) *v1alpha1.LocalSnapshot {
	now := metav1.Now()
	return &v1alpha1.LocalSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: names.SnapshotID(name), Labels: map[string]string{NodeLabel: node}},
		Spec:       v1alpha1.LocalSnapshotSpec{SnapshotName: name, NodeName: node, Pool: pool, SourceVolumeID: source},
		Status: v1alpha1.LocalSnapshotStatus{Phase: v1alpha1.PhaseReady, SnapshotID: names.SnapshotID(name), SizeBytes: size,
			CreationTime: &now, ReadyToUse: true},
	}
}

// fakeSnapNodes plays the node agents for LocalSnapshots: a finalizer, then
// Ready with the source's size, or Failed with refuse[snapshot name]; on
// deletion the finalizer goes.
func fakeSnapNodes(ctx context.Context, c client.Client, refuse map[string]string) {
	for ctx.Err() == nil {
		var list v1alpha1.LocalSnapshotList
		_ = c.List(ctx, &list)
		for i := range list.Items {
			ls := &list.Items[i]
			switch {
			case ls.DeletionTimestamp != nil:
				controllerutil.RemoveFinalizer(ls, v1alpha1.Finalizer)
				_ = c.Update(ctx, ls)
			case !controllerutil.ContainsFinalizer(ls, v1alpha1.Finalizer):
				controllerutil.AddFinalizer(ls, v1alpha1.Finalizer)
				_ = c.Update(ctx, ls)
			case ls.Status.Phase == "":
				if code := refuse[ls.Spec.SnapshotName]; code != "" {
					ls.Status = v1alpha1.LocalSnapshotStatus{Phase: v1alpha1.PhaseFailed, Code: code, Message: "refused",
						ObservedGeneration: ls.Generation}
				} else {
					src := &v1alpha1.LocalVolume{}
					if c.Get(ctx, types.NamespacedName{Name: ls.Spec.SourceVolumeID}, src) != nil {
						continue
					}
					now := metav1.Now()
					ls.Status = v1alpha1.LocalSnapshotStatus{Phase: v1alpha1.PhaseReady, SnapshotID: ls.Name, ReadyToUse: true,
						SizeBytes: src.Status.CurrentSizeBytes, CreationTime: &now, ObservedGeneration: ls.Generation}
				}
				_ = c.Status().Update(ctx, ls)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func countSnapshots(t *testing.T, c client.Client) int {
	t.Helper()
	var list v1alpha1.LocalSnapshotList
	if err := c.List(context.Background(), &list); err != nil {
		t.Fatal(err)
	}
	return len(list.Items)
}

func TestCreateSnapshot(t *testing.T) {
	src := readyLV("pvc-src", "n2", "fast", 2*gib)
	other := readyLV("pvc-other", "n2", "", gib)
	pending := readyLV("pvc-pending", "n1", "", gib)
	pending.Status = v1alpha1.LocalVolumeStatus{}
	c := newClient(t, nodeStorage("n1", 8*gib), nodeStorage("n2", 8*gib), src, other, pending)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go fakeSnapNodes(ctx, c, map[string]string{"snap-refused": "InvalidArgument"})
	v := &Volumes{Client: c, Poll: 5 * time.Millisecond}

	ls, err := v.CreateSnapshot(ctx, "snap-1", src.Name)
	if err != nil {
		t.Fatal(err)
	}
	if ls.Name != names.SnapshotID("snap-1") || ls.Spec.NodeName != "n2" || ls.Spec.Pool != "fast" || ls.Labels[NodeLabel] != "n2" ||
		ls.Spec.SourceVolumeID != src.Name || ls.Status.Phase != v1alpha1.PhaseReady || ls.Status.SizeBytes != 2*gib {
		t.Fatalf("LocalSnapshot %+v", ls)
	}
	again, err := v.CreateSnapshot(ctx, "snap-1", src.Name)
	if err != nil || again.UID != ls.UID {
		t.Fatalf("retry: %+v, %v; want the same object", again, err)
	}
	for _, tc := range []struct {
		name, source string
		want         error
	}{
		{"snap-1", other.Name, backend.ErrExists},
		{"snap-2", names.VolumeID("pvc-nowhere"), backend.ErrNotFound},
		{"snap-3", "not-a-volume-id", backend.ErrNotFound},
		{"snap-4", pending.Name, ErrSourceNotReady},
	} {
		if _, err := v.CreateSnapshot(ctx, tc.name, tc.source); !errors.Is(err, tc.want) {
			t.Errorf("CreateSnapshot(%s, %s): %v, want %v", tc.name, tc.source, err, tc.want)
		}
	}
	if n := countSnapshots(t, c); n != 1 {
		t.Fatalf("%d LocalSnapshots after refused requests, want 1", n)
	}
	// The node's refusal comes back with its code; the attempt is removed.
	_, err = v.CreateSnapshot(ctx, "snap-refused", other.Name)
	var nf *NodeFailure
	if !errors.As(err, &nf) || nf.Code != "InvalidArgument" || nf.Node != "n2" {
		t.Fatalf("refused snapshot: %v", err)
	}
	waitGone(t, c, names.SnapshotID("snap-refused"))

	list, err := v.ListSnapshots(ctx)
	if err != nil || len(list) != 1 || list[0].Name != ls.Name {
		t.Fatalf("ListSnapshots: %+v, %v", list, err)
	}
	if err := v.DeleteSnapshot(ctx, ls.Name); err != nil {
		t.Fatal(err)
	}
	if n := countSnapshots(t, c); n != 0 {
		t.Fatalf("%d LocalSnapshots after DeleteSnapshot", n)
	}
	for _, id := range []string{ls.Name, names.SnapshotID("never"), "not-a-snapshot-id", names.VolumeID("pvc-src")} {
		if err := v.DeleteSnapshot(ctx, id); err != nil {
			t.Errorf("DeleteSnapshot(%s): %v, want success", id, err)
		}
	}
	if err := c.Get(ctx, types.NamespacedName{Name: src.Name}, &v1alpha1.LocalVolume{}); err != nil {
		t.Fatalf("DeleteSnapshot given a volume id touched the volume: %v", err)
	}
}

func waitGone(t *testing.T, c client.Client, name string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := c.Get(context.Background(), types.NamespacedName{Name: name}, &v1alpha1.LocalSnapshot{})
		if apierrors.IsNotFound(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("LocalSnapshot %s still there: %v", name, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A LocalSnapshot of a node that no longer exists is released: nothing
// would ever drop its finalizer.
func TestDeleteSnapshotOfDeletedNode(t *testing.T) {
	ls := readyLS("snap-orphan", "gone", "", names.VolumeID("pvc"), gib)
	ls.Finalizers = []string{v1alpha1.Finalizer}
	c := newClient(t, nodeStorage("n1", gib), ls)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v := &Volumes{Client: c, Poll: 5 * time.Millisecond}
	if err := v.DeleteSnapshot(ctx, ls.Name); err != nil {
		t.Fatal(err)
	}
	if n := countSnapshots(t, c); n != 0 {
		t.Fatalf("%d LocalSnapshots left", n)
	}
}

// A volume from a snapshot or a volume goes to the source's node and pool
// whatever the preferred topology, with at least the source's size and
// spec.source set; the requested topology or pool excluding the source, a
// limit below its size, striping and unknown sources are refused before
// any LocalVolume is written.
func TestCreateFromSource(t *testing.T) {
	src := readyLV("pvc-src", "n2", "", 2*gib)
	snap := readyLS("snap-src", "n2", "", src.Name, 2*gib)
	c := newClient(t, nodeStorage("n1", 8*gib), nodeStorage("n2", 8*gib), src, snap)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var mu sync.Mutex
	go fakeNodes(ctx, c, map[string]int64{"n1": 8 * gib, "n2": 8 * gib}, &mu)
	v := &Volumes{Client: c, Poll: 5 * time.Millisecond}

	fromSnap := &v1alpha1.VolumeSource{Kind: v1alpha1.SourceSnapshot, ID: snap.Name}
	fromVol := &v1alpha1.VolumeSource{Kind: v1alpha1.SourceVolume, ID: src.Name}
	for _, s := range []*v1alpha1.VolumeSource{fromSnap, fromVol} {
		req := CreateRequest{Name: "pvc-from-" + string(s.Kind), Range: volume.Range{RequiredBytes: gib},
			Preferred: []string{"n1"}, Source: s}
		lv, err := v.Create(ctx, req)
		if err != nil {
			t.Fatalf("from %+v: %v", s, err)
		}
		if lv.Spec.NodeName != "n2" || lv.Spec.Pool != "fast" || lv.Spec.SizeBytes != 2*gib || lv.Spec.Source == nil || *lv.Spec.Source != *s ||
			lv.Status.Phase != v1alpha1.PhaseReady {
			t.Fatalf("from %+v: LocalVolume %+v", s, lv)
		}
		again, err := v.Create(ctx, req)
		if err != nil || again.UID != lv.UID {
			t.Fatalf("retry from %+v: %v, %v", s, again, err)
		}
		// The same name without the source, or from another one, is another volume.
		other := req
		other.Source = nil
		if _, err := v.Create(ctx, other); !errors.Is(err, volume.ErrIncompatible) {
			t.Fatalf("the same name without a source: %v, want ErrIncompatible", err)
		}
	}
	before := countVolumes(t, c)
	for _, tc := range []struct {
		what string
		req  CreateRequest
		want error
	}{
		{"requisite excludes the source's node", CreateRequest{Requisite: []string{"n1"}}, ErrSourceElsewhere},
		{"limit below the source", CreateRequest{Range: volume.Range{RequiredBytes: gib, LimitBytes: gib}}, volume.ErrOutOfRange},
		{"another pool", CreateRequest{Pool: "slow"}, ErrSourcePool},
		{"striped", CreateRequest{Striping: volume.Striping{Stripes: 2}}, backend.ErrCannotStripe},
		{"unknown snapshot", CreateRequest{Source: &v1alpha1.VolumeSource{Kind: v1alpha1.SourceSnapshot, ID: names.SnapshotID("nowhere")}}, backend.ErrNotFound},
		{"a volume id as a snapshot", CreateRequest{Source: &v1alpha1.VolumeSource{Kind: v1alpha1.SourceSnapshot, ID: src.Name}}, backend.ErrNotFound},
		{"unknown volume", CreateRequest{Source: &v1alpha1.VolumeSource{Kind: v1alpha1.SourceVolume, ID: names.VolumeID("nowhere")}}, backend.ErrNotFound},
	} {
		req := tc.req
		req.Name = "pvc-bad"
		if req.Source == nil {
			req.Source = fromSnap
		}
		if _, err := v.Create(ctx, req); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.what, err, tc.want)
		}
	}
	if n := countVolumes(t, c); n != before {
		t.Fatalf("%d LocalVolumes after refused requests, want %d", n, before)
	}
}

func countVolumes(t *testing.T, c client.Client) int {
	t.Helper()
	var list v1alpha1.LocalVolumeList
	if err := c.List(context.Background(), &list); err != nil {
		t.Fatal(err)
	}
	return len(list.Items)
}

// The ledger counts a volume from a source, and a snapshot, on the source's
// node until the node settles them: a placement meanwhile sees that room as
// taken, though NodeStorage does not show it yet.
func TestLedgerCountsCopiesAndSnapshots(t *testing.T) {
	src := readyLV("pvc-src", "n2", "", 2*gib)
	c := newClient(t, nodeStorage("n2", 5*gib), src)
	ctx := context.Background()
	v := &Volumes{Client: c, Poll: 5 * time.Millisecond}
	// No node answers: the copy and the snapshot stay unsettled.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err := v.Create(short, CreateRequest{Name: "pvc-copy", Source: &v1alpha1.VolumeSource{Kind: v1alpha1.SourceVolume, ID: src.Name}})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unanswered copy: %v", err)
	}
	short, cancel = context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = v.CreateSnapshot(short, "snap-pending", src.Name)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unanswered snapshot: %v", err)
	}
	// 5 GiB published, 2 + 2 placed: 1 GiB fits, 2 do not.
	if _, err := v.place(ctx, "x", CreateRequest{Requisite: []string{"n2"}}, 2*gib); !errors.Is(err, ErrNoRoom) {
		t.Fatalf("2 GiB beside a 2 GiB copy and a 2 GiB snapshot in 5 GiB: %v, want ErrNoRoom", err)
	}
	if n, err := v.place(ctx, "y", CreateRequest{Requisite: []string{"n2"}}, gib); err != nil || n != "n2" {
		t.Fatalf("1 GiB: %s, %v", n, err)
	}
}

// Without the LocalSnapshot CRD, snapshot calls fail with ErrNoSnapshotCRD
// and deletes and lists find nothing.
func TestNoSnapshotCRD(t *testing.T) {
	c := newClient(t, nodeStorage("n1", gib), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}})
	v := &Volumes{Client: c, NoSnapshotCRD: true}
	ctx := context.Background()
	if _, err := v.CreateSnapshot(ctx, "s", names.VolumeID("v")); !errors.Is(err, ErrNoSnapshotCRD) {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	if err := v.DeleteSnapshot(ctx, names.SnapshotID("s")); err != nil {
		t.Fatalf("DeleteSnapshot: %v", err)
	}
	if l, err := v.ListSnapshots(ctx); err != nil || len(l) != 0 {
		t.Fatalf("ListSnapshots: %v, %v", l, err)
	}
}

// The SnapshotReleaser frees the LocalSnapshots of a node that does not
// exist (finalizer dropped, Failed/FailedPrecondition) and leaves a live
// node's alone.
func TestSnapshotReleaserFreesSnapshotsOfMissingNodes(t *testing.T) {
	gone := readyLS("snap-gone", "gone", "", names.VolumeID("a"), gib)
	gone.Status = v1alpha1.LocalSnapshotStatus{}
	gone.Finalizers = []string{v1alpha1.Finalizer}
	live := readyLS("snap-live", "n1", "", names.VolumeID("b"), gib)
	live.Finalizers = []string{v1alpha1.Finalizer}
	c := newClient(t, gone, live, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
	r := &SnapshotReleaser{Client: c}
	ctx := context.Background()
	for _, ls := range []*v1alpha1.LocalSnapshot{gone, live} {
		if _, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: types.NamespacedName{Name: ls.Name}}); err != nil {
			t.Fatal(err)
		}
	}
	got := &v1alpha1.LocalSnapshot{}
	if err := c.Get(ctx, types.NamespacedName{Name: gone.Name}, got); err != nil {
		t.Fatal(err)
	}
	if len(got.Finalizers) != 0 || got.Status.Phase != v1alpha1.PhaseFailed || got.Status.Code != "FailedPrecondition" {
		t.Fatalf("snapshot of a missing node: %+v", got)
	}
	if err := c.Get(ctx, types.NamespacedName{Name: live.Name}, got); err != nil || len(got.Finalizers) != 1 || got.Status.Phase != v1alpha1.PhaseReady {
		t.Fatalf("snapshot of a live node touched: %+v, %v", got, err)
	}
}

// TestSourceOldCRD: a LocalVolume CRD older than issue 14 prunes spec.source,
// and the node would make an empty volume; the controller sees the stored
// object lost its source, deletes it and says why (ErrOldSchema).
func TestSourceOldCRD(t *testing.T) {
	src := readyLV("pvc-src", "n1", "", gib)
	c := newClient(t, nodeStorage("n1", 8*gib), src)
	pruning := interceptor.Funcs{Create: func(ctx context.Context, cl client.WithWatch, o client.Object, opts ...client.CreateOption) error {
		if lv, ok := o.(*v1alpha1.LocalVolume); ok { // pruned as by a CRD without the field
			lv.Spec.Source = nil
		}
		return cl.Create(ctx, o, opts...)
	}}
	v := &Volumes{Client: interceptor.NewClient(c.(client.WithWatch), pruning), Poll: 5 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := v.Create(ctx, CreateRequest{Name: "pvc-copy", Source: &v1alpha1.VolumeSource{Kind: v1alpha1.SourceVolume, ID: src.Name}})
	if !errors.Is(err, ErrOldSchema) {
		t.Fatalf("copy through a CRD without spec.source: %v, want ErrOldSchema", err)
	}
	if n := countVolumes(t, c); n != 1 {
		t.Fatalf("%d LocalVolumes, want only the source (the pruned copy deleted)", n)
	}
}

// A CreateSnapshot that gave up before the node answered (the caller's
// deadline, a controller restart) is retried: the retry finds the same
// LocalSnapshot and returns it once the node took it; nothing is doubled.
// So is a retry of a volume from that snapshot.
func TestSnapshotAndCopyRetriedAfterTimeout(t *testing.T) {
	src := readyLV("pvc-src", "n1", "", gib)
	c := newClient(t, nodeStorage("n1", 8*gib), src)
	v := &Volumes{Client: c, Poll: 5 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	short, scancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err := v.CreateSnapshot(short, "snap-slow", src.Name)
	scancel()
	if !errors.Is(err, context.DeadlineExceeded) || countSnapshots(t, c) != 1 {
		t.Fatalf("unanswered: %v, %d LocalSnapshots", err, countSnapshots(t, c))
	}
	first := &v1alpha1.LocalSnapshot{}
	if err := c.Get(ctx, types.NamespacedName{Name: names.SnapshotID("snap-slow")}, first); err != nil {
		t.Fatal(err)
	}
	// A restarted controller: a new Volumes, no ledger.
	v = &Volumes{Client: c, Poll: 5 * time.Millisecond}
	go fakeSnapNodes(ctx, c, nil)
	ls, err := v.CreateSnapshot(ctx, "snap-slow", src.Name)
	if err != nil || ls.UID != first.UID || ls.Status.Phase != v1alpha1.PhaseReady || countSnapshots(t, c) != 1 {
		t.Fatalf("retry: %+v, %v; want the first object, Ready, alone", ls, err)
	}

	req := CreateRequest{Name: "pvc-copy", Source: &v1alpha1.VolumeSource{Kind: v1alpha1.SourceSnapshot, ID: ls.Name}}
	short, scancel = context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = v.Create(short, req)
	scancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unanswered copy: %v", err)
	}
	var mu sync.Mutex
	go fakeNodes(ctx, c, map[string]int64{"n1": 8 * gib}, &mu)
	// The snapshot is deleted meanwhile: the copy made before is the answer.
	if err := v.DeleteSnapshot(ctx, ls.Name); err != nil {
		t.Fatal(err)
	}
	lv, err := v.Create(ctx, req)
	if err != nil || lv.Status.Phase != v1alpha1.PhaseReady || countVolumes(t, c) != 2 {
		t.Fatalf("retried copy after its snapshot went: %+v, %v, %d LocalVolumes", lv, err, countVolumes(t, c))
	}
}
