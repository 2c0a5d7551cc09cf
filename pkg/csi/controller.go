package csi

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/pkg/volume"
)

// TopologyKey is the segment key that names a node.
const TopologyKey = "carve.csi.dev/node"

// ParamPool selects a pool in StorageClass parameters and inline attributes.
const ParamPool = "pool"

// ParamDAX ("true"/"false") in StorageClass parameters asks for or against a
// DAX mount; CreateVolume passes it on in the volume context. Without it,
// volumes of PMEM-backed pools mount with DAX (backend.Volume.DAX).
const ParamDAX = "dax"

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

// Striping parameters of a StorageClass (lvm pools; other pools refuse them
// with InvalidArgument): ParamStripes is a count of at least 2 or "all" (one
// stripe per device of the pool), ParamStripeSize a power of two from 4Ki to
// the pool's extent size, as a Kubernetes quantity (e.g. 64Ki).
const (
	ParamStripes    = "stripes"
	ParamStripeSize = "stripeSize"
)

// checkParameters validates StorageClass parameters and returns the pool
// and the striping they ask for.
func checkParameters(params map[string]string) (pool string, s volume.Striping, err error) {
	for k, v := range params {
		switch {
		case k == ParamPool:
			pool = v
		case k == ParamDAX:
			if _, err := strconv.ParseBool(v); err != nil {
				return "", s, invalid("parameter %s=%q: want true or false", ParamDAX, v)
			}
		case k == ParamStripes:
			n, err := volume.ParseStripes(v)
			if err != nil || v == "" {
				return "", s, invalid("parameter %s=%q: want a number of devices from 1 to %d, or %q", ParamStripes, v, volume.MaxStripes, volume.StripesAllName)
			}
			s.Stripes = n
		case k == ParamStripeSize:
			size, err := parseSize(k, v)
			if err != nil {
				return "", s, invalid("parameter %s=%q: want a power of two such as 64Ki", ParamStripeSize, v)
			}
			if size&(size-1) != 0 {
				return "", s, invalid("parameter %s=%q: %d bytes is not a power of two", ParamStripeSize, v, size)
			}
			s.StripeSizeBytes = size
		case strings.HasPrefix(k, reservedPrefix):
		default:
			return "", s, invalid("unknown parameter %q (supported: %s, %s, %s, %s)", k, ParamPool, ParamDAX, ParamStripes, ParamStripeSize)
		}
	}
	if s.StripeSizeBytes != 0 && s.Stripes != backend.StripesAll && s.Stripes < 2 {
		return "", s, invalid("parameter %s needs %s of at least 2 (or %q)", ParamStripeSize, ParamStripes, volume.StripesAllName)
	}
	return pool, s, nil
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
	pool, striping, r, err := parseCreate(req)
	if err != nil {
		return nil, err
	}
	source, fromSnapshot, err := contentSource(req)
	if err != nil {
		return nil, err
	}
	if source != "" && !c.Vols.CanSnapshot() {
		return nil, invalid("volume content sources (snapshots, clones) need an lvm-thin pool; this node has none")
	}
	if !c.reachable(req.GetAccessibilityRequirements()) {
		return nil, status.Errorf(codes.ResourceExhausted, "requisite topology does not include node %q", c.NodeID)
	}
	unlock, err := c.lock(ctx, names.VolumeID(req.GetName()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := c.Vols.Create(ctx, volume.CreateRequest{Name: req.GetName(), Pool: pool, Range: r, Striping: striping, Source: source, SourceIsSnapshot: fromSnapshot})
	if err != nil {
		return nil, toStatus(err)
	}
	if !r.Contains(v.SizeBytes) {
		// A new volume whose real size overshoots the limit (a PMEM namespace
		// holds only whole alignment steps); an existing one was checked.
		if err := c.Vols.Delete(ctx, v.ID); err != nil {
			return nil, toStatus(err)
		}
		c.changed()
		return nil, status.Errorf(codes.OutOfRange, "pool %q cannot make a volume of %d to %d bytes: the nearest size it holds is %d bytes",
			v.Pool, r.RequiredBytes, r.LimitBytes, v.SizeBytes)
	}
	c.changed()
	vol := c.csiVolume(v)
	if d, ok := req.GetParameters()[ParamDAX]; ok {
		vol.VolumeContext[ParamDAX] = d
	}
	// CSI spec, CreateVolume: a volume made from a source says so.
	vol.ContentSource = req.GetVolumeContentSource()
	return &csi.CreateVolumeResponse{Volume: vol}, nil
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
	r, err := parseExpand(req)
	if err != nil {
		return nil, err
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
	return validateCapabilities(req, func() error {
		_, err := c.Vols.Find(ctx, req.GetVolumeId())
		return toStatus(err)
	})
}

func (c *LocalController) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	if err := checkListRequest(req); err != nil {
		return nil, err
	}
	vols, err := c.Vols.List(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	out := make([]*csi.Volume, len(vols))
	for i := range vols {
		out[i] = c.csiVolume(&vols[i])
	}
	return page(req, out), nil
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
	pool, striping, err := checkParameters(req.GetParameters())
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
	// The request carries the StorageClass's parameters (CSI spec,
	// GetCapacityRequest.parameters): a striped class gets what a volume of
	// its striping can really have.
	capa, err := c.Vols.CapacityFor(ctx, pool, striping)
	if errors.Is(err, backend.ErrDegraded) {
		// A degraded pool (a VG missing a PV) can create nothing: advertise 0, not
		// an error, so external-provisioner replaces the old CSIStorageCapacity
		// instead of keeping its stale figure (issue 12, item 3).
		klog.V(2).InfoS("GetCapacity: pool degraded, advertising 0", "pool", pool, "err", err)
		return &csi.GetCapacityResponse{}, nil
	}
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &csi.GetCapacityResponse{AvailableCapacity: capa.FreeBytes}
	resp.MaximumVolumeSize = wrapInt64(capa.MaxVolumeBytes)
	// The smallest volume: one allocation unit, or the filesystem's minimum
	// (CreateVolume rounds up to it), whichever is larger.
	_, fsMin := filesystemMinimum(req.GetVolumeCapabilities())
	if min := max(capa.AlignBytes, backend.AlignUp(fsMin, capa.AlignBytes)); min > 0 {
		resp.MinimumVolumeSize = wrapInt64(min)
	}
	return resp, nil
}

func (c *LocalController) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var types []csi.ControllerServiceCapability_RPC_Type
	for _, t := range baseControllerCapabilities {
		if t != csi.ControllerServiceCapability_RPC_EXPAND_VOLUME || canExpand(c.Vols) {
			types = append(types, t)
		}
	}
	if c.Vols != nil && c.Vols.CanSnapshot() {
		// Only with an lvm-thin pool; other pools refuse each call with InvalidArgument.
		types = append(types, csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
			csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS, csi.ControllerServiceCapability_RPC_CLONE_VOLUME)
	}
	return controllerCapabilities(types...), nil
}

// canExpand reports whether any pool's volumes can grow (PMEM namespaces cannot).
func canExpand(vols *volume.Manager) bool {
	if vols == nil {
		return true
	}
	for _, p := range vols.Pools() {
		if backend.CanExpand(p.Backend) {
			return true
		}
	}
	return false
}
