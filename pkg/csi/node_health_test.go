package csi

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A volume whose PV went missing (lvm: lv_health_status "partial") is
// reported INACCESSIBLE through NodeGetVolumeHealth (CSI 1.13's successor of
// NodeGetVolumeStats' volume_condition), with the node capability that
// tells the CO to ask.
func TestNodeGetVolumeHealth(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	caps, err := r.nodeC.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	found := false
	for _, c := range caps.GetCapabilities() {
		found = found || c.GetRpc().GetType() == csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH
	}
	if err != nil || !found {
		t.Fatalf("capabilities %v, %v: want GET_VOLUME_HEALTH", caps, err)
	}
	id := r.create(t, "pvc-cond", mountCap("ext4"))
	staging := filepath.Join(r.kubelet, "plugins", "staging", "pvc-cond")
	target := filepath.Join(r.kubelet, "pods", "uid", "volumes", "pvc-cond", "mount")
	if _, err := r.nodeC.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap("ext4")}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.nodeC.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap("ext4")}); err != nil {
		t.Fatal(err)
	}
	h, err := r.nodeC.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id, VolumePublishPath: target})
	if err != nil || h.GetVolumeHealth().GetVolumeId() != id || len(h.GetVolumeHealth().GetHealthStatuses()) != 0 {
		t.Fatalf("healthy volume: %v, %v", h, err)
	}
	const why = `lvm reports logical volume vg/x as "partial": a physical volume holding part of it is missing`
	r.pool.SetCondition(id, why)
	h, err = r.nodeC.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id, VolumePublishPath: target})
	if s := h.GetVolumeHealth().GetHealthStatuses(); err != nil || len(s) != 1 ||
		s[0].GetStatus() != csi.VolumeHealthErrorType_INACCESSIBLE || s[0].GetReason() != why {
		t.Fatalf("volume with a missing PV: %v, %v", h, err)
	}
	if _, err := r.nodeC.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: "carve-0000000000000000"}); status.Code(err) != codes.NotFound {
		t.Fatalf("health of a missing volume: %v", err)
	}
}
