// Package config parses carve's pool configuration from flags.
package config

import (
	"fmt"
	"regexp"
	"strings"
)

// PoolSpec is one pool as the admin configured it: name=type:source.
type PoolSpec struct {
	Name   string
	Type   string // "lvm"
	Source string // lvm: volume group name
}

var poolName = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

// ParsePool parses "name=lvm:vg".
func ParsePool(s string) (PoolSpec, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok {
		return PoolSpec{}, fmt.Errorf("pool %q: want name=type:source, e.g. fast=lvm:vg0", s)
	}
	typ, source, ok := strings.Cut(rest, ":")
	if !ok || source == "" {
		return PoolSpec{}, fmt.Errorf("pool %q: want name=type:source, e.g. fast=lvm:vg0", s)
	}
	if !poolName.MatchString(name) {
		return PoolSpec{}, fmt.Errorf("pool %q: name %q must be lowercase alphanumerics, '.', '_' or '-' (at most 63)", s, name)
	}
	switch typ {
	case "lvm":
	default:
		return PoolSpec{}, fmt.Errorf("pool %q: unknown type %q (supported: lvm)", s, typ)
	}
	return PoolSpec{Name: name, Type: typ, Source: source}, nil
}

// Pools is a repeatable flag.Value.
type Pools []PoolSpec

func (p *Pools) String() string {
	var parts []string
	for _, s := range *p {
		parts = append(parts, s.Name+"="+s.Type+":"+s.Source)
	}
	return strings.Join(parts, ",")
}

// Set adds a pool; names must be unique.
func (p *Pools) Set(s string) error {
	spec, err := ParsePool(s)
	if err != nil {
		return err
	}
	for _, existing := range *p {
		if existing.Name == spec.Name {
			return fmt.Errorf("pool %q is configured twice", spec.Name)
		}
	}
	*p = append(*p, spec)
	return nil
}
