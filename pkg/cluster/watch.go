package cluster

import (
	"context"
	"fmt"
	"sync"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
)

// Events tells waiting calls that a LocalVolume changed, from an informer's
// event handler, so that a wait costs no request to the API server: the
// waiter reads the informer's cache again when told. It implements
// toolscache.ResourceEventHandler.
type Events struct {
	mu   sync.Mutex
	subs map[string]map[chan struct{}]struct{}
}

var _ toolscache.ResourceEventHandler = (*Events)(nil)

// WatchLocalVolumes registers Events on c's LocalVolume informer (the
// manager's cache: the informer starts with the manager).
func WatchLocalVolumes(ctx context.Context, c cache.Cache) (*Events, error) {
	inf, err := c.GetInformer(ctx, &v1alpha1.LocalVolume{})
	if err != nil {
		return nil, fmt.Errorf("LocalVolume informer: %w", err)
	}
	ev := &Events{}
	if _, err := inf.AddEventHandler(ev); err != nil {
		return nil, fmt.Errorf("LocalVolume informer: %w", err)
	}
	return ev, nil
}

// subscribe returns a channel that receives (coalesced, never blocking the
// informer) after every change of the named LocalVolume, and its cancel.
// Subscribe before reading the cache: a change between read and subscribe
// would otherwise go unnoticed.
func (e *Events) subscribe(name string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.subs == nil {
		e.subs = map[string]map[chan struct{}]struct{}{}
	}
	if e.subs[name] == nil {
		e.subs[name] = map[chan struct{}]struct{}{}
	}
	e.subs[name][ch] = struct{}{}
	return ch, func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		delete(e.subs[name], ch)
		if len(e.subs[name]) == 0 {
			delete(e.subs, name)
		}
	}
}

// Notify wakes the waiters of the named LocalVolume.
func (e *Events) Notify(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for ch := range e.subs[name] {
		select {
		case ch <- struct{}{}:
		default: // a wake-up is pending already: the waiter reads the latest state
		}
	}
}

func (e *Events) notifyObj(obj any) {
	if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if o, ok := obj.(client.Object); ok {
		e.Notify(o.GetName())
	}
}

// OnAdd implements toolscache.ResourceEventHandler.
func (e *Events) OnAdd(obj any, _ bool) { e.notifyObj(obj) }

// OnUpdate implements toolscache.ResourceEventHandler.
func (e *Events) OnUpdate(_, obj any) { e.notifyObj(obj) }

// OnDelete implements toolscache.ResourceEventHandler.
func (e *Events) OnDelete(obj any) { e.notifyObj(obj) }

// NewVolumes returns Volumes for the controller: LocalVolumes written and,
// where a cache could mislead, read with direct (the API server); waits on
// the LocalVolume informer of c (a manager's cache, started with it);
// NodeStorage read from c's informer through a FreshReader, and Node metadata
// from c's metadata-only Node informer (the Releaser's, one informer for both),
// so that placement and GetCapacity cost no request (issue 13: one LIST of
// every NodeStorage and one of every Node per CreateVolume, two GETs per
// GetCapacity, were carve's share of a busy API server).
func NewVolumes(ctx context.Context, c cache.Cache, direct client.Client) (*Volumes, error) {
	ev, err := WatchLocalVolumes(ctx, c)
	if err != nil {
		return nil, err
	}
	// Informers made now start with the manager, not lazily at the first
	// CSI call (which would wait for a whole list then).
	if _, err := c.GetInformer(ctx, &v1alpha1.NodeStorage{}); err != nil {
		return nil, fmt.Errorf("NodeStorage informer: %w", err)
	}
	if _, err := c.GetInformer(ctx, nodeMeta()); err != nil {
		return nil, fmt.Errorf("Node metadata informer: %w", err)
	}
	v := &Volumes{Client: direct, Cache: c, Events: ev,
		NodeStorages: &FreshReader{Cache: c, Direct: direct},
		Nodes:        CacheFirst{Cache: c, Direct: direct}}
	gk := schema.GroupKind{Group: v1alpha1.GroupVersion.Group, Kind: "LocalSnapshot"}
	if _, err := direct.RESTMapper().RESTMapping(gk, v1alpha1.GroupVersion.Version); meta.IsNoMatchError(err) {
		// CRDs older than this controller (Helm never upgrades CRDs): serve
		// volumes as before, refuse snapshot calls with the fix.
		klog.ErrorS(err, "The LocalSnapshot CRD is not installed: snapshots and volumes from snapshots are off until it is applied (deploy/helm/carve/crds/) and the controller restarted")
		v.NoSnapshotCRD = true
		return v, nil
	} else if err != nil {
		return nil, fmt.Errorf("LocalSnapshot kind: %w", err)
	}
	// LocalSnapshot names (carvesnap-...) never collide with LocalVolume
	// names (carve-...): one Events serves the waits on both.
	inf, err := c.GetInformer(ctx, &v1alpha1.LocalSnapshot{})
	if err != nil {
		return nil, fmt.Errorf("LocalSnapshot informer: %w", err)
	}
	if _, err := inf.AddEventHandler(ev); err != nil {
		return nil, fmt.Errorf("LocalSnapshot informer: %w", err)
	}
	return v, nil
}
