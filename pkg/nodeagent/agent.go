// Package nodeagent is the node's half of carve's controller mode. It
// reconciles the LocalVolumes assigned to this node (creates, expands and
// deletes their devices, copies of a source included, guarded by the node's
// finalizer, and reports the outcome in status), likewise its LocalSnapshots
// (Snapshots: thin snapshots taken and removed), and publishes this node's NodeStorage, the capacity of
// its pools, after every change and on a slow timer. The controller reads
// NodeStorage instead of asking the node, so no GetCapacity call costs a tool
// run.
package nodeagent

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/volume"
)

// Defaults for the Agent's optional fields.
const (
	DefaultResync   = time.Minute
	DefaultDebounce = 100 * time.Millisecond
	DefaultWorkers  = 4
	// maxRetry bounds the wait before retrying a failed publish.
	maxRetry = 30 * time.Second
)

// Agent is the node agent. Set the exported fields, then call
// SetupWithManager (or drive Reconcile, Publish and Run yourself).
type Agent struct {
	// NodeName is this node; it names the NodeStorage and selects the LocalVolumes.
	NodeName string
	// Vols is the node's volume manager.
	Vols *volume.Manager
	// Locks are the per-volume-id locks shared with the CSI services.
	Locks *keylock.Locks
	// Client reaches the API server. SetupWithManager fills it from the manager
	// when nil. This node's Node is read with it as metadata
	// (metav1.PartialObjectMetadata) before every publish, device creation
	// and snapshot: NewManager's client serves it from a watch of that one Node
	// (issue 13: a GET each time was a third of a node's requests per
	// volume). NodeStorage is read with it too, so a client that caches
	// NodeStorage would watch every node's: NewManager's reads it directly.
	Client client.Client
	// APIReader, if set, reads the Node from the API server when Client
	// finds none: a Node registered a moment ago may not be in a cache yet.
	// SetupWithManager fills it from the manager when nil.
	APIReader client.Reader
	// Resync is the period of the slow NodeStorage publish (DefaultResync if 0).
	Resync time.Duration
	// Debounce is the wait after a Changed signal before publishing, so that a
	// burst of changes costs one write (DefaultDebounce if 0).
	Debounce time.Duration
	// Workers is the number of LocalVolumes reconciled at once (DefaultWorkers if 0).
	Workers int

	once    sync.Once
	changed chan struct{}
	// readNext makes the next publish read NodeStorage from the API server
	// instead of trusting last (set by Run's slow resync).
	readNext atomic.Bool
	// last is NodeStorage as this agent last read or wrote it, nil when
	// unknown; only publish uses it, and publishes run one at a time.
	last *v1alpha1.NodeStorage
	// Publishes run one at a time; callers that arrive while one runs share
	// the next one (pub.cond waits on pub.mu).
	pub struct {
		mu          sync.Mutex
		cond        *sync.Cond
		running     bool
		asked, done uint64 // publishes asked for so far; the last one covered by a finished publish
		err         error  // the result of the publish that finished last
	}
}

func (a *Agent) signal() chan struct{} {
	a.once.Do(func() { a.changed = make(chan struct{}, 1) })
	return a.changed
}

// Changed tells the publisher that capacity changed. It never blocks, and
// signals that arrive before the next publish coalesce into it.
func (a *Agent) Changed() {
	select {
	case a.signal() <- struct{}{}:
	default:
	}
}

func (a *Agent) resync() time.Duration {
	if a.Resync > 0 {
		return a.Resync
	}
	return DefaultResync
}

func (a *Agent) debounce() time.Duration {
	if a.Debounce > 0 {
		return a.Debounce
	}
	return DefaultDebounce
}

// SetupWithManager registers the LocalVolume reconciler for this node's
// volumes and the LocalSnapshot reconciler (Snapshots) for its snapshots
// (skipped, with an error logged, when the API server has no LocalSnapshot
// kind), and adds Run to the manager.
func (a *Agent) SetupWithManager(mgr ctrl.Manager) error {
	if a.NodeName == "" || a.Vols == nil || a.Locks == nil {
		return fmt.Errorf("nodeagent: NodeName, Vols and Locks are required")
	}
	if a.Client == nil {
		a.Client = mgr.GetClient()
	}
	if a.APIReader == nil {
		a.APIReader = mgr.GetAPIReader()
	}
	workers := a.Workers
	if workers <= 0 {
		workers = DefaultWorkers
	}
	mine := predicate.NewPredicateFuncs(func(o client.Object) bool {
		lv, ok := o.(*v1alpha1.LocalVolume)
		return ok && lv.Spec.NodeName == a.NodeName
	})
	err := ctrl.NewControllerManagedBy(mgr).
		Named("localvolume").
		For(&v1alpha1.LocalVolume{}, builder.WithPredicates(mine)).
		WithOptions(controller.Options{MaxConcurrentReconciles: workers}).
		Complete(a)
	if err != nil {
		return fmt.Errorf("nodeagent: LocalVolume controller: %w", err)
	}
	gk := schema.GroupKind{Group: v1alpha1.GroupVersion.Group, Kind: "LocalSnapshot"}
	if _, err := mgr.GetRESTMapper().RESTMapping(gk, v1alpha1.GroupVersion.Version); meta.IsNoMatchError(err) {
		// CRDs older than this node (Helm never upgrades CRDs): volumes work
		// as before; the controller refuses snapshots meanwhile.
		klog.ErrorS(err, "The LocalSnapshot CRD is not installed: this node takes no snapshots until it is applied (deploy/helm/carve/crds/) and the node restarted")
		return mgr.Add(publisher{a})
	} else if err != nil {
		// Cannot tell now (no API server yet): take the kind as installed.
		klog.V(2).InfoS("Cannot check the LocalSnapshot kind; reconciling LocalSnapshots", "err", err)
	}
	mySnap := predicate.NewPredicateFuncs(func(o client.Object) bool {
		ls, ok := o.(*v1alpha1.LocalSnapshot)
		return ok && ls.Spec.NodeName == a.NodeName
	})
	err = ctrl.NewControllerManagedBy(mgr).
		Named("localsnapshot").
		For(&v1alpha1.LocalSnapshot{}, builder.WithPredicates(mySnap)).
		WithOptions(controller.Options{MaxConcurrentReconciles: workers}).
		Complete(Snapshots{A: a})
	if err != nil {
		return fmt.Errorf("nodeagent: LocalSnapshot controller: %w", err)
	}
	return mgr.Add(publisher{a})
}

// publisher runs Agent.Run in the manager on every replica (no leader election:
// each node publishes its own NodeStorage).
type publisher struct{ a *Agent }

func (p publisher) Start(ctx context.Context) error { return p.a.Run(ctx) }
func (p publisher) NeedLeaderElection() bool        { return false }

// Run publishes NodeStorage at once, then Debounce after each Changed signal
// and every Resync, until ctx ends. A failed publish is retried with backoff
// (up to 30s, at most Resync). It returns nil when ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	changed := a.signal()
	resync, debounce := a.resync(), a.debounce()
	klog.InfoS("Publishing NodeStorage", "node", a.NodeName, "resync", resync, "debounce", debounce)
	timer := time.NewTimer(0) // first publish now
	defer timer.Stop()
	var failures int
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
			// The slow resync reads NodeStorage afresh: the only way to see an
			// object deleted or changed by someone else while the pools did not
			// change (publishes between resyncs trust the copy last written).
			a.readNext.Store(true)
		case <-changed:
			// Let a burst of changes settle; they all land in one publish.
			// Signals that arrive after the drain below trigger the next one.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(debounce):
			}
		}
		select {
		case <-changed:
		default:
		}
		next := resync
		if err := a.Publish(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			failures++
			next = min(time.Second<<min(failures-1, 5), maxRetry, resync)
			klog.ErrorS(err, "Publishing NodeStorage failed", "node", a.NodeName, "retryIn", next)
		} else {
			failures = 0
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}

// Publish measures every pool now and writes this node's NodeStorage status
// if it differs from the published one (updateTime aside), creating the
// object if it is missing: a resync that finds nothing changed writes
// nothing. A pool that cannot be read is published as unhealthy with no
// capacity.
//
// The object is owned by the Node, so that the garbage collector removes it
// with the Node. While the Node does not exist nothing is published (and
// Publish returns nil): an object re-created for a deleted Node would have no
// owner and outlive it, and the controller would count and place volumes on a
// node that is gone. When the Node cannot be read, an existing object's status
// is still updated, but none is created without its owner.
//
// A publish costs no read of its own (issue 13: 8 of a node's 14 requests
// per volume on the bench-scale rig were these reads). The Node comes from
// Client (NewManager's serves it from a watch of that one Node), and from
// APIReader only while Client has none. NodeStorage comes from the copy this
// agent last wrote: its resourceVersion makes a write fail with Conflict if
// anyone changed the object since, or NotFound if anyone deleted it, and the
// publish then reads and writes again. It is read from the API server by the
// first publish, by the one after a failed write, and after each of Run's
// slow resyncs (the only publish that sees a deleted object while nothing
// else changes).
//
// Concurrent calls coalesce: a call made while a publish runs waits for the
// next one, which starts after it and so measures what the caller changed;
// every caller waiting then shares it and its result. Each finished volume
// publishes before its result shows, and a node making several at once
// would otherwise queue one full publish per volume (issue 13: 4.4 s median
// from device made to Ready with 100 nodes on the bench-scale rig).
func (a *Agent) Publish(ctx context.Context) error {
	p := &a.pub
	p.mu.Lock()
	if p.cond == nil {
		p.cond = sync.NewCond(&p.mu)
	}
	p.asked++
	mine := p.asked
	for p.running && p.done < mine {
		p.cond.Wait()
	}
	if p.done >= mine { // a publish that started after this call finished
		err := p.err
		p.mu.Unlock()
		return err
	}
	p.running = true
	covers := p.asked // every call so far: all were made before this measures
	p.mu.Unlock()
	err := a.publish(ctx)
	p.mu.Lock()
	p.running, p.done, p.err = false, covers, err
	p.cond.Broadcast()
	p.mu.Unlock()
	return err
}

// publish is one publish (see Publish); only one runs at a time.
func (a *Agent) publish(ctx context.Context) error {
	owner, err := a.nodeOwner(ctx)
	mayCreate := true
	switch {
	case err != nil:
		klog.ErrorS(err, "Cannot read the Node for NodeStorage's owner reference; updating an existing NodeStorage only",
			"node", a.NodeName)
		mayCreate = false
	case owner == nil:
		klog.V(2).InfoS("Node does not exist; not publishing NodeStorage", "node", a.NodeName)
		return nil
	}
	if a.readNext.Swap(false) {
		a.last = nil
	}
	st := a.measure(ctx)
	const attempts = 5
	for i := 1; ; i++ {
		err := a.writeNodeStorage(ctx, st, owner, mayCreate)
		if err == nil {
			if klog.V(4).Enabled() {
				klog.InfoS("NodeStorage published", "node", a.NodeName, "defaultPool", st.DefaultPool,
					"freeBytes", st.FreeBytes, "totalBytes", st.TotalBytes, "pools", len(st.Pools))
			}
			return nil
		}
		if i == attempts || !mayCreate && apierrors.IsNotFound(err) ||
			!(apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) || apierrors.IsNotFound(err)) {
			return fmt.Errorf("publish NodeStorage %q: %w", a.NodeName, err)
		}
	}
}

// measure reads every pool's capacity.
func (a *Agent) measure(ctx context.Context) v1alpha1.NodeStorageStatus {
	st := v1alpha1.NodeStorageStatus{DefaultPool: a.Vols.DefaultPool(), UpdateTime: metav1.Now()}
	for _, p := range a.Vols.Pools() {
		ps := v1alpha1.PoolStatus{Name: p.Name, Type: p.Backend.Type(), Healthy: true}
		c, err := a.Vols.Capacity(ctx, p.Name)
		if err != nil {
			ps.Healthy = false
			ps.Message = err.Error()
			klog.ErrorS(err, "Cannot read pool capacity; publishing it as unhealthy", "node", a.NodeName, "pool", p.Name)
		} else {
			ps.TotalBytes, ps.FreeBytes, ps.MaxVolumeBytes, ps.AlignBytes = c.TotalBytes, c.FreeBytes, c.MaxVolumeBytes, c.AlignBytes
			ps.Thin = thinStatus(c)
		}
		ps.Devices = a.devices(ctx, p.Name, p.Backend)
		if p.Name == st.DefaultPool {
			st.FreeBytes, st.TotalBytes = ps.FreeBytes, ps.TotalBytes
		}
		st.Pools = append(st.Pools, ps)
	}
	return st
}

// thinStatus is NodeStorage's form of a thin pool's use; nil for other pools.
func thinStatus(c backend.Capacity) *v1alpha1.ThinPoolStatus {
	if !c.IsThin() {
		return nil
	}
	u := c.Thin
	st := &v1alpha1.ThinPoolStatus{
		DataBytes: u.DataBytes, VirtualBytes: u.VirtualBytes,
		Overprovision:    strconv.FormatFloat(u.Overprovision, 'g', -1, 64),
		ThresholdPercent: int32(u.ThresholdPercent),
	}
	if u.Active {
		st.DataPercent = strconv.FormatFloat(u.DataPercent, 'f', 2, 64)
		st.MetadataPercent = strconv.FormatFloat(u.MetadataPercent, 'f', 2, 64)
	}
	return st
}

// devices lists the devices of a pool built from them (backend.DeviceLister:
// every lvm pool); nil for other pools. A failed read leaves them out (logged): the capacity
// figures still go out.
func (a *Agent) devices(ctx context.Context, pool string, b backend.Backend) []v1alpha1.PoolDevice {
	dl, ok := b.(backend.DeviceLister)
	if !ok {
		return nil
	}
	devs, err := dl.Devices(ctx)
	if err != nil {
		klog.ErrorS(err, "Cannot list the pool's devices; publishing it without them", "node", a.NodeName, "pool", pool)
		return nil
	}
	out := make([]v1alpha1.PoolDevice, 0, len(devs))
	for _, d := range devs {
		out = append(out, v1alpha1.PoolDevice{Path: d.Path, UUID: d.UUID, SizeBytes: d.SizeBytes, FreeBytes: d.FreeBytes, Missing: d.Missing})
	}
	return out
}

// nodeOwner returns the owner reference to this node's Node object, or nil
// when there is no Node (a node being removed, or never registered). It reads
// the Node's metadata through Client (NewManager's serves it from a watch),
// and from APIReader when Client finds none.
func (a *Agent) nodeOwner(ctx context.Context) (*metav1.OwnerReference, error) {
	key := types.NamespacedName{Name: a.NodeName}
	node := nodeMeta()
	err := a.Client.Get(ctx, key, node)
	if apierrors.IsNotFound(err) && a.APIReader != nil {
		node = nodeMeta()
		err = a.APIReader.Get(ctx, key, node)
	}
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	return &metav1.OwnerReference{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}, nil
}

// nodeMeta is an empty Node in metadata form, the form the agent reads and
// NewManager caches.
func nodeMeta() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Node"))
	return m
}

// withOwner sets owner as the object's only Node owner; it reports whether
// anything changed.
func withOwner(obj *v1alpha1.NodeStorage, owner *metav1.OwnerReference) bool {
	if owner == nil {
		return false
	}
	var refs []metav1.OwnerReference
	found := false
	for _, r := range obj.OwnerReferences {
		if r.APIVersion == owner.APIVersion && r.Kind == owner.Kind {
			if r.Name == owner.Name && r.UID == owner.UID && !found {
				found = true
				refs = append(refs, r)
			}
			continue // a stale Node owner (same name, old uid) would get the object collected
		}
		refs = append(refs, r)
	}
	if found && len(refs) == len(obj.OwnerReferences) {
		return false
	}
	if !found {
		refs = append(refs, *owner)
	}
	obj.OwnerReferences = refs
	return true
}

// writeNodeStorage makes NodeStorage say st, starting from a.last when it is
// known (no read) and from a read otherwise. a.last holds the object as the
// server returned it after a successful read or write, nil after a failure,
// so that the retry reads.
func (a *Agent) writeNodeStorage(ctx context.Context, st v1alpha1.NodeStorageStatus, owner *metav1.OwnerReference, mayCreate bool) error {
	ns := a.last
	a.last = nil
	if ns == nil {
		ns = &v1alpha1.NodeStorage{}
		err := a.Client.Get(ctx, types.NamespacedName{Name: a.NodeName}, ns)
		switch {
		case apierrors.IsNotFound(err) && !mayCreate:
			return err
		case apierrors.IsNotFound(err):
			ns = &v1alpha1.NodeStorage{ObjectMeta: metav1.ObjectMeta{Name: a.NodeName}}
			withOwner(ns, owner)
			if err := a.Client.Create(ctx, ns); err != nil {
				return err
			}
			klog.InfoS("NodeStorage created", "node", a.NodeName, "nodeUID", owner.UID)
		case err != nil:
			return err
		}
	}
	if withOwner(ns, owner) {
		if err := a.Client.Update(ctx, ns); err != nil {
			return err
		}
		klog.InfoS("NodeStorage owner reference set", "node", a.NodeName, "nodeUID", owner.UID)
	}
	if sameStatus(ns.Status, st) {
		// Nothing changed: a write would only move updateTime, and every
		// watcher of NodeStorage would get it (100 nodes resyncing each
		// minute were 100 writes a minute at idle, issue 13).
		a.last = ns
		return nil
	}
	ns.Status = st
	if err := a.Client.Status().Update(ctx, ns); err != nil {
		return err
	}
	a.last = ns
	return nil
}

// sameStatus reports whether the published status already says what st
// says; updateTime, the time of the last change, is not compared.
func sameStatus(published, st v1alpha1.NodeStorageStatus) bool {
	published.UpdateTime = st.UpdateTime
	return equality.Semantic.DeepEqual(published, st)
}
