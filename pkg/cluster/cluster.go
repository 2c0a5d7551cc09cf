// Package cluster is the controller's volume logic: it places volumes on nodes
// from their published NodeStorage, and talks to the nodes only through
// LocalVolume and LocalSnapshot objects in the Kubernetes API. It never
// touches a device.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/pkg/volume"
)

// NodeLabel on a LocalVolume names its node, so nodes and the release logic can select theirs.
const NodeLabel = "carve.csi.dev/node"

var (
	// ErrNoRoom: no candidate node has room in the pool.
	ErrNoRoom = errors.New("no node has room")
	// ErrNoPool: the pool exists on none of the candidate nodes.
	ErrNoPool = errors.New("pool exists on no candidate node")
	// ErrNotPublished: no candidate node shows the pool, and some of them
	// (their Node exists) publish no NodeStorage yet: carve-node is starting
	// there, or the controller's cache has not seen it. Retryable
	// (Unavailable), unlike ErrNoPool.
	ErrNotPublished = errors.New("candidate nodes publish no storage yet")
	// ErrOldSchema: the API server dropped a field carve wrote (a CRD older
	// than the controller: Helm never upgrades CRDs).
	ErrOldSchema = errors.New("the LocalVolume CRD predates this controller")
)

// NodeFailure is a node's report that it could not do what a LocalVolume asks.
type NodeFailure struct {
	Node    string
	Code    string // gRPC code name
	Message string
}

func (e *NodeFailure) Error() string {
	return fmt.Sprintf("node %s: %s: %s", e.Node, e.Code, e.Message)
}

// Volumes manages LocalVolumes.
type Volumes struct {
	// Client reads and writes LocalVolumes straight from the API server: a
	// retried call must see what the previous one wrote.
	Client client.Client
	// NodeStorages reads NodeStorage (nil: Client). Give it a cache only
	// through FreshReader: see Capacity.
	NodeStorages client.Reader
	// Nodes reads Node metadata (nil: Client): a cache will do, a Node comes
	// and goes far more slowly than volumes. One the cache still shows after
	// its deletion can be picked for a volume, which the Releaser then fails
	// (FailedPrecondition) so that the provisioner retries elsewhere.
	Nodes client.Reader
	// Cache is an informer cache that holds LocalVolumes, and Events the
	// handler registered on that informer (WatchLocalVolumes). With both,
	// CreateVolume, DeleteVolume and ControllerExpandVolume wait on the
	// watch and read the API server only where a stale cache could mislead
	// them. Without them, waits poll Client every Poll (the behaviour before
	// issue 13; kept for fake clients and as the benchmark's baseline).
	Cache  client.Reader
	Events *Events
	// Recheck bounds a wait on the watch without news before one read from
	// the API server (DefaultRecheck if 0).
	Recheck time.Duration
	// Poll is how often a wait without the watch re-reads its LocalVolume.
	Poll time.Duration
	// NoSnapshotCRD: the API server has no LocalSnapshot kind (CRDs older
	// than this controller). Snapshot calls then fail with ErrNoSnapshotCRD
	// and the rest works as before.
	NoSnapshotCRD bool

	placed ledger
}

func (v *Volumes) poll() time.Duration {
	if v.Poll > 0 {
		return v.Poll
	}
	// Short: a node answers in tens of milliseconds, and a CreateVolume spends
	// the rest of each poll interval waiting for nothing.
	return 15 * time.Millisecond
}

// CreateRequest asks for a volume somewhere in a topology.
type CreateRequest struct {
	Name       string
	Pool       string
	Range      volume.Range
	Preferred  []string // node names, in order of preference
	Requisite  []string // allowed nodes; empty = any
	VolumeMode string
	FSType     string
	// Striping is the StorageClass's (stripes, stripeSize); the node
	// resolves "all" and makes the LV as the node-local controller would.
	Striping volume.Striping
	// Source, if set, is the snapshot or volume to copy (CSI
	// volume_content_source): the volume goes to the source's node and
	// pool, with at least the source's size.
	Source *v1alpha1.VolumeSource
}

// Create places the volume and waits until its node reports it Ready or Failed.
// A retry with the same name finds the same LocalVolume. A placement that no
// candidate node can hold, counting what this controller placed there and the
// node has not yet published, is refused (ErrNoRoom) before any LocalVolume
// is written; a LocalVolume its node fails is deleted before Create returns
// the failure.
func (v *Volumes) Create(ctx context.Context, req CreateRequest) (*v1alpha1.LocalVolume, error) {
	id := names.VolumeID(req.Name)
	size := req.Range.RequiredBytes
	if size == 0 {
		size = volume.DefaultSizeBytes
		if req.Range.LimitBytes > 0 && req.Range.LimitBytes < size {
			size = req.Range.LimitBytes
		}
	}
	direct := false // read the API server: the cache showed an object that is gone
	for {
		var lv *v1alpha1.LocalVolume
		var err error
		if direct {
			lv, err = read(ctx, v.Client, id)
		} else {
			lv, err = v.cached(ctx, id)
		}
		if err != nil {
			return nil, err
		}
		direct = false
		if lv == nil {
			if lv, err = v.createNew(ctx, id, req, size); err != nil {
				return nil, err
			}
			if lv == nil {
				continue // one of that name appeared meanwhile
			}
		}
		if lv.DeletionTimestamp != nil {
			// A failed attempt is being cleaned up; start over once it is gone.
			if err := v.awaitGone(ctx, id, lv.UID); err != nil {
				return nil, fmt.Errorf("waiting for the earlier LocalVolume %s to go: %w", id, err)
			}
			continue
		}
		if err := compatible(lv, req); err != nil {
			return nil, err
		}
		ready, err := v.awaitSettled(ctx, id, lv.UID, lv.Generation, 0)
		if errors.Is(err, errGone) {
			direct = true
			continue
		}
		if err != nil {
			return nil, err // still being made: its reservation stays
		}
		if ready.Status.Phase == v1alpha1.PhaseFailed {
			v.placed.settle(id)
			failure := &NodeFailure{Node: ready.Spec.NodeName, Code: ready.Status.Code, Message: ready.Status.Message}
			// Remove the failed attempt so that a retry can place it elsewhere.
			if err := v.Client.Delete(ctx, ready, client.Preconditions{UID: &ready.UID}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				klog.ErrorS(err, "Cannot remove failed LocalVolume", "name", id)
			}
			return nil, failure
		}
		// Touch before the reservation ends: a placement in between would
		// count neither it nor the node's publish still missing from a cache.
		v.touch(ctx, ready.Spec.NodeName)
		v.placed.settle(id)
		return ready, nil
	}
}

// createNew places the volume and writes its LocalVolume. It returns the
// object as written, or nil when one of that name exists already (the cache
// had not shown it: a retry's earlier attempt).
func (v *Volumes) createNew(ctx context.Context, id string, req CreateRequest, size int64) (*v1alpha1.LocalVolume, error) {
	var node string
	var err error
	if req.Source != nil {
		req, size, err = v.fromSource(ctx, req)
	}
	if err == nil {
		node, err = v.place(ctx, id, req, size)
	}
	if err != nil {
		// An earlier attempt's volume, not yet in the cache, may hold the very
		// space this placement lacks: do not refuse a retry for it.
		if lv, gerr := read(ctx, v.Client, id); gerr == nil && lv != nil {
			return lv, nil
		}
		return nil, err
	}
	lv := &v1alpha1.LocalVolume{
		ObjectMeta: metav1.ObjectMeta{Name: id, Labels: map[string]string{NodeLabel: node}},
		Spec: v1alpha1.LocalVolumeSpec{VolumeName: req.Name, NodeName: node, Pool: req.Pool, SizeBytes: size,
			LimitBytes: req.Range.LimitBytes, VolumeMode: req.VolumeMode, FSType: req.FSType,
			Stripes: volume.FormatStripes(req.Striping.Stripes), StripeSizeBytes: req.Striping.StripeSizeBytes,
			Source: req.Source},
	}
	if err := v.Client.Create(ctx, lv); apierrors.IsAlreadyExists(err) {
		v.placed.drop(id)
		if !v.waiting() {
			return nil, nil
		}
		// The cache lags: read it once from the API server.
		existing, err := read(ctx, v.Client, id)
		if err != nil || existing == nil {
			return nil, err
		}
		return existing, nil
	} else if err != nil {
		v.placed.drop(id)
		return nil, fmt.Errorf("create LocalVolume %s: %w", id, err)
	}
	if lv.Spec.Stripes != volume.FormatStripes(req.Striping.Stripes) || lv.Spec.StripeSizeBytes != req.Striping.StripeSizeBytes {
		// lv is as the API server stored it: a CRD without the striping
		// fields pruned them, and the node would make a linear LV. Take it
		// back (the node's finalizer removes whatever it made meanwhile).
		v.placed.drop(id)
		if err := v.Client.Delete(ctx, lv, client.Preconditions{UID: &lv.UID}); err != nil && !apierrors.IsNotFound(err) {
			klog.ErrorS(err, "Cannot remove a LocalVolume that lost its striping", "name", id)
		}
		return nil, fmt.Errorf("%w: LocalVolume %s was stored without its striping (stripes %q, stripeSizeBytes %d written); apply the CRDs of this release (deploy/helm/carve/crds/)",
			ErrOldSchema, id, volume.FormatStripes(req.Striping.Stripes), req.Striping.StripeSizeBytes)
	}
	if req.Source != nil && (lv.Spec.Source == nil || *lv.Spec.Source != *req.Source) {
		// As for striping: without its source the node would make an empty volume.
		v.placed.drop(id)
		if err := v.Client.Delete(ctx, lv, client.Preconditions{UID: &lv.UID}); err != nil && !apierrors.IsNotFound(err) {
			klog.ErrorS(err, "Cannot remove a LocalVolume that lost its source", "name", id)
		}
		return nil, fmt.Errorf("%w: LocalVolume %s was stored without its source (%s %s written); apply the CRDs of this release (deploy/helm/carve/crds/)",
			ErrOldSchema, id, req.Source.Kind, req.Source.ID)
	}
	klog.InfoS("LocalVolume created", "name", id, "volume", req.Name, "node", node, "pool", req.Pool, "bytes", size,
		"stripes", lv.Spec.Stripes, "source", sourceID(req.Source))
	return lv, nil
}

func sourceID(s *v1alpha1.VolumeSource) string {
	if s == nil {
		return ""
	}
	return s.ID
}

// fromSource returns req bound to the node and pool of its source (a Ready
// LocalSnapshot or LocalVolume), and the size of the copy: at least the
// source's. Errors: backend.ErrNotFound (no such source, being deleted or
// failed), ErrSourceNotReady, ErrSourceElsewhere (the requisite topology
// excludes the source's node), ErrSourcePool, backend.ErrCannotStripe,
// volume.ErrOutOfRange (the limit is below the source's size).
func (v *Volumes) fromSource(ctx context.Context, req CreateRequest) (CreateRequest, int64, error) {
	src := *req.Source
	var node, pool string
	var srcSize int64
	switch src.Kind {
	case v1alpha1.SourceSnapshot:
		ls, err := v.GetSnapshot(ctx, src.ID)
		switch {
		case err != nil:
			return req, 0, err
		case ls.DeletionTimestamp != nil:
			return req, 0, fmt.Errorf("%w: snapshot %s is being deleted", backend.ErrNotFound, src.ID)
		case ls.Status.Phase == v1alpha1.PhaseFailed:
			return req, 0, fmt.Errorf("%w: snapshot %s failed on node %s: %s", backend.ErrNotFound, src.ID, ls.Spec.NodeName, ls.Status.Message)
		case ls.Status.Phase != v1alpha1.PhaseReady:
			return req, 0, fmt.Errorf("%w: snapshot %s is still being taken on node %s", ErrSourceNotReady, src.ID, ls.Spec.NodeName)
		}
		node, pool, srcSize = ls.Spec.NodeName, ls.Spec.Pool, ls.Status.SizeBytes
	case v1alpha1.SourceVolume:
		lv, err := v.readySource(ctx, src.ID)
		if err != nil {
			return req, 0, err
		}
		node, pool, srcSize = lv.Spec.NodeName, lv.Spec.Pool, sizeOf(lv)
	default:
		return req, 0, fmt.Errorf("%w: source kind %q", backend.ErrNotFound, src.Kind)
	}
	if len(req.Requisite) > 0 && !contains(req.Requisite, node) {
		return req, 0, fmt.Errorf("%w: %s %s is on node %s, not among %v; a volume from it can only be made there",
			ErrSourceElsewhere, src.Kind, src.ID, node, req.Requisite)
	}
	resolved, err := v.resolvePool(ctx, node, pool)
	if err != nil {
		return req, 0, err
	}
	switch {
	case req.Pool != "" && req.Pool != resolved:
		return req, 0, fmt.Errorf("%w: %s %s is in pool %s, not %s: a volume from a source is made in the source's pool",
			ErrSourcePool, src.Kind, src.ID, resolved, req.Pool)
	case req.Striping.Striped():
		return req, 0, fmt.Errorf("a volume from a source is not striped: %w", backend.ErrCannotStripe)
	case req.Range.LimitBytes > 0 && srcSize > req.Range.LimitBytes:
		return req, 0, fmt.Errorf("%w: %s %s has %d bytes, more than the limit %d: a copy cannot be smaller than its source",
			volume.ErrOutOfRange, src.Kind, src.ID, srcSize, req.Range.LimitBytes)
	}
	req.Pool = resolved
	req.Preferred, req.Requisite = []string{node}, []string{node}
	return req, max(req.Range.RequiredBytes, srcSize), nil
}

func compatible(lv *v1alpha1.LocalVolume, req CreateRequest) error {
	switch {
	case lv.Spec.VolumeName != req.Name:
		return fmt.Errorf("%w: LocalVolume %s belongs to volume %q", backend.ErrExists, lv.Name, lv.Spec.VolumeName)
	case sourceID(lv.Spec.Source) != sourceID(req.Source) || lv.Spec.Source != nil && lv.Spec.Source.Kind != req.Source.Kind:
		return fmt.Errorf("%w: volume %q was created from %q, not %q", volume.ErrIncompatible, req.Name, sourceID(lv.Spec.Source), sourceID(req.Source))
	case lv.Spec.Pool != req.Pool && (req.Source == nil || req.Pool != ""):
		// (A volume from a source is in the source's pool: the request may name none.)
		return fmt.Errorf("%w: volume %q is in pool %q, not %q", volume.ErrIncompatible, req.Name, lv.Spec.Pool, req.Pool)
	case len(req.Requisite) > 0 && !contains(req.Requisite, lv.Spec.NodeName):
		return fmt.Errorf("%w: volume %q is on node %s, outside the requested topology", volume.ErrIncompatible, req.Name, lv.Spec.NodeName)
	case lv.Spec.Stripes != volume.FormatStripes(req.Striping.Stripes) || lv.Spec.StripeSizeBytes != req.Striping.StripeSizeBytes:
		return fmt.Errorf("%w: volume %q has stripes %q and stripe size %d, not %q and %d", volume.ErrIncompatible, req.Name,
			lv.Spec.Stripes, lv.Spec.StripeSizeBytes, volume.FormatStripes(req.Striping.Stripes), req.Striping.StripeSizeBytes)
	}
	size := lv.Spec.SizeBytes
	if lv.Status.CurrentSizeBytes > 0 {
		size = lv.Status.CurrentSizeBytes
	}
	if size < req.Range.RequiredBytes || (req.Range.LimitBytes > 0 && lv.Spec.SizeBytes > req.Range.LimitBytes) {
		return fmt.Errorf("%w: volume %q has %d bytes, outside the requested range [%d, %d]",
			volume.ErrIncompatible, req.Name, size, req.Range.RequiredBytes, req.Range.LimitBytes)
	}
	return nil
}

// place picks the first candidate node whose pool can hold size bytes besides
// what this controller placed there that its NodeStorage may not show yet:
// preferred nodes first, then the other requisite ones, else every node by
// free space. A node whose Node object does not exist is never a candidate.
// The pick is reserved for LocalVolume id until the volume settles.
func (v *Volumes) place(ctx context.Context, id string, req CreateRequest, size int64) (string, error) {
	pl := v.placed.begin()
	defer v.placed.end(pl)
	byNode, live, err := v.liveNodeStorages(ctx)
	if err != nil {
		return "", err
	}
	var candidates []string
	for _, n := range append(append([]string{}, req.Preferred...), req.Requisite...) {
		if !contains(candidates, n) && (len(req.Requisite) == 0 || contains(req.Requisite, n)) {
			candidates = append(candidates, n)
		}
	}
	if len(candidates) == 0 {
		for n := range byNode {
			candidates = append(candidates, n)
		}
		sort.Slice(candidates, func(i, j int) bool {
			fi, fj := poolOf(byNode[candidates[i]], req.Pool).FreeBytes, poolOf(byNode[candidates[j]], req.Pool).FreeBytes
			return fi > fj || fi == fj && candidates[i] < candidates[j]
		})
	}
	v.placed.mu.Lock()
	defer v.placed.mu.Unlock()
	havePool, canStripe := false, false
	var pending int64
	var unpublished []string
	for _, n := range candidates {
		ns, ok := byNode[n]
		if !ok {
			if live[n] {
				unpublished = append(unpublished, n)
			}
			continue
		}
		p := poolOf(ns, req.Pool)
		if p.Name == "" {
			continue
		}
		havePool = true
		if !p.Healthy {
			canStripe = true // unknown until repaired: not the class's fault
			continue
		}
		held := v.placed.pending(pl, n, p.Name)
		maxVol, ok := maxVolume(p, req.Striping, held)
		if !ok {
			continue
		}
		canStripe = true
		if p.FreeBytes >= size+held && maxVol >= size {
			v.placed.reserve(id, n, p.Name, size)
			return n, nil
		}
		pending += held
	}
	pool := req.Pool
	if pool == "" {
		pool = "(default)"
	}
	switch {
	case !havePool && len(unpublished) > 0:
		return "", fmt.Errorf("%w: pool %s: nodes %v have no NodeStorage yet (carve-node starting there, or not running)", ErrNotPublished, pool, unpublished)
	case !havePool:
		return "", fmt.Errorf("%w: pool %s on nodes %v", ErrNoPool, pool, candidates)
	case !canStripe:
		// As the node-local controller answers a pool that cannot stripe so.
		return "", fmt.Errorf("pool %s on nodes %v cannot make %s stripes (too few devices, or not an lvm pool): %w",
			pool, candidates, volume.FormatStripes(req.Striping.Stripes), backend.ErrCannotStripe)
	case req.Striping.Striped():
		return "", fmt.Errorf("%w: no node among %v can make a volume of %d bytes in %s stripes in pool %s (%d bytes there are being placed by other calls)",
			ErrNoRoom, candidates, size, volume.FormatStripes(req.Striping.Stripes), pool, pending)
	}
	return "", fmt.Errorf("%w: no node among %v has %d bytes free in pool %s (%d bytes there are being placed by other calls)",
		ErrNoRoom, candidates, size, pool, pending)
}

// maxVolume is the largest volume striped as s that pool p can still take
// once held bytes (placed there, maybe not yet in p) are gone, and whether p
// can make such volumes at all. Unstriped, it is p's maxVolumeBytes less
// held. Striped, it comes from p's devices and extent size by
// backend.StripedMax, the rule the node's lvm backend uses (a pool that
// publishes no devices, pmem or a node older than striping in cluster mode,
// cannot stripe; nor can one with fewer devices than stripes). The held
// bytes may all have come from any one device, so each device counts them
// as taken: exact with nothing held, never more than the node can make.
func maxVolume(p v1alpha1.PoolStatus, s volume.Striping, held int64) (int64, bool) {
	if !s.Striped() {
		return p.MaxVolumeBytes - held, true
	}
	if len(p.Devices) == 0 || p.AlignBytes <= 0 {
		return 0, false
	}
	free := make([]int64, 0, len(p.Devices))
	for _, d := range p.Devices {
		if !d.Missing {
			free = append(free, d.FreeBytes-held)
		}
	}
	m, n, err := backend.StripedMax(free, p.AlignBytes, s.Stripes)
	switch {
	case err != nil:
		return 0, false
	case n <= 1:
		// One device: the node makes a linear volume (volume.Manager).
		return p.MaxVolumeBytes - held, true
	}
	return m, true
}

// poolOf returns the named pool (or the node's default) from a NodeStorage.
func poolOf(ns *v1alpha1.NodeStorage, name string) v1alpha1.PoolStatus {
	if ns == nil {
		return v1alpha1.PoolStatus{}
	}
	if name == "" {
		name = ns.Status.DefaultPool
	}
	for _, p := range ns.Status.Pools {
		if p.Name == name {
			return p
		}
	}
	return v1alpha1.PoolStatus{}
}

// Get returns the LocalVolume for a CSI volume id.
func (v *Volumes) Get(ctx context.Context, id string) (*v1alpha1.LocalVolume, error) {
	if !names.IsVolumeID(id) {
		return nil, fmt.Errorf("%w: %q is not a carve volume id", backend.ErrNotFound, id)
	}
	lv := &v1alpha1.LocalVolume{}
	if err := v.Client.Get(ctx, types.NamespacedName{Name: id}, lv); apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: %s", backend.ErrNotFound, id)
	} else if err != nil {
		return nil, err
	}
	return lv, nil
}

// Delete removes the LocalVolume and waits until its node has removed the device.
func (v *Volumes) Delete(ctx context.Context, id string) error {
	if !names.IsVolumeID(id) {
		return nil // never a carve volume: nothing to delete
	}
	lv, err := v.cached(ctx, id)
	if err == nil && lv == nil && v.waiting() {
		// The cache may not have seen it yet: a delete that wrongly found
		// nothing would leak the device.
		lv, err = read(ctx, v.Client, id)
	}
	if err != nil {
		return err
	}
	if lv == nil {
		v.placed.settle(id)
		return nil
	}
	if lv.DeletionTimestamp == nil {
		if err := v.Client.Delete(ctx, lv, client.Preconditions{UID: &lv.UID}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete LocalVolume %s: %w", id, err)
		}
		klog.InfoS("LocalVolume deleted, waiting for its node", "name", id, "node", lv.Spec.NodeName)
	}
	if err := v.awaitGone(ctx, id, lv.UID); err != nil {
		return fmt.Errorf("waiting for node %s to remove volume %s: %w", lv.Spec.NodeName, id, err)
	}
	v.placed.settle(id)
	v.touch(ctx, lv.Spec.NodeName)
	return nil
}

// Expand raises the volume's size to at least r.RequiredBytes bytes and waits
// for its node. An expansion that failed can be retried with any size at least
// the device's current one, smaller than the failed request included (spec
// sizeBytes follows the new request). Errors: backend.ErrNotFound,
// volume.ErrOutOfRange, *NodeFailure with the node's code.
func (v *Volumes) Expand(ctx context.Context, id string, r volume.Range) (*v1alpha1.LocalVolume, error) {
	lv, err := v.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.LimitBytes > 0 && r.LimitBytes < r.RequiredBytes {
		return nil, fmt.Errorf("%w: limit %d below required %d", volume.ErrOutOfRange, r.LimitBytes, r.RequiredBytes)
	}
	cur := lv.Status.CurrentSizeBytes
	switch {
	case lv.Spec.SizeBytes < r.RequiredBytes:
		patch := client.MergeFrom(lv.DeepCopy())
		lv.Spec.SizeBytes = r.RequiredBytes
		lv.Spec.LimitBytes = r.LimitBytes
		if err := v.Client.Patch(ctx, lv, patch); err != nil {
			return nil, fmt.Errorf("expand LocalVolume %s: %w", id, err)
		}
		klog.InfoS("LocalVolume expanded, waiting for its node", "name", id, "node", lv.Spec.NodeName, "bytes", r.RequiredBytes)
	case cur > 0 && lv.Spec.SizeBytes > max(r.RequiredBytes, cur):
		// The spec asks for more than the device has: an earlier expansion
		// failed (or is still under way). The new request replaces it, so a
		// user who lowers the size after a failure (external-resizer's
		// RecoverVolumeExpansionFailure) is not held to a size that can never
		// fit, and the node stops retrying it. Never below the device's size.
		patch := client.MergeFrom(lv.DeepCopy())
		lv.Spec.SizeBytes = max(r.RequiredBytes, cur)
		lv.Spec.LimitBytes = r.LimitBytes
		if err := v.Client.Patch(ctx, lv, patch); err != nil {
			return nil, fmt.Errorf("lower unfinished expansion of LocalVolume %s: %w", id, err)
		}
		klog.InfoS("Unfinished expansion of LocalVolume replaced by a smaller request, waiting for its node", "name", id,
			"node", lv.Spec.NodeName, "bytes", lv.Spec.SizeBytes, "currentBytes", cur)
	case lv.Status.Phase == v1alpha1.PhaseFailed && cur < r.RequiredBytes:
		// A retry of a failed expansion: the node does not retry permanent
		// failures of the same generation by itself.
		patch := client.MergeFrom(lv.DeepCopy())
		lv.Status.Phase = v1alpha1.PhasePending
		if err := v.Client.Status().Patch(ctx, lv, patch); err != nil {
			return nil, fmt.Errorf("retry expansion of LocalVolume %s: %w", id, err)
		}
	}
	// lv is as the API server answered the last read or write: the wait
	// takes no older generation of it from the cache.
	settled, err := v.awaitSettled(ctx, id, lv.UID, lv.Generation, r.RequiredBytes)
	if errors.Is(err, errGone) {
		return nil, fmt.Errorf("%w: %s was deleted during its expansion", backend.ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	if settled.Status.Phase == v1alpha1.PhaseFailed {
		return nil, &NodeFailure{Node: settled.Spec.NodeName, Code: settled.Status.Code, Message: settled.Status.Message}
	}
	v.touch(ctx, settled.Spec.NodeName)
	return settled, nil
}

// List returns all LocalVolumes sorted by name.
func (v *Volumes) List(ctx context.Context) ([]v1alpha1.LocalVolume, error) {
	var list v1alpha1.LocalVolumeList
	if err := v.Client.List(ctx, &list); err != nil {
		return nil, err
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
	return list.Items, nil
}

// Capacity answers GetCapacity from published NodeStorage: one node's pool, or
// with node "" the sum over all nodes (and the largest single volume). A node
// whose Node object does not exist has no capacity, whatever its NodeStorage
// says (one left behind by an agent that outlived its Node).
//
// The figures are exact when an operation's result is visible (issue 12): the
// node agent republishes NodeStorage before it makes the result visible
// (LocalVolume Ready, finalizer dropped), and external-provisioner asks for
// capacity the moment CreateVolume or DeleteVolume returns; a watch could
// deliver the new figure after that question. So NodeStorages is the API
// server itself or a FreshReader, which reads a node from the API server
// after an operation there until its cache has caught up. Nodes may be a
// cache: see Volumes.Nodes.
func (v *Volumes) Capacity(ctx context.Context, node, pool string) (backend.Capacity, error) {
	return v.CapacityFor(ctx, node, pool, volume.Striping{})
}

// CapacityFor is Capacity for volumes striped as s (a StorageClass's
// stripes and stripeSize): MaxVolumeBytes is then the largest volume of that
// striping (maxVolume), as the node-local controller answers it
// (volume.Manager.CapacityFor); a pool that cannot stripe so offers none.
func (v *Volumes) CapacityFor(ctx context.Context, node, pool string, s volume.Striping) (backend.Capacity, error) {
	if node != "" {
		if ok, err := v.nodeExists(ctx, node); err != nil || !ok {
			return backend.Capacity{}, err
		}
		ns := &v1alpha1.NodeStorage{}
		if err := v.nodeStorages().Get(ctx, types.NamespacedName{Name: node}, ns); apierrors.IsNotFound(err) {
			return backend.Capacity{}, nil
		} else if err != nil {
			return backend.Capacity{}, err
		}
		return poolCapacity(poolOf(ns, pool), s), nil
	}
	byNode, _, err := v.liveNodeStorages(ctx)
	if err != nil {
		return backend.Capacity{}, err
	}
	var sum backend.Capacity
	for _, ns := range byNode {
		c := poolCapacity(poolOf(ns, pool), s)
		sum.TotalBytes += c.TotalBytes
		sum.FreeBytes += c.FreeBytes
		sum.MaxVolumeBytes = max(sum.MaxVolumeBytes, c.MaxVolumeBytes)
	}
	return sum, nil
}

// poolCapacity is what pool p offers volumes striped as s: nothing when it
// is missing, unhealthy or cannot stripe so.
func poolCapacity(p v1alpha1.PoolStatus, s volume.Striping) backend.Capacity {
	if !p.Healthy {
		return backend.Capacity{}
	}
	maxVol, ok := maxVolume(p, s, 0)
	if !ok {
		return backend.Capacity{}
	}
	return backend.Capacity{TotalBytes: p.TotalBytes, FreeBytes: p.FreeBytes, MaxVolumeBytes: maxVol}
}

// touch tells a NodeStorages reader that can lag (FreshReader) that node
// has just shown an operation's result.
func (v *Volumes) touch(ctx context.Context, node string) {
	if t, ok := v.NodeStorages.(interface{ Touch(context.Context, string) }); ok {
		t.Touch(ctx, node)
	}
}

func (v *Volumes) nodeStorages() client.Reader {
	if v.NodeStorages != nil {
		return v.NodeStorages
	}
	return v.Client
}

func (v *Volumes) nodes() client.Reader {
	if v.Nodes != nil {
		return v.Nodes
	}
	return v.Client
}

func nodeMeta() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Node"))
	return m
}

// nodeExists reads the Node's metadata only.
func (v *Volumes) nodeExists(ctx context.Context, name string) (bool, error) {
	err := v.nodes().Get(ctx, types.NamespacedName{Name: name}, nodeMeta())
	switch {
	case apierrors.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("get Node %s: %w", name, err)
	}
	return true, nil
}

// liveNodeStorages returns the NodeStorages whose Node exists, by node name,
// and the names of the Nodes that exist.
func (v *Volumes) liveNodeStorages(ctx context.Context) (map[string]*v1alpha1.NodeStorage, map[string]bool, error) {
	var list v1alpha1.NodeStorageList
	if err := v.nodeStorages().List(ctx, &list); err != nil {
		return nil, nil, fmt.Errorf("list NodeStorage: %w", err)
	}
	nodes := &metav1.PartialObjectMetadataList{}
	nodes.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("NodeList"))
	if err := v.nodes().List(ctx, nodes); err != nil {
		return nil, nil, fmt.Errorf("list Nodes: %w", err)
	}
	live := map[string]bool{}
	for _, n := range nodes.Items {
		live[n.Name] = true
	}
	byNode := map[string]*v1alpha1.NodeStorage{}
	for i := range list.Items {
		if name := list.Items[i].Name; live[name] {
			byNode[name] = &list.Items[i]
		} else {
			klog.V(4).InfoS("Ignoring NodeStorage of a node that does not exist", "node", name)
		}
	}
	return byNode, live, nil
}

func contains(s []string, x string) bool {
	for _, e := range s {
		if e == x {
			return true
		}
	}
	return false
}
