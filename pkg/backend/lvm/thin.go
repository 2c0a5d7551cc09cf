package lvm

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"

	"k8s.io/klog/v2"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/names"
)

// ThinType is what Thin.Type returns.
const ThinType = "lvm-thin"

// TagThinPool=<driver> marks a thin pool carve created (NewThin with
// CreatePercent). Not the owner tag: the pool is not a volume, and leak
// audits count owner-tagged LVs.
const TagThinPool = "carve.thinpool"

// Defaults of ThinOptions (issue 14).
const (
	// DefaultOverprovision: the thin volumes' virtual sizes may add up to
	// the thin pool's data size, no more (no overcommit unless the admin
	// asks for it).
	DefaultOverprovision = 1.0
	// DefaultThresholdPercent: data or metadata use at which new volumes
	// and expansions are refused. A thin pool that fills up stalls or fails
	// every write of every thin volume in it (lvmthin(7), "Data space
	// exhaustion"), so carve stops handing out space well before.
	DefaultThresholdPercent = 90
	// MaxOverprovision bounds the ratio (a larger one is a typo, not a plan).
	MaxOverprovision = 1000
)

// ThinOptions configure a thin pool used as a carve pool.
type ThinOptions struct {
	// ThinPool is the thin pool LV in the volume group.
	ThinPool string
	// Overprovision is how many times its data size the thin volumes'
	// virtual sizes may add up to, 1 (none) to MaxOverprovision.
	Overprovision float64
	// ThresholdPercent (1-100): at or above this data or metadata use,
	// Create and Expand fail with backend.ErrNoSpace and Capacity reports
	// nothing free.
	ThresholdPercent int
	// CreatePercent (1-100, 0 = off): when the thin pool does not exist,
	// New creates it from this share of the volume group's size, zeroing
	// on; an existing thin pool is used as it is, never recreated.
	CreatePercent int
}

// ThinUsage is a thin pool's real use (backend.ThinUsage).
type ThinUsage = backend.ThinUsage

// Thin is one lvm thin pool used as a carve pool (`--pool=NAME=lvm-thin:VG/THINPOOL`):
// every volume is a thin LV in it, tagged as thick LVs are (see package doc).
// Space is handed out by virtual size: Capacity and Create keep the sum of the
// thin LVs' virtual sizes at most Overprovision times the pool's data size,
// and refuse new space once the pool's real data or metadata use reaches
// ThresholdPercent. New thin LVs read as zeros: unprovisioned blocks read as
// zeros, and New requires the pool to zero newly provisioned blocks (lvm's
// `zero` attribute), so no volume shows an earlier volume's bytes.
//
// It is safe for concurrent use: a per-pool mutex holds the capacity check
// and the lvcreate or lvextend together, so concurrent creates never promise
// more than the ratio allows between them.
type Thin struct {
	lv   *Backend // Get, List, Delete, Activate; its lvs calls include pool_lv
	opts ThinOptions
	mu   sync.Mutex
}

var (
	_ backend.Backend       = (*Thin)(nil)
	_ backend.InlineRemover = (*Thin)(nil)
)

// thinColumns are what thinStatus reads of the thin pool and its thin LVs.
const thinColumns = lvColumns + ",pool_lv,segtype,zero,data_percent,metadata_percent"

// NewThin returns the backend for thin pool opts.ThinPool in volume group vg
// (see New for pool and ownerTag). It checks the thin pool: it must be a
// thin pool (segtype thin-pool) that zeroes new blocks; with
// opts.CreatePercent it creates a missing one (`lvcreate --type thin-pool -l
// P%VG -Z y`). Errors wrap backend.ErrUnavailable when the VG or the thin
// pool is missing, and name the fix when the pool does not zero.
func NewThin(ctx context.Context, runner exec.Runner, pool, vg, ownerTag string, opts ThinOptions) (*Thin, error) {
	if !names.ValidVGName(opts.ThinPool) { // same charset and length rule as a VG name
		return nil, fmt.Errorf("lvm: invalid thin pool name %q", opts.ThinPool)
	}
	if opts.Overprovision == 0 {
		opts.Overprovision = DefaultOverprovision
	}
	if opts.ThresholdPercent == 0 {
		opts.ThresholdPercent = DefaultThresholdPercent
	}
	switch {
	case !(opts.Overprovision >= 1 && opts.Overprovision <= MaxOverprovision):
		return nil, fmt.Errorf("lvm: thin pool %s/%s: overprovision %v: want a ratio from 1 to %d", vg, opts.ThinPool, opts.Overprovision, MaxOverprovision)
	case opts.ThresholdPercent < 1 || opts.ThresholdPercent > 100:
		return nil, fmt.Errorf("lvm: thin pool %s/%s: threshold %d%%: want 1-100%%", vg, opts.ThinPool, opts.ThresholdPercent)
	case opts.CreatePercent < 0 || opts.CreatePercent > 100:
		return nil, fmt.Errorf("lvm: thin pool %s/%s: size %d%%: want 1-100%% of the volume group", vg, opts.ThinPool, opts.CreatePercent)
	}
	b, err := New(ctx, runner, pool, vg, ownerTag)
	if err != nil {
		return nil, err
	}
	b.thinPool = opts.ThinPool
	t := &Thin{lv: b, opts: opts}
	st, err := t.status(ctx)
	if err != nil {
		return nil, err
	}
	if st.pool == nil && opts.CreatePercent > 0 {
		if _, err := runner.Run(ctx, "lvm", "lvcreate", "--type", "thin-pool", "-l", strconv.Itoa(opts.CreatePercent)+"%VG",
			"-Z", "y", "-n", opts.ThinPool, "--addtag", TagThinPool+"="+ownerTag, "-y", vg); err != nil {
			return nil, b.mapError("create thin pool", opts.ThinPool, err)
		}
		klog.InfoS("Created thin pool", "vg", vg, "thinPool", opts.ThinPool, "percentOfVG", opts.CreatePercent)
		if st, err = t.status(ctx); err != nil {
			return nil, err
		}
	}
	switch {
	case st.pool == nil:
		return nil, fmt.Errorf("lvm: thin pool %s/%s not found (create it with lvcreate --type thin-pool, or give the pool size=<percent>%%): %w",
			vg, opts.ThinPool, backend.ErrUnavailable)
	case st.pool.Segtype != "thin-pool":
		return nil, fmt.Errorf("lvm: %s/%s is a %q LV, not a thin pool: %w", vg, opts.ThinPool, st.pool.Segtype, backend.ErrUnavailable)
	case st.pool.Zero != "zero":
		// Without zeroing a write smaller than a chunk leaves the rest of
		// the newly provisioned chunk as the disk had it (lvmthin(7), "Zeroing").
		return nil, fmt.Errorf("lvm: thin pool %s/%s does not zero new blocks, so a volume could read an earlier volume's bytes; turn it on with lvchange -Z y %s/%s",
			vg, opts.ThinPool, vg, opts.ThinPool)
	}
	if !st.usage.Active {
		// lvm reports a pool's use only while it is active (after a reboot
		// it is until a thin LV is activated).
		if _, err := runner.Run(ctx, "lvm", "lvchange", "-ay", vg+"/"+opts.ThinPool); err != nil {
			return nil, b.mapError("activate thin pool", opts.ThinPool, err)
		}
	}
	return t, nil
}

// Type implements backend.Backend.
func (t *Thin) Type() string { return ThinType }

// VG returns the volume group name.
func (t *Thin) VG() string { return t.lv.vg }

// ThinPool returns the thin pool's LV name.
func (t *Thin) ThinPool() string { return t.opts.ThinPool }

// OwnerTag returns the full owner tag, "carve.owner=<driver>".
func (t *Thin) OwnerTag() string { return t.lv.owner }

// AlignBytes implements backend.Backend: the VG's extent size (lvcreate -V
// rounds a thin LV's virtual size up to whole extents).
func (t *Thin) AlignBytes() int64 { return t.lv.extentBytes }

// Get implements backend.Backend; a carve LV of the VG outside the thin pool is ErrNotFound.
func (t *Thin) Get(ctx context.Context, id string) (*backend.Volume, error) { return t.lv.Get(ctx, id) }

// List implements backend.Backend: carve's thin LVs in the thin pool.
func (t *Thin) List(ctx context.Context) ([]backend.Volume, error) { return t.lv.List(ctx) }

// Delete implements backend.Backend (one lvremove with carve's selection).
// Removing a thin LV returns its provisioned blocks to the pool.
func (t *Thin) Delete(ctx context.Context, id string) error { return t.lv.Delete(ctx, id) }

// DeleteInline implements backend.InlineRemover.
func (t *Thin) DeleteInline(ctx context.Context, id, name, target string) (bool, error) {
	return t.lv.DeleteInline(ctx, id, name, target)
}

// Activate implements backend.Backend.
func (t *Thin) Activate(ctx context.Context, id string) (string, error) {
	return t.lv.Activate(ctx, id)
}

// Create implements backend.Backend: under the pool's mutex, one lvs of the
// thin pool (existence, virtual budget, real use) and one `lvcreate -V
// <bytes>b --thinpool <pool>`. Errors: backend.ErrExists for an id the pool
// already holds, backend.ErrNoSpace (naming which limit) when the virtual
// budget or the threshold refuses it, backend.ErrCannotStripe for a striping
// request (stripe the thin pool itself instead).
func (t *Thin) Create(ctx context.Context, req backend.CreateRequest) (*backend.Volume, error) {
	b := t.lv
	if err := checkID(req.ID); err != nil {
		return nil, err
	}
	if req.SizeBytes <= 0 {
		return nil, fmt.Errorf("lvm: create %s: size must be positive, got %d", req.ID, req.SizeBytes)
	}
	if req.Stripes > 1 || req.StripeSizeBytes != 0 || req.Stripes == backend.StripesAll {
		return nil, fmt.Errorf("lvm: create %s: thin volumes are not striped (stripe the thin pool's data LV instead): %w", req.ID, backend.ErrCannotStripe)
	}
	if !backend.CanAlignUp(req.SizeBytes, b.extentBytes) {
		return nil, fmt.Errorf("lvm: create %s: %d bytes: %w", req.ID, req.SizeBytes, backend.ErrNoSpace)
	}
	size := backend.AlignUp(req.SizeBytes, b.extentBytes)
	t.mu.Lock()
	defer t.mu.Unlock()
	st, err := t.status(ctx)
	if err != nil {
		return nil, err
	}
	if _, ok := st.thin[req.ID]; ok {
		return nil, fmt.Errorf("lvm: create %s/%s: the thin pool holds it: %w", b.vg, req.ID, backend.ErrExists)
	}
	if err := t.fits(st, size, "create "+req.ID); err != nil {
		return nil, err
	}
	tags := Tags(b.owner, req.Name, req.Ephemeral, req.TargetPath)
	args := []string{"lvcreate", "-n", req.ID, "-V", strconv.FormatInt(size, 10) + "b", "--thinpool", t.opts.ThinPool, "-y"}
	for _, tag := range tags {
		args = append(args, "--addtag", tag)
	}
	args = append(args, b.vg)
	if _, err := b.runner.Run(ctx, "lvm", args...); err != nil {
		return nil, b.failedCreate(ctx, "create", req.ID, tags, err)
	}
	return &backend.Volume{
		ID: req.ID, Name: req.Name, Pool: b.pool, SizeBytes: size, DevicePath: b.devicePath(req.ID),
		Ephemeral: req.Ephemeral, TargetPath: req.TargetPath,
	}, nil
}

// failedCreate maps a failed lvcreate of id (op names the call) and, unless
// lvm refused before allocating anything, removes what it may have
// committed (an LV of that id with the first of tags, see removeHalfMade).
func (b *Backend) failedCreate(ctx context.Context, op, id string, tags []string, err error) error {
	err = b.mapError(op, id, err)
	if errors.Is(err, backend.ErrExists) || errors.Is(err, backend.ErrNoSpace) || errors.Is(err, backend.ErrDegraded) {
		return err
	}
	if cerr := b.removeHalfMade(ctx, id, tags); cerr != nil {
		return errors.Join(err, cerr)
	}
	return err
}

// Expand implements backend.Backend: under the pool's mutex, one lvs of the
// thin pool (ownership, current size, budget) and `lvextend -L` when the
// volume is smaller than sizeBytes. The growth must fit the virtual budget
// and the threshold as a new volume would (backend.ErrNoSpace).
func (t *Thin) Expand(ctx context.Context, id string, sizeBytes int64) (*backend.Volume, error) {
	b := t.lv
	if err := checkID(id); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	st, err := t.status(ctx)
	if err != nil {
		return nil, err
	}
	row, ok := st.thin[id]
	if !ok {
		// Not in the thin pool: Get says whether it is missing or foreign.
		if _, err := b.Get(ctx, id); err != nil {
			if errors.Is(err, backend.ErrNotOwned) {
				return nil, fmt.Errorf("lvm: expand %s/%s: refusing: %w", b.vg, id, err)
			}
			return nil, err
		}
		return nil, fmt.Errorf("lvm: expand %s/%s: not in thin pool %s: %w", b.vg, id, t.opts.ThinPool, backend.ErrNotFound)
	}
	if !hasTag(row.Tags, b.owner) {
		return nil, fmt.Errorf("lvm: expand %s/%s: refusing: logical volume lacks tag %s: %w", b.vg, id, b.owner, backend.ErrNotOwned)
	}
	vol, err := b.volume(row.lvRow)
	if err != nil && vol == nil {
		return nil, fmt.Errorf("lvm: expand %s/%s: %w", b.vg, id, err)
	}
	if !backend.CanAlignUp(sizeBytes, b.extentBytes) {
		return nil, fmt.Errorf("lvm: expand %s/%s: %d bytes: %w", b.vg, id, sizeBytes, backend.ErrNoSpace)
	}
	size := backend.AlignUp(sizeBytes, b.extentBytes)
	if vol.SizeBytes >= size {
		return vol, nil
	}
	if err := t.fits(st, size-vol.SizeBytes, "expand "+id); err != nil {
		return nil, err
	}
	if _, err := b.runner.Run(ctx, "lvm", "lvextend", "-L", strconv.FormatInt(size, 10)+"b", b.vg+"/"+id); err != nil {
		return nil, b.mapError("expand", id, err)
	}
	vol.SizeBytes = size
	return vol, nil
}

// Capacity implements backend.Backend with one lvs of the thin pool:
// TotalBytes is the virtual limit (data size x Overprovision, whole
// extents), FreeBytes what is left of it after every thin LV's virtual size
// (carve's or not), MaxVolumeBytes that in whole extents. At or above the
// threshold of data or metadata use, FreeBytes and MaxVolumeBytes are 0.
func (t *Thin) Capacity(ctx context.Context) (backend.Capacity, error) {
	st, err := t.status(ctx)
	if err != nil {
		return backend.Capacity{}, err
	}
	if st.pool == nil {
		return backend.Capacity{}, fmt.Errorf("lvm: thin pool %s/%s not found: %w", t.lv.vg, t.opts.ThinPool, backend.ErrUnavailable)
	}
	u := st.usage
	u.Overprovision, u.ThresholdPercent = t.opts.Overprovision, t.opts.ThresholdPercent
	c := backend.Capacity{TotalBytes: t.limit(st), AlignBytes: t.lv.extentBytes, Thin: u}
	if t.full(st) == "" {
		c.FreeBytes = max(c.TotalBytes-st.usage.VirtualBytes, 0)
		c.MaxVolumeBytes = backend.AlignDown(c.FreeBytes, t.lv.extentBytes)
	}
	return c, nil
}

// Usage returns the thin pool's real use with one lvs.
func (t *Thin) Usage(ctx context.Context) (ThinUsage, error) {
	st, err := t.status(ctx)
	if err != nil {
		return ThinUsage{}, err
	}
	if st.pool == nil {
		return ThinUsage{}, fmt.Errorf("lvm: thin pool %s/%s not found: %w", t.lv.vg, t.opts.ThinPool, backend.ErrUnavailable)
	}
	u := st.usage
	u.Overprovision, u.ThresholdPercent = t.opts.Overprovision, t.opts.ThresholdPercent
	return u, nil
}

// Options returns the pool's options, defaults filled in.
func (t *Thin) Options() ThinOptions { return t.opts }

// limit is the virtual limit in whole extents.
func (t *Thin) limit(st *thinStatus) int64 {
	v := float64(st.usage.DataBytes) * t.opts.Overprovision
	if v >= math.MaxInt64/2 {
		return backend.AlignDown(math.MaxInt64/2, t.lv.extentBytes)
	}
	return backend.AlignDown(int64(v), t.lv.extentBytes)
}

// full says which use is at or above the threshold, "" when neither.
func (t *Thin) full(st *thinStatus) string {
	thr := float64(t.opts.ThresholdPercent)
	switch {
	case !st.usage.Active:
		return "unknown"
	case st.usage.DataPercent >= thr:
		return fmt.Sprintf("data %.2f%%", st.usage.DataPercent)
	case st.usage.MetadataPercent >= thr:
		return fmt.Sprintf("metadata %.2f%%", st.usage.MetadataPercent)
	}
	return ""
}

// fits checks that grow more virtual bytes fit st, as backend.ErrNoSpace naming the limit.
func (t *Thin) fits(st *thinStatus, grow int64, op string) error {
	if st.pool == nil {
		return fmt.Errorf("lvm: %s: thin pool %s/%s not found: %w", op, t.lv.vg, t.opts.ThinPool, backend.ErrUnavailable)
	}
	if !st.usage.Active {
		// Not a full pool: one an admin (or a reboot) deactivated. Retryable.
		return fmt.Errorf("lvm: %s: thin pool %s/%s is inactive, so its use is unknown (lvchange -ay %s/%s): %w",
			op, t.lv.vg, t.opts.ThinPool, t.lv.vg, t.opts.ThinPool, backend.ErrUnavailable)
	}
	if use := t.full(st); use != "" {
		return fmt.Errorf("lvm: %s: thin pool %s/%s is at %s use (threshold %d%%): %w",
			op, t.lv.vg, t.opts.ThinPool, use, t.opts.ThresholdPercent, backend.ErrNoSpace)
	}
	limit := t.limit(st)
	if free := limit - st.usage.VirtualBytes; grow > free {
		return fmt.Errorf("lvm: %s: %d bytes do not fit thin pool %s/%s: %d of its %d virtual bytes (%.4gx its data) are given out: %w",
			op, grow, t.lv.vg, t.opts.ThinPool, st.usage.VirtualBytes, limit, t.opts.Overprovision, backend.ErrNoSpace)
	}
	return nil
}

// thinRow is one row of thinColumns.
type thinRow struct {
	lvRow
	Segtype         string `json:"segtype"`
	Zero            string `json:"zero"`
	DataPercent     string `json:"data_percent"`
	MetadataPercent string `json:"metadata_percent"`
}

// thinStatus is the thin pool and its thin LVs at one moment.
type thinStatus struct {
	pool  *thinRow           // nil when the VG has no LV named ThinPool
	thin  map[string]thinRow // thin LVs in the pool by name (carve's or not)
	usage ThinUsage
}

// status reads the thin pool and its thin LVs with one
// `lvs -S 'lv_name=<pool> || pool_lv=<pool>' <vg>`.
func (t *Thin) status(ctx context.Context) (*thinStatus, error) {
	b := t.lv
	args := append([]string{"lvs", "-o", thinColumns}, reportArgs...)
	args = append(args, "-S", "lv_name="+t.opts.ThinPool+" || pool_lv="+t.opts.ThinPool, b.vg)
	out, err := b.runner.Run(ctx, "lvm", args...)
	if err != nil {
		return nil, b.mapError("thin pool", t.opts.ThinPool, backend.ReadFailed(ctx, err))
	}
	rows, err := parseLVRows[thinRow](out)
	if err != nil {
		return nil, fmt.Errorf("lvm: thin pool %s/%s: %w: %w", b.vg, t.opts.ThinPool, backend.ErrUnavailable, err)
	}
	st := &thinStatus{thin: map[string]thinRow{}}
	for _, row := range rows {
		if row.VG != b.vg {
			continue
		}
		size, err := row.Size.int()
		if err != nil {
			return nil, fmt.Errorf("lvm: thin pool %s/%s: %s: %w", b.vg, t.opts.ThinPool, row.Name, err)
		}
		switch {
		case row.Name == t.opts.ThinPool:
			st.pool = &row
			st.usage.DataBytes = size
			if row.DataPercent == "" || row.MetadataPercent == "" {
				break // inactive: use unknown
			}
			dp, err1 := percent(row.DataPercent)
			mp, err2 := percent(row.MetadataPercent)
			if err := errors.Join(err1, err2); err != nil {
				return nil, fmt.Errorf("lvm: thin pool %s/%s: %w", b.vg, t.opts.ThinPool, err)
			}
			st.usage.DataPercent, st.usage.MetadataPercent, st.usage.Active = dp, mp, true
		case row.PoolLV == t.opts.ThinPool:
			st.thin[row.Name] = row
			st.usage.VirtualBytes += size
		}
	}
	return st, nil
}

// percent parses lvm's data_percent and metadata_percent ("12.50").
func percent(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || v < 0 || math.IsNaN(v) {
		return 0, fmt.Errorf("lvm report percentage %q: not a number >= 0", s)
	}
	return v, nil
}
