package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllertest"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/volume"
)

// fakeCache plays the manager's cache for NodeStorage and Node reads: it
// answers from r, or fails as a cache that has not started when broken.
type fakeCache struct {
	cache.Cache // methods not listed here are not used
	r           client.Reader
	broken      bool
}

func (c *fakeCache) GetInformer(context.Context, client.Object, ...cache.InformerGetOption) (cache.Informer, error) {
	return controllertest.NewFakeInformer(controllertest.Synced), nil
}

func (c *fakeCache) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if c.broken {
		return errors.New("the cache is not started")
	}
	return c.r.Get(ctx, key, obj, opts...)
}

func (c *fakeCache) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	if c.broken {
		return errors.New("the cache is not started")
	}
	return c.r.List(ctx, list, opts...)
}

// reads counts the API server reads of NodeStorage and Node, by verb and kind.
type reads struct {
	client.Client
	mu sync.Mutex
	n  map[string]int
}

func kindOf(o any) string {
	switch o := o.(type) {
	case *metav1.PartialObjectMetadata:
		return o.Kind
	case *metav1.PartialObjectMetadataList:
		return o.Kind
	}
	return fmt.Sprintf("%T", o)
}

func (r *reads) count(verb string, o any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	switch k := kindOf(o); k {
	case "*v1alpha1.NodeStorage", "*v1alpha1.NodeStorageList", "Node", "NodeList":
		r.n[verb+" "+k]++
	}
}

func (r *reads) take() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.n
	r.n = nil
	return n
}

func (r *reads) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	r.count("get", obj)
	return r.Client.Get(ctx, key, obj, opts...)
}

func (r *reads) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	r.count("list", list)
	return r.Client.List(ctx, list, opts...)
}

// Issue 13: the controller NewVolumes makes places volumes and answers
// GetCapacity from its informers. Per CreateVolume the API server sees one
// NodeStorage GET (FreshReader.Touch, for the issue-12 guarantee) instead
// of a LIST of every NodeStorage and one of every Node; GetCapacity costs no
// request once the cache holds the node's latest publish, instead of two.
func TestPlacementAndCapacityReadTheCache(t *testing.T) {
	v, _, api, inf, ctx := watched(t, 5*time.Millisecond, nodeStorage("n1", 8*gib), nodeStorage("n2", 4*gib))
	direct := &reads{Client: v.Client}
	fc := &fakeCache{r: api} // always current: a watch that delivers at once
	nv, err := NewVolumes(ctx, fc, direct)
	if err != nil {
		t.Fatal(err)
	}
	// The LocalVolume waits stay on the test's informer (wait_test.go).
	nv.Cache, nv.Events, nv.Recheck = inf, inf.ev, time.Second
	go agent(ctx, api, "n1", 8*gib, 20*time.Millisecond)

	lv, err := nv.Create(ctx, CreateRequest{Name: "pvc", Range: volume.Range{RequiredBytes: gib}})
	if err != nil || lv.Spec.NodeName != "n1" || lv.Status.Phase != v1alpha1.PhaseReady {
		t.Fatalf("create: %+v, %v", lv, err)
	}
	if got, want := fmt.Sprint(direct.take()), fmt.Sprint(map[string]int{"get *v1alpha1.NodeStorage": 1}); got != want {
		t.Errorf("API server reads of NodeStorage and Node per CreateVolume: %s, want %s", got, want)
	}
	if capa, err := nv.Capacity(ctx, "n1", ""); err != nil || capa.FreeBytes != 7*gib {
		t.Fatalf("capacity of n1 after the create: %+v, %v; want 7Gi free", capa, err)
	}
	if capa, err := nv.Capacity(ctx, "", ""); err != nil || capa.FreeBytes != 11*gib {
		t.Fatalf("capacity after the create: %+v, %v; want 11Gi free", capa, err)
	}
	if n := direct.take(); len(n) != 0 {
		t.Errorf("API server reads of NodeStorage and Node per GetCapacity: %v, want none", n)
	}

	// Before the manager's cache has started, the same calls read the API server.
	fc.broken = true
	if capa, err := nv.Capacity(ctx, "n1", ""); err != nil || capa.FreeBytes != 7*gib {
		t.Fatalf("capacity of n1 before the cache started: %+v, %v; want 7Gi free", capa, err)
	}
	if capa, err := nv.Capacity(ctx, "", ""); err != nil || capa.FreeBytes != 11*gib {
		t.Fatalf("capacity before the cache started: %+v, %v; want 11Gi free", capa, err)
	}
	if got := direct.take(); got["get *v1alpha1.NodeStorage"] != 1 || got["list *v1alpha1.NodeStorageList"] != 1 || got["get Node"] != 1 || got["list NodeList"] != 1 {
		t.Errorf("reads before the cache started: %v, want each of NodeStorage and Node got and listed once", got)
	}
}

// A placement right after a result on a node reads that node's NodeStorage
// from the API server while the cache lags: a node the last volume filled is
// refused at once (ErrNoRoom), before any LocalVolume is written, instead of
// the cache's stale room sending a second volume there for the node to fail.
func TestPlacementAfterResultIgnoresStaleCache(t *testing.T) {
	v, c, api, inf, ctx := watched(t, 5*time.Millisecond, nodeStorage("n1", 3*gib/2))
	stale := newClient(t, nodeStorage("n1", 3*gib/2)) // a watch that delivers nothing
	nv, err := NewVolumes(ctx, &fakeCache{r: stale}, v.Client)
	if err != nil {
		t.Fatal(err)
	}
	nv.Cache, nv.Events, nv.Recheck = inf, inf.ev, time.Second
	go agent(ctx, api, "n1", 3*gib/2, 20*time.Millisecond)
	if _, err := nv.Create(ctx, CreateRequest{Name: "first", Range: volume.Range{RequiredBytes: gib}}); err != nil {
		t.Fatal(err)
	}
	creates := c.creates.Load()
	if _, err := nv.Create(ctx, CreateRequest{Name: "second", Range: volume.Range{RequiredBytes: gib}}); !errors.Is(err, ErrNoRoom) {
		t.Errorf("second create on the full node: %v, want ErrNoRoom", err)
	}
	if n := c.creates.Load() - creates; n != 0 {
		t.Errorf("the refused create wrote %d LocalVolumes", n)
	}
}
