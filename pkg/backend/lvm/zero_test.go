package lvm

import (
	"context"
	"errors"
	"io/fs"
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
	// counts counts lvm subcommands and other tools by name.
	counts map[string]int
	// superblocks answers Backend.SetSuperblockReader: the filesystem UUIDs
	// on a device, or the error reading it.
	superblocks map[string]superblockAnswer
}

type superblockAnswer struct {
	uuids []string
	err   error
}

func (z *zeroRunner) setSuperblock(dev string, uuids []string, err error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.superblocks == nil {
		z.superblocks = map[string]superblockAnswer{}
	}
	z.superblocks[dev] = superblockAnswer{uuids, err}
}

func (z *zeroRunner) readSuperblock(dev string) ([]string, error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.counts["superblock"]++
	a, ok := z.superblocks[dev]
	if !ok {
		return nil, errors.New("zeroRunner: no superblock answer for " + dev)
	}
	return a.uuids, a.err
}

func (z *zeroRunner) calls(name string) int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.counts[name]
}

func (z *zeroRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	z.mu.Lock()
	if z.counts == nil {
		z.counts = map[string]int{}
	}
	if name == "lvm" && len(args) > 0 {
		z.counts[args[0]]++
	} else {
		z.counts[name]++
	}
	z.mu.Unlock()
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

// TestRealZeroingFormatUUID: with CreateRequest.FormatUUID, Create zeroes
// the new LV and returns with the tag carve.fsuuid=<uuid> in place of
// carve.zeroing=pending, and no lvchange (issue 13: one lvm metadata commit
// less per inline publish). A retry zeroes the LV again (keeping the tag)
// unless its device holds a complete filesystem of that UUID; a device it
// cannot read is an error, with nothing zeroed: the filesystem may be a
// pod's. The UUID is the first create's, whatever a retry asks; a retry for
// another target never touches the LV. Without FormatUUID, Create drops
// carve.zeroing=pending itself.
func TestRealZeroingFormatUUID(t *testing.T) {
	v := lvmtest.NewVGInfo(t, 256<<20, "")
	ctx := context.Background()
	z := &zeroRunner{Runner: v.Runner, counts: map[string]int{}}
	b, err := New(ctx, z, "p", v.Name, capOwner)
	if err != nil {
		t.Fatal(err)
	}
	b.EnableZeroing()
	b.SetSuperblockReader(z.readSuperblock)
	tags := func(id string) string {
		t.Helper()
		out, err := v.Runner.Run(ctx, "lvm", "lvs", "--noheadings", "-o", "lv_tags", v.Name+"/"+id)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	const u1, u2, old = "0b7c9d2e-1111-4222-8333-444455556666", "5f0e6a1c-2222-4333-9444-555566667777", "9a8b7c6d-3333-4444-a555-666677778888"
	const target = "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/v/mount"
	req := func(name, uuid string) backend.CreateRequest {
		return backend.CreateRequest{ID: names.VolumeID(name), Name: name, SizeBytes: 8 << 20, Ephemeral: true,
			TargetPath: target, FormatUUID: uuid}
	}
	dev := func(r backend.CreateRequest) string { return "/dev/" + v.Name + "/" + r.ID }
	retry := func(what string, r backend.CreateRequest, wantZeroed bool) {
		t.Helper()
		if _, err := b.Create(ctx, r); !errors.Is(err, backend.ErrExists) {
			t.Fatalf("%s: %v, want ErrExists", what, err)
		}
		if got := z.take(); wantZeroed != (len(got) == 1 && got[0] == "-z "+dev(r)) || len(got) > 1 {
			t.Fatalf("%s zeroed %q; want it zeroed: %v", what, got, wantZeroed)
		}
		if tg := tags(r.ID); !strings.Contains(tg, TagFormatUUID+"="+u1) || strings.Contains(tg, u2) || strings.Contains(tg, "carve.zeroing") {
			t.Fatalf("tags after %s: %s, want %s=%s and no carve.zeroing", what, tg, TagFormatUUID, u1)
		}
	}

	a := req("csi-a", u1)
	vol, err := b.Create(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if got := z.take(); len(got) != 1 || got[0] != "-z "+dev(a) {
		t.Fatalf("zeroed %q, want the new LV", got)
	}
	if got := z.calls("lvchange"); got != 0 {
		t.Fatalf("create with a format UUID ran lvchange %d times, want 0", got)
	}
	if tg := tags(a.ID); strings.Contains(tg, "carve.zeroing") || !strings.Contains(tg, TagFormatUUID+"="+u1) {
		t.Fatalf("tags after create: %s, want %s=%s and no carve.zeroing", tg, TagFormatUUID, u1)
	}
	if vol.FormatUUID != u1 || vol.Unzeroed {
		t.Fatalf("create returned FormatUUID %q, Unzeroed %v; want %q, false", vol.FormatUUID, vol.Unzeroed, u1)
	}
	if got, err := b.Get(ctx, a.ID); err != nil || got.FormatUUID != u1 || got.Unzeroed {
		t.Fatalf("Get: %+v, %v; want FormatUUID %q and not Unzeroed", got, err, u1)
	}

	// Killed before its mkfs: no filesystem, zeroed again; the UUID stays
	// the first create's.
	z.setSuperblock(dev(a), nil, nil)
	retry("a retry over a blank device", req("csi-a", u2), true)
	// An earlier tenant's filesystem (an lvcreate killed before its own
	// signature wipe): another UUID, zeroed.
	z.setSuperblock(dev(a), []string{old}, nil)
	retry("a retry over another filesystem", req("csi-a", u2), true)
	// Formatted (kubelet publishes again): nothing zeroed, also beside an
	// earlier superblock of the other type.
	z.setSuperblock(dev(a), []string{u1}, nil)
	retry("a retry over the recorded filesystem", req("csi-a", u2), false)
	z.setSuperblock(dev(a), []string{old, u1}, nil)
	retry("a retry over the recorded filesystem and an old one", req("csi-a", u2), false)
	// Another target's request for the same name: the LV is not touched
	// (it may be in use there), whatever its device holds.
	z.setSuperblock(dev(a), nil, nil)
	other := req("csi-a", u2)
	other.TargetPath = target + "-other"
	reads := z.calls("superblock")
	retry("another target's request", other, false)
	if z.calls("superblock") != reads {
		t.Fatal("another target's request read the LV's device")
	}
	// The device cannot be read: an error that is not ErrExists (callers
	// take that for "found again"), and nothing zeroed.
	z.setSuperblock(dev(a), nil, errors.New("read superblock: input/output error"))
	if _, err := b.Create(ctx, req("csi-a", u2)); err == nil || errors.Is(err, backend.ErrExists) {
		t.Fatalf("retry whose device read failed: %v, want an error that is not ErrExists", err)
	}
	// Its device node is missing: the LV is activated first (here, where
	// lvm activates nothing, that fails), and nothing is zeroed.
	z.setSuperblock(dev(a), nil, fs.ErrNotExist)
	if _, err := b.Create(ctx, req("csi-a", u2)); !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("retry whose device is missing: %v, want the activation's ErrUnavailable", err)
	}
	if got := z.take(); len(got) != 0 {
		t.Fatalf("retries that could not read the device zeroed %q", got)
	}

	// Both tags (one development build set both): read as formatted, never
	// zeroed on the strength of carve.zeroing=pending alone, nor Unzeroed.
	if _, err := v.Runner.Run(ctx, "lvm", "lvchange", "--addtag", TagZeroing, v.Name+"/"+a.ID); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Get(ctx, a.ID); err != nil || got.Unzeroed || got.FormatUUID != u1 {
		t.Fatalf("Get of an LV with both tags: %+v, %v; want FormatUUID %q and not Unzeroed", got, err, u1)
	}
	z.setSuperblock(dev(a), []string{u1}, nil)
	if _, err := b.Create(ctx, req("csi-a", u2)); !errors.Is(err, backend.ErrExists) {
		t.Fatalf("retry of an LV with both tags: %v, want ErrExists", err)
	}
	if got := z.take(); len(got) != 0 {
		t.Fatalf("a retry of a formatted LV with both tags zeroed %q", got)
	}

	// Not a UUID: refused before lvcreate.
	if _, err := b.Create(ctx, req("csi-bad", "0B7C9D2E-1111-4222-8333-444455556666")); err == nil {
		t.Fatal("create with an uppercase format UUID succeeded")
	}
	if _, err := b.Get(ctx, names.VolumeID("csi-bad")); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("a refused format UUID left an LV: %v", err)
	}

	// Not asked for: carve.zeroing=pending is gone when Create returns.
	s := req("pvc-sync", "")
	s.Ephemeral, s.TargetPath = false, ""
	vol, err = b.Create(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if tg := tags(s.ID); strings.Contains(tg, "carve.zeroing") || strings.Contains(tg, TagFormatUUID) || vol.FormatUUID != "" {
		t.Fatalf("create without a format UUID: tags %s, FormatUUID %q", tg, vol.FormatUUID)
	}
}
