// Package volume holds the node's volume logic on top of its pools: choosing
// the pool, sizing within a capacity range, idempotent create by name, and
// finding volumes by id across pools. It knows nothing about gRPC.
package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"

	"k8s.io/klog/v2"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/names"
)

// DefaultSizeBytes is used when a request gives no size.
const DefaultSizeBytes = 1 << 30

var (
	// ErrUnknownPool: the request names a pool this node does not have.
	ErrUnknownPool = errors.New("unknown pool")
	// ErrOutOfRange: no aligned size fits the requested range.
	ErrOutOfRange = errors.New("no volume size fits the capacity range")
	// ErrIncompatible: a volume with that name exists with other properties.
	ErrIncompatible = errors.New("volume exists with incompatible properties")
	// ErrCannotSnapshot: the pool cannot take snapshots or create volumes
	// from a source (thick lvm, pmem); the message names the pool type that can.
	ErrCannotSnapshot = errors.New("pool cannot take snapshots or create volumes from a source")
)

// Pool is a named backend.
type Pool struct {
	Name    string
	Backend backend.Backend
}

// Manager serves volumes from a node's pools. It does not lock: callers
// serialize per volume id.
type Manager struct {
	pools       []Pool
	defaultPool string
	dm          DeviceMapper // the real /sys and /dev; tests point it elsewhere
}

// NewManager takes the pools in order; the default pool must be among them.
func NewManager(pools []Pool, defaultPool string) (*Manager, error) {
	if len(pools) == 0 {
		return nil, errors.New("no pools configured")
	}
	m := &Manager{pools: pools, defaultPool: defaultPool}
	if _, err := m.pool(defaultPool); err != nil {
		return nil, fmt.Errorf("default pool %q: %w", defaultPool, err)
	}
	return m, nil
}

// Pools returns the configured pools.
func (m *Manager) Pools() []Pool { return append([]Pool(nil), m.pools...) }

// DefaultPool returns the default pool's name.
func (m *Manager) DefaultPool() string { return m.defaultPool }

func (m *Manager) pool(name string) (Pool, error) {
	if name == "" {
		name = m.defaultPool
	}
	for _, p := range m.pools {
		if p.Name == name {
			return p, nil
		}
	}
	return Pool{}, fmt.Errorf("%w %q", ErrUnknownPool, name)
}

// Range is a CSI capacity range; 0 means unset.
type Range struct {
	RequiredBytes int64
	LimitBytes    int64
}

// Contains reports whether size satisfies the range.
func (r Range) Contains(size int64) bool {
	return size >= r.RequiredBytes && (r.LimitBytes == 0 || size <= r.LimitBytes)
}

// SizeFor picks the smallest aligned size that satisfies r.
func SizeFor(r Range, align int64) (int64, error) {
	if r.RequiredBytes < 0 || r.LimitBytes < 0 {
		return 0, fmt.Errorf("%w: negative size", ErrOutOfRange)
	}
	if r.LimitBytes > 0 && r.LimitBytes < r.RequiredBytes {
		return 0, fmt.Errorf("%w: limit %d below required %d", ErrOutOfRange, r.LimitBytes, r.RequiredBytes)
	}
	want := r.RequiredBytes
	if want == 0 {
		want = DefaultSizeBytes
		if r.LimitBytes > 0 && r.LimitBytes < want {
			want = r.LimitBytes
		}
	}
	if !backend.CanAlignUp(want, align) { // found by FuzzSizeFor: rounding up wrapped around int64
		return 0, fmt.Errorf("%w: %d bytes rounded up to the pool's %d-byte granularity exceeds the largest size", ErrOutOfRange, want, align)
	}
	size := backend.AlignUp(want, align)
	if r.LimitBytes > 0 && size > r.LimitBytes {
		return 0, fmt.Errorf("%w: %d bytes rounded up to the pool's %d-byte granularity is %d, above the limit %d",
			ErrOutOfRange, want, align, size, r.LimitBytes)
	}
	return size, nil
}

// CreateRequest asks for a volume by CSI name.
type CreateRequest struct {
	Name       string
	Pool       string // "" = default
	Range      Range
	Ephemeral  bool
	TargetPath string
	Striping   Striping
	// Source is a snapshot or volume id to copy (CSI volume_content_source),
	// "" for an empty volume. The new volume goes to the source's pool.
	Source string
	// SourceIsSnapshot: Source names a snapshot, else a volume; an id of
	// the other kind is not found.
	SourceIsSnapshot bool
	// FormatUUID is backend.CreateRequest.FormatUUID: the caller formats
	// the new volume with a filesystem of this UUID before it hands it out
	// (use the returned Volume.FormatUUID: a volume found again keeps its
	// first one).
	FormatUUID string
}

// Striping asks for a volume striped over several devices of its pool.
type Striping struct {
	// Stripes: 0 or 1 not striped; backend.StripesAll one stripe per device.
	Stripes int
	// StripeSizeBytes: 0 is the backend's default.
	StripeSizeBytes int64
}

// MaxStripes is lvm's limit on stripes per LV (lvcreate(8): 128).
const MaxStripes = 128

// StripesAllName is how StorageClasses and LocalVolumes write
// backend.StripesAll.
const StripesAllName = "all"

// ParseStripes reads a stripe count as the StorageClass parameter and
// LocalVolume's spec.stripes write it: a number from 1 to MaxStripes, or
// StripesAllName (backend.StripesAll); "" is 0, not striped. Errors wrap
// backend.ErrCannotStripe.
func ParseStripes(v string) (int, error) {
	if v == "" {
		return 0, nil
	}
	if v == StripesAllName {
		return backend.StripesAll, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > MaxStripes {
		return 0, fmt.Errorf("stripes %q: want a number of devices from 1 to %d, or %q: %w", v, MaxStripes, StripesAllName, backend.ErrCannotStripe)
	}
	return n, nil
}

// FormatStripes is ParseStripes' inverse: "" for 0 (not striped).
func FormatStripes(n int) string {
	switch {
	case n == backend.StripesAll:
		return StripesAllName
	case n == 0:
		return ""
	}
	return strconv.Itoa(n)
}

// Striped reports whether s asks for more than one stripe (or every device).
func (s Striping) Striped() bool { return s.Stripes > 1 || s.Stripes == backend.StripesAll }

// striper returns p's backend as a backend.Striper, or ErrCannotStripe.
func striper(p Pool) (backend.Striper, error) {
	st, ok := p.Backend.(backend.Striper)
	if !ok {
		return nil, fmt.Errorf("pool %q (%s) cannot stripe volumes: %w", p.Name, p.Backend.Type(), backend.ErrCannotStripe)
	}
	return st, nil
}

// resolveStriping turns s into the backend's request fields and the size
// granularity: the stripe count resolved (StripedCapacity), one extent per
// stripe. A count that resolves to one device is not striped.
func resolveStriping(ctx context.Context, p Pool, s Striping) (stripes int, align int64, capa backend.Capacity, err error) {
	if !s.Striped() {
		if s.StripeSizeBytes != 0 {
			return 0, 0, capa, fmt.Errorf("a stripe size without stripes: %w", backend.ErrCannotStripe)
		}
		return 0, p.Backend.AlignBytes(), capa, nil
	}
	st, err := striper(p)
	if err != nil {
		return 0, 0, capa, err
	}
	capa, n, err := st.StripedCapacity(ctx, s.Stripes)
	if err != nil {
		return 0, 0, capa, err
	}
	if n <= 1 {
		return 0, p.Backend.AlignBytes(), capa, nil
	}
	return n, capa.AlignBytes, capa, nil
}

// Create makes the volume or returns the existing compatible one with that name.
func (m *Manager) Create(ctx context.Context, req CreateRequest) (*backend.Volume, error) {
	if req.Source != "" {
		return m.createFrom(ctx, req)
	}
	p, err := m.pool(req.Pool)
	if err != nil {
		return nil, err
	}
	id := names.VolumeID(req.Name)
	stripes, align, capa, err := resolveStriping(ctx, p, req.Striping)
	if err != nil {
		return nil, err
	}
	size, err := SizeFor(req.Range, align)
	if err != nil {
		return nil, err
	}
	if len(m.pools) > 1 {
		// The same name in another pool is the same volume asked for elsewhere.
		if other, err := m.findIn(ctx, id, p.Name); err == nil {
			return nil, fmt.Errorf("%w: volume %q exists in pool %q, not %q", ErrIncompatible, req.Name, other.Pool, p.Name)
		} else if !errors.Is(err, backend.ErrNotFound) {
			return nil, err
		}
	}
	vol, err := p.Backend.Create(ctx, backend.CreateRequest{
		ID: id, Name: req.Name, SizeBytes: size, Ephemeral: req.Ephemeral, TargetPath: req.TargetPath,
		Stripes: stripes, StripeSizeBytes: req.Striping.StripeSizeBytes, FormatUUID: req.FormatUUID,
	})
	if err == nil {
		klog.InfoS("Volume created", "name", req.Name, "id", id, "pool", p.Name, "bytes", size, "ephemeral", req.Ephemeral, "stripes", stripes)
		return vol, nil
	}
	if stripes > 1 && errors.Is(err, backend.ErrNoSpace) {
		// Said in the request's terms: the pool may have the bytes, but not
		// on enough devices (capa was read before the create).
		return nil, fmt.Errorf("pool %q: %d bytes in %d stripes need %d bytes free on each of %d devices; the largest striped volume now is %d bytes: %w",
			p.Name, size, stripes, size/int64(stripes), stripes, capa.MaxVolumeBytes, err)
	}
	if !errors.Is(err, backend.ErrExists) {
		return nil, err
	}
	return compatible(ctx, p, id, req)
}

// compatible returns the existing volume id of pool p when it is what req
// asks for (a retry), else ErrExists or ErrIncompatible.
func compatible(ctx context.Context, p Pool, id string, req CreateRequest) (*backend.Volume, error) {
	existing, err := p.Backend.Get(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("volume id %q is taken: %w", id, err)
	}
	switch {
	case existing.Source != req.Source:
		return nil, fmt.Errorf("%w: volume %q was created from %q, not %q", ErrIncompatible, req.Name, existing.Source, req.Source)
	case existing.Name != req.Name:
		return nil, fmt.Errorf("%w: id %q belongs to volume %q", backend.ErrExists, id, existing.Name)
	case !req.Range.Contains(existing.SizeBytes):
		return nil, fmt.Errorf("%w: volume %q has %d bytes, outside the requested range [%d, %d]",
			ErrIncompatible, req.Name, existing.SizeBytes, req.Range.RequiredBytes, req.Range.LimitBytes)
	case existing.Ephemeral != req.Ephemeral:
		return nil, fmt.Errorf("%w: volume %q ephemeral=%v", ErrIncompatible, req.Name, existing.Ephemeral)
	}
	return existing, nil
}

// snapshotter returns p's backend as a backend.Snapshotter, or ErrCannotSnapshot.
func snapshotter(p Pool) (backend.Snapshotter, error) {
	sn, ok := p.Backend.(backend.Snapshotter)
	if !ok {
		return nil, fmt.Errorf("pool %q is of type %s; snapshots and volumes from a source need an lvm-thin pool: %w",
			p.Name, p.Backend.Type(), ErrCannotSnapshot)
	}
	return sn, nil
}

// CanSnapshot reports whether any pool can take snapshots (backend.Snapshotter).
func (m *Manager) CanSnapshot() bool {
	for _, p := range m.pools {
		if _, ok := p.Backend.(backend.Snapshotter); ok {
			return true
		}
	}
	return false
}

// sourcePool finds the pool holding source, a snapshot id (a snapshot
// source) or a volume id, and the source's size in bytes. A source carve
// does not own is not found: it is never read (CSI: NOT_FOUND). Errors:
// backend.ErrNotFound, ErrCannotSnapshot.
func (m *Manager) sourcePool(ctx context.Context, source string, snapshot bool) (Pool, backend.Snapshotter, int64, error) {
	if snapshot {
		if !names.IsSnapshotID(source) {
			return Pool{}, nil, 0, fmt.Errorf("snapshot %q: not a carve snapshot id: %w", source, backend.ErrNotFound)
		}
		for _, p := range m.pools {
			sn, ok := p.Backend.(backend.Snapshotter)
			if !ok {
				continue
			}
			s, err := sn.GetSnapshot(ctx, source)
			switch {
			case err == nil:
				return p, sn, s.SizeBytes, nil
			case errors.Is(err, backend.ErrNotOwned):
				return Pool{}, nil, 0, fmt.Errorf("snapshot %q is not carve's: %w", source, backend.ErrNotFound)
			case !errors.Is(err, backend.ErrNotFound):
				return Pool{}, nil, 0, err
			}
		}
		return Pool{}, nil, 0, fmt.Errorf("snapshot %q: %w", source, backend.ErrNotFound)
	}
	v, err := m.findSource(ctx, source)
	if err != nil {
		return Pool{}, nil, 0, err
	}
	p, err := m.pool(v.Pool)
	if err != nil {
		return Pool{}, nil, 0, err
	}
	sn, err := snapshotter(p)
	return p, sn, v.SizeBytes, err
}

// findSource finds carve volume id to copy or snapshot; a device with that
// id carve does not own is backend.ErrNotFound, not ErrNotOwned (it is not
// a volume the caller may read).
func (m *Manager) findSource(ctx context.Context, id string) (*backend.Volume, error) {
	v, err := m.Find(ctx, id)
	if errors.Is(err, backend.ErrNotOwned) {
		return nil, fmt.Errorf("volume %q is not carve's: %w", id, backend.ErrNotFound)
	}
	return v, err
}

// createFrom makes volume req from req.Source in the source's pool, or
// returns the volume of that name made from it before (a retry finds it even
// when the source is gone since, unless that copy was never finished).
func (m *Manager) createFrom(ctx context.Context, req CreateRequest) (*backend.Volume, error) {
	id := names.VolumeID(req.Name)
	p, sn, srcSize, err := m.sourcePool(ctx, req.Source, req.SourceIsSnapshot)
	if errors.Is(err, backend.ErrNotFound) {
		// A retry after the source was deleted: the copy made before is the answer.
		if v, ferr := m.Find(ctx, id); ferr == nil && v.Source == req.Source && !v.Incomplete {
			vp, perr := m.pool(v.Pool)
			if perr != nil {
				return nil, perr
			}
			return compatible(ctx, vp, id, req)
		}
	}
	if err != nil {
		return nil, err
	}
	if req.Pool != "" && req.Pool != p.Name {
		return nil, fmt.Errorf("%w: source %q is in pool %q, not %q: a volume is created from a source in the source's pool",
			ErrUnknownPool, req.Source, p.Name, req.Pool)
	}
	if req.Striping.Striped() {
		return nil, fmt.Errorf("a volume from a source is not striped: %w", backend.ErrCannotStripe)
	}
	if req.Range.LimitBytes > 0 && srcSize > req.Range.LimitBytes {
		return nil, fmt.Errorf("%w: source %q has %d bytes, more than the limit %d: a copy cannot be smaller than its source",
			ErrOutOfRange, req.Source, srcSize, req.Range.LimitBytes)
	}
	// Without a required size the copy has the source's (SizeFor's default is for empty volumes).
	var size int64
	if req.Range.RequiredBytes > 0 {
		if size, err = SizeFor(req.Range, p.Backend.AlignBytes()); err != nil {
			return nil, err
		}
	}
	vol, err := sn.CreateFrom(ctx, backend.CreateRequest{ID: id, Name: req.Name, SizeBytes: size, Ephemeral: req.Ephemeral, TargetPath: req.TargetPath}, req.Source)
	if err == nil {
		if !req.Range.Contains(vol.SizeBytes) {
			// The source grew between the check and the copy.
			derr := p.Backend.Delete(ctx, vol.ID)
			return nil, errors.Join(fmt.Errorf("%w: source %q has %d bytes, more than the limit %d", ErrOutOfRange, req.Source, vol.SizeBytes, req.Range.LimitBytes), derr)
		}
		klog.InfoS("Volume created from a source", "name", req.Name, "id", id, "pool", p.Name, "source", req.Source, "bytes", vol.SizeBytes)
		return vol, nil
	}
	if !errors.Is(err, backend.ErrExists) {
		return nil, err
	}
	return compatible(ctx, p, id, req)
}

// CreateSnapshot takes snapshot name of volume sourceID in its pool, or
// returns the existing one of that name and source (a retry). Errors:
// backend.ErrNotFound (no such volume), ErrCannotSnapshot, backend.ErrExists
// (the name belongs to a snapshot of another volume), backend.ErrNoSpace.
func (m *Manager) CreateSnapshot(ctx context.Context, name, sourceID string) (*backend.Snapshot, error) {
	id := names.SnapshotID(name)
	if s, err := m.FindSnapshot(ctx, id); err == nil {
		if s.SourceID != sourceID || s.Name != name {
			return nil, fmt.Errorf("%w: snapshot %q is of volume %q, not %q", backend.ErrExists, name, s.SourceID, sourceID)
		}
		return s, nil
	} else if !errors.Is(err, backend.ErrNotFound) {
		return nil, err
	}
	v, err := m.findSource(ctx, sourceID)
	if err != nil {
		return nil, err
	}
	p, err := m.pool(v.Pool)
	if err != nil {
		return nil, err
	}
	sn, err := snapshotter(p)
	if err != nil {
		return nil, err
	}
	s, err := sn.CreateSnapshot(ctx, id, name, sourceID)
	if err != nil {
		return nil, err
	}
	klog.InfoS("Snapshot created", "name", name, "id", id, "source", sourceID, "pool", p.Name, "bytes", s.SizeBytes)
	return s, nil
}

// FindSnapshot returns carve snapshot id from whichever pool has it, or backend.ErrNotFound.
func (m *Manager) FindSnapshot(ctx context.Context, id string) (*backend.Snapshot, error) {
	if !names.IsSnapshotID(id) {
		return nil, fmt.Errorf("%w: %q is not a carve snapshot id", backend.ErrNotFound, id)
	}
	for _, p := range m.pools {
		sn, ok := p.Backend.(backend.Snapshotter)
		if !ok {
			continue
		}
		s, err := sn.GetSnapshot(ctx, id)
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, backend.ErrNotFound) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%w: snapshot %q", backend.ErrNotFound, id)
}

// DeleteSnapshot removes snapshot id; one that does not exist (or is not
// carve's) is not an error, as for volumes.
func (m *Manager) DeleteSnapshot(ctx context.Context, id string) error {
	if !names.IsSnapshotID(id) {
		return nil
	}
	for _, p := range m.pools {
		sn, ok := p.Backend.(backend.Snapshotter)
		if !ok {
			continue
		}
		err := sn.DeleteSnapshot(ctx, id)
		switch {
		case err == nil:
			klog.InfoS("Snapshot deleted", "id", id, "pool", p.Name)
			return nil
		case errors.Is(err, backend.ErrNotOwned):
			klog.InfoS("Not deleting a snapshot carve does not own", "id", id, "pool", p.Name)
			return nil
		case !errors.Is(err, backend.ErrNotFound):
			return err
		}
	}
	return nil
}

// ListSnapshots returns every pool's carve snapshots, ordered by id.
func (m *Manager) ListSnapshots(ctx context.Context) ([]backend.Snapshot, error) {
	var out []backend.Snapshot
	for _, p := range m.pools {
		sn, ok := p.Backend.(backend.Snapshotter)
		if !ok {
			continue
		}
		s, err := sn.ListSnapshots(ctx)
		if err != nil {
			return nil, err
		}
		out = append(out, s...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Find returns the carve volume with that id from whichever pool has it.
func (m *Manager) Find(ctx context.Context, id string) (*backend.Volume, error) {
	return m.findIn(ctx, id, "")
}

// findIn searches all pools except skip.
func (m *Manager) findIn(ctx context.Context, id, skip string) (*backend.Volume, error) {
	if !names.IsVolumeID(id) {
		return nil, fmt.Errorf("%w: %q is not a carve volume id", backend.ErrNotFound, id)
	}
	for _, p := range m.pools {
		if p.Name == skip {
			continue
		}
		v, err := p.Backend.Get(ctx, id)
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, backend.ErrNotFound) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%w: %q", backend.ErrNotFound, id)
}

// Delete removes the volume; a volume that does not exist is not an error.
func (m *Manager) Delete(ctx context.Context, id string) error {
	if !names.IsVolumeID(id) {
		return nil // never ours, so nothing to delete
	}
	for _, p := range m.pools {
		err := p.Backend.Delete(ctx, id)
		if err == nil {
			klog.InfoS("Volume deleted", "id", id, "pool", p.Name)
			return nil
		}
		if errors.Is(err, backend.ErrNotOwned) {
			klog.InfoS("Not deleting a device carve does not own", "id", id, "pool", p.Name)
			return nil
		}
		if !errors.Is(err, backend.ErrNotFound) {
			return err
		}
	}
	return nil
}

// DeleteInline removes the inline volume id only if it is carve's, ephemeral,
// of CSI name and published at target, checked by each pool's backend in its
// removal call (backend.InlineRemover; pools whose backend cannot are
// skipped). It reports whether a pool removed it; false with a nil error
// means none did, and the caller reads the volume (Find) to tell why.
func (m *Manager) DeleteInline(ctx context.Context, id, name, target string) (bool, error) {
	if !names.IsVolumeID(id) {
		return false, nil
	}
	for _, p := range m.pools {
		r, ok := p.Backend.(backend.InlineRemover)
		if !ok {
			continue
		}
		done, err := r.DeleteInline(ctx, id, name, target)
		if err != nil {
			return false, err
		}
		if done {
			klog.InfoS("Volume deleted", "id", id, "pool", p.Name)
			return true, nil
		}
	}
	return false, nil
}

// Expand grows the volume to fit r; returns the new size.
func (m *Manager) Expand(ctx context.Context, id string, r Range) (*backend.Volume, error) {
	v, err := m.Find(ctx, id)
	if err != nil {
		return nil, err
	}
	p, err := m.pool(v.Pool)
	if err != nil {
		return nil, err
	}
	if v.SizeBytes >= r.RequiredBytes && r.Contains(v.SizeBytes) {
		return v, nil
	}
	size, err := SizeFor(Range{RequiredBytes: max(r.RequiredBytes, 1), LimitBytes: r.LimitBytes}, p.Backend.AlignBytes())
	if err != nil {
		return nil, err
	}
	if size < v.SizeBytes {
		return nil, fmt.Errorf("%w: volume has %d bytes, shrinking to %d is not supported", ErrOutOfRange, v.SizeBytes, size)
	}
	nv, err := p.Backend.Expand(ctx, id, size)
	if err != nil {
		return nil, err
	}
	klog.InfoS("Volume expanded", "id", id, "pool", p.Name, "from", v.SizeBytes, "to", nv.SizeBytes)
	return nv, nil
}

// Capacity of a pool; an unknown pool has none.
func (m *Manager) Capacity(ctx context.Context, pool string) (backend.Capacity, error) {
	return m.CapacityFor(ctx, pool, Striping{})
}

// CapacityFor is Capacity for volumes striped as s: MaxVolumeBytes is then
// the largest volume of that striping (backend.Striper). A pool that cannot
// stripe as asked offers none (nil error): GetCapacity answers 0 for volumes
// a pool cannot make.
func (m *Manager) CapacityFor(ctx context.Context, pool string, s Striping) (backend.Capacity, error) {
	p, err := m.pool(pool)
	if errors.Is(err, ErrUnknownPool) {
		return backend.Capacity{}, nil
	}
	if err != nil {
		return backend.Capacity{}, err
	}
	if !s.Striped() {
		return p.Backend.Capacity(ctx)
	}
	st, err := striper(p)
	if err != nil {
		return backend.Capacity{}, nil
	}
	c, n, err := st.StripedCapacity(ctx, s.Stripes)
	if errors.Is(err, backend.ErrCannotStripe) {
		return backend.Capacity{}, nil
	}
	if err == nil && n <= 1 {
		return p.Backend.Capacity(ctx)
	}
	return c, err
}

// List returns every carve volume on the node, sorted by id.
func (m *Manager) List(ctx context.Context) ([]backend.Volume, error) {
	var all []backend.Volume
	for _, p := range m.pools {
		vs, err := p.Backend.List(ctx)
		if err != nil {
			return nil, fmt.Errorf("pool %q: %w", p.Name, err)
		}
		all = append(all, vs...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
	return all, nil
}

// Activate makes the volume's device node available and returns its path.
// For an LV whose /dev/<vg>/<lv> link is missing (no udev, a container's
// /dev), the node comes from device-mapper itself (DeviceMapper.Lookup):
// before activation if the LV is active already, else after lvm2 activated it
// without making the link (the backend's ErrUnavailable).
func (m *Manager) Activate(ctx context.Context, v *backend.Volume) (string, error) {
	p, err := m.pool(v.Pool)
	if err != nil {
		return "", err
	}
	vg, lv, isLV := splitLVPath(v.DevicePath)
	if isLV {
		if _, err := os.Stat(v.DevicePath); errors.Is(err, os.ErrNotExist) {
			if dev, err := m.dm.Lookup(vg, lv); err == nil {
				klog.InfoS("Device link missing: using the device-mapper node", "link", v.DevicePath, "device", dev)
				return dev, nil
			}
		}
	}
	dev, err := p.Backend.Activate(ctx, v.ID)
	if err != nil && isLV && errors.Is(err, backend.ErrUnavailable) {
		alt, derr := m.dm.Lookup(vg, lv)
		if derr != nil {
			return "", fmt.Errorf("%w (device-mapper: %v)", err, derr)
		}
		klog.InfoS("Device link missing after activation: using the device-mapper node", "link", v.DevicePath, "device", alt)
		return alt, nil
	}
	return dev, err
}

// Check reads every pool once; it is the readiness probe.
func (m *Manager) Check(ctx context.Context) error {
	// Every pool is read: stopping at the first failure would let a degraded
	// pool hide an unavailable one from Probe, which tells the two apart.
	var errs []error
	for _, p := range m.pools {
		if _, err := p.Backend.Capacity(ctx); err != nil {
			errs = append(errs, fmt.Errorf("pool %q: %w", p.Name, err))
		}
	}
	return errors.Join(errs...)
}
