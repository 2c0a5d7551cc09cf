// Package config parses carve's pool configuration from flags. What each pool
// type accepts as its source is the registry's (pkg/backend/registry).
package config

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/carve-csi/carve/pkg/backend/registry"
)

// PoolSpec is one pool as the admin configured it: name=type:source.
type PoolSpec = registry.Spec

var poolName = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

func usage() string {
	return "want " + registry.Usage() + ", e.g. " + registry.Examples()
}

// ParsePool parses "name=<type>:<source>", e.g. "name=lvm:vg",
// "name=pmem:region0" or "name=lvm-pmem:region0:50%". An unknown type is an
// error naming the known ones (registry.Types).
func ParsePool(s string) (PoolSpec, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok {
		return PoolSpec{}, fmt.Errorf("pool %q: %s", s, usage())
	}
	typ, source, ok := strings.Cut(rest, ":")
	if !ok || source == "" {
		return PoolSpec{}, fmt.Errorf("pool %q: %s", s, usage())
	}
	if !poolName.MatchString(name) {
		return PoolSpec{}, fmt.Errorf("pool %q: name %q must be lowercase alphanumerics, '.', '_' or '-' (at most 63)", s, name)
	}
	spec, err := registry.Parse(name, typ, source)
	if err != nil {
		return PoolSpec{}, fmt.Errorf("pool %q: %w", s, err)
	}
	return spec, nil
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

// Set adds a pool; names must be unique, and pools of one type must not
// conflict (registry.Conflict: two pmem pools cannot share a region).
func (p *Pools) Set(s string) error {
	spec, err := ParsePool(s)
	if err != nil {
		return err
	}
	for _, existing := range *p {
		if existing.Name == spec.Name {
			return fmt.Errorf("pool %q is configured twice", spec.Name)
		}
		if err := registry.Conflict(existing, spec); err != nil {
			return fmt.Errorf("pools %q and %q: %w", existing.Name, spec.Name, err)
		}
	}
	*p = append(*p, spec)
	return nil
}
