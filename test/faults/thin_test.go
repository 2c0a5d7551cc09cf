package faults

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/carve-csi/carve/pkg/names"
)

// Snapshot and clone lives on an lvm-thin pool (CARVE_FAULTS_POOL=thin,
// issue 14). Each life makes a thin volume, writes a marker straight to its
// block device, snapshots it, makes a volume from the snapshot and a larger
// clone of the volume, overwrites the source, deletes the source while its
// snapshot is still there, then the snapshot and the copies; a fault may be
// armed on each of those calls (thinOps). The volumes are block volumes: the
// marker is read back from the devices directly, so no filesystem call
// stands between a copy and the check of its data.
//
// Besides what audit checks for every pool (leaked: a carve LV, snapshot or
// device no one holds; lost: a held volume's LV gone), checkThin checks every
// acknowledged volume and snapshot: its size, its carve.source, no
// carve.restoring=pending left on it, that it is a snapshot LV exactly when
// it should be, the marker on its device (the copies: the source's marker
// as it was when they were made, not the overwritten one), and that a
// clone's part beyond the source's size reads as zeros.

const (
	opSnapshot       = "CreateSnapshot"
	opRestore        = "CreateVolume(from snapshot)"
	opClone          = "CreateVolume(clone)"
	opDeleteSource   = "DeleteVolume(snapshotted)"
	opDeleteSnapshot = "DeleteSnapshot"
	opDeleteClone    = "DeleteVolume(clone)"
	// markerSize is the marker written to a source volume.
	markerSize = 256 << 10
)

// thinOps are the operations a fault can interrupt in a thin life, in the
// order a life runs them. The copy from the snapshot has its source's size
// (lvcreate -s, then the tag-clearing lvchange); the clone is larger than
// its source (lvextend between the two).
var thinOps = []string{opCreate, opSnapshot, opRestore, opClone, opDeleteSource, opDeleteSnapshot, opDeleteClone}

// thinVol is what a thin life expects of one of its volumes or snapshots.
type thinVol struct {
	snapshot   bool   // a CSI snapshot (a read-only thin snapshot LV), not a volume
	wantSize   int64  // the LV's size
	wantSource string // its carve.source tag, "" for none
	raw        []byte // what the start of its block device reads (volumes only)
}

func blockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func (h *harness) thinLife(l *life) error {
	src := &vol{name: "faults-" + l.tag + "-src"}
	snap := &vol{name: "faults-" + l.tag + "-snap", thinVol: thinVol{snapshot: true}}
	rest := &vol{name: "faults-" + l.tag + "-restored"}
	clone := &vol{name: "faults-" + l.tag + "-clone"}
	l.vols = append(l.vols, src, snap, rest, clone)

	// copyOf asks for a volume of size bytes from source.
	copyOf := func(v *vol, size int64, source *csi.VolumeContentSource, sourceID string) func(context.Context) error {
		return func(ctx context.Context) error {
			resp, err := h.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: v.name,
				CapacityRange:      &csi.CapacityRange{RequiredBytes: size},
				VolumeCapabilities: []*csi.VolumeCapability{blockCap()}, VolumeContentSource: source})
			if err != nil {
				return err
			}
			got := resp.GetVolume()
			v.id, v.created, v.wantSize, v.wantSource, v.raw = got.GetVolumeId(), true, size, sourceID, src.raw
			if got.GetCapacityBytes() != size || !proto.Equal(got.GetContentSource(), source) {
				l.problem("CreateVolume %s answered %d bytes from %v, want %d from %v", v.name, got.GetCapacityBytes(), got.GetContentSource(), size, source)
			}
			return nil
		}
	}
	del := func(v *vol) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := h.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id})
			if err == nil {
				v.created = false
			}
			return err
		}
	}

	if err := h.call(l, opCreate, func(ctx context.Context) error {
		resp, err := h.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: src.name,
			CapacityRange: &csi.CapacityRange{RequiredBytes: volSize}, VolumeCapabilities: []*csi.VolumeCapability{blockCap()}})
		if err != nil {
			return err
		}
		src.id, src.created, src.wantSize = resp.GetVolume().GetVolumeId(), true, volSize
		if c := resp.GetVolume().GetCapacityBytes(); c != volSize {
			l.problem("CreateVolume %s answered %d bytes, want %d", src.name, c, volSize)
		}
		return nil
	}); err != nil {
		return err
	}
	// A new thin volume reads as zeros (the pool zeroes new blocks), and
	// then carries the marker.
	if err := h.checkZeros(&l.tally, src, 0, "the new thin volume"); err != nil {
		return err
	}
	src.raw = h.random(markerSize)
	if err := h.writeRaw(src, src.raw); err != nil {
		return err
	}

	if err := h.call(l, opSnapshot, func(ctx context.Context) error {
		resp, err := h.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: snap.name, SourceVolumeId: src.id})
		if err != nil {
			return err
		}
		s := resp.GetSnapshot()
		snap.id, snap.created, snap.wantSize, snap.wantSource = s.GetSnapshotId(), true, volSize, src.id
		if s.GetSourceVolumeId() != src.id || s.GetSizeBytes() != volSize || !s.GetReadyToUse() {
			l.problem("CreateSnapshot %s answered %v, want source %s, %d bytes, ready", snap.name, s, src.id, volSize)
		}
		return nil
	}); err != nil {
		return err
	}
	if err := h.call(l, opRestore, copyOf(rest, volSize, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.id}}}, snap.id)); err != nil {
		return err
	}
	if err := h.call(l, opClone, copyOf(clone, grownSize, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.id}}}, src.id)); err != nil {
		return err
	}
	// The copies keep the marker they were made with.
	src.raw = h.random(markerSize)
	if err := h.writeRaw(src, src.raw); err != nil {
		return err
	}
	h.audit(l, &l.tally, "after the snapshot and the copies")

	if err := h.call(l, opDeleteSource, del(src)); err != nil {
		return err
	}
	if err := h.call(l, opDeleteSnapshot, func(ctx context.Context) error {
		_, err := h.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.id})
		if err == nil {
			snap.created = false
		}
		return err
	}); err != nil {
		return err
	}
	if err := h.call(l, opDeleteClone, del(clone)); err != nil {
		return err
	}
	h.audit(l, &l.tally, "after the source, its snapshot and the clone were deleted")
	return h.call(l, opDelete, del(rest))
}

// checkThin checks held volume or snapshot v against its LV lv (see thinLife).
func (h *harness) checkThin(tr *tally, v *vol, lv carveVol, when string) {
	if names.IsSnapshotID(lv.obj) != v.snapshot {
		tr.lost++
		tr.problem("lost %s: %s %s is %s", when, map[bool]string{true: "snapshot", false: "volume"}[v.snapshot], v.name, lv.label)
	}
	if v.wantSize != 0 && lv.size != v.wantSize {
		tr.lost++
		tr.problem("lost %s: %s has %d bytes, want %d", when, lv.label, lv.size, v.wantSize)
	}
	if got := tagValue(lv.tags, "carve.source"); got != v.wantSource {
		tr.lost++
		tr.problem("lost %s: %s has carve.source %q, want %q", when, lv.label, got, v.wantSource)
	}
	if hasTag(lv.tags, "carve.restoring=pending") {
		tr.lost++
		tr.problem("lost %s: %s was acknowledged but is still marked carve.restoring=pending (tags %s)", when, lv.label, lv.tags)
	}
	if v.snapshot || v.raw == nil {
		return
	}
	got, err := h.readRaw(lv, 0, len(v.raw))
	if err != nil || !bytes.Equal(got, v.raw) {
		tr.lost++
		tr.problem("lost %s: %s: the marker reads back different (%d of %d bytes read, %v)", when, lv.label, len(got), len(v.raw), err)
	}
	if v.wantSize > volSize {
		// A copy larger than its source: the rest reads as zeros.
		got, err := h.readRaw(lv, volSize, markerSize)
		if err != nil || !bytes.Equal(got, make([]byte, markerSize)) {
			tr.lost++
			tr.problem("lost %s: %s: its part beyond the source's size does not read as zeros (%v)", when, lv.label, err)
		}
	}
}

// notePending records whether the kill that ended tr left a volume marked
// carve.restoring=pending (a copy killed after its lvcreate -s or lvextend),
// so that the trial shows its retry took that path.
func (h *harness) notePending(tr *trial) {
	if tr.fault.op != opRestore && tr.fault.op != opClone {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	cvs, _, err := h.carveVolumes(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, c := range cvs {
		if hasTag(c.tags, "carve.restoring=pending") {
			tr.pending = true
			h.pending++
			return
		}
	}
}

// checkZeros checks that markerSize bytes at off of v's device read as zeros.
func (h *harness) checkZeros(tr *tally, v *vol, off int64, what string) error {
	lv, err := h.lvOf(v)
	if err != nil {
		return err
	}
	got, err := h.readRaw(lv, off, markerSize)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, make([]byte, markerSize)) {
		tr.lost++
		tr.problem("stale data: %s %s (%s) does not read as zeros at %d", what, v.name, lv.label, off)
	}
	return nil
}

// lvOf finds held volume v's LV.
func (h *harness) lvOf(v *vol) (carveVol, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	cvs, _, err := h.carveVolumes(ctx)
	if err != nil {
		return carveVol{}, err
	}
	for _, c := range cvs {
		if c.owns(false, v) {
			return c, nil
		}
	}
	return carveVol{}, fmt.Errorf("volume %s has no LV", v.name)
}

// random returns n bytes from the trials' random source.
func (h *harness) random(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		u := h.rng.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(u >> (8 * j))
		}
	}
	return b
}

// device returns lv's block device, activating the LV with the test's own
// lvm when it has none (carve activates a volume when it stages it).
func (h *harness) device(lv carveVol) (string, error) {
	if _, err := os.Stat(lv.dev); err == nil {
		return lv.dev, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if _, err := h.runner.Run(ctx, "lvm", "lvchange", "-ay", "-K", h.pool.vg+"/"+lv.obj); err != nil {
		return "", err
	}
	return lv.dev, nil
}

// direct runs fn on an n-byte page-aligned buffer (O_DIRECT: no page cache
// between the test and the device).
func direct(n int, fn func(buf []byte) error) error {
	buf, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	return fn(buf)
}

// readRaw reads n bytes at off of lv's device, past the page cache.
func (h *harness) readRaw(lv carveVol, off int64, n int) ([]byte, error) {
	dev, err := h.device(lv)
	if err != nil {
		return nil, err
	}
	var out []byte
	err = direct(n, func(buf []byte) error {
		f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.ReadAt(buf, off); err != nil {
			return fmt.Errorf("read %s at %d: %w", dev, off, err)
		}
		out = append([]byte(nil), buf...)
		return nil
	})
	return out, err
}

// writeRaw writes data at the start of held volume v's device and syncs it.
func (h *harness) writeRaw(v *vol, data []byte) error {
	lv, err := h.lvOf(v)
	if err != nil {
		return err
	}
	dev, err := h.device(lv)
	if err != nil {
		return err
	}
	return direct(len(data), func(buf []byte) error {
		copy(buf, data)
		f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_DIRECT, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteAt(buf, 0)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write the marker to %s: %w", dev, err)
		}
		return nil
	})
}

// tagValue returns the value of tag key in lvm's comma-separated tags.
func tagValue(tags, key string) string {
	for _, t := range strings.Split(tags, ",") {
		if v, ok := strings.CutPrefix(t, key+"="); ok {
			return v
		}
	}
	return ""
}
