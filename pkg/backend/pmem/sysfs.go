package pmem

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Create, Delete and Activate find a volume's namespace by reading the
// nvdimm bus in sysfs (/sys/bus/nd/devices) instead of running `ndctl list`:
// a lookup is then microseconds instead of one more ndctl process (a second
// or more under emulation), so Create and Delete each cost exactly one ndctl
// command, like the bare tool. These are the same attributes ndctl itself
// reads. Listing and capacity use `ndctl list` JSON.

var nsDirPattern = regexp.MustCompile(`^namespace(\d+)\.(\d+)$`)

// sysNamespace is what sysfs says about one namespace device.
type sysNamespace struct {
	Dev    string // namespace0.3
	Region string // region0
	Name   string // alt_name
	UUID   string
	Size   int64
	Holder string // pfn0.1 when claimed by fsdax; "" otherwise
}

type sysfs struct {
	root string // the nvdimm bus device directory, /sys/bus/nd/devices
}

func (s sysfs) read(dev, attr string) (string, error) {
	b, err := os.ReadFile(filepath.Join(s.root, dev, attr))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// regionExists reports whether the region directory is there.
func (s sysfs) regionExists(region string) bool {
	st, err := os.Stat(filepath.Join(s.root, region))
	return err == nil && st.IsDir()
}

// namespaces returns the namespaces of the given regions named name that have
// a size (seeds keep a stale alt_name after a destroy, with size 0). A
// namespace that vanishes while being read is skipped.
func (s sysfs) namespaces(regions []string, name string) ([]sysNamespace, error) {
	entries, err := os.ReadDir(s.root)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", s.root, err)
	}
	want := map[string]bool{}
	for _, r := range regions {
		want[strings.TrimPrefix(r, "region")] = true
	}
	var out []sysNamespace
	for _, e := range entries {
		m := nsDirPattern.FindStringSubmatch(e.Name())
		if m == nil || !want[m[1]] {
			continue
		}
		ns, err := s.namespace(e.Name())
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		ns.Region = "region" + m[1]
		if ns.Size > 0 && ns.Name == name {
			out = append(out, *ns)
		}
	}
	return out, nil
}

func (s sysfs) namespace(dev string) (*sysNamespace, error) {
	ns := &sysNamespace{Dev: dev}
	var err error
	if ns.Name, err = s.read(dev, "alt_name"); err != nil {
		return nil, err
	}
	size, err := s.read(dev, "size")
	if err != nil {
		return nil, err
	}
	if ns.Size, err = strconv.ParseInt(size, 10, 64); err != nil {
		return nil, fmt.Errorf("%s/%s/size: %w", s.root, dev, err)
	}
	if ns.UUID, err = s.read(dev, "uuid"); err != nil {
		return nil, err
	}
	ns.Holder, _ = s.read(dev, "holder") // absent on some namespace types
	return ns, nil
}

// blockdev returns the block device name of an enabled namespace: the one
// under its fsdax (pfn) holder, or its own when it is raw. "" when disabled.
func (s sysfs) blockdev(ns sysNamespace) string {
	dirs := []string{filepath.Join(s.root, ns.Dev, "block")}
	if ns.Holder != "" {
		dirs = append([]string{filepath.Join(s.root, ns.Holder, "block")}, dirs...)
	}
	for _, d := range dirs {
		if e, err := os.ReadDir(d); err == nil && len(e) == 1 {
			return e[0].Name()
		}
	}
	return ""
}

// isFsdax reports whether the namespace is claimed by an fsdax (pfn) device.
func (ns sysNamespace) isFsdax() bool { return strings.HasPrefix(ns.Holder, "pfn") }
