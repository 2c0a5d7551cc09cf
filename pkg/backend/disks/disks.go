// Package disks builds an lvm pool's volume group from the node's own disks
// (`--pool=<name>=lvm:<vg>:devices=<pattern>[,<pattern>...]`): at start-up
// it takes the whole disks matching the patterns that hold nothing (no
// signature, partition table, holder or mount) and makes the volume group
// from them, tagged carve.owner=<driver>, or adds them to it. A disk that
// holds anything is never written; it is logged with the reason and the pool
// goes on with the rest. A pattern that matches a mounted disk (the root
// disk, swap, any mounted partition) is refused before anything is written.
//
// Every step is a tool run through exec.Runner: lsblk (tree, types, mounts),
// lvm pvs (which disks are PVs of which VG), wipefs -n (signatures and
// partition tables, read only), then lvm pvcreate and vgcreate/vgextend.
// pvcreate is given a uuid derived from the driver, the VG and the device
// (PVUUID): a start-up killed between pvcreate and vgcreate/vgextend leaves a
// physical volume the next start recognises as its own and finishes adding,
// while an orphan PV anyone else made is left alone. No write passes -y, so
// should a signature appear between the check and the write, lvm asks, reads
// the closed stdin as "no", and writes nothing.
package disks

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"k8s.io/klog/v2"

	"github.com/carve-csi/carve/pkg/backend/lvm"
	"github.com/carve-csi/carve/pkg/exec"
)

// ErrRefused: a device pattern matches a disk in use by the node itself (a
// mounted filesystem or swap on it or its partitions), or the volume group
// exists without carve's tag. Nothing was written.
var ErrRefused = errors.New("device pattern refused")

// Options configure Setup.
type Options struct {
	VG    string
	Owner string // the driver name; the VG carries the tag carve.owner=<Owner>
	// Patterns are shell patterns (filepath.Match syntax) of device paths,
	// e.g. /dev/disk/by-id/nvme-*; symlinks are resolved.
	Patterns []string
	// Glob lists the devices a pattern matches, symlinks resolved; nil means
	// filepath.Glob then filepath.EvalSymlinks. Tests replace it.
	Glob func(pattern string) ([]string, error)
}

// Skipped is a matching disk Setup did not take, and why.
type Skipped struct {
	Device string
	Reason string
}

// Result says what Setup found and did.
type Result struct {
	// Members are the VG's devices among the matches after Setup, sorted.
	Members []string
	// Added are the devices Setup made PVs of and put into the VG.
	Added []string
	// Created: Setup created the VG.
	Created bool
	// Skipped are matching devices left alone.
	Skipped []Skipped
}

// Setup makes volume group opts.VG from the blank whole disks matching
// opts.Patterns, or adds the new blank ones to it; it is idempotent. It fails
// with ErrRefused (nothing written) when a match is mounted or the VG is not
// carve's, and with an error when the VG does not exist and no disk can make
// it. A VG that cannot be extended now (a missing PV) is logged and kept as it is.
func Setup(ctx context.Context, runner exec.Runner, opts Options) (Result, error) {
	if runner == nil {
		return Result{}, errors.New("disks: nil runner")
	}
	if opts.VG == "" || opts.Owner == "" || len(opts.Patterns) == 0 {
		return Result{}, fmt.Errorf("disks: volume group, owner and at least one pattern are required (got %q, %q, %q)", opts.VG, opts.Owner, opts.Patterns)
	}
	p, err := survey(ctx, runner, opts)
	if err != nil {
		return Result{}, err
	}
	for _, s := range p.res.Skipped {
		klog.InfoS("Leaving a matching disk alone", "vg", opts.VG, "device", s.Device, "reason", s.Reason)
	}
	return p.apply(ctx, runner, opts)
}

// plan is what survey found: the result so far, and what to write.
type plan struct {
	res      Result
	vgExists bool
	blank    []string // blank disks: pvcreate, then into the VG
	orphans  []string // PVs of ours from an interrupted start: into the VG
}

// survey reads the disks and lvm's view of them; it writes nothing.
func survey(ctx context.Context, runner exec.Runner, opts Options) (*plan, error) {
	devs, err := matches(opts)
	if err != nil {
		return nil, err
	}
	tree, err := readTree(ctx, runner)
	if err != nil {
		return nil, err
	}
	pvs, err := readPVs(ctx, runner)
	if err != nil {
		return nil, err
	}
	p := &plan{}
	vgOurs := false
	ownerTag := lvm.TagOwner + "=" + opts.Owner
	for _, pv := range pvs {
		if pv.VG == opts.VG {
			p.vgExists = true
			vgOurs = vgOurs || hasTag(pv.VGTags, ownerTag)
		}
	}
	if p.vgExists && !vgOurs {
		return nil, fmt.Errorf("disks: volume group %s exists but was not made by carve (no tag %s); use --pool=<name>=lvm:%s without devices=, or rename it: %w",
			opts.VG, ownerTag, opts.VG, ErrRefused)
	}
	for _, d := range devs {
		pv, isPV := pvs[d]
		if isPV && pv.VG == opts.VG {
			// Checked before the tree: the pool's own disks have holders
			// (active LVs) and mounts (volumes in use).
			p.res.Members = append(p.res.Members, d)
			continue
		}
		reason, err := tree.check(d)
		if err != nil {
			return nil, fmt.Errorf("disks: volume group %s: %w", opts.VG, err)
		}
		switch {
		case reason != "":
		case isPV && pv.VG != "":
			reason = fmt.Sprintf("physical volume of volume group %q", pv.VG)
		case isPV && pv.UUID == PVUUID(opts.Owner, opts.VG, d):
			p.orphans = append(p.orphans, d)
		case isPV:
			reason = fmt.Sprintf("LVM physical volume in no volume group, not made by carve (uuid %s)", pv.UUID)
		default:
			sigs, err := signatures(ctx, runner, d)
			if err != nil {
				return nil, err
			}
			if sigs != "" {
				reason = "carries " + sigs
			} else {
				p.blank = append(p.blank, d)
			}
		}
		if reason != "" {
			p.res.Skipped = append(p.res.Skipped, Skipped{d, reason})
		}
	}
	return p, nil
}

// apply writes the plan: pvcreate each blank disk, then vgcreate or vgextend.
func (p *plan) apply(ctx context.Context, runner exec.Runner, opts Options) (Result, error) {
	res := p.res
	for _, d := range p.blank {
		// No -y: should a signature have appeared since wipefs, pvcreate
		// asks, reads the closed stdin as "no" and writes nothing.
		if _, err := runner.Run(ctx, "lvm", "pvcreate", "--norestorefile", "-u", PVUUID(opts.Owner, opts.VG, d), d); err != nil {
			return res, fmt.Errorf("disks: volume group %s: pvcreate %s: %w", opts.VG, d, err)
		}
	}
	add := append(append([]string(nil), p.orphans...), p.blank...)
	sort.Strings(add)
	switch {
	case len(add) == 0 && !p.vgExists:
		return res, fmt.Errorf("disks: volume group %s does not exist and no blank disk matches %q (left alone: %s)",
			opts.VG, opts.Patterns, describe(res.Skipped))
	case len(add) == 0:
	case !p.vgExists:
		if _, err := runner.Run(ctx, "lvm", append([]string{"vgcreate", "--addtag", lvm.TagOwner + "=" + opts.Owner, opts.VG}, add...)...); err != nil {
			return res, fmt.Errorf("disks: vgcreate %s: %w", opts.VG, err)
		}
		res.Created, res.Added = true, add
		klog.InfoS("Created the volume group from blank disks", "vg", opts.VG, "devices", add)
	default:
		if _, err := runner.Run(ctx, "lvm", append([]string{"vgextend", opts.VG}, add...)...); err != nil {
			if exec.ExitCode(err) != lvmRefused || ctx.Err() != nil {
				return res, fmt.Errorf("disks: vgextend %s: %w", opts.VG, err)
			}
			// lvm refused (a VG missing a PV cannot be extended): the pool
			// still serves what it has, and the next start tries again.
			klog.ErrorS(err, "Cannot add blank disks to the volume group now; using it as it is", "vg", opts.VG, "devices", add)
			break
		}
		res.Added = add
		klog.InfoS("Added blank disks to the volume group", "vg", opts.VG, "devices", add)
	}
	res.Members = append(res.Members, res.Added...)
	sort.Strings(res.Members)
	return res, nil
}

// lvmRefused is lvm's exit code when it refuses a command (ECMD_FAILED).
const lvmRefused = 5

// PVUUID is the physical volume uuid carve gives device dev of volume group
// vg for driver owner: lvm's format (32 of [A-Za-z0-9], grouped 6-4-4-4-4-4-6),
// from sha256, so that the next start knows an orphan PV as its own. It
// follows the kernel name of the device: after a reboot that renamed it, an
// orphan from an interrupted start is no longer recognised and is left alone
// (wipefs -a it to let carve take it).
func PVUUID(owner, vg, dev string) string {
	const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	h := sha256.Sum256([]byte(lvm.TagOwner + "=" + owner + "\x00disks\x00" + vg + "\x00" + dev))
	var b strings.Builder
	k := 0
	for i, n := range []int{6, 4, 4, 4, 4, 4, 6} {
		if i > 0 {
			b.WriteByte('-')
		}
		for j := 0; j < n; j++ {
			b.WriteByte(chars[int(h[k])%len(chars)])
			k++
		}
	}
	return b.String()
}

func describe(s []Skipped) string {
	if len(s) == 0 {
		return "none"
	}
	var parts []string
	for _, x := range s {
		parts = append(parts, x.Device+": "+x.Reason)
	}
	return strings.Join(parts, "; ")
}

// matches returns the devices the patterns match, resolved, unique, sorted.
func matches(opts Options) ([]string, error) {
	glob := opts.Glob
	if glob == nil {
		glob = resolveGlob
	}
	seen := map[string]bool{}
	var out []string
	for _, p := range opts.Patterns {
		devs, err := glob(p)
		if err != nil {
			return nil, fmt.Errorf("disks: pattern %q: %w", p, err)
		}
		if len(devs) == 0 {
			klog.InfoS("No device matches the pattern", "vg", opts.VG, "pattern", p)
		}
		for _, d := range devs {
			if !seen[d] {
				seen[d] = true
				out = append(out, d)
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

func resolveGlob(pattern string) ([]string, error) {
	paths, err := filepath.Glob(pattern)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range paths {
		r, err := filepath.EvalSymlinks(p)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// blockDev is one device of `lsblk -J -p -o NAME,TYPE,RO,MOUNTPOINT`.
type blockDev struct {
	Name       string     `json:"name"`
	Type       string     `json:"type"`
	RO         flag       `json:"ro"`
	Mountpoint *string    `json:"mountpoint"`
	Children   []blockDev `json:"children"`
}

// flag is lsblk's RO column: a JSON boolean in util-linux 2.38 (recorded),
// "0"/"1" in older releases.
type flag bool

func (f *flag) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	*f = s == "true" || s == "1"
	return nil
}

type tree []blockDev

// lsblkArgs: the whole tree in one run (holders and partitions appear as
// children; MOUNTPOINT, not MOUNTPOINTS, which lsblk before 2.37 lacks).
var lsblkArgs = []string{"-J", "-p", "-o", "NAME,TYPE,RO,MOUNTPOINT"}

func readTree(ctx context.Context, runner exec.Runner) (tree, error) {
	out, err := runner.Run(ctx, "lsblk", lsblkArgs...)
	if err != nil {
		return nil, fmt.Errorf("disks: lsblk: %w", err)
	}
	var rep struct {
		Devices []blockDev `json:"blockdevices"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return nil, fmt.Errorf("disks: parsing lsblk output: %w", err)
	}
	return rep.Devices, nil
}

// check returns why dev cannot join a pool ("" when nothing in the tree
// stops it), or an error wrapping ErrRefused when dev or anything on or
// under it is mounted: a pattern that reaches the node's own disks is wrong
// as a whole, so the pool is refused rather than trimmed.
func (t tree) check(dev string) (string, error) {
	var found *blockDev
	top := false
	var walk func(ds []blockDev, depth int)
	walk = func(ds []blockDev, depth int) {
		for i := range ds {
			if ds[i].Name == dev && found == nil {
				found, top = &ds[i], depth == 0
			}
			walk(ds[i].Children, depth+1)
		}
	}
	walk(t, 0)
	if found == nil {
		return "not a block device lsblk lists", nil
	}
	if m := mounted(*found); m != "" {
		what := "is mounted"
		if m == "/" {
			what = "holds the root filesystem"
		}
		return "", fmt.Errorf("%s %s (%s); refusing the pattern, nothing written: %w", dev, what, m, ErrRefused)
	}
	if !top || (found.Type != "disk" && found.Type != "loop") {
		return fmt.Sprintf("not a whole disk (type %s)", found.Type), nil
	}
	if found.RO {
		return "read-only", nil
	}
	if len(found.Children) > 0 {
		var names []string
		for _, c := range found.Children {
			names = append(names, c.Name+" ("+c.Type+")")
		}
		return "has partitions or holders: " + strings.Join(names, ", "), nil
	}
	return "", nil
}

// mounted returns a mount point (or [SWAP]) of d or of anything under it.
func mounted(d blockDev) string {
	if d.Mountpoint != nil && *d.Mountpoint != "" {
		return *d.Mountpoint
	}
	for _, c := range d.Children {
		if m := mounted(c); m != "" {
			return m
		}
	}
	return ""
}

type pvInfo struct {
	UUID, VG, VGTags string
}

// readPVs maps device path to what lvm knows of it, for every PV lvm sees.
func readPVs(ctx context.Context, runner exec.Runner) (map[string]pvInfo, error) {
	out, err := runner.Run(ctx, "lvm", "pvs", "--reportformat", "json", "-o", "pv_name,pv_uuid,vg_name,vg_tags")
	if err != nil {
		return nil, fmt.Errorf("disks: pvs: %w", err)
	}
	var rep struct {
		Report []struct {
			PV []struct {
				Name   string `json:"pv_name"`
				UUID   string `json:"pv_uuid"`
				VG     string `json:"vg_name"`
				VGTags string `json:"vg_tags"`
			} `json:"pv"`
		} `json:"report"`
	}
	if err := lvm.DecodeReport(out, &rep); err != nil {
		return nil, fmt.Errorf("disks: parsing pvs report: %w", err)
	}
	m := map[string]pvInfo{}
	for _, r := range rep.Report {
		for _, pv := range r.PV {
			m[pv.Name] = pvInfo{UUID: pv.UUID, VG: pv.VG, VGTags: pv.VGTags}
		}
	}
	return m, nil
}

// signatures returns the signatures wipefs finds on dev (filesystems, RAID
// and LVM labels, partition tables), "" for none. -n: nothing is erased.
func signatures(ctx context.Context, runner exec.Runner, dev string) (string, error) {
	out, err := runner.Run(ctx, "wipefs", "-n", "-J", dev)
	if err != nil {
		return "", fmt.Errorf("disks: reading signatures of %s: %w", dev, err)
	}
	if len(strings.TrimSpace(string(out))) == 0 {
		return "", nil
	}
	var rep struct {
		Signatures []struct {
			Offset string `json:"offset"`
			Type   string `json:"type"`
		} `json:"signatures"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return "", fmt.Errorf("disks: parsing wipefs output for %s: %w", dev, err)
	}
	var sigs []string
	for _, s := range rep.Signatures {
		sigs = append(sigs, s.Type+" signature at "+s.Offset)
	}
	return strings.Join(sigs, ", "), nil
}

func hasTag(tags, tag string) bool {
	for _, t := range strings.Split(tags, ",") {
		if t == tag {
			return true
		}
	}
	return false
}
