package csi

import (
	"context"
	"errors"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/cluster"
	"github.com/carve-csi/carve/pkg/errcode"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/names"
)

// ClusterController is the Controller service of --mode=controller: it places
// volumes on nodes through LocalVolume objects and never touches a device.
type ClusterController struct {
	csi.UnimplementedControllerServer
	Vols  *cluster.Volumes
	Locks *keylock.Locks
	// Attach advertises ControllerPublish/Unpublish, for deployments with an attacher.
	Attach bool
}

func (c *ClusterController) lock(ctx context.Context, id string) (func(), error) {
	unlock, err := c.Locks.Lock(ctx, id)
	if err != nil {
		return nil, status.Errorf(codes.Aborted, "waiting for another operation on volume %s: %v", id, err)
	}
	return unlock, nil
}

// clusterStatus maps errors of the cluster layer; a node's failure keeps the
// node's code. An API server that cannot answer now is Unavailable, and a call
// whose context ended is DeadlineExceeded (or Canceled) whatever the client
// made of it (client-go's rate limiter reports a wait past the deadline
// without the context's error): both are codes a provisioner retries.
func clusterStatus(ctx context.Context, err error) error {
	var nf *cluster.NodeFailure
	switch {
	case err == nil:
		return nil
	case errors.As(err, &nf):
		code, ok := errcode.ByName(nf.Code)
		if !ok {
			code = codes.Internal
		}
		return status.Error(code, err.Error())
	case errors.Is(err, cluster.ErrNoRoom):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, cluster.ErrNoPool):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, cluster.ErrNotPublished):
		// A node still starting: external-provisioner retries Unavailable as
		// a call still in progress, InvalidArgument as an infeasible request
		// ("Retries will be delayed").
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, cluster.ErrOldSchema), errors.Is(err, cluster.ErrNoSnapshotCRD):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, cluster.ErrSourcePool):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, cluster.ErrSourceElsewhere):
		// CSI spec, CreateVolume errors: "Unable to provision in
		// accessible_topology | 8 RESOURCE_EXHAUSTED | ... a new volume can
		// not be provisioned with the specified topology constraints". The
		// request itself is valid (not INVALID_ARGUMENT, "Source incompatible
		// or not supported", which is about the source and parameters), and
		// this code makes external-provisioner reschedule the pod.
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, cluster.ErrSourceNotReady):
		return status.Error(codes.Unavailable, err.Error())
	case ctx.Err() != nil:
		return status.Error(status.FromContextError(ctx.Err()).Code(), err.Error())
	case cluster.APIUnavailable(err):
		return status.Error(codes.Unavailable, err.Error())
	}
	return toStatus(err)
}

func nodesOf(ts []*csi.Topology) []string {
	var out []string
	for _, t := range ts {
		if n, ok := t.GetSegments()[TopologyKey]; ok {
			out = append(out, n)
		}
	}
	return out
}

func clusterVolume(lv *v1alpha1.LocalVolume) *csi.Volume {
	size := lv.Status.CurrentSizeBytes
	if size == 0 {
		size = lv.Spec.SizeBytes
	}
	return &csi.Volume{
		VolumeId:           lv.Name,
		CapacityBytes:      size,
		VolumeContext:      map[string]string{ParamPool: lv.Spec.Pool},
		AccessibleTopology: []*csi.Topology{{Segments: map[string]string{TopologyKey: lv.Spec.NodeName}}},
	}
}

func (c *ClusterController) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	pool, striping, r, err := parseCreate(req)
	if err != nil {
		return nil, err
	}
	source, err := clusterSource(req)
	if err != nil {
		return nil, err
	}
	if r.LimitBytes > 0 && r.LimitBytes < r.RequiredBytes {
		return nil, status.Errorf(codes.OutOfRange, "limit %d is below required %d", r.LimitBytes, r.RequiredBytes)
	}
	topo := req.GetAccessibilityRequirements()
	if len(topo.GetRequisite()) > 0 && len(nodesOf(topo.GetRequisite())) == 0 {
		return nil, status.Errorf(codes.ResourceExhausted, "the requested topology has no %s segment: no carve node can serve it", TopologyKey)
	}
	mode, fs := "Filesystem", ""
	for _, vc := range req.GetVolumeCapabilities() {
		if isBlock(vc) {
			mode = "Block"
		} else if vc.GetMount().GetFsType() != "" {
			fs = vc.GetMount().GetFsType()
		}
	}
	unlock, err := c.lock(ctx, names.VolumeID(req.GetName()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	lv, err := c.Vols.Create(ctx, cluster.CreateRequest{Name: req.GetName(), Pool: pool, Range: r,
		Preferred: nodesOf(topo.GetPreferred()), Requisite: nodesOf(topo.GetRequisite()), VolumeMode: mode, FSType: fs,
		Striping: striping, Source: source})
	if err != nil {
		return nil, clusterStatus(ctx, err)
	}
	vol := clusterVolume(lv)
	if d, ok := req.GetParameters()[ParamDAX]; ok {
		vol.VolumeContext[ParamDAX] = d // the node reads it at NodeStage
	}
	// CSI spec, CreateVolume: a volume made from a source says so.
	vol.ContentSource = req.GetVolumeContentSource()
	return &csi.CreateVolumeResponse{Volume: vol}, nil
}

func (c *ClusterController) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume id is missing")
	}
	unlock, err := c.lock(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := c.Vols.Delete(ctx, req.GetVolumeId()); err != nil {
		return nil, clusterStatus(ctx, err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (c *ClusterController) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	r, err := parseExpand(req)
	if err != nil {
		return nil, err
	}
	unlock, err := c.lock(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	lv, err := c.Vols.Expand(ctx, req.GetVolumeId(), r)
	if err != nil {
		return nil, clusterStatus(ctx, err)
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: lv.Status.CurrentSizeBytes,
		NodeExpansionRequired: !isBlock(req.GetVolumeCapability())}, nil
}

func (c *ClusterController) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	return validateCapabilities(req, func() error {
		_, err := c.Vols.Get(ctx, req.GetVolumeId())
		return clusterStatus(ctx, err)
	})
}

func (c *ClusterController) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	if err := checkListRequest(req); err != nil {
		return nil, err
	}
	lvs, err := c.Vols.List(ctx)
	if err != nil {
		return nil, clusterStatus(ctx, err)
	}
	var out []*csi.Volume
	for i := range lvs {
		if lvs[i].DeletionTimestamp == nil {
			out = append(out, clusterVolume(&lvs[i]))
		}
	}
	return page(req, out), nil
}

func (c *ClusterController) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume id is missing")
	}
	lv, err := c.Vols.Get(ctx, req.GetVolumeId())
	if err != nil {
		return nil, clusterStatus(ctx, err)
	}
	return &csi.ControllerGetVolumeResponse{Volume: clusterVolume(lv), Status: &csi.ControllerGetVolumeResponse_VolumeStatus{}}, nil
}

func (c *ClusterController) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	pool, striping, err := checkParameters(req.GetParameters())
	if err != nil {
		return nil, err
	}
	for _, vc := range req.GetVolumeCapabilities() {
		if checkCapability(vc) != nil {
			return &csi.GetCapacityResponse{}, nil
		}
	}
	node := ""
	if seg := req.GetAccessibleTopology().GetSegments(); seg != nil {
		n, ok := seg[TopologyKey]
		if !ok {
			return &csi.GetCapacityResponse{}, nil // a segment without carve nodes
		}
		node = n
	}
	// A striped class gets what a volume of its striping can really have,
	// from the devices each node publishes.
	capa, err := c.Vols.CapacityFor(ctx, node, pool, striping)
	if err != nil {
		return nil, clusterStatus(ctx, err)
	}
	return &csi.GetCapacityResponse{AvailableCapacity: capa.FreeBytes, MaximumVolumeSize: wrapInt64(capa.MaxVolumeBytes)}, nil
}

// ControllerPublishVolume only checks that the node is the volume's node:
// local volumes need no attaching.
func (c *ClusterController) ControllerPublishVolume(ctx context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	if !c.Attach {
		return nil, status.Error(codes.Unimplemented, "ControllerPublishVolume is not enabled")
	}
	if req.GetVolumeId() == "" || req.GetNodeId() == "" {
		return nil, invalid("volume id and node id are required")
	}
	if err := checkCapability(req.GetVolumeCapability()); err != nil {
		return nil, invalid("%v", err)
	}
	lv, err := c.Vols.Get(ctx, req.GetVolumeId())
	if err != nil {
		return nil, clusterStatus(ctx, err)
	}
	if lv.Spec.NodeName != req.GetNodeId() {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s lives on node %s, not %s", lv.Name, lv.Spec.NodeName, req.GetNodeId())
	}
	return &csi.ControllerPublishVolumeResponse{}, nil
}

func (c *ClusterController) ControllerUnpublishVolume(ctx context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	if !c.Attach {
		return nil, status.Error(codes.Unimplemented, "ControllerUnpublishVolume is not enabled")
	}
	if req.GetVolumeId() == "" {
		return nil, invalid("volume id is missing")
	}
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}

func (c *ClusterController) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	types := append([]csi.ControllerServiceCapability_RPC_Type{}, baseControllerCapabilities...)
	if c.Attach {
		types = append(types, csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME)
	}
	if c.Vols == nil || !c.Vols.NoSnapshotCRD {
		// Nodes refuse them for pools other than lvm-thin (InvalidArgument
		// naming lvm-thin, through the LocalSnapshot or LocalVolume status).
		types = append(types, csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
			csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS, csi.ControllerServiceCapability_RPC_CLONE_VOLUME)
	}
	return controllerCapabilities(types...), nil
}
