package pmem

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/carve-csi/carve/pkg/exec/exectest"
)

// simRegion plays one PMEM region for a fake runner: ndctl list,
// create-namespace and destroy-namespace, answered in the form and with the
// numbers the real ndctl and kernel (VM rig) gave in the recordings under
// testdata/ (TestSimMatchesRecordings checks that), and the sysfs tree the
// backend reads, rewritten after every command. It lets a sequence of calls
// that no single recording holds (the contract suite) run without a VM.
type simRegion struct {
	t     *testing.T
	sys   string // fake /sys/bus/nd/devices
	size  int64  // as recorded: 4 GiB less the 128 KiB label area
	align int64  // region alignment (16 MiB in the VM's emulated NVDIMM)

	mu   sync.Mutex
	nss  []*simNS // by index: namespace0.<i>
	pfns int      // pfn uuids handed out
}

type simNS struct {
	name, uuid, pfnUUID string
	start, raw          int64 // DPA range; raw 0: the seed (or a destroyed namespace)
}

// Recorded in the VM (testdata/new.txt and others).
const (
	simRegionSize  = 4294836224
	simRegionAlign = 16 << 20
)

func newSimRegion(t *testing.T) *simRegion {
	s := &simRegion{t: t, sys: filepath.Join(t.TempDir(), "devices"), size: simRegionSize, align: simRegionAlign,
		nss: []*simNS{{}}} // the kernel keeps one empty seed namespace per region
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writeSysfs()
	return s
}

// runner returns the fake runner that answers ndctl from the simulation.
func (s *simRegion) runner() *exectest.Fake {
	return &exectest.Fake{Handler: func(_ context.Context, argv []string) (exectest.Response, bool) {
		s.mu.Lock()
		defer s.mu.Unlock()
		r, ok := s.run(argv)
		if !ok {
			s.t.Errorf("simulated ndctl: unexpected command %q", argv)
		}
		return r, ok
	}}
}

// simUsable is the usable size of an fsdax namespace (-M dev -a 2M) of raw
// bytes at a 2 MiB-aligned start, as the kernel lays it out (nd_pfn_init in
// drivers/nvdimm/pfn_devs.c): an 8 KiB info block, 64 bytes of struct page
// per 4 KiB page, the data starting at the next 2 MiB boundary.
func simUsable(raw int64) int64 {
	const sz8K, page, structPage, align = 8 << 10, 4 << 10, 64, 2 << 20
	npfns := (raw - sz8K) / page
	offset := (sz8K + structPage*npfns + align - 1) / align * align
	return raw - offset
}

// gaps returns the free DPA ranges [start, end) in ascending order.
func (s *simRegion) gaps() [][2]int64 {
	var used [][2]int64
	for _, ns := range s.nss {
		if ns.raw > 0 {
			used = append(used, [2]int64{ns.start, ns.start + ns.raw})
		}
	}
	sort.Slice(used, func(i, j int) bool { return used[i][0] < used[j][0] })
	end := s.size / s.align * s.align
	var out [][2]int64
	at := int64(0)
	for _, u := range used {
		if u[0] > at {
			out = append(out, [2]int64{at, u[0]})
		}
		at = u[1]
	}
	if at < end {
		out = append(out, [2]int64{at, end})
	}
	return out
}

func (s *simRegion) free() (available, maxExtent int64) {
	for _, g := range s.gaps() {
		available += g[1] - g[0]
		maxExtent = max(maxExtent, g[1]-g[0])
	}
	return available, maxExtent
}

func blockdev(i int) string {
	if i == 0 {
		return "pmem0"
	}
	return "pmem0." + strconv.Itoa(i)
}

func (s *simRegion) run(argv []string) (exectest.Response, bool) {
	if len(argv) < 2 || argv[0] != "ndctl" {
		return exectest.Response{}, false
	}
	args := strings.Join(argv[1:], " ")
	switch {
	case args == "list -R -N -i -v -r region0":
		return exectest.Response{Stdout: s.list(true)}, true
	case args == "list -R -r region0":
		return exectest.Response{Stdout: s.list(false)}, true
	case argv[1] == "create-namespace":
		return s.create(argv[2:])
	case argv[1] == "destroy-namespace" && len(argv) == 4 && argv[2] == "-f":
		return s.destroy(argv[3])
	}
	return exectest.Response{}, false
}

// create answers `create-namespace -r region0 -m fsdax -M dev -a 2M -s RAW -n NAME -u UUID`.
func (s *simRegion) create(args []string) (exectest.Response, bool) {
	if len(args) != 14 || strings.Join(args[:8], " ") != "-r region0 -m fsdax -M dev -a 2M" ||
		args[8] != "-s" || args[10] != "-n" || args[12] != "-u" {
		return exectest.Response{}, false
	}
	raw, err := strconv.ParseInt(args[9], 10, 64)
	if err != nil || raw <= 0 || raw%s.align != 0 {
		s.t.Errorf("simulated ndctl: create-namespace -s %s: not a positive multiple of the region's alignment %d", args[9], s.align)
		return exectest.Response{ExitCode: 22, Stderr: "failed to create namespace: Invalid argument\n"}, true
	}
	var at int64 = -1
	for _, g := range s.gaps() { // first fit, as the kernel allocates DPA
		if g[1]-g[0] >= raw {
			at = g[0]
			break
		}
	}
	if at < 0 {
		// testdata/create-nospace.txt
		return exectest.Response{ExitCode: 237, Stderr: "failed to create namespace: No space left on device\n"}, true
	}
	seed := -1
	for i, ns := range s.nss {
		if ns.raw == 0 {
			seed = i
			break
		}
	}
	s.pfns++
	ns := &simNS{name: args[11], uuid: args[13], pfnUUID: fmt.Sprintf("0000cafe-0000-4000-8000-%012d", s.pfns), start: at, raw: raw}
	s.nss[seed] = ns
	if !s.hasSeed() {
		s.nss = append(s.nss, &simNS{})
	}
	s.writeSysfs()
	out := map[string]any{"dev": "namespace0." + strconv.Itoa(seed), "mode": "fsdax", "map": "dev", "size": simUsable(raw),
		"uuid": ns.pfnUUID, "sector_size": 512, "align": 2 << 20, "blockdev": blockdev(seed), "name": ns.name}
	return exectest.Response{Stdout: simJSON(out)}, true
}

func (s *simRegion) hasSeed() bool {
	for _, ns := range s.nss {
		if ns.raw == 0 {
			return true
		}
	}
	return false
}

func (s *simRegion) destroy(dev string) (exectest.Response, bool) {
	i, err := strconv.Atoi(strings.TrimPrefix(dev, "namespace0."))
	if err != nil || i < 0 || i >= len(s.nss) {
		return exectest.Response{}, false
	}
	// The kernel keeps the device with its stale alt_name and no size (testdata/delete.txt).
	s.nss[i] = &simNS{name: s.nss[i].name}
	s.writeSysfs()
	return exectest.Response{}, true
}

// add makes a namespace as another tool would: any name, its own uuid.
func (s *simRegion) add(name string, raw int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, _ := s.create([]string{"-r", "region0", "-m", "fsdax", "-M", "dev", "-a", "2M", "-s", strconv.FormatInt(raw, 10),
		"-n", name, "-u", "0f0f0f0f-1111-4222-8333-444455556666"})
	if r.ExitCode != 0 {
		s.t.Fatalf("simulated ndctl: adding namespace %s: %s", name, r.Stderr)
	}
}

// list renders `ndctl list -R [-N -i -v] -r region0` as testdata/list.txt and capacity.txt show it.
func (s *simRegion) list(namespaces bool) string {
	avail, extent := s.free()
	region := map[string]any{"dev": "region0", "size": s.size, "align": s.align, "available_size": avail,
		"max_available_extent": extent, "type": "pmem", "iset_id": int64(10248187106440278), "persistence_domain": "unknown"}
	if !namespaces {
		return simJSON([]any{region})
	}
	region["numa_node"], region["target_node"] = 0, 0
	var nss []any
	for i, ns := range s.nss {
		if ns.raw == 0 {
			nss = append(nss, map[string]any{"dev": "namespace0." + strconv.Itoa(i), "mode": "raw", "size": 0,
				"uuid": "00000000-0000-0000-0000-000000000000", "sector_size": 512, "state": "disabled", "numa_node": 0, "target_node": 0})
			continue
		}
		nss = append(nss, map[string]any{"dev": "namespace0." + strconv.Itoa(i), "mode": "fsdax", "map": "dev",
			"size": simUsable(ns.raw), "uuid": ns.pfnUUID, "raw_uuid": ns.uuid, "sector_size": 512, "align": 2 << 20,
			"blockdev": blockdev(i), "name": ns.name, "numa_node": 0, "target_node": 0})
	}
	region["namespaces"] = nss
	return simJSON(map[string]any{"regions": []any{region}})
}

// writeSysfs renders the nvdimm bus as testdata's sysfs sections show it.
func (s *simRegion) writeSysfs() {
	avail, extent := s.free()
	var b strings.Builder
	for i, ns := range s.nss {
		n := "namespace0." + strconv.Itoa(i)
		p := "pfn0." + strconv.Itoa(i)
		if ns.raw == 0 {
			fmt.Fprintf(&b, "%[1]s/alt_name %[2]s\n%[1]s/holder \n%[1]s/mode raw\n%[1]s/size 0\n%[1]s/uuid \n%[3]s/mode none\n%[3]s/namespace \n", n, ns.name, p)
			continue
		}
		fmt.Fprintf(&b, "%[1]s/alt_name %[2]s\n%[1]s/holder %[3]s\n%[1]s/mode memory\n%[1]s/size %[4]d\n%[1]s/uuid %[5]s\n", n, ns.name, p, ns.raw, ns.uuid)
		fmt.Fprintf(&b, "%[1]s/block/%[2]s/\n%[1]s/mode pmem\n%[1]s/namespace %[3]s\n", p, blockdev(i), n)
	}
	fmt.Fprintf(&b, "region0/align %#x\nregion0/available_size %d\nregion0/max_available_extent %d\nregion0/size %d\n", s.align, avail, extent, s.size)
	if err := writeSysfs(s.sys, b.String()); err != nil {
		s.t.Fatal(err)
	}
}

func simJSON(v any) string {
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		panic(err)
	}
	return string(out) + "\n"
}
