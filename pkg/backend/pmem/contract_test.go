package pmem

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/pkg/names"
)

// TestContract runs the backend contract suite on a pmem pool whose ndctl and
// sysfs are simRegion's, a simulation held to the real runs in testdata/ by
// TestSimMatchesRecordings.
func TestContract(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backendtest.Subject {
		sim := newSimRegion(t)
		b, err := NewWithOptions(context.Background(), sim.runner(), "fast", "region0", "carve.csi.dev", t.TempDir(), Options{Sysfs: sim.sys})
		if err != nil {
			t.Fatal(err)
		}
		b.wipe = func(dev string, size int64) error { return nil } // there is no /dev/pmemN behind the simulation
		return backendtest.Subject{Backend: b, Pool: "fast",
			// A namespace another tool made: a name like carve's, another uuid.
			AddForeign: func(t *testing.T, id string) { sim.add(id, 64<<20) },
		}
	})
}

func keys(m map[string]any) string {
	var k []string
	for key := range m {
		k = append(k, key)
	}
	sort.Strings(k)
	return strings.Join(k, ",")
}

// TestSimMatchesRecordings holds simRegion to every real ndctl run recorded
// in testdata/: the usable size of each namespace created, the error of a
// create without space, and the fields of each JSON object it prints.
func TestSimMatchesRecordings(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatal("no recordings", err)
	}
	sim := newSimRegion(t)
	sim.add("carve-x-0123456789abcdef", 64<<20)
	simCreate := map[string]any{}
	sim.mu.Lock()
	r, _ := sim.create([]string{"-r", "region0", "-m", "fsdax", "-M", "dev", "-a", "2M", "-s", strconv.Itoa(32 << 20), "-n", "y", "-u", "u"})
	nospace, _ := sim.create([]string{"-r", "region0", "-m", "fsdax", "-M", "dev", "-a", "2M", "-s", strconv.FormatInt(64<<30, 10), "-n", "z", "-u", "u"})
	listN, listR := sim.list(true), sim.list(false)
	sim.mu.Unlock()
	if err := json.Unmarshal([]byte(r.Stdout), &simCreate); err != nil {
		t.Fatal(err)
	}
	var simRegions struct {
		Regions []map[string]any `json:"regions"`
	}
	var simBare []map[string]any
	if err := json.Unmarshal([]byte(listN), &simRegions); err != nil || len(simRegions.Regions) != 1 {
		t.Fatal(err, listN)
	}
	if err := json.Unmarshal([]byte(listR), &simBare); err != nil || len(simBare) != 1 {
		t.Fatal(err, listR)
	}
	simNS := map[string]string{} // mode -> keys
	for _, ns := range simRegions.Regions[0]["namespaces"].([]any) {
		m := ns.(map[string]any)
		simNS[m["mode"].(string)] = keys(m)
	}
	delete(simRegions.Regions[0], "namespaces")

	var creates, lists, nospaces int
	for _, f := range files {
		c, err := readCapture(f)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(f) == "new-label-less.txt" {
			continue // a region without labels, which the simulation does not play
		}
		for _, call := range c.Calls {
			args := strings.Join(call.Argv, " ")
			switch {
			case len(call.Argv) == 16 && call.Argv[1] == "create-namespace" && call.RC == 0:
				var rec map[string]any
				if err := json.Unmarshal([]byte(call.Stdout), &rec); err != nil {
					t.Fatalf("%s: %v", f, err)
				}
				raw, _ := strconv.ParseInt(call.Argv[11], 10, 64)
				if got, want := simUsable(raw), int64(rec["size"].(float64)); got != want {
					t.Errorf("%s: a namespace of %d raw bytes holds %d usable bytes; the simulation says %d", f, raw, want, got)
				}
				if keys(rec) != keys(simCreate) {
					t.Errorf("%s: create-namespace printed fields %s; the simulation prints %s", f, keys(rec), keys(simCreate))
				}
				creates++
			case call.Argv[1] == "create-namespace" && strings.Contains(call.Stderr, "No space left"):
				if call.RC != nospace.ExitCode || call.Stderr != nospace.Stderr {
					t.Errorf("%s: create without space: rc %d %q; the simulation: rc %d %q", f, call.RC, call.Stderr, nospace.ExitCode, nospace.Stderr)
				}
				nospaces++
			case args == "ndctl list -R -N -i -v -r region0" && call.RC == 0:
				var rec struct {
					Regions []map[string]any `json:"regions"`
				}
				if err := json.Unmarshal([]byte(call.Stdout), &rec); err != nil {
					t.Fatalf("%s: %v", f, err)
				}
				for _, reg := range rec.Regions {
					for _, ns := range reg["namespaces"].([]any) {
						m := ns.(map[string]any)
						if _, named := m["name"]; m["mode"] == "raw" && (named || m["size"].(float64) != 0) {
							continue // a half-made or label-less namespace: not something the simulation makes
						}
						if want, ok := simNS[m["mode"].(string)]; ok && keys(m) != want {
							t.Errorf("%s: a %s namespace lists fields %s; the simulation lists %s", f, m["mode"], keys(m), want)
						}
					}
					delete(reg, "namespaces")
					if keys(reg) != keys(simRegions.Regions[0]) {
						t.Errorf("%s: region fields %s; the simulation lists %s", f, keys(reg), keys(simRegions.Regions[0]))
					}
				}
				lists++
			case args == "ndctl list -R -r region0" && call.RC == 0:
				var rec []map[string]any
				if err := json.Unmarshal([]byte(call.Stdout), &rec); err != nil || len(rec) != 1 {
					t.Fatalf("%s: %v", f, err)
				}
				if keys(rec[0]) != keys(simBare[0]) {
					t.Errorf("%s: region fields %s; the simulation lists %s", f, keys(rec[0]), keys(simBare[0]))
				}
				lists++
			}
		}
	}
	if creates == 0 || lists == 0 || nospaces == 0 {
		t.Fatalf("compared %d creates, %d lists, %d creates without space: the recordings are not where expected", creates, lists, nospaces)
	}
	t.Logf("the simulation agrees with %d recorded creates, %d lists and %d creates without space", creates, lists, nospaces)
}

// DeleteInline finds the namespace in sysfs and its name and target in the
// index, so removing an inline volume runs one ndctl (destroy-namespace), and
// a volume that is not that target's runs none (Get before Delete ran
// `ndctl list` first: issue 13).
func TestDeleteInlineRunsOneNdctl(t *testing.T) {
	sim := newSimRegion(t)
	f := sim.runner()
	ctx := context.Background()
	b, err := NewWithOptions(ctx, f, "fast", "region0", "carve.csi.dev", t.TempDir(), Options{Sysfs: sim.sys})
	if err != nil {
		t.Fatal(err)
	}
	b.wipe = func(dev string, size int64) error { return nil }
	const name, target = "csi-0123456789abcdef", "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount"
	id := names.VolumeID(name)
	if _, err := b.Create(ctx, backend.CreateRequest{ID: id, Name: name, SizeBytes: 64 << 20, Ephemeral: true, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ what, name, target string }{
		{"another target", name, target + "2"}, {"another name", "csi-other", target},
	} {
		f.Log = nil
		if done, err := b.DeleteInline(ctx, id, c.name, c.target); done || err != nil || len(f.Log) != 0 {
			t.Errorf("DeleteInline of %s = %v, %v, ran %q; want false, nil and no command", c.what, done, err, f.Log)
		}
	}
	f.Log = nil
	if done, err := b.DeleteInline(ctx, id, name, target); !done || err != nil {
		t.Fatalf("DeleteInline = %v, %v", done, err)
	}
	if len(f.Log) != 1 || f.Log[0][1] != "destroy-namespace" {
		t.Errorf("DeleteInline ran %q, want one ndctl destroy-namespace", f.Log)
	}
	if _, err := b.Get(ctx, id); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Get after DeleteInline: %v, want ErrNotFound", err)
	}
}
