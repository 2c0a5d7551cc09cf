package config

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/carve-csi/carve/pkg/backend/lvm"
)

func TestParsePool(t *testing.T) {
	for in, want := range map[string]PoolSpec{
		"fast=lvm:vg0":                 {Name: "fast", Type: "lvm", Source: "vg0"},
		"dax=pmem:region0":             {Name: "dax", Type: "pmem", Source: "region0"},
		"dax=pmem:all":                 {Name: "dax", Type: "pmem", Source: "all"},
		"daxlvm=lvm-pmem:region1":      {Name: "daxlvm", Type: "lvm-pmem", Source: "region1", SharePercent: 100, VG: "carve-lvm-daxlvm"},
		"daxlvm=lvm-pmem:region0:50%":  {Name: "daxlvm", Type: "lvm-pmem", Source: "region0", SharePercent: 50, VG: "carve-lvm-daxlvm"},
		"d=lvm-pmem:all:7":             {Name: "d", Type: "lvm-pmem", Source: "all", SharePercent: 7, VG: "carve-lvm-d"},
		"d.x_y=lvm-pmem:region12:100%": {Name: "d.x_y", Type: "lvm-pmem", Source: "region12", SharePercent: 100, VG: "carve-lvm-d.x_y"},
		"nvme=lvm:carve:devices=/dev/disk/by-id/nvme-*": {Name: "nvme", Type: "lvm", Source: "carve",
			Devices: []string{"/dev/disk/by-id/nvme-*"}},
		"d=lvm:vg:devices=/dev/disk/by-path/pci-0000:00:04.0,/dev/vd[b-z]": {Name: "d", Type: "lvm", Source: "vg",
			Devices: []string{"/dev/disk/by-path/pci-0000:00:04.0", "/dev/vd[b-z]"}},
		"s=lvm-thin:vg0/thin": {Name: "s", Type: "lvm-thin", Source: "vg0", Thin: lvm.ThinOptions{ThinPool: "thin"}},
		"s=lvm-thin:vg0/tp:overprovision=2.5:threshold=80%:size=50%": {Name: "s", Type: "lvm-thin", Source: "vg0",
			Thin: lvm.ThinOptions{ThinPool: "tp", Overprovision: 2.5, ThresholdPercent: 80, CreatePercent: 50}},
		"s=lvm-thin:vg0/tp:size=100%:overprovision=1": {Name: "s", Type: "lvm-thin", Source: "vg0",
			Thin: lvm.ThinOptions{ThinPool: "tp", Overprovision: 1, CreatePercent: 100}},
	} {
		got, err := ParsePool(in)
		if err != nil {
			t.Errorf("ParsePool(%q): %v", in, err)
			continue
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("ParsePool(%q): %s", in, diff)
		}
		if again, err := ParsePool(got.String()); err != nil || !cmp.Equal(again, got) {
			t.Errorf("%q does not round-trip through %q: %+v %v", in, got.String(), again, err)
		}
	}
	for _, bad := range []string{"", "fast", "fast=lvm", "fast=lvm:", "Fast=lvm:vg", "f=zfs:tank", "=lvm:vg", "a b=lvm:vg",
		"p=pmem:reg0", "p=pmem:region0:50%", "p=pmem:", "p=pmem:Region0", "p=lvm-pmem:", "p=lvm-pmem:region0:0%",
		"p=lvm-pmem:region0:101%", "p=lvm-pmem:region0:half", "p=lvm-pmem:region0:50%%", "p=lvm-pmem:all:-5",
		strings.Repeat("p", 54) + "=lvm-pmem:region0",
		"p=lvm:vg:x", "p=lvm:vg:devices=", "p=lvm:vg:devices=sd*", "p=lvm:vg:devices=/dev/sd[", "p=lvm:vg:devices=/dev/sda,",
		"p=lvm:vg:devices=/dev/../etc/*", "p=lvm:-vg:devices=/dev/sdb", "p=lvm:vg:disks=/dev/sdb",
		"s=lvm-thin:vg0", "s=lvm-thin:vg0/", "s=lvm-thin:/tp", "s=lvm-thin:vg0/tp/x", "s=lvm-thin:vg0/-tp", "s=lvm-thin:vg0/tp:",
		"s=lvm-thin:vg0/tp:overprovision=0.5", "s=lvm-thin:vg0/tp:overprovision=NaN", "s=lvm-thin:vg0/tp:overprovision=Inf",
		"s=lvm-thin:vg0/tp:overprovision=1001", "s=lvm-thin:vg0/tp:threshold=0%", "s=lvm-thin:vg0/tp:threshold=80",
		"s=lvm-thin:vg0/tp:size=101%", "s=lvm-thin:vg0/tp:size=50%:size=60%", "s=lvm-thin:vg0/tp:zero=n",
		"s=lvm-thin:vg0/tp:devices=/dev/sdb"} {
		if _, err := ParsePool(bad); err == nil {
			t.Errorf("ParsePool(%q) accepted", bad)
		}
	}
	if _, err := ParsePool(strings.Repeat("p", 53) + "=lvm-pmem:region0"); err != nil {
		t.Error(err)
	}
}

func TestPoolsFlagRejectsDuplicates(t *testing.T) {
	var p Pools
	if err := p.Set("a=lvm:vg1"); err != nil {
		t.Fatal(err)
	}
	if err := p.Set("a=lvm:vg2"); err == nil {
		t.Fatal("duplicate pool name accepted")
	}
	if p.String() != "a=lvm:vg1" {
		t.Fatalf("String() = %q", p.String())
	}
}

func TestPoolsFlagDiskVG(t *testing.T) {
	var p Pools
	for _, ok := range []string{"a=lvm:vg", "b=lvm:vg", "c=lvm:disks:devices=/dev/vdb"} {
		if err := p.Set(ok); err != nil {
			t.Errorf("Set(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"d=lvm:disks", "e=lvm:vg:devices=/dev/vdc", "f=lvm:disks:devices=/dev/vdd"} {
		if err := p.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted a second pool on a volume group built from disks", bad)
		}
	}
}

func TestPoolsFlagPMEMRegions(t *testing.T) {
	var p Pools
	for _, ok := range []string{"a=pmem:region0", "b=pmem:region1", "c=lvm-pmem:region0:30%", "d=lvm-pmem:region0:20%", "e=lvm:vg"} {
		if err := p.Set(ok); err != nil {
			t.Errorf("Set(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"x=pmem:region0", "y=pmem:all"} {
		if err := p.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted a second pmem pool on a region", bad)
		}
	}
	var q Pools
	if err := q.Set("all=pmem:all"); err != nil {
		t.Fatal(err)
	}
	if err := q.Set("r=pmem:region3"); err == nil {
		t.Error("pmem pool on a region of an all-regions pool accepted")
	}
	if got := p.String(); got != "a=pmem:region0,b=pmem:region1,c=lvm-pmem:region0:30%,d=lvm-pmem:region0:20%,e=lvm:vg" {
		t.Errorf("String() = %q", got)
	}
}

// TestThinPoolsOwnTheirVolumeGroup: an lvm-thin pool's volume group is used by no
// other pool (thick pools would find the thin volumes by id, two thin pools'
// budgets would not see each other); pools on other VGs are fine.
func TestThinPoolsOwnTheirVolumeGroup(t *testing.T) {
	for _, pair := range [][2]string{
		{"a=lvm:vg0", "b=lvm-thin:vg0/tp"},
		{"a=lvm-thin:vg0/tp", "b=lvm:vg0"},
		{"a=lvm-thin:vg0/tp", "b=lvm-thin:vg0/tp2"},
		{"a=lvm:vg0:devices=/dev/vd*", "b=lvm-thin:vg0/tp"},
	} {
		var p Pools
		if err := p.Set(pair[0]); err != nil {
			t.Fatal(err)
		}
		if err := p.Set(pair[1]); err == nil || !strings.Contains(err.Error(), "vg0") {
			t.Errorf("%q then %q: %v, want a refusal naming the VG", pair[0], pair[1], err)
		}
	}
	var p Pools
	for _, s := range []string{"a=lvm:vg0", "b=lvm-thin:vg1/tp", "c=lvm-thin:vg2/tp", "d=pmem:region0"} {
		if err := p.Set(s); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
}
