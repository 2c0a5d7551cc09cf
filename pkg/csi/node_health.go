package csi

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/names"
)

// NodeGetVolumeHealth reports a volume's health from the node (capability
// GET_VOLUME_HEALTH; CSI 1.13 replaced NodeGetVolumeStats' alpha
// volume_condition with this RPC). A volume is INACCESSIBLE when the backend
// says part of it is gone (lvm's lv_health_status "partial": a PV holding
// part of it is missing) or when it has no device (a disabled PMEM
// namespace); no entry means healthy. An unknown volume is NotFound.
func (n *Node) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume id is missing")
	}
	id := req.GetVolumeId()
	if !names.IsVolumeID(id) {
		id = names.VolumeID(id) // an inline volume
	}
	v, err := n.Vols.Find(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	h := &csi.VolumeHealth{VolumeId: req.GetVolumeId()}
	if reason := volumeProblem(v); reason != "" {
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
			Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: reason})
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: h}, nil
}

// volumeProblem says what is wrong with v, or "".
func volumeProblem(v *backend.Volume) string {
	switch {
	case v.Condition != "":
		return v.Condition
	case v.DevicePath == "":
		return fmt.Sprintf("volume %s in pool %s has no device", v.ID, v.Pool)
	}
	return ""
}
