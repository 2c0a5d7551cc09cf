// Package config parses carve's pool configuration from flags.
package config

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/carve-csi/carve/pkg/names"
)

// Pool types.
const (
	TypeLVM     = "lvm"      // an existing volume group
	TypePMEM    = "pmem"     // fsdax namespaces in an ndctl region, one per volume
	TypeLVMPMEM = "lvm-pmem" // a volume group that carve makes on a share of a region
)

// LVMPMEMPrefix starts the volume group (and namespace) name of an lvm-pmem pool.
const LVMPMEMPrefix = "carve-lvm-"

// PoolSpec is one pool as the admin configured it: name=type:source.
type PoolSpec struct {
	Name string
	Type string // TypeLVM, TypePMEM or TypeLVMPMEM
	// Source: lvm: the volume group; pmem and lvm-pmem: the region (regionN,
	// or "all" for every pmem region).
	Source string
	// SharePercent (lvm-pmem): how much of each region's size becomes the
	// volume group's namespace, 1-100 (default 100).
	SharePercent int
	// VG (lvm-pmem): the volume group carve makes, LVMPMEMPrefix + Name; it
	// also names the namespace that carries it.
	VG string
}

var (
	poolName = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)
	region   = regexp.MustCompile(`^(region[0-9]+|all)$`)
	share    = regexp.MustCompile(`^([0-9]{1,3})%?$`)
)

const usage = "want name=lvm:<volume group>, name=pmem:<region|all> or name=lvm-pmem:<region|all>[:<percent>%], e.g. fast=lvm:vg0, dax=pmem:region0, daxlvm=lvm-pmem:region0:50%"

// ParsePool parses "name=lvm:vg", "name=pmem:region0" or "name=lvm-pmem:region0:50%".
func ParsePool(s string) (PoolSpec, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok {
		return PoolSpec{}, fmt.Errorf("pool %q: %s", s, usage)
	}
	typ, source, ok := strings.Cut(rest, ":")
	if !ok || source == "" {
		return PoolSpec{}, fmt.Errorf("pool %q: %s", s, usage)
	}
	if !poolName.MatchString(name) {
		return PoolSpec{}, fmt.Errorf("pool %q: name %q must be lowercase alphanumerics, '.', '_' or '-' (at most 63)", s, name)
	}
	spec := PoolSpec{Name: name, Type: typ, Source: source}
	switch typ {
	case TypeLVM:
		if !names.ValidVGName(source) { // fails here with the flag's usage, not later in the backend
			return PoolSpec{}, fmt.Errorf("pool %q: volume group %q: want a name lvm accepts ([A-Za-z0-9+_.-], not starting with '-', at most 127)", s, source)
		}
	case TypePMEM:
		if !region.MatchString(source) {
			return PoolSpec{}, fmt.Errorf("pool %q: region %q: want regionN (see ndctl list -R) or all", s, source)
		}
	case TypeLVMPMEM:
		reg, pct, hasShare := strings.Cut(source, ":")
		if !region.MatchString(reg) {
			return PoolSpec{}, fmt.Errorf("pool %q: region %q: want regionN (see ndctl list -R) or all", s, reg)
		}
		spec.Source, spec.SharePercent = reg, 100
		if hasShare {
			m := share.FindStringSubmatch(pct)
			n := 0
			if m != nil {
				n, _ = strconv.Atoi(m[1])
			}
			if n < 1 || n > 100 {
				return PoolSpec{}, fmt.Errorf("pool %q: share %q: want a percentage of the region, 1%%-100%%", s, pct)
			}
			spec.SharePercent = n
		}
		spec.VG = LVMPMEMPrefix + name
		if len(spec.VG) > 63 { // the namespace name holds 63 bytes
			return PoolSpec{}, fmt.Errorf("pool %q: an lvm-pmem pool name has at most %d characters (its volume group %q names a namespace)",
				s, 63-len(LVMPMEMPrefix), spec.VG)
		}
	default:
		return PoolSpec{}, fmt.Errorf("pool %q: unknown type %q (supported: %s, %s, %s)", s, typ, TypeLVM, TypePMEM, TypeLVMPMEM)
	}
	return spec, nil
}

// String renders the spec as ParsePool reads it.
func (p PoolSpec) String() string {
	s := p.Name + "=" + p.Type + ":" + p.Source
	if p.Type == TypeLVMPMEM && p.SharePercent != 100 {
		s += ":" + strconv.Itoa(p.SharePercent) + "%"
	}
	return s
}

// Pools is a repeatable flag.Value.
type Pools []PoolSpec

func (p *Pools) String() string {
	var parts []string
	for _, s := range *p {
		parts = append(parts, s.String())
	}
	return strings.Join(parts, ",")
}

// Set adds a pool; names must be unique, and two pmem pools cannot share a
// region (each would count the other's namespaces as its own). An lvm-pmem
// pool may share a region with a pmem pool: it takes its share, the pmem
// pool the rest.
func (p *Pools) Set(s string) error {
	spec, err := ParsePool(s)
	if err != nil {
		return err
	}
	for _, existing := range *p {
		if existing.Name == spec.Name {
			return fmt.Errorf("pool %q is configured twice", spec.Name)
		}
		if spec.Type == TypePMEM && existing.Type == TypePMEM &&
			(spec.Source == existing.Source || spec.Source == "all" || existing.Source == "all") {
			return fmt.Errorf("pools %q and %q: two pmem pools cannot share region %s", existing.Name, spec.Name, spec.Source)
		}
	}
	*p = append(*p, spec)
	return nil
}
