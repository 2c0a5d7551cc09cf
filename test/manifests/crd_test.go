package manifests

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/pkg/backend/lvm"
	"github.com/carve-csi/carve/pkg/backend/pmem"
	"github.com/carve-csi/carve/pkg/backend/registry"
	carvecluster "github.com/carve-csi/carve/pkg/cluster"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/pkg/nodeagent"
	"github.com/carve-csi/carve/pkg/volume"
)

// typed is an in-memory pool that reports another backend type, so the
// node agent publishes each type the code knows without its tools.
type typed struct {
	*backendtest.Memory
	typ string
}

func (b typed) Type() string { return b.typ }

// Capacity: an lvm-thin pool also reports its real use (NodeStorage's
// status.pools[].thin), active, so every field of it is written.
func (b typed) Capacity(ctx context.Context) (backend.Capacity, error) {
	c, err := b.Memory.Capacity(ctx)
	if b.typ == lvm.ThinType {
		c.Thin = backend.ThinUsage{DataBytes: 5 << 30, DataPercent: 41.5, MetadataPercent: 12.25, Active: true,
			VirtualBytes: 3 << 30, Overprovision: 2.5, ThresholdPercent: 90}
	}
	return c, err
}

// Devices: every pool also lists disks (as a pool built from disks does),
// one of them missing, so the schema of status.pools[].devices is exercised.
func (b typed) Devices(context.Context) ([]backend.Device, error) {
	return []backend.Device{
		{Path: "/dev/vdb", UUID: "zCFXcm-qJaO-I3wU-JCmZ-IGCo-O6Kh-CRqPgl", SizeBytes: 1 << 30, FreeBytes: 1 << 29},
		{Path: "[unknown]", UUID: "hOFzij-ogka-kw7B-oVRc-frdj-yCH1-wuRG1y", SizeBytes: 1 << 30, FreeBytes: 1 << 30, Missing: true},
	}, nil
}

// thinTyped is the lvm-thin pool: typed, and it takes snapshots and makes
// volumes from sources (backendtest.Snapshots over the same memory).
type thinTyped struct {
	typed
	snaps backendtest.Snapshots
}

func (b thinTyped) CreateSnapshot(ctx context.Context, id, name, source string) (*backend.Snapshot, error) {
	return b.snaps.CreateSnapshot(ctx, id, name, source)
}
func (b thinTyped) GetSnapshot(ctx context.Context, id string) (*backend.Snapshot, error) {
	return b.snaps.GetSnapshot(ctx, id)
}
func (b thinTyped) ListSnapshots(ctx context.Context) ([]backend.Snapshot, error) {
	return b.snaps.ListSnapshots(ctx)
}
func (b thinTyped) DeleteSnapshot(ctx context.Context, id string) error {
	return b.snaps.DeleteSnapshot(ctx, id)
}
func (b thinTyped) CreateFrom(ctx context.Context, req backend.CreateRequest, source string) (*backend.Volume, error) {
	return b.snaps.CreateFrom(ctx, req, source)
}

// poolTypes: every type a node can report in NodeStorage: the registry's
// pool types, what their backends return from Type (an lvm-pmem pool is an
// lvm pool), and the in-memory pool the unit tests publish through a fake
// client that ignores the schema.
func poolTypes() []string {
	set := map[string]bool{lvm.Type: true, pmem.Type: true, backendtest.NewMemory("m", 1, 1).Type(): true}
	for _, t := range registry.Types() {
		set[t] = true
	}
	var out []string
	for t := range set {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// TestCRDsAcceptWhatTheCodeWrites applies the generated CRDs
// (deploy/kubernetes/base/crds) to a real API server and lets carve's own
// code write through them: the node agent publishes a NodeStorage with a
// pool of every type, and the controller's volume logic creates, expands
// (to Failed) and deletes LocalVolumes that the node agent reconciles. A
// schema that rejects what the code writes fails here; the unit tests' fake
// client accepts anything.
func TestCRDsAcceptWhatTheCodeWrites(t *testing.T) {
	e := setup(t)
	c := startCluster(t, e)
	c.kubectlOK(t, nil, "apply", "--server-side", "--field-manager=carve-test", "-f",
		filepath.Join(e.root, "deploy", "kubernetes", "base", "crds"))
	c.kubectlOK(t, nil, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/localvolumes.carve.csi.dev", "crd/localsnapshots.carve.csi.dev", "crd/nodestorages.carve.csi.dev")
	const node = "schema-node"
	if out, err := exec.Command(filepath.Join(e.root, "hack", "k8s", "cluster.sh"), "add-node", c.dir, node).CombinedOutput(); err != nil {
		t.Fatalf("cluster.sh add-node: %v\n%s", err, out)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", c.admin)
	if err != nil {
		t.Fatal(err)
	}
	scheme, err := nodeagent.Scheme()
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	const gib = int64(1) << 30
	typeNames := poolTypes()
	var pools []volume.Pool
	for _, typ := range typeNames {
		b := typed{backendtest.NewMemory(typ, 10*gib, 4<<20), typ}
		if typ == lvm.ThinType {
			pools = append(pools, volume.Pool{Name: typ, Backend: thinTyped{b, backendtest.Snapshots{Memory: b.Memory}}})
			continue
		}
		pools = append(pools, volume.Pool{Name: typ, Backend: b})
	}
	vols, err := volume.NewManager(pools, typeNames[0])
	if err != nil {
		t.Fatal(err)
	}
	agent := &nodeagent.Agent{NodeName: node, Vols: vols, Locks: &keylock.Locks{}, Client: cl, Debounce: time.Millisecond}

	// NodeStorage: one status write with a pool of every type.
	if err := agent.Publish(ctx); err != nil {
		t.Fatalf("the node agent's NodeStorage write with pool types %q: %v", typeNames, err)
	}
	ns := &v1alpha1.NodeStorage{}
	if err := cl.Get(ctx, types.NamespacedName{Name: node}, ns); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, p := range ns.Status.Pools {
		got[p.Name] = p.Type
		if len(p.Devices) != 2 || !p.Devices[1].Missing || p.Devices[0].FreeBytes != 1<<29 {
			t.Errorf("NodeStorage on the server: pool %q devices %+v, want the two written", p.Name, p.Devices)
		}
		wantThin := p.Type == lvm.ThinType
		if th := p.Thin; wantThin != (th != nil) || wantThin && (th.DataPercent != "41.50" || th.Overprovision != "2.5" || th.VirtualBytes != 3<<30) {
			t.Errorf("NodeStorage on the server: pool %q thin status %+v (want one: %v)", p.Name, th, wantThin)
		}
	}
	for _, typ := range typeNames {
		if got[typ] != typ {
			t.Errorf("NodeStorage on the server: pool %q has type %q, want %q (status %+v)", typ, got[typ], typ, ns.Status)
		}
	}

	// LocalVolumes: the controller's side writes spec, the node agent status.
	mgr, err := nodeagent.NewManager(cfg, nodeagent.ManagerOptions{NodeName: node, Select: nodeagent.SelectByLabel})
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	mctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("node agent manager: %v", err)
		}
	}()
	cv := &carvecluster.Volumes{Client: cl}
	for _, typ := range typeNames {
		lv, err := cv.Create(ctx, carvecluster.CreateRequest{Name: "pvc-" + typ, Pool: typ,
			Range: volume.Range{RequiredBytes: gib}, Requisite: []string{node}, VolumeMode: "Filesystem", FSType: "ext4"})
		if err != nil {
			t.Fatalf("create a volume in pool %q: %v", typ, err)
		}
		if lv.Status.Phase != v1alpha1.PhaseReady || lv.Status.CurrentSizeBytes != gib || lv.Status.DevicePath == "" {
			t.Errorf("LocalVolume in pool %q: status %+v", typ, lv.Status)
		}
	}
	// A failed expansion: the node writes Failed with its gRPC code.
	id := names.VolumeID("pvc-" + typeNames[0])
	_, err = cv.Expand(ctx, id, volume.Range{RequiredBytes: 100 * gib})
	var nf *carvecluster.NodeFailure
	if !errors.As(err, &nf) || nf.Code != "ResourceExhausted" {
		t.Errorf("expansion beyond the pool: %v, want the node's ResourceExhausted", err)
	}
	lv := &v1alpha1.LocalVolume{}
	if err := cl.Get(ctx, types.NamespacedName{Name: id}, lv); err != nil || lv.Status.Phase != v1alpha1.PhaseFailed {
		t.Errorf("LocalVolume after a failed expansion: %+v, %v", lv.Status, err)
	}
	// A retry at a size that fits (status Pending from the controller, then Ready).
	if lv, err := cv.Expand(ctx, id, volume.Range{RequiredBytes: 2 * gib}); err != nil || lv.Status.Phase != v1alpha1.PhaseReady {
		t.Errorf("retried expansion: %v (%+v)", err, lv)
	}
	if err := cv.Delete(ctx, id); err != nil {
		t.Errorf("delete: %v", err)
	}
	stripedLocalVolumes(ctx, t, cl, cv, typeNames[0], node)
	snapshotsAndClones(ctx, t, cl, cv, node)
}

// snapshotsAndClones: the schema takes the LocalSnapshot the controller
// writes and the status the node agent reports (creation time, size,
// readyToUse), and a LocalVolume whose spec.source is that snapshot or a
// volume; spec.source cannot change once written. Everything is deleted
// again through the node's finalizers.
func snapshotsAndClones(ctx context.Context, t *testing.T, cl client.Client, cv *carvecluster.Volumes, node string) {
	src := names.VolumeID("pvc-" + lvm.ThinType)
	ls, err := cv.CreateSnapshot(ctx, "snap-schema", src)
	if err != nil {
		t.Fatalf("snapshot of %s: %v", src, err)
	}
	if ls.Status.Phase != v1alpha1.PhaseReady || !ls.Status.ReadyToUse || ls.Status.SizeBytes != 1<<30 || ls.Status.CreationTime == nil ||
		ls.Status.SnapshotID != ls.Name {
		t.Errorf("LocalSnapshot on the server: status %+v", ls.Status)
	}
	for _, s := range []*v1alpha1.VolumeSource{{Kind: v1alpha1.SourceSnapshot, ID: ls.Name}, {Kind: v1alpha1.SourceVolume, ID: src}} {
		lv, err := cv.Create(ctx, carvecluster.CreateRequest{Name: "pvc-from-" + string(s.Kind), Range: volume.Range{RequiredBytes: 1 << 30},
			Source: s})
		if err != nil {
			t.Fatalf("volume from %+v: %v", s, err)
		}
		if lv.Status.Phase != v1alpha1.PhaseReady || lv.Spec.Source == nil || *lv.Spec.Source != *s || lv.Spec.NodeName != node {
			t.Errorf("LocalVolume from %+v on the server: spec %+v status %+v", s, lv.Spec, lv.Status)
		}
		lv.Spec.Source = &v1alpha1.VolumeSource{Kind: v1alpha1.SourceVolume, ID: names.VolumeID("other")}
		if err := cl.Update(ctx, lv); !apierrors.IsInvalid(err) {
			t.Errorf("changing spec.source: %v, want Invalid", err)
		}
		if err := cv.Delete(ctx, lv.Name); err != nil {
			t.Errorf("delete the volume from %+v: %v", s, err)
		}
	}
	bad := &v1alpha1.LocalSnapshot{ObjectMeta: metav1.ObjectMeta{Name: names.SnapshotID("snap-bad")},
		Spec: v1alpha1.LocalSnapshotSpec{SnapshotName: "snap-bad", NodeName: "no-such-node"}}
	if err := cl.Create(ctx, bad); !apierrors.IsInvalid(err) {
		t.Errorf("LocalSnapshot without a source: %v, want Invalid", err)
	}
	if err := cv.DeleteSnapshot(ctx, ls.Name); err != nil {
		t.Errorf("delete the snapshot: %v", err)
	}
	if err := cl.Get(ctx, types.NamespacedName{Name: ls.Name}, &v1alpha1.LocalSnapshot{}); !apierrors.IsNotFound(err) {
		t.Errorf("LocalSnapshot after DeleteSnapshot: %v, want NotFound", err)
	}
}

// stripedLocalVolumes: the schema takes the striping the controller writes
// (stripes "all" with a stripe size; the in-memory pool cannot stripe, so
// the node answers InvalidArgument as in node mode) and refuses what the
// code never writes: a count outside 1-128, a stripe size without stripes
// or below 4 KiB, a striping changed after creation.
func stripedLocalVolumes(ctx context.Context, t *testing.T, cl client.Client, cv *carvecluster.Volumes, pool, node string) {
	_, err := cv.Create(ctx, carvecluster.CreateRequest{Name: "pvc-striped", Pool: pool, Range: volume.Range{RequiredBytes: 1 << 30},
		Requisite: []string{node}, Striping: volume.Striping{Stripes: backend.StripesAll, StripeSizeBytes: 64 << 10}})
	var nf *carvecluster.NodeFailure
	if !errors.As(err, &nf) || nf.Code != "InvalidArgument" {
		t.Errorf("striped volume in a pool that cannot stripe: %v, want the node's InvalidArgument", err)
	}
	lv := func(name, stripes string, stripeSize int64) *v1alpha1.LocalVolume {
		return &v1alpha1.LocalVolume{ObjectMeta: metav1.ObjectMeta{Name: names.VolumeID(name)},
			Spec: v1alpha1.LocalVolumeSpec{VolumeName: name, NodeName: "no-such-node", SizeBytes: 1 << 30, Stripes: stripes, StripeSizeBytes: stripeSize}}
	}
	for _, bad := range []*v1alpha1.LocalVolume{
		lv("pvc-s0", "0", 0), lv("pvc-s129", "129", 0), lv("pvc-stwo", "two", 0), lv("pvc-splus", "+2", 0),
		lv("pvc-ssize", "", 64<<10), lv("pvc-ssmall", "2", 512),
	} {
		if err := cl.Create(ctx, bad); !apierrors.IsInvalid(err) {
			t.Errorf("LocalVolume with stripes %q, stripeSizeBytes %d: %v, want Invalid", bad.Spec.Stripes, bad.Spec.StripeSizeBytes, err)
		}
	}
	good := lv("pvc-s128", "128", 4<<10)
	if err := cl.Create(ctx, good); err != nil {
		t.Fatalf("LocalVolume with stripes 128 of 4 KiB: %v", err)
	}
	good.Spec.Stripes = "2"
	if err := cl.Update(ctx, good); !apierrors.IsInvalid(err) {
		t.Errorf("changing stripes: %v, want Invalid", err)
	}
	if err := cl.Delete(ctx, good); err != nil {
		t.Error(err)
	}
}
