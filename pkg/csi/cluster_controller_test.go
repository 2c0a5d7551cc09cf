package csi

import (
	"context"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/cluster"
	"github.com/carve-csi/carve/pkg/keylock"
)

func seg(node string) *csi.Topology {
	return &csi.Topology{Segments: map[string]string{TopologyKey: node}}
}

// nodeAnswers plays the node agents: Ready when it fits in free, else Failed/ResourceExhausted.
func nodeAnswers(ctx context.Context, c client.Client, free int64) {
	for ctx.Err() == nil {
		var list v1alpha1.LocalVolumeList
		_ = c.List(ctx, &list)
		for i := range list.Items {
			lv := &list.Items[i]
			if lv.Status.Phase != "" && lv.Status.CurrentSizeBytes >= lv.Spec.SizeBytes {
				continue
			}
			if lv.Spec.SizeBytes <= free {
				lv.Status = v1alpha1.LocalVolumeStatus{Phase: v1alpha1.PhaseReady, CurrentSizeBytes: lv.Spec.SizeBytes}
			} else if lv.Status.Phase == "" {
				lv.Status = v1alpha1.LocalVolumeStatus{Phase: v1alpha1.PhaseFailed, Code: "ResourceExhausted", Message: "insufficient free space"}
			}
			_ = c.Status().Update(ctx, lv)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestClusterController(t *testing.T) {
	s := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := corev1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	ns := func(name string, free int64) *v1alpha1.NodeStorage {
		return &v1alpha1.NodeStorage{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: v1alpha1.NodeStorageStatus{DefaultPool: "fast",
			Pools: []v1alpha1.PoolStatus{{Name: "fast", Type: "lvm", TotalBytes: 10 * gib, FreeBytes: free, MaxVolumeBytes: free, Healthy: true}}}}
	}
	c := fake.NewClientBuilder().WithScheme(s).WithObjects(ns("n1", 6*gib), ns("n2", 2*gib),
		// Nodes that exist: the controller ignores NodeStorage of others.
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n3"}}). // carve-node not up on n3 yet
		WithStatusSubresource(&v1alpha1.LocalVolume{}).Build()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go nodeAnswers(ctx, c, 5*gib) // n1 really has only 5 GiB
	cc := &ClusterController{Vols: &cluster.Volumes{Client: c, Poll: 5 * time.Millisecond}, Locks: &keylock.Locks{}}
	caps := []*csi.VolumeCapability{mountCap("xfs")}

	resp, err := cc.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-1", VolumeCapabilities: caps,
		CapacityRange:             &csi.CapacityRange{RequiredBytes: 4 * gib},
		AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{seg("n1"), seg("n2")}, Preferred: []*csi.Topology{seg("n2")}}})
	if err != nil {
		t.Fatal(err)
	}
	if v := resp.GetVolume(); v.GetAccessibleTopology()[0].GetSegments()[TopologyKey] != "n1" || v.GetCapacityBytes() != 4*gib {
		t.Fatalf("volume %v: want n1 (the preferred n2 has no room)", v)
	}
	for _, tc := range []struct {
		name string
		req  *csi.CreateVolumeRequest
		code codes.Code
	}{
		{"no carve segment", &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: caps, AccessibilityRequirements: &csi.TopologyRequirement{
			Requisite: []*csi.Topology{{Segments: map[string]string{"zone": "z1"}}}}}, codes.ResourceExhausted},
		{"no node holds it", &csi.CreateVolumeRequest{Name: "b", VolumeCapabilities: caps, CapacityRange: &csi.CapacityRange{RequiredBytes: 7 * gib}}, codes.ResourceExhausted},
		{"unknown pool", &csi.CreateVolumeRequest{Name: "c", VolumeCapabilities: caps, Parameters: map[string]string{"pool": "gold"}}, codes.InvalidArgument},
		{"node without a carve driver", &csi.CreateVolumeRequest{Name: "d", VolumeCapabilities: caps, AccessibilityRequirements: &csi.TopologyRequirement{
			Requisite: []*csi.Topology{seg("n9")}}}, codes.InvalidArgument},
		{"node that publishes no storage yet", &csi.CreateVolumeRequest{Name: "d3", VolumeCapabilities: caps, AccessibilityRequirements: &csi.TopologyRequirement{
			Requisite: []*csi.Topology{seg("n3")}}}, codes.Unavailable},
		{"node refuses", &csi.CreateVolumeRequest{Name: "e", VolumeCapabilities: caps, CapacityRange: &csi.CapacityRange{RequiredBytes: 5*gib + 1},
			AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{seg("n1")}}}, codes.ResourceExhausted},
		{"limit below required", &csi.CreateVolumeRequest{Name: "f", VolumeCapabilities: caps, CapacityRange: &csi.CapacityRange{RequiredBytes: 2, LimitBytes: 1}}, codes.OutOfRange},
		// A source that does not exist (TestClusterSnapshotsAndClones has the rest).
		{"unknown content source", &csi.CreateVolumeRequest{Name: "g", VolumeCapabilities: caps, VolumeContentSource: &csi.VolumeContentSource{
			Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: "carve-x-0123456789abcdef"}}}}, codes.NotFound},
	} {
		if _, err := cc.CreateVolume(ctx, tc.req); status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.code)
		}
	}
	var list v1alpha1.LocalVolumeList
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := c.List(ctx, &list); err != nil {
			t.Fatal(err)
		}
		if len(list.Items) == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(list.Items) != 1 {
		t.Fatalf("%d LocalVolumes after failed requests, want 1", len(list.Items))
	}
	capa, err := cc.GetCapacity(ctx, &csi.GetCapacityRequest{AccessibleTopology: seg("n2")})
	if err != nil || capa.GetAvailableCapacity() != 2*gib {
		t.Fatalf("capacity of n2: %v, %v", capa, err)
	}
	if capa, _ := cc.GetCapacity(ctx, &csi.GetCapacityRequest{}); capa.GetAvailableCapacity() != 8*gib || capa.GetMaximumVolumeSize().GetValue() != 6*gib {
		t.Fatalf("capacity without topology: %v", capa)
	}
	id := resp.GetVolume().GetVolumeId()
	if _, err := cc.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "n1"}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("publish without attach: %v", err)
	}
	cc.Attach = true
	if _, err := cc.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "n2", VolumeCapability: caps[0]}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("publish on the wrong node: %v", err)
	}
	if _, err := cc.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "n1", VolumeCapability: caps[0]}); err != nil {
		t.Fatalf("publish on its node: %v", err)
	}
	if _, err := cc.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
	if l, err := cc.ListVolumes(ctx, &csi.ListVolumesRequest{}); err != nil || len(l.GetEntries()) != 0 {
		t.Fatalf("list after delete: %v, %v", l, err)
	}
}
