package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/names"
)

// Snapshots reconciles this node's LocalSnapshots through the Agent's
// volume manager (issue 14). It shares the Agent's client, locks and
// NodeStorage publisher.
type Snapshots struct{ A *Agent }

var _ reconcile.Reconciler = Snapshots{}

// Reconcile brings one LocalSnapshot of this node to its spec:
//
//   - Another node's LocalSnapshot is never touched.
//   - The object's name must be names.SnapshotID(spec.snapshotName), the
//     snapshot's device name; otherwise it is Failed/InvalidArgument and
//     nothing is done.
//   - The node's finalizer is on the object before the snapshot is taken.
//   - A missing snapshot is taken (volume.Manager.CreateSnapshot, idempotent
//     by name); status becomes Ready with its id, size and creation time. A
//     snapshot that vanished after it was Ready is reported Failed/NotFound,
//     never taken again (it would hold other data).
//   - Failures are phase Failed with the gRPC code name (NotFound: no such
//     source volume; InvalidArgument: its pool cannot snapshot, naming
//     lvm-thin; AlreadyExists: the name is a snapshot of another volume;
//     ResourceExhausted: the thin pool's budget). Permanent ones wait for a
//     new generation; transient ones are retried with backoff.
//   - Being deleted: the snapshot is removed if it is this object's (same
//     name and source), then the finalizer dropped; a retry after that finds
//     nothing to remove, so the snapshot is removed exactly once.
//   - NodeStorage is republished before every status write and before the
//     finalizer's removal (a thin snapshot takes room in the pool's budget).
func (s Snapshots) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	a := s.A
	ls := &v1alpha1.LocalSnapshot{}
	if err := a.Client.Get(ctx, req.NamespacedName, ls); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if ls.Spec.NodeName != a.NodeName {
		klog.V(5).InfoS("Ignoring another node's LocalSnapshot", "localSnapshot", ls.Name, "nodeName", ls.Spec.NodeName)
		return reconcile.Result{}, nil
	}
	if !ls.DeletionTimestamp.IsZero() {
		return s.reconcileDelete(ctx, ls)
	}
	return s.reconcileCreate(ctx, ls)
}

func (s Snapshots) reconcileDelete(ctx context.Context, ls *v1alpha1.LocalSnapshot) (reconcile.Result, error) {
	a := s.A
	if !controllerutil.ContainsFinalizer(ls, v1alpha1.Finalizer) {
		return reconcile.Result{}, nil
	}
	if id := names.SnapshotID(ls.Spec.SnapshotName); id != ls.Name {
		klog.InfoS("LocalSnapshot being deleted does not match its snapshot name; releasing it without touching any device",
			"localSnapshot", ls.Name, "snapshotName", ls.Spec.SnapshotName, "snapshotID", id)
	} else {
		unlock, err := a.lock(ctx, ls.Name)
		if err != nil {
			return reconcile.Result{}, err
		}
		removed, err := s.removeOwn(ctx, ls)
		unlock()
		if err != nil {
			klog.ErrorS(err, "Cannot delete the snapshot of a deleted LocalSnapshot; retrying", "localSnapshot", ls.Name)
			return reconcile.Result{}, fmt.Errorf("delete snapshot %s: %w", ls.Name, err)
		}
		if removed {
			// The finalizer's removal ends DeleteSnapshot: publish the freed budget first.
			if err := a.Publish(ctx); err != nil {
				klog.ErrorS(err, "Cannot publish capacity after deleting a snapshot; keeping the finalizer and retrying",
					"localSnapshot", ls.Name)
				return reconcile.Result{}, err
			}
			klog.InfoS("Snapshot of deleted LocalSnapshot removed", "localSnapshot", ls.Name, "snapshotName", ls.Spec.SnapshotName,
				"source", ls.Spec.SourceVolumeID)
		}
	}
	controllerutil.RemoveFinalizer(ls, v1alpha1.Finalizer)
	if err := a.Client.Update(ctx, ls); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	klog.InfoS("LocalSnapshot released", "localSnapshot", ls.Name)
	return reconcile.Result{}, nil
}

// removeOwn removes the snapshot of ls if it exists and is ls's (its name
// and source): a snapshot of that id taken for another source (the object
// failed with AlreadyExists) is left alone. It reports whether it removed one.
func (s Snapshots) removeOwn(ctx context.Context, ls *v1alpha1.LocalSnapshot) (bool, error) {
	snap, err := s.A.Vols.FindSnapshot(ctx, ls.Name)
	switch {
	case errors.Is(err, backend.ErrNotFound):
		return false, nil
	case err != nil:
		return false, err
	case snap.Name != ls.Spec.SnapshotName || snap.SourceID != ls.Spec.SourceVolumeID:
		klog.InfoS("Not deleting a snapshot that belongs to another source", "localSnapshot", ls.Name,
			"snapshotSource", snap.SourceID, "specSource", ls.Spec.SourceVolumeID)
		return false, nil
	}
	if err := s.A.Vols.DeleteSnapshot(ctx, ls.Name); err != nil {
		return false, err
	}
	return true, nil
}

func (s Snapshots) reconcileCreate(ctx context.Context, ls *v1alpha1.LocalSnapshot) (reconcile.Result, error) {
	a := s.A
	id, spec := ls.Name, ls.Spec
	if want := names.SnapshotID(spec.SnapshotName); want != id {
		return s.fail(ctx, ls, status.Errorf(codes.InvalidArgument,
			"object name %q is not the snapshot id %q of snapshot name %q; the node does not act on it", id, want, spec.SnapshotName))
	}
	if st := ls.Status; st.Phase == v1alpha1.PhaseFailed && st.ObservedGeneration == ls.Generation && permanentName(st.Code) {
		klog.V(4).InfoS("LocalSnapshot failed permanently at this generation; waiting for a new spec",
			"localSnapshot", id, "code", st.Code, "generation", ls.Generation)
		return reconcile.Result{}, nil
	}
	if !controllerutil.ContainsFinalizer(ls, v1alpha1.Finalizer) {
		controllerutil.AddFinalizer(ls, v1alpha1.Finalizer)
		if err := a.Client.Update(ctx, ls); err != nil {
			return reconcile.Result{}, client.IgnoreNotFound(err)
		}
		klog.V(2).InfoS("Finalizer added to LocalSnapshot", "localSnapshot", id)
	}
	// The snapshot's id, then its source: as the node-local CreateSnapshot
	// locks them, so a delete of the source never runs meanwhile.
	unlock, err := a.lock(ctx, id)
	if err != nil {
		return reconcile.Result{}, err
	}
	unlockSrc, err := a.lock(ctx, spec.SourceVolumeID)
	if err != nil {
		unlock()
		return reconcile.Result{}, err
	}
	snap, taken, err := s.ensureSnapshot(ctx, ls)
	unlockSrc()
	unlock()
	if err != nil {
		return s.fail(ctx, ls, err)
	}
	if taken {
		klog.InfoS("LocalSnapshot taken", "localSnapshot", id, "snapshotName", spec.SnapshotName, "source", spec.SourceVolumeID,
			"pool", snap.Pool, "bytes", snap.SizeBytes)
	}
	created := metav1.NewTime(time.Unix(snap.CreationTime, 0))
	return s.setStatus(ctx, ls, v1alpha1.LocalSnapshotStatus{
		Phase:        v1alpha1.PhaseReady,
		SnapshotID:   snap.ID,
		SizeBytes:    snap.SizeBytes,
		CreationTime: &created,
		ReadyToUse:   true,
		Message:      fmt.Sprintf("%d bytes of volume %s in pool %s on node %s", snap.SizeBytes, spec.SourceVolumeID, snap.Pool, a.NodeName),
	}, nil)
}

// ensureSnapshot returns the snapshot of ls, taking it if it does not exist
// yet, and whether it took it now.
func (s Snapshots) ensureSnapshot(ctx context.Context, ls *v1alpha1.LocalSnapshot) (*backend.Snapshot, bool, error) {
	a, id, spec := s.A, ls.Name, ls.Spec
	snap, err := a.Vols.FindSnapshot(ctx, id)
	switch {
	case err == nil && (snap.Name != spec.SnapshotName || snap.SourceID != spec.SourceVolumeID):
		return nil, false, fmt.Errorf("%w: snapshot %s is snapshot %q of volume %q, not %q of %q", backend.ErrExists,
			id, snap.Name, snap.SourceID, spec.SnapshotName, spec.SourceVolumeID)
	case err == nil:
		return snap, false, nil // taken before (a retry, a restart)
	case !errors.Is(err, backend.ErrNotFound):
		return nil, false, fmt.Errorf("look up snapshot %s: %w", id, err)
	case ls.Status.Phase == v1alpha1.PhaseReady || ls.Status.SnapshotID != "":
		return nil, false, status.Errorf(codes.NotFound,
			"snapshot %s was reported taken but is gone from the node; not taking another (it would hold other data)", id)
	}
	if owner, err := a.nodeOwner(ctx); err != nil {
		return nil, false, fmt.Errorf("read Node %s before taking snapshot %s: %w", a.NodeName, id, err)
	} else if owner == nil {
		return nil, false, status.Errorf(codes.FailedPrecondition, "node %s does not exist; no snapshot is taken for it", a.NodeName)
	}
	snap, err = a.Vols.CreateSnapshot(ctx, spec.SnapshotName, spec.SourceVolumeID)
	if err != nil {
		return nil, false, fmt.Errorf("snapshot volume %s on node %s: %w", spec.SourceVolumeID, a.NodeName, err)
	}
	return snap, true, nil
}

// fail reports err in status; permanent failures end the reconcile,
// transient ones are retried with backoff.
func (s Snapshots) fail(ctx context.Context, ls *v1alpha1.LocalSnapshot, err error) (reconcile.Result, error) {
	code := codeOf(err)
	if !permanent(code) && ls.Status.Phase == v1alpha1.PhaseReady && ls.Status.ObservedGeneration == ls.Generation {
		klog.ErrorS(err, "Checking a Ready LocalSnapshot failed; retrying", "localSnapshot", ls.Name, "code", code.String())
		return reconcile.Result{}, err
	}
	klog.ErrorS(err, "LocalSnapshot failed", "localSnapshot", ls.Name, "snapshotName", ls.Spec.SnapshotName,
		"source", ls.Spec.SourceVolumeID, "code", code.String(), "retry", !permanent(code))
	st := v1alpha1.LocalSnapshotStatus{Phase: v1alpha1.PhaseFailed, Code: code.String(), Message: errMessage(err),
		SnapshotID: ls.Status.SnapshotID}
	if permanent(code) {
		return s.setStatus(ctx, ls, st, nil)
	}
	return s.setStatus(ctx, ls, st, err)
}

// setStatus writes st (for the object's current generation) if it differs
// from the object's, after publishing NodeStorage, and returns ret.
func (s Snapshots) setStatus(ctx context.Context, ls *v1alpha1.LocalSnapshot, st v1alpha1.LocalSnapshotStatus, ret error) (reconcile.Result, error) {
	a := s.A
	st.ObservedGeneration = ls.Generation
	if equality.Semantic.DeepEqual(ls.Status, st) {
		return reconcile.Result{}, ret
	}
	orig := ls.DeepCopy()
	ls.Status = st
	return a.writeStatus(ctx, "LocalSnapshot", ls, orig, ret, "phase", st.Phase, "code", st.Code,
		"sizeBytes", st.SizeBytes, "generation", ls.Generation)
}
