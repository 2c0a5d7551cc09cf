package lvm

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"k8s.io/klog/v2"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/names"
)

// Snapshots and clones of thin volumes (issue 14). A snapshot is a thin
// snapshot LV of a carve volume (`lvcreate -s -p r`: read-only, and skipped
// at activation as lvm does for thin snapshots), named names.SnapshotID and
// tagged with carve's owner, the CSI snapshot name and carve.source=<volume>.
// It shares the volume's blocks, counts its virtual size in the pool's
// budget, and outlives the volume. A volume made from a snapshot or a
// volume is a writable thin snapshot of it (`lvcreate -s -k n`), tagged as
// any volume plus carve.source=<source>, grown with lvextend when asked for
// more than the source's size.

var _ backend.Snapshotter = (*Thin)(nil)

// TagRestoring marks a volume CreateFrom has made but not finished (tags
// fixed, size grown): a retry removes it and starts again, so a volume is
// never handed out half-made.
const TagRestoring = "carve.restoring=pending"

// snapColumns are what GetSnapshot and ListSnapshots read.
const snapColumns = lvColumns + ",pool_lv,lv_time"

// CreateSnapshot implements backend.Snapshotter: under the pool's mutex,
// one lvs of the thin pool and one `lvcreate -s -p r -n <id> <vg>/<source>`,
// then GetSnapshot (lvm's creation time). lvcreate -s gives the new LV only
// the tags it is given, not its origin's (recorded with lvm2 2.03.16 in
// testdata/thin-snap-*.txt), so a snapshot or copy never speaks for its source.
func (t *Thin) CreateSnapshot(ctx context.Context, id, name, sourceID string) (*backend.Snapshot, error) {
	b := t.lv
	if !names.IsSnapshotID(id) {
		return nil, fmt.Errorf("lvm: invalid snapshot id %q", id)
	}
	if !names.IsVolumeID(sourceID) {
		return nil, fmt.Errorf("lvm: snapshot %s: source %q is not a carve volume id: %w", id, sourceID, backend.ErrNotFound)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	st, err := t.status(ctx)
	if err != nil {
		return nil, err
	}
	if _, ok := st.thin[id]; ok {
		return nil, fmt.Errorf("lvm: snapshot %s/%s: %w", b.vg, id, backend.ErrExists)
	}
	src, err := t.source(st, sourceID)
	if err != nil {
		return nil, err
	}
	size, err := src.Size.int()
	if err != nil {
		return nil, err
	}
	if err := t.fits(st, size, "snapshot "+id); err != nil {
		return nil, err
	}
	tags := snapshotTags(b.owner, name, sourceID)
	args := []string{"lvcreate", "-s", "-p", "r", "-n", id}
	for _, tag := range tags {
		args = append(args, "--addtag", tag)
	}
	args = append(args, b.vg+"/"+sourceID)
	if _, err := b.runner.Run(ctx, "lvm", args...); err != nil {
		return nil, b.failedCreate(ctx, "snapshot", id, tags, err)
	}
	return t.GetSnapshot(ctx, id)
}

// snapshotTags are a snapshot's tags: owner, name and source.
func snapshotTags(owner, name, sourceID string) []string {
	return append(Tags(owner, name, false, ""), TagSource+"="+sourceID)
}

// source returns the row of carve volume id in st, or ErrNotFound (missing,
// or not carve's: a source is never read from a device carve does not own).
func (t *Thin) source(st *thinStatus, id string) (*thinRow, error) {
	row, ok := st.thin[id]
	if !ok {
		return nil, fmt.Errorf("lvm: %s/%s is not in thin pool %s: %w", t.lv.vg, id, t.opts.ThinPool, backend.ErrNotFound)
	}
	if !hasTag(row.Tags, t.lv.owner) {
		return nil, fmt.Errorf("lvm: %s/%s lacks tag %s: %w", t.lv.vg, id, t.lv.owner, backend.ErrNotFound)
	}
	return &row, nil
}

// GetSnapshot implements backend.Snapshotter with one lvs.
func (t *Thin) GetSnapshot(ctx context.Context, id string) (*backend.Snapshot, error) {
	b := t.lv
	if !names.IsSnapshotID(id) {
		return nil, fmt.Errorf("lvm: %q is not a carve snapshot id: %w", id, backend.ErrNotFound)
	}
	args := append([]string{"lvs", "-o", snapColumns}, reportArgs...)
	out, err := b.runner.Run(ctx, "lvm", append(args, b.vg+"/"+id)...)
	if err != nil {
		return nil, b.mapError("get snapshot", id, err)
	}
	rows, err := parseLVRows[snapRow](out)
	if err != nil {
		return nil, fmt.Errorf("lvm: get snapshot %s/%s: %w", b.vg, id, err)
	}
	for _, r := range rows {
		if r.Name != id || r.VG != b.vg {
			continue
		}
		if r.PoolLV != t.opts.ThinPool {
			return nil, fmt.Errorf("lvm: %s/%s is not in thin pool %s: %w", b.vg, id, t.opts.ThinPool, backend.ErrNotFound)
		}
		if !hasTag(r.Tags, b.owner) {
			return nil, fmt.Errorf("lvm: snapshot %s/%s lacks tag %s: %w", b.vg, id, b.owner, backend.ErrNotOwned)
		}
		return t.snapshot(r)
	}
	return nil, fmt.Errorf("lvm: snapshot %s/%s: %w", b.vg, id, backend.ErrNotFound)
}

// ListSnapshots implements backend.Snapshotter with one lvs of the thin pool.
func (t *Thin) ListSnapshots(ctx context.Context) ([]backend.Snapshot, error) {
	b := t.lv
	args := append([]string{"lvs", "-o", snapColumns}, reportArgs...)
	out, err := b.runner.Run(ctx, "lvm", append(args, "-S", "lv_tags={"+b.owner+"}"+b.inThinPool(), b.vg)...)
	if err != nil {
		return nil, b.mapError("list snapshots", "", err)
	}
	rows, err := parseLVRows[snapRow](out)
	if err != nil {
		return nil, fmt.Errorf("lvm: list snapshots %s: %w", b.vg, err)
	}
	snaps := []backend.Snapshot{}
	for _, r := range rows {
		if r.VG != b.vg || r.PoolLV != t.opts.ThinPool || !hasTag(r.Tags, b.owner) || !names.IsSnapshotID(r.Name) {
			continue
		}
		s, err := t.snapshot(r)
		if err != nil {
			// Keep listing: one damaged snapshot must not hide the others.
			klog.ErrorS(err, "Listing carve snapshot with unreadable tags or time", "vg", b.vg, "lv", r.Name)
			continue
		}
		snaps = append(snaps, *s)
	}
	return snaps, nil
}

// DeleteSnapshot implements backend.Snapshotter: one lvremove selecting
// carve's snapshot in the thin pool; when it removed nothing, GetSnapshot
// says why (ErrNotFound, ErrNotOwned). Volumes made from the snapshot keep
// their data (thin snapshots share blocks, they do not depend on each other).
func (t *Thin) DeleteSnapshot(ctx context.Context, id string) error {
	b := t.lv
	if !names.IsSnapshotID(id) {
		return fmt.Errorf("lvm: %q is not a carve snapshot id: %w", id, backend.ErrNotFound)
	}
	sel := "lv_name=" + id + " && lv_tags={" + b.owner + "}" + b.inThinPool()
	out, err := b.runner.Run(ctx, "lvm", "lvremove", "-f", "-S", sel, b.vg)
	if err != nil {
		return b.mapError("delete snapshot", id, err)
	}
	if removed(out, id) {
		return nil
	}
	_, err = t.GetSnapshot(ctx, id)
	switch {
	case err == nil:
		return fmt.Errorf("lvm: delete snapshot %s/%s: lvremove selected nothing, yet the snapshot exists with our tags", b.vg, id)
	case errors.Is(err, backend.ErrNotOwned):
		return fmt.Errorf("lvm: delete snapshot %s/%s: refusing: %w", b.vg, id, err)
	default:
		return err
	}
}

// CreateFrom implements backend.Snapshotter: under the pool's mutex, one
// lvs of the thin pool, `lvcreate -s -k n -n <id> <vg>/<source>` tagged as a
// volume plus carve.source and TagRestoring, lvextend when req asks for more
// than the source's size, and one lvchange that drops TagRestoring. A retry
// that finds the volume still TagRestoring removes it and starts again.
func (t *Thin) CreateFrom(ctx context.Context, req backend.CreateRequest, sourceID string) (*backend.Volume, error) {
	b := t.lv
	if err := checkID(req.ID); err != nil {
		return nil, err
	}
	if !names.IsVolumeID(sourceID) && !names.IsSnapshotID(sourceID) {
		return nil, fmt.Errorf("lvm: create %s: source %q is not a carve volume or snapshot id: %w", req.ID, sourceID, backend.ErrNotFound)
	}
	if req.Stripes > 1 || req.StripeSizeBytes != 0 || req.Stripes == backend.StripesAll {
		return nil, fmt.Errorf("lvm: create %s: thin volumes are not striped: %w", req.ID, backend.ErrCannotStripe)
	}
	if req.SizeBytes < 0 || !backend.CanAlignUp(req.SizeBytes, b.extentBytes) {
		return nil, fmt.Errorf("lvm: create %s: %d bytes: %w", req.ID, req.SizeBytes, backend.ErrNoSpace)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	st, err := t.status(ctx)
	if err != nil {
		return nil, err
	}
	tags := append(Tags(b.owner, req.Name, req.Ephemeral, req.TargetPath), TagSource+"="+sourceID)
	if row, ok := st.thin[req.ID]; ok {
		if !hasTag(row.Tags, TagRestoring) || !hasTag(row.Tags, b.owner) {
			return nil, fmt.Errorf("lvm: create %s/%s: %w", b.vg, req.ID, backend.ErrExists)
		}
		// An earlier CreateFrom died before it finished: start again.
		if err := b.removeHalfMade(ctx, req.ID, tags); err != nil {
			return nil, err
		}
		if st, err = t.status(ctx); err != nil {
			return nil, err
		}
	}
	src, err := t.source(st, sourceID)
	if err != nil {
		return nil, err
	}
	srcSize, err := src.Size.int()
	if err != nil {
		return nil, err
	}
	size := max(backend.AlignUp(req.SizeBytes, b.extentBytes), srcSize)
	if err := t.fits(st, size, "create "+req.ID+" from "+sourceID); err != nil {
		return nil, err
	}
	args := []string{"lvcreate", "-s", "-k", "n", "-p", "rw", "-n", req.ID}
	for _, tag := range append(tags, TagRestoring) {
		args = append(args, "--addtag", tag)
	}
	args = append(args, b.vg+"/"+sourceID)
	if _, err := b.runner.Run(ctx, "lvm", args...); err != nil {
		return nil, b.failedCreate(ctx, "create", req.ID, tags, err)
	}
	if size > srcSize {
		if _, err := b.runner.Run(ctx, "lvm", "lvextend", "-L", strconv.FormatInt(size, 10)+"b", b.vg+"/"+req.ID); err != nil {
			return nil, b.mapError("create", req.ID, err) // still TagRestoring: a retry starts again
		}
	}
	if _, err := b.runner.Run(ctx, "lvm", "lvchange", "--deltag", TagRestoring, b.vg+"/"+req.ID); err != nil {
		return nil, b.mapError("create", req.ID, err) // still TagRestoring: a retry starts again
	}
	return &backend.Volume{
		ID: req.ID, Name: req.Name, Pool: b.pool, SizeBytes: size, DevicePath: b.devicePath(req.ID),
		Ephemeral: req.Ephemeral, TargetPath: req.TargetPath, Source: sourceID,
	}, nil
}

// snapRow is one row of snapColumns.
type snapRow struct {
	lvRow
	Time string `json:"lv_time"`
}

// lvTimeLayout is how lvm prints lv_time in the C locale ("2026-11-30 04:31:12 +0000").
const lvTimeLayout = "2006-01-02 15:04:05 -0700"

func (t *Thin) snapshot(r snapRow) (*backend.Snapshot, error) {
	size, err := r.Size.int()
	if err != nil {
		return nil, fmt.Errorf("lvm: snapshot %s/%s: %w", r.VG, r.Name, err)
	}
	info, err := ParseTags(r.Tags)
	if err != nil {
		return nil, fmt.Errorf("lvm: snapshot %s/%s: %w", r.VG, r.Name, err)
	}
	created, err := time.Parse(lvTimeLayout, r.Time)
	if err != nil {
		return nil, fmt.Errorf("lvm: snapshot %s/%s: lv_time %q: %w", r.VG, r.Name, r.Time, err)
	}
	return &backend.Snapshot{ID: r.Name, Name: info.Name, SourceID: info.Source, Pool: t.lv.pool, SizeBytes: size, CreationTime: created.Unix()}, nil
}
