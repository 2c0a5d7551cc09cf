package pmem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/exec/exectest"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/test/loopdev"
)

// Unit tests: exectest.Fake replays the real ndctl (and lvm2) runs in
// testdata/ (see capture_test.go), a temporary directory plays the sysfs
// nvdimm bus as it was before and after each command, and every test requires
// that the backend issues exactly the recorded commands, in order, and ends
// with exactly the recorded result (the same volume, or the same error text).

const region = "region0"

type fixture struct {
	t     *testing.T
	fake  *exectest.Fake
	sys   string // fake /sys/bus/nd/devices
	state string // index directory
	calls []capCall
	want  string // recorded result of the last scenario
	mu    sync.Mutex
	// wiped records the devices Create wiped; wipeErr fails the wipe.
	wiped   []string
	wipeErr error
}

// replay loads the scenarios; the sysfs tree starts as the first one found it.
func replay(t *testing.T, scenarios ...string) *fixture {
	t.Helper()
	fx := &fixture{t: t, sys: filepath.Join(t.TempDir(), "devices"), state: t.TempDir()}
	for i, s := range scenarios {
		c, err := readCapture(filepath.Join("testdata", s+".txt"))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := writeSysfs(fx.sys, c.Sysfs); err != nil {
				t.Fatal(err)
			}
		}
		fx.calls = append(fx.calls, c.Calls...)
		fx.want = c.Result
	}
	fx.fake = &exectest.Fake{Handler: fx.answer}
	t.Cleanup(func() {
		fx.mu.Lock()
		defer fx.mu.Unlock()
		for _, c := range fx.calls {
			t.Errorf("expected command not issued: %q", c.Argv)
		}
	})
	return fx
}

func (fx *fixture) answer(ctx context.Context, argv []string) (exectest.Response, bool) {
	fx.mu.Lock()
	defer fx.mu.Unlock()
	if len(fx.calls) == 0 || !reflect.DeepEqual(fx.calls[0].Argv, argv) {
		if len(fx.calls) > 0 {
			fx.t.Errorf("command %q\n   want %q", argv, fx.calls[0].Argv)
		} else {
			fx.t.Errorf("unexpected command %q", argv)
		}
		return exectest.Response{}, false
	}
	c := fx.calls[0]
	fx.calls = fx.calls[1:]
	r := exectest.Response{Stdout: c.Stdout, Stderr: c.Stderr, ExitCode: c.RC}
	r.Hook = func(context.Context) error {
		if c.Sysfs != "" {
			if err := writeSysfs(fx.sys, c.Sysfs); err != nil {
				return err
			}
		}
		if strings.Contains(c.Note, "killed by the context") {
			return context.Canceled
		}
		return nil
	}
	return r, true
}

// seed writes the index records the capture's backend had.
func (fx *fixture) seed() *fixture {
	x := &index{dir: fx.state}
	recs := map[string]record{
		capID:     {Name: capName},
		capPVCID:  {Name: capPVCName},
		capEphID:  {Name: capEphName, TargetPath: capEphTarget},
		capOddID:  {Name: capOddName},
		capKillID: {Name: capKillName},
	}
	for _, n := range capFragNames {
		recs[names.VolumeID(n)] = record{Name: n}
	}
	for id, r := range recs {
		if err := x.put(id, r); err != nil {
			fx.t.Fatal(err)
		}
	}
	return fx
}

// backend returns a Backend on region0 as New would have made it, without
// replaying New's `ndctl list`.
func (fx *fixture) backend() *Backend {
	return &Backend{runner: fx.fake, pool: capPool, region: region, regions: []string{region},
		align: map[string]int64{region: 16 << 20}, owner: capOwner, idx: &index{dir: fx.state}, sys: sysfs{root: fx.sys},
		wipe: func(dev string, size int64) error {
			fx.wiped = append(fx.wiped, fmt.Sprintf("%s:%d", dev, size))
			return fx.wipeErr
		}}
}

// check compares a backend result with the recorded one.
func (fx *fixture) check(v any, err error) {
	fx.t.Helper()
	if got := describe(v, err); got != fx.want {
		fx.t.Errorf("result\n got %s\nwant %s", got, fx.want)
	}
}

var ctx = context.Background()

func TestNew(t *testing.T) {
	fx := replay(t, "new")
	b, err := NewWithOptions(ctx, fx.fake, capPool, region, capOwner, fx.state, Options{Sysfs: fx.sys})
	fx.check(nil, err)
	if err != nil {
		t.Fatal(err)
	}
	if b.AlignBytes() != 2<<20 || b.Type() != "pmem" || !b.FixedSize() || backend.CanExpand(b) {
		t.Errorf("align %d type %s fixed %v", b.AlignBytes(), b.Type(), b.FixedSize())
	}
	if !reflect.DeepEqual(b.Regions(), []string{region}) || b.align[region] != 16<<20 {
		t.Errorf("regions %v align %v", b.Regions(), b.align)
	}
}

func TestNewBadInput(t *testing.T) {
	f := &exectest.Fake{}
	dir := t.TempDir()
	for _, c := range []struct{ region, owner, state string }{
		{"reg0", capOwner, dir}, {"region0; rm", capOwner, dir}, {"", capOwner, dir},
		{region, "", dir}, {region, "bad owner", dir}, {region, capOwner, ""},
	} {
		if _, err := New(ctx, f, capPool, c.region, c.owner, c.state); err == nil {
			t.Errorf("New(%q, %q, %q) accepted", c.region, c.owner, c.state)
		}
	}
	if len(f.Log) != 0 {
		t.Errorf("bad input ran commands: %q", f.Log)
	}
	if _, err := New(ctx, nil, capPool, region, capOwner, dir); err == nil {
		t.Error("nil runner accepted")
	}
}

func TestNewLabelLess(t *testing.T) {
	fx := replay(t, "new-label-less")
	_, err := NewWithOptions(ctx, fx.fake, capPool, region, capOwner, fx.state, Options{Sysfs: fx.sys})
	fx.check(nil, err)
	if !errors.Is(err, backend.ErrUnavailable) || !strings.Contains(err.Error(), "ndctl init-labels") {
		t.Errorf("err = %v, want ErrUnavailable with the init-labels fix", err)
	}
}

func TestNewMissingRegion(t *testing.T) {
	fx := replay(t, "new-missing-region")
	_, err := NewWithOptions(ctx, fx.fake, capPool, "region9", capOwner, fx.state, Options{Sysfs: fx.sys})
	fx.check(nil, err)
	if !errors.Is(err, backend.ErrUnavailable) {
		t.Errorf("err = %v, want ErrUnavailable", err)
	}
}

// ndctl missing behind a prefix (as with nsenter): the prefix tool exits 127.
func TestNewNdctlMissing(t *testing.T) {
	fx := replay(t, "new-ndctl-missing")
	_, err := NewWithOptions(ctx, fx.fake, capPool, region, capOwner, fx.state, Options{Sysfs: fx.sys})
	if !errors.Is(err, backend.ErrUnavailable) || !strings.Contains(err.Error(), "ndctl is not available on this node") {
		t.Errorf("err = %v, want ErrUnavailable saying ndctl is missing", err)
	}
}

// ndctl not installed here: os/exec cannot start it.
func TestNewNdctlNotInstalled(t *testing.T) {
	f := &exectest.Fake{Handler: func(context.Context, []string) (exectest.Response, bool) {
		return exectest.Response{Hook: func(context.Context) error {
			return &osexec.Error{Name: "ndctl", Err: osexec.ErrNotFound}
		}}, true
	}}
	_, err := New(ctx, f, capPool, region, capOwner, t.TempDir())
	if !errors.Is(err, backend.ErrUnavailable) || !strings.Contains(err.Error(), "ndctl is not available on this node") {
		t.Errorf("err = %v, want ErrUnavailable saying ndctl is missing", err)
	}
}

func TestNewSweepsStaleRecords(t *testing.T) {
	fx := replay(t, "new").seed()
	if _, err := NewWithOptions(ctx, fx.fake, capPool, region, capOwner, fx.state, Options{Sysfs: fx.sys}); err != nil {
		t.Fatal(err)
	}
	ids, err := (&index{dir: fx.state}).ids()
	if err != nil || len(ids) != 0 {
		t.Errorf("records of namespaces that do not exist survived New: %v %v", ids, err)
	}
}

func TestCreate(t *testing.T) {
	for _, c := range []struct {
		scenario  string
		req       backend.CreateRequest
		wantBytes int64
	}{
		{"create", backend.CreateRequest{ID: capID, Name: capName, SizeBytes: 1 << 30}, 1038 << 20},
		{"create-pvc", backend.CreateRequest{ID: capPVCID, Name: capPVCName, SizeBytes: 62 << 20}, 62 << 20},
		{"create-ephemeral", backend.CreateRequest{ID: capEphID, Name: capEphName, SizeBytes: 100 << 20, Ephemeral: true, TargetPath: capEphTarget}, 110 << 20},
		{"create-odd", backend.CreateRequest{ID: capOddID, Name: capOddName, SizeBytes: 130 << 20}, 140 << 20},
	} {
		t.Run(c.scenario, func(t *testing.T) {
			fx := replay(t, c.scenario)
			b := fx.backend()
			v, err := b.Create(ctx, c.req)
			fx.check(v, err)
			if err != nil {
				t.Fatal(err)
			}
			// Never smaller than asked for, and no more than the region's
			// alignment step above it.
			if v.SizeBytes != c.wantBytes || v.SizeBytes < c.req.SizeBytes || v.SizeBytes-c.req.SizeBytes >= 16<<20 {
				t.Errorf("size %d for a request of %d, want %d", v.SizeBytes, c.req.SizeBytes, c.wantBytes)
			}
			if !v.DAX || v.Ephemeral != c.req.Ephemeral || !strings.HasPrefix(v.DevicePath, "/dev/pmem") {
				t.Errorf("volume %+v", v)
			}
			wantArgv := []string{"ndctl", "create-namespace", "-r", region, "-m", "fsdax", "-M", "dev", "-a", "2M",
				"-s", fmt.Sprint(RawBytes(c.req.SizeBytes, 16<<20)), "-n", c.req.ID, "-u", volumeUUID(capOwner, c.req.ID, c.req.Ephemeral)}
			if !reflect.DeepEqual(fx.fake.Log, [][]string{wantArgv}) {
				t.Errorf("commands %q, want one %q", fx.fake.Log, wantArgv)
			}
			rec, ok, err := b.idx.get(c.req.ID)
			if !ok || err != nil || rec.Name != c.req.Name || rec.TargetPath != c.req.TargetPath {
				t.Errorf("index record %+v %v %v", rec, ok, err)
			}
			if want := []string{fmt.Sprintf("%s:%d", v.DevicePath, v.SizeBytes)}; !reflect.DeepEqual(fx.wiped, want) {
				t.Errorf("wiped %q, want %q", fx.wiped, want)
			}
		})
	}
}

func TestCreateExists(t *testing.T) {
	for _, s := range []string{"create-exists", "create-disabled-exists"} {
		t.Run(s, func(t *testing.T) {
			fx := replay(t, s).seed()
			id, name := capID, capName
			if s == "create-disabled-exists" {
				id, name = capPVCID, capPVCName
			}
			v, err := fx.backend().Create(ctx, backend.CreateRequest{ID: id, Name: name, SizeBytes: 62 << 20})
			fx.check(v, err)
			if !errors.Is(err, backend.ErrExists) || len(fx.fake.Log) != 0 {
				t.Errorf("err = %v, commands %q; want ErrExists and none", err, fx.fake.Log)
			}
			if rec, ok, _ := fx.backend().idx.get(id); !ok || rec.Name != name {
				t.Errorf("the existing volume's record was touched: %+v", rec)
			}
		})
	}
}

func TestCreateNoSpace(t *testing.T) {
	for _, c := range []struct {
		scenario string
		size     int64
	}{
		{"create-nospace", 64 << 30},
		{"create-fragmented-nospace", 1008 << 20},
	} {
		t.Run(c.scenario, func(t *testing.T) {
			fx := replay(t, c.scenario)
			b := fx.backend()
			v, err := b.Create(ctx, backend.CreateRequest{ID: capBigID, Name: capBigName, SizeBytes: c.size})
			fx.check(v, err)
			if !errors.Is(err, backend.ErrNoSpace) {
				t.Errorf("err = %v, want ErrNoSpace", err)
			}
			if _, ok, _ := b.idx.get(capBigID); ok {
				t.Error("record of the volume that was not created is left")
			}
		})
	}
}

// A namespace created but failing later is destroyed, and its record removed.
func TestCreateKilledRemovesHalfMade(t *testing.T) {
	fx := replay(t, "create-killed")
	b := fx.backend()
	v, err := b.Create(ctx, backend.CreateRequest{ID: capKillID, Name: capKillName, SizeBytes: 62 << 20})
	fx.check(v, err)
	if !errors.Is(err, context.Canceled) || errors.Is(err, backend.ErrNoSpace) {
		t.Errorf("err = %v", err)
	}
	if len(fx.fake.Log) != 2 || fx.fake.Log[1][1] != "destroy-namespace" {
		t.Errorf("commands %q: want create-namespace, then destroy-namespace of what it left", fx.fake.Log)
	}
	if _, ok, _ := b.idx.get(capKillID); ok {
		t.Error("record left")
	}
	if left, _ := b.sys.namespaces(b.regions, capKillID); len(left) != 0 {
		t.Errorf("namespace left: %+v", left)
	}
}

// A create-namespace that reports a namespace smaller than requested (a kernel
// reserving more than carve computes) must not hand it out.
func TestCreateNeverSmaller(t *testing.T) {
	fx := replay(t, "create-killed") // sysfs before/after a create of capKillID, and the destroy
	c := &fx.calls[0]
	c.Note = ""
	c.Stdout = strings.Replace(c.Stdout, `"size":65011712`, `"size":62914560`, 1)
	b := fx.backend()
	v, err := b.Create(ctx, backend.CreateRequest{ID: capKillID, Name: capKillName, SizeBytes: 62 << 20})
	if err == nil || !strings.Contains(err.Error(), "holds only 62914560 usable bytes") {
		t.Fatalf("Create = %+v, %v; want an error", v, err)
	}
	if len(fx.fake.Log) != 2 || fx.fake.Log[1][1] != "destroy-namespace" {
		t.Errorf("commands %q: want the short namespace destroyed", fx.fake.Log)
	}
}

// A new volume whose device cannot be wiped (in use, I/O error) is removed.
func TestCreateWipeFails(t *testing.T) {
	fx := replay(t, "create-killed") // a create of capKillID, then the destroy of what it made
	fx.calls[0].Note = ""
	fx.wipeErr = errors.New("device busy")
	b := fx.backend()
	if _, err := b.Create(ctx, backend.CreateRequest{ID: capKillID, Name: capKillName, SizeBytes: 62 << 20}); err == nil || !strings.Contains(err.Error(), "device busy") {
		t.Fatalf("err = %v", err)
	}
	if len(fx.fake.Log) != 2 || fx.fake.Log[1][1] != "destroy-namespace" {
		t.Errorf("commands %q: want the namespace destroyed", fx.fake.Log)
	}
	if _, ok, _ := b.idx.get(capKillID); ok {
		t.Error("record left")
	}
}

func TestWipeDevice(t *testing.T) {
	dir := t.TempDir()
	if d, err := os.MkdirTemp("/dev/shm", "wipe"); err == nil { // fsync on a loaded disk is slow
		dir = d
		t.Cleanup(func() { os.RemoveAll(d) })
	}
	for i, size := range []int64{4096, 1 << 20, 1<<20 + 4096, 3 << 20, 8 << 20} {
		p := filepath.Join(dir, fmt.Sprint("dev", i))
		junk := []byte(strings.Repeat("x", int(size)))
		if err := os.WriteFile(p, junk, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := wipeDevice(p, size); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(p)
		if int64(len(got)) != size {
			t.Fatalf("size %d: file grew to %d", size, len(got))
		}
		for i, c := range got {
			if c != 0 {
				t.Fatalf("size %d: byte %d is %q, want every byte zeroed", size, i, c)
			}
		}
	}
	// A real block device: all of it is zeroed, the middle too.
	dev := loopdev.New(t, 8<<20)
	if err := os.WriteFile(dev, []byte(strings.Repeat("x", 8<<20)), 0); err != nil {
		t.Fatal(err)
	}
	if err := wipeDevice(dev, 8<<20); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(dev); err != nil || len(got) != 8<<20 || strings.Trim(string(got), "\x00") != "" {
		t.Fatalf("loop device after wipeDevice: %d bytes, %d not zero, %v", len(got), len(strings.ReplaceAll(string(got), "\x00", "")), err)
	}
	defer func(d time.Duration) { devWait = d }(devWait)
	devWait = 50 * time.Millisecond
	if err := wipeDevice(filepath.Join(t.TempDir(), "missing"), 1<<20); err == nil {
		t.Error("missing device wiped")
	}
}

func TestCreateBadInput(t *testing.T) {
	fx := replay(t)
	b := fx.backend()
	for _, req := range []backend.CreateRequest{
		{ID: "pvc-1", Name: "pvc-1", SizeBytes: 1 << 30},
		{ID: "carve-x-0123456789abcdef; rm", Name: "x", SizeBytes: 1 << 30},
		{ID: capID, Name: capName, SizeBytes: 0},
		{ID: capID, Name: capName, SizeBytes: -1},
	} {
		if _, err := b.Create(ctx, req); err == nil {
			t.Errorf("Create(%+v) accepted", req)
		}
	}
}

func TestGet(t *testing.T) {
	for _, c := range []struct {
		scenario, id string
		want         error
	}{
		{"get", capID, nil},
		{"get-ephemeral", capEphID, nil},
		{"get-disabled", capPVCID, nil},
		{"get-foreign", capForeign, backend.ErrNotOwned},
		{"get-missing", capMissing, backend.ErrNotFound},
	} {
		t.Run(c.scenario, func(t *testing.T) {
			fx := replay(t, c.scenario).seed()
			v, err := fx.backend().Get(ctx, c.id)
			fx.check(v, err)
			if !errors.Is(err, c.want) {
				t.Errorf("err = %v, want %v", err, c.want)
			}
		})
	}
}

// Namespaces the index does not know (its directory lost) are still carve's:
// names are recovered where the id spells them out.
func TestListWithoutIndex(t *testing.T) {
	fx := replay(t, "list")
	vols, err := fx.backend().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]backend.Volume{}
	for _, v := range vols {
		got[v.ID] = v
	}
	if len(got) != 4 {
		t.Fatalf("volumes %+v", vols)
	}
	if got[capPVCID].Name != capPVCName || got[capID].Name != "" || got[capOddID].Name != capOddName {
		t.Errorf("names %q %q %q", got[capPVCID].Name, got[capID].Name, got[capOddID].Name)
	}
	if e := got[capEphID]; !e.Ephemeral || e.TargetPath != "" {
		t.Errorf("ephemeral volume without record: %+v", e)
	}
}

func TestList(t *testing.T) {
	fx := replay(t, "list").seed()
	vols, err := fx.backend().List(ctx)
	fx.check(vols, err)
	var ids []string
	for _, v := range vols {
		ids = append(ids, v.ID)
		if v.Pool != capPool || !v.DAX || v.Name == "" {
			t.Errorf("volume %+v", v)
		}
	}
	want := []string{capEphID, capPVCID, capID, capOddID} // sorted; not the foreign or "scratch" namespaces
	if !reflect.DeepEqual(ids, want) {
		t.Errorf("ids %q, want %q", ids, want)
	}
}

func TestCapacity(t *testing.T) {
	for _, s := range []string{"capacity-empty", "capacity", "capacity-fragmented"} {
		t.Run(s, func(t *testing.T) {
			fx := replay(t, s)
			c, err := fx.backend().Capacity(ctx)
			fx.check(c, err)
			if err != nil {
				t.Fatal(err)
			}
			regions, _ := parseRegions([]byte(mustCapture(t, s).Calls[0].Stdout))
			r := regions[0]
			// Exactly what ndctl says; the largest volume is the largest
			// extent's usable size, never the sum of free space.
			if c.TotalBytes != r.Size || c.FreeBytes != r.AvailableSize {
				t.Errorf("capacity %+v, ndctl %+v", c, r)
			}
			wantMax := UsableBytes(backend.AlignDown(r.MaxAvailableExtent, r.Align))
			if c.MaxVolumeBytes != wantMax || c.MaxVolumeBytes > r.MaxAvailableExtent {
				t.Errorf("max volume %d, want %d", c.MaxVolumeBytes, wantMax)
			}
			if s == "capacity-fragmented" && (r.MaxAvailableExtent >= r.AvailableSize || c.MaxVolumeBytes != 1006<<20) {
				t.Errorf("fragmented: extent %d of %d free, max volume %d", r.MaxAvailableExtent, r.AvailableSize, c.MaxVolumeBytes)
			}
		})
	}
}

func mustCapture(t *testing.T, s string) capture {
	t.Helper()
	c, err := readCapture(filepath.Join("testdata", s+".txt"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestExpand(t *testing.T) {
	fx := replay(t, "expand-noop").seed()
	v, err := fx.backend().Expand(ctx, capID, 1<<30)
	fx.check(v, err)
	fx = replay(t, "expand").seed()
	v, err = fx.backend().Expand(ctx, capID, 2<<30)
	fx.check(v, err)
	if !errors.Is(err, backend.ErrNotExpandable) {
		t.Errorf("err = %v, want ErrNotExpandable", err)
	}
}

func TestActivate(t *testing.T) {
	for _, c := range []struct {
		scenario, id string
		cmds         int
		want         error
	}{
		{"activate", capID, 0, nil},             // from sysfs, no command
		{"activate-disabled", capPVCID, 1, nil}, // ndctl enable-namespace
		{"activate-foreign", capForeign, 0, backend.ErrNotOwned},
	} {
		t.Run(c.scenario, func(t *testing.T) {
			fx := replay(t, c.scenario)
			dev, err := fx.backend().Activate(ctx, c.id)
			fx.check(dev, err)
			if !errors.Is(err, c.want) || len(fx.fake.Log) != c.cmds {
				t.Errorf("err = %v, commands %q", err, fx.fake.Log)
			}
		})
	}
}

func TestDelete(t *testing.T) {
	for _, c := range []struct {
		scenario, id string
		want         error
	}{
		{"delete", capID, nil},
		{"delete-missing", capID, backend.ErrNotFound},
		{"delete-foreign", capForeign, backend.ErrNotOwned},
		{"delete-busy", capID, backend.ErrInUse},
	} {
		t.Run(c.scenario, func(t *testing.T) {
			fx := replay(t, c.scenario).seed()
			b := fx.backend()
			err := b.Delete(ctx, c.id)
			fx.check(nil, err)
			if c.want != nil && !errors.Is(err, c.want) {
				t.Errorf("err = %v, want %v", err, c.want)
			}
			_, recorded, _ := b.idx.get(c.id)
			switch c.scenario {
			case "delete":
				if err != nil || recorded || len(fx.fake.Log) != 1 {
					t.Errorf("err %v, record left %v, commands %q", err, recorded, fx.fake.Log)
				}
			case "delete-busy":
				if err == nil || !strings.Contains(err.Error(), "in use") || !recorded {
					t.Errorf("busy delete: err %v, record kept %v", err, recorded)
				}
			case "delete-foreign", "delete-missing":
				if len(fx.fake.Log) != 0 {
					t.Errorf("commands %q", fx.fake.Log)
				}
			}
		})
	}
}

func TestBadIDsRunNothing(t *testing.T) {
	fx := replay(t)
	b := fx.backend()
	for _, id := range []string{"", "pvc-1", "carve-x", "namespace0.0", "carve-foreign-0123456789abcdef/../x"} {
		if err := b.Delete(ctx, id); err == nil {
			t.Errorf("Delete(%q) accepted", id)
		}
		if _, err := b.Get(ctx, id); err == nil {
			t.Errorf("Get(%q) accepted", id)
		}
		if _, err := b.Activate(ctx, id); err == nil {
			t.Errorf("Activate(%q) accepted", id)
		}
	}
	if len(fx.fake.Log) != 0 {
		t.Errorf("commands %q", fx.fake.Log)
	}
}

func TestSetupLVM(t *testing.T) {
	for _, c := range []struct {
		scenario string
		share    int
		want     error
		errText  string
	}{
		{"lvm-setup", 50, nil, ""},
		{"lvm-setup-again", 50, nil, ""},
		{"lvm-setup-interrupted", 50, nil, ""},
		{"lvm-setup-foreign", 50, nil, "not made by carve"},
		{"lvm-setup-nospace", 100, backend.ErrNoSpace, ""},
	} {
		t.Run(c.scenario, func(t *testing.T) {
			fx := replay(t, c.scenario)
			err := SetupLVM(ctx, fx.fake, region, c.share, capVG, capOwner)
			fx.check(nil, err)
			if c.want != nil && !errors.Is(err, c.want) || c.errText != "" && (err == nil || !strings.Contains(err.Error(), c.errText)) {
				t.Errorf("err = %v", err)
			}
			for _, argv := range fx.fake.Log {
				if c.scenario != "lvm-setup" && c.scenario != "lvm-setup-interrupted" && (argv[0] == "wipefs" || argv[1] == "pvcreate" || argv[1] == "create-namespace") {
					t.Errorf("%s ran %q", c.scenario, argv)
				}
			}
		})
	}
}

func TestSetupLVMBadInput(t *testing.T) {
	f := &exectest.Fake{}
	for _, c := range []struct {
		region string
		share  int
		vg     string
	}{
		{"regionX", 50, capVG}, {region, 0, capVG}, {region, 101, capVG}, {region, 50, ""}, {region, 50, strings.Repeat("v", 64)}, {region, 50, "a/b"},
	} {
		if err := SetupLVM(ctx, f, c.region, c.share, c.vg, capOwner); err == nil {
			t.Errorf("SetupLVM(%+v) accepted", c)
		}
	}
	if len(f.Log) != 0 {
		t.Errorf("commands %q", f.Log)
	}
}

func TestNewLVM(t *testing.T) {
	fx := replay(t, "lvm-new")
	b, err := NewLVM(ctx, fx.fake, "fast-lvm", region, 50, capVG, capOwner)
	if err != nil {
		t.Fatal(err)
	}
	v, err := b.Create(ctx, backend.CreateRequest{ID: capPVCID, Name: capPVCName, SizeBytes: 64 << 20})
	fx.check(v, err)
	if err != nil || !v.DAX || b.Type() != "lvm" || !backend.CanExpand(b) {
		t.Errorf("volume %+v, err %v, type %s", v, err, b.Type())
	}
}

func TestUsableBytes(t *testing.T) {
	// Raw size -> usable size, as the kernel reported them in the VM.
	for raw, usable := range map[int64]int64{
		16 << 20: 14 << 20, 32 << 20: 31457280, 64 << 20: 65011712, 112 << 20: 115343360, 144 << 20: 146800640,
		512 << 20: 526385152, 1 << 30: 1054867456, 1056 << 20: 1088421888, 2032 << 20: 2097152000,
	} {
		if got := UsableBytes(raw); got != usable {
			t.Errorf("UsableBytes(%d) = %d, want %d", raw, got, usable)
		}
	}
	if UsableBytes(0) != 0 || UsableBytes(4096) != 0 || UsableBytes(2<<20) > 0 {
		t.Error("tiny sizes")
	}
}

func TestRawBytes(t *testing.T) {
	for _, align := range []int64{16 << 20, 2 << 20, 4096, 1 << 30} {
		for want := int64(1); want < 1<<42; want = want*3 + 12345 {
			raw := RawBytes(want, align)
			if raw%align != 0 || UsableBytes(raw) < want {
				t.Fatalf("RawBytes(%d, %d) = %d: usable %d", want, align, raw, UsableBytes(raw))
			}
			if align >= PfnAlign && raw > align && UsableBytes(raw-align) >= want {
				t.Fatalf("RawBytes(%d, %d) = %d is not the smallest", want, align, raw)
			}
		}
	}
}

func TestMaxVolumeBytes(t *testing.T) {
	// The largest volume fits exactly into the extent it is computed from.
	for _, extent := range []int64{0, 15 << 20, 16 << 20, 1024 << 20, 1030 << 20, 4278190080} {
		m := MaxVolumeBytes(extent, 16<<20)
		if m < 0 || m > 0 && RawBytes(m, 16<<20) > extent {
			t.Errorf("MaxVolumeBytes(%d) = %d needs %d raw", extent, m, RawBytes(m, 16<<20))
		}
		if m > 0 && RawBytes(m+PfnAlign, 16<<20) <= extent {
			t.Errorf("MaxVolumeBytes(%d) = %d is not the largest", extent, m)
		}
	}
}

func TestParseRegions(t *testing.T) {
	for in, n := range map[string]int{
		"":                                  0,
		"  \n":                              0,
		`[{"dev":"region0","type":"pmem"}]`: 1,
		`{"dev":"region1","type":"pmem"}`:   1,
		`{"regions":[{"dev":"region0","namespaces":[{"dev":"namespace0.0"}]},{"dev":"region1"}]}`: 2,
	} {
		rs, err := parseRegions([]byte(in))
		if err != nil || len(rs) != n {
			t.Errorf("parseRegions(%q) = %v, %v", in, rs, err)
		}
	}
	if _, err := parseRegions([]byte("{oops")); err == nil {
		t.Error("bad JSON accepted")
	}
}

func TestVolumeUUID(t *testing.T) {
	a, e := volumeUUID(capOwner, capID, false), volumeUUID(capOwner, capID, true)
	if a == e || a == volumeUUID("other.csi.dev", capID, false) || a != volumeUUID(capOwner, capID, false) {
		t.Error("uuids do not tell owner, id and kind apart")
	}
	if a != "3e564e92-0892-8782-90f2-40487d56be1b" { // as recorded in testdata/create.txt: never change it
		t.Errorf("volumeUUID changed: %s; existing volumes would no longer be carve's", a)
	}
	b := &Backend{owner: capOwner}
	if eph, ok := b.owned(capID, strings.ToUpper(e)); !ok || !eph {
		t.Error("ephemeral uuid not recognized")
	}
	if _, ok := b.owned(capForeign, volumeUUID(capOwner, capForeign, false)); !ok {
		t.Error("own uuid on a carve-shaped name not recognized")
	}
	if _, ok := b.owned("scratch", volumeUUID(capOwner, "scratch", false)); ok {
		t.Error("a name that is no carve id is never carve's")
	}
}

func TestRecoverName(t *testing.T) {
	for name, ok := range map[string]bool{
		capPVCName: true, "pvc-1": true, capName: false, capEphName: false, "PVC-1": false, "a--b": false,
	} {
		got := recoverName(names.VolumeID(name))
		if (got == name) != ok || !ok && got != "" {
			t.Errorf("recoverName(VolumeID(%q)) = %q", name, got)
		}
	}
	if recoverName("carve-0123456789abcdef") != "" || recoverName("carve-") != "" {
		t.Error("short ids")
	}
}

func TestIndex(t *testing.T) {
	x, err := newIndex(filepath.Join(t.TempDir(), "a", "b"))
	if err != nil {
		t.Fatal(err)
	}
	if err := x.put(capEphID, record{Name: capEphName, TargetPath: capEphTarget}); err != nil {
		t.Fatal(err)
	}
	if r, ok, err := x.get(capEphID); !ok || err != nil || r.TargetPath != capEphTarget {
		t.Errorf("get = %+v %v %v", r, ok, err)
	}
	// A record whose name does not hash to its id is not believed.
	if err := x.put(capID, record{Name: "someone else"}); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := x.get(capID); ok {
		t.Error("mismatched record accepted")
	}
	ids, _ := x.ids()
	if len(ids) != 2 {
		t.Errorf("ids %v (temp files must not show)", ids)
	}
	if err := x.remove(capID); err != nil || x.remove(capID) != nil {
		t.Error("remove is not idempotent")
	}
}

func TestMapError(t *testing.T) {
	e := func(code int, stderr string) error {
		return &exec.Error{Cmd: []string{"ndctl"}, ExitCode: code, Stderr: stderr, Err: errors.New("exit")}
	}
	for _, c := range []struct {
		op   string
		err  error
		want error
	}{
		{"create", e(237, "failed to create namespace: No space left on device"), backend.ErrNoSpace},
		{"create", e(250, "failed to create namespace: No such device or address"), backend.ErrDegraded},
		{"delete", e(250, "error destroying namespaces: No such device or address"), backend.ErrNotFound},
		{"create", e(237, "Error: Legacy / label-less namespaces do not support sub-dividing a region"), backend.ErrDegraded},
		{"create", e(237, "WARNING: no space left on device in some notice\nfailed to create namespace: Invalid argument"), nil},
		{"list", e(127, "nsenter: failed to execute ndctl: No such file or directory"), backend.ErrUnavailable},
		{"delete", e(240, "error destroying namespaces: Device or resource busy\ndestroyed 0 namespaces"), backend.ErrInUse},
	} {
		got := mapError(c.op, "x", c.err)
		if c.want != nil && !errors.Is(got, c.want) || c.want == nil && (errors.Is(got, backend.ErrNotFound) || errors.Is(got, backend.ErrNoSpace) || errors.Is(got, backend.ErrDegraded)) {
			t.Errorf("mapError(%s, %v) = %v", c.op, c.err, got)
		}
		var ee *exec.Error
		if !errors.As(got, &ee) {
			t.Errorf("%v lost the exec error", got)
		}
	}
}

// Every ndctl call on a region is serialized, across backends and callers.
func TestRegionLock(t *testing.T) {
	var inFlight, most atomic.Int32
	capt := mustCapture(t, "capacity")
	f := &exectest.Fake{Handler: func(ctx context.Context, argv []string) (exectest.Response, bool) {
		return exectest.Response{Stdout: capt.Calls[0].Stdout, Hook: func(context.Context) error {
			n := inFlight.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			time.Sleep(2 * time.Millisecond)
			inFlight.Add(-1)
			return nil
		}}, true
	}}
	fx := replay(t)
	b1, b2 := fx.backend(), fx.backend()
	b1.runner, b2.runner = f, f
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := b1
			if i%2 == 1 {
				b = b2
			}
			if _, err := b.Capacity(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if most.Load() != 1 {
		t.Errorf("%d ndctl commands ran at once on one region", most.Load())
	}
	// A waiter gives up when its context ends.
	unlock, err := lockRegions(ctx, []string{region})
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := b1.Capacity(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want DeadlineExceeded", err)
	}
	unlock()
}

func TestCapturesParse(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) < 30 {
		t.Fatalf("%d captures: %v", len(files), err)
	}
	for _, f := range files {
		c, err := readCapture(f)
		if err != nil {
			t.Error(err)
		}
		for _, call := range c.Calls {
			if call.Argv[0] == "ndctl" && len(call.Argv) > 1 && call.Argv[1] == "list" && call.RC == 0 && call.Stdout != "" {
				if _, err := parseRegions([]byte(call.Stdout)); err != nil {
					var raw []json.RawMessage
					if json.Unmarshal([]byte(call.Stdout), &raw) != nil {
						t.Errorf("%s: %v", f, err)
					}
				}
			}
		}
	}
}

// An all-regions pool: New takes the pmem regions from one unfiltered list;
// Create puts a volume into the region whose largest free extent fits it
// most tightly, and reports ErrNoSpace without a command when none fits.
func TestAllRegions(t *testing.T) {
	list := `{"regions":[
	  {"dev":"region0","size":4294836224,"align":16777216,"available_size":4278190080,"max_available_extent":4278190080,"type":"pmem"},
	  {"dev":"region1","size":2147352576,"align":16777216,"available_size":1056964608,"max_available_extent":1056964608,"type":"pmem",
	   "namespaces":[{"dev":"namespace1.0","mode":"fsdax","size":1054867456,"uuid":"5c161759-75b4-4633-913e-6b096d385297","blockdev":"pmem1","name":"someone"}]},
	  {"dev":"region2","size":1073741824,"align":16777216,"available_size":1073741824,"max_available_extent":1073741824,"type":"blk"}]}`
	sys := filepath.Join(t.TempDir(), "devices")
	if err := writeSysfs(sys, "region0/max_available_extent 4278190080\nregion1/max_available_extent 1056964608\n"+
		"namespace1.0/alt_name someone\nnamespace1.0/size 1073741824\nnamespace1.0/uuid 5c161759-75b4-4633-913e-6b096d385297\n"); err != nil {
		t.Fatal(err)
	}
	var created []string
	f := &exectest.Fake{Handler: func(_ context.Context, argv []string) (exectest.Response, bool) {
		switch {
		case reflect.DeepEqual(argv, []string{"ndctl", "list", "-R", "-N", "-i", "-v"}):
			return exectest.Response{Stdout: list}, true
		case argv[1] == "create-namespace":
			created = append(created, argv[3])
			return exectest.Response{Stdout: `{"dev":"namespace` + strings.TrimPrefix(argv[3], "region") + `.1","mode":"fsdax","size":` +
				fmt.Sprint(UsableBytes(mustInt(t, argv[11]))) + `,"blockdev":"pmemX","name":"` + argv[13] + `"}`}, true
		}
		return exectest.Response{}, false
	}}
	b, err := NewWithOptions(ctx, f, "all", AllRegions, capOwner, t.TempDir(), Options{Sysfs: sys})
	if err != nil {
		t.Fatal(err)
	}
	b.wipe = func(string, int64) error { return nil }
	if !reflect.DeepEqual(b.Regions(), []string{"region0", "region1"}) {
		t.Fatalf("regions %v", b.Regions())
	}
	for i, size := range []int64{500 << 20, 2000 << 20, 900 << 20} {
		name := fmt.Sprintf("pvc-all-%d", i)
		if _, err := b.Create(ctx, backend.CreateRequest{ID: names.VolumeID(name), Name: name, SizeBytes: size}); err != nil {
			t.Fatal(err)
		}
	}
	// 500 MiB (512 MiB raw) and 900 MiB (928 MiB raw) fit region1's 1008 MiB
	// extent (the fake sysfs is not updated, so both land there); 2000 MiB
	// fits only region0.
	if want := []string{"region1", "region0", "region1"}; !reflect.DeepEqual(created, want) {
		t.Errorf("regions chosen %v, want %v", created, want)
	}
	n := len(f.Log)
	if _, err := b.Create(ctx, backend.CreateRequest{ID: capBigID, Name: capBigName, SizeBytes: 5 << 30}); !errors.Is(err, backend.ErrNoSpace) || len(f.Log) != n {
		t.Errorf("too big for every region: %v, %d commands", err, len(f.Log)-n)
	}
}

func mustInt(t *testing.T, s string) int64 {
	t.Helper()
	var n int64
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A driver killed after create-namespace (before the wipe, or inside ndctl,
// leaving a raw namespace) leaves a namespace whose record is pending: the
// retried Create destroys it and makes it anew, wiped, instead of answering
// that it exists (which handed out an unwiped device showing an earlier
// volume's filesystem, or a raw namespace Activate refuses forever).
func TestCreateRetryRemakesInterrupted(t *testing.T) {
	for _, raw := range []bool{false, true} {
		t.Run(fmt.Sprintf("raw=%v", raw), func(t *testing.T) {
			fx := replay(t, "create-killed") // create-namespace of capKillID, then its destroy
			create, destroy := fx.calls[0], fx.calls[1]
			create.Note = ""
			left := create.Sysfs // the namespace as the killed create left it
			if raw {
				left = strings.Replace(left, "namespace0.0/holder pfn0.6", "namespace0.0/holder ", 1)
				left = strings.Replace(left, "namespace0.0/mode memory", "namespace0.0/mode raw", 1)
			}
			if err := writeSysfs(fx.sys, left); err != nil {
				t.Fatal(err)
			}
			fx.calls = []capCall{destroy, create}
			b := fx.backend()
			if err := b.idx.put(capKillID, record{Name: capKillName, Pending: true}); err != nil {
				t.Fatal(err)
			}
			v, err := b.Create(ctx, backend.CreateRequest{ID: capKillID, Name: capKillName, SizeBytes: 62 << 20})
			if err != nil {
				t.Fatalf("retried Create: %v", err)
			}
			if len(fx.fake.Log) != 2 || fx.fake.Log[0][1] != "destroy-namespace" || fx.fake.Log[1][1] != "create-namespace" {
				t.Errorf("commands %q: want the interrupted namespace destroyed, then created anew", fx.fake.Log)
			}
			if want := []string{fmt.Sprintf("%s:%d", v.DevicePath, v.SizeBytes)}; !reflect.DeepEqual(fx.wiped, want) {
				t.Errorf("wiped %q, want %q", fx.wiped, want)
			}
			if rec, ok, _ := b.idx.get(capKillID); !ok || rec.Pending || rec.Name != capKillName {
				t.Errorf("record after the finished create: %+v (found %v), want not pending", rec, ok)
			}
		})
	}
}

// A finished volume (record not pending) is never remade by a retried Create.
func TestCreateRetryKeepsFinished(t *testing.T) {
	fx := replay(t, "create-killed")
	if err := writeSysfs(fx.sys, fx.calls[0].Sysfs); err != nil {
		t.Fatal(err)
	}
	fx.calls = nil
	b := fx.backend()
	if err := b.idx.put(capKillID, record{Name: capKillName}); err != nil {
		t.Fatal(err)
	}
	_, err := b.Create(ctx, backend.CreateRequest{ID: capKillID, Name: capKillName, SizeBytes: 62 << 20})
	if !errors.Is(err, backend.ErrExists) || len(fx.fake.Log) != 0 || len(fx.wiped) != 0 {
		t.Errorf("err = %v, commands %q, wiped %q; want ErrExists and nothing run", err, fx.fake.Log, fx.wiped)
	}
}

// The kernel refusing to enable a new namespace's fsdax device (ndctl: "No such
// device or address", exit 250) is not a missing region: the region was read
// from sysfs a moment ago. Retrying the same node cannot help, so the error is
// ErrDegraded (ResourceExhausted: the provisioner reschedules), never
// ErrUnavailable (which callers retry forever), and nothing is left behind.
func TestCreateENXIO(t *testing.T) {
	fx := replay(t, "create-enxio")
	b := fx.backend()
	v, err := b.Create(ctx, backend.CreateRequest{ID: capBigID, Name: capBigName, SizeBytes: 1 << 30})
	fx.check(v, err)
	if !errors.Is(err, backend.ErrDegraded) || errors.Is(err, backend.ErrUnavailable) {
		t.Errorf("err = %v, want ErrDegraded and not ErrUnavailable", err)
	}
	if strings.Contains(err.Error(), "no such region") {
		t.Errorf("err = %v names a cause it does not know", err)
	}
	if _, ok, _ := b.idx.get(capBigID); ok {
		t.Error("record of the volume that was not created is left")
	}
}

// ndctl JSON with a notice line inside or before it parses as without it.
func TestParseAroundNotices(t *testing.T) {
	clean := "{\n  \"regions\":[\n    {\n      \"dev\":\"region0\",\n      \"size\":4294836224,\n      \"available_size\":4278190080\n    }\n  ]\n}\n"
	noisy := "{\n  \"regions\":[\n  WARNING: a notice\n    {\n      \"dev\":\"region0\",\n      \"size\":4294836224,\n      \"available_size\":4278190080\n    }\n  ]\n}\n"
	want, err := parseRegions([]byte(clean))
	if err != nil || len(want) != 1 {
		t.Fatal(want, err)
	}
	got, err := parseRegions([]byte(noisy))
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("parseRegions(noisy) = %+v, %v; want %+v", got, err, want)
	}
	ns, err := parseNamespace([]byte("note: something\n{\n  \"dev\":\"namespace0.1\",\n  \"mode\":\"fsdax\"\n}\n"))
	if err != nil || ns.Dev != "namespace0.1" {
		t.Errorf("parseNamespace = %+v, %v", ns, err)
	}
}

// An ndctl list killed because the caller gave up (a probe's timeout, issue 11) says nothing
// about the region: the error carries context.Canceled, not ErrUnavailable.
func TestCapacityCallerGaveUp(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fake := &exectest.Fake{Handler: func(context.Context, []string) (exectest.Response, bool) {
		return exectest.Response{Hook: func(ctx context.Context) error {
			cancel()
			return fmt.Errorf("%w (signal: killed)", ctx.Err())
		}}, true
	}}
	state := t.TempDir()
	b := &Backend{runner: fake, pool: capPool, region: "region0", regions: []string{"region0"},
		align: map[string]int64{"region0": 16 << 20}, owner: capOwner, idx: &index{dir: state}, sys: sysfs{root: state}}
	_, err := b.Capacity(ctx)
	if !errors.Is(err, context.Canceled) || errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("Capacity = %v: want errors.Is context.Canceled and not ErrUnavailable", err)
	}
}
