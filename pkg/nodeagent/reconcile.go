package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/pkg/volume"
)

var _ reconcile.Reconciler = (*Agent)(nil)

// Reconcile brings one LocalVolume of this node to its spec:
//
//   - Another node's LocalVolume is never touched.
//   - The object's name must be names.VolumeID(spec.volumeName), the device
//     name; otherwise it is Failed/InvalidArgument and nothing is done.
//   - Before any device exists the node's finalizer is on the object, so a
//     device is never created for an object that can vanish without the node.
//   - A missing device is created, a smaller one expanded; status becomes
//     Ready with the device's path and real size. A device that vanished after
//     it was Ready is reported Failed/NotFound, not silently re-created empty.
//   - Failures are reported as phase Failed with the gRPC code name and a
//     message. Permanent ones (ResourceExhausted, InvalidArgument, OutOfRange,
//     AlreadyExists, NotFound) are not retried until the spec's generation
//     changes or someone resets status.phase; transient ones (Internal,
//     Unavailable, ...) are retried with backoff.
//   - Being deleted: the device is deleted, then the finalizer removed.
//   - Capacity is exact when a result shows: NodeStorage is republished
//     before any status write and before the finalizer's removal.
//   - No device is created while this node's Node object does not exist.
//
// Every step is idempotent: after a restart a Ready volume costs one lookup.
func (a *Agent) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	lv := &v1alpha1.LocalVolume{}
	if err := a.Client.Get(ctx, req.NamespacedName, lv); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if lv.Spec.NodeName != a.NodeName {
		klog.V(5).InfoS("Ignoring another node's LocalVolume", "localVolume", lv.Name, "nodeName", lv.Spec.NodeName)
		return reconcile.Result{}, nil
	}
	if !lv.DeletionTimestamp.IsZero() {
		return a.reconcileDelete(ctx, lv)
	}
	return a.reconcileCreate(ctx, lv)
}

func (a *Agent) lock(ctx context.Context, id string) (func(), error) {
	unlock, err := a.Locks.Lock(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("waiting for the lock of volume %s: %w", id, err)
	}
	return unlock, nil
}

func (a *Agent) reconcileDelete(ctx context.Context, lv *v1alpha1.LocalVolume) (reconcile.Result, error) {
	if !controllerutil.ContainsFinalizer(lv, v1alpha1.Finalizer) {
		return reconcile.Result{}, nil
	}
	if id := names.VolumeID(lv.Spec.VolumeName); id != lv.Name {
		// Never delete a device on the word of an object that does not name it.
		klog.InfoS("LocalVolume being deleted does not match its volume name; releasing it without touching any device",
			"localVolume", lv.Name, "volumeName", lv.Spec.VolumeName, "volumeID", id)
	} else {
		unlock, err := a.lock(ctx, lv.Name)
		if err != nil {
			return reconcile.Result{}, err
		}
		err = a.Vols.Delete(ctx, lv.Name)
		unlock()
		if err != nil {
			klog.ErrorS(err, "Cannot delete the device of a deleted LocalVolume; retrying", "localVolume", lv.Name)
			return reconcile.Result{}, fmt.Errorf("delete device %s: %w", lv.Name, err)
		}
		// The finalizer's removal ends DeleteVolume, and the provisioner reads
		// capacity right after it: the freed space must be published first.
		// On failure the retry deletes nothing more and publishes again.
		if err := a.Publish(ctx); err != nil {
			klog.ErrorS(err, "Cannot publish capacity after deleting a device; keeping the finalizer and retrying",
				"localVolume", lv.Name)
			return reconcile.Result{}, err
		}
		klog.InfoS("Device of deleted LocalVolume removed", "localVolume", lv.Name, "volumeName", lv.Spec.VolumeName,
			"pool", lv.Spec.Pool)
	}
	controllerutil.RemoveFinalizer(lv, v1alpha1.Finalizer)
	if err := a.Client.Update(ctx, lv); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	klog.InfoS("LocalVolume released", "localVolume", lv.Name)
	return reconcile.Result{}, nil
}

func (a *Agent) knownPool(name string) bool {
	if name == "" {
		return true
	}
	for _, p := range a.Vols.Pools() {
		if p.Name == name {
			return true
		}
	}
	return false
}

func (a *Agent) reconcileCreate(ctx context.Context, lv *v1alpha1.LocalVolume) (reconcile.Result, error) {
	id, spec := lv.Name, lv.Spec
	if want := names.VolumeID(spec.VolumeName); want != id {
		return a.fail(ctx, lv, nil, status.Errorf(codes.InvalidArgument,
			"object name %q is not the volume id %q of volume name %q; the node does not act on it", id, want, spec.VolumeName))
	}
	if s := lv.Status; s.Phase == v1alpha1.PhaseFailed && s.ObservedGeneration == lv.Generation && permanentName(s.Code) {
		klog.V(4).InfoS("LocalVolume failed permanently at this generation; waiting for a new spec",
			"localVolume", id, "code", s.Code, "generation", lv.Generation)
		return reconcile.Result{}, nil
	}
	if spec.SizeBytes <= 0 {
		return a.fail(ctx, lv, nil, status.Errorf(codes.InvalidArgument, "sizeBytes must be positive, not %d", spec.SizeBytes))
	}
	if !a.knownPool(spec.Pool) {
		return a.fail(ctx, lv, nil, fmt.Errorf("node %s has no pool %q: %w", a.NodeName, spec.Pool, volume.ErrUnknownPool))
	}
	if _, err := stripingOf(spec); err != nil {
		return a.fail(ctx, lv, nil, err)
	}
	if !controllerutil.ContainsFinalizer(lv, v1alpha1.Finalizer) {
		// Durably guard the device before it exists. The update fails if the
		// object changed or is being deleted, and the reconcile starts over.
		controllerutil.AddFinalizer(lv, v1alpha1.Finalizer)
		if err := a.Client.Update(ctx, lv); err != nil {
			return reconcile.Result{}, client.IgnoreNotFound(err)
		}
		klog.V(2).InfoS("Finalizer added to LocalVolume", "localVolume", id)
	}

	unlock, err := a.lock(ctx, id)
	if err != nil {
		return reconcile.Result{}, err
	}
	dev, action, err := a.ensureDevice(ctx, lv)
	unlock()
	if err != nil {
		return a.fail(ctx, lv, dev, err)
	}
	if action != "" {
		klog.InfoS("LocalVolume device "+action, "localVolume", id, "volumeName", spec.VolumeName, "pool", dev.Pool,
			"device", dev.DevicePath, "bytes", dev.SizeBytes, "requiredBytes", spec.SizeBytes)
	}
	return a.setStatus(ctx, lv, v1alpha1.LocalVolumeStatus{
		Phase:            v1alpha1.PhaseReady,
		DevicePath:       dev.DevicePath,
		CurrentSizeBytes: dev.SizeBytes,
		Message:          fmt.Sprintf("%d bytes in pool %s on node %s", dev.SizeBytes, dev.Pool, a.NodeName),
	}, nil)
}

// stripingOf reads the striping a LocalVolume asks for (the StorageClass's,
// as the cluster controller wrote it). Errors wrap backend.ErrCannotStripe
// (InvalidArgument).
func stripingOf(spec v1alpha1.LocalVolumeSpec) (volume.Striping, error) {
	n, err := volume.ParseStripes(spec.Stripes)
	if err != nil {
		return volume.Striping{}, fmt.Errorf("spec.stripes: %w", err)
	}
	return volume.Striping{Stripes: n, StripeSizeBytes: spec.StripeSizeBytes}, nil
}

// ensureDevice makes the device exist with at least spec.sizeBytes. It
// returns the device as it is after the attempt (nil when there is none of
// ours), what it did ("created", "expanded" or "" for nothing) and the error.
func (a *Agent) ensureDevice(ctx context.Context, lv *v1alpha1.LocalVolume) (*backend.Volume, string, error) {
	id, spec := lv.Name, lv.Spec
	pool := spec.Pool
	if pool == "" {
		pool = a.Vols.DefaultPool()
	}
	r := volume.Range{RequiredBytes: spec.SizeBytes, LimitBytes: spec.LimitBytes}
	dev, err := a.Vols.Find(ctx, id)
	if err == nil && dev.Incomplete && spec.Source != nil {
		// A copy whose making was cut short (never handed out): the
		// manager's create removes it and copies again.
		err = fmt.Errorf("%w: device %s is an unfinished copy", backend.ErrNotFound, id)
	}
	switch {
	case errors.Is(err, backend.ErrNotFound):
		if (lv.Status.Phase == v1alpha1.PhaseReady || lv.Status.DevicePath != "") && dev == nil {
			return nil, "", status.Errorf(codes.NotFound,
				"device %s was reported at %s but is gone from the node; not re-creating an empty one (delete the volume)",
				id, lv.Status.DevicePath)
		}
		// A deleted Node's volumes are released by the controller without
		// this node: a device made now would never be deleted.
		if owner, err := a.nodeOwner(ctx); err != nil {
			return nil, "", fmt.Errorf("read Node %s before creating device %s: %w", a.NodeName, id, err)
		} else if owner == nil {
			return nil, "", status.Errorf(codes.FailedPrecondition, "node %s does not exist; no device is created for it", a.NodeName)
		}
		striping, err := stripingOf(spec)
		if err != nil {
			return nil, "", err
		}
		// The same create as the node-local controller's, striping included,
		// so that both modes make the same LV and fail with the same codes.
		req := volume.CreateRequest{Name: spec.VolumeName, Pool: spec.Pool, Range: r, Striping: striping}
		if src := spec.Source; src != nil {
			// The node-local controller's clone path: a thin snapshot of the
			// source in its pool, grown to the size asked for.
			req.Source, req.SourceIsSnapshot = src.ID, src.Kind == v1alpha1.SourceSnapshot
		}
		dev, err = a.Vols.Create(ctx, req)
		if err != nil {
			return nil, "", fmt.Errorf("create %d bytes in pool %s on node %s: %w", spec.SizeBytes, pool, a.NodeName, err)
		}
		return dev, "created", nil
	case err != nil:
		return nil, "", fmt.Errorf("look up device %s: %w", id, err)
	}
	switch {
	case dev.Name != spec.VolumeName || dev.Ephemeral:
		return nil, "", fmt.Errorf("%w: device %s belongs to volume %q (ephemeral=%v), not %q",
			volume.ErrIncompatible, id, dev.Name, dev.Ephemeral, spec.VolumeName)
	case dev.Pool != pool:
		return nil, "", fmt.Errorf("%w: device %s is in pool %s, not %s", volume.ErrIncompatible, id, dev.Pool, pool)
	case spec.Source != nil && dev.Source != spec.Source.ID:
		return nil, "", fmt.Errorf("%w: device %s was created from %q, not %q", volume.ErrIncompatible, id, dev.Source, spec.Source.ID)
	case dev.SizeBytes >= spec.SizeBytes:
		return dev, "", nil
	}
	grown, err := a.Vols.Expand(ctx, id, r)
	if err != nil {
		return dev, "", fmt.Errorf("expand from %d to %d bytes in pool %s on node %s: %w",
			dev.SizeBytes, spec.SizeBytes, pool, a.NodeName, err)
	}
	return grown, "expanded", nil
}

// fail reports err in status. dev is the device as it still is (nil if none).
// Permanent failures end the reconcile; transient ones are retried with
// backoff, and do not take a Ready volume whose spec is unchanged out of Ready.
func (a *Agent) fail(ctx context.Context, lv *v1alpha1.LocalVolume, dev *backend.Volume, err error) (reconcile.Result, error) {
	code := codeOf(err)
	if !permanent(code) && lv.Status.Phase == v1alpha1.PhaseReady && lv.Status.ObservedGeneration == lv.Generation {
		klog.ErrorS(err, "Checking a Ready LocalVolume failed; retrying", "localVolume", lv.Name, "code", code.String())
		return reconcile.Result{}, err
	}
	klog.ErrorS(err, "LocalVolume failed", "localVolume", lv.Name, "volumeName", lv.Spec.VolumeName,
		"pool", lv.Spec.Pool, "sizeBytes", lv.Spec.SizeBytes, "code", code.String(), "retry", !permanent(code))
	st := v1alpha1.LocalVolumeStatus{Phase: v1alpha1.PhaseFailed, Code: code.String(), Message: errMessage(err)}
	if dev != nil {
		st.DevicePath, st.CurrentSizeBytes = dev.DevicePath, dev.SizeBytes
	} else if code == codes.NotFound {
		st.DevicePath = lv.Status.DevicePath // where it was: the device is not re-created
	}
	if permanent(code) {
		return a.setStatus(ctx, lv, st, nil)
	}
	return a.setStatus(ctx, lv, st, err)
}

// errMessage is the error's text without the "rpc error: code = ..." prefix
// of statuses: status.code carries the code.
func errMessage(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Message()
	}
	return err.Error()
}

// setStatus writes st (for the object's current generation) if it differs
// from the status the object has, and returns ret as the reconcile's error.
func (a *Agent) setStatus(ctx context.Context, lv *v1alpha1.LocalVolume, st v1alpha1.LocalVolumeStatus, ret error) (reconcile.Result, error) {
	st.ObservedGeneration = lv.Generation
	if equality.Semantic.DeepEqual(lv.Status, st) {
		return reconcile.Result{}, ret
	}
	orig := lv.DeepCopy()
	lv.Status = st
	return a.writeStatus(ctx, "LocalVolume", lv, orig, ret, "phase", st.Phase, "code", st.Code,
		"currentSizeBytes", st.CurrentSizeBytes, "generation", lv.Generation)
}

// writeStatus patches obj's status (already set; orig is the object before)
// after publishing NodeStorage, for LocalVolumes and LocalSnapshots alike, and
// returns ret as the reconcile's error (or the failure, if ret is nil). The
// status is the operation's result: CreateVolume, ControllerExpandVolume and
// CreateSnapshot return on it, and the provisioner reads capacity right
// after, so NodeStorage must already hold what this result did. kv (starting
// with "phase") is logged.
func (a *Agent) writeStatus(ctx context.Context, kind string, obj, orig client.Object, ret error, kv ...any) (reconcile.Result, error) {
	name := []any{strings.ToLower(kind[:1]) + kind[1:], obj.GetName()} // "localVolume", as klog keys go
	key := append(slices.Clone(name), kv[:2]...)
	if err := a.Publish(ctx); err != nil {
		klog.ErrorS(err, "Cannot publish capacity before writing "+kind+" status; retrying", key...)
		return reconcile.Result{}, err
	}
	if err := a.Client.Status().Patch(ctx, obj, client.MergeFrom(orig)); err != nil {
		if ret == nil {
			ret = client.IgnoreNotFound(err)
		}
		klog.ErrorS(err, "Cannot write "+kind+" status", key...)
		return reconcile.Result{}, ret
	}
	klog.V(2).InfoS(kind+" status written", append(name, kv...)...)
	return reconcile.Result{}, ret
}
