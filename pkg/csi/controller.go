package csi

import (
	"context"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/pkg/volume"
)

// TopologyKey is the segment key that names a node.
const TopologyKey = "carve.csi.dev/node"

// ParamPool selects a pool in StorageClass parameters and inline attributes.
const ParamPool = "pool"

// reservedPrefix marks parameters that Kubernetes components add themselves.
const reservedPrefix = "csi.storage.k8s.io/"

// LocalController is the node-local Controller service: it creates volumes in
// this node's pools.
type LocalController struct {
	csi.UnimplementedControllerServer
	Vols   *volume.Manager
	NodeID string
	Locks  *keylock.Locks
	// Changed, if set, is called after a volume was created, deleted or expanded.
	Changed func()
}

func (c *LocalController) changed() {
	if c.Changed != nil {
		c.Changed()
	}
}

func (c *LocalController) topology() []*csi.Topology {
	return []*csi.Topology{{Segments: map[string]string{TopologyKey: c.NodeID}}}
}

func checkParameters(params map[string]string) (pool string, err error) {
	for k, v := range params {
		switch {
		case k == ParamPool:
			pool = v
		case strings.HasPrefix(k, reservedPrefix):
		default:
			return "", invalid("unknown parameter %q (supported: %s)", k, ParamPool)
		}
	}
	return pool, nil
}

// reachable reports whether the requirement allows this node.
func (c *LocalController) reachable(req *csi.TopologyRequirement) bool {
	if len(req.GetRequisite()) == 0 {
		return true
	}
	for _, t := range req.GetRequisite() {
		if n, ok := t.GetSegments()[TopologyKey]; ok && n == c.NodeID {
			return true
		}
	}
	return false
}

func (c *LocalController) lock(ctx context.Context, id string) (func(), error) {
	unlock, err := c.Locks.Lock(ctx, id)
	if err != nil {
		return nil, status.Errorf(codes.Aborted, "waiting for another operation on volume %s: %v", id, err)
	}
	return unlock, nil
}

func (c *LocalController) csiVolume(v *backend.Volume) *csi.Volume {
	return &csi.Volume{
		VolumeId:           v.ID,
		CapacityBytes:      v.SizeBytes,
		VolumeContext:      map[string]string{ParamPool: v.Pool},
		AccessibleTopology: c.topology(),
	}
}

func (c *LocalController) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, invalid("volume name is missing")
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, invalid("%v", err)
	}
	if req.GetVolumeContentSource() != nil {
		return nil, invalid("volume content sources (snapshots, clones) are not supported")
	}
	pool, err := checkParameters(req.GetParameters())
	if err != nil {
		return nil, err
	}
	r := volume.Range{RequiredBytes: req.GetCapacityRange().GetRequiredBytes(), LimitBytes: req.GetCapacityRange().GetLimitBytes()}
	if r.RequiredBytes < 0 || r.LimitBytes < 0 {
		return nil, invalid("capacity range has a negative size")
	}
	if !c.reachable(req.GetAccessibilityRequirements()) {
		return nil, status.Errorf(codes.ResourceExhausted, "requisite topology does not include node %q", c.NodeID)
	}
	unlock, err := c.lock(ctx, names.VolumeID(req.GetName()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := c.Vols.Create(ctx, volume.CreateRequest{Name: req.GetName(), Pool: pool, Range: r})
	if err != nil {
		return nil, toStatus(err)
	}
	c.changed()
	return &csi.CreateVolumeResponse{Volume: c.csiVolume(v)}, nil
}

func (c *LocalController) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume id is missing")
	}
	unlock, err := c.lock(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := c.Vols.Delete(ctx, req.GetVolumeId()); err != nil {
		return nil, toStatus(err)
	}
	c.changed()
	return &csi.DeleteVolumeResponse{}, nil
}

func (c *LocalController) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume id is missing")
	}
	if req.GetCapacityRange() == nil {
		return nil, invalid("capacity range is missing")
	}
	r := volume.Range{RequiredBytes: req.GetCapacityRange().GetRequiredBytes(), LimitBytes: req.GetCapacityRange().GetLimitBytes()}
	if r.RequiredBytes < 0 || r.LimitBytes < 0 {
		return nil, invalid("capacity range has a negative size")
	}
	if c := req.GetVolumeCapability(); c != nil {
		if err := checkCapability(c); err != nil {
			return nil, invalid("%v", err)
		}
	}
	unlock, err := c.lock(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := c.Vols.Expand(ctx, req.GetVolumeId(), r)
	if err != nil {
		return nil, toStatus(err)
	}
	c.changed()
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: v.SizeBytes, NodeExpansionRequired: !isBlock(req.GetVolumeCapability())}, nil
}

func (c *LocalController) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume id is missing")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, invalid("volume capabilities are missing")
	}
	if _, err := c.Vols.Find(ctx, req.GetVolumeId()); err != nil {
		return nil, toStatus(err)
	}
	if _, err := checkParameters(req.GetParameters()); err != nil {
		return nil, err
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

func (c *LocalController) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, invalid("max_entries must not be negative")
	}
	// The token is the id to resume at: stable when volumes come and go between pages.
	start := req.GetStartingToken()
	if start != "" && !names.IsVolumeID(start) {
		return nil, status.Errorf(codes.Aborted, "starting token %q was not issued by this driver", start)
	}
	vols, err := c.Vols.List(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &csi.ListVolumesResponse{}
	for i := range vols {
		if vols[i].ID < start {
			continue
		}
		if req.GetMaxEntries() > 0 && len(resp.Entries) == int(req.GetMaxEntries()) {
			resp.NextToken = vols[i].ID
			break
		}
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: c.csiVolume(&vols[i])})
	}
	return resp, nil
}

func (c *LocalController) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume id is missing")
	}
	v, err := c.Vols.Find(ctx, req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerGetVolumeResponse{
		Volume: c.csiVolume(v),
		Status: &csi.ControllerGetVolumeResponse_VolumeStatus{},
	}, nil
}

func (c *LocalController) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	pool, err := checkParameters(req.GetParameters())
	if err != nil {
		return nil, err
	}
	for _, vc := range req.GetVolumeCapabilities() {
		if checkCapability(vc) != nil {
			return &csi.GetCapacityResponse{}, nil // no room for volumes we cannot make
		}
	}
	if seg := req.GetAccessibleTopology().GetSegments(); seg != nil && seg[TopologyKey] != c.NodeID {
		return &csi.GetCapacityResponse{}, nil
	}
	capa, err := c.Vols.Capacity(ctx, pool)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &csi.GetCapacityResponse{AvailableCapacity: capa.FreeBytes}
	resp.MaximumVolumeSize = wrapInt64(capa.MaxVolumeBytes)
	if capa.AlignBytes > 0 {
		resp.MinimumVolumeSize = wrapInt64(capa.AlignBytes)
	}
	return resp, nil
}

func (c *LocalController) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_VOLUME,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}
