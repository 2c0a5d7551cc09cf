// Package pmem is carve's persistent-memory backend: an ndctl region (or all
// of them) is one pool, one fsdax namespace is one volume. It runs the ndctl
// binary through exec.Runner (no cgo, no libndctl, never a shell) and reads
// only its JSON.
//
// # What a namespace records
//
// A namespace has a name (at most 63 bytes) and a uuid, both set at creation
// and kept in the region's label area, so they survive reboots and restarts:
//
//	name  = the volume id (names.VolumeID of the CSI name; at most 63 bytes),
//	        so a restart finds the volume by id;
//	uuid  = a hash of the owner (driver name), the id and whether the volume
//	        is a CSI inline ephemeral volume (see volumeUUID).
//
// A namespace is carve's when its name is a carve volume id AND its uuid is
// one of the two carve would have given it; anything else in the region
// (other users' namespaces, another driver's, a namespace someone named like a
// carve volume) is never listed, never counted as a volume, never destroyed:
// Get and Delete answer backend.ErrNotOwned. The uuid also says whether the
// volume is ephemeral, so restart cleanup finds inline volumes from the
// devices alone.
//
// The CSI name and an inline volume's target path do not fit into a
// namespace; they live in a small per-volume index on the node's disk (see
// index). The namespace stays the state of record.
//
// # Sizes
//
// Namespace sizes are multiples of the region's alignment (16 MiB in the test
// VM), and an fsdax namespace loses an info block and its struct-page array
// (map=dev, ~1/64) to the layout (UsableBytes). Create picks the smallest raw
// size whose usable size is at least the request, creates it, and returns the
// real usable size, which is what /dev/pmemX holds and `ndctl list` reports.
// A volume is never smaller than requested (PMEM-CSI issue #933). AlignBytes,
// the granularity of usable sizes, is PfnAlign (2 MiB).
//
// Capacity: TotalBytes and FreeBytes are the regions' raw size and
// available_size as ndctl reports them; MaxVolumeBytes is the usable size of
// the largest namespace that still fits, i.e. max_available_extent rounded
// down to the region alignment and less the fsdax layout. After fragmentation
// it is the largest free extent, not the sum of free space.
//
// Namespaces cannot grow: Expand beyond the current size fails with
// backend.ErrNotExpandable, and the backend reports FixedSize.
//
// # Concurrency and cost
//
// Every ndctl call is serialized per region (a process-wide lock per region,
// shared with lvm-on-pmem start-up). Create and Delete find the namespace
// through sysfs and then run exactly one ndctl command each; a failed create
// removes whatever ndctl left of the namespace before returning.
//
// A new namespace can show the data of an earlier one that used the same
// space: Create zeroes the whole device (wipeDevice, issue 15), so neither an
// old signature nor an earlier tenant's bytes survive into a new volume. The
// index record stays marked pending until the wipe is done, so a Create
// retried after a crash in between (or inside ndctl, leaving a raw-mode
// namespace) remakes the namespace instead of answering that it exists.
package pmem

import (
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/names"
)

// Type is what Backend.Type returns.
const Type = "pmem"

// AllRegions as the region of a pool spreads it over every pmem region.
const AllRegions = "all"

// DefaultSysfs is where the nvdimm bus lists its devices.
const DefaultSysfs = "/sys/bus/nd/devices"

// cleanupTimeout bounds the removal of a half-made namespace after a failed
// create; it runs on a context detached from the (possibly cancelled) caller's.
const cleanupTimeout = time.Minute

var (
	regionPattern = regexp.MustCompile(`^region[0-9]+$`)
	ownerPattern  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
)

// Backend is one pool of fsdax namespaces. It is safe for concurrent use;
// callers serialize operations on one volume id.
type Backend struct {
	runner  exec.Runner
	pool    string
	region  string   // as configured: regionN or "all"
	regions []string // the regions in use, sorted
	align   map[string]int64
	owner   string
	idx     *index
	sys     sysfs
	// wipe clears the signatures on a new volume's device (tests replace it).
	wipe func(dev string, size int64) error
}

var (
	_ backend.Backend   = (*Backend)(nil)
	_ backend.FixedSize = (*Backend)(nil)
)

// Options tune New; the zero value is right outside tests.
type Options struct {
	// Sysfs is the nvdimm bus device directory (default DefaultSysfs).
	Sysfs string
}

// New returns the pmem pool `pool` on region ("regionN", or "all" for every
// pmem region), claiming namespaces for owner (the driver name). stateDir
// holds the volume index (created if missing; it must persist across
// restarts, e.g. <kubelet dir>/plugins/<driver>/pmem/<pool>). It reads the
// region with one `ndctl list`. A missing region, a region without namespace
// labels, or ndctl missing gives an error wrapping backend.ErrUnavailable.
func New(ctx context.Context, runner exec.Runner, pool, region, owner, stateDir string) (*Backend, error) {
	return NewWithOptions(ctx, runner, pool, region, owner, stateDir, Options{})
}

// NewWithOptions is New with Options.
func NewWithOptions(ctx context.Context, runner exec.Runner, pool, region, owner, stateDir string, o Options) (*Backend, error) {
	if runner == nil {
		return nil, errors.New("pmem: nil runner")
	}
	if region != AllRegions && !regionPattern.MatchString(region) {
		return nil, fmt.Errorf("pmem: invalid region %q: want regionN or %q", region, AllRegions)
	}
	if !ownerPattern.MatchString(owner) {
		return nil, fmt.Errorf("pmem: invalid owner %q: want a driver name ([A-Za-z0-9._-], at most 63 characters)", owner)
	}
	if pool == "" {
		pool = region
	}
	idx, err := newIndex(stateDir)
	if err != nil {
		return nil, err
	}
	b := &Backend{runner: runner, pool: pool, region: region, owner: owner, idx: idx,
		align: map[string]int64{}, sys: sysfs{root: o.Sysfs}, wipe: wipeDevice}
	if b.sys.root == "" {
		b.sys.root = DefaultSysfs
	}
	unlock := func() {}
	if region != AllRegions {
		// (An all-regions pool learns its regions from this list.)
		if unlock, err = lockRegions(ctx, []string{region}); err != nil {
			return nil, err
		}
	}
	regions, err := b.list(ctx, true)
	unlock()
	if err != nil {
		return nil, err
	}
	for _, r := range regions {
		if err := checkLabels(r); err != nil {
			return nil, err
		}
		b.regions = append(b.regions, r.Dev)
		b.align[r.Dev] = max(r.Align, PfnAlign)
	}
	sort.Strings(b.regions)
	b.sweepIndex(regions)
	return b, nil
}

// checkLabels refuses a label-less (legacy) region: it has one raw namespace
// without a uuid spanning the region and cannot be sub-divided.
func checkLabels(r regionJSON) error {
	for _, ns := range r.Namespaces {
		if ns.UUID == "" && ns.RawUUID == "" {
			return fmt.Errorf("pmem: region %s has no namespace labels (a legacy, label-less namespace %s spans it), so it cannot hold one namespace per volume; "+
				"if nothing on it is needed, initialize labels once with: ndctl disable-region %s; ndctl init-labels -f all; ndctl enable-region %s: %w",
				r.Dev, ns.Dev, r.Dev, r.Dev, backend.ErrUnavailable)
		}
	}
	return nil
}

// sweepIndex removes records whose namespace is gone (a crash between
// writing a record and creating the namespace, or between destroying it and
// removing the record).
func (b *Backend) sweepIndex(regions []regionJSON) {
	present := map[string]bool{}
	for _, r := range regions {
		for _, ns := range r.Namespaces {
			if ns.Size > 0 {
				present[ns.Name] = true
			}
		}
	}
	ids, err := b.idx.ids()
	if err != nil {
		klog.ErrorS(err, "Reading the pmem volume index", "pool", b.pool)
		return
	}
	for _, id := range ids {
		if !present[id] {
			klog.InfoS("Removing index record of a namespace that does not exist", "pool", b.pool, "id", id)
			if err := b.idx.remove(id); err != nil {
				klog.ErrorS(err, "Removing stale index record", "pool", b.pool, "id", id)
			}
		}
	}
}

// Type implements backend.Backend.
func (b *Backend) Type() string { return Type }

// AlignBytes implements backend.Backend: usable sizes are multiples of PfnAlign.
func (b *Backend) AlignBytes() int64 { return PfnAlign }

// FixedSize implements backend.FixedSize: namespaces cannot grow.
func (b *Backend) FixedSize() bool { return true }

// Regions returns the regions the pool uses.
func (b *Backend) Regions() []string { return append([]string(nil), b.regions...) }

// Create implements backend.Backend. A namespace named req.ID anywhere in the
// pool's regions (carve's or not) gives backend.ErrExists.
func (b *Backend) Create(ctx context.Context, req backend.CreateRequest) (*backend.Volume, error) {
	if err := checkID(req.ID); err != nil {
		return nil, err
	}
	if req.SizeBytes <= 0 {
		return nil, fmt.Errorf("pmem: create %s: size must be positive, got %d", req.ID, req.SizeBytes)
	}
	unlock, err := lockRegions(ctx, b.regions)
	if err != nil {
		return nil, err
	}
	defer unlock()
	existing, err := b.sys.namespaces(b.regions, req.ID)
	if err != nil {
		return nil, fmt.Errorf("pmem: create %s: %w: %w", req.ID, backend.ErrUnavailable, err)
	}
	uuid := volumeUUID(b.owner, req.ID, req.Ephemeral)
	if len(existing) > 0 {
		if existing, err = b.remakeInterrupted(ctx, req, uuid, existing); err != nil {
			return nil, err
		}
	}
	if len(existing) > 0 {
		return nil, fmt.Errorf("pmem: namespace %s named %s already exists in %s: %w", existing[0].Dev, req.ID, existing[0].Region, backend.ErrExists)
	}
	region, raw, err := b.pickRegion(req.SizeBytes)
	if err != nil {
		return nil, fmt.Errorf("pmem: create %s: %w", req.ID, err)
	}
	t0 := time.Now()
	if err := b.idx.put(req.ID, record{Name: req.Name, TargetPath: req.TargetPath, Pending: true}); err != nil {
		return nil, err
	}
	t1 := time.Now()
	var t2, t3 time.Time
	out, err := ndctl(ctx, b.runner, "create-namespace", "-r", region, "-m", "fsdax", "-M", "dev", "-a", "2M",
		"-s", strconv.FormatInt(raw, 10), "-n", req.ID, "-u", uuid)
	var ns *nsJSON
	if err == nil {
		ns, err = parseNamespace(out)
		if err == nil {
			err = checkCreated(ns, req, raw)
		}
		t2 = time.Now()
		if err == nil {
			err = b.wipe("/dev/"+ns.Blockdev, ns.Size)
		}
		t3 = time.Now()
		if err == nil {
			// Only now is the volume finished and may be handed out.
			err = b.idx.put(req.ID, record{Name: req.Name, TargetPath: req.TargetPath})
		}
	} else {
		err = mapError("create", region+"/"+req.ID, err)
	}
	if err != nil {
		// ndctl may have set up part of the namespace before failing (killed
		// by the context, a kernel error) or made one we cannot use: remove
		// what carries our name and uuid, then the record.
		if cerr := b.removeHalfMade(ctx, req.ID, uuid); cerr != nil {
			return nil, errors.Join(err, cerr)
		}
		if rerr := b.idx.remove(req.ID); rerr != nil {
			klog.ErrorS(rerr, "Removing index record after failed create", "id", req.ID)
		}
		return nil, err
	}
	// Where a slow create spent its time (issue 13); ndctl's run is also logged by pkg/exec at --v=5.
	klog.V(4).InfoS("PMEM create steps", "id", req.ID, "pendingRecord", t1.Sub(t0), "createNamespace", t2.Sub(t1),
		"wipe", t3.Sub(t2), "finalRecord", time.Since(t3))
	return &backend.Volume{
		ID:         req.ID,
		Name:       req.Name,
		Pool:       b.pool,
		SizeBytes:  ns.Size,
		DevicePath: "/dev/" + ns.Blockdev,
		Ephemeral:  req.Ephemeral,
		TargetPath: req.TargetPath,
		DAX:        true,
	}, nil
}

// remakeInterrupted handles a retried Create whose namespace exists: when the
// index says the create of this very volume never finished (the driver died
// inside or after create-namespace, before the wipe), the namespace was never
// handed out and may be raw-mode or still show an earlier volume's data, so
// it is destroyed and Create goes on to make it anew. It returns what is still
// there under req.ID (nothing after a remake).
func (b *Backend) remakeInterrupted(ctx context.Context, req backend.CreateRequest, uuid string, existing []sysNamespace) ([]sysNamespace, error) {
	rec, ok, err := b.idx.get(req.ID)
	if err != nil || !ok || !rec.Pending || rec.Name != req.Name {
		return existing, nil
	}
	ours := false
	for _, ns := range existing {
		ours = ours || sameUUID(ns.UUID, uuid)
	}
	if !ours {
		return existing, nil
	}
	klog.InfoS("Remaking the namespace of an interrupted create", "id", req.ID, "namespace", existing[0].Dev)
	if err := b.removeHalfMade(ctx, req.ID, uuid); err != nil {
		return nil, err
	}
	left, err := b.sys.namespaces(b.regions, req.ID)
	if err != nil {
		return nil, fmt.Errorf("pmem: create %s: %w: %w", req.ID, backend.ErrUnavailable, err)
	}
	return left, nil
}

// checkCreated verifies what create-namespace made before it is handed out.
func checkCreated(ns *nsJSON, req backend.CreateRequest, raw int64) error {
	switch {
	case ns.Mode != "fsdax" || ns.Blockdev == "":
		return fmt.Errorf("pmem: create %s: ndctl made namespace %s in mode %q with block device %q, want fsdax", req.ID, ns.Dev, ns.Mode, ns.Blockdev)
	case ns.Size < req.SizeBytes:
		// Never hand out less than asked for (PMEM-CSI #933).
		return fmt.Errorf("pmem: create %s: namespace %s of %d raw bytes holds only %d usable bytes, %d requested (the kernel reserved more than carve computed)",
			req.ID, ns.Dev, raw, ns.Size, req.SizeBytes)
	case ns.Name != req.ID:
		return fmt.Errorf("pmem: create %s: ndctl named namespace %s %q", req.ID, ns.Dev, ns.Name)
	}
	return nil
}

// pickRegion chooses where a volume of want usable bytes goes and its raw
// size. A single-region pool leaves the space check to ndctl (one command);
// an all-regions pool reads each region's largest free extent from sysfs and
// takes the tightest fit, so large extents stay available.
func (b *Backend) pickRegion(want int64) (string, int64, error) {
	if len(b.regions) == 1 {
		r := b.regions[0]
		raw := RawBytes(want, b.align[r])
		if raw == math.MaxInt64 {
			return "", 0, fmt.Errorf("no namespace can hold %d usable bytes: %w", want, backend.ErrNoSpace)
		}
		return r, raw, nil
	}
	best, bestRaw, bestExtent := "", int64(0), int64(-1)
	largest, largestIn := int64(0), ""
	for _, r := range b.regions {
		s, err := b.sys.read(r, "max_available_extent")
		if err != nil {
			return "", 0, fmt.Errorf("%w: %w", backend.ErrUnavailable, err)
		}
		extent, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return "", 0, fmt.Errorf("%s max_available_extent %q: %w", r, s, err)
		}
		if extent > largest {
			largest, largestIn = extent, r
		}
		raw := RawBytes(want, b.align[r])
		if raw <= extent && (bestExtent < 0 || extent < bestExtent) {
			best, bestRaw, bestExtent = r, raw, extent
		}
	}
	if best == "" {
		return "", 0, fmt.Errorf("no region has room for %d usable bytes (largest free extent: %d bytes in %s): %w", want, largest, largestIn, backend.ErrNoSpace)
	}
	return best, bestRaw, nil
}

// removeHalfMade destroys namespaces named id that carry uuid.
func (b *Backend) removeHalfMade(ctx context.Context, id, uuid string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	found, err := b.sys.namespaces(b.regions, id)
	if err != nil {
		return fmt.Errorf("pmem: create %s failed; looking for what it may have left: %w", id, err)
	}
	for _, ns := range found {
		if !sameUUID(ns.UUID, uuid) {
			continue
		}
		if _, err := ndctl(ctx, b.runner, "destroy-namespace", "-f", ns.Dev); err != nil {
			return fmt.Errorf("pmem: create %s failed; removing half-made namespace %s: %w", id, ns.Dev, err)
		}
		klog.InfoS("Removed half-made namespace after failed create", "region", ns.Region, "namespace", ns.Dev, "id", id)
	}
	return nil
}

// Delete implements backend.Backend: one `ndctl destroy-namespace -f` of the
// namespace named id with carve's uuid. ndctl refuses (and the volume stays)
// while the device is mounted or otherwise held.
func (b *Backend) Delete(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	unlock, err := lockRegions(ctx, b.regions)
	if err != nil {
		return err
	}
	defer unlock()
	found, err := b.sys.namespaces(b.regions, id)
	if err != nil {
		return fmt.Errorf("pmem: delete %s: %w: %w", id, backend.ErrUnavailable, err)
	}
	var ours []sysNamespace
	for _, ns := range found {
		if _, ok := b.owned(id, ns.UUID); ok {
			ours = append(ours, ns)
		}
	}
	if len(ours) == 0 {
		if len(found) > 0 {
			return fmt.Errorf("pmem: delete %s: refusing: namespace %s in %s has uuid %s, not carve's for owner %s: %w",
				id, found[0].Dev, found[0].Region, found[0].UUID, b.owner, backend.ErrNotOwned)
		}
		if err := b.idx.remove(id); err != nil {
			klog.ErrorS(err, "Removing stale index record", "id", id)
		}
		return fmt.Errorf("pmem: namespace %s in %s: %w", id, b.region, backend.ErrNotFound)
	}
	for _, ns := range ours {
		if _, err := ndctl(ctx, b.runner, "destroy-namespace", "-f", ns.Dev); err != nil {
			return mapError("delete", ns.Region+"/"+id+" ("+ns.Dev+")", err)
		}
	}
	return b.idx.remove(id)
}

// DeleteInline implements backend.InlineRemover without the `ndctl list`
// that a Get before Delete costs (issue 13): the namespace is found in sysfs
// as Delete finds it, its uuid must be carve's for an inline volume of id
// (the owner and the ephemeral flag are hashed into it), and its index record
// must name name and target; then one `ndctl destroy-namespace -f`. Anything
// else, a namespace without a record included, is false with nothing done.
func (b *Backend) DeleteInline(ctx context.Context, id, name, target string) (bool, error) {
	if err := checkID(id); err != nil {
		return false, err
	}
	unlock, err := lockRegions(ctx, b.regions)
	if err != nil {
		return false, err
	}
	defer unlock()
	found, err := b.sys.namespaces(b.regions, id)
	if err != nil {
		return false, fmt.Errorf("pmem: delete %s: %w: %w", id, backend.ErrUnavailable, err)
	}
	var ours []sysNamespace
	for _, ns := range found {
		if eph, ok := b.owned(id, ns.UUID); ok && eph {
			ours = append(ours, ns)
		}
	}
	if len(ours) == 0 {
		return false, nil
	}
	rec, ok, err := b.idx.get(id)
	if err != nil {
		return false, fmt.Errorf("pmem: delete %s: %w", id, err)
	}
	if !ok || rec.Name != name || rec.TargetPath != target {
		return false, nil
	}
	for _, ns := range ours {
		if _, err := ndctl(ctx, b.runner, "destroy-namespace", "-f", ns.Dev); err != nil {
			return false, mapError("delete", ns.Region+"/"+id+" ("+ns.Dev+")", err)
		}
	}
	return true, b.idx.remove(id)
}

// Expand implements backend.Backend: namespaces cannot grow, so it succeeds
// only when the volume is already large enough.
func (b *Backend) Expand(ctx context.Context, id string, sizeBytes int64) (*backend.Volume, error) {
	vol, err := b.Get(ctx, id)
	if err != nil {
		if errors.Is(err, backend.ErrNotOwned) {
			return nil, fmt.Errorf("pmem: expand %s: refusing: %w", id, err)
		}
		return nil, err
	}
	if vol.SizeBytes >= sizeBytes {
		return vol, nil
	}
	return nil, fmt.Errorf("pmem: volume %s has %d bytes, %d requested: a PMEM namespace has a fixed size: %w",
		id, vol.SizeBytes, sizeBytes, backend.ErrNotExpandable)
}

// Get implements backend.Backend.
func (b *Backend) Get(ctx context.Context, id string) (*backend.Volume, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	unlock, err := lockRegions(ctx, b.regions)
	if err != nil {
		return nil, err
	}
	defer unlock()
	regions, err := b.list(ctx, true)
	if err != nil {
		return nil, err
	}
	var foreign *nsJSON
	for _, r := range regions {
		for i := range r.Namespaces {
			ns := &r.Namespaces[i]
			if ns.Name != id || ns.Size == 0 {
				continue
			}
			if vol, ok := b.volume(ns); ok {
				return vol, nil
			}
			foreign = ns
		}
	}
	if foreign != nil {
		return nil, fmt.Errorf("pmem: namespace %s named %s has uuid %s, not carve's for owner %s: %w",
			foreign.Dev, id, foreign.namespaceUUID(), b.owner, backend.ErrNotOwned)
	}
	return nil, fmt.Errorf("pmem: namespace %s in %s: %w", id, b.region, backend.ErrNotFound)
}

// List implements backend.Backend: carve's namespaces in the pool's regions.
func (b *Backend) List(ctx context.Context) ([]backend.Volume, error) {
	unlock, err := lockRegions(ctx, b.regions)
	if err != nil {
		return nil, err
	}
	defer unlock()
	regions, err := b.list(ctx, true)
	if err != nil {
		return nil, err
	}
	vols := []backend.Volume{}
	for _, r := range regions {
		for i := range r.Namespaces {
			if r.Namespaces[i].Size == 0 {
				continue
			}
			if vol, ok := b.volume(&r.Namespaces[i]); ok {
				vols = append(vols, *vol)
			}
		}
	}
	sort.Slice(vols, func(i, j int) bool { return vols[i].ID < vols[j].ID })
	return vols, nil
}

// Capacity implements backend.Backend with one `ndctl list -R`.
func (b *Backend) Capacity(ctx context.Context) (backend.Capacity, error) {
	unlock, err := lockRegions(ctx, b.regions)
	if err != nil {
		return backend.Capacity{}, err
	}
	defer unlock()
	regions, err := b.list(ctx, false)
	if err != nil {
		return backend.Capacity{}, err
	}
	c := backend.Capacity{AlignBytes: PfnAlign}
	for _, r := range regions {
		c.TotalBytes += r.Size
		c.FreeBytes += r.AvailableSize
		c.MaxVolumeBytes = max(c.MaxVolumeBytes, MaxVolumeBytes(r.MaxAvailableExtent, max(r.Align, PfnAlign)))
	}
	return c, nil
}

// MaxVolumeBytes is the usable size of the largest namespace that fits into a
// free extent of a region with that alignment.
func MaxVolumeBytes(extent, regionAlign int64) int64 {
	return max(UsableBytes(backend.AlignDown(extent, regionAlign)), 0)
}

// Activate implements backend.Backend: the block device of an enabled
// namespace is returned from sysfs without a command; a disabled one is
// enabled with `ndctl enable-namespace`. A namespace that is not fsdax (left
// raw by an interrupted create) is an error: carve never formats it.
func (b *Backend) Activate(ctx context.Context, id string) (string, error) {
	if err := checkID(id); err != nil {
		return "", err
	}
	unlock, err := lockRegions(ctx, b.regions)
	if err != nil {
		return "", err
	}
	defer unlock()
	for attempt := 0; ; attempt++ {
		ns, err := b.findOwned(id)
		if err != nil {
			return "", err
		}
		if dev := b.sys.blockdev(*ns); dev != "" {
			if !ns.isFsdax() {
				return "", fmt.Errorf("pmem: volume %s: namespace %s is enabled in raw mode, not fsdax (left half-made by an interrupted create?); delete the volume", id, ns.Dev)
			}
			return "/dev/" + dev, nil
		}
		if attempt > 0 {
			return "", fmt.Errorf("pmem: volume %s: namespace %s has no block device after enable-namespace: %w", id, ns.Dev, backend.ErrUnavailable)
		}
		if _, err := ndctl(ctx, b.runner, "enable-namespace", ns.Dev); err != nil {
			return "", mapError("activate", ns.Region+"/"+id+" ("+ns.Dev+")", err)
		}
	}
}

// findOwned returns carve's namespace named id from sysfs.
func (b *Backend) findOwned(id string) (*sysNamespace, error) {
	found, err := b.sys.namespaces(b.regions, id)
	if err != nil {
		return nil, fmt.Errorf("pmem: %s: %w: %w", id, backend.ErrUnavailable, err)
	}
	for i := range found {
		if _, ok := b.owned(id, found[i].UUID); ok {
			return &found[i], nil
		}
	}
	if len(found) > 0 {
		return nil, fmt.Errorf("pmem: namespace %s named %s is not carve's: %w", found[0].Dev, id, backend.ErrNotOwned)
	}
	return nil, fmt.Errorf("pmem: namespace %s in %s: %w", id, b.region, backend.ErrNotFound)
}

// owned reports whether a namespace named id with that uuid is carve's, and
// whether it is an inline ephemeral volume.
func (b *Backend) owned(id, uuid string) (ephemeral, ok bool) {
	if !names.IsVolumeID(id) {
		return false, false
	}
	switch {
	case sameUUID(uuid, volumeUUID(b.owner, id, false)):
		return false, true
	case sameUUID(uuid, volumeUUID(b.owner, id, true)):
		return true, true
	}
	return false, false
}

// volume builds a Volume from a listed namespace, if it is carve's.
func (b *Backend) volume(ns *nsJSON) (*backend.Volume, bool) {
	eph, ok := b.owned(ns.Name, ns.namespaceUUID())
	if !ok {
		return nil, false
	}
	vol := &backend.Volume{ID: ns.Name, Pool: b.pool, SizeBytes: ns.Size, Ephemeral: eph, DAX: true}
	if ns.Mode != "fsdax" {
		// A disabled namespace lists its raw size; enabled, its fsdax
		// layout (which carve created) holds this much.
		vol.SizeBytes = max(UsableBytes(ns.Size), 0)
	}
	if ns.Blockdev != "" {
		vol.DevicePath = "/dev/" + ns.Blockdev
	}
	rec, found, err := b.idx.get(ns.Name)
	if err != nil {
		klog.ErrorS(err, "Reading the index record of a pmem volume", "id", ns.Name)
	}
	if found {
		vol.Name, vol.TargetPath = rec.Name, rec.TargetPath
	} else {
		vol.Name = recoverName(ns.Name)
		klog.V(2).InfoS("pmem volume has no index record; name recovered from its id where possible", "id", ns.Name, "name", vol.Name)
	}
	return vol, true
}

// list runs `ndctl list -R` (with namespaces: `-N -i -v`, so disabled ones
// and each namespace's own uuid show) for the pool's region(s) and returns
// the pmem regions. A configured region that is missing is ErrUnavailable.
func (b *Backend) list(ctx context.Context, namespaces bool) ([]regionJSON, error) {
	args := []string{"list", "-R"}
	if namespaces {
		args = append(args, "-N", "-i", "-v")
	}
	if b.region != AllRegions {
		args = append(args, "-r", b.region)
	}
	out, err := ndctl(ctx, b.runner, args...)
	if err != nil {
		// Whatever ndctl says, the pool cannot be read (unless the caller gave up).
		if err = mapError("list", b.region, err); !errors.Is(err, backend.ErrUnavailable) {
			err = backend.ReadFailed(ctx, err)
		}
		return nil, err
	}
	all, err := parseRegions(out)
	if err != nil {
		return nil, fmt.Errorf("pmem: region %s: %w: %w", b.region, backend.ErrUnavailable, err)
	}
	var regions []regionJSON
	for _, r := range all {
		if r.Type == "pmem" && (b.region == AllRegions || r.Dev == b.region) {
			regions = append(regions, r)
		}
	}
	if len(regions) == 0 {
		what := "region " + b.region
		if b.region == AllRegions {
			what = "any pmem region"
		}
		return nil, fmt.Errorf("pmem: ndctl list does not show %s (no NVDIMM, or the nfit/nd_pmem modules are not loaded): %w", what, backend.ErrUnavailable)
	}
	return regions, nil
}

func checkID(id string) error {
	if !names.IsVolumeID(id) {
		return fmt.Errorf("pmem: invalid volume id %q: not a carve volume id (carve-<name>-<16 hex>, [a-z0-9-], at most %d characters)", id, names.MaxLen)
	}
	return nil
}

// Region locks: one per region, process-wide, so that pools and lvm-on-pmem
// start-up sharing a region never run ndctl on it at the same time.
var (
	regionLocksMu sync.Mutex
	regionLocks   = map[string]chan struct{}{}
)

// lockRegions takes the locks of regions in sorted order, or gives up when
// ctx ends.
func lockRegions(ctx context.Context, regions []string) (func(), error) {
	keys := append([]string(nil), regions...)
	sort.Strings(keys)
	var held []chan struct{}
	release := func() {
		for i := len(held) - 1; i >= 0; i-- {
			<-held[i]
		}
	}
	for _, k := range keys {
		regionLocksMu.Lock()
		ch := regionLocks[k]
		if ch == nil {
			ch = make(chan struct{}, 1)
			regionLocks[k] = ch
		}
		regionLocksMu.Unlock()
		select {
		case ch <- struct{}{}:
			held = append(held, ch)
		case <-ctx.Done():
			release()
			return nil, fmt.Errorf("pmem: waiting for ndctl on %s: %w", strings.Join(keys, ","), ctx.Err())
		}
	}
	return release, nil
}
