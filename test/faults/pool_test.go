package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	osexec "os/exec"
	"sort"
	"strings"

	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/test/lvmtest"
)

// The pool under test: an LVM volume group (CARVE_FAULTS_POOL=lvm, the
// default, CARVE_FAULTS_VG), a PMEM region (CARVE_FAULTS_POOL=pmem,
// CARVE_FAULTS_REGION, default region0: one fsdax namespace per volume,
// created with ndctl; namespaces cannot grow, so those trials never expand),
// or an lvm thin pool (CARVE_FAULTS_POOL=thin, CARVE_FAULTS_VG and
// CARVE_FAULTS_THINPOOL, default faultsthin, which must exist with zeroing
// on: its lives are the snapshot and clone lives of thin_test.go). Everything
// else in the trials is the same; the audit sees the pool only through
// carveVolumes.
type pool struct {
	kind     string // "lvm", "pmem" or "thin"
	vg       string // lvm, thin
	region   string // pmem
	thinPool string // thin: the thin pool LV in vg
}

func poolFromEnv() (pool, error) {
	p := pool{kind: os.Getenv("CARVE_FAULTS_POOL"), vg: os.Getenv("CARVE_FAULTS_VG"), region: os.Getenv("CARVE_FAULTS_REGION"),
		thinPool: os.Getenv("CARVE_FAULTS_THINPOOL")}
	switch p.kind {
	case "", "lvm":
		p.kind = "lvm"
	case "pmem":
		if p.region == "" {
			p.region = "region0"
		}
	case "thin":
		if p.thinPool == "" {
			p.thinPool = "faultsthin"
		}
	default:
		return p, fmt.Errorf("CARVE_FAULTS_POOL=%q: want lvm, pmem or thin", p.kind)
	}
	return p, nil
}

func (p pool) pmem() bool { return p.kind == "pmem" }

// thin: an lvm-thin pool, whose lives are snapshot and clone lives.
func (p pool) thin() bool { return p.kind == "thin" }

// flag is carve-csi's --pool for it.
func (p pool) flag() string {
	switch {
	case p.pmem():
		return "--pool=default=pmem:" + p.region
	case p.thin():
		// overprovision=2: a snapshot counts its source's virtual size.
		return "--pool=default=lvm-thin:" + p.vg + "/" + p.thinPool + ":overprovision=2"
	}
	return "--pool=default=lvm:" + p.vg
}

func (p pool) String() string {
	switch {
	case p.pmem():
		return "PMEM region " + p.region
	case p.thin():
		return "thin pool " + p.vg + "/" + p.thinPool
	}
	return "VG " + p.vg
}

// canExpand: namespaces have a fixed size, so pmem lives never expand.
func (p pool) canExpand() bool { return !p.pmem() }

// tools are what carve-csi runs on this pool besides the filesystem tools.
func (p pool) tools() []string {
	if p.pmem() {
		return []string{"ndctl", "mkfs.ext4", "mount", "umount", "blkid"}
	}
	return []string{"lvm", "mkfs.ext4", "mount", "umount", "blkid", "resize2fs", "blkdiscard"}
}

// checkEnv says why the trials cannot run on it here, or "".
func (p pool) checkEnv() string {
	if !p.pmem() && p.vg == "" {
		return "CARVE_FAULTS_VG is not set; the trials need a dedicated LVM volume group with working device-mapper (and with CARVE_FAULTS_POOL=thin a thin pool in it), or CARVE_FAULTS_POOL=pmem and a labeled PMEM region (hack/faults.sh runs them in the QEMU VM)"
	}
	if os.Geteuid() != 0 {
		return "not root"
	}
	if !p.pmem() && !lvmtest.DeviceMapperAvailable() {
		return "device-mapper is not usable, so logical volumes cannot be activated"
	}
	for _, tool := range p.tools() {
		if _, err := osexec.LookPath(tool); err != nil {
			return tool + " is not installed"
		}
	}
	if p.pmem() {
		if _, err := os.Stat("/sys/bus/nd/devices/" + p.region); err != nil {
			return "no PMEM " + p.region + ": " + err.Error()
		}
	}
	return ""
}

// carveVol is one of carve's volumes (or, in a thin pool, snapshots) as the
// pool shows it.
type carveVol struct {
	name  string // the CSI name (lvm: carve.name tag), or the volume id (pmem: the namespace name)
	obj   string // the LV name or the namespace device (namespace0.3)
	dev   string // its block device, "" when it has none (a disabled or raw-mode namespace)
	label string // for messages
	size  int64  // lvm: the LV's size
	tags  string // lvm: the LV's tags
}

// owns reports whether the held volume v is the pool's volume c.
func (c carveVol) owns(pmem bool, v *vol) bool {
	if pmem {
		return c.name == names.VolumeID(v.name)
	}
	return c.name == v.name
}

// carveVolumes lists carve's volumes in the pool with the test's own tools,
// and (lvm) the names of all LVs, for the device-mapper audit.
func (h *harness) carveVolumes(ctx context.Context) (vols []carveVol, all map[string]bool, err error) {
	all = map[string]bool{}
	if h.pool.pmem() {
		nss, err := h.namespaces(ctx)
		for _, ns := range nss {
			if !names.IsVolumeID(ns.Name) || ns.Size == 0 {
				continue
			}
			c := carveVol{name: ns.Name, obj: ns.Dev, label: fmt.Sprintf("namespace %s (%s, mode %s)", ns.Dev, ns.Name, ns.Mode)}
			if ns.Blockdev != "" && ns.Mode == "fsdax" {
				c.dev = "/dev/" + ns.Blockdev
			}
			vols = append(vols, c)
		}
		return vols, all, err
	}
	lvs, err := lvmtest.LVs(ctx, &h.runner, h.pool.vg)
	for _, lv := range lvs {
		all[lv.Name] = true
		if hasTag(lv.Tags, ownerTag) {
			name := csiName(lv.Tags)
			vols = append(vols, carveVol{name: name, obj: lv.Name, dev: "/dev/" + h.pool.vg + "/" + lv.Name,
				label: fmt.Sprintf("LV %s (carve.name %q)", lv.Name, name), size: lv.SizeBytes, tags: lv.Tags})
		}
	}
	return vols, all, err
}

// removeVolume destroys one of carve's volumes (the scrub).
func (h *harness) removeVolume(ctx context.Context, c carveVol) error {
	if h.pool.pmem() {
		_, err := h.runner.Run(ctx, "ndctl", "destroy-namespace", "-f", c.obj)
		return err
	}
	_, err := h.runner.Run(ctx, "lvm", "lvremove", "-f", h.pool.vg+"/"+c.obj)
	return err
}

// nsJSON is what `ndctl list -N -i` says about a namespace.
type nsJSON struct {
	Dev      string `json:"dev"`
	Mode     string `json:"mode"`
	Size     int64  `json:"size"`
	Blockdev string `json:"blockdev"`
	Name     string `json:"name"`
}

// namespaces lists the region's namespaces (disabled ones too).
func (h *harness) namespaces(ctx context.Context) ([]nsJSON, error) {
	out, err := h.runner.Run(ctx, "ndctl", "list", "-N", "-i", "-r", h.pool.region)
	if err != nil {
		return nil, err
	}
	return parseNamespaces(out)
}

// parseNamespaces takes every namespace object out of ndctl's JSON, which is
// an object, an array, or regions holding namespaces depending on how many
// there are and what was listed.
func parseNamespaces(out []byte) ([]nsJSON, error) {
	if strings.TrimSpace(string(out)) == "" {
		return nil, nil
	}
	var doc any
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("ndctl list: %w: %s", err, out)
	}
	var nss []nsJSON
	var walk func(any)
	walk = func(x any) {
		switch x := x.(type) {
		case []any:
			for _, e := range x {
				walk(e)
			}
		case map[string]any:
			if dev, _ := x["dev"].(string); strings.HasPrefix(dev, "namespace") {
				b, _ := json.Marshal(x)
				var ns nsJSON
				if json.Unmarshal(b, &ns) == nil {
					nss = append(nss, ns)
				}
				return
			}
			for _, v := range x {
				walk(v)
			}
		}
	}
	walk(doc)
	sort.Slice(nss, func(i, j int) bool { return nss[i].Dev < nss[j].Dev })
	return nss, nil
}
