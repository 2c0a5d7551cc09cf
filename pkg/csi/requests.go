package csi

import (
	"math"
	"regexp"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/carve-csi/carve/pkg/mounter"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/pkg/volume"
)

// Request checks shared by the node-local and the cluster Controller services.

// parseCreate validates a CreateVolume request and returns its pool,
// striping and range.
func parseCreate(req *csi.CreateVolumeRequest) (string, volume.Striping, volume.Range, error) {
	var s volume.Striping
	if req.GetName() == "" {
		return "", s, volume.Range{}, invalid("volume name is missing")
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return "", s, volume.Range{}, invalid("%v", err)
	}
	pool, s, err := checkParameters(req.GetParameters())
	if err != nil {
		return "", s, volume.Range{}, err
	}
	r, err := parseRange(req.GetCapacityRange())
	if err != nil {
		return "", s, r, err
	}
	r, err = fitFilesystem(r, req.GetVolumeCapabilities())
	return pool, s, r, err
}

// contentSource returns the id of the snapshot or volume a CreateVolume
// request copies ("" for none) and whether it is a snapshot. A source of
// another kind, or without an id, is InvalidArgument.
func contentSource(req *csi.CreateVolumeRequest) (string, bool, error) {
	cs := req.GetVolumeContentSource()
	switch {
	case cs == nil:
		return "", false, nil
	case cs.GetSnapshot() != nil:
		if cs.GetSnapshot().GetSnapshotId() == "" {
			return "", false, invalid("volume content source: snapshot id is missing")
		}
		return cs.GetSnapshot().GetSnapshotId(), true, nil
	case cs.GetVolume() != nil:
		if cs.GetVolume().GetVolumeId() == "" {
			return "", false, invalid("volume content source: volume id is missing")
		}
		return cs.GetVolume().GetVolumeId(), false, nil
	}
	return "", false, invalid("volume content source of an unknown kind")
}

// filesystemMinimum is the largest minimum device size (bytes) among the
// filesystems the capabilities ask for (mount without fsType = ext4, as
// NodeStage formats it), and that filesystem; 0 for block only.
func filesystemMinimum(cs []*csi.VolumeCapability) (string, int64) {
	fs, min := "", int64(0)
	for _, c := range cs {
		if c.GetMount() == nil {
			continue
		}
		t := fsTypeOf(c)
		if m := mounter.MinSizeBytes(t); m > min {
			fs, min = t, m
		}
	}
	return fs, min
}

// fitFilesystem raises a required size below the filesystem's minimum to it
// (mkfs would refuse the device at every NodeStage), or refuses a limit below
// it with OutOfRange, before any device exists. An unset required size stays
// unset: the default size is above every minimum.
func fitFilesystem(r volume.Range, cs []*csi.VolumeCapability) (volume.Range, error) {
	fs, min := filesystemMinimum(cs)
	if min == 0 {
		return r, nil
	}
	if r.LimitBytes > 0 && r.LimitBytes < min {
		return r, status.Errorf(codes.OutOfRange, "capacity limit %d bytes is below %d bytes, the smallest device mkfs.%s formats",
			r.LimitBytes, min, fs)
	}
	if r.RequiredBytes > 0 && r.RequiredBytes < min {
		r.RequiredBytes = min
	}
	return r, nil
}

// longExponent finds a decimal exponent of three or more digits.
// ParseQuantity works 10^exponent out in full, so "1e2147483647" holds a CPU
// for minutes (found by FuzzInlineAttributes), and it wraps exponents at 2^32
// ("1e4294967296" reads as 1). No size in bytes needs more than two digits.
var longExponent = regexp.MustCompile(`[eE][+-]?[0-9]{3}`)

// parseSize reads a size attribute, a Kubernetes quantity, as whole bytes
// (rounded up): positive and at most MaxInt64.
func parseSize(attr, v string) (int64, error) {
	if longExponent.MatchString(v) {
		return 0, invalid("inline volume attribute %s=%q: an exponent of more than two digits is no size", attr, v)
	}
	q, err := resource.ParseQuantity(v)
	if err != nil {
		return 0, invalid("inline volume attribute %s=%q is not a quantity: %v", attr, v, err)
	}
	if q.Sign() <= 0 {
		return 0, invalid("inline volume attribute %s=%q must be positive", attr, v)
	}
	if q.CmpInt64(math.MaxInt64) > 0 { // Value() would wrap, or read 1e30 as 0
		return 0, invalid("inline volume attribute %s=%q is larger than any volume can be", attr, v)
	}
	return q.Value(), nil
}

func parseRange(cr *csi.CapacityRange) (volume.Range, error) {
	r := volume.Range{RequiredBytes: cr.GetRequiredBytes(), LimitBytes: cr.GetLimitBytes()}
	if r.RequiredBytes < 0 || r.LimitBytes < 0 {
		return r, invalid("capacity range has a negative size")
	}
	return r, nil
}

// parseExpand validates a ControllerExpandVolume request.
func parseExpand(req *csi.ControllerExpandVolumeRequest) (volume.Range, error) {
	if req.GetVolumeId() == "" {
		return volume.Range{}, invalid("volume id is missing")
	}
	if req.GetCapacityRange() == nil {
		return volume.Range{}, invalid("capacity range is missing")
	}
	if c := req.GetVolumeCapability(); c != nil {
		if err := checkCapability(c); err != nil {
			return volume.Range{}, invalid("%v", err)
		}
	}
	return parseRange(req.GetCapacityRange())
}

// validateCapabilities answers ValidateVolumeCapabilities once the volume is known to exist.
func validateCapabilities(req *csi.ValidateVolumeCapabilitiesRequest, exists func() error) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume id is missing")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, invalid("volume capabilities are missing")
	}
	if err := exists(); err != nil {
		return nil, err
	}
	if _, _, err := checkParameters(req.GetParameters()); err != nil {
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

// checkListRequest validates paging arguments. The token is the id to resume
// at, which stays valid when volumes come and go between pages.
func checkListRequest(req *csi.ListVolumesRequest) error {
	if req.GetMaxEntries() < 0 {
		return invalid("max_entries must not be negative")
	}
	if t := req.GetStartingToken(); t != "" && !names.IsVolumeID(t) {
		return status.Errorf(codes.Aborted, "starting token %q was not issued by this driver", t)
	}
	return nil
}

// page returns one page of volumes sorted by id.
func page(req *csi.ListVolumesRequest, vols []*csi.Volume) *csi.ListVolumesResponse {
	resp := &csi.ListVolumesResponse{}
	for _, v := range vols {
		if v.GetVolumeId() < req.GetStartingToken() {
			continue
		}
		if req.GetMaxEntries() > 0 && len(resp.Entries) == int(req.GetMaxEntries()) {
			resp.NextToken = v.GetVolumeId()
			break
		}
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: v})
	}
	return resp
}

func controllerCapabilities(types ...csi.ControllerServiceCapability_RPC_Type) *csi.ControllerGetCapabilitiesResponse {
	resp := &csi.ControllerGetCapabilitiesResponse{}
	for _, t := range types {
		resp.Capabilities = append(resp.Capabilities, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return resp
}

// baseControllerCapabilities are what both Controller services offer.
var baseControllerCapabilities = []csi.ControllerServiceCapability_RPC_Type{
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
	csi.ControllerServiceCapability_RPC_GET_CAPACITY,
	csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
	csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
	csi.ControllerServiceCapability_RPC_GET_VOLUME,
	csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
}
