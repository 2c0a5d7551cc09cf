// Package bench measures carve's CSI calls against the raw tools, in the same
// run, on a real (metadata-only) LVM volume group.
package bench

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/carve-csi/carve/test/driver"
	"github.com/carve-csi/carve/test/lvmtest"
)

// BenchmarkCSICreateDelete compares CreateVolume+DeleteVolume over the node's
// Unix socket with bare `lvcreate` + `lvremove` of the same size, interleaved.
func BenchmarkCSICreateDelete(b *testing.B) {
	const minSamples = 20
	info := lvmtest.NewVGInfo(b, 8<<30, "")
	p := driver.Start(b, lvmtest.Env(info.ConfigDir), "--mode=node", "--nodeid=bench", "--pool=default=lvm:"+info.Name, "--kubelet-dir="+b.TempDir(), "--v=0")
	conn, err := grpc.NewClient("unix://"+p.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ctrl := csi.NewControllerClient(conn)
	ctx := context.Background()
	caps := []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
	carveOnce := func(i int) time.Duration {
		start := time.Now()
		resp, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: fmt.Sprintf("pvc-bench-%d", i),
			VolumeCapabilities: caps, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30}})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: resp.GetVolume().GetVolumeId()}); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	bareOnce := func(i int) time.Duration {
		lv := fmt.Sprintf("bare%d", i)
		start := time.Now()
		if _, err := info.Runner.Run(ctx, "lvm", "lvcreate", "-n", lv, "-L", "1073741824b", "-W", "y", "-y", info.Name); err != nil {
			b.Fatal(err)
		}
		if _, err := info.Runner.Run(ctx, "lvm", "lvremove", "-f", info.Name+"/"+lv); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	carveOnce(-1)
	bareOnce(-1)
	n := max(b.N, minSamples)
	var carve, bare []time.Duration
	b.ResetTimer()
	for i := range n {
		if i%2 == 0 {
			carve, bare = append(carve, carveOnce(i)), append(bare, bareOnce(i))
		} else {
			bare, carve = append(bare, bareOnce(i)), append(carve, carveOnce(i))
		}
	}
	b.StopTimer()
	mc, mb := median(carve), median(bare)
	ratio := float64(mc) / float64(mb)
	fmt.Printf("CSI CreateVolume+DeleteVolume: carve median %v, bare lvcreate+lvremove median %v, ratio %.2f (target <= 1.10), %d samples each\n",
		mc.Round(100*time.Microsecond), mb.Round(100*time.Microsecond), ratio, n)
	b.ReportMetric(ratio, "ratio")
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
