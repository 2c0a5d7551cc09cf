package volume

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/pkg/names"
)

// snapManager has a thick pool "thick" (no snapshots) and a snapshotting pool "thin".
func snapManager(t *testing.T) (*Manager, backendtest.Snapshots) {
	t.Helper()
	thin := backendtest.NewSnapshots("thin", 10*gib, 4*mib)
	m, err := NewManager([]Pool{{"thick", backendtest.NewMemory("thick", 10*gib, 4*mib)}, {"thin", thin}}, "thick")
	if err != nil {
		t.Fatal(err)
	}
	if !m.CanSnapshot() {
		t.Fatal("CanSnapshot() = false with a snapshotting pool")
	}
	return m, thin
}

func TestSnapshotIdempotentByName(t *testing.T) {
	ctx := context.Background()
	m, _ := snapManager(t)
	v, err := m.Create(ctx, CreateRequest{Name: "pvc-a", Pool: "thin", Range: Range{RequiredBytes: gib}})
	if err != nil {
		t.Fatal(err)
	}
	s1, err := m.CreateSnapshot(ctx, "snap-1", v.ID)
	if err != nil || s1.ID != names.SnapshotID("snap-1") || s1.SourceID != v.ID || s1.SizeBytes != gib || s1.Pool != "thin" {
		t.Fatalf("CreateSnapshot = %+v, %v", s1, err)
	}
	if s2, err := m.CreateSnapshot(ctx, "snap-1", v.ID); err != nil || *s2 != *s1 {
		t.Fatalf("retry = %+v, %v; want %+v", s2, err, s1)
	}
	w, err := m.Create(ctx, CreateRequest{Name: "pvc-b", Pool: "thin", Range: Range{RequiredBytes: gib}})
	if err != nil {
		t.Fatal(err)
	}
	// The name of a snapshot of another volume: AlreadyExists (CSI spec).
	if _, err := m.CreateSnapshot(ctx, "snap-1", w.ID); !errors.Is(err, backend.ErrExists) {
		t.Fatalf("same name, other source: %v, want ErrExists", err)
	}
	if _, err := m.CreateSnapshot(ctx, "snap-2", names.VolumeID("pvc-missing")); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("missing source: %v, want ErrNotFound", err)
	}
	list, err := m.ListSnapshots(ctx)
	if err != nil || len(list) != 1 || list[0] != *s1 {
		t.Fatalf("ListSnapshots = %+v, %v", list, err)
	}
	if s, err := m.FindSnapshot(ctx, s1.ID); err != nil || *s != *s1 {
		t.Fatalf("FindSnapshot = %+v, %v", s, err)
	}
	// The source goes; its snapshot stays (thin snapshots outlive their origin).
	if err := m.Delete(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.FindSnapshot(ctx, s1.ID); err != nil {
		t.Fatalf("snapshot after its source was deleted: %v", err)
	}
	for range 2 { // idempotent
		if err := m.DeleteSnapshot(ctx, s1.ID); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"", "carve-not-a-snapshot-0123456789abcdef", names.SnapshotID("never")} {
		if err := m.DeleteSnapshot(ctx, id); err != nil {
			t.Errorf("DeleteSnapshot(%q) = %v, want nil", id, err)
		}
	}
}

// TestSnapshotOfAThickVolume: a pool that cannot snapshot refuses with
// ErrCannotSnapshot naming the pool type that can; nothing is made.
func TestSnapshotOfAThickVolume(t *testing.T) {
	ctx := context.Background()
	m, _ := snapManager(t)
	v, err := m.Create(ctx, CreateRequest{Name: "pvc-thick", Range: Range{RequiredBytes: gib}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.CreateSnapshot(ctx, "snap-thick", v.ID)
	if !errors.Is(err, ErrCannotSnapshot) || !strings.Contains(err.Error(), "lvm-thin") {
		t.Fatalf("snapshot of a thick volume: %v, want ErrCannotSnapshot naming lvm-thin", err)
	}
	_, err = m.Create(ctx, CreateRequest{Name: "pvc-clone", Range: Range{RequiredBytes: gib}, Source: v.ID})
	if !errors.Is(err, ErrCannotSnapshot) {
		t.Fatalf("clone of a thick volume: %v, want ErrCannotSnapshot", err)
	}
	if vols, _ := m.List(ctx); len(vols) != 1 {
		t.Fatalf("volumes after refused calls: %+v", vols)
	}
	plain, err := NewManager([]Pool{{"thick", backendtest.NewMemory("thick", gib, 4*mib)}}, "thick")
	if err != nil {
		t.Fatal(err)
	}
	if plain.CanSnapshot() {
		t.Fatal("CanSnapshot() = true without a snapshotting pool")
	}
}

func TestCreateFromSource(t *testing.T) {
	ctx := context.Background()
	m, thin := snapManager(t)
	v, err := m.Create(ctx, CreateRequest{Name: "pvc-src", Pool: "thin", Range: Range{RequiredBytes: gib}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := m.CreateSnapshot(ctx, "snap", v.ID)
	if err != nil {
		t.Fatal(err)
	}
	// From the snapshot, no pool named: it goes to the snapshot's pool, at
	// least the source's size though less was asked for.
	restore := CreateRequest{Name: "pvc-restore", Range: Range{RequiredBytes: mib}, Source: s.ID, SourceIsSnapshot: true}
	r, err := m.Create(ctx, restore)
	if err != nil || r.Pool != "thin" || r.SizeBytes != gib || r.Source != s.ID {
		t.Fatalf("restore = %+v, %v", r, err)
	}
	if again, err := m.Create(ctx, restore); err != nil || *again != *r {
		t.Fatalf("retry = %+v, %v", again, err)
	}
	// A snapshot source naming a volume (or the reverse) is not found: the kind is the caller's.
	if _, err := m.Create(ctx, CreateRequest{Name: "pvc-kind", Range: Range{RequiredBytes: mib}, Source: v.ID, SourceIsSnapshot: true}); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("snapshot source with a volume id: %v, want ErrNotFound", err)
	}
	if _, err := m.Create(ctx, CreateRequest{Name: "pvc-kind", Range: Range{RequiredBytes: mib}, Source: s.ID}); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("volume source with a snapshot id: %v, want ErrNotFound", err)
	}
	// No size asked: the copy has the source's, not the default for empty volumes.
	if d, err := m.Create(ctx, CreateRequest{Name: "pvc-nosize", Source: v.ID}); err != nil || d.SizeBytes != v.SizeBytes {
		t.Fatalf("copy without a size = %+v, %v; want %d bytes", d, err, v.SizeBytes)
	}
	// The same name from another source, or without one: incompatible.
	if _, err := m.Create(ctx, CreateRequest{Name: "pvc-restore", Range: Range{RequiredBytes: mib}, Source: v.ID}); !errors.Is(err, ErrIncompatible) && !errors.Is(err, backend.ErrExists) {
		t.Fatalf("same name, other source: %v", err)
	}
	if _, err := m.Create(ctx, CreateRequest{Name: "pvc-restore", Pool: "thin", Range: Range{RequiredBytes: mib}}); !errors.Is(err, ErrIncompatible) {
		t.Fatalf("same name, no source: %v", err)
	}
	// A clone of a volume, larger than it.
	c, err := m.Create(ctx, CreateRequest{Name: "pvc-clone", Pool: "thin", Range: Range{RequiredBytes: 2 * gib}, Source: v.ID})
	if err != nil || c.SizeBytes != 2*gib || c.Source != v.ID {
		t.Fatalf("clone = %+v, %v", c, err)
	}
	// Another pool named than the source's: refused, nothing made.
	if _, err := m.Create(ctx, CreateRequest{Name: "pvc-elsewhere", Pool: "thick", Range: Range{RequiredBytes: gib}, Source: s.ID, SourceIsSnapshot: true}); !errors.Is(err, ErrUnknownPool) {
		t.Fatalf("other pool: %v", err)
	}
	// A limit below the source's size: a copy cannot shrink; refused before anything is made.
	if _, err := m.Create(ctx, CreateRequest{Name: "pvc-small", Range: Range{RequiredBytes: mib, LimitBytes: 512 * mib}, Source: s.ID, SourceIsSnapshot: true}); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("limit below the source: %v", err)
	}
	if _, err := thin.Get(ctx, names.VolumeID("pvc-small")); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("the refused copy: %v", err)
	}
	for _, src := range []string{names.SnapshotID("never"), names.VolumeID("never"), "not-an-id"} {
		for _, snap := range []bool{false, true} {
			if _, err := m.Create(ctx, CreateRequest{Name: "pvc-x", Range: Range{RequiredBytes: gib}, Source: src, SourceIsSnapshot: snap}); !errors.Is(err, backend.ErrNotFound) {
				t.Errorf("source %q (snapshot %v): %v, want ErrNotFound", src, snap, err)
			}
		}
	}
	// A device carve does not own is never a source: not found, not "exists".
	thin.AddForeign(names.VolumeID("foreign"))
	if _, err := m.Create(ctx, CreateRequest{Name: "pvc-f", Range: Range{RequiredBytes: gib}, Source: names.VolumeID("foreign")}); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("foreign source: %v, want ErrNotFound", err)
	}
	if _, err := m.CreateSnapshot(ctx, "snap-f", names.VolumeID("foreign")); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("snapshot of a foreign device: %v, want ErrNotFound", err)
	}
	if _, err := m.Create(ctx, CreateRequest{Name: "pvc-y", Range: Range{RequiredBytes: gib}, Source: s.ID, SourceIsSnapshot: true, Striping: Striping{Stripes: 2}}); !errors.Is(err, backend.ErrCannotStripe) {
		t.Fatalf("striped copy: %v", err)
	}
	// A retry after its source was deleted returns the copy made before.
	if err := m.DeleteSnapshot(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if again, err := m.Create(ctx, restore); err != nil || again.ID != r.ID {
		t.Fatalf("retry after the snapshot was deleted = %+v, %v", again, err)
	}
}
