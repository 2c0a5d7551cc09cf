package cluster

import (
	"context"
	"errors"
	"fmt"
	"sort"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/errcode"
	"github.com/carve-csi/carve/pkg/names"
)

// Snapshots and volumes from a source in controller mode (issue 14): a
// snapshot is a LocalSnapshot object on the source volume's node, which the
// node's agent takes (a thin snapshot LV) and reports on, as LocalVolumes.

var (
	// ErrSourceNotReady: the source volume or snapshot is still being made
	// (its node has not reported it Ready); a retry may succeed.
	ErrSourceNotReady = errors.New("the source is not ready yet")
	// ErrSourceElsewhere: the request's topology excludes the node that
	// holds the source; a volume from a source can only be made there.
	ErrSourceElsewhere = errors.New("the source lives on a node outside the requested topology")
	// ErrSourcePool: the request names another pool than the source's.
	ErrSourcePool = errors.New("the source is in another pool")
	// ErrNoSnapshotCRD: the LocalSnapshot CRD is not installed (an upgrade
	// that did not apply this release's CRDs).
	ErrNoSnapshotCRD = errors.New("the LocalSnapshot CRD is not installed")
)

// CreateSnapshot takes snapshot name of volume sourceID on the volume's
// node and pool, and waits until the node reports it Ready or Failed. A
// retry with the same name and source finds the same LocalSnapshot (named
// names.SnapshotID(name)). Errors: backend.ErrNotFound (no such volume, or
// one being deleted or failed), backend.ErrExists (the name belongs to a
// snapshot of another volume), ErrSourceNotReady, ErrNoSnapshotCRD,
// *NodeFailure with the node's code (InvalidArgument for a pool that cannot
// snapshot, ResourceExhausted for a thin pool's budget); a LocalSnapshot
// its node failed is deleted before the failure is returned.
func (v *Volumes) CreateSnapshot(ctx context.Context, name, sourceID string) (*v1alpha1.LocalSnapshot, error) {
	if v.NoSnapshotCRD {
		return nil, fmt.Errorf("%w: apply the CRDs of this release (deploy/helm/carve/crds/) and restart the controller", ErrNoSnapshotCRD)
	}
	id := names.SnapshotID(name)
	direct := false // read the API server: the cache showed an object that is gone
	for {
		var ls *v1alpha1.LocalSnapshot
		var err error
		if direct {
			ls, err = get[v1alpha1.LocalSnapshot](ctx, v.Client, id)
		} else {
			ls, err = cachedGet[v1alpha1.LocalSnapshot](ctx, v, id)
		}
		if err != nil {
			return nil, err
		}
		direct = false
		if ls == nil {
			if ls, err = v.createSnapshotObject(ctx, id, name, sourceID); err != nil {
				return nil, err
			}
			if ls == nil {
				continue // one of that name appeared meanwhile
			}
		}
		if ls.DeletionTimestamp != nil {
			if err := v.awaitSnapshotGone(ctx, id, ls.UID); err != nil {
				return nil, fmt.Errorf("waiting for the earlier LocalSnapshot %s to go: %w", id, err)
			}
			continue
		}
		if ls.Spec.SnapshotName != name || ls.Spec.SourceVolumeID != sourceID {
			return nil, fmt.Errorf("%w: snapshot %q is of volume %q, not %q", backend.ErrExists, ls.Spec.SnapshotName,
				ls.Spec.SourceVolumeID, sourceID)
		}
		settled, err := v.awaitSnapshotSettled(ctx, id, ls.UID, ls.Generation)
		if errors.Is(err, errGone) {
			direct = true
			continue
		}
		if err != nil {
			return nil, err // still being taken: its reservation stays
		}
		v.placed.settle(id)
		if settled.Status.Phase == v1alpha1.PhaseFailed {
			failure := &NodeFailure{Node: settled.Spec.NodeName, Code: settled.Status.Code, Message: settled.Status.Message}
			// Nothing half-made: the node took no snapshot; remove the
			// attempt so that a retry starts over.
			if err := v.Client.Delete(ctx, settled, client.Preconditions{UID: &settled.UID}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				klog.ErrorS(err, "Cannot remove failed LocalSnapshot", "name", id)
			}
			return nil, failure
		}
		v.touch(ctx, settled.Spec.NodeName)
		return settled, nil
	}
}

// createSnapshotObject writes the LocalSnapshot for snapshot name of volume
// sourceID on the volume's node. It returns the object as written, or nil
// when one of that name exists already (the cache had not shown it).
func (v *Volumes) createSnapshotObject(ctx context.Context, id, name, sourceID string) (*v1alpha1.LocalSnapshot, error) {
	src, err := v.readySource(ctx, sourceID)
	if err != nil {
		// An earlier attempt's snapshot may exist though its source is gone since.
		if ls, gerr := get[v1alpha1.LocalSnapshot](ctx, v.Client, id); gerr == nil && ls != nil {
			return ls, nil
		}
		return nil, err
	}
	node := src.Spec.NodeName
	ls := &v1alpha1.LocalSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: id, Labels: map[string]string{NodeLabel: node}},
		Spec: v1alpha1.LocalSnapshotSpec{SnapshotName: name, NodeName: node, Pool: src.Spec.Pool,
			SourceVolumeID: sourceID},
	}
	// A thin snapshot counts its source's size against the pool's budget:
	// placements meanwhile must see it before the node publishes it.
	bytes := sizeOf(src)
	if pool, err := v.resolvePool(ctx, node, src.Spec.Pool); err == nil {
		v.placed.hold(id, node, pool, bytes)
	}
	if err := v.Client.Create(ctx, ls); apierrors.IsAlreadyExists(err) {
		v.placed.drop(id)
		return get[v1alpha1.LocalSnapshot](ctx, v.Client, id)
	} else if meta.IsNoMatchError(err) {
		v.placed.drop(id)
		return nil, fmt.Errorf("%w: create LocalSnapshot %s: %w", ErrNoSnapshotCRD, id, err)
	} else if err != nil {
		v.placed.drop(id)
		return nil, fmt.Errorf("create LocalSnapshot %s: %w", id, err)
	}
	klog.InfoS("LocalSnapshot created", "name", id, "snapshot", name, "source", sourceID, "node", node, "pool", src.Spec.Pool,
		"bytes", bytes)
	return ls, nil
}

// readySource returns the LocalVolume of volume id, read from the API
// server, if its node reported it Ready. Errors: backend.ErrNotFound (no such
// volume, being deleted, or failed), ErrSourceNotReady.
func (v *Volumes) readySource(ctx context.Context, id string) (*v1alpha1.LocalVolume, error) {
	src, err := v.Get(ctx, id)
	switch {
	case err != nil:
		return nil, err
	case src.DeletionTimestamp != nil:
		return nil, fmt.Errorf("%w: volume %s is being deleted", backend.ErrNotFound, id)
	case src.Status.Phase == v1alpha1.PhaseFailed:
		return nil, fmt.Errorf("%w: volume %s failed on node %s: %s", backend.ErrNotFound, id, src.Spec.NodeName, src.Status.Message)
	case src.Status.Phase != v1alpha1.PhaseReady:
		return nil, fmt.Errorf("%w: volume %s is still being made on node %s", ErrSourceNotReady, id, src.Spec.NodeName)
	}
	return src, nil
}

func sizeOf(lv *v1alpha1.LocalVolume) int64 {
	if lv.Status.CurrentSizeBytes > 0 {
		return lv.Status.CurrentSizeBytes
	}
	return lv.Spec.SizeBytes
}

// resolvePool names a pool of node as NodeStorage does: "" is the node's
// default. Errors: ErrNoPool when the node publishes none.
func (v *Volumes) resolvePool(ctx context.Context, node, pool string) (string, error) {
	if pool != "" {
		return pool, nil
	}
	ns := &v1alpha1.NodeStorage{}
	if err := v.nodeStorages().Get(ctx, types.NamespacedName{Name: node}, ns); apierrors.IsNotFound(err) {
		return "", fmt.Errorf("%w: node %s publishes no NodeStorage", ErrNoPool, node)
	} else if err != nil {
		return "", fmt.Errorf("get NodeStorage %s: %w", node, err)
	}
	if ns.Status.DefaultPool == "" {
		return "", fmt.Errorf("%w: node %s publishes no default pool", ErrNoPool, node)
	}
	return ns.Status.DefaultPool, nil
}

// GetSnapshot returns the LocalSnapshot of snapshot id, read from the API
// server. Errors: backend.ErrNotFound.
func (v *Volumes) GetSnapshot(ctx context.Context, id string) (*v1alpha1.LocalSnapshot, error) {
	if !names.IsSnapshotID(id) {
		return nil, fmt.Errorf("%w: %q is not a carve snapshot id", backend.ErrNotFound, id)
	}
	if v.NoSnapshotCRD {
		return nil, fmt.Errorf("%w: snapshot %s", backend.ErrNotFound, id)
	}
	ls, err := get[v1alpha1.LocalSnapshot](ctx, v.Client, id)
	if err != nil {
		return nil, err
	}
	if ls == nil {
		return nil, fmt.Errorf("%w: snapshot %s", backend.ErrNotFound, id)
	}
	return ls, nil
}

// DeleteSnapshot deletes the LocalSnapshot of snapshot id and waits until its
// node has removed the snapshot. An id that is not carve's, or of no
// LocalSnapshot, is not an error (CSI DeleteSnapshot). A LocalSnapshot of a
// node that no longer exists is released (the node's finalizer dropped).
func (v *Volumes) DeleteSnapshot(ctx context.Context, id string) error {
	if !names.IsSnapshotID(id) || v.NoSnapshotCRD {
		return nil
	}
	ls, err := cachedGet[v1alpha1.LocalSnapshot](ctx, v, id)
	if err == nil && ls == nil && v.waiting() {
		// The cache may not have seen it yet: a delete that wrongly found
		// nothing would leak the snapshot.
		ls, err = get[v1alpha1.LocalSnapshot](ctx, v.Client, id)
	}
	if err != nil {
		return err
	}
	if ls == nil {
		v.placed.settle(id)
		return nil
	}
	if ls.DeletionTimestamp == nil {
		if err := v.Client.Delete(ctx, ls, client.Preconditions{UID: &ls.UID}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete LocalSnapshot %s: %w", id, err)
		}
		klog.InfoS("LocalSnapshot deleted, waiting for its node", "name", id, "node", ls.Spec.NodeName)
	}
	if ok, err := v.nodeExists(ctx, ls.Spec.NodeName); err == nil && !ok && controllerutil.ContainsFinalizer(ls, v1alpha1.Finalizer) {
		// No agent will ever act on it: release it, as the Releaser does LocalVolumes.
		patch := client.MergeFrom(ls.DeepCopy())
		controllerutil.RemoveFinalizer(ls, v1alpha1.Finalizer)
		if err := v.Client.Patch(ctx, ls, patch); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("release LocalSnapshot %s of deleted node %s: %w", id, ls.Spec.NodeName, err)
		}
		klog.InfoS("Released LocalSnapshot of a node that does not exist", "name", id, "node", ls.Spec.NodeName)
	}
	if err := v.awaitSnapshotGone(ctx, id, ls.UID); err != nil {
		return fmt.Errorf("waiting for node %s to remove snapshot %s: %w", ls.Spec.NodeName, id, err)
	}
	v.placed.settle(id)
	v.touch(ctx, ls.Spec.NodeName)
	return nil
}

// ListSnapshots returns the LocalSnapshots their nodes reported Ready and
// that are not being deleted, sorted by name (the snapshot id), read from
// the API server.
func (v *Volumes) ListSnapshots(ctx context.Context) ([]v1alpha1.LocalSnapshot, error) {
	if v.NoSnapshotCRD {
		return nil, nil
	}
	var list v1alpha1.LocalSnapshotList
	if err := v.Client.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("list LocalSnapshots: %w", err)
	}
	out := list.Items[:0]
	for _, ls := range list.Items {
		if ls.DeletionTimestamp == nil && ls.Status.Phase == v1alpha1.PhaseReady && ls.Status.ObservedGeneration >= ls.Generation {
			out = append(out, ls)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// awaitSnapshotSettled waits until the node has acted on generation minGen
// (or a later one) of the LocalSnapshot with this uid: Ready, or Failed for
// good (a failure is confirmed with the API server). Errors: errGone
// (wrapped) when the object is gone, the context's error when it ends.
func (v *Volumes) awaitSnapshotSettled(ctx context.Context, id string, uid types.UID, minGen int64) (*v1alpha1.LocalSnapshot, error) {
	node := ""
	ls, err := awaitObj(ctx, v, id, func(ls *v1alpha1.LocalSnapshot, direct bool) (verdict, error) {
		switch {
		case (ls == nil || ls.UID != uid) && direct:
			return accept, nil // gone
		case ls == nil || ls.UID != uid:
			return keepWaiting, nil // the cache has not seen it yet
		}
		node = ls.Spec.NodeName
		switch {
		case ls.Status.ObservedGeneration < max(ls.Generation, minGen):
		case ls.Status.Phase == v1alpha1.PhaseReady:
			return accept, nil
		case ls.Status.Phase == v1alpha1.PhaseFailed && errcode.PermanentName(ls.Status.Code):
			return confirm, nil
		}
		return keepWaiting, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for node %s to act on LocalSnapshot %s: %w", node, id, err)
	}
	if ls == nil || ls.UID != uid {
		return nil, fmt.Errorf("waiting for node %s to act on LocalSnapshot %s: %w", node, id, errGone)
	}
	return ls, nil
}

// awaitSnapshotGone waits until the LocalSnapshot with this uid no longer exists.
func (v *Volumes) awaitSnapshotGone(ctx context.Context, id string, uid types.UID) error {
	_, err := awaitObj(ctx, v, id, func(ls *v1alpha1.LocalSnapshot, _ bool) (verdict, error) {
		if ls == nil || ls.UID != uid {
			return confirm, nil
		}
		return keepWaiting, nil
	})
	return err
}
