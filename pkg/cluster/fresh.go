package cluster

import (
	"context"
	"fmt"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
)

// FreshReader reads NodeStorage through an informer cache without ever
// answering from a copy older than an operation's result. The node agent
// republishes NodeStorage before it makes a result visible, so a read from
// the API server after the result is exact; a watch may deliver that version
// later. After each result on a node (Touch) the node's NodeStorage is read
// from the API server and its resourceVersion noted; until the cache holds
// that very version, reads of that node go to the API server. Comparing
// versions for equality only (they are opaque) is enough: a cache that is
// ahead costs one more direct read, whose version it then matches.
//
// A cache that cannot answer (not started yet: CSI calls come before the
// manager's cache has synced) is passed by: reads go to the API server.
//
// Set it as Volumes.NodeStorages; Volumes calls Touch.
type FreshReader struct {
	Cache  client.Reader // an informer cache of NodeStorage
	Direct client.Reader // the API server

	mu sync.Mutex
	// pending holds, per node, the version the cache must reach before it is
	// used; "" means unknown (the direct read failed): read directly.
	pending map[string]string
}

// Touch notes that an operation on node has just produced its result.
// It never fails: when the direct read fails, reads of node stay direct.
func (f *FreshReader) Touch(ctx context.Context, node string) {
	ns := &v1alpha1.NodeStorage{}
	err := f.Direct.Get(ctx, types.NamespacedName{Name: node}, ns)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pending == nil {
		f.pending = map[string]string{}
	}
	switch {
	case apierrors.IsNotFound(err):
		delete(f.pending, node)
	case err != nil:
		klog.ErrorS(err, "Cannot read NodeStorage after an operation; reading it from the API server until the cache catches up", "node", node)
		f.pending[node] = ""
	default:
		f.pending[node] = ns.ResourceVersion
	}
}

// fresh reports whether the cached copy of node's NodeStorage may be used,
// forgetting the node once the cache has caught up.
func (f *FreshReader) fresh(node, cachedVersion string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	want, ok := f.pending[node]
	if !ok {
		return true
	}
	if want != "" && want == cachedVersion {
		delete(f.pending, node)
		return true
	}
	return false
}

func (f *FreshReader) readDirect(ctx context.Context, node string, ns *v1alpha1.NodeStorage) error {
	if err := f.Direct.Get(ctx, types.NamespacedName{Name: node}, ns); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.pending[node]; ok {
		f.pending[node] = ns.ResourceVersion
	}
	return nil
}

// Get implements client.Reader for NodeStorage.
func (f *FreshReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	ns, ok := obj.(*v1alpha1.NodeStorage)
	if !ok {
		return fmt.Errorf("cluster.FreshReader reads NodeStorage only, not %T", obj)
	}
	err := f.Cache.Get(ctx, key, ns, opts...)
	version := ns.ResourceVersion
	if apierrors.IsNotFound(err) {
		version = ""
	} else if err != nil {
		klog.V(4).InfoS("NodeStorage cache cannot answer; reading the API server", "node", key.Name, "err", err)
		return f.readDirect(ctx, key.Name, ns)
	}
	if f.fresh(key.Name, version) {
		return err
	}
	return f.readDirect(ctx, key.Name, ns)
}

// List implements client.Reader for NodeStorageList: cached items of nodes
// with a pending result are replaced by direct reads.
func (f *FreshReader) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	l, ok := list.(*v1alpha1.NodeStorageList)
	if !ok {
		return fmt.Errorf("cluster.FreshReader lists NodeStorage only, not %T", list)
	}
	if err := f.Cache.List(ctx, l, opts...); err != nil {
		klog.V(4).InfoS("NodeStorage cache cannot answer; listing from the API server", "err", err)
		return f.Direct.List(ctx, l, opts...)
	}
	items := l.Items[:0]
	for _, ns := range l.Items {
		if !f.fresh(ns.Name, ns.ResourceVersion) {
			if err := f.readDirect(ctx, ns.Name, &ns); apierrors.IsNotFound(err) {
				continue
			} else if err != nil {
				return err
			}
		}
		items = append(items, ns)
	}
	l.Items = items
	return nil
}

// CacheFirst is a client.Reader that answers from Cache and, where the cache
// cannot answer (not started yet), from Direct. NotFound from the cache is
// an answer.
type CacheFirst struct {
	Cache  client.Reader
	Direct client.Reader
}

// Get implements client.Reader.
func (c CacheFirst) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	err := c.Cache.Get(ctx, key, obj, opts...)
	if err == nil || apierrors.IsNotFound(err) {
		return err
	}
	klog.V(4).InfoS("Cache cannot answer; reading the API server", "name", key.Name, "err", err)
	return c.Direct.Get(ctx, key, obj, opts...)
}

// List implements client.Reader.
func (c CacheFirst) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	if err := c.Cache.List(ctx, list, opts...); err != nil {
		klog.V(4).InfoS("Cache cannot answer; listing from the API server", "err", err)
		return c.Direct.List(ctx, list, opts...)
	}
	return nil
}
