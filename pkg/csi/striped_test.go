package csi

import (
	"context"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/pkg/backend/lvm"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/volume"
	"github.com/carve-csi/carve/test/lvmtest"
)

// TestStripedClass: a striped StorageClass through the node-local
// Controller on real lvm2 (metadata only) over three 64 MiB PVs, one of them
// holding a 20 MiB LV: GetCapacity's maximum_volume_size is what a volume
// of that striping really gets (exactly it is created, one extent more is
// ResourceExhausted), too many stripes and a pool that cannot stripe are
// InvalidArgument.
func TestStripedClass(t *testing.T) {
	m := lvmtest.NewMultiVG(t, 3, 64<<20, "")
	ctx := context.Background()
	if _, err := m.Runner.Run(ctx, "lvm", "lvcreate", "-n", "linear", "-l", "5", "-W", "y", "-y", m.Name, m.LoopDevs[0]); err != nil {
		t.Fatal(err)
	}
	b, err := lvm.New(ctx, m.Runner, "disks", m.Name, "carve.csi.dev")
	if err != nil {
		t.Fatal(err)
	}
	vols, err := volume.NewManager([]volume.Pool{{Name: "disks", Backend: b}, {Name: "mem", Backend: backendtest.NewMemory("mem", 1<<30, 4<<20)}}, "disks")
	if err != nil {
		t.Fatal(err)
	}
	c := &LocalController{Vols: vols, NodeID: "n", Locks: &keylock.Locks{}}
	block := []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}}
	const ext = 4 << 20
	for _, tc := range []struct {
		params map[string]string
		max    int64
	}{
		{map[string]string{ParamStripes: "2", ParamStripeSize: "128Ki"}, 30 * ext}, // the two empty PVs, 15 extents each
		{map[string]string{ParamStripes: "all"}, 30 * ext},                         // 3 x the fullest PV's 10
		{map[string]string{}, 40 * ext},                                            // linear: all free space
	} {
		capa, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: tc.params, VolumeCapabilities: block})
		if err != nil || capa.GetMaximumVolumeSize().GetValue() != tc.max || capa.GetAvailableCapacity() != 40*ext {
			t.Fatalf("GetCapacity(%v) = %v, %v; want max %d", tc.params, capa, err, tc.max)
		}
		create := func(name string, size int64) (*csi.CreateVolumeResponse, error) {
			return c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, Parameters: tc.params, VolumeCapabilities: block,
				CapacityRange: &csi.CapacityRange{RequiredBytes: size}})
		}
		_, err = create("pvc-over", tc.max+ext)
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("%v: max + 1 extent: %v, want ResourceExhausted", tc.params, err)
		}
		t.Logf("%v, max + 1 extent: %v", tc.params, err)
		v, err := create("pvc-max", tc.max)
		if err != nil || v.GetVolume().GetCapacityBytes() != tc.max {
			t.Fatalf("%v: exactly max: %v, %v", tc.params, v, err)
		}
		if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolume().GetVolumeId()}); err != nil {
			t.Fatal(err)
		}
	}
	for _, params := range []map[string]string{
		{ParamStripes: "4"},                         // more stripes than disks
		{ParamStripes: "2", ParamPool: "mem"},       // a pool that cannot stripe
		{ParamStripes: "2", ParamStripeSize: "8Mi"}, // above the extent size
	} {
		_, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-bad", Parameters: params, VolumeCapabilities: block,
			CapacityRange: &csi.CapacityRange{RequiredBytes: ext}})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("CreateVolume(%v): %v, want InvalidArgument", params, err)
		}
		capa, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: params, VolumeCapabilities: block})
		if params[ParamStripeSize] == "" && (err != nil || capa.GetAvailableCapacity() != 0 || capa.GetMaximumVolumeSize().GetValue() != 0) {
			t.Errorf("GetCapacity(%v) = %v, %v; want 0 for a striping the pool cannot make", params, capa, err)
		}
	}
}
