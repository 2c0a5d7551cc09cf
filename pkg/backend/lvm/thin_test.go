package lvm

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/exec/exectest"
)

// Unit tests of the thin backend: the real lvm2 runs recorded in the VM
// rig by TestCaptureThin (testdata/thin-*.txt), replayed in order.

// capThinOpts are the options TestCaptureThin recorded with.
var capThinOpts = ThinOptions{ThinPool: capThinPool, Overprovision: 2, ThresholdPercent: 30, CreatePercent: 50}

// newThin replays "thin-new" (NewThin on the existing pool) and the scenarios.
func newThin(t *testing.T, scenarios ...string) *Thin {
	t.Helper()
	f := replay(t, append([]string{"thin-new"}, scenarios...)...)
	th, err := NewThin(context.Background(), f, capPool, capThinVG, capOwner, capThinOpts)
	if err != nil {
		t.Fatal(err)
	}
	return th
}

func TestNewThinCreatesThePoolOnce(t *testing.T) {
	f := replay(t, "thin-new-create", "thin-new")
	for range 2 { // the second start finds the pool and runs no lvcreate
		if _, err := NewThin(context.Background(), f, capPool, capThinVG, capOwner, capThinOpts); err != nil {
			t.Fatal(err)
		}
	}
}

func TestNewThinRefuses(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		scenario, pool, want string
		sentinel             error
	}{
		{"thin-new-missing", capThinPool, "thin pool carvethin/thin not found (create it with lvcreate --type thin-pool, or give the pool size=<percent>%)", backend.ErrUnavailable},
		{"thin-new-linear", "linear", `carvethin/linear is a "linear" LV, not a thin pool`, backend.ErrUnavailable},
		// Without zeroing a new volume could show an earlier volume's bytes.
		{"thin-new-nozero", "nozero", "does not zero new blocks, so a volume could read an earlier volume's bytes; turn it on with lvchange -Z y carvethin/nozero", nil},
	} {
		f := replay(t, tc.scenario)
		_, err := NewThin(ctx, f, capPool, capThinVG, capOwner, ThinOptions{ThinPool: tc.pool})
		if err == nil || !strings.Contains(err.Error(), tc.want) || tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
			t.Errorf("%s: %v, want %q (%v)", tc.scenario, err, tc.want, tc.sentinel)
		}
	}
}

// TestNewThinActivatesAnInactivePool: lvm reports no use for an inactive
// pool (after a reboot); NewThin activates it so Capacity can apply the threshold.
func TestNewThinActivatesAnInactivePool(t *testing.T) {
	f := replay(t, "thin-new-inactive")
	if _, err := NewThin(context.Background(), f, capPool, capThinVG, capOwner, capThinOpts); err != nil {
		t.Fatal(err)
	}
}

func TestNewThinBadOptionsRunNothing(t *testing.T) {
	for _, o := range []ThinOptions{
		{ThinPool: ""}, {ThinPool: "-x"}, {ThinPool: "t", Overprovision: -1}, {ThinPool: "t", ThresholdPercent: 101},
		{ThinPool: "t", CreatePercent: 101}, {ThinPool: "t", ThresholdPercent: -5},
	} {
		f := &exectest.Fake{Handler: func(_ context.Context, argv []string) (exectest.Response, bool) {
			t.Errorf("%+v ran %q", o, argv)
			return exectest.Response{}, false
		}}
		if _, err := NewThin(context.Background(), f, capPool, capThinVG, capOwner, o); err == nil {
			t.Errorf("NewThin(%+v) accepted", o)
		}
	}
}

func TestThinCapacity(t *testing.T) {
	ctx := context.Background()
	th := newThin(t, "thin-capacity-empty")
	c, err := th.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Data 264241152 bytes (63 extents) x 2: 126 extents, nothing given out.
	want := backend.Capacity{TotalBytes: 528482304, FreeBytes: 528482304, MaxVolumeBytes: 528482304, AlignBytes: 4 << 20}
	if !c.IsThin() || c.Thin.DataBytes != 264241152 || c.Thin.Overprovision != 2 || c.Thin.ThresholdPercent != 30 || !c.Thin.Active {
		t.Fatalf("usage %+v", c.Thin)
	}
	c.Thin = backend.ThinUsage{}
	if c != want {
		t.Fatalf("empty: %+v, want %+v", c, want)
	}

	th = newThin(t, "thin-capacity")
	c, err = th.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// 100 MiB + 12 MiB (10 MiB in whole extents) of carve's, 8 MiB + 8 MiB
	// not carve's: every thin LV counts; the thick LV of the VG does not.
	given := int64(100+12+8+8) << 20
	if c.TotalBytes != 528482304 || c.FreeBytes != 528482304-given || c.MaxVolumeBytes != 528482304-given || c.Thin.VirtualBytes != given {
		t.Fatalf("with volumes: %+v", c)
	}
}

// TestThinCapacityAtThreshold: at 39.68% data use with a 30% threshold
// nothing is free, while the virtual budget alone would have room.
func TestThinCapacityAtThreshold(t *testing.T) {
	th := newThin(t, "thin-capacity-full")
	c, err := th.Capacity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if c.FreeBytes != 0 || c.MaxVolumeBytes != 0 || c.TotalBytes != 528482304 || c.Thin.DataPercent != 39.68 || !(c.Thin.MetadataPercent > 10) {
		t.Fatalf("%+v", c)
	}
}

func TestThinCreate(t *testing.T) {
	ctx := context.Background()
	th := newThin(t, "thin-create", "thin-create-ephemeral")
	v, err := th.Create(ctx, backend.CreateRequest{ID: capID, Name: capName, SizeBytes: 100<<20 - 7})
	if err != nil {
		t.Fatal(err)
	}
	if v.SizeBytes != 100<<20 || v.DevicePath != "/dev/carvethin/"+capID || v.Pool != capPool {
		t.Fatalf("%+v", v)
	}
	v, err = th.Create(ctx, backend.CreateRequest{ID: capEphID, Name: capEphName, SizeBytes: 10 << 20, Ephemeral: true, TargetPath: capEphTarget})
	if err != nil || !v.Ephemeral || v.TargetPath != capEphTarget {
		t.Fatalf("%+v %v", v, err)
	}
}

// TestThinCreateRefusals: an id the pool holds is ErrExists without an
// lvcreate; more than the virtual budget or at the threshold is ErrNoSpace
// without one, naming the limit; striping is ErrCannotStripe without a command.
func TestThinCreateRefusals(t *testing.T) {
	ctx := context.Background()
	th := newThin(t, "thin-create-exists")
	_, err := th.Create(ctx, backend.CreateRequest{ID: capID, Name: capName, SizeBytes: 100 << 20})
	wantIs(t, err, backend.ErrExists)

	th = newThin(t, "thin-create-nospace")
	c, err := th.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = th.Create(ctx, backend.CreateRequest{ID: capMissing, Name: "pvc-never-created", SizeBytes: c.MaxVolumeBytes + 1})
	wantIs(t, err, backend.ErrNoSpace)
	if !strings.Contains(err.Error(), "134217728 of its 528482304 virtual bytes (2x its data) are given out") {
		t.Errorf("error does not name the budget: %v", err)
	}

	th = newThin(t, "thin-create-full")
	_, err = th.Create(ctx, backend.CreateRequest{ID: capKillID, Name: capKillName, SizeBytes: 4 << 20})
	wantIs(t, err, backend.ErrNoSpace)
	if !strings.Contains(err.Error(), "is at data 39.68% use (threshold 30%)") {
		t.Errorf("error does not name the threshold: %v", err)
	}

	for _, req := range []backend.CreateRequest{
		{ID: capID, Name: capName, SizeBytes: 8 << 20, Stripes: 2},
		{ID: capID, Name: capName, SizeBytes: 8 << 20, Stripes: backend.StripesAll},
		{ID: capID, Name: capName, SizeBytes: 8 << 20, StripeSizeBytes: 64 << 10},
	} {
		_, err := th.Create(ctx, req)
		wantIs(t, err, backend.ErrCannotStripe)
	}
}

// TestThinCreateKilledCleansUp: an lvcreate that committed the thin LV and
// was then reported killed leaves nothing: the backend removes it with
// carve's selection, restricted to its thin pool.
func TestThinCreateKilledCleansUp(t *testing.T) {
	// [0] vgs, [1] lvs (NewThin); [2] lvs, [3] lvcreate (really succeeded), [4] the cleanup lvremove.
	h := &killedRunner{Fake: replay(t, "thin-new", "thin-create-killed"), kill: "lvcreate"}
	th, err := NewThin(context.Background(), h, capPool, capThinVG, capOwner, capThinOpts)
	if err != nil {
		t.Fatal(err)
	}
	_, err = th.Create(context.Background(), backend.CreateRequest{ID: capKillID, Name: capKillName, SizeBytes: 8 << 20})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("%v", err)
	}
	if !h.removed {
		t.Fatal("the half-made thin LV was not removed")
	}
}

// killedRunner reports the replayed lvcreate, which really succeeded, as
// killed by its context (as the recorder did) and notes the lvremove that
// follows.
type killedRunner struct {
	*exectest.Fake
	mu      sync.Mutex
	removed bool
	// kill names the call reported as killed: "lvcreate", or "lvchange"
	// (recorded as not run, rc -1: replayed as a kill); "": none.
	kill string
}

func (k *killedRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := k.Fake.Run(ctx, name, args...)
	if k.kill == "lvchange" && len(args) > 0 && args[0] == "lvchange" {
		return out, &exec.Error{Cmd: append([]string{name}, args...), ExitCode: -1, Err: context.Canceled}
	}
	if k.kill == "lvcreate" && len(args) > 0 && args[0] == "lvcreate" && err == nil {
		return out, &exec.Error{Cmd: append([]string{name}, args...), ExitCode: -1, Err: context.Canceled}
	}
	if len(args) > 0 && args[0] == "lvremove" && err == nil && strings.Contains(string(out), capKillID) {
		k.mu.Lock()
		k.removed = true
		k.mu.Unlock()
	}
	return out, err
}

func TestThinGetAndList(t *testing.T) {
	ctx := context.Background()
	th := newThin(t, "thin-list", "thin-get", "thin-get-foreign", "thin-get-thick", "thin-get-missing")
	vols, err := th.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, v := range vols {
		ids = append(ids, v.ID)
	}
	// carve's two thin LVs; not the foreign thin LVs, not carve's thick LV in the VG.
	if len(vols) != 2 || strings.Join(ids, " ") != capEphID+" "+capID {
		t.Fatalf("List: %v", ids)
	}
	if v, err := th.Get(ctx, capID); err != nil || v.Name != capName || v.SizeBytes != 100<<20 {
		t.Fatalf("Get: %+v %v", v, err)
	}
	_, err = th.Get(ctx, capForeign)
	wantIs(t, err, backend.ErrNotOwned)
	_, err = th.Get(ctx, capThick)
	wantIs(t, err, backend.ErrNotFound)
	_, err = th.Get(ctx, capMissing)
	wantIs(t, err, backend.ErrNotFound)
}

func TestThinExpand(t *testing.T) {
	ctx := context.Background()
	th := newThin(t, "thin-expand", "thin-expand-noop", "thin-expand-nospace", "thin-expand-foreign")
	v, err := th.Expand(ctx, capEphID, 20<<20)
	if err != nil || v.SizeBytes != 20<<20 {
		t.Fatalf("%+v %v", v, err)
	}
	if v, err := th.Expand(ctx, capEphID, 20<<20); err != nil || v.SizeBytes != 20<<20 {
		t.Fatalf("no-op: %+v %v", v, err)
	}
	_, err = th.Expand(ctx, capEphID, 2<<30)
	wantIs(t, err, backend.ErrNoSpace)
	_, err = th.Expand(ctx, capForeign, 20<<20)
	wantIs(t, err, backend.ErrNotOwned)
}

func TestThinDeleteAndActivate(t *testing.T) {
	ctx := context.Background()
	th := newThin(t, "thin-activate", "thin-delete", "thin-delete-missing")
	th.lv.devExists = func(string) bool { return true }
	if dev, err := th.Activate(ctx, capID); err != nil || dev != "/dev/carvethin/"+capID {
		t.Fatalf("%q %v", dev, err)
	}
	if err := th.Delete(ctx, capID); err != nil {
		t.Fatal(err)
	}
	wantIs(t, th.Delete(ctx, capID), backend.ErrNotFound)
}

// TestThinIsNotAStriper: a thin pool must not offer striping (the cluster
// controller and the volume manager ask through backend.Striper) nor list
// devices for striped classes (backend.DeviceLister).
func TestThinIsNotAStriper(t *testing.T) {
	var b backend.Backend = &Thin{}
	if _, ok := b.(backend.Striper); ok {
		t.Error("Thin implements backend.Striper")
	}
	if _, ok := b.(backend.DeviceLister); ok {
		t.Error("Thin implements backend.DeviceLister")
	}
	if _, ok := b.(interface{ EnableZeroing() }); ok {
		t.Error("Thin implements EnableZeroing: blkdiscard -z would provision every block of a thin volume")
	}
}

// TestThinInactivePoolIsUnavailable: a pool someone deactivated after start
// (lvm reports no use for it) takes no new volume, and says so as
// ErrUnavailable (retryable), not as a full pool (ErrNoSpace).
func TestThinInactivePoolIsUnavailable(t *testing.T) {
	calls := loadCalls(t, "thin-new")
	inactive := loadCalls(t, "thin-new-inactive")[1] // the status lvs of a deactivated pool
	f := replayCalls(t, append(calls, inactive, inactive))
	th, err := NewThin(context.Background(), f, capPool, capThinVG, capOwner, capThinOpts)
	if err != nil {
		t.Fatal(err)
	}
	_, err = th.Create(context.Background(), backend.CreateRequest{ID: capID, Name: capName, SizeBytes: 4 << 20})
	wantIs(t, err, backend.ErrUnavailable)
	if errors.Is(err, backend.ErrNoSpace) || !strings.Contains(err.Error(), "lvchange -ay carvethin/thin") {
		t.Fatalf("%v: want the fix named, not a full pool", err)
	}
	if c, err := th.Capacity(context.Background()); err != nil || c.FreeBytes != 0 || c.Thin.Active {
		t.Fatalf("capacity of an inactive pool: %+v, %v; want nothing free", c, err)
	}
}
