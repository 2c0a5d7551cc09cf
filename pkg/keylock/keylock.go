// Package keylock serializes operations per key (volume id) while letting
// operations on different keys run in parallel.
package keylock

import (
	"context"
	"sync"
)

// Locks is a set of per-key mutexes. The zero value is ready to use.
type Locks struct {
	mu   sync.Mutex
	held map[string]chan struct{} // closed when the holder releases
}

// Lock waits until key is free or ctx ends, and returns the release function.
func (l *Locks) Lock(ctx context.Context, key string) (func(), error) {
	for {
		l.mu.Lock()
		if l.held == nil {
			l.held = map[string]chan struct{}{}
		}
		wait, busy := l.held[key]
		if !busy {
			done := make(chan struct{})
			l.held[key] = done
			l.mu.Unlock()
			return func() {
				l.mu.Lock()
				delete(l.held, key)
				l.mu.Unlock()
				close(done)
			}, nil
		}
		l.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
