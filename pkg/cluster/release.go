package cluster

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
)

// Releaser frees LocalVolumes whose node does not exist (deleted, or never
// did): it drops the node's finalizer so nothing hangs on it, and marks the
// volume Failed so that a waiting CreateVolume returns.
type Releaser struct {
	Client client.Client
}

// SetupWithManager watches LocalVolumes and Nodes. Nodes by metadata only:
// existence is all it needs, and Volumes reads the same informer
// (NewVolumes), which then holds no Node status.
func (r *Releaser) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("carve-release").
		For(&v1alpha1.LocalVolume{}).
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(r.volumesOfNode), builder.OnlyMetadata).
		Complete(r)
}

func (r *Releaser) volumesOfNode(ctx context.Context, obj client.Object) []reconcile.Request {
	var list v1alpha1.LocalVolumeList
	if err := r.Client.List(ctx, &list, client.MatchingLabels{NodeLabel: obj.GetName()}); err != nil {
		klog.ErrorS(err, "Listing LocalVolumes of node", "node", obj.GetName())
		return nil
	}
	var reqs []reconcile.Request
	for _, lv := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: lv.Name}})
	}
	return reqs
}

// Reconcile implements reconcile.Reconciler.
func (r *Releaser) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	lv := &v1alpha1.LocalVolume{}
	if err := r.Client.Get(ctx, req.NamespacedName, lv); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	err := r.Client.Get(ctx, types.NamespacedName{Name: lv.Spec.NodeName}, nodeMeta())
	if err == nil || !apierrors.IsNotFound(err) {
		return reconcile.Result{}, err // the node exists (or we cannot tell): its agent is in charge
	}
	if controllerutil.ContainsFinalizer(lv, v1alpha1.Finalizer) {
		patch := client.MergeFrom(lv.DeepCopy())
		controllerutil.RemoveFinalizer(lv, v1alpha1.Finalizer)
		if err := r.Client.Patch(ctx, lv, patch); err != nil {
			return reconcile.Result{}, client.IgnoreNotFound(err)
		}
		klog.InfoS("Released LocalVolume of a node that does not exist", "name", lv.Name, "node", lv.Spec.NodeName)
	}
	if lv.DeletionTimestamp != nil || lv.Status.Phase == v1alpha1.PhaseFailed {
		return reconcile.Result{}, nil
	}
	patch := client.MergeFrom(lv.DeepCopy())
	lv.Status.Phase = v1alpha1.PhaseFailed
	lv.Status.Code = "FailedPrecondition"
	lv.Status.Message = fmt.Sprintf("node %s does not exist", lv.Spec.NodeName)
	lv.Status.ObservedGeneration = lv.Generation
	return reconcile.Result{}, client.IgnoreNotFound(r.Client.Status().Patch(ctx, lv, patch))
}

// SnapshotReleaser frees LocalSnapshots whose node does not exist, as
// Releaser does LocalVolumes: it drops the node's finalizer and marks the
// snapshot Failed (FailedPrecondition), so that a waiting CreateSnapshot
// returns and a DeleteSnapshot is not stuck.
type SnapshotReleaser struct {
	Client client.Client
}

// SetupWithManager watches LocalSnapshots and Nodes (metadata only). When
// the API server has no LocalSnapshot kind (CRDs older than the controller)
// it registers nothing and logs why: the controller refuses snapshot calls
// then (Volumes.NoSnapshotCRD).
func (r *SnapshotReleaser) SetupWithManager(mgr ctrl.Manager) error {
	gk := schema.GroupKind{Group: v1alpha1.GroupVersion.Group, Kind: "LocalSnapshot"}
	if _, err := mgr.GetRESTMapper().RESTMapping(gk, v1alpha1.GroupVersion.Version); meta.IsNoMatchError(err) {
		klog.ErrorS(err, "The LocalSnapshot CRD is not installed: not releasing LocalSnapshots of deleted nodes")
		return nil
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("carve-release-snapshots").
		For(&v1alpha1.LocalSnapshot{}).
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(r.snapshotsOfNode), builder.OnlyMetadata).
		Complete(r)
}

func (r *SnapshotReleaser) snapshotsOfNode(ctx context.Context, obj client.Object) []reconcile.Request {
	var list v1alpha1.LocalSnapshotList
	if err := r.Client.List(ctx, &list, client.MatchingLabels{NodeLabel: obj.GetName()}); err != nil {
		klog.ErrorS(err, "Listing LocalSnapshots of node", "node", obj.GetName())
		return nil
	}
	var reqs []reconcile.Request
	for _, ls := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: ls.Name}})
	}
	return reqs
}

// Reconcile implements reconcile.Reconciler.
func (r *SnapshotReleaser) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	ls := &v1alpha1.LocalSnapshot{}
	if err := r.Client.Get(ctx, req.NamespacedName, ls); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	err := r.Client.Get(ctx, types.NamespacedName{Name: ls.Spec.NodeName}, nodeMeta())
	if err == nil || !apierrors.IsNotFound(err) {
		return reconcile.Result{}, err // the node exists (or we cannot tell): its agent is in charge
	}
	if controllerutil.ContainsFinalizer(ls, v1alpha1.Finalizer) {
		patch := client.MergeFrom(ls.DeepCopy())
		controllerutil.RemoveFinalizer(ls, v1alpha1.Finalizer)
		if err := r.Client.Patch(ctx, ls, patch); err != nil {
			return reconcile.Result{}, client.IgnoreNotFound(err)
		}
		klog.InfoS("Released LocalSnapshot of a node that does not exist", "name", ls.Name, "node", ls.Spec.NodeName)
	}
	if ls.DeletionTimestamp != nil || ls.Status.Phase == v1alpha1.PhaseFailed {
		return reconcile.Result{}, nil
	}
	patch := client.MergeFrom(ls.DeepCopy())
	ls.Status.Phase = v1alpha1.PhaseFailed
	ls.Status.Code = "FailedPrecondition"
	ls.Status.Message = fmt.Sprintf("node %s does not exist", ls.Spec.NodeName)
	ls.Status.ObservedGeneration = ls.Generation
	return reconcile.Result{}, client.IgnoreNotFound(r.Client.Status().Patch(ctx, ls, patch))
}
