// Package backend defines what a storage pool on a node can do. Implementations
// (lvm, pmem) keep their state of record on the devices themselves; package
// registry builds them from pool specs, and backendtest.Run is the contract
// every one of them passes.
package backend

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
)

// Sentinel errors; implementations wrap them with %w and callers test with errors.Is.
var (
	// ErrNotFound: no volume with that id in the pool.
	ErrNotFound = errors.New("volume not found")
	// ErrNotOwned: a device with that id exists but carve does not own it.
	ErrNotOwned = errors.New("device exists but is not owned by carve")
	// ErrNoSpace: the pool has no room for the request.
	ErrNoSpace = errors.New("insufficient free space in pool")
	// ErrExists: the id is taken by a volume with another CSI name.
	ErrExists = errors.New("volume id already in use")
	// ErrInUse: the device is open (mounted, staged) and cannot be removed now.
	ErrInUse = errors.New("volume is in use")
	// ErrUnavailable: the pool itself cannot be read (missing VG, tool failing).
	ErrUnavailable = errors.New("pool unavailable")
	// ErrDegraded: the pool is there but cannot create or grow volumes until
	// an admin repairs it (a VG with a missing PV, a region whose namespaces
	// the kernel will not enable). Capacity reports it with zero free bytes;
	// existing volumes can still be read and deleted.
	ErrDegraded = errors.New("pool degraded")
	// ErrNotExpandable: the volume cannot grow (PMEM namespaces have a fixed size).
	ErrNotExpandable = errors.New("volumes in this pool cannot be expanded")
	// ErrCannotStripe: the pool cannot make the striping asked for, whatever
	// its free space (not a striping pool, fewer devices than stripes, a
	// stripe size it does not take).
	ErrCannotStripe = errors.New("pool cannot stripe as asked")
)

// StripesAll asks for one stripe on every device of the pool.
const StripesAll = -1

// ReadFailed wraps err, a failed read of the pool's state (vgs, ndctl list), as ErrUnavailable,
// unless ctx ended: a child killed because its caller gave up (a probe's deadline, a canceled
// call) says nothing about the pool (issue 11: kubelet's 1 s probe timeout read as "pool
// unavailable"), so then err keeps only ctx's error for errors.Is.
func ReadFailed(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// Volume is one carve-owned device in a pool.
type Volume struct {
	ID         string // device name (LV name / namespace name) = CSI volume id
	Name       string // CSI volume name it was created for
	Pool       string
	SizeBytes  int64
	DevicePath string // e.g. /dev/vg/lv; may not exist when the LV is inactive
	Ephemeral  bool   // CSI inline ephemeral volume
	TargetPath string // inline volumes: the pod's target path, to find orphans after a restart
	// DAX: the device is persistent memory (a PMEM namespace or an LV on one), so
	// filesystems on it mount with -o dax unless the volume context says otherwise.
	DAX bool
	// Condition is "" for a healthy volume, else why it is not (lvm's
	// lv_health_status "partial": a physical volume holding part of it is
	// missing). NodeGetVolumeStats reports it as an abnormal volume_condition.
	Condition string `json:",omitempty"`
	// Source is the snapshot or volume id the volume was created from
	// (Snapshotter.CreateFrom), "" for a new empty volume.
	Source string `json:",omitempty"`
	// Incomplete: a CreateFrom of it died before it finished (lvm:
	// carve.restoring=pending); it is never handed out as made.
	Incomplete bool `json:",omitempty"`
	// Unzeroed: Create's zeroing of it has not finished (lvm:
	// carve.zeroing=pending without carve.fsuuid), so the next Create of it zeroes it again. No
	// caller hands such a volume out, nor keeps it mounted. A volume with a
	// FormatUUID is never Unzeroed here: whether its zeroing finished is on
	// its device (CreateRequest.FormatUUID).
	Unzeroed bool `json:",omitempty"`
	// FormatUUID is the UUID its filesystem is (to be) made with, when it was
	// created with CreateRequest.FormatUUID: for a volume found again, the
	// one recorded at its first Create, not the retry's.
	FormatUUID string `json:",omitempty"`
}

// CreateRequest asks for a new volume. SizeBytes is already aligned by the caller
// (see Capacity.AlignBytes). The created volume is never smaller, but may be
// larger where the device's usable size cannot match it exactly (PMEM
// namespaces lose their memmap and info block to the fsdax layout); Create
// returns the real size.
type CreateRequest struct {
	ID         string
	Name       string
	SizeBytes  int64
	Ephemeral  bool
	TargetPath string
	// Stripes > 1 stripes the volume over that many devices (resolved by
	// the caller: never StripesAll; Striper backends only); its size is then
	// rounded up to whole stripes (Striper's AlignBytes).
	Stripes int
	// StripeSizeBytes is the stripe size (a power of two); 0: the tool's default.
	StripeSizeBytes int64
	// FormatUUID, when not empty (a canonical lowercase UUID), says that the
	// caller formats the new volume itself, right after Create, with a
	// filesystem of that UUID (mkfs.ext4 -U, mkfs.xfs -m uuid=), and hands it
	// out only once that filesystem is mounted. A backend whose Create zeroes
	// the volume and then records that in its metadata (lvm: the lvchange
	// that drops carve.zeroing=pending, 300-500 ms under emulation: issue 13)
	// may record the UUID at creation instead and take a complete
	// filesystem with it on the device as the proof that the zeroing
	// finished: mkfs only runs after Create returned. A retried Create then
	// zeroes the volume again only when the device holds no such filesystem
	// (and fails, zeroing nothing, when it cannot read the device). The returned
	// Volume.FormatUUID is the UUID to format with; backends without zeroing
	// ignore it (and return it empty).
	FormatUUID string
}

// Capacity of a pool.
type Capacity struct {
	TotalBytes     int64
	FreeBytes      int64
	MaxVolumeBytes int64 // largest single volume that can still be created
	AlignBytes     int64 // volume sizes are multiples of this
	// Thin is a thin pool's real use (zero for other pools, see IsThin):
	// its capacity counts virtual bytes, this says what is really written.
	// A value, so that Capacity stays comparable with ==.
	Thin ThinUsage `json:",omitzero"`
}

// IsThin reports whether c is a thin pool's (its Thin figures are set).
func (c Capacity) IsThin() bool { return c.Thin.Overprovision > 0 }

// ThinUsage is a thin pool's real use, as lvm reports it (lvs data_percent,
// metadata_percent), and the rules its virtual capacity follows (issue 14).
type ThinUsage struct {
	DataBytes       int64   // the thin pool's data size
	DataPercent     float64 // provisioned share of the data
	MetadataPercent float64 // used share of the metadata
	// Active: lvm reports the use only while the pool is active; an
	// inactive pool's use is unknown, and it gets no new space.
	Active bool
	// VirtualBytes are the virtual sizes of every thin LV in the pool
	// (carve's or not, snapshots included).
	VirtualBytes int64
	// Overprovision: the virtual sizes may add up to this times DataBytes.
	Overprovision float64
	// ThresholdPercent: at or above this data or metadata use the pool
	// gets no new volumes and no expansions.
	ThresholdPercent int
}

// Backend is one pool's storage.
type Backend interface {
	// Type names the backend in NodeStorage and metrics (lvm.Type,
	// pmem.Type): a lowercase DNS label, as NodeStorage's CRD requires.
	Type() string
	// AlignBytes is the size granularity (LVM extent size, PMEM alignment),
	// known without running a tool so that CreateVolume costs one command.
	AlignBytes() int64
	// Create makes the volume. If a device named req.ID already exists it returns
	// ErrExists and leaves it alone; the caller decides whether it is compatible.
	Create(ctx context.Context, req CreateRequest) (*Volume, error)
	// Delete removes a carve-owned volume; ErrNotFound when absent.
	Delete(ctx context.Context, id string) error
	// Expand grows the volume to at least sizeBytes (aligned by the caller).
	Expand(ctx context.Context, id string, sizeBytes int64) (*Volume, error)
	// Get returns ErrNotFound or ErrNotOwned when the id is not a carve volume.
	Get(ctx context.Context, id string) (*Volume, error)
	// List returns carve-owned volumes only.
	List(ctx context.Context) ([]Volume, error)
	// Capacity of the pool. A pool that cannot create volumes now returns an
	// error wrapping ErrDegraded with zero free and maximum volume bytes.
	Capacity(ctx context.Context) (Capacity, error)
	// Activate makes the volume's device node available (no-op where not needed).
	Activate(ctx context.Context, id string) (string, error)
}

// Device is one physical device a pool is built from.
type Device struct {
	Path      string // as the pool's tool names it (lvm: pv_name; "[unknown]" when missing)
	UUID      string // lvm: pv_uuid, which names a missing device too
	SizeBytes int64
	FreeBytes int64
	// Missing: the pool knows the device but it is not there (a VG's missing PV).
	Missing bool
}

// DeviceLister is implemented by pools built from devices (every lvm pool:
// its physical volumes); NodeStorage lists them, and the cluster controller
// computes striped maxima from their free bytes (StripedMax).
type DeviceLister interface {
	// Devices returns the pool's devices in the pool's order.
	Devices(ctx context.Context) ([]Device, error)
}

// Striper is implemented by backends that can stripe a volume over several
// devices (lvm: lvcreate -i).
type Striper interface {
	// StripedCapacity is the pool's capacity for volumes of stripes stripes
	// (StripesAll: one per present device) and that number resolved.
	// MaxVolumeBytes is the largest such volume that can be made now: each
	// stripe goes to another device, so it is stripes times the free space
	// of the device with the stripes-th most (with StripesAll: of the
	// emptiest device); AlignBytes is one extent on every stripe.
	// Errors: ErrCannotStripe when the pool has fewer devices than stripes,
	// ErrDegraded (with zero free) as Capacity.
	StripedCapacity(ctx context.Context, stripes int) (c Capacity, n int, err error)
}

// StripedMax is the rule for the largest volume of stripes stripes (StripesAll:
// one per device) over devices with free[i] bytes free each, in allocation
// units of extentBytes: lvm puts each stripe on another device and does not
// split a stripe row over more devices than stripes (measured on lvm2 2.03:
// with 10, 15 and 15 free extents, lvcreate -i 2 takes 30 extents, not 32),
// so it is stripes x the whole free extents of the device with the
// stripes-th most. It returns that maximum in bytes and the stripe count
// resolved. The node's lvm backend (StripedCapacity) and the cluster
// controller (from NodeStorage) both use it. Errors: ErrCannotStripe when
// fewer devices than stripes are given, or stripes or extentBytes is not
// positive.
func StripedMax(free []int64, extentBytes int64, stripes int) (int64, int, error) {
	n := stripes
	if n == StripesAll {
		n = len(free)
	}
	switch {
	case n < 1 || extentBytes <= 0:
		return 0, 0, fmt.Errorf("%d stripes of %d-byte extents: %w", stripes, extentBytes, ErrCannotStripe)
	case n > len(free):
		return 0, n, fmt.Errorf("%d device(s), fewer than %d stripes: %w", len(free), n, ErrCannotStripe)
	}
	ext := make([]int64, len(free))
	for i, f := range free {
		ext[i] = max(f, 0) / extentBytes
	}
	sort.Slice(ext, func(i, j int) bool { return ext[i] > ext[j] })
	if ext[n-1] > math.MaxInt64/extentBytes/int64(n) {
		return math.MaxInt64 / extentBytes / int64(n) * int64(n) * extentBytes, n, nil
	}
	return ext[n-1] * int64(n) * extentBytes, n, nil
}

// Snapshot is a point-in-time copy of a volume in the same pool (lvm-thin:
// a thin snapshot LV). It outlives its source: deleting the source volume
// leaves the snapshot readable and restorable.
type Snapshot struct {
	ID        string // device name (names.SnapshotID) = CSI snapshot id
	Name      string // CSI snapshot name it was created for
	SourceID  string // the volume it was taken of
	Pool      string
	SizeBytes int64 // the source's size when it was taken
	// CreationTime in seconds since the epoch (lvm's lv_time).
	CreationTime int64
}

// Snapshotter is implemented by pools that can take snapshots of their
// volumes and create volumes from snapshots and volumes (lvm-thin).
type Snapshotter interface {
	// CreateSnapshot takes snapshot id (CSI snapshot name) of volume
	// sourceID. Errors: ErrNotFound (no such volume in the pool), ErrExists
	// (id is taken; the caller compares name and source with GetSnapshot),
	// ErrNoSpace (the pool's budget has no room for the snapshot's size).
	CreateSnapshot(ctx context.Context, id, name, sourceID string) (*Snapshot, error)
	// GetSnapshot returns ErrNotFound or ErrNotOwned when id is not a carve snapshot.
	GetSnapshot(ctx context.Context, id string) (*Snapshot, error)
	// ListSnapshots returns the pool's carve snapshots.
	ListSnapshots(ctx context.Context) ([]Snapshot, error)
	// DeleteSnapshot removes a carve snapshot; ErrNotFound when absent.
	DeleteSnapshot(ctx context.Context, id string) error
	// CreateFrom makes volume req with the content of sourceID, a snapshot
	// or a volume of this pool, at least the source's size (req.SizeBytes
	// is raised to it). Errors as Create, and ErrNotFound for a missing source.
	CreateFrom(ctx context.Context, req CreateRequest, sourceID string) (*Volume, error)
}

// InlineRemover is implemented by backends that can check and remove an
// inline volume in one tool call (LVM: lvremove with a tag selection).
type InlineRemover interface {
	// DeleteInline removes volume id only if it is carve's inline volume of
	// CSI name published at target, and reports whether it removed it. false
	// with a nil error means nothing matched (gone, another target, not an
	// inline volume, not carve's): the caller reads the volume to tell which.
	DeleteInline(ctx context.Context, id, name, target string) (bool, error)
}

// FixedSize is implemented by backends whose volumes can never grow (PMEM
// namespaces); their Expand fails with ErrNotExpandable beyond the current size.
type FixedSize interface {
	FixedSize() bool
}

// CanExpand reports whether volumes of b can grow: true unless b says otherwise.
func CanExpand(b Backend) bool {
	f, ok := b.(FixedSize)
	return !ok || !f.FixedSize()
}

// AlignUp rounds size up to a multiple of align. For a positive size it
// does not wrap where the result fits (size+align-1 would); CanAlignUp says
// whether it fits.
func AlignUp(size, align int64) int64 {
	if align <= 1 {
		return size
	}
	if size <= 0 {
		return (size + align - 1) / align * align
	}
	return (size-1)/align*align + align
}

// CanAlignUp reports whether AlignUp(size, align) fits in an int64.
func CanAlignUp(size, align int64) bool {
	return align <= 1 || size <= 0 || (size-1)/align < math.MaxInt64/align
}

// AlignDown rounds size down to a multiple of align.
func AlignDown(size, align int64) int64 {
	if align <= 1 {
		return size
	}
	return size / align * align
}
