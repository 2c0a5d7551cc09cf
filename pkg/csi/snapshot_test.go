package csi

import (
	"context"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/pkg/volume"
)

// snapController serves a node-local Controller over a thick pool "thick"
// (the default) and a snapshotting pool "thin" on a socket.
func snapController(t *testing.T) csi.ControllerClient {
	t.Helper()
	vols, err := volume.NewManager([]volume.Pool{
		{Name: "thick", Backend: backendtest.NewMemory("thick", 10*gib, 4*mib)},
		{Name: "thin", Backend: backendtest.NewSnapshots("thin", 10*gib, 4*mib)},
	}, "thick")
	if err != nil {
		t.Fatal(err)
	}
	return csi.NewControllerClient(serve(t, NewServer(&Identity{Name: "carve.csi.dev", Version: "test", Ready: vols.Check, Controller: true},
		&LocalController{Vols: vols, NodeID: "node-1", Locks: &keylock.Locks{}}, nil)))
}

func hasCap(resp *csi.ControllerGetCapabilitiesResponse, want csi.ControllerServiceCapability_RPC_Type) bool {
	for _, c := range resp.GetCapabilities() {
		if c.GetRpc().GetType() == want {
			return true
		}
	}
	return false
}

// Snapshot capabilities are offered only with a snapshotting pool.
func TestSnapshotCapabilities(t *testing.T) {
	ctx := context.Background()
	resp, err := snapController(t).ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []csi.ControllerServiceCapability_RPC_Type{csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS, csi.ControllerServiceCapability_RPC_CLONE_VOLUME} {
		if !hasCap(resp, c) {
			t.Errorf("with an lvm-thin pool: %s not offered", c)
		}
	}
	resp, err = newRig(t).ctrl.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if hasCap(resp, csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT) || hasCap(resp, csi.ControllerServiceCapability_RPC_CLONE_VOLUME) {
		t.Error("snapshots offered without a pool that can take them")
	}
}

func TestSnapshotCalls(t *testing.T) {
	ctx := context.Background()
	c := snapController(t)
	caps := []*csi.VolumeCapability{mountCap("ext4")}
	create := func(name, pool string, size int64, src *csi.VolumeContentSource) (*csi.Volume, error) {
		params := map[string]string{}
		if pool != "" {
			params["pool"] = pool
		}
		resp, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: caps, Parameters: params,
			CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeContentSource: src})
		return resp.GetVolume(), err
	}
	vol, err := create("pvc-src", "thin", gib, nil)
	if err != nil {
		t.Fatal(err)
	}
	thick, err := create("pvc-thick", "", gib, nil)
	if err != nil {
		t.Fatal(err)
	}
	snapReq := &csi.CreateSnapshotRequest{Name: "snapshot-1", SourceVolumeId: vol.VolumeId}
	s, err := c.CreateSnapshot(ctx, snapReq)
	if err != nil {
		t.Fatal(err)
	}
	snap := s.GetSnapshot()
	if snap.SnapshotId != names.SnapshotID("snapshot-1") || snap.SourceVolumeId != vol.VolumeId || snap.SizeBytes != gib || !snap.ReadyToUse || snap.CreationTime == nil {
		t.Fatalf("CreateSnapshot = %+v", snap)
	}
	if again, err := c.CreateSnapshot(ctx, snapReq); err != nil || again.GetSnapshot().SnapshotId != snap.SnapshotId {
		t.Fatalf("retry = %+v, %v", again, err)
	}
	for _, tc := range []struct {
		name string
		req  *csi.CreateSnapshotRequest
		code codes.Code
	}{
		{"no name", &csi.CreateSnapshotRequest{SourceVolumeId: vol.VolumeId}, codes.InvalidArgument},
		{"no source", &csi.CreateSnapshotRequest{Name: "s"}, codes.InvalidArgument},
		{"unknown source", &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: names.VolumeID("pvc-gone")}, codes.NotFound},
		{"name of another volume's snapshot", &csi.CreateSnapshotRequest{Name: "snapshot-1", SourceVolumeId: thick.VolumeId}, codes.AlreadyExists},
		{"thick source", &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: thick.VolumeId}, codes.InvalidArgument},
		{"parameter", &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: vol.VolumeId, Parameters: map[string]string{"x": "y"}}, codes.InvalidArgument},
		{"snapshot id as source", &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: names.SnapshotID("snapshot-1")}, codes.NotFound},
	} {
		if _, err := c.CreateSnapshot(ctx, tc.req); status.Code(err) != tc.code {
			t.Errorf("CreateSnapshot %s: %v, want %s", tc.name, err, tc.code)
		}
	}

	// csi-snapshotter --extra-create-metadata adds these; they are not VolumeSnapshotClass parameters.
	if _, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snapshot-1", SourceVolumeId: vol.VolumeId, Parameters: map[string]string{
		"csi.storage.k8s.io/volumesnapshot/name": "s1", "csi.storage.k8s.io/volumesnapshot/namespace": "default",
		"csi.storage.k8s.io/volumesnapshotcontent/name": "snapcontent-1"}}); err != nil {
		t.Fatalf("CreateSnapshot with the snapshotter's metadata: %v", err)
	}
	// A source of one kind naming the other: NotFound (CSI spec), never a copy of the wrong thing.
	for name, src := range map[string]*csi.VolumeContentSource{
		"snapshot source with a volume id": {Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: vol.VolumeId}}},
		"volume source with a snapshot id": {Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: snap.SnapshotId}}},
	} {
		if _, err := create("pvc-kind", "", gib, src); status.Code(err) != codes.NotFound {
			t.Errorf("%s: %v, want NotFound", name, err)
		}
	}

	restored, err := create("pvc-restored", "", mib, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.SnapshotId}}})
	if err != nil || restored.CapacityBytes != gib || restored.VolumeContext["pool"] != "thin" || restored.GetContentSource().GetSnapshot().GetSnapshotId() != snap.SnapshotId {
		t.Fatalf("restore = %+v, %v", restored, err)
	}
	clone, err := create("pvc-clone", "thin", 2*gib, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: vol.VolumeId}}})
	if err != nil || clone.CapacityBytes != 2*gib || clone.GetContentSource().GetVolume().GetVolumeId() != vol.VolumeId {
		t.Fatalf("clone = %+v, %v", clone, err)
	}
	for name, src := range map[string]*csi.VolumeContentSource{
		"missing snapshot": {Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: names.SnapshotID("never")}}},
		"missing volume":   {Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: names.VolumeID("never")}}},
	} {
		if _, err := create("pvc-"+name[:7], "", gib, src); status.Code(err) != codes.NotFound {
			t.Errorf("create from a %s: %v, want NotFound", name, err)
		}
	}
	if _, err := create("pvc-thick-clone", "", gib, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: thick.VolumeId}}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("clone of a thick volume: %v, want InvalidArgument", err)
	}

	// ListSnapshots: filters and paging.
	if _, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snapshot-2", SourceVolumeId: clone.VolumeId}); err != nil {
		t.Fatal(err)
	}
	all, err := c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	if err != nil || len(all.Entries) != 2 {
		t.Fatalf("ListSnapshots = %+v, %v", all, err)
	}
	bySource, err := c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: clone.VolumeId})
	if err != nil || len(bySource.Entries) != 1 || bySource.Entries[0].Snapshot.SnapshotId != names.SnapshotID("snapshot-2") {
		t.Fatalf("by source = %+v, %v", bySource, err)
	}
	byID, err := c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: names.SnapshotID("nope")})
	if err != nil || len(byID.Entries) != 0 {
		t.Fatalf("unknown id = %+v, %v", byID, err)
	}
	page1, err := c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: 1})
	if err != nil || len(page1.Entries) != 1 || page1.NextToken == "" {
		t.Fatalf("page 1 = %+v, %v", page1, err)
	}
	page2, err := c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: 1, StartingToken: page1.NextToken})
	if err != nil || len(page2.Entries) != 1 || page2.NextToken != "" || page2.Entries[0].Snapshot.SnapshotId == page1.Entries[0].Snapshot.SnapshotId {
		t.Fatalf("page 2 = %+v, %v", page2, err)
	}
	if _, err := c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{StartingToken: "bogus"}); status.Code(err) != codes.Aborted {
		t.Errorf("bogus token: %v, want Aborted", err)
	}

	// The source volume goes, the snapshot stays and still restores.
	if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.VolumeId}); err != nil {
		t.Fatal(err)
	}
	if _, err := create("pvc-late", "", gib, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.SnapshotId}}}); err != nil {
		t.Fatalf("restore after the source was deleted: %v", err)
	}
	// A DeleteVolume given a snapshot id touches nothing.
	if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: snap.SnapshotId}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.SnapshotId}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("DeleteSnapshot without an id: %v", err)
	}
	if left, _ := c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{}); len(left.GetEntries()) != 1 {
		t.Fatalf("after deleting one of two: %+v", left)
	}
}
