package csi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/mounter"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/pkg/volume"
)

// Inline ephemeral volume attributes.
const (
	ephemeralKey = reservedPrefix + "ephemeral"
	attrSize     = "size"
	attrFSType   = "fsType"
	defaultFS    = "ext4"
)

// Mounter is what the node needs from the filesystem (see pkg/mounter).
type Mounter interface {
	// FormatAndMountUUID formats device if blank (with filesystem UUID
	// uuid; "" lets mkfs pick) and mounts it at target.
	FormatAndMountUUID(device, target, fsType, uuid string, options []string) error
	BindMount(source, target string, readOnly bool, options []string) error
	BindBlock(device, target string, readOnly bool) error
	Unmount(target string) error
	IsMountPoint(path string) (bool, error)
	Stats(path string) (mounter.Stats, error)
	Resize(device, mountPath string) error
	OtherMounts(path string) ([]string, error)
}

// Node serves the CSI Node service.
type Node struct {
	csi.UnimplementedNodeServer
	Vols   *volume.Manager
	Mount  Mounter
	NodeID string
	Locks  *keylock.Locks
	// KubeletDir bounds every path the node mounts on (symlinks resolved).
	KubeletDir string
	// AllowInlinePool lets pod authors pick the pool of inline volumes.
	AllowInlinePool bool
	// Changed, if set, is called after a volume was created or deleted here,
	// so that published capacity follows at once.
	Changed func()

	// failed holds the ids of inline volumes whose last publish failed after
	// the device was made (id -> target path): kubelet retries those while
	// the pod exists, so ReclaimOrphans keeps them until its directory is gone.
	failed sync.Map
}

func (n *Node) changed() {
	if n.Changed != nil {
		n.Changed()
	}
}

func (n *Node) lock(ctx context.Context, id string) (func(), error) {
	unlock, err := n.Locks.Lock(ctx, id)
	if err != nil {
		return nil, status.Errorf(codes.Aborted, "waiting for another operation on volume %s: %v", id, err)
	}
	return unlock, nil
}

// checkPath makes sure p is absolute and, after resolving symlinks of the part
// that exists, inside the kubelet directory.
func (n *Node) checkPath(what, p string) error {
	if p == "" {
		return invalid("%s is missing", what)
	}
	if !filepath.IsAbs(p) {
		return invalid("%s %q is not absolute", what, p)
	}
	if n.KubeletDir == "" {
		return nil
	}
	root, err := filepath.EvalSymlinks(n.KubeletDir)
	if err != nil {
		return status.Errorf(codes.Internal, "kubelet directory %q: %v", n.KubeletDir, err)
	}
	resolved, err := resolveExisting(filepath.Clean(p))
	if err != nil {
		return status.Errorf(codes.Internal, "%s %q: %v", what, p, err)
	}
	if resolved != root && !strings.HasPrefix(resolved, root+string(filepath.Separator)) {
		return invalid("%s %q is outside the kubelet directory %q", what, p, n.KubeletDir)
	}
	return nil
}

// resolveExisting resolves symlinks in the longest existing prefix of p.
func resolveExisting(p string) (string, error) {
	rest := ""
	for cur := p; ; {
		r, err := filepath.EvalSymlinks(cur)
		if err == nil {
			return filepath.Join(r, rest), nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return p, nil
		}
		rest = filepath.Join(filepath.Base(cur), rest)
		cur = parent
	}
}

func (n *Node) findActive(ctx context.Context, id string) (*backend.Volume, string, error) {
	v, err := n.Vols.Find(ctx, id)
	if err != nil {
		return nil, "", toStatus(err)
	}
	dev, err := n.Vols.Activate(ctx, v)
	if err != nil {
		return nil, "", toStatus(fmt.Errorf("activate volume %s: %w", id, err))
	}
	return v, dev, nil
}

func fsTypeOf(c *csi.VolumeCapability) string {
	if fs := c.GetMount().GetFsType(); fs != "" {
		return fs
	}
	return defaultFS
}

func (n *Node) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume id is missing")
	}
	if err := n.checkPath("staging target path", req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	if err := checkCapability(req.GetVolumeCapability()); err != nil {
		return nil, invalid("%v", err)
	}
	unlock, err := n.lock(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, dev, err := n.findActive(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if isBlock(req.GetVolumeCapability()) {
		return &csi.NodeStageVolumeResponse{}, nil // published straight from the device node
	}
	c := req.GetVolumeCapability()
	opts, err := daxOptions(v, req.GetVolumeContext(), c.GetMount().GetMountFlags())
	if err != nil {
		return nil, err
	}
	if err := n.Mount.FormatAndMountUUID(dev, req.GetStagingTargetPath(), fsTypeOf(c), "", opts); err != nil {
		return nil, toStatus(fmt.Errorf("stage volume %s: %w", req.GetVolumeId(), err))
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// daxOptions adds "dax" to the mount flags when the volume is to be mounted
// with DAX: the volume context's dax=true|false decides, else the pool's
// default (backend.Volume.DAX); "dax" among the flags always asks for it. A
// device that cannot do it then fails the mount with FailedPrecondition.
func daxOptions(v *backend.Volume, volCtx map[string]string, flags []string) ([]string, error) {
	want := v.DAX
	if s, ok := volCtx[ParamDAX]; ok {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, invalid("volume context %s=%q: want true or false", ParamDAX, s)
		}
		want = b
	}
	if !want || mounter.WantsDAX(flags) {
		return flags, nil
	}
	return append(append([]string(nil), flags...), mounter.OptionDAX), nil
}

func (n *Node) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume id is missing")
	}
	if err := n.checkPath("staging target path", req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	unlock, err := n.lock(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := n.Mount.Unmount(req.GetStagingTargetPath()); err != nil {
		return nil, toStatus(fmt.Errorf("unstage volume %s: %w", req.GetVolumeId(), err))
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

func (n *Node) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume id is missing")
	}
	if err := n.checkPath("target path", req.GetTargetPath()); err != nil {
		return nil, err
	}
	c := req.GetVolumeCapability()
	if err := checkCapability(c); err != nil {
		return nil, invalid("%v", err)
	}
	readOnly := req.GetReadonly() || readOnlyMode(c)
	if req.GetVolumeContext()[ephemeralKey] == "true" {
		return n.publishInline(ctx, req, readOnly)
	}
	if !isBlock(c) {
		if err := n.checkPath("staging target path", req.GetStagingTargetPath()); err != nil {
			return nil, err
		}
	}
	unlock, err := n.lock(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	_, dev, err := n.findActive(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if isBlock(c) {
		err = n.Mount.BindBlock(dev, req.GetTargetPath(), readOnly)
	} else {
		if c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER {
			if err := n.checkSingleWriter(req); err != nil {
				return nil, err
			}
		}
		err = n.Mount.BindMount(req.GetStagingTargetPath(), req.GetTargetPath(), readOnly, c.GetMount().GetMountFlags())
	}
	if err != nil {
		return nil, toStatus(fmt.Errorf("publish volume %s: %w", req.GetVolumeId(), err))
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// checkSingleWriter refuses a second publish of a SINGLE_NODE_SINGLE_WRITER
// volume: every publish is a bind mount of the staged filesystem.
func (n *Node) checkSingleWriter(req *csi.NodePublishVolumeRequest) error {
	others, err := n.Mount.OtherMounts(req.GetStagingTargetPath())
	if err != nil {
		return toStatus(fmt.Errorf("publish volume %s: %w", req.GetVolumeId(), err))
	}
	for _, p := range others {
		if p != filepath.Clean(req.GetTargetPath()) {
			return status.Errorf(codes.FailedPrecondition, "volume %s has access mode SINGLE_NODE_SINGLE_WRITER and is already published at %q",
				req.GetVolumeId(), p)
		}
	}
	return nil
}

// inlineRequest is a validated inline ephemeral volume.
type inlineRequest struct {
	size   int64
	fsType string
	pool   string
}

func (n *Node) parseInline(attrs map[string]string) (inlineRequest, error) {
	r := inlineRequest{size: volume.DefaultSizeBytes, fsType: defaultFS}
	for k, v := range attrs {
		switch {
		case k == attrSize:
			size, err := parseSize(attrSize, v)
			if err != nil {
				return r, err
			}
			r.size = size
		case k == attrFSType:
			if v == "" || !supportedFSTypes[v] {
				return r, invalid("inline volume attribute %s=%q is not supported (ext4, xfs)", attrFSType, v)
			}
			r.fsType = v
		case k == ParamPool && n.AllowInlinePool:
			r.pool = v
		case strings.HasPrefix(k, reservedPrefix): // set by kubelet, not by the pod author
		default:
			allowed := attrSize + ", " + attrFSType
			if n.AllowInlinePool {
				allowed += ", " + ParamPool
			}
			return r, invalid("inline volume attribute %q is not allowed (allowed: %s)", k, allowed)
		}
	}
	return r, nil
}

func (n *Node) publishInline(ctx context.Context, req *csi.NodePublishVolumeRequest, readOnly bool) (*csi.NodePublishVolumeResponse, error) {
	c := req.GetVolumeCapability()
	if isBlock(c) {
		return nil, invalid("inline ephemeral volumes are filesystem volumes; block access is not supported")
	}
	ir, err := n.parseInline(req.GetVolumeContext())
	if err != nil {
		return nil, err
	}
	if fs := c.GetMount().GetFsType(); fs != "" && req.GetVolumeContext()[attrFSType] == "" {
		ir.fsType = fs
	}
	if min := mounter.MinSizeBytes(ir.fsType); ir.size < min {
		// Inline volumes have no limit: round up rather than make a device
		// that mkfs refuses at every retry.
		klog.V(2).InfoS("Inline volume size raised to the filesystem's minimum", "volumeID", req.GetVolumeId(),
			"fsType", ir.fsType, "asked", ir.size, "bytes", min)
		ir.size = min
	}
	id := names.VolumeID(req.GetVolumeId())
	unlock, err := n.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := n.unmountUnzeroed(ctx, id, req); err != nil {
		return nil, err
	}
	start := time.Now()
	// The filesystem's UUID is the proof that the volume's zeroing finished
	// (backend.CreateRequest.FormatUUID): lvm then records the zeroing
	// without a second metadata commit (an lvchange, 300-500 ms under
	// emulation: issue 13).
	v, err := n.Vols.Create(ctx, volume.CreateRequest{
		Name: req.GetVolumeId(), Pool: ir.pool, Range: volume.Range{RequiredBytes: ir.size},
		Ephemeral: true, TargetPath: req.GetTargetPath(), FormatUUID: uuid.NewString(),
	})
	if err != nil {
		return nil, toStatus(fmt.Errorf("inline volume %s: %w", req.GetVolumeId(), err))
	}
	if v.TargetPath != req.GetTargetPath() {
		return nil, status.Errorf(codes.AlreadyExists, "inline volume %s is already published at %q", req.GetVolumeId(), v.TargetPath)
	}
	created := time.Now()
	dev, err := n.Vols.Activate(ctx, v)
	activated := time.Now()
	if err == nil {
		var opts []string
		opts, err = daxOptions(v, nil, c.GetMount().GetMountFlags())
		if readOnly {
			opts = append(opts, "ro")
		}
		if err == nil {
			err = n.Mount.FormatAndMountUUID(dev, req.GetTargetPath(), ir.fsType, v.FormatUUID, opts)
		}
	}
	n.changed() // created, or found again: capacity follows either way
	if err != nil {
		// The device stays for kubelet's retry: deleting it here made every
		// retry create and delete a device. It is removed by NodeUnpublishVolume
		// or, once the pod's directory is gone, by ReclaimOrphans.
		n.failed.Store(v.ID, req.GetTargetPath())
		return nil, toStatus(fmt.Errorf("inline volume %s: %w", req.GetVolumeId(), err))
	}
	n.failed.Delete(v.ID)
	// The steps' times (their tools are logged at --vmodule=exec=5,toollog=4):
	// what a slow publish spent where (issue 13).
	klog.V(4).InfoS("Inline publish steps", "volumeID", req.GetVolumeId(), "create", created.Sub(start),
		"activate", activated.Sub(created), "formatAndMount", time.Since(activated))
	klog.InfoS("Inline volume published", "volumeID", req.GetVolumeId(), "device", v.ID, "target", req.GetTargetPath(), "bytes", v.SizeBytes)
	return &csi.NodePublishVolumeResponse{}, nil
}

// unmountUnzeroed undoes what a publish of an earlier carve build, killed
// between its mount and the lvchange that dropped carve.zeroing=pending, left
// behind: the target mounted on a volume that still needs zeroing
// (backend.Volume.Unzeroed; inline volumes made since carry a format UUID
// and are never Unzeroed, as their filesystem proves the zeroing). That
// publish never succeeded, so no container uses the mount; this publish's
// Create zeroes the volume again, which must not happen under a mounted
// filesystem (blkdiscard would fail at every retry, or wipe a live
// filesystem). Only a retry finds its target mounted, so a first publish
// runs no tool for this.
func (n *Node) unmountUnzeroed(ctx context.Context, id string, req *csi.NodePublishVolumeRequest) error {
	target := req.GetTargetPath()
	if mounted, err := n.Mount.IsMountPoint(target); err != nil || !mounted {
		return nil // missing, not mounted, or stale: FormatAndMount deals with it
	}
	v, err := n.Vols.Find(ctx, id)
	if errors.Is(err, backend.ErrNotFound) {
		return nil
	}
	if err != nil {
		return toStatus(fmt.Errorf("inline volume %s: %w", req.GetVolumeId(), err))
	}
	if !v.Unzeroed || !v.Ephemeral || v.Name != req.GetVolumeId() || v.TargetPath != target {
		return nil
	}
	klog.InfoS("Unmounting an inline volume whose last publish did not finish, before it is zeroed again", "volumeID", req.GetVolumeId(), "device", v.ID, "target", target)
	if err := n.Mount.Unmount(target); err != nil {
		return toStatus(fmt.Errorf("inline volume %s: unmount the unfinished publish at %s: %w", req.GetVolumeId(), target, err))
	}
	return nil
}

// removeInline unmounts and deletes an inline volume, logging what it cannot do.
func (n *Node) removeInline(ctx context.Context, v *backend.Volume) error {
	if v.TargetPath != "" {
		if err := n.Mount.Unmount(v.TargetPath); err != nil {
			klog.ErrorS(err, "Cannot unmount inline volume", "device", v.ID, "target", v.TargetPath)
			return err
		}
	}
	if err := n.Vols.Delete(ctx, v.ID); err != nil {
		klog.ErrorS(err, "Cannot delete inline volume", "device", v.ID)
		return err
	}
	n.changed()
	return nil
}

func (n *Node) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume id is missing")
	}
	if err := n.checkPath("target path", req.GetTargetPath()); err != nil {
		return nil, err
	}
	// Persistent volume ids are carve ids; kubelet names inline volumes itself.
	lockID, inline := req.GetVolumeId(), !names.IsVolumeID(req.GetVolumeId())
	if inline {
		lockID = names.VolumeID(req.GetVolumeId())
	}
	unlock, err := n.lock(ctx, lockID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := n.Mount.Unmount(req.GetTargetPath()); err != nil {
		return nil, toStatus(fmt.Errorf("unpublish volume %s: %w", req.GetVolumeId(), err))
	}
	if inline {
		if err := n.deleteUnpublishedInline(ctx, lockID, req); err != nil {
			return nil, err
		}
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// deleteUnpublishedInline removes the inline volume id that req unpublished,
// if it is carve's inline volume of that name and target. The common case is
// one removal call whose selection makes those checks (Manager.DeleteInline);
// only when it matched nothing is the volume read to tell why: gone (a
// retry), held by another target, not an inline volume, or not carve's.
func (n *Node) deleteUnpublishedInline(ctx context.Context, id string, req *csi.NodeUnpublishVolumeRequest) error {
	done, err := n.Vols.DeleteInline(ctx, id, req.GetVolumeId(), req.GetTargetPath())
	if err != nil {
		return toStatus(fmt.Errorf("delete inline volume %s: %w", req.GetVolumeId(), err))
	}
	if done {
		n.inlineRemoved(req.GetVolumeId(), id)
		return nil
	}
	v, err := n.Vols.Find(ctx, id)
	switch {
	case errors.Is(err, backend.ErrNotFound):
	case err != nil:
		return toStatus(err)
	case v.Ephemeral && v.Name == req.GetVolumeId() && v.TargetPath != "" && filepath.Clean(v.TargetPath) != filepath.Clean(req.GetTargetPath()):
		// Another target holds this inline volume (a retried or stray call): unmounting
		// this one was all there was to do; the volume goes with its own target.
		klog.InfoS("Inline volume kept: it belongs to another target", "volumeID", req.GetVolumeId(), "device", v.ID, "target", v.TargetPath, "unpublished", req.GetTargetPath())
	case v.Ephemeral && v.Name == req.GetVolumeId():
		// Its target differs from req's only in spelling, or it has none
		// (backends without InlineRemover land here on every call).
		if err := n.Vols.Delete(ctx, v.ID); err != nil {
			return toStatus(fmt.Errorf("delete inline volume %s: %w", req.GetVolumeId(), err))
		}
		n.inlineRemoved(req.GetVolumeId(), v.ID)
	}
	return nil
}

func (n *Node) inlineRemoved(volumeID, id string) {
	n.failed.Delete(id)
	n.changed()
	klog.InfoS("Inline volume removed", "volumeID", volumeID, "device", id)
}

func (n *Node) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume id is missing")
	}
	if req.GetVolumePath() == "" {
		return nil, invalid("volume path is missing")
	}
	id := req.GetVolumeId()
	if !names.IsVolumeID(id) {
		id = names.VolumeID(id) // an inline volume
	}
	if _, err := n.Vols.Find(ctx, id); err != nil {
		return nil, toStatus(err)
	}
	st, err := n.Mount.Stats(req.GetVolumePath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.NotFound, "volume path %q does not exist", req.GetVolumePath())
	}
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: st.TotalBytes}}}
	if !st.IsBlock {
		resp.Usage[0].Available, resp.Usage[0].Used = st.AvailableBytes, st.UsedBytes
		resp.Usage = append(resp.Usage, &csi.VolumeUsage{Unit: csi.VolumeUsage_INODES,
			Total: st.TotalInodes, Available: st.FreeInodes, Used: st.UsedInodes})
	}
	return resp, nil
}

func (n *Node) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume id is missing")
	}
	if req.GetVolumePath() == "" {
		return nil, invalid("volume path is missing")
	}
	if c := req.GetVolumeCapability(); c != nil {
		if err := checkCapability(c); err != nil {
			return nil, invalid("%v", err)
		}
	}
	unlock, err := n.lock(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, dev, err := n.findActive(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if need := req.GetCapacityRange().GetRequiredBytes(); need > v.SizeBytes {
		return nil, status.Errorf(codes.OutOfRange, "volume %s has %d bytes, %d requested: expand it through the controller first", v.ID, v.SizeBytes, need)
	}
	if _, err := os.Stat(req.GetVolumePath()); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume path %q: %v", req.GetVolumePath(), err)
	}
	if !isBlock(req.GetVolumeCapability()) {
		st, err := n.Mount.Stats(req.GetVolumePath())
		if err != nil {
			return nil, toStatus(err)
		}
		if !st.IsBlock {
			if err := n.Mount.Resize(dev, req.GetVolumePath()); err != nil {
				return nil, toStatus(fmt.Errorf("grow filesystem of volume %s: %w", v.ID, err))
			}
		}
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: v.SizeBytes}, nil
}

func (n *Node) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH, // NodeGetVolumeHealth, node_health.go
	} {
		if t == csi.NodeServiceCapability_RPC_EXPAND_VOLUME && !canExpand(n.Vols) {
			continue // only PMEM pools, whose namespaces cannot grow
		}
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (n *Node) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             n.NodeID,
		AccessibleTopology: &csi.Topology{Segments: map[string]string{TopologyKey: n.NodeID}},
	}, nil
}

// CleanupOrphans removes the inline volumes whose pod is gone (see
// orphaned), once; the node runs it at start-up, and ReclaimOrphans
// periodically after that.
func (n *Node) CleanupOrphans(ctx context.Context) error {
	vols, err := n.Vols.List(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for i := range vols {
		if !vols[i].Ephemeral {
			continue
		}
		if err := n.reclaimIfOrphaned(ctx, vols[i].ID); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ReclaimOrphans runs CleanupOrphans every period until ctx ends, so that
// the space of an inline volume whose pod went away without
// NodeUnpublishVolume (kubelet restarted and forgot it) comes back while the
// driver runs. A period of 0 or less does nothing.
func (n *Node) ReclaimOrphans(ctx context.Context, period time.Duration) {
	if period <= 0 {
		return
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := n.CleanupOrphans(ctx); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "Reclaiming orphaned inline volumes")
		}
	}
}

// reclaimIfOrphaned removes the inline volume id if it is orphaned. It holds
// the volume's lock and reads the volume again under it, so a publish or
// unpublish in flight is waited for and its outcome seen; a volume busy for
// longer than a second is left for the next round.
func (n *Node) reclaimIfOrphaned(ctx context.Context, id string) error {
	lctx, cancel := context.WithTimeout(ctx, time.Second)
	unlock, err := n.Locks.Lock(lctx, id)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return nil // busy: a call is in flight
	}
	defer unlock()
	v, err := n.Vols.Find(ctx, id)
	switch {
	case errors.Is(err, backend.ErrNotFound):
		n.failed.Delete(id)
		return nil
	case err != nil:
		return fmt.Errorf("inline volume %s: %w", id, err)
	case !v.Ephemeral:
		return nil
	}
	orphan, why, err := n.orphaned(v)
	if err != nil || !orphan {
		return err
	}
	klog.InfoS("Removing orphaned inline volume", "device", v.ID, "volumeID", v.Name, "target", v.TargetPath, "reason", why)
	if err := n.removeInline(ctx, v); err != nil {
		return err
	}
	n.failed.Delete(id)
	return nil
}

// orphaned is the one safety rule for removing an inline volume nobody
// unpublished (the caller holds its lock, so no call on it is in flight): its
// target is not a mount point (a mounted target may serve a live pod: never
// taken), and either its pod's directory is gone, or no publish of it failed
// in this process. A failed publish is retried by kubelet while the pod
// exists, and its device is kept for that retry.
func (n *Node) orphaned(v *backend.Volume) (bool, string, error) {
	if v.TargetPath == "" {
		return false, "", nil
	}
	mounted, err := n.Mount.IsMountPoint(v.TargetPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, mounter.ErrNotFound) {
		return false, "", fmt.Errorf("inline volume %s at %q: %w", v.ID, v.TargetPath, err)
	}
	if mounted {
		return false, "", nil
	}
	pod := podDir(v.TargetPath)
	if _, err := os.Lstat(pod); errors.Is(err, os.ErrNotExist) {
		return true, "target not mounted, pod directory " + pod + " gone", nil
	} else if err != nil {
		return false, "", fmt.Errorf("inline volume %s: pod directory: %w", v.ID, err)
	}
	if _, retrying := n.failed.Load(v.ID); retrying {
		return false, "", nil
	}
	return true, "target not mounted", nil
}

// podDir is the pod's directory of a kubelet target path
// (<kubelet>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount), or the
// target's parent for paths not laid out that way.
func podDir(target string) string {
	target = filepath.Clean(target)
	parts := strings.Split(target, string(filepath.Separator))
	for i := len(parts) - 3; i >= 0; i-- {
		if parts[i] == "pods" && i+2 < len(parts) && parts[i+2] == "volumes" && parts[i+1] != "" {
			return strings.Join(parts[:i+2], string(filepath.Separator))
		}
	}
	return filepath.Dir(target)
}
