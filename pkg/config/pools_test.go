package config

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
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
		"p=lvm:vg:devices=/dev/../etc/*", "p=lvm:-vg:devices=/dev/sdb", "p=lvm:vg:disks=/dev/sdb"} {
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
