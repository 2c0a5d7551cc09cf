package csi

import (
	"context"
	"fmt"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/backend"
)

func TestCreateVolumeRejectsBadInputAndCreatesNothing(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	caps := []*csi.VolumeCapability{mountCap("ext4")}
	for _, tc := range []struct {
		name string
		req  *csi.CreateVolumeRequest
		code codes.Code
	}{
		{"no name", &csi.CreateVolumeRequest{VolumeCapabilities: caps}, codes.InvalidArgument},
		{"no capabilities", &csi.CreateVolumeRequest{Name: "v"}, codes.InvalidArgument},
		{"no access mode", &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: []*csi.VolumeCapability{{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}}}}, codes.InvalidArgument},
		{"multi-node mode", &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: []*csi.VolumeCapability{
			withMode(mountCap(""), csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}}, codes.InvalidArgument},
		{"unsupported fs", &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: []*csi.VolumeCapability{mountCap("zfs")}}, codes.InvalidArgument},
		{"unknown parameter", &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: caps, Parameters: map[string]string{"stripes": "2"}}, codes.InvalidArgument},
		{"unknown pool", &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: caps, Parameters: map[string]string{"pool": "gold"}}, codes.InvalidArgument},
		{"negative size", &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: caps, CapacityRange: &csi.CapacityRange{RequiredBytes: -1}}, codes.InvalidArgument},
		{"limit below required", &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: caps, CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * gib, LimitBytes: gib}}, codes.OutOfRange},
		{"limit below alignment", &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: caps, CapacityRange: &csi.CapacityRange{RequiredBytes: 1, LimitBytes: 1}}, codes.OutOfRange},
		{"pool too small", &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: caps, CapacityRange: &csi.CapacityRange{RequiredBytes: 11 * gib}}, codes.ResourceExhausted},
		{"other node required", &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: caps, AccessibilityRequirements: &csi.TopologyRequirement{
			Requisite: []*csi.Topology{{Segments: map[string]string{TopologyKey: "node-2"}}}}}, codes.ResourceExhausted},
		{"content source", &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: caps, VolumeContentSource: &csi.VolumeContentSource{
			Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "s"}}}}, codes.InvalidArgument},
	} {
		_, err := r.ctrl.CreateVolume(ctx, tc.req)
		if status.Code(err) != tc.code {
			t.Errorf("%s: got %v, want %s", tc.name, err, tc.code)
		}
	}
	if n := r.volumes(t); n != 0 {
		t.Fatalf("%d volumes created by bad requests", n)
	}
}

func TestCreateVolumeIdempotentAndTopology(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	req := &csi.CreateVolumeRequest{Name: "pvc-1", VolumeCapabilities: []*csi.VolumeCapability{blockCap()},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 5 * mib},
		Parameters:    map[string]string{"pool": "default", "csi.storage.k8s.io/pvc/name": "data"},
		AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{
			{Segments: map[string]string{TopologyKey: "node-2"}}, {Segments: map[string]string{TopologyKey: "node-1"}}}}}
	first, err := r.ctrl.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	v := first.GetVolume()
	if v.GetCapacityBytes() != 8*mib || v.GetAccessibleTopology()[0].GetSegments()[TopologyKey] != "node-1" {
		t.Fatalf("volume %v", v)
	}
	again, err := r.ctrl.CreateVolume(ctx, req)
	if err != nil || again.GetVolume().GetVolumeId() != v.GetVolumeId() {
		t.Fatalf("repeat: %v, %v", again, err)
	}
	req.CapacityRange = &csi.CapacityRange{RequiredBytes: gib}
	if _, err := r.ctrl.CreateVolume(ctx, req); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("incompatible repeat: %v", err)
	}
	if n := r.volumes(t); n != 1 {
		t.Fatalf("%d volumes, want 1", n)
	}
	for i := 0; i < 2; i++ {
		if _, err := r.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId()}); err != nil {
			t.Fatalf("delete #%d: %v", i, err)
		}
	}
	if _, err := r.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("delete without id: %v", err)
	}
	if _, err := r.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "some-other-drivers-volume"}); err != nil {
		t.Fatalf("delete of an id that is not ours must succeed: %v", err)
	}
}

func TestGetCapacity(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	if _, err := r.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: []*csi.VolumeCapability{mountCap("")},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 3 * gib}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		req       *csi.GetCapacityRequest
		available int64
	}{
		{"default pool", &csi.GetCapacityRequest{}, 7 * gib},
		{"this node", &csi.GetCapacityRequest{AccessibleTopology: &csi.Topology{Segments: map[string]string{TopologyKey: "node-1"}}}, 7 * gib},
		{"other node", &csi.GetCapacityRequest{AccessibleTopology: &csi.Topology{Segments: map[string]string{TopologyKey: "node-9"}}}, 0},
		{"unknown pool", &csi.GetCapacityRequest{Parameters: map[string]string{"pool": "gold"}}, 0},
		{"unsupported mode", &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{
			withMode(mountCap(""), csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY)}}, 0},
	} {
		resp, err := r.ctrl.GetCapacity(ctx, tc.req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if resp.GetAvailableCapacity() != tc.available {
			t.Errorf("%s: available %d, want %d", tc.name, resp.GetAvailableCapacity(), tc.available)
		}
		if tc.available > 0 && resp.GetMaximumVolumeSize().GetValue() != tc.available {
			t.Errorf("%s: maximum volume size %v", tc.name, resp.GetMaximumVolumeSize())
		}
	}
	if _, err := r.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"color": "red"}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("unknown parameter: %v", err)
	}
}

func TestListVolumesPaging(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		if _, err := r.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: n, VolumeCapabilities: []*csi.VolumeCapability{mountCap("")},
			CapacityRange: &csi.CapacityRange{RequiredBytes: mib}}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	token := ""
	for pages := 0; ; pages++ {
		resp, err := r.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 2, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetEntries()) > 2 {
			t.Fatalf("page of %d", len(resp.GetEntries()))
		}
		for _, e := range resp.GetEntries() {
			if seen[e.GetVolume().GetVolumeId()] {
				t.Fatalf("volume %s listed twice", e.GetVolume().GetVolumeId())
			}
			seen[e.GetVolume().GetVolumeId()] = true
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
		if pages > 5 {
			t.Fatal("paging does not end")
		}
	}
	if len(seen) != 5 {
		t.Fatalf("listed %d volumes, want 5", len(seen))
	}
	if _, err := r.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "garbage!"}); status.Code(err) != codes.Aborted {
		t.Fatalf("bad token: %v", err)
	}
	if _, err := r.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: -1}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("negative max: %v", err)
	}
}

func TestExpandAndValidate(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	v, err := r.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: []*csi.VolumeCapability{mountCap("")},
		CapacityRange: &csi.CapacityRange{RequiredBytes: gib}})
	if err != nil {
		t.Fatal(err)
	}
	id := v.GetVolume().GetVolumeId()
	resp, err := r.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2*gib + 1}, VolumeCapability: mountCap("")})
	if err != nil || resp.GetCapacityBytes() != 2*gib+4*mib || !resp.GetNodeExpansionRequired() {
		t.Fatalf("expand: %v, %v", resp, err)
	}
	if _, err := r.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 100 * gib}}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("expand beyond pool: %v", err)
	}
	if _, err := r.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "carve-0000000000000000",
		CapacityRange: &csi.CapacityRange{RequiredBytes: gib}}); status.Code(err) != codes.NotFound {
		t.Fatalf("expand missing volume: %v", err)
	}
	if _, err := r.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("expand without range: %v", err)
	}
	ok, err := r.ctrl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id,
		VolumeCapabilities: []*csi.VolumeCapability{mountCap("xfs")}})
	if err != nil || ok.GetConfirmed() == nil {
		t.Fatalf("validate supported: %v, %v", ok, err)
	}
	no, err := r.ctrl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id,
		VolumeCapabilities: []*csi.VolumeCapability{withMode(mountCap(""), csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}})
	if err != nil || no.GetConfirmed() != nil || no.GetMessage() == "" {
		t.Fatalf("validate unsupported: %v, %v", no, err)
	}
	if _, err := r.ctrl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "carve-0000000000000000",
		VolumeCapabilities: []*csi.VolumeCapability{mountCap("")}}); status.Code(err) != codes.NotFound {
		t.Fatalf("validate missing volume: %v", err)
	}
}

func TestIdentity(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	info, err := r.ids.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil || info.GetName() != "carve.csi.dev" {
		t.Fatalf("info %v, %v", info, err)
	}
	if p, err := r.ids.Probe(ctx, &csi.ProbeRequest{}); err != nil || !p.GetReady().GetValue() {
		t.Fatalf("probe %v, %v", p, err)
	}
	r.pool.FailNext = errFake
	if _, err := r.ids.Probe(ctx, &csi.ProbeRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("probe with a broken pool: %v", err)
	}
}

// A degraded pool (backend.ErrDegraded: a VG missing a PV) answers GetCapacity
// with 0 and no error, so external-provisioner replaces the stale
// CSIStorageCapacity instead of keeping it (issue 12, item 3).
func TestGetCapacityDegradedPool(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.pool.FailNext = fmt.Errorf("VG carve is missing 1 PV: %w", backend.ErrDegraded)
	resp, err := r.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if err != nil {
		t.Fatalf("degraded pool: %v, want 0 capacity and no error", err)
	}
	if resp.GetAvailableCapacity() != 0 || resp.GetMaximumVolumeSize().GetValue() != 0 {
		t.Fatalf("degraded pool advertises %d bytes, maximum %v; want 0", resp.GetAvailableCapacity(), resp.GetMaximumVolumeSize())
	}
	// Any other failure still surfaces as an error.
	r.pool.FailNext = backend.ErrUnavailable
	if _, err := r.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("unavailable pool: %v, want Unavailable", err)
	}
}
