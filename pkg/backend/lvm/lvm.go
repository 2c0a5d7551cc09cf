// Package lvm is carve's lvm2 backend: one volume group is one pool, one
// logical volume is one volume. It runs the lvm binary through exec.Runner
// (never a shell), reads only JSON reports (`--reportformat json --units b
// --nosuffix` with explicit columns), and keeps everything a restart needs in
// LV tags:
//
//	carve.owner=<driver name>          every carve LV; nothing else is touched
//	carve.name=<base64url(CSI name)>   the CSI volume name (RawURLEncoding)
//	carve.ephemeral=true               CSI inline ephemeral volumes only
//	carve.target=<base64url(path)>     inline volumes: the pod's target path
//	carve.source=<id>                  what a snapshot or a copy was made from
//	carve.zeroing=pending              Create's zeroing has not finished
//	carve.fsuuid=<uuid>                inline volumes on zeroing pools: zeroed
//	                                   once a filesystem of this UUID is on it
//	carve.restoring=pending            a copy (lvm-thin) not finished yet
//
// A value whose tag would exceed LVM's documented 1024-character tag limit is
// split into carve.name.0=..., carve.name.1=... (likewise carve.target.N=).
// Base64url keeps values inside LVM's tag charset [A-Za-z0-9_+.-/=!:&#].
package lvm

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/report"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/pkg/superblock"
)

// Type is what Backend.Type returns.
const Type = "lvm"

// Tag keys. A tag is "<key>=<value>".
const (
	TagOwner     = "carve.owner"
	TagName      = "carve.name"
	TagEphemeral = "carve.ephemeral"
	TagTarget    = "carve.target"
	// TagSource=<id> records what an LV was made from: on a snapshot, the
	// volume it was taken of; on a volume created from a snapshot or a
	// volume (lvm-thin), that source's id. Ids are [a-z0-9-], tag-safe.
	TagSource = "carve.source"
	// TagZeroing marks an LV whose zeroing has not finished (see
	// EnableZeroing): Create removes it only after the LV reads as zeros.
	TagZeroing = "carve.zeroing=pending"
	// TagFormatUUID=<uuid> records CreateRequest.FormatUUID in place of
	// TagZeroing: the LV's zeroing finished once its device holds a complete
	// filesystem with this UUID (the caller's mkfs runs only after the
	// zeroing), and the tag stays until the LV is removed (issue 13: no
	// second lvm metadata commit per inline publish). A build that predates
	// it ignores the tag, so it never zeroes such an LV again (a rollback
	// cannot wipe a pod's inline volume).
	TagFormatUUID = "carve.fsuuid"

	// MaxTagLen is LVM's documented limit on one tag (lvm(8), "Tags").
	MaxTagLen = 1024
)

// Report options shared by every lvs/vgs call.
var reportArgs = []string{"--reportformat", "json", "--units", "b", "--nosuffix"}

const (
	lvColumns = "lv_name,vg_name,lv_size,lv_tags,lv_path,lv_health_status"
	vgColumns = "vg_name,vg_size,vg_free,vg_extent_size,vg_free_count"
	// capColumns adds what tells a degraded VG; New keeps vgColumns (the
	// lvm-on-PMEM captures, recorded in the VM, hold that command).
	capColumns = vgColumns + ",vg_missing_pv_count"
)

// cleanupTimeout bounds the removal of a half-made LV after a failed lvcreate;
// it runs on a context detached from the (possibly cancelled) caller's.
const cleanupTimeout = 30 * time.Second

// Owner tags go into selections (`lv_tags={carve.owner=X}`), so they are held
// to the CSI driver-name charset, which has no selection operators.
var ownerPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// Backend is one LVM volume group used as a carve pool. It is safe for
// concurrent use; lvm serializes commands on the VG with its own lock.
// Callers serialize operations on one volume id (see Create's cleanup).
type Backend struct {
	runner      exec.Runner
	pool        string
	vg          string
	owner       string // the full owner tag, "carve.owner=<driver>"
	extentBytes int64

	// devExists reports whether a device node exists; tests replace it.
	devExists func(string) bool
	// zero: Create zeroes each new LV before returning it (EnableZeroing).
	zero bool
	// readUUIDs reads the filesystem UUIDs on a device (superblock.UUIDs).
	readUUIDs func(device string) ([]string, error)
	// thinPool, when set (Thin), limits Get and List to the thin LVs of
	// that thin pool.
	thinPool string
}

// EnableZeroing makes Create zero every new LV before returning it, so that
// no volume shows what an earlier LV on the same extents held (lvcreate -W y
// wipes only the signatures it knows). Create then runs `blkdiscard -z
// /dev/<vg>/<lv>` (BLKZEROOUT: the device zeroes or unmaps the range where it
// can, the kernel writes zeroes where it cannot) between an lvcreate that
// tags the LV TagZeroing and an lvchange that removes the tag; a create
// killed in between leaves the tag, and the retry (lvcreate: exists) zeroes
// again before the volume is handed out. With CreateRequest.FormatUUID the
// lvcreate tags the LV TagFormatUUID instead and there is no lvchange: the
// caller's filesystem of that UUID tells a finished zeroing (finishZeroing).
// It needs the LV active with its device node (lvm's default; not with
// activation = 0).
func (b *Backend) EnableZeroing() { b.zero = true }

var _ backend.Backend = (*Backend)(nil)

// New returns the backend for volume group vg, used as pool `pool` and
// claiming LVs tagged carve.owner=<ownerTag> (ownerTag is the driver name,
// e.g. carve.csi.dev). It checks that the VG exists with one `lvm vgs` and
// caches its extent size. A missing or unreadable VG gives an error wrapping
// backend.ErrUnavailable.
func New(ctx context.Context, runner exec.Runner, pool, vg, ownerTag string) (*Backend, error) {
	if runner == nil {
		return nil, errors.New("lvm: nil runner")
	}
	if !names.ValidVGName(vg) {
		return nil, fmt.Errorf("lvm: invalid volume group name %q", vg)
	}
	if !ownerPattern.MatchString(ownerTag) {
		return nil, fmt.Errorf("lvm: invalid owner tag %q: want a driver name ([A-Za-z0-9._-], at most 63 characters)", ownerTag)
	}
	if pool == "" {
		pool = vg
	}
	b := &Backend{
		runner:    runner,
		pool:      pool,
		vg:        vg,
		owner:     TagOwner + "=" + ownerTag,
		devExists: fileExists,
		readUUIDs: superblock.UUIDs,
	}
	row, err := b.vgs(ctx, vgColumns)
	if err != nil {
		return nil, err
	}
	ext, err := row.ExtentSize.int()
	if err != nil || ext <= 0 {
		return nil, fmt.Errorf("lvm: volume group %q: bad extent size %q: %w", vg, row.ExtentSize, backend.ErrUnavailable)
	}
	b.extentBytes = ext
	return b, nil
}

// Type implements backend.Backend.
func (b *Backend) Type() string { return Type }

// VG returns the volume group name.
func (b *Backend) VG() string { return b.vg }

// AlignBytes implements backend.Backend: the VG's extent size, read once by
// New (it never changes for a VG), so callers align sizes without a command.
func (b *Backend) AlignBytes() int64 { return b.extentBytes }

// OwnerTag returns the full owner tag, "carve.owner=<driver>".
func (b *Backend) OwnerTag() string { return b.owner }

// Create implements backend.Backend with a single lvcreate on success.
func (b *Backend) Create(ctx context.Context, req backend.CreateRequest) (*backend.Volume, error) {
	if err := checkID(req.ID); err != nil {
		return nil, err
	}
	if req.SizeBytes <= 0 {
		return nil, fmt.Errorf("lvm: create %s: size must be positive, got %d", req.ID, req.SizeBytes)
	}
	align, err := b.stripeAlign(req)
	if err != nil {
		return nil, err
	}
	size := backend.AlignUp(req.SizeBytes, align)
	tags := Tags(b.owner, req.Name, req.Ephemeral, req.TargetPath)
	formatUUID := ""
	switch {
	case b.zero && req.FormatUUID != "":
		if !uuidPattern.MatchString(req.FormatUUID) {
			return nil, fmt.Errorf("lvm: create %s: format UUID %q is not a canonical lowercase UUID", req.ID, req.FormatUUID)
		}
		formatUUID = req.FormatUUID
		tags = append(tags, TagFormatUUID+"="+formatUUID)
	case b.zero:
		tags = append(tags, TagZeroing)
	}
	args := []string{"lvcreate", "-n", req.ID, "-L", strconv.FormatInt(size, 10) + "b", "-W", "y", "-y"}
	if req.Stripes > 1 {
		args = append(args, "-i", strconv.Itoa(req.Stripes))
		if req.StripeSizeBytes > 0 {
			args = append(args, "-I", strconv.FormatInt(req.StripeSizeBytes/1024, 10)+"k")
		}
	}
	for _, t := range tags {
		args = append(args, "--addtag", t)
	}
	args = append(args, b.vg)
	if _, err := b.runner.Run(ctx, "lvm", args...); err != nil {
		err = b.mapError("create", req.ID, err)
		if errors.Is(err, backend.ErrExists) && b.zero {
			// A retry: finish an earlier create's zeroing before the
			// caller looks at the LV and hands it out.
			if zerr := b.finishZeroing(ctx, req); zerr != nil {
				// Not ErrExists: callers take that for "found again" and
				// hand the volume out, still unzeroed and still tagged (a
				// later retry would zero what its user wrote).
				return nil, fmt.Errorf("lvm: create %s/%s: it exists, and finishing its zeroing failed: %w", b.vg, req.ID, zerr)
			}
		}
		if errors.Is(err, backend.ErrExists) || errors.Is(err, backend.ErrNoSpace) || errors.Is(err, backend.ErrDegraded) ||
			errors.Is(err, backend.ErrCannotStripe) {
			// lvm refused before allocating anything: nothing of ours to undo,
			// and an existing LV is never ours to remove here.
			return nil, err
		}
		// lvcreate may have committed the LV before failing (killed by the
		// context, crashed, metadata write error): remove it if it is there
		// and carries our tags, so no half-made volume is left.
		if cerr := b.removeHalfMade(ctx, req.ID, tags); cerr != nil {
			return nil, errors.Join(err, cerr)
		}
		return nil, err
	}
	vol := &backend.Volume{
		ID:         req.ID,
		Name:       req.Name,
		Pool:       b.pool,
		SizeBytes:  size,
		DevicePath: b.devicePath(req.ID),
		Ephemeral:  req.Ephemeral,
		TargetPath: req.TargetPath,
	}
	if b.zero {
		// Not handed out until the tag is gone (or, with a format UUID,
		// until the caller's filesystem is on it); a retry finds the tag and
		// zeroes again, a delete removes it.
		if err := b.zeroDevice(ctx, req.ID); err != nil {
			return nil, err
		}
		if formatUUID != "" {
			vol.FormatUUID = formatUUID
			return vol, nil
		}
		if err := b.dropZeroingTag(ctx, req.ID); err != nil {
			return nil, err
		}
	}
	return vol, nil
}

// uuidPattern is a canonical lowercase UUID (RFC 9562 text form), what
// mkfs.ext4 -U and mkfs.xfs -m uuid= take and blkid prints; tag-safe.
var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// MinStripeBytes is the smallest stripe size lvm takes (lvcreate(8): 4 KiB
// up to the extent size, a power of two).
const MinStripeBytes = 4 << 10

// stripeAlign checks req's striping and returns its size granularity: one
// extent per stripe (lvcreate rounds up to that, "Rounding size ... up to
// stripe boundary size"), so the size carve reports is the LV's.
func (b *Backend) stripeAlign(req backend.CreateRequest) (int64, error) {
	switch {
	case req.Stripes == backend.StripesAll || req.Stripes < 0:
		return 0, fmt.Errorf("lvm: create %s: stripes %d: the caller resolves the count (StripedCapacity): %w", req.ID, req.Stripes, backend.ErrCannotStripe)
	case req.Stripes <= 1 && req.StripeSizeBytes != 0:
		return 0, fmt.Errorf("lvm: create %s: a stripe size without stripes: %w", req.ID, backend.ErrCannotStripe)
	case req.Stripes <= 1:
		return b.extentBytes, nil
	}
	if s := req.StripeSizeBytes; s != 0 && (s < MinStripeBytes || s > b.extentBytes || s&(s-1) != 0) {
		return 0, fmt.Errorf("lvm: create %s: stripe size %d bytes: want a power of two from %d to the extent size %d: %w",
			req.ID, s, MinStripeBytes, b.extentBytes, backend.ErrCannotStripe)
	}
	if int64(req.Stripes) > math.MaxInt64/b.extentBytes {
		return 0, fmt.Errorf("lvm: create %s: %d stripes: %w", req.ID, req.Stripes, backend.ErrCannotStripe)
	}
	return b.extentBytes * int64(req.Stripes), nil
}

// StripedCapacity implements backend.Striper from the volume group's
// physical volumes (one pvs), by backend.StripedMax.
func (b *Backend) StripedCapacity(ctx context.Context, stripes int) (backend.Capacity, int, error) {
	pvs, err := b.PVs(ctx)
	if err != nil {
		return backend.Capacity{}, 0, err
	}
	var c backend.Capacity
	var free []int64 // free bytes of the present PVs
	missing := 0
	for _, pv := range pvs {
		c.TotalBytes += pv.SizeBytes
		if pv.Missing {
			missing++
			continue
		}
		c.FreeBytes += pv.FreeBytes
		free = append(free, pv.FreeBytes)
	}
	n := stripes
	if n == backend.StripesAll {
		n = len(free)
	}
	if n < 1 {
		return backend.Capacity{}, 0, fmt.Errorf("lvm: volume group %q: %d stripes: %w", b.vg, stripes, backend.ErrCannotStripe)
	}
	c.AlignBytes = b.extentBytes * int64(n)
	if missing > 0 {
		return backend.Capacity{TotalBytes: c.TotalBytes, AlignBytes: c.AlignBytes}, n,
			fmt.Errorf("lvm: volume group %q is missing %d physical volume(s), so lvm refuses to create or extend LVs in it (reattach the disk, or vgreduce --removemissing): %w",
				b.vg, missing, backend.ErrDegraded)
	}
	c.MaxVolumeBytes, n, err = backend.StripedMax(free, b.extentBytes, n)
	if err != nil {
		return backend.Capacity{}, n, fmt.Errorf("lvm: volume group %q: %w", b.vg, err)
	}
	return c, n, nil
}

// Devices implements backend.DeviceLister: the volume group's physical
// volumes (PVs), missing ones included. NodeStorage lists them, and the
// cluster controller computes a striped class's maximum from them.
func (b *Backend) Devices(ctx context.Context) ([]backend.Device, error) {
	return b.PVs(ctx)
}

// zeroLV zeroes LV id and then drops its TagZeroing.
func (b *Backend) zeroLV(ctx context.Context, id string) error {
	if err := b.zeroDevice(ctx, id); err != nil {
		return err
	}
	return b.dropZeroingTag(ctx, id)
}

// zeroDevice zeroes LV id (blkdiscard -z: BLKZEROOUT on its device).
func (b *Backend) zeroDevice(ctx context.Context, id string) error {
	dev := b.devicePath(id)
	if _, err := b.runner.Run(ctx, "blkdiscard", "-z", dev); err != nil {
		return fmt.Errorf("lvm: create %s/%s: zeroing %s: %w", b.vg, id, dev, err)
	}
	return nil
}

// dropZeroingTag removes TagZeroing from LV id once it reads as zeros. It
// changes only the VG's metadata: lvchange --deltag commits the metadata
// without suspending or reloading the LV's device-mapper table (lvm2's
// tools/lvchange.c: a tag change asks for MR_COMMIT, "No need to suspend LV
// for this change").
func (b *Backend) dropZeroingTag(ctx context.Context, id string) error {
	if _, err := b.runner.Run(ctx, "lvm", "lvchange", "--deltag", TagZeroing, b.vg+"/"+id); err != nil {
		return b.mapError("create", id, err)
	}
	return nil
}

// finishZeroing zeroes the LV of req (a retried Create: lvcreate found it)
// if it is carve's volume of req's CSI name and target and its zeroing may
// not have finished (an earlier create died first): tagged TagZeroing
// (zeroed, then the tag dropped), or tagged TagFormatUUID without a
// complete filesystem of that UUID on its device (zeroed, the tag kept). An
// LV of another target is left alone: it may be in use there.
func (b *Backend) finishZeroing(ctx context.Context, req backend.CreateRequest) error {
	id := req.ID
	args := append([]string{"lvs", "-o", lvColumns}, reportArgs...)
	out, err := b.runner.Run(ctx, "lvm", append(args, "-S", "lv_name="+id+" && lv_tags={"+b.owner+"}", b.vg)...)
	if err != nil {
		return b.mapError("create", id, err)
	}
	rows, err := parseLVs(out)
	if err != nil {
		return fmt.Errorf("lvm: create %s/%s: %w", b.vg, id, err)
	}
	for _, r := range rows {
		info, _ := ParseTags(r.Tags)
		if r.Name != id || r.VG != b.vg || info.Name != req.Name || info.TargetPath != req.TargetPath {
			continue
		}
		// TagFormatUUID first: an LV that also carries TagZeroing (both were
		// set by one development build) may be mounted by a pod.
		switch {
		case info.FormatUUID == "" && hasTag(r.Tags, TagZeroing):
			klog.InfoS("Zeroing a volume an earlier create left unzeroed", "vg", b.vg, "lv", id)
			return b.zeroLV(ctx, id)
		case info.FormatUUID != "":
			done, err := b.formatted(ctx, id, info.FormatUUID)
			if err != nil || done {
				return err
			}
			klog.InfoS("Zeroing a volume an earlier create left unformatted", "vg", b.vg, "lv", id, "formatUUID", info.FormatUUID)
			return b.zeroDevice(ctx, id)
		}
	}
	return nil
}

// formatted reports whether LV id's device holds a complete filesystem with
// UUID uuid, read from its superblock (superblock.UUIDs; it activates the LV
// first if its device node is missing, as when an lvcreate died before it
// activated the LV). A device it cannot read is an error, never "not
// formatted": zeroing a volume whose filesystem a pod uses would destroy its
// data. (blkid exits 2 both when it finds nothing and when it cannot open or
// read the device.)
func (b *Backend) formatted(ctx context.Context, id, uuid string) (bool, error) {
	dev := b.devicePath(id)
	found, err := b.readUUIDs(dev)
	if errors.Is(err, fs.ErrNotExist) {
		if _, err := b.Activate(ctx, id); err != nil {
			return false, err
		}
		found, err = b.readUUIDs(dev)
	}
	if err != nil {
		return false, fmt.Errorf("lvm: create %s/%s: %w", b.vg, id, err)
	}
	return slices.Contains(found, uuid), nil
}

// SetSuperblockReader replaces how a retried Create reads the filesystem
// UUIDs on an LV's device (superblock.UUIDs): for tests whose LVs have no
// device.
func (b *Backend) SetSuperblockReader(f func(device string) ([]string, error)) { b.readUUIDs = f }

func (b *Backend) removeHalfMade(ctx context.Context, id string, tags []string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	// Owner and the first name tag: an LV with this id and these tags can only
	// come from a create for the same CSI name.
	sel := "lv_name=" + id + " && lv_tags={" + tags[0]
	if len(tags) > 1 && strings.HasPrefix(tags[1], TagName) {
		sel += "," + tags[1]
	}
	sel += "}" + b.inThinPool()
	out, err := b.runner.Run(ctx, "lvm", "lvremove", "-f", "-S", sel, b.vg)
	if err != nil {
		return fmt.Errorf("lvm: create %s failed; removing what it may have left: %w", id, err)
	}
	if removed(out, id) {
		klog.InfoS("Removed half-made logical volume after failed lvcreate", "vg", b.vg, "lv", id)
	}
	return nil
}

// Delete implements backend.Backend. On the common path it is a single
// `lvremove -f -S 'lv_name=<id> && lv_tags={carve.owner=<driver>}' <vg>`: the
// selection makes lvm itself refuse LVs that are not ours. When nothing
// matched (lvremove exits 0 and prints nothing), a Get tells ErrNotFound from
// ErrNotOwned.
func (b *Backend) Delete(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	sel := "lv_name=" + id + " && lv_tags={" + b.owner + "}" + b.inThinPool()
	out, err := b.runner.Run(ctx, "lvm", "lvremove", "-f", "-S", sel, b.vg)
	if err != nil {
		return b.mapError("delete", id, err)
	}
	if removed(out, id) {
		return nil
	}
	_, err = b.Get(ctx, id)
	switch {
	case err == nil:
		return fmt.Errorf("lvm: delete %s/%s: lvremove selected nothing, yet the LV exists with our tags", b.vg, id)
	case errors.Is(err, backend.ErrNotOwned):
		return fmt.Errorf("lvm: delete %s/%s: refusing: %w", b.vg, id, err)
	default:
		return err
	}
}

// DeleteInline implements backend.InlineRemover with one
// `lvremove -f -S 'lv_name=<id> && lv_tags={<every tag Create gave an inline
// volume of name at target>}' <vg>`: lvm removes the LV only if it carries
// carve's owner, name, ephemeral and target tags, so the ownership and target
// checks ride the removal instead of an lvs before it (about 350 ms under
// emulation, issue 13). {} in a selection is a subset match (lvmreport(7)).
func (b *Backend) DeleteInline(ctx context.Context, id, name, target string) (bool, error) {
	if err := checkID(id); err != nil {
		return false, err
	}
	sel := "lv_name=" + id + " && lv_tags={" + strings.Join(Tags(b.owner, name, true, target), ",") + "}" + b.inThinPool()
	out, err := b.runner.Run(ctx, "lvm", "lvremove", "-f", "-S", sel, b.vg)
	if err != nil {
		return false, b.mapError("delete", id, err)
	}
	return removed(out, id), nil
}

// removed reports whether lvremove's stdout says it removed the LV: lvm
// prints `Logical volume "<id>" successfully removed.` for each LV it removes
// and nothing when the selection matched nothing (exit code 0 either way; the
// JSON command log, `--reportformat json --config log/report_command_log=1`,
// would be the structured alternative but makes lvremove 2.03.16 segfault).
// Only the quoted id is looked for; should the wording ever lose it, Delete
// falls back to Get and reports ErrNotFound for an LV it did remove, which
// idempotent callers treat as success.
func removed(stdout []byte, id string) bool {
	return strings.Contains(string(stdout), `"`+id+`"`)
}

// Expand implements backend.Backend: Get (ownership and current size), then
// lvextend when the LV is smaller than sizeBytes.
func (b *Backend) Expand(ctx context.Context, id string, sizeBytes int64) (*backend.Volume, error) {
	vol, err := b.Get(ctx, id)
	if err != nil {
		if errors.Is(err, backend.ErrNotOwned) {
			return nil, fmt.Errorf("lvm: expand %s/%s: refusing: %w", b.vg, id, err)
		}
		return nil, err
	}
	size := backend.AlignUp(sizeBytes, b.extentBytes)
	if vol.SizeBytes >= size {
		return vol, nil
	}
	if _, err := b.runner.Run(ctx, "lvm", "lvextend", "-L", strconv.FormatInt(size, 10)+"b", b.vg+"/"+id); err != nil {
		return nil, b.mapError("expand", id, err)
	}
	vol.SizeBytes = size
	return vol, nil
}

// Get implements backend.Backend.
func (b *Backend) Get(ctx context.Context, id string) (*backend.Volume, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	args := append([]string{"lvs", "-o", b.lvColumns()}, reportArgs...)
	out, err := b.runner.Run(ctx, "lvm", append(args, b.vg+"/"+id)...)
	if err != nil {
		return nil, b.mapError("get", id, err)
	}
	rows, err := parseLVs(out)
	if err != nil {
		return nil, fmt.Errorf("lvm: get %s/%s: %w", b.vg, id, err)
	}
	for _, r := range rows {
		if r.Name != id || r.VG != b.vg { // as List: only this VG's LV (found by FuzzLVMReport)
			continue
		}
		if b.thinPool != "" && r.PoolLV != b.thinPool {
			return nil, fmt.Errorf("lvm: logical volume %s/%s is not a thin volume of thin pool %s: %w", b.vg, id, b.thinPool, backend.ErrNotFound)
		}
		if !hasTag(r.Tags, b.owner) {
			return nil, fmt.Errorf("lvm: logical volume %s/%s (tags %q) lacks tag %s: %w", b.vg, id, r.Tags, b.owner, backend.ErrNotOwned)
		}
		vol, err := b.volume(r)
		if err != nil {
			return nil, fmt.Errorf("lvm: get %s/%s: %w", b.vg, id, err)
		}
		return vol, nil
	}
	return nil, fmt.Errorf("lvm: logical volume %s/%s: %w", b.vg, id, backend.ErrNotFound)
}

// List implements backend.Backend with one lvs over the VG, selecting our
// owner tag (and filtering again here).
func (b *Backend) List(ctx context.Context) ([]backend.Volume, error) {
	args := append([]string{"lvs", "-o", b.lvColumns()}, reportArgs...)
	sel := "lv_tags={" + b.owner + "}" + b.inThinPool()
	args = append(args, "-S", sel, b.vg)
	out, err := b.runner.Run(ctx, "lvm", args...)
	if err != nil {
		return nil, b.mapError("list", "", err)
	}
	rows, err := parseLVs(out)
	if err != nil {
		return nil, fmt.Errorf("lvm: list %s: %w", b.vg, err)
	}
	vols := []backend.Volume{}
	for _, r := range rows {
		if !hasTag(r.Tags, b.owner) || r.VG != b.vg || r.PoolLV != b.thinPool || !names.IsVolumeID(r.Name) {
			continue // not a volume of this pool (a snapshot is owner-tagged too)
		}
		vol, err := b.volume(r)
		if err != nil {
			// Keep listing: one damaged tag must not hide the other volumes
			// (or this one: it still counts as ours and can be deleted).
			klog.ErrorS(err, "Listing carve logical volume with undecodable tags", "vg", b.vg, "lv", r.Name)
			if vol == nil {
				continue
			}
		}
		vols = append(vols, *vol)
	}
	return vols, nil
}

// Capacity implements backend.Backend with one vgs. Space used by LVs that
// are not carve's is simply not free. A VG with a missing PV, where lvm
// refuses every lvcreate and lvextend ("Cannot change VG ... while PVs are
// missing"), has no free space to offer: Capacity then returns its total size,
// zero free and maximum volume bytes, and an error wrapping
// backend.ErrDegraded that names the cause.
func (b *Backend) Capacity(ctx context.Context) (backend.Capacity, error) {
	row, err := b.vgs(ctx, capColumns)
	if err != nil {
		return backend.Capacity{}, err
	}
	total, err1 := row.Size.int()
	free, err2 := row.Free.int()
	ext, err3 := row.ExtentSize.int()
	count, err4 := row.FreeCount.int()
	missing, err5 := row.MissingPVs.int()
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		return backend.Capacity{}, fmt.Errorf("lvm: vgs %s: %w", b.vg, err)
	}
	if ext <= 0 {
		return backend.Capacity{}, fmt.Errorf("lvm: vgs %s: bad extent size %d", b.vg, ext)
	}
	if missing > 0 {
		return backend.Capacity{TotalBytes: total, AlignBytes: ext},
			fmt.Errorf("lvm: volume group %q is missing %d physical volume(s), so lvm refuses to create or extend LVs in it (reattach the disk, or vgreduce --removemissing): %w",
				b.vg, missing, backend.ErrDegraded)
	}
	maxVol := backend.AlignDown(free, ext)
	if count < maxVol/ext { // compared as extents: count*ext could wrap
		maxVol = count * ext
	}
	return backend.Capacity{TotalBytes: total, FreeBytes: free, MaxVolumeBytes: maxVol, AlignBytes: ext}, nil
}

// Activate implements backend.Backend: when /dev/<vg>/<id> is missing it
// activates the LV (owned LVs only) with `lvchange -ay -K`. When the node
// exists it returns at once without a command (ids are carve-shaped and
// hash-suffixed, so an existing node with that name is ours in practice). An
// LV that lvm activates without a node appearing (activation = 0, no
// device-mapper) is an error wrapping backend.ErrUnavailable.
func (b *Backend) Activate(ctx context.Context, id string) (string, error) {
	if err := checkID(id); err != nil {
		return "", err
	}
	dev := b.devicePath(id)
	if b.devExists(dev) {
		return dev, nil
	}
	if _, err := b.Get(ctx, id); err != nil {
		if errors.Is(err, backend.ErrNotOwned) {
			return "", fmt.Errorf("lvm: activate %s/%s: refusing: %w", b.vg, id, err)
		}
		return "", err
	}
	if _, err := b.runner.Run(ctx, "lvm", "lvchange", "-ay", "-K", b.vg+"/"+id); err != nil {
		return "", b.mapError("activate", id, err)
	}
	if !b.devExists(dev) {
		return "", fmt.Errorf("lvm: activate %s/%s: lvchange -ay succeeded but %s does not exist (activation disabled or no device-mapper?): %w",
			b.vg, id, dev, backend.ErrUnavailable)
	}
	return dev, nil
}

// inThinPool is the selection term that keeps a thin pool's backend to its
// thin LVs (" && pool_lv=<pool>"), "" for a thick pool.
func (b *Backend) inThinPool() string {
	if b.thinPool == "" {
		return ""
	}
	return " && pool_lv=" + b.thinPool
}

// lvColumns are the columns of Get's and List's lvs: lvColumns, and pool_lv
// for a thin pool's backend.
func (b *Backend) lvColumns() string {
	if b.thinPool != "" {
		return lvColumns + ",pool_lv"
	}
	return lvColumns
}

func (b *Backend) devicePath(id string) string { return "/dev/" + b.vg + "/" + id }

func (b *Backend) vgs(ctx context.Context, columns string) (*vgRow, error) {
	args := append([]string{"vgs", "-o", columns}, reportArgs...)
	out, err := b.runner.Run(ctx, "lvm", append(args, b.vg)...)
	if err != nil {
		return nil, fmt.Errorf("lvm: volume group %q: %w", b.vg, backend.ReadFailed(ctx, err))
	}
	var rep struct {
		Report []struct {
			VG []vgRow `json:"vg"`
		} `json:"report"`
	}
	if err := DecodeReport(out, &rep); err != nil {
		return nil, fmt.Errorf("lvm: volume group %q: parsing vgs report: %w: %w", b.vg, backend.ErrUnavailable, err)
	}
	for _, r := range rep.Report {
		for i := range r.VG {
			if r.VG[i].Name == b.vg {
				return &r.VG[i], nil
			}
		}
	}
	return nil, fmt.Errorf("lvm: volume group %q not in vgs report: %w", b.vg, backend.ErrUnavailable)
}

// DecodeReport unmarshals an lvm `--reportformat json` report into v,
// ignoring the notices lvm prints on stdout in and around it (see package
// report); they are logged. Output without a report is an error.
func DecodeReport(out []byte, v any) error {
	noise, ok, err := report.Decode(out, v)
	if len(noise) > 0 {
		klog.InfoS("lvm printed text in its JSON report; ignored it", "lines", noise)
	}
	if err == nil && !ok {
		err = fmt.Errorf("no JSON report in lvm output %q", out)
	}
	return err
}

func checkID(id string) error {
	if !names.IsVolumeID(id) {
		return fmt.Errorf("lvm: invalid volume id %q: not a carve volume id (carve-<name>-<16 hex>, [a-z0-9-], at most %d characters)", id, names.MaxLen)
	}
	return nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Tags returns the LV tags that record a volume: the owner tag first, then
// name, ephemeral and target (each omitted when empty/false).
func Tags(ownerTag, csiName string, ephemeral bool, targetPath string) []string {
	tags := []string{ownerTag}
	tags = append(tags, encodeTag(TagName, csiName)...)
	if ephemeral {
		tags = append(tags, TagEphemeral+"=true")
	}
	tags = append(tags, encodeTag(TagTarget, targetPath)...)
	return tags
}

// encodeTag encodes value as key=<base64url>, split into key.N=<chunk> tags
// when one tag would exceed MaxTagLen.
func encodeTag(key, value string) []string {
	if value == "" {
		return nil
	}
	enc := base64.RawURLEncoding.EncodeToString([]byte(value))
	if len(key)+1+len(enc) <= MaxTagLen {
		return []string{key + "=" + enc}
	}
	var tags []string
	for i := 0; enc != ""; i++ {
		k := key + "." + strconv.Itoa(i) + "="
		n := min(MaxTagLen-len(k), len(enc))
		tags = append(tags, k+enc[:n])
		enc = enc[n:]
	}
	return tags
}

// TagInfo is what carve's tags on one LV say.
type TagInfo struct {
	Owner      string // driver name from carve.owner=, "" when absent
	Name       string
	Ephemeral  bool
	TargetPath string
	Source     string // carve.source=, "" when absent
	FormatUUID string // carve.fsuuid=, "" when absent
}

// ParseTags decodes a comma-separated lv_tags field (commas cannot occur in
// tags). Unknown tags are ignored. On a malformed value it returns what it
// could decode and an error.
func ParseTags(lvTags string) (TagInfo, error) {
	var info TagInfo
	chunks := map[string]map[int]string{}
	whole := map[string]string{}
	for _, t := range strings.Split(lvTags, ",") {
		k, v, ok := strings.Cut(t, "=")
		if !ok {
			continue
		}
		switch k {
		case TagOwner:
			info.Owner = v
		case TagEphemeral:
			info.Ephemeral = v == "true"
		case TagSource:
			info.Source = v
		case TagFormatUUID:
			info.FormatUUID = v
		case TagName, TagTarget:
			whole[k] = v
		default:
			for _, key := range []string{TagName, TagTarget} {
				if n, ok := strings.CutPrefix(k, key+"."); ok {
					i, err := strconv.Atoi(n)
					if err != nil || i < 0 {
						continue
					}
					if chunks[key] == nil {
						chunks[key] = map[int]string{}
					}
					chunks[key][i] = v
				}
			}
		}
	}
	var errs []error
	decode := func(key string) string {
		enc, ok := whole[key]
		if !ok && len(chunks[key]) > 0 {
			idx := make([]int, 0, len(chunks[key]))
			for i := range chunks[key] {
				idx = append(idx, i)
			}
			sort.Ints(idx)
			var sb strings.Builder
			for want, i := range idx {
				if i != want {
					errs = append(errs, fmt.Errorf("tag %s.%d missing", key, want))
					return ""
				}
				sb.WriteString(chunks[key][i])
			}
			enc = sb.String()
		}
		raw, err := base64.RawURLEncoding.DecodeString(enc)
		if err != nil {
			errs = append(errs, fmt.Errorf("tag %s: %w", key, err))
			return ""
		}
		return string(raw)
	}
	info.Name = decode(TagName)
	info.TargetPath = decode(TagTarget)
	return info, errors.Join(errs...)
}

// hasTag reports whether the comma-separated lv_tags contains tag exactly.
func hasTag(lvTags, tag string) bool {
	for _, t := range strings.Split(lvTags, ",") {
		if t == tag {
			return true
		}
	}
	return false
}

// volume builds a Volume from an lvs row; on undecodable tags it returns the
// Volume with the fields it could decode and an error.
func (b *Backend) volume(r lvRow) (*backend.Volume, error) {
	size, err := r.Size.int()
	if err != nil {
		return nil, fmt.Errorf("lv_size of %s: %w", r.Name, err)
	}
	dev := r.Path
	if dev == "" || !path.IsAbs(dev) || path.Clean(dev) != dev {
		dev = path.Join("/dev", r.VG, r.Name)
	}
	info, err := ParseTags(r.Tags)
	vol := &backend.Volume{
		ID:         r.Name,
		Name:       info.Name,
		Pool:       b.pool,
		SizeBytes:  size,
		DevicePath: dev,
		Ephemeral:  info.Ephemeral,
		TargetPath: info.TargetPath,
		Source:     info.Source,
		Incomplete: hasTag(r.Tags, TagRestoring),
		Unzeroed:   hasTag(r.Tags, TagZeroing) && info.FormatUUID == "",
		FormatUUID: info.FormatUUID,
	}
	if r.Health != "" {
		vol.Condition = fmt.Sprintf("lvm reports logical volume %s/%s as %q", r.VG, r.Name, r.Health)
		if r.Health == "partial" {
			vol.Condition += ": a physical volume holding part of it is missing"
		}
	}
	if err != nil {
		return vol, fmt.Errorf("tags of %s/%s: %w", r.VG, r.Name, err)
	}
	return vol, nil
}

type lvRow struct {
	Name string `json:"lv_name"`
	VG   string `json:"vg_name"`
	Size num    `json:"lv_size"`
	Tags string `json:"lv_tags"`
	Path string `json:"lv_path"`
	// Health is lv_health_status: "" when healthy, "partial" when a PV
	// holding part of the LV is missing (health-missing-pv.txt), and raid
	// states ("refresh needed", "mismatches exist").
	Health string `json:"lv_health_status"`
	// PoolLV is the thin pool of a thin LV (only in thin pools' reports).
	PoolLV string `json:"pool_lv"`
}

type vgRow struct {
	Name       string `json:"vg_name"`
	Size       num    `json:"vg_size"`
	Free       num    `json:"vg_free"`
	ExtentSize num    `json:"vg_extent_size"`
	FreeCount  num    `json:"vg_free_count"`
	MissingPVs num    `json:"vg_missing_pv_count"` // only with capColumns
}

func parseLVs(out []byte) ([]lvRow, error) { return parseLVRows[lvRow](out) }

// parseLVRows reads the rows of an lvs report into T, whatever columns
// T has (lvRow, thinRow, snapRow).
func parseLVRows[T any](out []byte) ([]T, error) {
	var rep struct {
		Report []struct {
			LV []T `json:"lv"`
		} `json:"report"`
	}
	if err := DecodeReport(out, &rep); err != nil {
		return nil, fmt.Errorf("parsing lvs report: %w", err)
	}
	var rows []T
	for _, r := range rep.Report {
		rows = append(rows, r.LV...)
	}
	return rows, nil
}

// num is a number in an lvm JSON report: a string ("1073741824") with
// --reportformat json, a bare number with json_std. Both are accepted.
type num string

func (n *num) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*n = num(s)
		return nil
	}
	*n = num(b)
	return nil
}

// int parses the number; the sizes and counts carve reads are never negative.
func (n num) int() (int64, error) {
	v, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("lvm report number %q: %w", string(n), err)
	}
	if v < 0 {
		return 0, fmt.Errorf("lvm report number %q: negative", string(n))
	}
	return v, nil
}

// pvColumns are what PVs reads of each physical volume.
const pvColumns = "pv_name,pv_uuid,pv_size,pv_free,pv_missing"

// PVs returns the volume group's physical volumes with one
// `lvm pvs -S vg_name=<vg>`, in lvm's order. A missing PV is listed with
// Missing set and the path lvm gives it ("[unknown]").
func (b *Backend) PVs(ctx context.Context) ([]backend.Device, error) {
	args := append([]string{"pvs", "-o", pvColumns}, reportArgs...)
	out, err := b.runner.Run(ctx, "lvm", append(args, "-S", "vg_name="+b.vg)...)
	if err != nil {
		return nil, fmt.Errorf("lvm: physical volumes of %q: %w", b.vg, backend.ReadFailed(ctx, err))
	}
	var rep struct {
		Report []struct {
			PV []struct {
				Name    string `json:"pv_name"`
				UUID    string `json:"pv_uuid"`
				Size    num    `json:"pv_size"`
				Free    num    `json:"pv_free"`
				Missing string `json:"pv_missing"`
			} `json:"pv"`
		} `json:"report"`
	}
	if err := DecodeReport(out, &rep); err != nil {
		return nil, fmt.Errorf("lvm: physical volumes of %q: parsing pvs report: %w", b.vg, err)
	}
	var devs []backend.Device
	for _, r := range rep.Report {
		for _, pv := range r.PV {
			size, err1 := pv.Size.int()
			free, err2 := pv.Free.int()
			if err := errors.Join(err1, err2); err != nil {
				return nil, fmt.Errorf("lvm: physical volume %s of %q: %w", pv.Name, b.vg, err)
			}
			devs = append(devs, backend.Device{Path: pv.Name, UUID: pv.UUID, SizeBytes: size, FreeBytes: free, Missing: pv.Missing != ""})
		}
	}
	return devs, nil
}

// ActivationEnabled reports whether lvm's configuration lets LVs be
// activated (`lvm lvmconfig --typeconfig full global/activation`). Where it
// does not (carve's metadata-only test rigs), no LV ever has a device, so
// none can be zeroed, nor read.
func ActivationEnabled(ctx context.Context, runner exec.Runner) (bool, error) {
	out, err := runner.Run(ctx, "lvm", "lvmconfig", "--typeconfig", "full", "global/activation")
	if err != nil {
		return false, fmt.Errorf("lvm: reading global/activation: %w", err)
	}
	v, ok := strings.CutPrefix(strings.TrimSpace(string(out)), "activation=")
	if !ok {
		return false, fmt.Errorf("lvm: lvmconfig global/activation printed %q", out)
	}
	return v != "0", nil
}
