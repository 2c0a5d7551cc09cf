package config

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParsePool(t *testing.T) {
	got, err := ParsePool("fast=lvm:vg0")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(PoolSpec{Name: "fast", Type: "lvm", Source: "vg0"}, got); diff != "" {
		t.Fatal(diff)
	}
	for _, bad := range []string{"", "fast", "fast=lvm", "fast=lvm:", "Fast=lvm:vg", "f=zfs:tank", "=lvm:vg", "a b=lvm:vg"} {
		if _, err := ParsePool(bad); err == nil {
			t.Errorf("ParsePool(%q) accepted", bad)
		}
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
