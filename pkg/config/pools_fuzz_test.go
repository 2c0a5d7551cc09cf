package config

import (
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/carve-csi/carve/pkg/backend/lvm"
	"github.com/carve-csi/carve/pkg/backend/pmem"
	"github.com/carve-csi/carve/pkg/backend/registry"
)

// A pmem region as --pool names it (ndctl list -R), or all of them.
var region = regexp.MustCompile(`^(region[0-9]+|all)$`)

// What lvm accepts as a VG name (lvm(8)): [a-zA-Z0-9+_.-], not starting with
// '-', at most 127 characters; "." and ".." are not names.
var lvmVGName = regexp.MustCompile(`^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$`)

// checkSpec asserts that an accepted pool spec is one carve can use as is.
func checkSpec(t *testing.T, in string, p PoolSpec) {
	t.Helper()
	if !poolName.MatchString(p.Name) || len(p.Name) > 63 {
		t.Fatalf("ParsePool(%q): pool name %q", in, p.Name)
	}
	switch p.Type {
	case lvm.Type:
		if !lvmVGName.MatchString(p.Source) || p.Source == "." || p.Source == ".." {
			t.Fatalf("ParsePool(%q): %q is not a volume group name lvm accepts", in, p.Source)
		}
		for _, d := range p.Devices {
			if _, err := filepath.Match(d, ""); err != nil || !strings.HasPrefix(d, "/dev/") || strings.Contains(d, ",") {
				t.Fatalf("ParsePool(%q): device pattern %q", in, d)
			}
		}
	case lvm.ThinType:
		o := p.Thin
		if !lvmVGName.MatchString(p.Source) || p.Source == "." || p.Source == ".." ||
			!lvmVGName.MatchString(o.ThinPool) || o.ThinPool == "." || o.ThinPool == ".." {
			t.Fatalf("ParsePool(%q): thin pool %q/%q is not a name lvm accepts", in, p.Source, o.ThinPool)
		}
		if o.Overprovision != 0 && !(o.Overprovision >= 1 && o.Overprovision <= 1000) ||
			o.ThresholdPercent < 0 || o.ThresholdPercent > 100 || o.CreatePercent < 0 || o.CreatePercent > 100 {
			t.Fatalf("ParsePool(%q): thin options %+v", in, o)
		}
	case pmem.Type:
		if !region.MatchString(p.Source) {
			t.Fatalf("ParsePool(%q): region %q", in, p.Source)
		}
	case pmem.LVMType:
		if !region.MatchString(p.Source) || p.SharePercent < 1 || p.SharePercent > 100 {
			t.Fatalf("ParsePool(%q): region %q share %d", in, p.Source, p.SharePercent)
		}
		// The VG also names the namespace that carries it: 63 bytes at most.
		if p.VG != registry.LVMPMEMPrefix+p.Name || len(p.VG) > 63 || !lvmVGName.MatchString(p.VG) {
			t.Fatalf("ParsePool(%q): volume group %q", in, p.VG)
		}
	default:
		t.Fatalf("ParsePool(%q): type %q", in, p.Type)
	}
	if p.Type != pmem.LVMType && (p.SharePercent != 0 || p.VG != "") {
		t.Fatalf("ParsePool(%q): share/VG set on a %s pool: %+v", in, p.Type, p)
	}
	if p.Type != lvm.Type && p.Devices != nil {
		t.Fatalf("ParsePool(%q): devices set on a %s pool: %+v", in, p.Type, p)
	}
	if p.Type != lvm.ThinType && p.Thin != (lvm.ThinOptions{}) {
		t.Fatalf("ParsePool(%q): thin options set on a %s pool: %+v", in, p.Type, p)
	}
	again, err := ParsePool(p.String())
	if err != nil || !reflect.DeepEqual(again, p) {
		t.Fatalf("ParsePool(%q) = %+v does not round-trip through %q: %+v, %v", in, p, p.String(), again, err)
	}
}

// FuzzParsePool: whatever --pool accepts is a valid pool (name, type,
// source, share, VG) that renders back to itself; repeated --pool flags never
// yield two pools of one name or two pmem pools on one region.
func FuzzParsePool(f *testing.F) {
	for _, s := range []string{"fast=lvm:vg0", "dax=pmem:region0", "dax=pmem:all", "daxlvm=lvm-pmem:region1",
		"daxlvm=lvm-pmem:region0:50%", "d=lvm-pmem:all:7", "d.x_y=lvm-pmem:region12:100%", "p=lvm-pmem:region0:050%",
		"p=lvm:vg:x", "p=lvm:-vg", "d=lvm:carve:devices=/dev/disk/by-id/nvme-*", "d=lvm:v:devices=/dev/vd[b-z],/dev/sd?", "p=lvm:a b", "p=lvm:.", "p=lvm-pmem:region0:101%", "Fast=lvm:vg", "==:",
		"s=lvm-thin:vg0/tp:overprovision=2.5:threshold=80%:size=50%", "s=lvm-thin:vg0/tp", "s=lvm-thin:vg0/tp:overprovision=1e2"} {
		f.Add(s, "dax=pmem:region0", "fast=lvm:vg0")
	}
	f.Fuzz(func(t *testing.T, a, b, c string) {
		var pools Pools
		for _, s := range []string{a, b, c} {
			p, err := ParsePool(s)
			if err != nil {
				if pools.Set(s) == nil {
					t.Fatalf("Set(%q) accepted what ParsePool rejects: %v", s, err)
				}
				continue
			}
			checkSpec(t, s, p)
			_ = pools.Set(s)
		}
		for i, p := range pools {
			for _, q := range pools[:i] {
				if p.Name == q.Name {
					t.Fatalf("two pools named %q from %q", p.Name, []string{a, b, c})
				}
				if p.Type == pmem.Type && q.Type == pmem.Type && (p.Source == q.Source || p.Source == "all" || q.Source == "all") {
					t.Fatalf("pmem pools %q and %q share a region", p, q)
				}
				if (p.Type == lvm.ThinType || q.Type == lvm.ThinType) && p.Type != pmem.Type && q.Type != pmem.Type &&
					p.Type != pmem.LVMType && q.Type != pmem.LVMType && p.Source == q.Source {
					t.Fatalf("pools %q and %q share the VG of a thin pool", p, q)
				}
			}
		}
		if s := pools.String(); len(pools) > 0 && strings.Count(s, ",") < len(pools)-1 {
			t.Fatalf("Pools.String() = %q for %d pools", s, len(pools))
		}
	})
}
