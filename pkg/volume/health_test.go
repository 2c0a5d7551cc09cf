package volume

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// A slow pool check (vgs waiting 4-11 s on a busy node, issue 11) is not cut short by a probe's
// deadline: the check finishes on its own, the next probe gets its result, and a probe that runs
// out of time meanwhile gets the last completed result.
func TestHealthSlowCheckOutlivesProbes(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Now())
	release := make(chan struct{})
	var calls, canceled atomic.Int32
	h := NewHealth(func(ctx context.Context) error {
		calls.Add(1)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			canceled.Add(1)
			return ctx.Err()
		}
	}, clk)

	// Startup: no completed check yet, the probe times out: not ready, with ctx's error.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	err := h.Ready(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("first probe = %v, want DeadlineExceeded", err)
	}
	// A second probe joins the same check; then the check completes.
	done := make(chan error)
	go func() { done <- h.Ready(context.Background()) }()
	time.Sleep(10 * time.Millisecond)
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("probe after the check completed = %v", err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("%d checks ran, want 1 shared by both probes", n)
	}
	if canceled.Load() != 0 {
		t.Error("a probe's deadline canceled the pool check")
	}

	// Fresh: reused without a new check.
	if err := h.Ready(context.Background()); err != nil || calls.Load() != 1 {
		t.Fatalf("fresh result: err %v, %d checks", err, calls.Load())
	}
	// Older than Fresh: a new check starts in the background and the probe gets the last
	// (healthy) result at once, even with no deadline of its own: waiting for the slow check
	// until the caller's deadline answered the livenessprobe sidecar after it gave up.
	clk.SetTime(clk.Now().Add(30 * time.Second))
	release = make(chan struct{})
	answered := make(chan error, 1)
	go func() { answered <- h.Ready(context.Background()) }()
	select {
	case err := <-answered:
		if err != nil {
			t.Fatalf("probe with a healthy result 30 s old = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a probe with a healthy result 30 s old waited for the running check")
	}
	for deadline := time.Now().Add(5 * time.Second); calls.Load() != 2 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("%d checks ran, want 2 (a new one started for the result older than Fresh)", n)
	}
	// Older than Stale: a probe out of time is not ready.
	clk.SetTime(clk.Now().Add(3 * time.Minute))
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
	err = h.Ready(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("probe out of time with a result 3.5 min old = %v, want DeadlineExceeded", err)
	}
	close(release)
}

// A failed check is reported as it is (a missing VG stays not ready), also to a caller out of time.
func TestHealthReportsFailure(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Now())
	bad := errors.New(`pool "lvm": volume group "carve" not found`)
	h := NewHealth(func(context.Context) error { return bad }, clk)
	if err := h.Ready(context.Background()); !errors.Is(err, bad) {
		t.Fatalf("Ready = %v, want %v", err, bad)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.Ready(ctx); !errors.Is(err, bad) {
		t.Fatalf("Ready (fresh failure, caller canceled) = %v, want %v", err, bad)
	}
}
