package csi

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/pkg/backend/lvm"
	"github.com/carve-csi/carve/pkg/cluster"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/nodeagent"
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
	ctx := context.Background()
	_, vols := stripedPools(ctx, t)
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

// TestClusterStripedClass: the striped classes of TestStripedClass through
// the cluster Controller (--mode=controller) over a node agent serving the
// same real lvm2 pool (metadata only), a fake client being the API:
// GetCapacity from the node's published NodeStorage answers what the
// node-local Controller answers on the node, exactly that maximum becomes an
// LV striped as asked, one extent more is ResourceExhausted, and a striping
// the pool cannot make is InvalidArgument, as in node mode.
func TestClusterStripedClass(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, vols := stripedPools(ctx, t)
	local := &LocalController{Vols: vols, NodeID: "n", Locks: &keylock.Locks{}}
	scheme, err := nodeagent.Scheme()
	if err != nil {
		t.Fatal(err)
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithStatusSubresource(&v1alpha1.LocalVolume{}, &v1alpha1.NodeStorage{}).
		WithObjects(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", UID: "uid-n"}}).Build()
	agent := &nodeagent.Agent{NodeName: "n", Vols: vols, Locks: &keylock.Locks{}, Client: c}
	if err := agent.Publish(ctx); err != nil {
		t.Fatal(err)
	}
	go func() { // the node's reconciler, without a manager
		for ctx.Err() == nil {
			var list v1alpha1.LocalVolumeList
			_ = c.List(ctx, &list)
			for _, lv := range list.Items {
				_, _ = agent.Reconcile(ctx, reconcile.Request{NamespacedName: types.NamespacedName{Name: lv.Name}})
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	cc := &ClusterController{Vols: &cluster.Volumes{Client: c, Poll: 5 * time.Millisecond}, Locks: &keylock.Locks{}}
	block := []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}}
	topo := &csi.Topology{Segments: map[string]string{TopologyKey: "n"}}
	const ext = 4 << 20
	for _, tc := range []struct {
		params  map[string]string
		max     int64
		stripes string // lvs -o stripes of the LV made
	}{
		{map[string]string{ParamStripes: "2", ParamStripeSize: "128Ki"}, 30 * ext, "2"},
		{map[string]string{ParamStripes: "all"}, 30 * ext, "3"},
		{map[string]string{}, 40 * ext, "1"},
	} {
		want, err := local.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: tc.params, VolumeCapabilities: block})
		if err != nil {
			t.Fatal(err)
		}
		got, err := cc.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: tc.params, VolumeCapabilities: block, AccessibleTopology: topo})
		if err != nil || got.GetMaximumVolumeSize().GetValue() != tc.max || got.GetMaximumVolumeSize().GetValue() != want.GetMaximumVolumeSize().GetValue() ||
			got.GetAvailableCapacity() != want.GetAvailableCapacity() {
			t.Fatalf("%v: cluster GetCapacity %v, %v; node-local %v; want max %d", tc.params, got, err, want, tc.max)
		}
		create := func(name string, size int64) (*csi.CreateVolumeResponse, error) {
			return cc.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, Parameters: tc.params, VolumeCapabilities: block,
				CapacityRange:             &csi.CapacityRange{RequiredBytes: size},
				AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{topo}}})
		}
		if _, err := create("pvc-over", tc.max+ext); status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("%v: max + 1 extent: %v, want ResourceExhausted", tc.params, err)
		}
		v, err := create("pvc-max", tc.max)
		if err != nil || v.GetVolume().GetCapacityBytes() != tc.max {
			t.Fatalf("%v: exactly max: %v, %v", tc.params, v, err)
		}
		// One line per segment: a linear LV over three PVs has three.
		out, err := m.Runner.Run(ctx, "lvm", "lvs", "-o", "stripes", "--noheadings", m.Name+"/"+v.GetVolume().GetVolumeId())
		segs := strings.Fields(string(out))
		same := len(segs) > 0
		for _, s := range segs {
			same = same && s == tc.stripes
		}
		if err != nil || !same || (tc.stripes != "1" && len(segs) != 1) {
			t.Fatalf("%v: lvs -o stripes: %q, %v; want %s", tc.params, out, err, tc.stripes)
		}
		t.Logf("%v: %s bytes, lvs -o stripes: %v", tc.params, strconv.FormatInt(tc.max, 10), segs)
		if _, err := cc.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolume().GetVolumeId()}); err != nil {
			t.Fatal(err)
		}
	}
	for _, params := range []map[string]string{
		{ParamStripes: "4"},                   // more stripes than disks
		{ParamStripes: "2", ParamPool: "mem"}, // a pool that cannot stripe
	} {
		_, err := cc.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-bad", Parameters: params, VolumeCapabilities: block,
			CapacityRange: &csi.CapacityRange{RequiredBytes: ext}, AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{topo}}})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("CreateVolume(%v): %v, want InvalidArgument", params, err)
		}
		capa, err := cc.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: params, VolumeCapabilities: block, AccessibleTopology: topo})
		if err != nil || capa.GetAvailableCapacity() != 0 || capa.GetMaximumVolumeSize().GetValue() != 0 {
			t.Errorf("GetCapacity(%v) = %v, %v; want 0 for a striping the pool cannot make", params, capa, err)
		}
	}
	// A stripe size lvm does not take is the node's InvalidArgument, passed on.
	_, err = cc.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-bigstripe", Parameters: map[string]string{ParamStripes: "2", ParamStripeSize: "8Mi"},
		VolumeCapabilities: block, CapacityRange: &csi.CapacityRange{RequiredBytes: ext}, AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{topo}}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("stripe size above the extent size: %v, want InvalidArgument", err)
	}
}

// stripedPools is the setup both striped-class tests share: an lvm pool
// "disks" on real lvm2 (metadata only) over three 64 MiB PVs, the first
// holding a 5-extent LV, and a memory pool "mem" that cannot stripe.
func stripedPools(ctx context.Context, t *testing.T) (*lvmtest.Multi, *volume.Manager) {
	t.Helper()
	m := lvmtest.NewMultiVG(t, 3, 64<<20, "")
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
	return m, vols
}
