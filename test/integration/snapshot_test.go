package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend/backendtest"
	carvecsi "github.com/carve-csi/carve/pkg/csi"
	"github.com/carve-csi/carve/pkg/kubeclient"
	"github.com/carve-csi/carve/test/k8srig"
)

// TestSnapshotsControllerMode (issue 14): snapshots and clones through the
// controller path on a real API server, with the CRDs and the informer
// waits as shipped. Controller and three node agents run in this process as
// in BenchmarkControllerBurst, each node with a snapshotting in-memory pool
// of type lvm-thin; the controller's waits are woken by informer events
// only (no recheck within a call). A volume on node-1 is snapshotted and the snapshot
// cloned into three volumes whose requests prefer node-2: all land on
// node-1, say so in their topology and carry the content source; node-1's
// NodeStorage and GetCapacity count the source, the snapshot and the three
// copies, the other nodes nothing; a clone whose requisite topology lacks
// node-1 is ResourceExhausted with nothing made. Then everything is deleted
// and nothing is left: no LocalVolume, no LocalSnapshot, no device, no
// snapshot, every node's capacity whole again.
func TestSnapshotsControllerMode(t *testing.T) {
	gate(t, k8srig.RepoRoot())
	admin, _ := startControlPlane(t, benchBin(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r := startArm(t, ctx, admin, &burstArm{name: "snapshots", watch: true, qps: kubeclient.DefaultQPS, burst: kubeclient.DefaultBurst,
		snapshots: true})
	// The waits must be woken by the informers' events (LocalSnapshot's
	// included): with no recheck within a call's minute, a wait that only
	// rechecked would time out.
	r.cc.Vols.Recheck = 10 * time.Minute
	const size = 256 << 20
	call := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 60*time.Second) }
	topo := func(requisite []string, preferred ...string) *csi.TopologyRequirement {
		req := &csi.TopologyRequirement{}
		for _, n := range requisite {
			req.Requisite = append(req.Requisite, &csi.Topology{Segments: map[string]string{k8srig.TopologyKey: n}})
		}
		for _, n := range preferred {
			req.Preferred = append(req.Preferred, &csi.Topology{Segments: map[string]string{k8srig.TopologyKey: n}})
		}
		return req
	}
	create := func(name string, src *csi.VolumeContentSource, tr *csi.TopologyRequirement) (*csi.Volume, error) {
		cctx, ccancel := call()
		defer ccancel()
		resp, err := r.cc.CreateVolume(cctx, &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
			VolumeCapabilities: burstCaps, Parameters: map[string]string{carvecsi.ParamPool: k8srig.PoolName},
			AccessibilityRequirements: tr, VolumeContentSource: src})
		return resp.GetVolume(), err
	}

	src, err := create("pvc-snap-src", nil, topo([]string{"node-1"}, "node-1"))
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := call()
	sresp, err := r.cc.CreateSnapshot(cctx, &csi.CreateSnapshotRequest{Name: "snapshot-cache", SourceVolumeId: src.GetVolumeId()})
	ccancel()
	if err != nil {
		t.Fatal(err)
	}
	snap := sresp.GetSnapshot()
	if !snap.GetReadyToUse() || snap.GetSizeBytes() != size || snap.GetSourceVolumeId() != src.GetVolumeId() {
		t.Fatalf("snapshot %v", snap)
	}
	ls := &v1alpha1.LocalSnapshot{}
	if err := r.direct.Get(ctx, client.ObjectKey{Name: snap.GetSnapshotId()}, ls); err != nil || ls.Spec.NodeName != "node-1" ||
		ls.Status.Phase != v1alpha1.PhaseReady || len(ls.Finalizers) != 1 {
		t.Fatalf("LocalSnapshot on the API server: %+v, %v", ls, err)
	}
	t.Logf("snapshot %s of %s on node-1: %d bytes", snap.GetSnapshotId(), src.GetVolumeId(), snap.GetSizeBytes())

	fromSnap := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshotId()}}}
	var clones []string
	for i := range 3 {
		// As external-provisioner asks for a late-bound claim whose pod the
		// scheduler put on node-2 (allowed: every node).
		v, err := create(fmt.Sprintf("pvc-snap-clone-%d", i), fromSnap, topo(burstNodes, "node-2"))
		if err != nil {
			t.Fatalf("clone %d: %v", i, err)
		}
		if n := v.GetAccessibleTopology()[0].GetSegments()[k8srig.TopologyKey]; n != "node-1" || v.GetContentSource().GetSnapshot().GetSnapshotId() != snap.GetSnapshotId() {
			t.Fatalf("clone %d: %v; want node-1 and the snapshot as content source", i, v)
		}
		dev, err := r.pools["node-1"].Get(ctx, v.GetVolumeId())
		if err != nil || dev.Source != snap.GetSnapshotId() || dev.SizeBytes != size {
			t.Fatalf("clone %d on node-1: %+v, %v", i, dev, err)
		}
		clones = append(clones, v.GetVolumeId())
	}
	if _, err := create("pvc-snap-elsewhere", fromSnap, topo([]string{"node-2"}, "node-2")); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("clone restricted to node-2: %v, want ResourceExhausted", err)
	} else {
		t.Logf("clone restricted to node-2: %v", err)
	}

	// Capacity: node-1 holds the source, the snapshot and three copies.
	wantFree := map[string]int64{"node-1": nodePool - 5*size, "node-2": nodePool, "node-3": nodePool}
	checkCapacity(t, ctx, r, wantFree, 4, 1)
	cctx, ccancel = call()
	lresp, err := r.cc.ListSnapshots(cctx, &csi.ListSnapshotsRequest{SourceVolumeId: src.GetVolumeId()})
	ccancel()
	if err != nil || len(lresp.GetEntries()) != 1 || lresp.GetEntries()[0].GetSnapshot().GetSnapshotId() != snap.GetSnapshotId() {
		t.Fatalf("ListSnapshots: %v, %v", lresp, err)
	}

	// Delete everything.
	for _, id := range append(clones, src.GetVolumeId()) {
		cctx, ccancel := call()
		_, err := r.cc.DeleteVolume(cctx, &csi.DeleteVolumeRequest{VolumeId: id})
		ccancel()
		if err != nil {
			t.Fatalf("DeleteVolume %s: %v", id, err)
		}
	}
	for range 2 { // the second is a retry of a delete that already happened
		cctx, ccancel := call()
		_, err := r.cc.DeleteSnapshot(cctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()})
		ccancel()
		if err != nil {
			t.Fatalf("DeleteSnapshot: %v", err)
		}
	}
	checkCapacity(t, ctx, r, map[string]int64{"node-1": nodePool, "node-2": nodePool, "node-3": nodePool}, 0, 0)
}

// checkCapacity waits until the API server and the pools agree on exactly
// wantVols LocalVolumes (all Ready) and wantSnaps LocalSnapshots (all Ready)
// with as many devices and snapshots, and every node's NodeStorage and
// GetCapacity give want[node] free bytes, its pool's own figure.
func checkCapacity(t *testing.T, ctx context.Context, r *armRig, want map[string]int64, wantVols, wantSnaps int) {
	t.Helper()
	deadline := time.Now().Add(k8srig.WaitLong)
	for {
		var problems []string
		var lvs v1alpha1.LocalVolumeList
		var lss v1alpha1.LocalSnapshotList
		if err := r.direct.List(ctx, &lvs); err != nil {
			problems = append(problems, err.Error())
		}
		if err := r.direct.List(ctx, &lss); err != nil {
			problems = append(problems, err.Error())
		}
		for _, lv := range lvs.Items {
			if lv.Status.Phase != v1alpha1.PhaseReady || lv.DeletionTimestamp != nil {
				problems = append(problems, fmt.Sprintf("LocalVolume %s: phase %q", lv.Name, lv.Status.Phase))
			}
		}
		for _, ls := range lss.Items {
			if ls.Status.Phase != v1alpha1.PhaseReady || ls.DeletionTimestamp != nil {
				problems = append(problems, fmt.Sprintf("LocalSnapshot %s: phase %q", ls.Name, ls.Status.Phase))
			}
		}
		devices, snaps := 0, 0
		for node, pool := range r.pools {
			vols, err := pool.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			devices += len(vols)
			ss, err := backendtest.Snapshots{Memory: pool}.ListSnapshots(ctx)
			if err != nil {
				t.Fatal(err)
			}
			snaps += len(ss)
			capa, err := pool.Capacity(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if capa.FreeBytes != want[node] {
				problems = append(problems, fmt.Sprintf("node %s's pool has %d bytes free, want %d", node, capa.FreeBytes, want[node]))
			}
			ns := &v1alpha1.NodeStorage{}
			if err := r.direct.Get(ctx, client.ObjectKey{Name: node}, ns); err != nil {
				problems = append(problems, err.Error())
			} else if len(ns.Status.Pools) != 1 || ns.Status.Pools[0].FreeBytes != want[node] {
				problems = append(problems, fmt.Sprintf("node %s publishes %+v, want %d free", node, ns.Status.Pools, want[node]))
			}
			cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
			gc, err := r.cc.GetCapacity(cctx, &csi.GetCapacityRequest{Parameters: map[string]string{carvecsi.ParamPool: k8srig.PoolName},
				AccessibleTopology: &csi.Topology{Segments: map[string]string{k8srig.TopologyKey: node}}})
			ccancel()
			if err != nil || gc.GetAvailableCapacity() != want[node] {
				problems = append(problems, fmt.Sprintf("GetCapacity(%s) = %v, %v; want %d", node, gc, err, want[node]))
			}
		}
		if len(lvs.Items) != wantVols || devices != wantVols || len(lss.Items) != wantSnaps || snaps != wantSnaps {
			problems = append(problems, fmt.Sprintf("%d LocalVolumes, %d devices, %d LocalSnapshots, %d snapshots; want %d, %d, %d, %d",
				len(lvs.Items), devices, len(lss.Items), snaps, wantVols, wantVols, wantSnaps, wantSnaps))
		}
		if len(problems) == 0 {
			t.Logf("%d LocalVolumes = %d devices, %d LocalSnapshots = %d snapshots, free bytes %v everywhere (pools, NodeStorage, GetCapacity)",
				wantVols, devices, wantSnaps, snaps, want)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", k8srig.WaitLong, problems)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
