package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/volume"
)

const ext = int64(4) << 20 // the extent size of the pools below

// stripedStorage is a node whose default pool "fast" is an lvm pool of
// 15-extent devices with freeExt free extents each, as a node publishes it.
func stripedStorage(name string, freeExt ...int64) *v1alpha1.NodeStorage {
	ns := nodeStorage(name, 0)
	p := &ns.Status.Pools[0]
	p.AlignBytes = ext
	p.TotalBytes = 0
	for i, f := range freeExt {
		p.Devices = append(p.Devices, v1alpha1.PoolDevice{Path: fmt.Sprintf("/dev/vd%c", 'b'+i), SizeBytes: 15 * ext, FreeBytes: f * ext})
		p.TotalBytes += 15 * ext
		p.FreeBytes += f * ext
	}
	p.MaxVolumeBytes = p.FreeBytes
	return ns
}

// TestStripedCapacity: GetCapacity of a striped class from NodeStorage is
// what the node-local controller answers on that node (TestStripedClass in
// pkg/csi, on the same free extents 10, 15, 15): stripes x the free extents
// of the device with the stripes-th most; nothing where the pool cannot
// stripe so; an unstriped class is unchanged.
func TestStripedCapacity(t *testing.T) {
	pmem := nodeStorage("n3", 40*ext)
	pmem.Status.Pools[0].Type = "pmem" // publishes no devices
	sick := stripedStorage("n4", 15, 15)
	sick.Status.Pools[0].Healthy = false
	c := newClient(t, stripedStorage("n1", 10, 15, 15), stripedStorage("n2", 15), pmem, sick)
	v := &Volumes{Client: c}
	ctx := context.Background()
	for _, tc := range []struct {
		node      string
		s         volume.Striping
		free, max int64
	}{
		{"n1", volume.Striping{Stripes: 2, StripeSizeBytes: 128 << 10}, 40 * ext, 30 * ext}, // the two devices with 15
		{"n1", volume.Striping{Stripes: 3}, 40 * ext, 30 * ext},                             // 3 x the fullest's 10
		{"n1", volume.Striping{Stripes: backend.StripesAll}, 40 * ext, 30 * ext},
		{"n1", volume.Striping{Stripes: 4}, 0, 0},                                // more stripes than devices
		{"n1", volume.Striping{}, 40 * ext, 40 * ext},                            // linear: all free space
		{"n1", volume.Striping{Stripes: 1}, 40 * ext, 40 * ext},                  // one stripe is linear
		{"n2", volume.Striping{Stripes: 2}, 0, 0},                                // one device
		{"n2", volume.Striping{Stripes: backend.StripesAll}, 15 * ext, 15 * ext}, // all of one device: linear
		{"n3", volume.Striping{Stripes: 2}, 0, 0},                                // no devices: cannot stripe
		{"n4", volume.Striping{Stripes: 2}, 0, 0},                                // unhealthy
		{"", volume.Striping{Stripes: 2}, 40 * ext, 30 * ext},                    // only n1 can
		{"", volume.Striping{Stripes: backend.StripesAll}, 55 * ext, 30 * ext},   // n1 and n2
	} {
		capa, err := v.CapacityFor(ctx, tc.node, "", tc.s)
		if err != nil || capa.FreeBytes != tc.free || capa.MaxVolumeBytes != tc.max {
			t.Errorf("CapacityFor(%q, %+v) = %+v, %v; want free %d, max %d", tc.node, tc.s, capa, err, tc.free, tc.max)
		}
	}
}

// TestStripedPlacement: a striped volume of exactly the striped maximum is
// placed on the one node whose devices can hold it, with its striping in the
// LocalVolume; one extent more is ErrNoRoom (ResourceExhausted) and nothing
// is written; a striping no candidate can make is backend.ErrCannotStripe
// (InvalidArgument), as on the node; a retry with another striping is
// incompatible.
func TestStripedPlacement(t *testing.T) {
	c := newClient(t, stripedStorage("n1", 10, 15, 15), stripedStorage("n2", 40), nodeStorage("n3", 100*ext))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var mu sync.Mutex
	go fakeNodes(ctx, c, map[string]int64{"n1": 40 * ext, "n2": 40 * ext, "n3": 100 * ext}, &mu)
	v := &Volumes{Client: c, Poll: 5 * time.Millisecond}
	all := []string{"n1", "n2", "n3"}
	two := volume.Striping{Stripes: 2, StripeSizeBytes: 128 << 10}

	_, err := v.Create(ctx, CreateRequest{Name: "pvc-over", Range: volume.Range{RequiredBytes: 30*ext + ext}, Requisite: all, Striping: two})
	if !errors.Is(err, ErrNoRoom) {
		t.Fatalf("max + 1 extent: %v, want ErrNoRoom", err)
	}
	t.Log(err)
	_, err = v.Create(ctx, CreateRequest{Name: "pvc-four", Range: volume.Range{RequiredBytes: ext}, Requisite: all, Striping: volume.Striping{Stripes: 4}})
	if !errors.Is(err, backend.ErrCannotStripe) {
		t.Fatalf("4 stripes where no pool has 4 devices: %v, want ErrCannotStripe", err)
	}
	t.Log(err)
	var list v1alpha1.LocalVolumeList
	if err := c.List(ctx, &list); err != nil || len(list.Items) != 0 {
		t.Fatalf("refused placements wrote %d LocalVolumes (%v)", len(list.Items), err)
	}

	req := CreateRequest{Name: "pvc-max", Range: volume.Range{RequiredBytes: 30 * ext}, Preferred: []string{"n3", "n2"}, Requisite: all, Striping: two}
	lv, err := v.Create(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if lv.Spec.NodeName != "n1" || lv.Spec.Stripes != "2" || lv.Spec.StripeSizeBytes != 128<<10 || lv.Spec.SizeBytes != 30*ext {
		t.Fatalf("placed %+v, want on n1 with stripes 2 of 128 KiB", lv.Spec)
	}
	all4 := req
	all4.Striping = volume.Striping{Stripes: backend.StripesAll}
	if _, err := v.Create(ctx, all4); !errors.Is(err, volume.ErrIncompatible) {
		t.Fatalf("retry with stripes all: %v, want ErrIncompatible", err)
	}
	// "all" is written as such: the node resolves it.
	lv, err = v.Create(ctx, CreateRequest{Name: "pvc-all", Range: volume.Range{RequiredBytes: ext}, Requisite: []string{"n1"},
		Striping: volume.Striping{Stripes: backend.StripesAll}})
	if err != nil || lv.Spec.Stripes != "all" {
		t.Fatalf("stripes all: %+v, %v", lv, err)
	}
	// An unstriped volume writes no striping.
	lv, err = v.Create(ctx, CreateRequest{Name: "pvc-linear", Range: volume.Range{RequiredBytes: ext}, Requisite: []string{"n3"}})
	if err != nil || lv.Spec.Stripes != "" || lv.Spec.StripeSizeBytes != 0 {
		t.Fatalf("linear: %+v, %v", lv, err)
	}
}

// TestStripedPlacementCountsPending: bytes this controller placed on a node
// that its NodeStorage does not show yet may all sit on one device, so a
// striped placement counts them on every device. Two devices of 15 free
// extents: a pending linear volume of 15 extents may have filled one, so no
// striped volume fits until the node publishes; with nothing pending, the
// striped maximum does.
func TestStripedPlacementCountsPending(t *testing.T) {
	c := newClient(t, stripedStorage("n1", 15, 15))
	v := &Volumes{Client: c}
	ctx := context.Background()
	two := volume.Striping{Stripes: 2}
	n1 := []string{"n1"}
	if n, err := v.place(ctx, "lin", CreateRequest{Name: "lin", Requisite: n1}, 15*ext); err != nil || n != "n1" {
		t.Fatalf("linear placement: %q, %v", n, err)
	}
	if _, err := v.place(ctx, "str", CreateRequest{Name: "str", Requisite: n1, Striping: two}, 2*ext); !errors.Is(err, ErrNoRoom) {
		t.Fatalf("striped placement with 15 extents pending: %v, want ErrNoRoom", err)
	}
	v.placed.drop("lin")
	if n, err := v.place(ctx, "str", CreateRequest{Name: "str", Requisite: n1, Striping: two}, 30*ext); err != nil || n != "n1" {
		t.Fatalf("striped placement of the maximum with nothing pending: %q, %v", n, err)
	}
}

// TestStripedOldCRD: an API server whose LocalVolume CRD predates striping
// prunes spec.stripes, and the node would make a linear LV; the controller
// sees the stored object lost its striping, deletes it and says why
// (ErrOldSchema, FailedPrecondition) instead of handing out a linear volume.
func TestStripedOldCRD(t *testing.T) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	ns := stripedStorage("n1", 15, 15)
	c := fake.NewClientBuilder().WithScheme(s).WithObjects(ns, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}).
		WithStatusSubresource(&v1alpha1.LocalVolume{}, &v1alpha1.NodeStorage{}).
		WithInterceptorFuncs(interceptor.Funcs{Create: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.CreateOption) error {
			if lv, ok := o.(*v1alpha1.LocalVolume); ok { // pruned as by a CRD without the fields
				lv.Spec.Stripes, lv.Spec.StripeSizeBytes = "", 0
			}
			return c.Create(ctx, o, opts...)
		}}).Build()
	v := &Volumes{Client: c, Poll: 5 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := v.Create(ctx, CreateRequest{Name: "pvc", Range: volume.Range{RequiredBytes: ext}, Striping: volume.Striping{Stripes: 2}})
	if !errors.Is(err, ErrOldSchema) {
		t.Fatalf("striped create through a CRD without striping: %v, want ErrOldSchema", err)
	}
	t.Log(err)
	var list v1alpha1.LocalVolumeList
	if err := c.List(ctx, &list); err != nil || len(list.Items) != 0 {
		t.Fatalf("%d LocalVolumes left (%v), want the pruned one deleted", len(list.Items), err)
	}
	// Unstriped volumes lose nothing there and are made as before.
	go fakeNodes(ctx, c, map[string]int64{"n1": 30 * ext}, &sync.Mutex{})
	if lv, err := v.Create(ctx, CreateRequest{Name: "pvc-linear", Range: volume.Range{RequiredBytes: ext}}); err != nil || lv.Status.Phase != v1alpha1.PhaseReady {
		t.Fatalf("linear create: %+v, %v", lv, err)
	}
}
