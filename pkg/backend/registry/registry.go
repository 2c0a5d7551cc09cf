// Package registry is the one place that maps a pool type to its backend: the
// type names the --pool flag accepts, how each reads its source, and the
// constructor. A new backend is one package and one entry in Kinds.
//
// It sits between the flag parsing (pkg/config) and the backends: config
// validates a spec here, cmd/carve-csi builds every pool with New.
package registry

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"k8s.io/klog/v2"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/disks"
	"github.com/carve-csi/carve/pkg/backend/lvm"
	"github.com/carve-csi/carve/pkg/backend/pmem"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/names"
)

// LVMPMEMPrefix starts the volume group (and namespace) name of an lvm-pmem pool.
const LVMPMEMPrefix = "carve-lvm-"

// Spec is one pool as the admin configured it: name=type:source.
type Spec struct {
	Name string
	Type string // one of Types()
	// Source: lvm: the volume group; pmem and lvm-pmem: the region (regionN,
	// or "all" for every pmem region).
	Source string
	// SharePercent (lvm-pmem): how much of each region's size becomes the
	// volume group's namespace, 1-100 (default 100).
	SharePercent int
	// VG (lvm-pmem): the volume group carve makes, LVMPMEMPrefix + Name; it
	// also names the namespace that carries it.
	VG string
	// Devices (lvm): patterns of the disks carve builds the volume group
	// from (package disks); empty for a volume group the admin made.
	Devices []string
	// Thin (lvm-thin): the thin pool in volume group Source and how it is
	// shared out (lvm.ThinOptions; zero values take lvm's defaults).
	Thin lvm.ThinOptions
}

// String renders the spec as the --pool flag reads it.
func (s Spec) String() string {
	out := s.Name + "=" + s.Type + ":" + s.Source
	if s.Type == pmem.LVMType && s.SharePercent != 100 {
		out += ":" + strconv.Itoa(s.SharePercent) + "%"
	}
	if len(s.Devices) > 0 {
		out += ":" + devicesKey + strings.Join(s.Devices, ",")
	}
	if s.Type == lvm.ThinType {
		out += "/" + s.Thin.ThinPool
		if s.Thin.Overprovision != 0 {
			out += ":" + overprovisionKey + strconv.FormatFloat(s.Thin.Overprovision, 'g', -1, 64)
		}
		if s.Thin.ThresholdPercent != 0 {
			out += ":" + thresholdKey + strconv.Itoa(s.Thin.ThresholdPercent) + "%"
		}
		if s.Thin.CreatePercent != 0 {
			out += ":" + sizeKey + strconv.Itoa(s.Thin.CreatePercent) + "%"
		}
	}
	return out
}

// Env is what every constructor gets besides the spec.
type Env struct {
	Runner exec.Runner
	// Owner is the driver name: the ownership tag of LVs, the uuid seed of namespaces.
	Owner string
	// KubeletDir is kubelet's root directory; pmem pools keep their volume
	// index below it, next to the socket kubelet knows.
	KubeletDir string
}

// Kind is one pool type.
type Kind struct {
	// Type is the name in --pool name=<type>:<source>. Backends report it
	// (Backend.Type) in NodeStorage, whose CRD accepts lowercase DNS labels.
	Type string
	// Source describes the source in the flag's usage, e.g. "<volume group>".
	Source string
	// Example is a --pool value of this type.
	Example string
	// parse checks source and fills the spec's type-specific fields.
	parse func(spec *Spec, source string) error
	// build makes the pool's backend; it may run tools (start-up setup).
	build func(ctx context.Context, env Env, spec Spec) (backend.Backend, error)
	// conflict, if set, reports why two pools of this type cannot coexist.
	conflict func(a, b Spec) error
}

var (
	region = regexp.MustCompile(`^(region[0-9]+|` + pmem.AllRegions + `)$`)
	share  = regexp.MustCompile(`^([0-9]{1,3})%?$`)
)

// Kinds lists every pool type carve knows, in the order the usage names them.
func Kinds() []Kind {
	return []Kind{
		{Type: lvm.Type, Source: "<volume group>[:" + devicesKey + "<pattern>[,<pattern>...]]", Example: "fast=" + lvm.Type + ":vg0",
			parse: parseLVM, conflict: lvmConflict,
			build: func(ctx context.Context, env Env, s Spec) (backend.Backend, error) {
				if len(s.Devices) > 0 {
					return zeroing(disks.New(ctx, env.Runner, s.Name, disks.Options{VG: s.Source, Owner: env.Owner, Patterns: s.Devices}))(ctx, env)
				}
				return zeroing(lvm.New(ctx, env.Runner, s.Name, s.Source, env.Owner))(ctx, env)
			}},
		{Type: lvm.ThinType, Source: "<volume group>/<thin pool>[:" + overprovisionKey + "<ratio>][:" + thresholdKey + "<percent>%][:" + sizeKey + "<percent of the VG>%]",
			Example: "scratch=" + lvm.ThinType + ":vg0/thin:" + overprovisionKey + "4:" + sizeKey + "50%",
			parse:   parseThin,
			build: func(ctx context.Context, env Env, s Spec) (backend.Backend, error) {
				return lvm.NewThin(ctx, env.Runner, s.Name, s.Source, env.Owner, s.Thin)
			}},
		{Type: pmem.Type, Source: "<region|all>", Example: "dax=" + pmem.Type + ":region0", parse: parseRegion, conflict: pmemConflict,
			build: func(ctx context.Context, env Env, s Spec) (backend.Backend, error) {
				return pmem.New(ctx, env.Runner, s.Name, s.Source, env.Owner,
					filepath.Join(env.KubeletDir, "plugins", env.Owner, "pmem", s.Name))
			}},
		{Type: pmem.LVMType, Source: "<region|all>[:<percent>%]", Example: "daxlvm=" + pmem.LVMType + ":region0:50%", parse: parseLVMPMEM,
			build: func(ctx context.Context, env Env, s Spec) (backend.Backend, error) {
				return zeroing(pmem.NewLVM(ctx, env.Runner, s.Name, s.Source, s.SharePercent, s.VG, env.Owner))(ctx, env)
			}},
	}
}

// Types returns the names of Kinds, in order.
func Types() []string {
	var out []string
	for _, k := range Kinds() {
		out = append(out, k.Type)
	}
	return out
}

// Lookup returns the kind named typ; the error names the known types.
func Lookup(typ string) (Kind, error) {
	for _, k := range Kinds() {
		if k.Type == typ {
			return k, nil
		}
	}
	return Kind{}, fmt.Errorf("unknown type %q (supported: %s)", typ, strings.Join(Types(), ", "))
}

// Usage is the --pool flag's forms, one per kind: "name=lvm:<volume group>, ...".
func Usage() string {
	var forms []string
	for _, k := range Kinds() {
		forms = append(forms, "name="+k.Type+":"+k.Source)
	}
	return strings.Join(forms, ", ")
}

// Examples is one --pool value per kind, e.g. "fast=lvm:vg0, dax=pmem:region0".
func Examples() string {
	var ex []string
	for _, k := range Kinds() {
		ex = append(ex, k.Example)
	}
	return strings.Join(ex, ", ")
}

// Parse checks a pool of type typ on source and returns its spec; the pool
// name is checked by the caller. The error for an unknown type names the known ones.
func Parse(name, typ, source string) (Spec, error) {
	k, err := Lookup(typ)
	if err != nil {
		return Spec{}, err
	}
	spec := Spec{Name: name, Type: typ, Source: source}
	if err := k.parse(&spec, source); err != nil {
		return Spec{}, err
	}
	return spec, nil
}

// Conflict reports why pools a and b cannot both be configured on one node
// (nil when they can). Names are the caller's business.
func Conflict(a, b Spec) error {
	if (a.Type == lvm.ThinType || b.Type == lvm.ThinType) && lvmVG(a) != "" && lvmVG(a) == lvmVG(b) {
		// Thick and thin pools on one VG would each find the other's
		// volumes by id (lvm's names are per VG), and two thin pools' budgets would
		// not see each other's LVs in the VG's free space.
		return fmt.Errorf("volume group %s holds an lvm-thin pool, so no other pool can use it", lvmVG(a))
	}
	if a.Type != b.Type {
		return nil
	}
	k, err := Lookup(a.Type)
	if err != nil || k.conflict == nil {
		return err
	}
	return k.conflict(a, b)
}

// New builds the backend of spec. An unknown type is an error naming the known ones.
func New(ctx context.Context, env Env, spec Spec) (backend.Backend, error) {
	k, err := Lookup(spec.Type)
	if err != nil {
		return nil, err
	}
	return k.build(ctx, env, spec)
}

// devicesKey starts the device patterns of an lvm pool built from disks.
const devicesKey = "devices="

// Options of an lvm-thin pool (lvm.ThinOptions).
const (
	overprovisionKey = "overprovision="
	thresholdKey     = "threshold="
	sizeKey          = "size="
)

// lvmVG is the volume group of an lvm, lvm-thin or lvm-pmem pool, "" for pmem.
func lvmVG(s Spec) string {
	switch s.Type {
	case lvm.Type, lvm.ThinType:
		return s.Source
	case pmem.LVMType:
		return s.VG
	}
	return ""
}

// parseThin reads "<vg>/<thin pool>[:overprovision=<ratio>][:threshold=<p>%][:size=<p>%]".
func parseThin(spec *Spec, source string) error {
	loc, rest, hasRest := strings.Cut(source, ":")
	vg, tp, ok := strings.Cut(loc, "/")
	if !ok || !names.ValidVGName(vg) || !names.ValidVGName(tp) {
		return fmt.Errorf("thin pool %q: want <volume group>/<thin pool>, names lvm accepts ([A-Za-z0-9+_.-], not starting with '-')", loc)
	}
	spec.Source, spec.Thin.ThinPool = vg, tp
	if !hasRest {
		return nil
	}
	pct := func(key, v string, lo int) (int, error) {
		m := share.FindStringSubmatch(v)
		n := -1
		if m != nil && strings.HasSuffix(v, "%") {
			n, _ = strconv.Atoi(m[1])
		}
		if n < lo || n > 100 {
			return 0, fmt.Errorf("%s%s: want %d%%-100%%", key, v, lo)
		}
		return n, nil
	}
	seen := map[string]bool{}
	for _, opt := range strings.Split(rest, ":") {
		k, v, _ := strings.Cut(opt, "=")
		key := k + "="
		if seen[key] {
			return fmt.Errorf("option %s given twice", k)
		}
		seen[key] = true
		var err error
		switch key {
		case overprovisionKey:
			r, perr := strconv.ParseFloat(v, 64)
			if perr != nil || !(r >= 1) || r > lvm.MaxOverprovision {
				return fmt.Errorf("%s%s: want a ratio from 1 to %d (1: no overprovisioning)", key, v, lvm.MaxOverprovision)
			}
			spec.Thin.Overprovision = r
		case thresholdKey:
			spec.Thin.ThresholdPercent, err = pct(key, v, 1)
		case sizeKey:
			spec.Thin.CreatePercent, err = pct(key, v, 1)
		default:
			return fmt.Errorf("option %q: want %s<ratio>, %s<percent>%% or %s<percent>%%", opt, overprovisionKey, thresholdKey, sizeKey)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// parseLVM reads "<vg>" or "<vg>:devices=<pattern>[,<pattern>...]". A
// pattern is an absolute path below /dev in filepath.Match syntax; it may
// hold ':' (by-path names do), not ','.
func parseLVM(spec *Spec, source string) error {
	vg, rest, hasDevices := strings.Cut(source, ":")
	if !names.ValidVGName(vg) { // fails here with the flag's usage, not later in the backend
		return fmt.Errorf("volume group %q: want a name lvm accepts ([A-Za-z0-9+_.-], not starting with '-', at most 127)", vg)
	}
	spec.Source = vg
	if !hasDevices {
		return nil
	}
	list, ok := strings.CutPrefix(rest, devicesKey)
	if !ok || list == "" {
		return fmt.Errorf("%q after the volume group: want %s<pattern>[,<pattern>...], e.g. %s/dev/disk/by-id/nvme-*", rest, devicesKey, devicesKey)
	}
	for _, p := range strings.Split(list, ",") {
		if _, err := filepath.Match(p, ""); err != nil || !strings.HasPrefix(p, "/dev/") || filepath.Clean(p) != p {
			return fmt.Errorf("device pattern %q: want an absolute path below /dev/ in shell pattern syntax (*, ?, [...])", p)
		}
		spec.Devices = append(spec.Devices, p)
	}
	return nil
}

// lvmConflict: a volume group carve builds from disks belongs to one pool;
// two pools on one volume group the admin made are allowed as before.
func lvmConflict(a, b Spec) error {
	if a.Source == b.Source && (len(a.Devices) > 0 || len(b.Devices) > 0) {
		return fmt.Errorf("volume group %s is built from devices, so only one pool can use it", a.Source)
	}
	return nil
}

// zeroing turns on lvm's zeroing of new volumes (lvm.Backend.EnableZeroing:
// no volume shows an earlier volume's bytes) on a freshly built lvm pool,
// unless lvm's configuration disables activation: then no LV ever has a
// device to zero or to read (carve's metadata-only test rigs), and the log
// says so.
func zeroing[B backend.Backend](b B, err error) func(context.Context, Env) (backend.Backend, error) {
	return func(ctx context.Context, env Env) (backend.Backend, error) {
		if err != nil {
			return nil, err
		}
		z, ok := any(b).(interface{ EnableZeroing() })
		if !ok {
			return nil, fmt.Errorf("pool type %s cannot zero new volumes", b.Type())
		}
		on, aerr := lvm.ActivationEnabled(ctx, env.Runner)
		switch {
		case aerr != nil:
			return nil, aerr
		case on:
			z.EnableZeroing()
		default:
			klog.InfoS("lvm activation is off (global/activation=0): new volumes are not zeroed; no LV can be read either")
		}
		return b, nil
	}
}

func parseRegion(_ *Spec, source string) error {
	if !region.MatchString(source) {
		return fmt.Errorf("region %q: want regionN (see ndctl list -R) or %s", source, pmem.AllRegions)
	}
	return nil
}

func parseLVMPMEM(spec *Spec, source string) error {
	reg, pct, hasShare := strings.Cut(source, ":")
	if err := parseRegion(spec, reg); err != nil {
		return err
	}
	spec.Source, spec.SharePercent = reg, 100
	if hasShare {
		m := share.FindStringSubmatch(pct)
		n := 0
		if m != nil {
			n, _ = strconv.Atoi(m[1])
		}
		if n < 1 || n > 100 {
			return fmt.Errorf("share %q: want a percentage of the region, 1%%-100%%", pct)
		}
		spec.SharePercent = n
	}
	spec.VG = LVMPMEMPrefix + spec.Name
	if len(spec.VG) > 63 { // the namespace name holds 63 bytes
		return fmt.Errorf("an lvm-pmem pool name has at most %d characters (its volume group %q names a namespace)",
			63-len(LVMPMEMPrefix), spec.VG)
	}
	return nil
}

// pmemConflict: two pmem pools on one region would each count the other's
// namespaces as their own. (An lvm-pmem pool may share a region with a pmem
// pool: it takes its share, the pmem pool the rest.)
func pmemConflict(a, b Spec) error {
	if a.Source == b.Source || a.Source == pmem.AllRegions || b.Source == pmem.AllRegions {
		return fmt.Errorf("two pmem pools cannot share region %s", b.Source)
	}
	return nil
}
