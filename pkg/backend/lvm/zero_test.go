package lvm

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/test/lvmtest"
)

// zeroRunner runs lvm for real (metadata only) and stands in for
// blkdiscard, which has no device to zero without device-mapper: it records
// the device and fails while fail is set (a create killed mid-zeroing).
type zeroRunner struct {
	exec.Runner
	mu     sync.Mutex
	zeroed []string
	fail   bool
	// failDeltag fails the lvchange that drops TagZeroing (lvm's exit code 5).
	failDeltag bool
}

func (z *zeroRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if name == "lvm" && len(args) > 2 && args[0] == "lvchange" && args[1] == "--deltag" && args[2] == TagZeroing {
		z.mu.Lock()
		fail := z.failDeltag
		z.mu.Unlock()
		if fail {
			return nil, &exec.Error{Cmd: append([]string{name}, args...), ExitCode: 5, Stderr: "  Failed to write VG carve.", Err: errors.New("exit status 5")}
		}
	}
	if name != "blkdiscard" {
		return z.Runner.Run(ctx, name, args...)
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.fail {
		return nil, &exec.Error{Cmd: append([]string{name}, args...), ExitCode: -1, Err: errors.New("signal: killed")}
	}
	z.zeroed = append(z.zeroed, strings.Join(args, " "))
	return nil, nil
}

func (z *zeroRunner) take() []string {
	z.mu.Lock()
	defer z.mu.Unlock()
	out := z.zeroed
	z.zeroed = nil
	return out
}

// TestRealZeroing: with zeroing on, a new LV is zeroed before Create
// returns; a create that dies while zeroing leaves the LV tagged, and its
// retry zeroes it before the volume is handed out; a retry of a finished
// create zeroes nothing.
func TestRealZeroing(t *testing.T) {
	v := lvmtest.NewVGInfo(t, 256<<20, "")
	ctx := context.Background()
	if on, err := ActivationEnabled(ctx, v.Runner); err != nil || on {
		t.Fatalf("ActivationEnabled on the metadata-only test VG = %v, %v; want false", on, err)
	}
	z := &zeroRunner{Runner: v.Runner}
	b, err := New(ctx, z, "p", v.Name, capOwner)
	if err != nil {
		t.Fatal(err)
	}
	b.EnableZeroing()
	tags := func(id string) string {
		t.Helper()
		vol, err := b.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		out, err := v.Runner.Run(ctx, "lvm", "lvs", "--noheadings", "-o", "lv_tags", v.Name+"/"+vol.ID)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	req := func(name string) backend.CreateRequest {
		return backend.CreateRequest{ID: names.VolumeID(name), Name: name, SizeBytes: 8 << 20}
	}

	a := req("pvc-a")
	if _, err := b.Create(ctx, a); err != nil {
		t.Fatal(err)
	}
	if got := z.take(); len(got) != 1 || got[0] != "-z /dev/"+v.Name+"/"+a.ID {
		t.Fatalf("zeroed %q, want the new LV", got)
	}
	if tg := tags(a.ID); strings.Contains(tg, "carve.zeroing") {
		t.Fatalf("tags after create: %s", tg)
	}
	// The retry of a finished create: nothing to zero.
	if _, err := b.Create(ctx, a); !errors.Is(err, backend.ErrExists) {
		t.Fatalf("retry: %v, want ErrExists", err)
	}
	if got := z.take(); len(got) != 0 {
		t.Fatalf("a retry of a zeroed volume zeroed %q", got)
	}

	// Killed while zeroing: not handed out, the LV keeps the tag.
	k := req("pvc-killed")
	z.fail = true
	if _, err := b.Create(ctx, k); err == nil {
		t.Fatal("create whose zeroing failed returned a volume")
	}
	if tg := tags(k.ID); !strings.Contains(tg, TagZeroing) {
		t.Fatalf("tags after a failed zeroing: %s, want %s", tg, TagZeroing)
	}
	// A retry whose zeroing fails again: an error, but not ErrExists, which
	// callers take for "found again" and hand the volume out unzeroed.
	if _, err := b.Create(ctx, k); err == nil || errors.Is(err, backend.ErrExists) {
		t.Fatalf("retry whose zeroing failed: %v, want an error that is not ErrExists", err)
	}
	z.fail = false
	if tg := tags(k.ID); !strings.Contains(tg, TagZeroing) {
		t.Fatalf("tags after a retry whose zeroing failed: %s, want %s", tg, TagZeroing)
	}
	// The retry zeroes it before the caller sees it.
	if _, err := b.Create(ctx, k); !errors.Is(err, backend.ErrExists) {
		t.Fatalf("retry: %v, want ErrExists", err)
	}
	if got := z.take(); len(got) != 1 || got[0] != "-z /dev/"+v.Name+"/"+k.ID {
		t.Fatalf("retry zeroed %q, want the unzeroed LV", got)
	}
	if tg := tags(k.ID); strings.Contains(tg, "carve.zeroing") {
		t.Fatalf("tags after the retry: %s", tg)
	}
	// Another CSI name's retry on that id never zeroes it.
	o := req("pvc-other")
	o.ID = a.ID
	if _, err := b.Create(ctx, o); !errors.Is(err, backend.ErrExists) {
		t.Fatalf("other name: %v", err)
	}
	if got := z.take(); len(got) != 0 {
		t.Fatalf("zeroed another name's volume: %q", got)
	}
}

// TestRealZeroingDeferred: with CreateRequest.DeferFinish, Create returns
// after the zeroing with the tag still on the LV (Unzeroed) and the lvchange
// as Volume.Finish; Finish drops the tag. A Finish that fails leaves the
// tag, and the next Create zeroes the LV again (issue 13: an inline publish
// runs the lvchange alongside mkfs and mount). Without DeferFinish, Create
// drops the tag itself and returns no Finish.
func TestRealZeroingDeferred(t *testing.T) {
	v := lvmtest.NewVGInfo(t, 256<<20, "")
	ctx := context.Background()
	z := &zeroRunner{Runner: v.Runner}
	b, err := New(ctx, z, "p", v.Name, capOwner)
	if err != nil {
		t.Fatal(err)
	}
	b.EnableZeroing()
	unzeroed := func(id string) bool {
		t.Helper()
		vol, err := b.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		out, err := v.Runner.Run(ctx, "lvm", "lvs", "--noheadings", "-o", "lv_tags", v.Name+"/"+id)
		if err != nil {
			t.Fatal(err)
		}
		if tagged := strings.Contains(string(out), TagZeroing); tagged != vol.Unzeroed {
			t.Fatalf("Get(%s).Unzeroed = %v, but its tags are %s", id, vol.Unzeroed, out)
		}
		return vol.Unzeroed
	}
	req := func(name string) backend.CreateRequest {
		return backend.CreateRequest{ID: names.VolumeID(name), Name: name, SizeBytes: 8 << 20, DeferFinish: true}
	}

	a := req("inline-a")
	vol, err := b.Create(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if got := z.take(); len(got) != 1 || got[0] != "-z /dev/"+v.Name+"/"+a.ID {
		t.Fatalf("zeroed %q, want the new LV", got)
	}
	if vol.Finish == nil || !vol.Unzeroed {
		t.Fatalf("deferred create returned Finish %v, Unzeroed %v; want a Finish and Unzeroed", vol.Finish, vol.Unzeroed)
	}
	if !unzeroed(a.ID) {
		t.Fatal("deferred create dropped the zeroing tag before Finish")
	}
	if err := vol.Finish.Run(ctx); err != nil {
		t.Fatalf("Finish: %v", err)
	}
	if unzeroed(a.ID) {
		t.Fatal("Finish left the zeroing tag")
	}

	// Finish fails: the tag stays, and the retry zeroes the LV again.
	k := req("inline-finish-fails")
	vol, err = b.Create(ctx, k)
	if err != nil || vol.Finish == nil {
		t.Fatalf("create: %v, %+v", err, vol)
	}
	z.take()
	z.failDeltag = true
	if err := vol.Finish.Run(ctx); err == nil {
		t.Fatal("Finish whose lvchange failed returned nil")
	}
	z.failDeltag = false
	if !unzeroed(k.ID) {
		t.Fatal("a failed Finish dropped the zeroing tag")
	}
	if _, err := b.Create(ctx, k); !errors.Is(err, backend.ErrExists) {
		t.Fatalf("retry: %v, want ErrExists", err)
	}
	if got := z.take(); len(got) != 1 || got[0] != "-z /dev/"+v.Name+"/"+k.ID {
		t.Fatalf("retry zeroed %q, want the LV whose Finish failed", got)
	}
	if unzeroed(k.ID) {
		t.Fatal("the retry left the zeroing tag")
	}

	// Not asked for: no Finish, the tag is gone when Create returns.
	s := req("pvc-sync")
	s.DeferFinish = false
	vol, err = b.Create(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if vol.Finish != nil || vol.Unzeroed || unzeroed(s.ID) {
		t.Fatalf("create without DeferFinish: Finish %v, Unzeroed %v", vol.Finish, vol.Unzeroed)
	}
}
