package volume

import (
	"context"
	"errors"
	"testing"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/pkg/names"
)

const (
	mib = int64(1) << 20
	gib = int64(1) << 30
)

func newManager(t *testing.T) (*Manager, *backendtest.Memory, *backendtest.Memory) {
	t.Helper()
	a := backendtest.NewMemory("a", 10*gib, 4*mib)
	b := backendtest.NewMemory("b", 10*gib, 4*mib)
	m, err := NewManager([]Pool{{"a", a}, {"b", b}}, "a")
	if err != nil {
		t.Fatal(err)
	}
	return m, a, b
}

func TestSizeFor(t *testing.T) {
	for _, tc := range []struct {
		r     Range
		align int64
		want  int64
		err   error
	}{
		{Range{}, 4 * mib, gib, nil},
		{Range{RequiredBytes: 1}, 4 * mib, 4 * mib, nil},
		{Range{RequiredBytes: 5 * mib}, 4 * mib, 8 * mib, nil},
		{Range{LimitBytes: 8 * mib}, 4 * mib, 8 * mib, nil},
		{Range{RequiredBytes: 5 * mib, LimitBytes: 6 * mib}, 4 * mib, 0, ErrOutOfRange},
		{Range{RequiredBytes: 10, LimitBytes: 5}, 4 * mib, 0, ErrOutOfRange},
		{Range{RequiredBytes: -1}, 4 * mib, 0, ErrOutOfRange},
		{Range{LimitBytes: 1}, 4 * mib, 0, ErrOutOfRange},
	} {
		got, err := SizeFor(tc.r, tc.align)
		if !errors.Is(err, tc.err) || got != tc.want {
			t.Errorf("SizeFor(%+v, %d) = %d, %v; want %d, %v", tc.r, tc.align, got, err, tc.want, tc.err)
		}
	}
}

func TestCreateIsIdempotentByName(t *testing.T) {
	ctx := context.Background()
	m, a, _ := newManager(t)
	req := CreateRequest{Name: "pvc-1", Range: Range{RequiredBytes: 5 * mib}}
	v1, err := m.Create(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if v1.ID != names.VolumeID("pvc-1") || v1.SizeBytes != 8*mib || v1.Pool != "a" {
		t.Fatalf("created %+v", v1)
	}
	v2, err := m.Create(ctx, req)
	if err != nil || *v2 != *v1 {
		t.Fatalf("re-create: %+v, %v; want %+v", v2, err, v1)
	}
	// Compatible: the existing 8 MiB satisfies [1, 8 MiB].
	if _, err := m.Create(ctx, CreateRequest{Name: "pvc-1", Range: Range{RequiredBytes: 1, LimitBytes: 8 * mib}}); err != nil {
		t.Fatalf("compatible re-create: %v", err)
	}
	// Incompatible size.
	if _, err := m.Create(ctx, CreateRequest{Name: "pvc-1", Range: Range{RequiredBytes: gib}}); !errors.Is(err, ErrIncompatible) {
		t.Fatalf("incompatible re-create: %v", err)
	}
	// Same name in the other pool.
	if _, err := m.Create(ctx, CreateRequest{Name: "pvc-1", Pool: "b", Range: Range{RequiredBytes: 5 * mib}}); !errors.Is(err, ErrIncompatible) {
		t.Fatalf("re-create in other pool: %v", err)
	}
	if vs, _ := a.List(ctx); len(vs) != 1 {
		t.Fatalf("pool a holds %d volumes, want 1", len(vs))
	}
}

func TestCreateErrors(t *testing.T) {
	ctx := context.Background()
	m, a, b := newManager(t)
	if _, err := m.Create(ctx, CreateRequest{Name: "x", Pool: "nope"}); !errors.Is(err, ErrUnknownPool) {
		t.Fatalf("unknown pool: %v", err)
	}
	if _, err := m.Create(ctx, CreateRequest{Name: "x", Range: Range{RequiredBytes: 11 * gib}}); !errors.Is(err, backend.ErrNoSpace) {
		t.Fatalf("too big: %v", err)
	}
	a.AddForeign(names.VolumeID("x"))
	if _, err := m.Create(ctx, CreateRequest{Name: "x"}); !errors.Is(err, backend.ErrNotOwned) {
		t.Fatalf("foreign device with our id: %v", err)
	}
	for _, p := range []*backendtest.Memory{a, b} {
		if vs, _ := p.List(ctx); len(vs) != 0 {
			t.Fatalf("pool %s holds %v after failed creates", p.PoolName, vs)
		}
	}
}

func TestDeleteFindExpandCapacity(t *testing.T) {
	ctx := context.Background()
	m, _, b := newManager(t)
	v, err := m.Create(ctx, CreateRequest{Name: "pvc-2", Pool: "b", Range: Range{RequiredBytes: gib}})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := m.Find(ctx, v.ID); err != nil || got.Pool != "b" {
		t.Fatalf("find: %+v, %v", got, err)
	}
	if _, err := m.Find(ctx, "not-ours"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("find foreign-shaped id: %v", err)
	}
	c, _ := m.Capacity(ctx, "b")
	if c.FreeBytes != 9*gib {
		t.Fatalf("free %d, want 9 GiB", c.FreeBytes)
	}
	if c, _ := m.Capacity(ctx, "nope"); c != (backend.Capacity{}) {
		t.Fatalf("unknown pool capacity %+v", c)
	}
	nv, err := m.Expand(ctx, v.ID, Range{RequiredBytes: 2*gib + 1})
	if err != nil || nv.SizeBytes != 2*gib+4*mib {
		t.Fatalf("expand: %+v, %v", nv, err)
	}
	if _, err := m.Expand(ctx, v.ID, Range{RequiredBytes: 100 * gib}); !errors.Is(err, backend.ErrNoSpace) {
		t.Fatalf("expand beyond pool: %v", err)
	}
	b.AddForeign(names.VolumeID("foreign"))
	if err := m.Delete(ctx, names.VolumeID("foreign")); err != nil {
		t.Fatalf("delete foreign: %v", err)
	}
	if _, err := b.Get(ctx, names.VolumeID("foreign")); !errors.Is(err, backend.ErrNotOwned) {
		t.Fatalf("foreign device touched: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := m.Delete(ctx, v.ID); err != nil {
			t.Fatalf("delete #%d: %v", i, err)
		}
	}
	if c, _ := m.Capacity(ctx, "b"); c.FreeBytes != 10*gib {
		t.Fatalf("free after delete %d", c.FreeBytes)
	}
	b.FailNext = backend.ErrUnavailable
	if err := m.Check(ctx); !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("check: %v", err)
	}
}

// Check reads every pool: a degraded first pool must not hide an unavailable
// second one from Probe (Probe stays ready for degraded pools only).
func TestCheckReadsEveryPool(t *testing.T) {
	ctx := context.Background()
	a := backendtest.NewMemory("a", 10*gib, 4*mib)
	b := backendtest.NewMemory("b", 10*gib, 4*mib)
	m, err := NewManager([]Pool{{Name: "a", Backend: a}, {Name: "b", Backend: b}}, "a")
	if err != nil {
		t.Fatal(err)
	}
	a.FailNext = backend.ErrDegraded
	b.FailNext = backend.ErrUnavailable
	err = m.Check(ctx)
	if !errors.Is(err, backend.ErrDegraded) || !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("check: %v, want both the degraded and the unavailable pool", err)
	}
}
