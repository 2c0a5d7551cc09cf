package lvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/names"
)

// Thin pools need device-mapper's thin target (an active pool is what lvm
// reads use from and creates thin LVs in), so these tests run in the VM rig
// (hack/e2e-guest.sh: CARVE_THIN_VM=1 lvm.test -test.run Thin). They build a
// volume group on a loop device of their own with the guest's real lvm
// configuration.

// thinVM skips unless the test runs in the VM rig.
func thinVM(t *testing.T) {
	t.Helper()
	if os.Getenv("CARVE_THIN_VM") == "" {
		t.Skip("thin pools need device-mapper's thin target: runs in the VM rig (CARVE_THIN_VM=1, hack/e2e-guest.sh)")
	}
}

// realVG makes volume group vg on a fresh loop device of sizeBytes (file in
// the guest's tmpfs) and removes both at the end.
func realVG(t *testing.T, vg string, sizeBytes int64) exec.Runner {
	t.Helper()
	ctx := context.Background()
	h := &exec.Host{}
	file := filepath.Join(t.TempDir(), vg+".img")
	f, err := os.Create(file)
	if err == nil {
		err = errors.Join(f.Truncate(sizeBytes), f.Close())
	}
	if err != nil {
		t.Fatal(err)
	}
	out, err := h.Run(ctx, "losetup", "-f", "--show", file)
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := h.Run(context.Background(), "lvm", "vgremove", "-ff", "-y", vg); err != nil {
			t.Logf("vgremove %s: %v %s", vg, err, out)
		}
		if _, err := h.Run(context.Background(), "losetup", "-d", dev); err != nil {
			t.Logf("losetup -d %s: %v", dev, err)
		}
	})
	if _, err := h.Run(ctx, "lvm", "pvcreate", "-y", dev); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Run(ctx, "lvm", "vgcreate", vg, dev); err != nil {
		t.Fatal(err)
	}
	return h
}

// Names in the thin captures.
const (
	capThinVG   = "carvethin"
	capThinPool = "thin"
)

// capThick is a carve LV of the thin pool's VG outside the thin pool.
var capThick = names.VolumeID("pvc-thick")

// TestCaptureThin records the thin backend's commands on real lvm2 with
// device-mapper into testdata/thin-*.txt (the unit tests in thin_test.go
// replay them):
//
//	hack/vm/run.sh --share DIR -- env CARVE_THIN_VM=1 CARVE_LVM_CAPTURE=1 DIR/lvm.test -test.run TestCaptureThin
func TestCaptureThin(t *testing.T) {
	thinVM(t)
	if os.Getenv("CARVE_LVM_CAPTURE") == "" {
		t.Skip("set CARVE_LVM_CAPTURE=1 to re-record testdata/thin-*.txt")
	}
	ctx := context.Background()
	h := realVG(t, capThinVG, 512<<20)
	rec := &recorder{r: h}
	step := stepper(t, rec, captureDir())
	bare := func(args ...string) error {
		_, err := rec.Run(ctx, "lvm", args...)
		return err
	}
	opts := ThinOptions{ThinPool: capThinPool, Overprovision: 2, ThresholdPercent: 30}
	step("thin-new-missing", func() error { _, err := NewThin(ctx, rec, capPool, capThinVG, capOwner, opts); return err })
	step("thin-linear", func() error { return bare("lvcreate", "-n", "linear", "-L", "8m", "-y", capThinVG) })
	step("thin-new-linear", func() error {
		_, err := NewThin(ctx, rec, capPool, capThinVG, capOwner, ThinOptions{ThinPool: "linear"})
		return err
	})
	step("thin-nozero-pool", func() error {
		return bare("lvcreate", "--type", "thin-pool", "-L", "16m", "-Z", "n", "-n", "nozero", "-y", capThinVG)
	})
	step("thin-new-nozero", func() error {
		_, err := NewThin(ctx, rec, capPool, capThinVG, capOwner, ThinOptions{ThinPool: "nozero"})
		return err
	})
	step("thin-cleanup", func() error { return bare("lvremove", "-f", capThinVG+"/nozero", capThinVG+"/linear") })
	opts.CreatePercent = 50
	var th *Thin
	step("thin-new-create", func() (err error) { th, err = NewThin(ctx, rec, capPool, capThinVG, capOwner, opts); return err })
	if th == nil {
		t.Fatal("NewThin failed")
	}
	step("thin-new", func() (err error) { _, err = NewThin(ctx, rec, capPool, capThinVG, capOwner, opts); return err })
	step("thin-capacity-empty", func() error { _, err := th.Capacity(ctx); return err })
	step("thin-create", func() error {
		_, err := th.Create(ctx, backend.CreateRequest{ID: capID, Name: capName, SizeBytes: 100 << 20})
		return err
	})
	step("thin-create-ephemeral", func() error {
		_, err := th.Create(ctx, backend.CreateRequest{ID: capEphID, Name: capEphName, SizeBytes: 10 << 20, Ephemeral: true, TargetPath: capEphTarget})
		return err
	})
	step("thin-create-exists", func() error {
		_, err := th.Create(ctx, backend.CreateRequest{ID: capID, Name: capName, SizeBytes: 100 << 20})
		return err
	})
	step("thin-foreign", func() error {
		return errors.Join(
			bare("lvcreate", "-n", capForeign, "-V", "8m", "--thinpool", capThinPool, "-y", capThinVG),
			bare("lvcreate", "-n", capOther, "-V", "8m", "--thinpool", capThinPool, "-y", "--addtag", "carve.owner=other.csi.dev", capThinVG),
			bare("lvcreate", "-n", capThick, "-L", "8m", "-y", "--addtag", TagOwner+"="+capOwner, capThinVG),
		)
	})
	step("thin-capacity", func() error { _, err := th.Capacity(ctx); return err })
	// 2 x the data size minus what the five thin LVs took: one byte more is refused.
	step("thin-create-nospace", func() error {
		c, err := th.Capacity(ctx)
		if err != nil {
			return err
		}
		_, err = th.Create(ctx, backend.CreateRequest{ID: capMissing, Name: "pvc-never-created", SizeBytes: c.MaxVolumeBytes + 1})
		return err
	})
	step("thin-list", func() error { _, err := th.List(ctx); return err })
	step("thin-get", func() error { _, err := th.Get(ctx, capID); return err })
	step("thin-get-foreign", func() error { _, err := th.Get(ctx, capForeign); return err })
	step("thin-get-thick", func() error { _, err := th.Get(ctx, capThick); return err })
	step("thin-get-missing", func() error { _, err := th.Get(ctx, capMissing); return err })
	step("thin-expand", func() error { _, err := th.Expand(ctx, capEphID, 20<<20); return err })
	step("thin-expand-noop", func() error { _, err := th.Expand(ctx, capEphID, 20<<20); return err })
	step("thin-expand-nospace", func() error { _, err := th.Expand(ctx, capEphID, 2<<30); return err })
	step("thin-expand-foreign", func() error { _, err := th.Expand(ctx, capForeign, 20<<20); return err })
	step("thin-activate", func() error { _, err := th.Activate(ctx, capID); return err })
	// Past the 30% threshold: the 100 MiB volume written whole (the pool's data is about 250 MiB).
	step("thin-fill", func() error {
		_, err := rec.Run(ctx, "dd", "if=/dev/urandom", "of=/dev/"+capThinVG+"/"+capID, "bs=1M", "count=100", "oflag=direct", "status=none")
		return err
	})
	step("thin-capacity-full", func() error { _, err := th.Capacity(ctx); return err })
	step("thin-create-full", func() error {
		_, err := th.Create(ctx, backend.CreateRequest{ID: capKillID, Name: capKillName, SizeBytes: 4 << 20})
		return err
	})
	step("thin-delete", func() error { return th.Delete(ctx, capID) })
	step("thin-delete-missing", func() error { return th.Delete(ctx, capID) })
	step("thin-capacity-after", func() error { _, err := th.Capacity(ctx); return err })
	step("thin-deactivate", func() error { return bare("lvchange", "-an", capThinVG) })
	step("thin-new-inactive", func() (err error) { _, err = NewThin(ctx, rec, capPool, capThinVG, capOwner, opts); return err })
	// A create whose lvcreate committed the thin LV but "failed" (killed by the context): removed again.
	rec.after = func(argv []string, out []byte, err error) ([]byte, error, string) {
		if len(argv) > 1 && argv[1] == "lvcreate" && err == nil {
			return out, &exec.Error{Cmd: argv, ExitCode: -1, Err: context.Canceled},
				"lvcreate really succeeded (rc 0 above); the recorder then reported it as killed by the context"
		}
		return out, err, ""
	}
	step("thin-create-killed", func() error {
		_, err := th.Create(ctx, backend.CreateRequest{ID: capKillID, Name: capKillName, SizeBytes: 8 << 20})
		return err
	})
	rec.after = nil
	step("thin-lvs-after-killed", func() error {
		return bare(append(append([]string{"lvs", "-o", thinColumns}, reportArgs...), capThinVG)...)
	})
}

// captureDir is where the VM captures go: $CARVE_CAPTURE_DIR (the VM's
// share, copied back to testdata/ by hand) or testdata.
func captureDir() string {
	if d := os.Getenv("CARVE_CAPTURE_DIR"); d != "" {
		return d
	}
	return "testdata"
}

// thinPool makes a fresh VG of sizeBytes with a thin pool of pct% made by NewThin.
func thinPool(t *testing.T, vg string, sizeBytes int64, opts ThinOptions) (*Thin, exec.Runner) {
	t.Helper()
	h := realVG(t, vg, sizeBytes)
	if opts.ThinPool == "" {
		opts.ThinPool = "thin"
	}
	if opts.CreatePercent == 0 {
		opts.CreatePercent = 80
	}
	th, err := NewThin(context.Background(), h, "scratch", vg, capOwner, opts)
	if err != nil {
		t.Fatal(err)
	}
	return th, h
}

// TestThinRealContract runs the backend contract suite on real thin pools:
// one volume group for the suite (each VG costs several lvm commands under
// emulation), a fresh thin pool in it per subtest (10% of the VG, removed
// afterwards); thin pools in one VG keep to their own thin LVs.
func TestThinRealContract(t *testing.T) {
	thinVM(t)
	const vg = "carvecontract"
	h := realVG(t, vg, 1<<30)
	n := 0
	backendtest.Run(t, func(t *testing.T) backendtest.Subject {
		n++
		tp := fmt.Sprintf("thin%d", n)
		th, err := NewThin(context.Background(), h, "scratch", vg, capOwner, ThinOptions{ThinPool: tp, CreatePercent: 8})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			// The pool's thin LVs first (lvremove of a pool with thin LVs asks), then the pool.
			if out, err := h.Run(context.Background(), "lvm", "lvremove", "-f", "-S", "pool_lv="+tp+" || lv_name="+tp, vg); err != nil {
				t.Errorf("removing thin pool %s: %v %s", tp, err, out)
			}
		})
		return backendtest.Subject{Backend: th, Pool: "scratch",
			ActivateTrustsNode: "lvm.Backend.Activate returns an existing /dev/<vg>/<lv> without a command (a new thin LV is active); csi's callers Get the volume first",
			AddForeign: func(t *testing.T, id string) {
				if _, err := h.Run(context.Background(), "lvm", "lvcreate", "-n", id, "-V", "8m", "--thinpool", tp, "-y",
					"--addtag", TagOwner+"=other.csi.dev", vg); err != nil {
					t.Fatal(err)
				}
			},
		}
	})
}

// TestThinRealCapacityExact: after 10 thin volumes, 5 snapshots of them and
// 2 thin LVs not carve's, with 3x overprovisioning, MaxVolumeBytes is exactly what one more volume can get:
// a volume of that size is created, one extent more is refused, and
// nothing is left of the refused one.
func TestThinRealCapacityExact(t *testing.T) {
	thinVM(t)
	ctx := context.Background()
	th, h := thinPool(t, "carvecap", 512<<20, ThinOptions{Overprovision: 3})
	c0, err := th.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	u, err := th.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ext := th.AlignBytes()
	if want := backend.AlignDown(3*u.DataBytes, ext); c0.TotalBytes != want || c0.FreeBytes != want || c0.MaxVolumeBytes != want {
		t.Fatalf("empty pool: capacity %+v, want 3 x data %d = %d", c0, u.DataBytes, want)
	}
	var given int64
	var vols []*backend.Volume
	for i := range 10 {
		name := fmt.Sprintf("pvc-cap-%d", i)
		v, err := th.Create(ctx, backend.CreateRequest{ID: names.VolumeID(name), Name: name, SizeBytes: int64(i+1)*ext*3 + 1})
		if err != nil {
			t.Fatal(err)
		}
		given += v.SizeBytes
		vols = append(vols, v)
	}
	// 5 snapshots (issue 14: "capacity after 10 thin volumes and 5 snapshots"): each
	// takes its origin's virtual size from the budget.
	for i := range 5 {
		name := fmt.Sprintf("snap-cap-%d", i)
		src := vols[2*i]
		s, err := th.CreateSnapshot(ctx, names.SnapshotID(name), name, src.ID)
		if err != nil {
			t.Fatal(err)
		}
		if s.SizeBytes != src.SizeBytes {
			t.Fatalf("snapshot of %d bytes: %+v", src.SizeBytes, s)
		}
		given += s.SizeBytes
	}
	for i := range 2 {
		if _, err := h.Run(ctx, "lvm", "lvcreate", "-n", fmt.Sprintf("other%d", i), "-V", "20m", "--thinpool", "thin", "-y", "carvecap"); err != nil {
			t.Fatal(err)
		}
		given += 20 << 20
	}
	c, err := th.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("data %d bytes, %d given out, capacity %+v", u.DataBytes, given, c)
	if c.FreeBytes != c0.TotalBytes-given || c.MaxVolumeBytes != backend.AlignDown(c.FreeBytes, ext) {
		t.Fatalf("capacity %+v after %d bytes given out of %d", c, given, c0.TotalBytes)
	}
	big := backend.CreateRequest{ID: names.VolumeID("pvc-too-big"), Name: "pvc-too-big", SizeBytes: c.MaxVolumeBytes + ext}
	if _, err := th.Create(ctx, big); !errors.Is(err, backend.ErrNoSpace) {
		t.Fatalf("one extent more than MaxVolumeBytes: %v, want ErrNoSpace", err)
	}
	if _, err := th.Get(ctx, big.ID); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("the refused volume: %v, want ErrNotFound", err)
	}
	exact := backend.CreateRequest{ID: names.VolumeID("pvc-exact"), Name: "pvc-exact", SizeBytes: c.MaxVolumeBytes}
	v, err := th.Create(ctx, exact)
	if err != nil || v.SizeBytes != c.MaxVolumeBytes {
		t.Fatalf("exactly MaxVolumeBytes (%d): %+v, %v", c.MaxVolumeBytes, v, err)
	}
	if c, err := th.Capacity(ctx); err != nil || c.FreeBytes != 0 || c.MaxVolumeBytes != 0 {
		t.Fatalf("after the exact fit: %+v, %v; want nothing free", c, err)
	}
	if _, err := th.Expand(ctx, v.ID, v.SizeBytes+ext); !errors.Is(err, backend.ErrNoSpace) {
		t.Fatalf("expanding past the budget: %v, want ErrNoSpace", err)
	}
}

// TestThinRealZeros: a new thin volume reads as zeros where a deleted one
// wrote a pattern, also around a small write into a fresh chunk (the pool
// zeroes newly provisioned blocks).
func TestThinRealZeros(t *testing.T) {
	thinVM(t)
	ctx := context.Background()
	th, h := thinPool(t, "carvezero", 256<<20, ThinOptions{})
	size := int64(64 << 20)
	a, err := th.Create(ctx, backend.CreateRequest{ID: names.VolumeID("pvc-a"), Name: "pvc-a", SizeBytes: size})
	if err != nil {
		t.Fatal(err)
	}
	pattern := bytes.Repeat([]byte("carve-stale-data"), int(size)/16)
	if err := os.WriteFile(a.DevicePath, pattern, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Run(ctx, "sync"); err != nil {
		t.Fatal(err)
	}
	if err := th.Delete(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	b, err := th.Create(ctx, backend.CreateRequest{ID: names.VolumeID("pvc-b"), Name: "pvc-b", SizeBytes: size})
	if err != nil {
		t.Fatal(err)
	}
	// One 512-byte write at 1 MiB + 512: its chunk is provisioned now.
	f, err := os.OpenFile(b.DevicePath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xab}, 512), 1<<20+512); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(b.DevicePath)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range got {
		if (i < 1<<20+512 || i >= 1<<20+1024) && c != 0 {
			t.Fatalf("new thin volume reads %#x at byte %d (the deleted volume's pattern: %v)", c, i, bytes.Contains(got, []byte("carve-stale")))
		}
	}
	if u, err := th.Usage(ctx); err == nil {
		t.Logf("after the write: data %.2f%%, metadata %.2f%%", u.DataPercent, u.MetadataPercent)
	}
}

// TestThinRealThreshold: at the threshold of data use new volumes and
// expansions are refused with ErrNoSpace and nothing is free; deleting the
// data gives the space back.
func TestThinRealThreshold(t *testing.T) {
	thinVM(t)
	ctx := context.Background()
	th, h := thinPool(t, "carvethr", 256<<20, ThinOptions{Overprovision: 4, ThresholdPercent: 30})
	u, _ := th.Usage(ctx)
	fillBytes := u.DataBytes * 35 / 100
	fill, err := th.Create(ctx, backend.CreateRequest{ID: names.VolumeID("pvc-fill"), Name: "pvc-fill", SizeBytes: fillBytes})
	if err != nil {
		t.Fatal(err)
	}
	small, err := th.Create(ctx, backend.CreateRequest{ID: names.VolumeID("pvc-small"), Name: "pvc-small", SizeBytes: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Run(ctx, "dd", "if=/dev/zero", "of="+fill.DevicePath, "bs=1M", "count="+strconv.FormatInt(fill.SizeBytes>>20, 10), "oflag=direct", "status=none"); err != nil {
		t.Fatal(err)
	}
	u, _ = th.Usage(ctx)
	t.Logf("after filling: data %.2f%%, metadata %.2f%%", u.DataPercent, u.MetadataPercent)
	if u.DataPercent < 30 {
		t.Fatalf("data use %.2f%% after writing %d bytes into a %d-byte pool: the test did not reach the threshold", u.DataPercent, fill.SizeBytes, u.DataBytes)
	}
	if c, err := th.Capacity(ctx); err != nil || c.FreeBytes != 0 || c.MaxVolumeBytes != 0 {
		t.Fatalf("capacity at the threshold: %+v, %v; want nothing free", c, err)
	}
	_, err = th.Create(ctx, backend.CreateRequest{ID: names.VolumeID("pvc-more"), Name: "pvc-more", SizeBytes: 4 << 20})
	if !errors.Is(err, backend.ErrNoSpace) || !strings.Contains(err.Error(), "threshold 30%") {
		t.Fatalf("create at the threshold: %v, want ErrNoSpace naming the threshold", err)
	}
	if _, err := th.Expand(ctx, small.ID, 16<<20); !errors.Is(err, backend.ErrNoSpace) {
		t.Fatalf("expand at the threshold: %v, want ErrNoSpace", err)
	}
	if err := th.Delete(ctx, fill.ID); err != nil {
		t.Fatal(err)
	}
	if c, err := th.Capacity(ctx); err != nil || c.MaxVolumeBytes == 0 {
		t.Fatalf("capacity after deleting the data: %+v, %v", c, err)
	}
	if _, err := th.Create(ctx, backend.CreateRequest{ID: names.VolumeID("pvc-more"), Name: "pvc-more", SizeBytes: 4 << 20}); err != nil {
		t.Fatal(err)
	}
}

// TestThinRealCreatedOnce: NewThin with size= creates the thin pool once; a
// second start (a restart) uses it as it is, volumes and data kept.
func TestThinRealCreatedOnce(t *testing.T) {
	thinVM(t)
	ctx := context.Background()
	opts := ThinOptions{ThinPool: "thin", CreatePercent: 50}
	th, h := thinPool(t, "carveonce", 256<<20, opts)
	v, err := th.Create(ctx, backend.CreateRequest{ID: names.VolumeID("pvc-keep"), Name: "pvc-keep", SizeBytes: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(v.DevicePath, []byte("kept"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Run(ctx, "lvm", "lvchange", "-an", "carveonce"); err != nil {
		t.Fatal(err)
	}
	again, err := NewThin(ctx, h, "scratch", "carveonce", capOwner, opts)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := again.Capacity(ctx); err != nil || c.FreeBytes == 0 {
		t.Fatalf("after a restart on the deactivated pool: %+v, %v (NewThin activates it to read its use)", c, err)
	}
	if _, err := again.Activate(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	f, err := os.Open(v.DevicePath)
	if err == nil {
		_, err = f.Read(got)
		f.Close()
	}
	if err != nil || string(got) != "kept" {
		t.Fatalf("the volume's data after a second NewThin: %q, %v", got, err)
	}
	out, err := h.Run(ctx, "lvm", "lvs", "--noheadings", "-o", "lv_name", "-S", "segtype=thin-pool", "carveonce")
	if err != nil || strings.Fields(string(out))[0] != "thin" || len(strings.Fields(string(out))) != 1 {
		t.Fatalf("thin pools in the VG: %q, %v", out, err)
	}
}

// readHead reads the first n bytes of a device.
func readHead(t *testing.T, dev string, n int) string {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	return string(buf)
}

// writeHead writes s at the start of a device, synced.
func writeHead(t *testing.T, dev, s string) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err == nil {
		_, err = f.WriteAt([]byte(s), 0)
		err = errors.Join(err, f.Sync(), f.Close())
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestThinRealSnapshots: a snapshot keeps the volume's data as it was; a
// volume from it reads that data, a clone reads the volume's current data
// (and is grown when asked for more); the snapshot outlives its source and
// counts in the budget; the copies carry their own tags only.
func TestThinRealSnapshots(t *testing.T) {
	thinVM(t)
	ctx := context.Background()
	th, _ := thinPool(t, "carvesnap", 512<<20, ThinOptions{Overprovision: 2})
	a, err := th.Create(ctx, backend.CreateRequest{ID: names.VolumeID("pvc-a"), Name: "pvc-a", SizeBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	writeHead(t, a.DevicePath, "first")
	c0, _ := th.Capacity(ctx)
	snapID := names.SnapshotID("snap-a")
	s, err := th.CreateSnapshot(ctx, snapID, "snap-a", a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if s.SourceID != a.ID || s.Name != "snap-a" || s.SizeBytes != a.SizeBytes || s.CreationTime == 0 {
		t.Fatalf("snapshot %+v", s)
	}
	if c, _ := th.Capacity(ctx); c0.FreeBytes-c.FreeBytes != a.SizeBytes {
		t.Fatalf("the snapshot took %d bytes of the budget, want %d", c0.FreeBytes-c.FreeBytes, a.SizeBytes)
	}
	if _, err := th.CreateSnapshot(ctx, snapID, "snap-a", a.ID); !errors.Is(err, backend.ErrExists) {
		t.Fatalf("second CreateSnapshot: %v, want ErrExists", err)
	}
	writeHead(t, a.DevicePath, "later")

	r, err := th.CreateFrom(ctx, backend.CreateRequest{ID: names.VolumeID("pvc-r"), Name: "pvc-r", SizeBytes: 4 << 20}, snapID)
	if err != nil {
		t.Fatal(err)
	}
	if got := readHead(t, r.DevicePath, 5); got != "first" || r.SizeBytes != a.SizeBytes {
		t.Fatalf("volume from the snapshot reads %q, %d bytes; want %q, %d", got, r.SizeBytes, "first", a.SizeBytes)
	}
	cl, err := th.CreateFrom(ctx, backend.CreateRequest{ID: names.VolumeID("pvc-c"), Name: "pvc-c", SizeBytes: 128 << 20}, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := readHead(t, cl.DevicePath, 5); got != "later" || cl.SizeBytes != 128<<20 {
		t.Fatalf("clone reads %q, %d bytes; want %q, %d", got, cl.SizeBytes, "later", 128<<20)
	}
	for _, v := range []*backend.Volume{r, cl} {
		got, err := th.Get(ctx, v.ID)
		if err != nil || got.Name != v.Name || got.Source != v.Source || got.Ephemeral || got.SizeBytes != v.SizeBytes {
			t.Fatalf("Get(%s) = %+v, %v; want %+v (its own tags only)", v.ID, got, err, v)
		}
	}
	vols, err := th.List(ctx)
	if err != nil || len(vols) != 3 {
		t.Fatalf("List = %+v, %v; want the volume, its restore and its clone, not the snapshot", vols, err)
	}
	if snaps, err := th.ListSnapshots(ctx); err != nil || len(snaps) != 1 || snaps[0] != *s {
		t.Fatalf("ListSnapshots = %+v, %v; want %+v", snaps, err, s)
	}
	// The source goes; the snapshot stays and still restores.
	if err := th.Delete(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	r2, err := th.CreateFrom(ctx, backend.CreateRequest{ID: names.VolumeID("pvc-r2"), Name: "pvc-r2", SizeBytes: 4 << 20}, snapID)
	if err != nil {
		t.Fatal(err)
	}
	if got := readHead(t, r2.DevicePath, 5); got != "first" {
		t.Fatalf("restore after the source was deleted reads %q", got)
	}
	if err := th.DeleteSnapshot(ctx, snapID); err != nil {
		t.Fatal(err)
	}
	if err := th.DeleteSnapshot(ctx, snapID); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("second DeleteSnapshot: %v", err)
	}
	if got := readHead(t, r.DevicePath, 5); got != "first" {
		t.Fatalf("volume from a deleted snapshot reads %q", got)
	}
	// More than the budget: nothing made.
	big, _ := th.Capacity(ctx)
	if _, err := th.CreateFrom(ctx, backend.CreateRequest{ID: names.VolumeID("pvc-big"), Name: "pvc-big", SizeBytes: big.MaxVolumeBytes + th.AlignBytes()}, r.ID); !errors.Is(err, backend.ErrNoSpace) {
		t.Fatalf("clone beyond the budget: %v", err)
	}
	if _, err := th.Get(ctx, names.VolumeID("pvc-big")); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("the refused clone: %v", err)
	}
}

// TestCaptureThinSnapshots records the snapshot and clone commands into
// testdata/thin-snap-*.txt (see TestCaptureThin).
func TestCaptureThinSnapshots(t *testing.T) {
	thinVM(t)
	if os.Getenv("CARVE_LVM_CAPTURE") == "" {
		t.Skip("set CARVE_LVM_CAPTURE=1 to re-record testdata/thin-snap-*.txt")
	}
	ctx := context.Background()
	h := realVG(t, capThinVG, 512<<20)
	th, err := NewThin(ctx, h, capPool, capThinVG, capOwner, capThinOpts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := th.Create(ctx, backend.CreateRequest{ID: capID, Name: capName, SizeBytes: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{r: h}
	th.lv.runner = rec
	step := stepper(t, rec, captureDir())
	step("thin-snap-new", func() error { _, err := NewThin(ctx, rec, capPool, capThinVG, capOwner, capThinOpts); return err })
	step("thin-snap-create", func() error { _, err := th.CreateSnapshot(ctx, capSnapID, capSnapName, capID); return err })
	step("thin-snap-create-exists", func() error { _, err := th.CreateSnapshot(ctx, capSnapID, capSnapName, capID); return err })
	step("thin-snap-create-nosource", func() error {
		_, err := th.CreateSnapshot(ctx, names.SnapshotID("other"), "other", capMissing)
		return err
	})
	step("thin-snap-get", func() error { _, err := th.GetSnapshot(ctx, capSnapID); return err })
	step("thin-snap-list", func() error { _, err := th.ListSnapshots(ctx); return err })
	step("thin-snap-volumes", func() error { _, err := th.List(ctx); return err })
	step("thin-snap-restore", func() error {
		_, err := th.CreateFrom(ctx, backend.CreateRequest{ID: capRestoreID, Name: capRestoreName, SizeBytes: 4 << 20}, capSnapID)
		return err
	})
	step("thin-snap-restore-get", func() error { _, err := th.Get(ctx, capRestoreID); return err })
	step("thin-snap-clone", func() error {
		_, err := th.CreateFrom(ctx, backend.CreateRequest{ID: capCloneID, Name: capCloneName, SizeBytes: 128 << 20}, capID)
		return err
	})
	step("thin-snap-delete", func() error { return th.DeleteSnapshot(ctx, capSnapID) })
	step("thin-snap-delete-missing", func() error { return th.DeleteSnapshot(ctx, capSnapID) })
	// A clone killed after its lvcreate, before its last lvchange: the LV
	// is left with TagRestoring, and the retry removes it and starts again.
	rec.kill = func(argv []string) bool { return len(argv) > 1 && argv[1] == "lvchange" }
	step("thin-snap-clone-killed", func() error {
		_, err := th.CreateFrom(ctx, backend.CreateRequest{ID: capKillID, Name: capKillName, SizeBytes: 4 << 20}, capID)
		return err
	})
	rec.kill = nil
	step("thin-snap-clone-retry", func() error {
		_, err := th.CreateFrom(ctx, backend.CreateRequest{ID: capKillID, Name: capKillName, SizeBytes: 4 << 20}, capID)
		return err
	})
}

// Names in the snapshot captures.
var (
	capSnapName    = "snapshot-5e1f/odd ü"
	capSnapID      = names.SnapshotID(capSnapName)
	capRestoreName = "pvc-restored"
	capRestoreID   = names.VolumeID(capRestoreName)
	capCloneName   = "pvc-clone"
	capCloneID     = names.VolumeID(capCloneName)
)
