package lvm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/exec/exectest"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/test/lvmtest"
)

// Striped volumes on a VG of three 64 MiB PVs (15 extents of 4 MiB each), a
// linear LV of 5 extents on the first: free extents 10, 15, 15. The scenario
// runs on real lvm2 (TestRealStriped, metadata only) and replayed from that
// run (TestStriped, testdata/striped.txt; re-record with CARVE_LVM_CAPTURE=1).
const stripedVG = "carvestriped"

func stripedScenario(t *testing.T, b *Backend, run func(args ...string) (string, error)) {
	ctx := context.Background()
	const ext = 4 << 20
	create := func(name string, size int64, stripes int, stripeSize int64) (*backend.Volume, error) {
		return b.Create(ctx, backend.CreateRequest{ID: names.VolumeID(name), Name: name, SizeBytes: size, Stripes: stripes, StripeSizeBytes: stripeSize})
	}
	for _, tc := range []struct {
		stripes, n int
		max        int64
	}{
		{2, 2, 30 * ext},                  // the two PVs with 15 free
		{backend.StripesAll, 3, 30 * ext}, // every PV: 3 x the emptiest's 10
	} {
		c, n, err := b.StripedCapacity(ctx, tc.stripes)
		if err != nil || n != tc.n || c.MaxVolumeBytes != tc.max || c.AlignBytes != int64(tc.n)*ext || c.FreeBytes != 40*ext {
			t.Fatalf("StripedCapacity(%d) = %+v, %d, %v; want %d stripes, max %d", tc.stripes, c, n, err, tc.n, tc.max)
		}
		// One extent more than the maximum (rounded up to a whole stripe row) does not fit ...
		if _, err := create("pvc-over", c.MaxVolumeBytes+ext, n, 0); !errors.Is(err, backend.ErrNoSpace) {
			t.Fatalf("%d stripes, max + 1 extent: %v, want ErrNoSpace", n, err)
		}
		// ... exactly the maximum does.
		v, err := create("pvc-max", c.MaxVolumeBytes, n, 0)
		if err != nil || v.SizeBytes != c.MaxVolumeBytes {
			t.Fatalf("%d stripes, exactly max %d: %+v, %v", n, c.MaxVolumeBytes, v, err)
		}
		if got := stripes(t, run, b.vg+"/"+v.ID); got != [3]string{strconv.Itoa(n), "65536", strconv.FormatInt(c.MaxVolumeBytes, 10)} {
			t.Fatalf("lvs of the striped LV: %q; want %d stripes of lvm's default 64 KiB", got, n)
		}
		if c, _, err := b.StripedCapacity(ctx, tc.stripes); err != nil || c.MaxVolumeBytes >= tc.max {
			t.Fatalf("after a max volume: %+v, %v", c, err)
		}
		if err := b.Delete(ctx, v.ID); err != nil {
			t.Fatal(err)
		}
	}
	// More stripes than PVs: the pool cannot, however small the volume.
	if _, _, err := b.StripedCapacity(ctx, 4); !errors.Is(err, backend.ErrCannotStripe) {
		t.Fatalf("StripedCapacity(4): %v, want ErrCannotStripe", err)
	}
	if _, err := create("pvc-four", 4*ext, 4, 0); !errors.Is(err, backend.ErrCannotStripe) {
		t.Fatalf("4 stripes on 3 PVs: %v, want ErrCannotStripe", err)
	}
	// A stripe size, and a size rounded up to whole stripe rows (3 extents -> 4).
	v, err := create("pvc-1m", 3*ext, 2, 1<<20)
	if err != nil || v.SizeBytes != 4*ext {
		t.Fatalf("2 stripes of 1 MiB, 3 extents: %+v, %v; want 4 extents", v, err)
	}
	if got := stripes(t, run, b.vg+"/"+v.ID); got != [3]string{"2", "1048576", strconv.FormatInt(4*ext, 10)} {
		t.Fatalf("lvs: %q; want 2 stripes of 1048576 bytes, %d bytes", got, 4*ext)
	}
	if err := b.Delete(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []int64{1 << 10, 3 << 20, 8 << 20} { // below 4 KiB, no power of two, above the extent
		if _, err := create("pvc-bad", ext, 2, bad); !errors.Is(err, backend.ErrCannotStripe) {
			t.Errorf("stripe size %d: %v, want ErrCannotStripe", bad, err)
		}
	}
}

// stripes reads an LV's stripes, stripe size and size with an lvs of its own.
func stripes(t *testing.T, run func(args ...string) (string, error), lv string) [3]string {
	t.Helper()
	out, err := run(append(append([]string{"lvs", "-o", "lv_name,vg_name,lv_size,lv_path,stripes,stripe_size"}, reportArgs...), lv)...)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Report []struct {
			LV []struct {
				Size       string `json:"lv_size"`
				Stripes    string `json:"stripes"`
				StripeSize string `json:"stripe_size"`
			} `json:"lv"`
		} `json:"report"`
	}
	if err := DecodeReport([]byte(out), &rep); err != nil || len(rep.Report) != 1 || len(rep.Report[0].LV) != 1 {
		t.Fatalf("lvs %s: %v: %s", lv, err, out)
	}
	r := rep.Report[0].LV[0]
	return [3]string{r.Stripes, r.StripeSize, r.Size}
}

func TestRealStriped(t *testing.T) {
	m := lvmtest.NewMultiVG(t, 3, 64<<20, stripedVG)
	ctx := context.Background()
	lin := []string{"lvcreate", "-n", "linear", "-l", "5", "-W", "y", "-y", stripedVG, m.LoopDevs[0]}
	if _, err := m.Runner.Run(ctx, "lvm", lin...); err != nil {
		t.Fatal(err)
	}
	rec := &exectest.Recorder{R: m.Runner}
	b, err := New(ctx, m.Runner, "p", stripedVG, capOwner)
	if err != nil {
		t.Fatal(err)
	}
	b.runner = rec
	stripedScenario(t, b, func(args ...string) (string, error) {
		out, err := rec.Run(ctx, "lvm", args...)
		return string(out), err
	})
	if os.Getenv("CARVE_LVM_CAPTURE") != "" && !t.Failed() {
		if err := exectest.WriteCapture(filepath.Join("testdata", "striped.txt"), exectest.Capture{Calls: rec.Take()}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestStriped(t *testing.T) {
	c, err := exectest.ReadCapture(filepath.Join("testdata", "striped.txt"))
	if err != nil {
		t.Fatal(err)
	}
	f := exectest.Replay(t, c.Calls)
	b := &Backend{runner: f, pool: "p", vg: stripedVG, owner: TagOwner + "=" + capOwner, extentBytes: 4 << 20, devExists: fileExists}
	stripedScenario(t, b, func(args ...string) (string, error) {
		out, err := f.Run(context.Background(), "lvm", args...)
		return string(out), err
	})
}
