package csi

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/backend"
)

// A degraded pool (a VG missing a PV) keeps Probe ready, alone or with every
// other pool degraded too: livenessprobe would restart the container, which
// brings back no disk. Anything else that is not ready still fails Probe.
func TestProbeDegraded(t *testing.T) {
	degraded := func(pool string) error {
		return fmt.Errorf("pool %q: lvm: volume group %q is missing 1 physical volume(s): %w", pool, pool, backend.ErrDegraded)
	}
	unavailable := fmt.Errorf("pool \"b\": %w", backend.ErrUnavailable)
	for _, c := range []struct {
		name  string
		err   error
		ready bool
	}{
		{"healthy", nil, true},
		{"one degraded", degraded("a"), true},
		{"all degraded", errors.Join(degraded("a"), degraded("b")), true},
		{"degraded and unavailable", errors.Join(degraded("a"), unavailable), false},
		{"unavailable", unavailable, false},
	} {
		i := &Identity{Name: "carve.csi.dev", Ready: func(context.Context) error { return c.err }}
		resp, err := i.Probe(context.Background(), &csi.ProbeRequest{})
		if c.ready && (err != nil || !resp.GetReady().GetValue()) || !c.ready && status.Code(err) != codes.FailedPrecondition {
			t.Errorf("%s: Probe = %v, %v", c.name, resp, err)
		}
	}
}

// A Probe whose caller gave up (kubelet's probe timeout through the livenessprobe sidecar) ends
// with the context's code, not FailedPrecondition "not ready" (issue 11's rig).
func TestProbeCallerGaveUp(t *testing.T) {
	i := &Identity{Name: "carve.csi.dev", Ready: func(ctx context.Context) error {
		<-ctx.Done()
		return fmt.Errorf("pool \"lvm\": vgs: %w", ctx.Err())
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := i.Probe(ctx, &csi.ProbeRequest{}); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("Probe past its deadline = %v, want DeadlineExceeded", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if _, err := i.Probe(ctx, &csi.ProbeRequest{}); status.Code(err) != codes.Canceled {
		t.Errorf("Probe canceled = %v, want Canceled", err)
	}
}
