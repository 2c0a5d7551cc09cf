package csi

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/pkg/cluster"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/nodeagent"
	"github.com/carve-csi/carve/pkg/volume"
)

// snapNode runs a node agent (LocalVolumes and LocalSnapshots) over a thin-like
// pool "thin" (the default) and a thick pool "thick" against the fake API,
// without a manager.
func snapNode(ctx context.Context, t *testing.T, c client.Client, name string) (backendtest.Snapshots, *backendtest.Memory) {
	thin := backendtest.NewSnapshots("thin", 20*gib, 4<<20)
	thick := backendtest.NewMemory("thick", 20*gib, 4<<20)
	vols, err := volume.NewManager([]volume.Pool{{Name: "thin", Backend: thin}, {Name: "thick", Backend: thick}}, "thin")
	if err != nil {
		t.Fatal(err)
	}
	agent := &nodeagent.Agent{NodeName: name, Vols: vols, Locks: &keylock.Locks{}, Client: c}
	if err := agent.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	snaps := nodeagent.Snapshots{A: agent}
	go func() {
		for ctx.Err() == nil {
			var lvs v1alpha1.LocalVolumeList
			_ = c.List(ctx, &lvs)
			for _, lv := range lvs.Items {
				_, _ = agent.Reconcile(ctx, reconcile.Request{NamespacedName: types.NamespacedName{Name: lv.Name}})
			}
			var lss v1alpha1.LocalSnapshotList
			_ = c.List(ctx, &lss)
			for _, ls := range lss.Items {
				_, _ = snaps.Reconcile(ctx, reconcile.Request{NamespacedName: types.NamespacedName{Name: ls.Name}})
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return thin, thick
}

// TestClusterSnapshotsAndClones: the cluster Controller (--mode=controller)
// over a node agent with a snapshotting pool, a fake client being the API:
// snapshots (idempotent, NotFound, AlreadyExists, a thick pool's
// InvalidArgument naming lvm-thin), ListSnapshots with filters and paging,
// volumes from a snapshot and from a volume placed on the source's node
// whatever the preferred topology (the response says that node and carries
// the content source), the codes of a topology, size or pool that excludes
// the source with nothing made, and every delete.
func TestClusterSnapshotsAndClones(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	scheme, err := nodeagent.Scheme()
	if err != nil {
		t.Fatal(err)
	}
	c := fake.NewClientBuilder().WithScheme(scheme).
		WithStatusSubresource(&v1alpha1.LocalVolume{}, &v1alpha1.LocalSnapshot{}, &v1alpha1.NodeStorage{}).
		WithObjects(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "uid-1"}},
			&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2", UID: "uid-2"}}).Build()
	thin1, thick1 := snapNode(ctx, t, c, "n1")
	thin2, _ := snapNode(ctx, t, c, "n2")
	cc := &ClusterController{Vols: &cluster.Volumes{Client: c, Poll: 5 * time.Millisecond}, Locks: &keylock.Locks{}}
	caps := []*csi.VolumeCapability{mountCap("ext4")}

	capsResp, err := cc.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var have []csi.ControllerServiceCapability_RPC_Type
	for _, c := range capsResp.GetCapabilities() {
		have = append(have, c.GetRpc().GetType())
	}
	for _, want := range []csi.ControllerServiceCapability_RPC_Type{csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS, csi.ControllerServiceCapability_RPC_CLONE_VOLUME} {
		if !slices.Contains(have, want) {
			t.Errorf("capabilities %v lack %v", have, want)
		}
	}

	create := func(req *csi.CreateVolumeRequest) (*csi.Volume, error) {
		req.VolumeCapabilities = caps
		resp, err := cc.CreateVolume(ctx, req)
		return resp.GetVolume(), err
	}
	src, err := create(&csi.CreateVolumeRequest{Name: "pvc-src", CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * gib},
		AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{seg("n1")}}})
	if err != nil {
		t.Fatal(err)
	}
	thickVol, err := create(&csi.CreateVolumeRequest{Name: "pvc-thick", Parameters: map[string]string{ParamPool: "thick"},
		CapacityRange:             &csi.CapacityRange{RequiredBytes: gib},
		AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{seg("n1")}}})
	if err != nil {
		t.Fatal(err)
	}

	// Snapshots.
	snap := func(name, source string) (*csi.Snapshot, error) {
		resp, err := cc.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: source})
		return resp.GetSnapshot(), err
	}
	s1, err := snap("snap-1", src.GetVolumeId())
	if err != nil {
		t.Fatal(err)
	}
	if !s1.GetReadyToUse() || s1.GetSizeBytes() != 2*gib || s1.GetSourceVolumeId() != src.GetVolumeId() || s1.GetCreationTime() == nil {
		t.Fatalf("snapshot %v", s1)
	}
	if s, err := thin1.GetSnapshot(ctx, s1.GetSnapshotId()); err != nil || s.SourceID != src.GetVolumeId() {
		t.Fatalf("snapshot on node n1: %+v, %v", s, err)
	}
	if again, err := snap("snap-1", src.GetVolumeId()); err != nil || again.GetSnapshotId() != s1.GetSnapshotId() {
		t.Fatalf("retry: %v, %v", again, err)
	}
	s2, err := snap("snap-2", src.GetVolumeId())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, source string
		code         codes.Code
		contains     string
	}{
		{"snap-1", thickVol.GetVolumeId(), codes.AlreadyExists, ""},
		{"snap-x", "carve-nowhere-0123456789abcdef", codes.NotFound, ""},
		{"snap-thick", thickVol.GetVolumeId(), codes.InvalidArgument, "lvm-thin"},
		{"", src.GetVolumeId(), codes.InvalidArgument, ""},
	} {
		_, err := snap(tc.name, tc.source)
		if status.Code(err) != tc.code || !strings.Contains(fmt.Sprint(err), tc.contains) {
			t.Errorf("CreateSnapshot(%q, %s): %v, want %s mentioning %q", tc.name, tc.source, err, tc.code, tc.contains)
		}
	}
	if _, err := cc.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-p", SourceVolumeId: src.GetVolumeId(),
		Parameters: map[string]string{"bogus": "1"}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("unknown parameter: %v", err)
	}

	// ListSnapshots: all, by id, by source, paged, a bad token.
	list := func(req *csi.ListSnapshotsRequest) ([]string, string, error) {
		resp, err := cc.ListSnapshots(ctx, req)
		var ids []string
		for _, e := range resp.GetEntries() {
			ids = append(ids, e.GetSnapshot().GetSnapshotId())
		}
		return ids, resp.GetNextToken(), err
	}
	all := []string{s1.GetSnapshotId(), s2.GetSnapshotId()}
	slices.Sort(all)
	if ids, next, err := list(&csi.ListSnapshotsRequest{}); err != nil || !slices.Equal(ids, all) || next != "" {
		t.Fatalf("ListSnapshots: %v %q %v, want %v", ids, next, err, all)
	}
	if ids, _, err := list(&csi.ListSnapshotsRequest{SnapshotId: s2.GetSnapshotId()}); err != nil || !slices.Equal(ids, []string{s2.GetSnapshotId()}) {
		t.Fatalf("by id: %v %v", ids, err)
	}
	if ids, _, err := list(&csi.ListSnapshotsRequest{SourceVolumeId: thickVol.GetVolumeId()}); err != nil || len(ids) != 0 {
		t.Fatalf("by another source: %v %v", ids, err)
	}
	ids, next, err := list(&csi.ListSnapshotsRequest{MaxEntries: 1})
	if err != nil || !slices.Equal(ids, all[:1]) || next != all[1] {
		t.Fatalf("page 1: %v %q %v", ids, next, err)
	}
	if ids, next, err := list(&csi.ListSnapshotsRequest{MaxEntries: 1, StartingToken: next}); err != nil || !slices.Equal(ids, all[1:]) || next != "" {
		t.Fatalf("page 2: %v %q %v", ids, next, err)
	}
	if _, _, err := list(&csi.ListSnapshotsRequest{StartingToken: "bogus"}); status.Code(err) != codes.Aborted {
		t.Fatalf("bad token: %v, want Aborted", err)
	}

	// Volumes from the snapshot and from the volume: on n1 though n2 is preferred.
	fromSnap := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: s1.GetSnapshotId()}}}
	fromVol := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.GetVolumeId()}}}
	anyNode := &csi.TopologyRequirement{Requisite: []*csi.Topology{seg("n1"), seg("n2")}, Preferred: []*csi.Topology{seg("n2")}}
	var clones []string
	for i, cs := range []*csi.VolumeContentSource{fromSnap, fromVol, fromSnap} {
		req := &csi.CreateVolumeRequest{Name: fmt.Sprintf("pvc-clone-%d", i), VolumeContentSource: cs, AccessibilityRequirements: anyNode,
			CapacityRange: &csi.CapacityRange{RequiredBytes: gib}}
		v, err := create(req)
		if err != nil {
			t.Fatalf("clone %d: %v", i, err)
		}
		if v.GetAccessibleTopology()[0].GetSegments()[TopologyKey] != "n1" || v.GetCapacityBytes() != 2*gib || v.GetContentSource() != cs {
			t.Fatalf("clone %d: %v; want n1, 2 GiB, content source %v", i, v, cs)
		}
		dev, err := thin1.Get(ctx, v.GetVolumeId())
		if err != nil || dev.SizeBytes != 2*gib {
			t.Fatalf("clone %d on n1: %+v, %v", i, dev, err)
		}
		if again, err := create(req); err != nil || again.GetVolumeId() != v.GetVolumeId() {
			t.Fatalf("clone %d retry: %v, %v", i, again, err)
		}
		clones = append(clones, v.GetVolumeId())
	}
	if vs, _ := thin2.List(ctx); len(vs) != 0 {
		t.Fatalf("volumes on n2: %+v", vs)
	}

	// Refused before anything is made, or by the node with its code; nothing half made.
	devs := func() int {
		v1, _ := thin1.List(ctx)
		v2, _ := thick1.List(ctx)
		return len(v1) + len(v2)
	}
	before := devs()
	for _, tc := range []struct {
		what string
		req  *csi.CreateVolumeRequest
		code codes.Code
		text string
	}{
		{"requisite without the source's node", &csi.CreateVolumeRequest{VolumeContentSource: fromSnap,
			AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{seg("n2")}}}, codes.ResourceExhausted, "n1"},
		{"limit below the source", &csi.CreateVolumeRequest{VolumeContentSource: fromSnap,
			CapacityRange: &csi.CapacityRange{RequiredBytes: gib, LimitBytes: gib}}, codes.OutOfRange, ""},
		{"another pool", &csi.CreateVolumeRequest{VolumeContentSource: fromVol, Parameters: map[string]string{ParamPool: "thick"}},
			codes.InvalidArgument, "pool"},
		{"a thick volume", &csi.CreateVolumeRequest{VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: thickVol.GetVolumeId()}}}}, codes.InvalidArgument, "lvm-thin"},
		{"unknown snapshot", &csi.CreateVolumeRequest{VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "carvesnap-nowhere-0123456789abcdef"}}}}, codes.NotFound, ""},
		{"more than the pool holds", &csi.CreateVolumeRequest{VolumeContentSource: fromSnap,
			CapacityRange: &csi.CapacityRange{RequiredBytes: 19 * gib}}, codes.ResourceExhausted, ""},
	} {
		tc.req.Name = "pvc-bad"
		_, err := create(tc.req)
		if status.Code(err) != tc.code || !strings.Contains(fmt.Sprint(err), tc.text) {
			t.Errorf("%s: %v, want %s mentioning %q", tc.what, err, tc.code, tc.text)
		}
	}
	if n := devs(); n != before {
		t.Fatalf("%d devices after refused requests, want %d", n, before)
	}
	var lvs v1alpha1.LocalVolumeList
	if err := c.List(ctx, &lvs); err != nil || len(lvs.Items) != 2+len(clones) {
		t.Fatalf("%d LocalVolumes after refused requests, want %d (%v)", len(lvs.Items), 2+len(clones), err)
	}

	// The source volume goes; its snapshots stay and still restore.
	if _, err := cc.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	late, err := create(&csi.CreateVolumeRequest{Name: "pvc-late", VolumeContentSource: fromSnap})
	if err != nil || late.GetCapacityBytes() != 2*gib {
		t.Fatalf("a volume from a snapshot whose source is gone: %v, %v", late, err)
	}
	clones = append(clones, late.GetVolumeId())

	// Delete everything: nothing left in the pools or the API.
	for _, id := range append(clones, thickVol.GetVolumeId()) {
		if _, err := cc.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range append(all, all[0], "carvesnap-never-0123456789abcdef", "bogus") {
		if _, err := cc.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
			t.Fatalf("DeleteSnapshot(%s): %v", id, err)
		}
	}
	if _, err := cc.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("DeleteSnapshot without an id: %v", err)
	}
	if n := devs(); n != 0 {
		t.Fatalf("%d devices left", n)
	}
	if s, _ := thin1.ListSnapshots(ctx); len(s) != 0 {
		t.Fatalf("snapshots left: %+v", s)
	}
	var lss v1alpha1.LocalSnapshotList
	if err := c.List(ctx, &lss); err != nil || len(lss.Items) != 0 {
		t.Fatalf("%d LocalSnapshots left (%v)", len(lss.Items), err)
	}
	if err := c.List(ctx, &lvs); err != nil || len(lvs.Items) != 0 {
		t.Fatalf("%d LocalVolumes left (%v)", len(lvs.Items), err)
	}
	if capa, err := cc.GetCapacity(ctx, &csi.GetCapacityRequest{AccessibleTopology: seg("n1")}); err != nil || capa.GetAvailableCapacity() != 20*gib {
		t.Fatalf("capacity of n1 after everything went: %v, %v", capa, err)
	}
}
