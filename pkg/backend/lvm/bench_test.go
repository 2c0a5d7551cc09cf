package lvm

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/test/lvmtest"
)

// BenchmarkCreateDelete compares carve's Create+Delete of a 1 GiB volume with
// bare `lvm lvcreate -n X -L 1073741824b -W y -y VG` + `lvm lvremove -f VG/X`
// run through the same exec runner, on the same real (metadata-only) VG, in
// the same run, interleaved and alternating which goes first. It takes at
// least minSamples pairs whatever b.N is, prints the medians and their ratio
// (target <= 1.10) and reports them as metrics; ns/op is carve's median.
func BenchmarkCreateDelete(b *testing.B) {
	const minSamples = 20
	vg, runner := lvmtest.NewVG(b, 4<<30)
	ctx := context.Background()
	be, err := New(ctx, runner, "bench", vg, "carve.csi.dev")
	if err != nil {
		b.Fatal(err)
	}
	carveOnce := func(i int) time.Duration {
		name := fmt.Sprintf("pvc-bench-%d", i)
		id := names.VolumeID(name)
		start := time.Now()
		if _, err := be.Create(ctx, backend.CreateRequest{ID: id, Name: name, SizeBytes: 1 << 30}); err != nil {
			b.Fatal(err)
		}
		if err := be.Delete(ctx, id); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	bareOnce := func(i int) time.Duration {
		lv := fmt.Sprintf("bare%d", i)
		start := time.Now()
		if _, err := runner.Run(ctx, "lvm", "lvcreate", "-n", lv, "-L", "1073741824b", "-W", "y", "-y", vg); err != nil {
			b.Fatal(err)
		}
		if _, err := runner.Run(ctx, "lvm", "lvremove", "-f", vg+"/"+lv); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	carveOnce(-1) // warm up (page cache, lvm's first scan)
	bareOnce(-1)

	n := max(b.N, minSamples)
	var carve, bare []time.Duration
	b.ResetTimer()
	for i := range n {
		if i%2 == 0 {
			carve = append(carve, carveOnce(i))
			bare = append(bare, bareOnce(i))
		} else {
			bare = append(bare, bareOnce(i))
			carve = append(carve, carveOnce(i))
		}
	}
	b.StopTimer()
	mc, mb := median(carve), median(bare)
	ratio := float64(mc) / float64(mb)
	fmt.Printf("lvm create+delete: carve median %v, bare median %v, ratio %.2f (target <= 1.10), %d samples each\n",
		mc.Round(100*time.Microsecond), mb.Round(100*time.Microsecond), ratio, n)
	b.ReportMetric(float64(mc.Nanoseconds()), "ns/op")
	b.ReportMetric(float64(mc)/1e6, "carve-ms")
	b.ReportMetric(float64(mb)/1e6, "bare-ms")
	b.ReportMetric(ratio, "ratio")
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
