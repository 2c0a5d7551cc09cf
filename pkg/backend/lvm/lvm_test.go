package lvm

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/errcode"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/exec/exectest"
)

// Unit tests: exectest.Fake replays the real lvm2 runs in testdata/ (see
// capture_test.go) and every test requires that the backend issues exactly the
// recorded commands, in order, and nothing else.

func loadCalls(t *testing.T, scenarios ...string) []capCall {
	t.Helper()
	var all []capCall
	for _, s := range scenarios {
		c, err := readCapture(filepath.Join("testdata", s+".txt"))
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, c...)
	}
	return all
}

// replay returns a Fake that answers the captured calls of the scenarios in
// order. (A Handler, because Fake.Expect splits argv on spaces and our -S
// selections contain spaces.)
func replay(t *testing.T, scenarios ...string) *exectest.Fake {
	t.Helper()
	return replayCalls(t, loadCalls(t, scenarios...))
}

func replayCalls(t *testing.T, calls []capCall) *exectest.Fake {
	t.Helper()
	var mu sync.Mutex
	f := &exectest.Fake{}
	f.Handler = func(ctx context.Context, argv []string) (exectest.Response, bool) {
		mu.Lock()
		defer mu.Unlock()
		if len(calls) == 0 || !reflect.DeepEqual(calls[0].Argv, argv) {
			if len(calls) > 0 {
				t.Errorf("command %q\n   want %q", argv, calls[0].Argv)
			} else {
				t.Errorf("unexpected command %q", argv)
			}
			return exectest.Response{}, false
		}
		c := calls[0]
		calls = calls[1:]
		return exectest.Response{Stdout: c.Stdout, Stderr: c.Stderr, ExitCode: c.RC}, true
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range calls {
			t.Errorf("expected command not issued: %q", c.Argv)
		}
	})
	return f
}

// newBackend replays "new" (New's vgs) followed by the scenarios.
func newBackend(t *testing.T, scenarios ...string) (*Backend, *exectest.Fake) {
	t.Helper()
	f := replay(t, append([]string{"new"}, scenarios...)...)
	b, err := New(context.Background(), f, capPool, capVG, capOwner)
	if err != nil {
		t.Fatal(err)
	}
	return b, f
}

// bareBackend skips New (for a VG that does not exist).
func bareBackend(r exec.Runner, vg string) *Backend {
	return &Backend{runner: r, pool: capPool, vg: vg, owner: TagOwner + "=" + capOwner, extentBytes: 4 << 20, devExists: func(string) bool { return false }}
}

func wantIs(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v: want errors.Is(%v)", err, target)
	}
}

// wantExecError checks that the *exec.Error (command and stderr) survives wrapping.
func wantExecError(t *testing.T, err error, rc int, stderr string) {
	t.Helper()
	var e *exec.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v carries no *exec.Error", err)
	}
	if e.ExitCode != rc || !strings.Contains(e.Stderr, stderr) {
		t.Fatalf("exec error rc %d stderr %q, want rc %d and %q", e.ExitCode, e.Stderr, rc, stderr)
	}
	if !strings.Contains(err.Error(), stderr) {
		t.Fatalf("error text %q lacks lvm's message %q", err, stderr)
	}
}

func TestNew(t *testing.T) {
	b, f := newBackend(t)
	if b.Type() != "lvm" || b.AlignBytes() != 4194304 || b.VG() != capVG || b.OwnerTag() != "carve.owner=carve.csi.dev" {
		t.Fatalf("backend %+v", b)
	}
	if len(f.Log) != 1 {
		t.Fatalf("New ran %d commands, want 1 vgs", len(f.Log))
	}
}

func TestNewMissingVG(t *testing.T) {
	f := replay(t, "new-missing-vg")
	_, err := New(context.Background(), f, capPool, "carvemissing", capOwner)
	wantIs(t, err, backend.ErrUnavailable)
	wantExecError(t, err, 5, `Volume group "carvemissing" not found`)
	if !strings.Contains(err.Error(), `"carvemissing"`) {
		t.Errorf("error does not name the VG: %v", err)
	}
}

func TestNewRejectsBadArguments(t *testing.T) {
	f := &exectest.Fake{}
	ctx := context.Background()
	for _, c := range []struct{ vg, owner string }{
		{"", capOwner}, {"-vg", capOwner}, {"vg/x", capOwner}, {"vg x", capOwner},
		{capVG, ""}, {capVG, "a}b"}, {capVG, "a b"}, {capVG, "a&&b"}, {capVG, "a,b"}, {capVG, strings.Repeat("a", 64)},
	} {
		if _, err := New(ctx, f, capPool, c.vg, c.owner); err == nil {
			t.Errorf("New(vg %q, owner %q) succeeded", c.vg, c.owner)
		}
	}
	if _, err := New(ctx, nil, capPool, capVG, capOwner); err == nil {
		t.Error("New with nil runner succeeded")
	}
	if len(f.Log) != 0 {
		t.Errorf("ran %q before validating", f.Log)
	}
}

func TestCreate(t *testing.T) {
	b, f := newBackend(t, "create")
	vol, err := b.Create(context.Background(), backend.CreateRequest{ID: capID, Name: capName, SizeBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	want := backend.Volume{ID: capID, Name: capName, Pool: capPool, SizeBytes: 1 << 30, DevicePath: "/dev/carvevg/" + capID}
	if *vol != want {
		t.Fatalf("got %+v\nwant %+v", *vol, want)
	}
	if len(f.Log) != 2 {
		t.Fatalf("ran %q: the success path must be New's vgs + one lvcreate", f.Log)
	}
}

func TestCreateAlignsUp(t *testing.T) {
	// 1 GiB - 1000 rounds up to the extent multiple the capture asked for.
	b, _ := newBackend(t, "create")
	vol, err := b.Create(context.Background(), backend.CreateRequest{ID: capID, Name: capName, SizeBytes: 1<<30 - 1000})
	if err != nil {
		t.Fatal(err)
	}
	if vol.SizeBytes != 1<<30 {
		t.Fatalf("size %d", vol.SizeBytes)
	}
}

func TestCreateEphemeralAndLongTags(t *testing.T) {
	b, _ := newBackend(t, "create-ephemeral", "create-long", "get-ephemeral", "get-long")
	ctx := context.Background()
	reqs := []backend.CreateRequest{
		{ID: capEphID, Name: capEphName, SizeBytes: 100 << 20, Ephemeral: true, TargetPath: capEphTarget},
		{ID: capLongID, Name: capLongName, SizeBytes: 4 << 20, Ephemeral: true, TargetPath: capLongTgt},
	}
	for _, r := range reqs {
		vol, err := b.Create(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		if vol.Name != r.Name || !vol.Ephemeral || vol.TargetPath != r.TargetPath {
			t.Fatalf("create returned %+v", vol)
		}
	}
	// What lvm stored decodes back to the same request.
	for _, r := range reqs {
		vol, err := b.Get(ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		want := backend.Volume{ID: r.ID, Name: r.Name, Pool: capPool, SizeBytes: r.SizeBytes, DevicePath: "/dev/carvevg/" + r.ID, Ephemeral: true, TargetPath: r.TargetPath}
		if *vol != want {
			t.Fatalf("got %+v\nwant %+v", *vol, want)
		}
	}
}

func TestCreateExists(t *testing.T) {
	b, f := newBackend(t, "create-exists")
	_, err := b.Create(context.Background(), backend.CreateRequest{ID: capID, Name: capName, SizeBytes: 1 << 30})
	wantIs(t, err, backend.ErrExists)
	wantExecError(t, err, 5, `Logical Volume "`+capID+`" already exists in volume group "carvevg"`)
	if len(f.Log) != 2 {
		t.Fatalf("ran %q: an existing LV must be left alone (no cleanup)", f.Log)
	}
}

func TestCreateNoSpace(t *testing.T) {
	b, f := newBackend(t, "create-nospace")
	_, err := b.Create(context.Background(), backend.CreateRequest{ID: capMissing, Name: "pvc-never-created", SizeBytes: 5 << 30})
	wantIs(t, err, backend.ErrNoSpace)
	wantExecError(t, err, 5, `Volume group "carvevg" has insufficient free space (229 extents): 1280 required.`)
	if errors.Is(err, backend.ErrExists) || errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("error matches too many sentinels: %v", err)
	}
	if len(f.Log) != 2 {
		t.Fatalf("ran %q: lvm allocated nothing, nothing to clean up", f.Log)
	}
}

// TestCreateKilledCleansUp: lvcreate is killed by the context after it may
// have committed the LV; Create removes the LV (selected by name and our
// tags) on a context that is still alive.
func TestCreateKilledCleansUp(t *testing.T) {
	calls := loadCalls(t, "create-killed") // [0] lvcreate (really succeeded), [1] the cleanup lvremove
	b, _ := newBackend(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := &exectest.Fake{}
	f.Expect(strings.Join(calls[0].Argv, " "), exectest.Response{Hook: func(ctx context.Context) error {
		cancel() // the caller gives up while lvcreate runs
		<-ctx.Done()
		return ctx.Err()
	}})
	cleaned := false
	f.Handler = func(hctx context.Context, argv []string) (exectest.Response, bool) {
		if !reflect.DeepEqual(argv, calls[1].Argv) {
			t.Errorf("unexpected command %q\nwant %q", argv, calls[1].Argv)
			return exectest.Response{}, false
		}
		if hctx.Err() != nil {
			t.Errorf("cleanup ran on a dead context: %v", hctx.Err())
		}
		cleaned = true
		return exectest.Response{Stdout: calls[1].Stdout}, true
	}
	b.runner = f
	_, err := b.Create(ctx, backend.CreateRequest{ID: capKillID, Name: capKillName, SizeBytes: 8 << 20})
	wantIs(t, err, context.Canceled)
	if errors.Is(err, backend.ErrExists) {
		t.Fatalf("error %v", err)
	}
	if !cleaned {
		t.Fatal("the half-made LV was not removed")
	}
	if p := f.Pending(); len(p) != 0 {
		t.Fatalf("pending %v", p)
	}
}

// Any other lvcreate failure also cleans up; when the cleanup fails too, both
// errors are reported.
func TestCreateOtherFailureCleanupFails(t *testing.T) {
	calls := loadCalls(t, "create-killed")
	b, _ := newBackend(t)
	f := &exectest.Fake{}
	f.Handler = func(ctx context.Context, argv []string) (exectest.Response, bool) {
		switch {
		case reflect.DeepEqual(argv, calls[0].Argv):
			return exectest.Response{ExitCode: 5, Stderr: "  Failed to write VG carvevg.\n"}, true
		case reflect.DeepEqual(argv, calls[1].Argv):
			return exectest.Response{ExitCode: 5, Stderr: "  Volume group \"carvevg\" not found\n"}, true
		}
		t.Errorf("unexpected %q", argv)
		return exectest.Response{}, false
	}
	b.runner = f
	_, err := b.Create(context.Background(), backend.CreateRequest{ID: capKillID, Name: capKillName, SizeBytes: 8 << 20})
	if err == nil || !strings.Contains(err.Error(), "Failed to write VG") || !strings.Contains(err.Error(), "removing what it may have left") {
		t.Fatalf("error %v", err)
	}
	if errors.Is(err, backend.ErrNoSpace) || errors.Is(err, backend.ErrExists) {
		t.Fatalf("error %v", err)
	}
	if len(f.Log) != 2 {
		t.Fatalf("ran %q", f.Log)
	}
}

func TestGet(t *testing.T) {
	b, f := newBackend(t, "get")
	vol, err := b.Get(context.Background(), capID)
	if err != nil {
		t.Fatal(err)
	}
	want := backend.Volume{ID: capID, Name: capName, Pool: capPool, SizeBytes: 1 << 30, DevicePath: "/dev/carvevg/" + capID}
	if *vol != want {
		t.Fatalf("got %+v\nwant %+v", *vol, want)
	}
	if len(f.Log) != 2 {
		t.Fatalf("ran %q", f.Log)
	}
}

func TestGetNotOwned(t *testing.T) {
	b, _ := newBackend(t, "get-foreign", "get-other-owner")
	for _, id := range []string{capForeign, capOther} {
		_, err := b.Get(context.Background(), id)
		wantIs(t, err, backend.ErrNotOwned)
		if errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("%v", err)
		}
	}
}

func TestGetMissing(t *testing.T) {
	b, _ := newBackend(t, "get-missing")
	_, err := b.Get(context.Background(), capMissing)
	wantIs(t, err, backend.ErrNotFound)
	wantExecError(t, err, 5, `Failed to find logical volume "carvevg/`+capMissing+`"`)
}

func TestGetMissingVG(t *testing.T) {
	b := bareBackend(replay(t, "get-missing-vg"), "carvemissing")
	_, err := b.Get(context.Background(), capID)
	wantIs(t, err, backend.ErrUnavailable)
	if errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("a missing VG is not a missing volume: %v", err)
	}
	wantExecError(t, err, 5, `Volume group "carvemissing" not found`)
}

func TestList(t *testing.T) {
	b, f := newBackend(t, "list")
	vols, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	checkListed(t, vols)
	if len(f.Log) != 2 {
		t.Fatalf("ran %q: List is one lvs", f.Log)
	}
}

// Even if lvm ignored the selection, foreign LVs would not be listed.
func TestListFiltersForeign(t *testing.T) {
	list := loadCalls(t, "list")
	all := loadCalls(t, "lvs-all")
	list[0].Stdout = all[0].Stdout
	b, _ := newBackend(t)
	b.runner = replayCalls(t, list)
	vols, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	checkListed(t, vols)
}

func checkListed(t *testing.T, vols []backend.Volume) {
	t.Helper()
	want := []backend.Volume{
		{ID: capEphID, Name: capEphName, Pool: capPool, SizeBytes: 100 << 20, DevicePath: "/dev/carvevg/" + capEphID, Ephemeral: true, TargetPath: capEphTarget},
		{ID: capLongID, Name: capLongName, Pool: capPool, SizeBytes: 4 << 20, DevicePath: "/dev/carvevg/" + capLongID, Ephemeral: true, TargetPath: capLongTgt},
		{ID: capID, Name: capName, Pool: capPool, SizeBytes: 1 << 30, DevicePath: "/dev/carvevg/" + capID},
	}
	if !reflect.DeepEqual(vols, want) {
		t.Fatalf("listed %+v\nwant %+v", vols, want)
	}
}

func TestListEmptyAndDamagedTags(t *testing.T) {
	list := loadCalls(t, "list")
	b, _ := newBackend(t)
	list[0].Stdout = `{"report":[{"lv":[]}]}`
	b.runner = replayCalls(t, list)
	vols, err := b.List(context.Background())
	if err != nil || vols == nil || len(vols) != 0 {
		t.Fatalf("List = %v, %v; want empty non-nil", vols, err)
	}
	// An owned LV whose name tag was damaged is still listed (so it can be
	// cleaned up), with what could be decoded.
	list = loadCalls(t, "list")
	list[0].Stdout = `{"report":[{"lv":[{"lv_name":"` + capID + `", "vg_name":"carvevg", "lv_size":"4194304", "lv_tags":"carve.name=%%%,carve.owner=carve.csi.dev", "lv_path":""}]}]}`
	b.runner = replayCalls(t, list)
	vols, err = b.List(context.Background())
	if err != nil || len(vols) != 1 || vols[0].ID != capID || vols[0].DevicePath != "/dev/carvevg/"+capID {
		t.Fatalf("List = %+v, %v", vols, err)
	}
}

func TestCapacity(t *testing.T) {
	b, _ := newBackend(t, "capacity-empty", "capacity")
	ctx := context.Background()
	c, err := b.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := backend.Capacity{TotalBytes: 2143289344, FreeBytes: 2143289344, MaxVolumeBytes: 2143289344, AlignBytes: 4194304}
	if c != want {
		t.Fatalf("got %+v want %+v", c, want)
	}
	c, err = b.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// 511 extents - 1 GiB (256) - 100 MiB (25) - 4 MiB (1) - 100 MiB foreign (25) - 2 x 8 MiB foreign (4) = 200
	want = backend.Capacity{TotalBytes: 2143289344, FreeBytes: 200 * 4194304, MaxVolumeBytes: 200 * 4194304, AlignBytes: 4194304}
	if c != want {
		t.Fatalf("got %+v want %+v", c, want)
	}
}

func TestExpand(t *testing.T) {
	b, f := newBackend(t, "expand", "expand-noop")
	ctx := context.Background()
	vol, err := b.Expand(ctx, capEphID, 200<<20)
	if err != nil {
		t.Fatal(err)
	}
	if vol.SizeBytes != 200<<20 || vol.Name != capEphName || !vol.Ephemeral {
		t.Fatalf("expanded %+v", vol)
	}
	vol, err = b.Expand(ctx, capEphID, 200<<20-4096) // already big enough: Get only
	if err != nil || vol.SizeBytes != 200<<20 {
		t.Fatalf("%+v %v", vol, err)
	}
	if len(f.Log) != 4 {
		t.Fatalf("ran %q", f.Log)
	}
}

func TestExpandErrors(t *testing.T) {
	b, f := newBackend(t, "expand-nospace", "expand-foreign", "get-missing")
	ctx := context.Background()
	_, err := b.Expand(ctx, capEphID, 100<<30)
	wantIs(t, err, backend.ErrNoSpace)
	wantExecError(t, err, 5, "Insufficient free space: 25550 extents needed, but only 175 available")

	n := len(f.Log)
	_, err = b.Expand(ctx, capForeign, 100<<20)
	wantIs(t, err, backend.ErrNotOwned)
	if len(f.Log) != n+1 {
		t.Fatalf("ran %q after the ownership check", f.Log[n:])
	}
	_, err = b.Expand(ctx, capMissing, 100<<20)
	wantIs(t, err, backend.ErrNotFound)
}

func TestMapErrorLvextendMissing(t *testing.T) {
	c := loadCalls(t, "expand-missing-lvextend")[0]
	b := bareBackend(nil, capVG)
	err := b.mapError("expand", capMissing, &exec.Error{Cmd: c.Argv, ExitCode: c.RC, Stderr: c.Stderr, Err: errors.New("exit status 5")})
	wantIs(t, err, backend.ErrNotFound)
	wantExecError(t, err, 5, "not found in volume group carvevg")
}

func TestDelete(t *testing.T) {
	b, f := newBackend(t, "delete")
	if err := b.Delete(context.Background(), capID); err != nil {
		t.Fatal(err)
	}
	if len(f.Log) != 2 {
		t.Fatalf("ran %q: Delete is one lvremove", f.Log)
	}
}

func TestDeleteMissing(t *testing.T) {
	b, _ := newBackend(t, "delete-missing")
	err := b.Delete(context.Background(), capID)
	wantIs(t, err, backend.ErrNotFound)
}

func TestDeleteRefusesForeign(t *testing.T) {
	b, _ := newBackend(t, "delete-foreign", "delete-other-owner")
	for _, id := range []string{capForeign, capOther} {
		err := b.Delete(context.Background(), id)
		wantIs(t, err, backend.ErrNotOwned)
	}
}

func TestDeleteMissingVG(t *testing.T) {
	b := bareBackend(replay(t, "lvremove-missing-vg"), "carvemissing")
	err := b.Delete(context.Background(), capID)
	wantIs(t, err, backend.ErrUnavailable)
	wantExecError(t, err, 5, `Volume group "carvemissing" not found`)
}

func TestActivate(t *testing.T) {
	ctx := context.Background()
	dev := "/dev/carvevg/" + capID

	// Device present: no command at all.
	b, f := newBackend(t)
	b.devExists = func(p string) bool { return p == dev }
	if p, err := b.Activate(ctx, capID); err != nil || p != dev {
		t.Fatalf("%q %v", p, err)
	}
	if len(f.Log) != 1 {
		t.Fatalf("ran %q", f.Log)
	}

	// Device missing: Get (ownership), lvchange -ay -K, device appears.
	b, _ = newBackend(t, "activate")
	activated := false
	b.devExists = func(p string) bool { return activated }
	b.runner.(*exectest.Fake).Handler = wrapHandler(b.runner.(*exectest.Fake).Handler, func(argv []string) {
		if argv[1] == "lvchange" {
			activated = true
		}
	})
	if p, err := b.Activate(ctx, capID); err != nil || p != dev {
		t.Fatalf("%q %v", p, err)
	}

	// Device still missing after lvchange (activation = 0, as in the capture).
	b, _ = newBackend(t, "activate")
	_, err := b.Activate(ctx, capID)
	wantIs(t, err, backend.ErrUnavailable)

	// Not ours: no lvchange.
	b, f = newBackend(t, "activate-foreign")
	b.devExists = func(string) bool { return false }
	_, err = b.Activate(ctx, capForeign)
	wantIs(t, err, backend.ErrNotOwned)
	if len(f.Log) != 2 {
		t.Fatalf("ran %q", f.Log)
	}
}

func wrapHandler(h func(context.Context, []string) (exectest.Response, bool), seen func([]string)) func(context.Context, []string) (exectest.Response, bool) {
	return func(ctx context.Context, argv []string) (exectest.Response, bool) {
		seen(argv)
		return h(ctx, argv)
	}
}

func TestInvalidIDsRunNothing(t *testing.T) {
	f := &exectest.Fake{}
	b := bareBackend(f, capVG)
	ctx := context.Background()
	for _, id := range []string{"", "foreign", "carve-x", "carve-0123456789ABCDEF", "../carve-0123456789abcdef", "carve-a b-0123456789abcdef",
		"carvevg/carve-0123456789abcdef", "carve-" + strings.Repeat("a", 41) + "-0123456789abcdef", "-carve-0123456789abcdef"} {
		if _, err := b.Create(ctx, backend.CreateRequest{ID: id, Name: "x", SizeBytes: 1 << 20}); err == nil || !strings.Contains(err.Error(), "invalid volume id") {
			t.Errorf("Create(%q): %v", id, err)
		}
		if err := b.Delete(ctx, id); err == nil {
			t.Errorf("Delete(%q) succeeded", id)
		}
		if _, err := b.Expand(ctx, id, 1<<20); err == nil {
			t.Errorf("Expand(%q) succeeded", id)
		}
		if _, err := b.Get(ctx, id); err == nil {
			t.Errorf("Get(%q) succeeded", id)
		}
		if _, err := b.Activate(ctx, id); err == nil {
			t.Errorf("Activate(%q) succeeded", id)
		}
	}
	if _, err := b.Create(ctx, backend.CreateRequest{ID: capID, Name: "x"}); err == nil {
		t.Error("Create with size 0 succeeded")
	}
	if len(f.Log) != 0 {
		t.Fatalf("ran %q", f.Log)
	}
}

// lvm(8): tags may contain [A-Za-z0-9_+.-/=!:&#] and hold at most 1024 characters.
var lvmTagPattern = regexp.MustCompile(`^[A-Za-z0-9_+.\-/=!:&#]+$`)

func TestTagsRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	odd := []string{
		"", "a", "pvc-0a1b2c3d-4e5f-6789-abcd-ef0123456789", "with space", "comma,inside", "equals=sign", "slash/and\\back",
		"{braces}&&||!", "ünïcödé ✓ 名前", "\x00\x01\xff bytes", "-leading-dash", strings.Repeat("x", 757),
		strings.Repeat("y", 758), strings.Repeat("z", 759), strings.Repeat("é/", 2048),
	}
	for i, name := range odd {
		for _, target := range []string{"", "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/v/mount", capLongTgt, "/" + odd[(i+3)%len(odd)]} {
			for _, eph := range []bool{false, true} {
				tags := Tags("carve.owner=carve.csi.dev", name, eph, target)
				if tags[0] != "carve.owner=carve.csi.dev" {
					t.Fatalf("owner tag must come first: %q", tags)
				}
				for _, tag := range tags {
					if !lvmTagPattern.MatchString(tag) || len(tag) > MaxTagLen {
						t.Fatalf("tag %q (%d chars) is not a valid LVM tag", tag, len(tag))
					}
				}
				// lvm reports tags sorted and comma-joined; order must not matter.
				shuffled := append([]string(nil), tags...)
				rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
				info, err := ParseTags(strings.Join(append(shuffled, "someone.else=tag"), ","))
				if err != nil {
					t.Fatal(err)
				}
				want := TagInfo{Owner: "carve.csi.dev", Name: name, Ephemeral: eph, TargetPath: target}
				if info != want {
					t.Fatalf("round trip of %q/%q: got %+v", name, target, info)
				}
			}
		}
	}
}

func TestParseTagsDamaged(t *testing.T) {
	for _, tags := range []string{
		"carve.owner=x,carve.name=%%%",
		"carve.owner=x,carve.target.0=YWJj,carve.target.2=YWJj", // chunk 1 missing
	} {
		info, err := ParseTags(tags)
		if err == nil {
			t.Errorf("ParseTags(%q) = %+v, want error", tags, info)
		}
		if info.Owner != "x" {
			t.Errorf("ParseTags(%q) lost the owner: %+v", tags, info)
		}
	}
	if info, err := ParseTags(""); err != nil || info != (TagInfo{}) {
		t.Errorf("ParseTags(\"\") = %+v, %v", info, err)
	}
}

func TestNumAcceptsStringsAndNumbers(t *testing.T) {
	for _, out := range []string{
		`{"report":[{"vg":[{"vg_name":"carvevg","vg_size":"2143289344","vg_free":"4194304","vg_extent_size":"4194304","vg_free_count":"1","vg_missing_pv_count":"0"}]}]}`,
		`{"report":[{"vg":[{"vg_name":"carvevg","vg_size":2143289344,"vg_free":4194304,"vg_extent_size":4194304,"vg_free_count":1,"vg_missing_pv_count":0}]}]}`, // json_std
	} {
		f := &exectest.Fake{}
		f.Handler = func(context.Context, []string) (exectest.Response, bool) { return exectest.Response{Stdout: out}, true }
		c, err := bareBackend(f, capVG).Capacity(context.Background())
		if err != nil || c.FreeBytes != 4194304 || c.TotalBytes != 2143289344 || c.MaxVolumeBytes != 4194304 {
			t.Fatalf("%+v %v", c, err)
		}
	}
}

// Removing a mounted LV fails; the e2e suite (test/e2e, scenario 10) checks
// the message on real device-mapper, where this text comes from.
func TestDeleteOfAnLVInUse(t *testing.T) {
	f := &exectest.Fake{}
	id := "carve-pvc-1-0123456789abcdef"
	f.ExpectArgv([]string{"lvm", "lvremove", "-f", "-S", "lv_name=" + id + " && lv_tags={" + TagOwner + "=" + capOwner + "}", "carvevg"},
		exectest.Response{ExitCode: 5, Stderr: "  Logical volume carvevg/" + id + " contains a filesystem in use.\n"})
	err := bareBackend(f, "carvevg").Delete(context.Background(), id)
	if !errors.Is(err, backend.ErrInUse) || !strings.Contains(err.Error(), "filesystem in use") {
		t.Fatalf("delete of a mounted LV: %v", err)
	}
}

// lvm2 printed its archive advice ("Consider pruning carvevg VG archive ...")
// on stdout inside the vgs JSON report (lvmteam/lvm2#137, recorded with 9000
// files in the archive and the backup removed): start-up (New) and Capacity
// must read the report around it. Before the fix both failed with "invalid
// character 'C' looking for beginning of value".
func TestArchiveAdviceInReport(t *testing.T) {
	for _, c := range loadCalls(t, "new-archive", "capacity-archive") {
		if !strings.Contains(c.Stdout, "Consider pruning carvevg VG archive") {
			t.Fatalf("capture lost the advice: %q", c.Stdout)
		}
	}
	f := replay(t, "new-archive", "capacity-archive")
	b, err := New(context.Background(), f, capPool, capVG, capOwner)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	c, err := b.Capacity(context.Background())
	if err != nil || c.TotalBytes != 2143289344 || c.FreeBytes != 1807745024 || c.MaxVolumeBytes != 1807745024 || c.AlignBytes != 4194304 {
		t.Fatalf("Capacity = %+v, %v", c, err)
	}
}

// A VG with a missing PV (recorded: two PVs, one hidden from lvm): lvm
// refuses lvcreate and lvextend, so Capacity says degraded with no space,
// Create and Expand fail with ErrDegraded (ResourceExhausted: the provisioner
// reschedules, the node agent stops retrying), the LV on the lost PV reports
// its condition, and delete still works. New (start-up) still succeeds: the
// node must serve its other volumes.
func TestMissingPV(t *testing.T) {
	ctx := context.Background()
	f := replay(t, "new-missing-pv", "capacity-missing-pv", "create-missing-pv", "expand-missing-pv",
		"get-missing-pv", "list-missing-pv", "delete-missing-pv")
	b, err := New(ctx, f, capPool, capMissVG, capOwner)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	c, err := b.Capacity(ctx)
	wantIs(t, err, backend.ErrDegraded)
	if c.FreeBytes != 0 || c.MaxVolumeBytes != 0 || c.TotalBytes <= 0 || !strings.Contains(err.Error(), "missing 1 physical volume") {
		t.Errorf("Capacity = %+v, %v", c, err)
	}
	_, err = b.Create(ctx, backend.CreateRequest{ID: capMissNew, Name: "pvc-after-loss", SizeBytes: 8 << 20})
	wantIs(t, err, backend.ErrDegraded)
	if errcode.Of(err) != codes.ResourceExhausted {
		t.Errorf("Create: code %v", errcode.Of(err))
	}
	_, err = b.Expand(ctx, capOnKept, 128<<20)
	wantIs(t, err, backend.ErrDegraded)
	v, err := b.Get(ctx, capOnLost)
	if err != nil || !strings.Contains(v.Condition, "partial") {
		t.Errorf("Get(on lost PV) = %+v, %v: want a partial condition", v, err)
	}
	vols, err := b.List(ctx)
	if err != nil || len(vols) != 2 {
		t.Fatalf("List = %+v, %v", vols, err)
	}
	for _, v := range vols {
		if (v.ID == capOnLost) != (v.Condition != "") {
			t.Errorf("List: %s has condition %q", v.ID, v.Condition)
		}
	}
	if err := b.Delete(ctx, capOnLost); err != nil {
		t.Errorf("Delete(on lost PV): %v", err)
	}
}

// Only lvm's own error lines decide, and only with its failure exit code: a
// WARNING that contains the words of another error, or the same text from a
// killed or crashed command, is no such error.
func TestClassifyIgnoresWarningsAndOtherExitCodes(t *testing.T) {
	e := func(rc int, stderr string) error {
		return &exec.Error{Cmd: []string{"lvm"}, ExitCode: rc, Stderr: stderr, Err: errors.New("exit")}
	}
	for _, c := range []struct {
		err  error
		want error
	}{
		{e(5, "  WARNING: PV /dev/sdb in use by another host.\n  Internal error: something"), nil},
		{e(5, "  WARNING: insufficient free space warning\n  Cannot process volume group carvevg"), nil},
		{e(-1, "  Volume group \"carvevg\" has insufficient free space (1 extents): 2 required."), nil},
		{e(5, "  Volume group \"carvevg\" has insufficient free space (1 extents): 2 required."), backend.ErrNoSpace},
		{e(5, "  Cannot change VG carvevg while PVs are missing.\n  See vgreduce --removemissing and vgextend --restoremissing."), backend.ErrDegraded},
		{e(5, "  Logical volume carvevg/x contains a filesystem in use."), backend.ErrInUse},
		{e(5, "  Volume group \"carvevg\" not found"), backend.ErrUnavailable},
		{e(5, "  Volume group \"other\" not found"), nil},
	} {
		got, _ := classify(c.err, capVG)
		if got != c.want {
			t.Errorf("classify(%q) = %v, want %v", exec.Stderr(c.err), got, c.want)
		}
	}
}

// A vgs killed because the caller gave up (kubelet's probe timeout on the real-node rig, issue
// 11) says nothing about the VG: the error carries the context's error, not ErrUnavailable.
func TestCapacityCallerGaveUp(t *testing.T) {
	for _, c := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"canceled", func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) }, context.Canceled},
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 20*time.Millisecond)
		}, context.DeadlineExceeded},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := c.ctx()
			defer cancel()
			f := &exectest.Fake{Handler: func(context.Context, []string) (exectest.Response, bool) {
				// As exec.Host reports a child killed for its context.
				return exectest.Response{Hook: func(ctx context.Context) error {
					if c.want == context.Canceled {
						cancel()
					}
					<-ctx.Done()
					return fmt.Errorf("%w (signal: killed)", ctx.Err())
				}}, true
			}}
			_, err := bareBackend(f, capVG).Capacity(ctx)
			if !errors.Is(err, c.want) || errors.Is(err, backend.ErrUnavailable) {
				t.Fatalf("Capacity = %v: want errors.Is %v and not ErrUnavailable", err, c.want)
			}
		})
	}
}

// DeleteInline is one lvremove whose selection carries the inline volume's
// whole tag set (recorded from real lvm2: testdata/delete-inline*.txt). lvm
// removes carve's inline LV of that name and target, long chunked tags
// included, and selects nothing for another target, a persistent volume of
// that name, LVs not carve's, or a volume already gone.
func TestDeleteInline(t *testing.T) {
	for _, tc := range []struct {
		scenario, id, name, target string
		removed                    bool
	}{
		{"delete-inline", capEphID, capEphName, capEphTarget, true},
		{"delete-inline-long", capLongID, capLongName, capLongTgt, true},
		{"delete-inline-other-target", capEphID, capEphName, capInlOtherTarget, false},
		{"delete-inline-persistent", capInlPersistID, capInlPersist, capEphTarget, false},
		{"delete-inline-foreign", capForeign, "csi-foreign", capEphTarget, false},
		{"delete-inline-other-owner", capOther, "csi-other", capEphTarget, false},
		{"delete-inline-missing", capEphID, capEphName, capEphTarget, false},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			b, f := newBackend(t, tc.scenario)
			removed, err := b.DeleteInline(context.Background(), tc.id, tc.name, tc.target)
			if err != nil || removed != tc.removed {
				t.Fatalf("DeleteInline = %v, %v; want %v, nil", removed, err, tc.removed)
			}
			if len(f.Log) != 2 { // New's vgs, then the one lvremove
				t.Fatalf("ran %d commands, want New's vgs and one lvremove: %q", len(f.Log), f.Log)
			}
		})
	}
}

// A missing VG fails DeleteInline as it fails Delete (lvm's answer to that
// lvremove, recorded in lvremove-missing-vg).
func TestDeleteInlineMissingVG(t *testing.T) {
	rec := loadCalls(t, "lvremove-missing-vg")[0]
	f := &exectest.Fake{Handler: func(ctx context.Context, argv []string) (exectest.Response, bool) {
		return exectest.Response{ExitCode: rec.RC, Stderr: rec.Stderr}, argv[1] == "lvremove"
	}}
	_, err := bareBackend(f, "carvemissing").DeleteInline(context.Background(), capEphID, capEphName, capEphTarget)
	wantIs(t, err, backend.ErrUnavailable)
}
