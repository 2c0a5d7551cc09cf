package pmem

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"k8s.io/klog/v2"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/lvm"
	"github.com/carve-csi/carve/pkg/exec"
)

// LVMType names lvm-pmem pools in --pool. Their backend is an lvm pool and
// reports lvm.Type.
const LVMType = "lvm-pmem"

// LVM on PMEM ("lvm-pmem" pools, PMEM-CSI's LVM mode): at start-up a share of
// a region (or of each region, for "all") becomes one fsdax namespace named
// after the volume group and carrying carve's uuid for it (lvmUUID); the
// namespace is wiped and made a physical volume of the volume group, which is
// created or extended. The pool then is an ordinary lvm pool whose volumes
// are DAX-capable (linear LVs on pmem pass DAX through).
//
// Re-running is a no-op: an existing namespace of ours that already is a PV of
// the volume group is left alone, so a restart never wipes or reformats
// anything. Only a namespace of ours that is not a PV yet (start-up was
// interrupted between create-namespace and pvcreate) is wiped and set up; a
// namespace with the right name but another uuid, or one that is a PV of
// another volume group, is an error and is not touched. The namespace keeps
// the size it was made with: changing the share later does not resize it.

// SetupLVM prepares volume group vg on sharePercent (1-100) of region's size
// ("regionN" or "all"), for owner (the driver name). It is idempotent.
func SetupLVM(ctx context.Context, runner exec.Runner, region string, sharePercent int, vg, owner string) error {
	if runner == nil {
		return errors.New("pmem: nil runner")
	}
	if region != AllRegions && !regionPattern.MatchString(region) {
		return fmt.Errorf("pmem: invalid region %q: want regionN or %q", region, AllRegions)
	}
	if sharePercent < 1 || sharePercent > 100 {
		return fmt.Errorf("pmem: share %d%% of the region: want 1-100", sharePercent)
	}
	if vg == "" || len(vg) > 63 || strings.ContainsAny(vg, " /") {
		return fmt.Errorf("pmem: volume group name %q cannot name a namespace (at most 63 bytes, no '/' or spaces)", vg)
	}
	if !ownerPattern.MatchString(owner) {
		return fmt.Errorf("pmem: invalid owner %q", owner)
	}
	// Every ndctl call below holds the region locks. An all-regions pool
	// learns its regions from a first list.
	probe := &Backend{runner: runner, region: region}
	locked := []string{region}
	if region == AllRegions {
		regions, err := probe.list(ctx, false)
		if err != nil {
			return err
		}
		locked = nil
		for _, r := range regions {
			locked = append(locked, r.Dev)
		}
	}
	unlock, err := lockRegions(ctx, locked)
	if err != nil {
		return err
	}
	defer unlock()
	regions, err := probe.list(ctx, true)
	if err != nil {
		return err
	}
	sort.Slice(regions, func(i, j int) bool { return regions[i].Dev < regions[j].Dev })

	var pvs []string // our namespaces' devices, in region order
	for _, r := range regions {
		if err := checkLabels(r); err != nil {
			return err
		}
		dev, err := lvmNamespace(ctx, runner, r, sharePercent, vg, owner)
		if err != nil {
			return err
		}
		pvs = append(pvs, dev)
	}

	var orphans []string
	for _, dev := range pvs {
		pvVG, isPV, err := pvOf(ctx, runner, dev)
		if err != nil {
			return err
		}
		switch {
		case !isPV:
			klog.InfoS("Setting up a physical volume on carve's namespace", "device", dev, "vg", vg)
			if _, err := runner.Run(ctx, "wipefs", "-a", dev); err != nil {
				return fmt.Errorf("pmem: lvm-pmem %s: wiping %s: %w", vg, dev, err)
			}
			if _, err := runner.Run(ctx, "lvm", "pvcreate", "-y", dev); err != nil {
				return fmt.Errorf("pmem: lvm-pmem %s: pvcreate %s: %w", vg, dev, err)
			}
			orphans = append(orphans, dev)
		case pvVG == "":
			orphans = append(orphans, dev)
		case pvVG != vg:
			return fmt.Errorf("pmem: lvm-pmem %s: %s (carve's namespace) is a physical volume of volume group %q; refusing to touch it", vg, dev, pvVG)
		}
	}
	if len(orphans) == 0 {
		klog.InfoS("lvm-pmem volume group is set up", "vg", vg, "pvs", pvs)
		return nil
	}
	exists, err := vgExists(ctx, runner, vg)
	if err != nil {
		return err
	}
	op := "vgcreate"
	if exists {
		op = "vgextend"
	}
	if _, err := runner.Run(ctx, "lvm", append([]string{op, vg}, orphans...)...); err != nil {
		return fmt.Errorf("pmem: lvm-pmem %s: %s: %w", vg, op, err)
	}
	klog.InfoS("lvm-pmem volume group set up", "vg", vg, "op", op, "pvs", orphans)
	return nil
}

// lvmNamespace returns the block device of the namespace carrying vg in
// region r, creating it on first use.
func lvmNamespace(ctx context.Context, runner exec.Runner, r regionJSON, sharePercent int, vg, owner string) (string, error) {
	uuid := lvmUUID(owner, r.Dev, vg)
	var ours *nsJSON
	for i := range r.Namespaces {
		ns := &r.Namespaces[i]
		if ns.Name != vg || ns.Size == 0 {
			continue
		}
		if !sameUUID(ns.namespaceUUID(), uuid) {
			return "", fmt.Errorf("pmem: lvm-pmem %s: namespace %s in %s is named %q but was not made by carve for owner %s (uuid %s); refusing to use it",
				vg, ns.Dev, r.Dev, vg, owner, ns.namespaceUUID())
		}
		ours = ns
	}
	align := max(r.Align, PfnAlign)
	raw := backend.AlignDown(r.Size/100*int64(sharePercent), align)
	if ours != nil && ours.Mode == "fsdax" && ours.Size != UsableBytes(raw) {
		klog.InfoS("The lvm-pmem namespace keeps the size it was made with; a changed share is not applied",
			"region", r.Dev, "namespace", ours.Dev, "vg", vg, "usable", ours.Size, "share", sharePercent, "shareUsable", UsableBytes(raw))
	}
	if ours == nil {
		if raw <= 0 || raw > r.MaxAvailableExtent {
			return "", fmt.Errorf("pmem: lvm-pmem %s: %d%% of %s is %d bytes, but its largest free extent has %d: %w",
				vg, sharePercent, r.Dev, raw, r.MaxAvailableExtent, backend.ErrNoSpace)
		}
		out, err := ndctl(ctx, runner, "create-namespace", "-r", r.Dev, "-m", "fsdax", "-M", "dev", "-a", "2M",
			"-s", strconv.FormatInt(raw, 10), "-n", vg, "-u", uuid)
		if err != nil {
			return "", mapError("create", r.Dev+"/"+vg, err)
		}
		ns, err := parseNamespace(out)
		if err != nil {
			return "", err
		}
		klog.InfoS("Created the namespace for an lvm-pmem volume group", "region", r.Dev, "namespace", ns.Dev, "vg", vg, "raw", raw, "usable", ns.Size)
		ours = ns
	}
	if ours.Blockdev == "" || ours.State == "disabled" {
		if _, err := ndctl(ctx, runner, "enable-namespace", ours.Dev); err != nil {
			return "", mapError("enable", r.Dev+"/"+vg, err)
		}
		out, err := ndctl(ctx, runner, "list", "-N", "-v", "-n", ours.Dev)
		if err != nil {
			return "", mapError("list", ours.Dev, err)
		}
		var nss []nsJSON
		if _, err := decodeJSON("list", out, &nss); err != nil || len(nss) != 1 || nss[0].Blockdev == "" {
			return "", fmt.Errorf("pmem: lvm-pmem %s: namespace %s has no block device after enable-namespace: %q", vg, ours.Dev, out)
		}
		ours = &nss[0]
	}
	if ours.Mode != "fsdax" {
		return "", fmt.Errorf("pmem: lvm-pmem %s: namespace %s is in mode %q, not fsdax; refusing to use it", vg, ours.Dev, ours.Mode)
	}
	return "/dev/" + ours.Blockdev, nil
}

// pvOf reports whether dev is an LVM physical volume and of which VG ("" for
// an orphan PV).
func pvOf(ctx context.Context, runner exec.Runner, dev string) (vg string, isPV bool, err error) {
	out, err := runner.Run(ctx, "lvm", "pvs", "--reportformat", "json", "-o", "pv_name,vg_name", dev)
	if err != nil {
		// lvm-setup.txt: exit 5 and this line, not a warning that contains it.
		if exec.ExitCode(err) == 5 && hasLine(exec.Stderr(err), `Failed to find physical volume "`+dev+`".`) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("pmem: lvm-pmem: pvs %s: %w", dev, err)
	}
	var rep struct {
		Report []struct {
			PV []struct {
				Name string `json:"pv_name"`
				VG   string `json:"vg_name"`
			} `json:"pv"`
		} `json:"report"`
	}
	if err := lvm.DecodeReport(out, &rep); err != nil {
		return "", false, fmt.Errorf("pmem: lvm-pmem: parsing pvs report: %w", err)
	}
	for _, r := range rep.Report {
		for _, pv := range r.PV {
			return pv.VG, true, nil
		}
	}
	return "", false, nil
}

func vgExists(ctx context.Context, runner exec.Runner, vg string) (bool, error) {
	out, err := runner.Run(ctx, "lvm", "vgs", "--reportformat", "json", "-o", "vg_name")
	if err != nil {
		return false, fmt.Errorf("pmem: lvm-pmem: vgs: %w", err)
	}
	var rep struct {
		Report []struct {
			VG []struct {
				Name string `json:"vg_name"`
			} `json:"vg"`
		} `json:"report"`
	}
	if err := lvm.DecodeReport(out, &rep); err != nil {
		return false, fmt.Errorf("pmem: lvm-pmem: parsing vgs report: %w", err)
	}
	for _, r := range rep.Report {
		for _, v := range r.VG {
			if v.Name == vg {
				return true, nil
			}
		}
	}
	return false, nil
}

// NewLVM sets up the volume group (SetupLVM) and returns the lvm pool on it,
// whose volumes report DAX.
func NewLVM(ctx context.Context, runner exec.Runner, pool, region string, sharePercent int, vg, owner string) (backend.Backend, error) {
	if err := SetupLVM(ctx, runner, region, sharePercent, vg, owner); err != nil {
		return nil, err
	}
	b, err := lvm.New(ctx, runner, pool, vg, owner)
	if err != nil {
		return nil, err
	}
	return &LVMBackend{Backend: b}, nil
}

// LVMBackend is an lvm pool on PMEM: the lvm backend, with DAX set on its volumes.
type LVMBackend struct {
	*lvm.Backend
}

func dax(v *backend.Volume, err error) (*backend.Volume, error) {
	if v != nil {
		v.DAX = true
	}
	return v, err
}

// Create implements backend.Backend.
func (b *LVMBackend) Create(ctx context.Context, req backend.CreateRequest) (*backend.Volume, error) {
	return dax(b.Backend.Create(ctx, req))
}

// Expand implements backend.Backend.
func (b *LVMBackend) Expand(ctx context.Context, id string, size int64) (*backend.Volume, error) {
	return dax(b.Backend.Expand(ctx, id, size))
}

// Get implements backend.Backend.
func (b *LVMBackend) Get(ctx context.Context, id string) (*backend.Volume, error) {
	return dax(b.Backend.Get(ctx, id))
}

// List implements backend.Backend.
func (b *LVMBackend) List(ctx context.Context) ([]backend.Volume, error) {
	vols, err := b.Backend.List(ctx)
	for i := range vols {
		vols[i].DAX = true
	}
	return vols, err
}

// hasLine reports whether out has a line that is want once trimmed.
func hasLine(out, want string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) == want {
			return true
		}
	}
	return false
}
