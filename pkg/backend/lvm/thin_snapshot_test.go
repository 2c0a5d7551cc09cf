package lvm

import (
	"context"
	"testing"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/names"
)

// Unit tests of snapshots and clones: the real lvm2 runs recorded in the VM
// rig by TestCaptureThinSnapshots (testdata/thin-snap-*.txt), replayed.

// newSnapThin replays "thin-snap-new" (NewThin) and the scenarios.
func newSnapThin(t *testing.T, scenarios ...string) *Thin {
	t.Helper()
	f := replay(t, append([]string{"thin-snap-new"}, scenarios...)...)
	th, err := NewThin(context.Background(), f, capPool, capThinVG, capOwner, capThinOpts)
	if err != nil {
		t.Fatal(err)
	}
	return th
}

func TestThinCreateSnapshot(t *testing.T) {
	ctx := context.Background()
	th := newSnapThin(t, "thin-snap-create", "thin-snap-create-exists", "thin-snap-create-nosource")
	s, err := th.CreateSnapshot(ctx, capSnapID, capSnapName, capID)
	if err != nil {
		t.Fatal(err)
	}
	if s.ID != capSnapID || s.Name != capSnapName || s.SourceID != capID || s.SizeBytes != 64<<20 || s.Pool != capPool || s.CreationTime < 1700000000 {
		t.Fatalf("CreateSnapshot = %+v", s)
	}
	_, err = th.CreateSnapshot(ctx, capSnapID, capSnapName, capID)
	wantIs(t, err, backend.ErrExists)
	_, err = th.CreateSnapshot(ctx, names.SnapshotID("other"), "other", capMissing)
	wantIs(t, err, backend.ErrNotFound)
}

// TestThinSnapshotBadIDsRunNothing: ids of the wrong kind never reach lvm.
func TestThinSnapshotBadIDsRunNothing(t *testing.T) {
	ctx := context.Background()
	th := newSnapThin(t)
	if _, err := th.CreateSnapshot(ctx, capID, "x", capID); err == nil {
		t.Error("a volume id as snapshot id accepted")
	}
	_, err := th.CreateSnapshot(ctx, capSnapID, "x", capSnapID)
	wantIs(t, err, backend.ErrNotFound)
	_, err = th.GetSnapshot(ctx, capID)
	wantIs(t, err, backend.ErrNotFound)
	wantIs(t, th.DeleteSnapshot(ctx, capID), backend.ErrNotFound)
	_, err = th.CreateFrom(ctx, backend.CreateRequest{ID: capRestoreID, Name: capRestoreName, SizeBytes: 1}, "../etc")
	wantIs(t, err, backend.ErrNotFound)
	_, err = th.CreateFrom(ctx, backend.CreateRequest{ID: capRestoreID, Name: capRestoreName, SizeBytes: 1, Stripes: 2}, capID)
	wantIs(t, err, backend.ErrCannotStripe)
}

func TestThinGetAndListSnapshots(t *testing.T) {
	ctx := context.Background()
	th := newSnapThin(t, "thin-snap-get", "thin-snap-list", "thin-snap-volumes")
	s, err := th.GetSnapshot(ctx, capSnapID)
	if err != nil || s.Name != capSnapName || s.SourceID != capID {
		t.Fatalf("GetSnapshot = %+v, %v", s, err)
	}
	list, err := th.ListSnapshots(ctx)
	if err != nil || len(list) != 1 || list[0] != *s {
		t.Fatalf("ListSnapshots = %+v, %v", list, err)
	}
	vols, err := th.List(ctx)
	if err != nil || len(vols) != 1 || vols[0].ID != capID {
		t.Fatalf("List = %+v, %v: want the volume, not its snapshot", vols, err)
	}
}

func TestThinCreateFrom(t *testing.T) {
	ctx := context.Background()
	th := newSnapThin(t, "thin-snap-restore", "thin-snap-restore-get", "thin-snap-clone")
	r, err := th.CreateFrom(ctx, backend.CreateRequest{ID: capRestoreID, Name: capRestoreName, SizeBytes: 4 << 20}, capSnapID)
	if err != nil || r.SizeBytes != 64<<20 || r.Source != capSnapID || r.Name != capRestoreName {
		t.Fatalf("restore = %+v, %v", r, err)
	}
	// Its own tags only: its name, the snapshot as its source.
	got, err := th.Get(ctx, capRestoreID)
	if err != nil || got.Name != capRestoreName || got.Source != capSnapID || got.Ephemeral {
		t.Fatalf("Get(restored) = %+v, %v", got, err)
	}
	c, err := th.CreateFrom(ctx, backend.CreateRequest{ID: capCloneID, Name: capCloneName, SizeBytes: 128 << 20}, capID)
	if err != nil || c.SizeBytes != 128<<20 || c.Source != capID {
		t.Fatalf("clone = %+v, %v", c, err)
	}
}

func TestThinDeleteSnapshot(t *testing.T) {
	ctx := context.Background()
	th := newSnapThin(t, "thin-snap-delete", "thin-snap-delete-missing")
	if err := th.DeleteSnapshot(ctx, capSnapID); err != nil {
		t.Fatal(err)
	}
	wantIs(t, th.DeleteSnapshot(ctx, capSnapID), backend.ErrNotFound)
}

// TestThinCloneKilledIsRedone: a clone that died after its lvcreate left the
// LV tagged carve.restoring=pending; the retry removes it and makes it again.
func TestThinCloneKilledIsRedone(t *testing.T) {
	ctx := context.Background()
	h := &killedRunner{Fake: replay(t, "thin-snap-new", "thin-snap-clone-killed", "thin-snap-clone-retry")}
	h.kill = "lvchange"
	th, err := NewThin(ctx, h, capPool, capThinVG, capOwner, capThinOpts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := th.CreateFrom(ctx, backend.CreateRequest{ID: capKillID, Name: capKillName, SizeBytes: 4 << 20}, capID); err == nil {
		t.Fatal("the killed clone reported success")
	}
	h.kill = ""
	v, err := th.CreateFrom(ctx, backend.CreateRequest{ID: capKillID, Name: capKillName, SizeBytes: 4 << 20}, capID)
	if err != nil || v.Source != capID || v.SizeBytes != 64<<20 {
		t.Fatalf("retry = %+v, %v", v, err)
	}
	if !h.removed {
		t.Fatal("the retry did not remove the half-made clone")
	}
}
