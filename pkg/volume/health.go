package volume

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Health answers CSI Probe's readiness from pool checks that outlive a single probe.
//
// kubelet gives an HTTP probe a few seconds and the livenessprobe sidecar passes that deadline
// on to Probe. Reading the pools (vgs, ndctl list) on a busy node can take longer: on issue 11's
// emulated node, vgs took 4-11 s while pods started, each probe canceled its own read, and
// kubelet killed carve-csi for "failing" probes, which frees nothing and interrupts the calls in
// flight. So a check runs on its own deadline (CheckTimeout), concurrent callers share it, a
// result younger than Fresh is reused, and a result younger than Stale is answered at once while
// a new check runs in the background. Only a caller with no such result (at start-up, or after
// the pools could not be read for Stale) waits for the check, until its own deadline.
//
// Waiting for the running check until the caller's deadline, as this did first, answered the
// livenessprobe sidecar just after its 9 s deadline whenever vgs took longer on a busy node: the
// sidecar reported a failure although the answer was "ready" (the real-node rig, where carve-node
// was restarted mid-scenario three probes later).
type Health struct {
	Check        func(context.Context) error // reads every pool (Manager.Check)
	Clock        clock.PassiveClock          // clock.RealClock{} in production
	Fresh        time.Duration               // reuse a result this young (0: always check)
	Stale        time.Duration               // a caller out of time may get a result this young
	CheckTimeout time.Duration               // one check's own deadline

	mu      sync.Mutex
	done    bool      // a check has completed
	last    error     // its result
	lastAt  time.Time // when it completed
	running chan struct{}
}

// NewHealth: Fresh 5 s, Stale 2 min, CheckTimeout 2 min.
func NewHealth(check func(context.Context) error, c clock.PassiveClock) *Health {
	return &Health{Check: check, Clock: c, Fresh: 5 * time.Second, Stale: 2 * time.Minute, CheckTimeout: 2 * time.Minute}
}

// Ready returns the pools' state: nil when every pool can be read, else the check's error.
// A completed result younger than Stale is returned at once (a check older than Fresh starts a
// new one in the background); without one it waits for the check, and when ctx ends first it
// returns an error wrapping ctx's error (the caller maps it to DeadlineExceeded or Canceled).
func (h *Health) Ready(ctx context.Context) error {
	h.mu.Lock()
	if h.done && h.Clock.Since(h.lastAt) < h.Fresh {
		err := h.last
		h.mu.Unlock()
		return err
	}
	ch := h.running
	if ch == nil {
		ch = make(chan struct{})
		h.running = ch
		go h.run(ch)
	}
	if h.done && h.Clock.Since(h.lastAt) < h.Stale {
		err := h.last
		h.mu.Unlock()
		return err
	}
	h.mu.Unlock()

	select {
	case <-ch:
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.last
	case <-ctx.Done():
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.done && h.Clock.Since(h.lastAt) < h.Stale {
			return h.last
		}
		return fmt.Errorf("pool check still running: %w", ctx.Err())
	}
}

func (h *Health) run(ch chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), h.CheckTimeout)
	defer cancel()
	err := h.Check(ctx)
	h.mu.Lock()
	h.done, h.last, h.lastAt, h.running = true, err, h.Clock.Now(), nil
	h.mu.Unlock()
	close(ch)
}
