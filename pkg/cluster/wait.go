package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/errcode"
)

// DefaultRecheck is how long a wait on the watch goes without news before it
// reads the API server once: a guard against a stalled watch, not a poll.
const DefaultRecheck = 10 * time.Second

// errGone: the LocalVolume a wait was for no longer exists (or was replaced).
var errGone = errors.New("LocalVolume is gone")

// verdict is a wait condition's answer about one state of a LocalVolume.
type verdict int

const (
	keepWaiting verdict = iota
	accept
	// confirm: accept, but only from the API server. Used for answers a
	// stale cache could give wrongly (a failure since reset, a deletion the
	// cache has not seen the object of).
	confirm
)

// waiting reports whether waits use the watch (Cache and Events) rather than
// polling the API server.
func (v *Volumes) waiting() bool { return v.Cache != nil && v.Events != nil }

func (v *Volumes) recheck() time.Duration {
	if v.Recheck > 0 {
		return v.Recheck
	}
	return DefaultRecheck
}

// object is a pointer to one of carve's cluster-scoped custom resources.
type object[T any] interface {
	*T
	client.Object
}

// get returns the named object of type T from r, nil when it does not exist.
func get[T any, P object[T]](ctx context.Context, r client.Reader, name string) (P, error) {
	o := P(new(T))
	if err := r.Get(ctx, types.NamespacedName{Name: name}, o); apierrors.IsNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("get %s %s: %w", objKind(o), name, err)
	}
	return o, nil
}

func objKind(o client.Object) string {
	switch o.(type) {
	case *v1alpha1.LocalVolume:
		return "LocalVolume"
	case *v1alpha1.LocalSnapshot:
		return "LocalSnapshot"
	}
	return fmt.Sprintf("%T", o)
}

// read returns the LocalVolume from r, nil when it does not exist.
func read(ctx context.Context, r client.Reader, id string) (*v1alpha1.LocalVolume, error) {
	return get[v1alpha1.LocalVolume](ctx, r, id)
}

// cached reads the LocalVolume from the cache, or from the API server when
// there is no cache or it cannot answer (not started yet).
func (v *Volumes) cached(ctx context.Context, id string) (*v1alpha1.LocalVolume, error) {
	return cachedGet[v1alpha1.LocalVolume](ctx, v, id)
}

// cachedGet is cached for any of carve's objects.
func cachedGet[T any, P object[T]](ctx context.Context, v *Volumes, name string) (P, error) {
	if v.waiting() {
		if o, err := get[T, P](ctx, v.Cache, name); err == nil {
			return o, nil
		}
	}
	return get[T, P](ctx, v.Client, name)
}

// await waits until cond accepts a state of LocalVolume id (nil: it does not
// exist) and returns that state. With the watch, it reads the cache each
// time the object changes, the API server only where cond asks to confirm,
// when the cache cannot answer, and once per Recheck without news. Without
// it, it reads the API server every Poll. cond's error ends the wait.
func (v *Volumes) await(ctx context.Context, id string, cond func(lv *v1alpha1.LocalVolume, direct bool) (verdict, error)) (*v1alpha1.LocalVolume, error) {
	return awaitObj(ctx, v, id, cond)
}

// awaitObj is await for any of carve's objects (LocalVolume, LocalSnapshot:
// Events carries both, their names never collide).
func awaitObj[T any, P object[T]](ctx context.Context, v *Volumes, id string, cond func(o P, direct bool) (verdict, error)) (P, error) {
	var changed <-chan struct{}
	if v.waiting() {
		ch, cancel := v.Events.subscribe(id)
		defer cancel()
		changed = ch
	}
	direct := !v.waiting()
	cacheDown := false // the cache cannot answer (not started or synced yet): poll until it can
	for {
		var o P
		var err error
		if direct {
			o, err = get[T, P](ctx, v.Client, id)
		} else if o, err = get[T, P](ctx, v.Cache, id); err != nil {
			if !cacheDown {
				klog.V(2).InfoS("Cache cannot answer yet; polling the API server until it can", "name", id, "err", err)
			}
			cacheDown, direct = true, true
			continue
		} else {
			cacheDown = false
		}
		if err != nil {
			return nil, err
		}
		verd, err := cond(o, direct)
		switch {
		case err != nil:
			return nil, err
		case verd == accept, verd == confirm && direct:
			return o, nil
		case verd == confirm:
			direct = true
			continue
		}
		// Without news for this long, read the API server once.
		wait := v.recheck()
		if !v.waiting() || cacheDown {
			wait = v.poll()
		}
		direct = !v.waiting()
		tick := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			tick.Stop()
			return nil, ctx.Err()
		case <-changed:
			tick.Stop()
		case <-tick.C:
			direct = true
		}
	}
}

// awaitSettled waits until the node has acted on generation minGen (or a
// later one) of the LocalVolume with this uid: Failed for good (the node
// retries transient failures itself), or Ready with at least minSize bytes.
// The uid and minGen keep a cached copy of an earlier object of the same
// name, or of an earlier spec, from answering; a failure is confirmed with
// the API server, since a retry may just have reset it. Errors: errGone
// (wrapped) when the object is gone, the context's error when it ends.
func (v *Volumes) awaitSettled(ctx context.Context, id string, uid types.UID, minGen, minSize int64) (*v1alpha1.LocalVolume, error) {
	node := ""
	lv, err := v.await(ctx, id, func(lv *v1alpha1.LocalVolume, direct bool) (verdict, error) {
		switch {
		case (lv == nil || lv.UID != uid) && direct:
			return accept, nil // gone
		case lv == nil || lv.UID != uid:
			// The cache has not seen the object yet (or still holds an
			// earlier one of that name): its events are on the way. One
			// deleted meanwhile shows at the next recheck.
			return keepWaiting, nil
		}
		node = lv.Spec.NodeName
		gen := max(lv.Generation, minGen)
		switch {
		case lv.Status.ObservedGeneration < gen:
		case lv.Status.Phase == v1alpha1.PhaseReady && lv.Status.CurrentSizeBytes >= minSize:
			return accept, nil
		case lv.Status.Phase == v1alpha1.PhaseFailed && errcode.PermanentName(lv.Status.Code):
			return confirm, nil
		}
		return keepWaiting, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for node %s to act on LocalVolume %s: %w", node, id, err)
	}
	if lv == nil || lv.UID != uid {
		return nil, fmt.Errorf("waiting for node %s to act on LocalVolume %s: %w", node, id, errGone)
	}
	return lv, nil
}

// awaitGone waits until the LocalVolume with this uid no longer exists. A
// cache that shows no such object may never have held it: that is confirmed
// with the API server.
func (v *Volumes) awaitGone(ctx context.Context, id string, uid types.UID) error {
	_, err := v.await(ctx, id, func(lv *v1alpha1.LocalVolume, _ bool) (verdict, error) {
		if lv == nil || lv.UID != uid {
			return confirm, nil
		}
		return keepWaiting, nil
	})
	return err
}
