package cluster

import (
	"sync"
	"time"
)

// ledger holds the bytes this controller has placed on nodes that their
// published NodeStorage may not show yet. A burst of CreateVolume calls reads
// the same NodeStorage; without the ledger they would all pick the node that
// has room for one, and all but one would wait for the node to refuse them.
// With it, a placement counts what the others already took and is refused at
// once (ErrNoRoom, ResourceExhausted) before any LocalVolume is written.
//
// A reservation counts until its volume settles (Ready, Failed or deleted),
// and after that for every placement that read NodeStorage before it settled:
// such a read may predate the node's publish of the volume. Counting a volume
// the NodeStorage read already shows errs towards refusing: the scheduler
// then tries elsewhere. Only this process's placements are known: after a
// restart, volumes still being made are counted once their node publishes.
// A reservation whose call gave up (its context ended) and that no retry
// settles is held at most maxHold, so that an abandoned call cannot shrink a
// node for good.
type ledger struct {
	mu      sync.Mutex
	entries map[string]*reservation // by LocalVolume name
	active  map[*placement]struct{}
}

type reservation struct {
	node, pool string
	bytes      int64
	placed     time.Time
	settled    time.Time // zero while the volume is being made
}

// maxHold bounds how long an unsettled reservation counts: a node acts on a
// LocalVolume in well under a second, a provisioner retries a call that
// timed out (60 s) sooner than this.
const maxHold = 5 * time.Minute

// counts reports whether r counts for a NodeStorage read begun at start.
func (r *reservation) counts(start time.Time) bool {
	if r.settled.IsZero() {
		return start.Sub(r.placed) < maxHold
	}
	return !r.settled.Before(start)
}

// placement is one reading of NodeStorage, begun at start.
type placement struct{ start time.Time }

// begin notes a placement about to read NodeStorage.
func (l *ledger) begin() *placement {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := &placement{start: time.Now()}
	if l.active == nil {
		l.active = map[*placement]struct{}{}
	}
	l.active[p] = struct{}{}
	return p
}

// end forgets the placement and the reservations no placement needs.
func (l *ledger) end(p *placement) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.active, p)
	oldest := time.Now()
	for a := range l.active {
		if a.start.Before(oldest) {
			oldest = a.start
		}
	}
	for name, r := range l.entries {
		if !r.counts(oldest) {
			delete(l.entries, name)
		}
	}
}

// pending is the bytes reserved on node's pool that a NodeStorage read begun
// by p may not show. Call with l.mu held.
func (l *ledger) pending(p *placement, node, pool string) int64 {
	var sum int64
	for _, r := range l.entries {
		if r.node == node && r.pool == pool && r.counts(p.start) {
			sum += r.bytes
		}
	}
	return sum
}

// reserve records bytes for LocalVolume name on node's pool. Call with l.mu held.
func (l *ledger) reserve(name, node, pool string, bytes int64) {
	if l.entries == nil {
		l.entries = map[string]*reservation{}
	}
	l.entries[name] = &reservation{node: node, pool: pool, bytes: bytes, placed: time.Now()}
}

// hold records bytes for object name on node's pool, as reserve does, for
// an object whose node is given rather than placed (a snapshot takes room
// in its source's thin pool).
func (l *ledger) hold(name, node, pool string, bytes int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reserve(name, node, pool, bytes)
}

// settle notes that LocalVolume name no longer needs its reservation: the
// node published its outcome (or it is gone).
func (l *ledger) settle(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.entries[name]
	if !ok {
		return
	}
	if len(l.active) == 0 {
		delete(l.entries, name)
		return
	}
	if r.settled.IsZero() {
		r.settled = time.Now()
	}
}

// drop forgets a reservation whose LocalVolume was never written.
func (l *ledger) drop(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.entries, name)
}
