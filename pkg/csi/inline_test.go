package csi

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/mounter"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/pkg/volume"
)

// countingPool counts the devices made and removed (lvm2's vg_seqno in the
// issue: +2 per retry when every failed publish made and removed one).
type countingPool struct {
	*backendtest.Memory
	creates, deletes atomic.Int32
}

func (c *countingPool) Create(ctx context.Context, req backend.CreateRequest) (*backend.Volume, error) {
	v, err := c.Memory.Create(ctx, req)
	if err == nil {
		c.creates.Add(1)
	}
	return v, err
}

func (c *countingPool) Delete(ctx context.Context, id string) error {
	err := c.Memory.Delete(ctx, id)
	if err == nil {
		c.deletes.Add(1)
	}
	return err
}

// newCountingNode is a Node (no gRPC) on a counting pool.
func newCountingNode(t *testing.T) (*Node, *countingPool, *fakeMounter, string) {
	t.Helper()
	pool := &countingPool{Memory: backendtest.NewMemory("default", 10*gib, 4*mib)}
	vols, err := volume.NewManager([]volume.Pool{{Name: "default", Backend: pool}}, "default")
	if err != nil {
		t.Fatal(err)
	}
	kubelet := t.TempDir()
	fm := newFakeMounter()
	return &Node{Vols: vols, Mount: fm, NodeID: "node-1", Locks: &keylock.Locks{}, KubeletDir: kubelet}, pool, fm, kubelet
}

// podInline is kubelet's inline publish for pod uid: its pod directory
// exists, as kubelet makes it before any volume.
func podInline(t *testing.T, kubelet, uid, handle string, attrs map[string]string) *csi.NodePublishVolumeRequest {
	t.Helper()
	pod := filepath.Join(kubelet, "pods", uid)
	if err := os.MkdirAll(filepath.Join(pod, "volumes", "kubernetes.io~csi", "scratch"), 0o750); err != nil {
		t.Fatal(err)
	}
	vctx := map[string]string{ephemeralKey: "true"}
	for k, v := range attrs {
		vctx[k] = v
	}
	return &csi.NodePublishVolumeRequest{VolumeId: handle, VolumeContext: vctx, VolumeCapability: mountCap(""),
		TargetPath: filepath.Join(pod, "volumes", "kubernetes.io~csi", "scratch", "mount")}
}

// A publish that fails after the device exists keeps the device for
// kubelet's retry: no create/delete per retry.
func TestInlineFailedPublishKeepsDeviceForRetry(t *testing.T) {
	n, pool, fm, kubelet := newCountingNode(t)
	ctx := context.Background()
	req := podInline(t, kubelet, "pod-a", "csi-retry", map[string]string{"size": "64Mi"})
	for i := 0; i < 3; i++ {
		fm.failNext = errFake
		_, err := n.NodePublishVolume(ctx, req)
		if status.Code(err) != codes.Internal {
			t.Fatalf("publish #%d with a failing mount: %v, want Internal", i, err)
		}
		if strings.Contains(status.Convert(err).Message(), "\n") {
			t.Errorf("multi-line message: %q", status.Convert(err).Message())
		}
	}
	if c, d := pool.creates.Load(), pool.deletes.Load(); c != 1 || d != 0 {
		t.Fatalf("three failed publishes made %d devices and removed %d; want 1 made, 0 removed", c, d)
	}
	// The failed volume survives a clean-up round while its pod exists.
	if err := n.CleanupOrphans(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Get(ctx, names.VolumeID("csi-retry")); err != nil {
		t.Fatalf("clean-up removed the device of a publish kubelet retries: %v", err)
	}
	if _, err := n.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("retried publish: %v", err)
	}
	if c := pool.creates.Load(); c != 1 {
		t.Fatalf("the successful retry made a new device (%d made)", c)
	}
	if _, err := n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath}); err != nil {
		t.Fatal(err)
	}
	if d := pool.deletes.Load(); d != 1 {
		t.Fatalf("unpublish removed %d devices, want 1", d)
	}
}

// Inline requests below the filesystem's minimum are rounded up to it before
// the device is made (mkfs.xfs refuses less than 300 MiB).
func TestInlineSizeRaisedToFilesystemMinimum(t *testing.T) {
	n, pool, _, kubelet := newCountingNode(t)
	ctx := context.Background()
	for _, tc := range []struct {
		handle string
		attrs  map[string]string
		fs     string
		want   int64
	}{
		{"csi-xfs", map[string]string{"size": "100Mi", "fsType": "xfs"}, "", mounter.MinXFSBytes},
		{"csi-xfs-cap", map[string]string{"size": "100Mi"}, "xfs", mounter.MinXFSBytes},
		{"csi-ext4", map[string]string{"size": "64Mi"}, "", 64 * mib},
		{"csi-ext4-tiny", map[string]string{"size": "1Ki"}, "", 4 * mib}, // 224 KiB, then one 4 MiB extent
	} {
		req := podInline(t, kubelet, "pod-"+tc.handle, tc.handle, tc.attrs)
		req.VolumeCapability = mountCap(tc.fs)
		if _, err := n.NodePublishVolume(ctx, req); err != nil {
			t.Fatalf("%s: %v", tc.handle, err)
		}
		v, err := pool.Get(ctx, names.VolumeID(tc.handle))
		if err != nil || v.SizeBytes != tc.want {
			t.Errorf("%s: volume %+v, %v; want %d bytes", tc.handle, v, err, tc.want)
		}
	}
}

// CreateVolume with a mount capability rounds a size below the filesystem's
// minimum up to it, and refuses a limit below it with OutOfRange before any
// device exists; block volumes have no filesystem minimum.
func TestCreateVolumeFilesystemMinimum(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	create := func(name string, required, limit int64, caps ...*csi.VolumeCapability) (*csi.CreateVolumeResponse, error) {
		return r.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: caps,
			CapacityRange: &csi.CapacityRange{RequiredBytes: required, LimitBytes: limit}})
	}
	resp, err := create("pvc-xfs", 100*mib, 0, mountCap("xfs"))
	if err != nil || resp.GetVolume().GetCapacityBytes() != mounter.MinXFSBytes {
		t.Fatalf("CreateVolume 100 MiB xfs: %v, %v; want %d bytes", resp, err, mounter.MinXFSBytes)
	}
	resp, err = create("pvc-xfs-limit", 100*mib, mounter.MinXFSBytes, mountCap("xfs"), blockCap())
	if err != nil || resp.GetVolume().GetCapacityBytes() != mounter.MinXFSBytes {
		t.Fatalf("CreateVolume 100 MiB..300 MiB xfs: %v, %v", resp, err)
	}
	n := r.volumes(t)
	for _, limit := range []int64{200 * mib, mounter.MinXFSBytes - 1} {
		_, err = create("pvc-xfs-small", 100*mib, limit, mountCap("xfs"))
		if status.Code(err) != codes.OutOfRange || !strings.Contains(err.Error(), "314572800") {
			t.Errorf("CreateVolume xfs with limit %d: %v, want OutOfRange naming 314572800", limit, err)
		}
	}
	if _, err = create("pvc-xfs-nodefault", 0, 200*mib, mountCap("xfs")); status.Code(err) != codes.OutOfRange {
		t.Errorf("CreateVolume xfs with only a limit of 200 MiB: %v, want OutOfRange", err)
	}
	if got := r.volumes(t); got != n {
		t.Errorf("refused requests made %d volumes", got-n)
	}
	resp, err = create("pvc-block", 100*mib, 0, blockCap())
	if err != nil || resp.GetVolume().GetCapacityBytes() != 100*mib {
		t.Errorf("CreateVolume 100 MiB block: %v, %v", resp, err)
	}
	capResp, err := r.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{mountCap("xfs")}})
	if err != nil || capResp.GetMinimumVolumeSize().GetValue() != mounter.MinXFSBytes {
		t.Errorf("GetCapacity for xfs: minimum %v, %v; want %d", capResp.GetMinimumVolumeSize(), err, mounter.MinXFSBytes)
	}
	capResp, err = r.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{mountCap("ext4")}})
	if err != nil || capResp.GetMinimumVolumeSize().GetValue() != 4*mib {
		t.Errorf("GetCapacity for ext4: minimum %v, %v; want one extent", capResp.GetMinimumVolumeSize(), err)
	}
}

// ReclaimOrphans removes, while running, an inline volume whose target is
// unmounted and whose pod directory is gone, and never one that is mounted,
// locked by a call in flight, or kept for kubelet's retry of a failed publish
// while its pod exists.
func TestReclaimOrphansWhileRunning(t *testing.T) {
	n, pool, fm, kubelet := newCountingNode(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	publish := func(uid string, fail bool) *csi.NodePublishVolumeRequest {
		req := podInline(t, kubelet, uid, "csi-"+uid, map[string]string{"size": "16Mi"})
		if fail {
			fm.failNext = errFake
		}
		if _, err := n.NodePublishVolume(ctx, req); (err != nil) != fail {
			t.Fatalf("publish %s: %v", uid, err)
		}
		return req
	}
	live, gone, failed, busy, unmounted := publish("live", false), publish("gone", false), publish("failed", true),
		publish("busy", false), publish("unmounted", false)
	// kubelet forgot gone and busy: targets unmounted, pods' directories removed.
	for _, req := range []*csi.NodePublishVolumeRequest{gone, busy} {
		delete(fm.mounts, req.TargetPath)
		if err := os.RemoveAll(podDir(req.TargetPath)); err != nil {
			t.Fatal(err)
		}
	}
	// unmounted: the target is not mounted but the pod directory is still
	// there (torn down behind the driver's back): the start-up rule applies.
	delete(fm.mounts, unmounted.TargetPath)
	unlockBusy, err := n.Locks.Lock(ctx, names.VolumeID(busy.VolumeId)) // a call in flight
	if err != nil {
		t.Fatal(err)
	}
	exists := func(req *csi.NodePublishVolumeRequest) bool {
		_, err := pool.Get(ctx, names.VolumeID(req.VolumeId))
		return err == nil
	}
	waitGone := func(req *csi.NodePublishVolumeRequest) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); exists(req); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("orphan %s was not reclaimed while running", req.VolumeId)
			}
		}
	}
	go n.ReclaimOrphans(ctx, 10*time.Millisecond)
	waitGone(gone)
	waitGone(unmounted)
	time.Sleep(100 * time.Millisecond) // several more rounds
	for _, req := range []*csi.NodePublishVolumeRequest{live, failed, busy} {
		if !exists(req) {
			t.Errorf("%s was reclaimed: mounted, kept for a retry or busy", req.VolumeId)
		}
	}
	if ok, _ := fm.IsMountPoint(live.TargetPath); !ok {
		t.Error("the live volume's mount was removed")
	}
	unlockBusy()
	waitGone(busy)
	// The failed publish's pod went away: its device goes too.
	if err := os.RemoveAll(podDir(failed.TargetPath)); err != nil {
		t.Fatal(err)
	}
	waitGone(failed)
	if !exists(live) {
		t.Error("the live volume was reclaimed")
	}
}

func TestPodDir(t *testing.T) {
	for in, want := range map[string]string{
		"/var/lib/kubelet/pods/0f3c/volumes/kubernetes.io~csi/scratch/mount": "/var/lib/kubelet/pods/0f3c",
		"/k/pods/x/pods/uid/volumes/kubernetes.io~csi/v/mount":               "/k/pods/x/pods/uid",
		"/tmp/csi-mount/target":         "/tmp/csi-mount",
		"/var/lib/kubelet/pods/volumes": "/var/lib/kubelet/pods",
	} {
		if got := podDir(in); got != want {
			t.Errorf("podDir(%q) = %q, want %q", in, got, want)
		}
	}
}
