package pmem

import (
	"context"
	"encoding/json"
	"math"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/exec/exectest"
	"github.com/carve-csi/carve/pkg/names"
)

// capturedStdouts returns the stdout of every recorded ndctl command whose
// first argument is one of subcmds: the seed corpora are real tool output.
func capturedStdouts(f *testing.F, subcmds ...string) []string {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		f.Fatalf("captures: %v", err)
	}
	seen := map[string]bool{}
	var outs []string
	for _, file := range files {
		c, err := readCapture(file)
		if err != nil {
			f.Fatal(err)
		}
		for _, call := range c.Calls {
			if len(call.Argv) < 2 || call.Argv[0] != "ndctl" || call.Stdout == "" || seen[call.Stdout] {
				continue
			}
			for _, s := range subcmds {
				if call.Argv[1] == s {
					seen[call.Stdout] = true
					outs = append(outs, call.Stdout)
				}
			}
		}
	}
	if len(outs) == 0 {
		f.Fatalf("no captured ndctl %v output", subcmds)
	}
	return outs
}

// checkDevicePath: a volume's device is a node directly under /dev, whatever
// ndctl printed (Create wipes it, the node formats and mounts it).
func checkDevicePath(t *testing.T, what, dev string) {
	t.Helper()
	name, ok := strings.CutPrefix(dev, "/dev/")
	if !ok || name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		t.Fatalf("%s: device path %q is not a node under /dev", what, dev)
	}
}

// FuzzNdctlList feeds `ndctl list` output to the parser and, through a fake
// runner, to the backend's List, Get and Capacity. Garbage and truncated
// JSON give errors; what parses renders back to the same regions; volumes are
// only carve's (carve id, carve uuid), with sizes >= 0 and device nodes under
// /dev; capacity is never negative and the largest volume fits the largest
// free extent.
func FuzzNdctlList(f *testing.F) {
	for _, out := range capturedStdouts(f, "list") {
		f.Add(out)
		f.Add(out[:len(out)/2]) // truncated
		// A notice line inside the JSON (as lvm2 prints its archive advice,
		// lvmteam/lvm2#137): parsed around, never a failure or a panic.
		if i := strings.Index(out, "\n"); i > 0 {
			f.Add(out[:i+1] + "  WARNING: a notice printed inside the report\n" + out[i+1:])
		}
	}
	f.Add(`{"dev":"region0","size":-1,"align":16777216,"available_size":-5,"max_available_extent":-7,"type":"pmem"}`)
	f.Add(`[{"dev":"region0","type":"pmem","namespaces":[{"dev":"namespace0.0","mode":"fsdax","size":-4096,"uuid":"` +
		volumeUUID(capOwner, capID, false) + `","blockdev":"../sda","name":"` + capID + `"}]}]`)
	state := f.TempDir()
	f.Fuzz(func(t *testing.T, out string) {
		rs, err := parseRegions([]byte(out))
		if err != nil {
			if len(strings.TrimSpace(out)) == 0 {
				t.Fatalf("empty output is no region, not an error: %v", err)
			}
		} else {
			again, err := json.Marshal(rs)
			if err != nil {
				t.Fatal(err)
			}
			rs2, err := parseRegions(again)
			if err != nil || !reflect.DeepEqual(rs, rs2) && len(rs) > 0 {
				t.Fatalf("parseRegions(%q) = %+v does not round-trip through %s: %+v, %v", out, rs, again, rs2, err)
			}
		}

		fake := &exectest.Fake{Handler: func(context.Context, []string) (exectest.Response, bool) {
			return exectest.Response{Stdout: out}, true
		}}
		b := &Backend{runner: fake, pool: capPool, region: region, regions: []string{region},
			align: map[string]int64{region: 16 << 20}, owner: capOwner, idx: &index{dir: state}, sys: sysfs{root: state}}
		ctx := context.Background()

		c, err := b.Capacity(ctx)
		if err == nil {
			var extent int64
			fits := c.MaxVolumeBytes == 0
			for _, r := range rs {
				if r.Dev == region && r.Type == "pmem" {
					extent = max(extent, r.MaxAvailableExtent)
					// A namespace of that usable size fits this region's extent.
					fits = fits || RawBytes(c.MaxVolumeBytes, max(r.Align, PfnAlign)) <= r.MaxAvailableExtent
				}
			}
			if c.TotalBytes < 0 || c.FreeBytes < 0 || c.MaxVolumeBytes < 0 || c.MaxVolumeBytes > extent || c.AlignBytes != PfnAlign {
				t.Fatalf("Capacity from %q = %+v (largest extent %d)", out, c, extent)
			}
			if !fits {
				t.Fatalf("Capacity from %q: MaxVolumeBytes %d fits no region's free extent", out, c.MaxVolumeBytes)
			}
		}

		vols, err := b.List(ctx)
		if err == nil {
			if !sort.SliceIsSorted(vols, func(i, j int) bool { return vols[i].ID < vols[j].ID }) {
				t.Fatalf("List from %q not sorted: %+v", out, vols)
			}
			for _, v := range vols {
				checkVolume(t, b, out, &v)
			}
		}
		for _, id := range []string{capID, capEphID} {
			v, err := b.Get(ctx, id)
			if err == nil {
				if v.ID != id {
					t.Fatalf("Get(%s) from %q returned %s", id, out, v.ID)
				}
				checkVolume(t, b, out, v)
			}
		}
	})
}

func checkVolume(t *testing.T, b *Backend, out string, v *backend.Volume) {
	t.Helper()
	// A listed volume carries one of the two uuids carve gives its id.
	ok := names.IsVolumeID(v.ID) && strings.Contains(strings.ToLower(out), volumeUUID(capOwner, v.ID, v.Ephemeral))
	if !ok || v.Pool != capPool || v.SizeBytes < 0 || !v.DAX {
		t.Fatalf("volume from %q: %+v is not one of carve's", out, v)
	}
	if v.DevicePath != "" {
		checkDevicePath(t, "volume "+v.ID, v.DevicePath)
	}
}

// FuzzCreateNamespace: what `ndctl create-namespace` prints is only handed
// out as a volume when it is an fsdax namespace of the requested name, at
// least as large as asked for, on a block device node under /dev.
func FuzzCreateNamespace(f *testing.F) {
	for _, out := range capturedStdouts(f, "create-namespace") {
		f.Add(out, int64(64<<20))
		f.Add(out[:len(out)/3], int64(1))
		f.Add("ndctl: notice before the JSON\n"+out, int64(64<<20))
	}
	f.Add(`{"dev":"namespace0.0","mode":"fsdax","size":67108864,"blockdev":"../sda","name":"`+capID+`"}`, int64(1))
	f.Fuzz(func(t *testing.T, out string, want int64) {
		ns, err := parseNamespace([]byte(out))
		if err != nil {
			return
		}
		if ns.Dev == "" {
			t.Fatalf("parseNamespace(%q) accepted a namespace without a device", out)
		}
		req := backend.CreateRequest{ID: capID, Name: capName, SizeBytes: want}
		if err := checkCreated(ns, req, RawBytes(max(want, 1), 16<<20)); err != nil {
			return
		}
		if ns.Mode != "fsdax" || ns.Size < want || ns.Name != capID {
			t.Fatalf("checkCreated accepted %+v for %+v", ns, req)
		}
		checkDevicePath(t, "created "+out, "/dev/"+ns.Blockdev)
	})
}

// FuzzRawBytes: the raw namespace size for a usable size is found in bounded
// time for every int64, is a multiple of the region alignment, holds at least
// the usable size and is the smallest that does (for alignments of at least
// PfnAlign); when no int64 size holds it, the answer is math.MaxInt64, which
// no region can have free.
func FuzzRawBytes(f *testing.F) {
	for _, s := range [][2]int64{{1, 16 << 20}, {64 << 20, 16 << 20}, {1 << 30, 2 << 20}, {1 << 40, 1 << 30}, {5, 4096},
		{1 << 62, 16 << 20}, {math.MaxInt64 - 2<<20, 16 << 20}, {math.MaxInt64, 1}, {1 << 50, 2 << 20}, {0, 0}, {-5, 16 << 20}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, want, align int64) {
		if align > 1<<40 || align < 0 || (align > 0 && align < 4096) {
			align = PfnAlign // regions align to at least a page; ndctl reports powers of two
		}
		raw := RawBytes(want, align)
		if raw == math.MaxInt64 {
			// Claimed impossible: even the largest aligned size holds less.
			if top := backend.AlignDown(math.MaxInt64, max(align, 1)); UsableBytes(top) >= want {
				t.Fatalf("RawBytes(%d, %d) = none, but %d holds %d", want, align, top, UsableBytes(top))
			}
			return
		}
		if raw < 0 || raw%max(align, 1) != 0 || UsableBytes(raw) < want {
			t.Fatalf("RawBytes(%d, %d) = %d: usable %d", want, align, raw, UsableBytes(raw))
		}
		if want > 0 && align >= PfnAlign && raw > align && UsableBytes(raw-align) >= want {
			t.Fatalf("RawBytes(%d, %d) = %d is not the smallest", want, align, raw)
		}
	})
}

var recoverable = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)

// FuzzRecoverName: a volume without an index record gets its CSI name back
// from its id only when the id spells it out in full (pvc-<uuid>); the name
// recovered is never another volume's.
func FuzzRecoverName(f *testing.F) {
	for _, s := range []string{capPVCName, capName, "pvc-0b7e4a6c-1b9e-4c39-9f43-2f1d3a7c9e11", "a", "a--b", "-a", strings.Repeat("x", 40), strings.Repeat("x", 41), ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		id := names.VolumeID(name)
		got := recoverName(id)
		if got != "" && got != name {
			t.Fatalf("recoverName(VolumeID(%q) = %s) = %q", name, id, got)
		}
		if got == "" && len(name) <= 40 && recoverable.MatchString(name) {
			t.Fatalf("recoverName(VolumeID(%q) = %s) lost a name the id spells out", name, id)
		}
		if r := recoverName(name); r != "" && names.VolumeID(r) != name {
			t.Fatalf("recoverName(%q) = %q, whose id is %s", name, r, names.VolumeID(r))
		}
	})
}

// TestCapturedListStructure: every captured `ndctl list -R` parses into the
// regions and namespaces it names, with the numbers ndctl always keeps
// consistent (largest extent <= available <= size, aligned).
func TestCapturedListStructure(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("captures: %v", err)
	}
	n := 0
	for _, file := range files {
		c, err := readCapture(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, call := range c.Calls {
			if len(call.Argv) < 3 || call.Argv[1] != "list" || call.Argv[2] != "-R" || call.RC != 0 {
				continue
			}
			n++
			rs, err := parseRegions([]byte(call.Stdout))
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			nss := 0
			for _, r := range rs {
				nss += len(r.Namespaces)
				if !regionPattern.MatchString(r.Dev) || r.Size <= 0 || r.Align <= 0 || r.AvailableSize > r.Size ||
					r.MaxAvailableExtent > r.AvailableSize || r.AvailableSize%r.Align != 0 {
					t.Errorf("%s: region %+v", file, r)
				}
				for _, ns := range r.Namespaces {
					if !strings.HasPrefix(ns.Dev, "namespace") || (ns.Mode == "fsdax" && ns.Size > 0 && ns.Blockdev == "" && ns.State != "disabled") {
						t.Errorf("%s: namespace %+v", file, ns)
					}
				}
			}
			if len(rs) != strings.Count(call.Stdout, `"dev":"region`) || nss != strings.Count(call.Stdout, `"dev":"namespace`) {
				t.Errorf("%s: %d regions, %d namespaces from %q", file, len(rs), nss, call.Stdout)
			}
		}
	}
	if n < 10 {
		t.Fatalf("only %d captured ndctl list -R runs", n)
	}
}
