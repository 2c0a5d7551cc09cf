package csi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/mounter"
	"github.com/carve-csi/carve/pkg/names"
)

var errFake = errors.New("injected failure")

func (r *rig) create(t *testing.T, name string, c *csi.VolumeCapability) string {
	t.Helper()
	resp, err := r.ctrl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name,
		VolumeCapabilities: []*csi.VolumeCapability{c}, CapacityRange: &csi.CapacityRange{RequiredBytes: 64 * mib}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetVolume().GetVolumeId()
}

func TestStagePublishLifecycle(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	id := r.create(t, "pvc-1", mountCap("ext4"))
	staging := filepath.Join(r.kubelet, "plugins", "staging", "pvc-1")
	target := filepath.Join(r.kubelet, "pods", "uid", "volumes", "pvc-1", "mount")
	for i := 0; i < 2; i++ {
		if _, err := r.nodeC.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap("ext4")}); err != nil {
			t.Fatalf("stage #%d: %v", i, err)
		}
		if _, err := r.nodeC.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap("ext4")}); err != nil {
			t.Fatalf("publish #%d: %v", i, err)
		}
	}
	if r.mount.count() != 2 {
		t.Fatalf("%d mounts, want 2", r.mount.count())
	}
	st, err := r.nodeC.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
	if err != nil || len(st.GetUsage()) != 2 || st.GetUsage()[0].GetUsed() != 40 || st.GetUsage()[1].GetTotal() != 10 {
		t.Fatalf("stats %v, %v", st, err)
	}
	if _, err := r.nodeC.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: filepath.Join(r.kubelet, "nope")}); status.Code(err) != codes.NotFound {
		t.Fatalf("stats of a missing path: %v", err)
	}
	if _, err := r.nodeC.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "carve-0000000000000000", VolumePath: target}); status.Code(err) != codes.NotFound {
		t.Fatalf("stats of a missing volume: %v", err)
	}
	if _, err := r.nodeC.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target}); err != nil {
		t.Fatalf("node expand: %v", err)
	}
	for i := 0; i < 2; i++ {
		if _, err := r.nodeC.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			t.Fatalf("unpublish #%d: %v", i, err)
		}
		if _, err := r.nodeC.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Fatalf("unstage #%d: %v", i, err)
		}
	}
	if r.mount.count() != 0 || r.volumes(t) != 1 {
		t.Fatalf("after unpublish: %d mounts, %d volumes (persistent volume must stay)", r.mount.count(), r.volumes(t))
	}
	if _, err := r.nodeC.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap("ext4")}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("publish of an unstaged volume: %v", err)
	}
	blockID := r.create(t, "pvc-block", blockCap())
	blockTarget := filepath.Join(r.kubelet, "plugins", "kubernetes.io", "csi", "volumeDevices", "publish", "pvc-block", "uid")
	if err := os.MkdirAll(filepath.Dir(blockTarget), 0o750); err != nil {
		t.Fatal(err)
	}
	if _, err := r.nodeC.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: blockID, TargetPath: blockTarget, VolumeCapability: blockCap()}); err != nil {
		t.Fatalf("block publish without staging path: %v", err)
	}
}

func TestSingleWriterIsPublishedOnce(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	c := withMode(mountCap("ext4"), csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)
	id := r.create(t, "pvc-sw", c)
	staging := filepath.Join(r.kubelet, "staging")
	if _, err := r.nodeC.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: c}); err != nil {
		t.Fatal(err)
	}
	first := filepath.Join(r.kubelet, "pods", "a")
	for i := 0; i < 2; i++ {
		if _, err := r.nodeC.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: first, VolumeCapability: c}); err != nil {
			t.Fatalf("publish #%d at the same target: %v", i, err)
		}
	}
	_, err := r.nodeC.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		TargetPath: filepath.Join(r.kubelet, "pods", "b"), VolumeCapability: c})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("second target of a single writer: %v", err)
	}
}

func TestNodeRejectsBadPaths(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	id := r.create(t, "pvc-1", mountCap(""))
	outside := t.TempDir()
	link := filepath.Join(r.kubelet, "escape")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"relative/path", filepath.Join(outside, "x"), filepath.Join(link, "x"), filepath.Join(r.kubelet, "..", "x")} {
		_, err := r.nodeC.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: p, VolumeCapability: mountCap("")})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("stage at %q: %v", p, err)
		}
		_, err = r.nodeC.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "inline-1", TargetPath: p, VolumeCapability: mountCap(""),
			VolumeContext: map[string]string{ephemeralKey: "true"}})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("inline publish at %q: %v", p, err)
		}
	}
	if r.mount.count() != 0 || r.volumes(t) != 1 {
		t.Fatalf("bad paths left %d mounts, %d volumes", r.mount.count(), r.volumes(t))
	}
	if _, err := r.nodeC.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "carve-0000000000000000",
		StagingTargetPath: filepath.Join(r.kubelet, "s"), VolumeCapability: mountCap("")}); status.Code(err) != codes.NotFound {
		t.Fatalf("stage of a missing volume: %v", err)
	}
}

func inlineReq(r *rig, id string, attrs map[string]string) *csi.NodePublishVolumeRequest {
	ctx := map[string]string{ephemeralKey: "true", "csi.storage.k8s.io/pod.name": "p"}
	for k, v := range attrs {
		ctx[k] = v
	}
	return &csi.NodePublishVolumeRequest{VolumeId: id, TargetPath: filepath.Join(r.kubelet, "pods", "uid", "volumes", id, "mount"),
		VolumeCapability: mountCap(""), VolumeContext: ctx}
}

func TestInlineVolumes(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	for _, attrs := range []map[string]string{
		{"size": "lots"}, {"size": "-1Gi"}, {"size": "0"}, {"fsType": "btrfs"}, {"pool": "default"}, {"stripes": "4"},
	} {
		_, err := r.nodeC.NodePublishVolume(ctx, inlineReq(r, "csi-bad", attrs))
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("attributes %v: %v", attrs, err)
		}
	}
	block := inlineReq(r, "csi-block", nil)
	block.VolumeCapability = blockCap()
	if _, err := r.nodeC.NodePublishVolume(ctx, block); status.Code(err) != codes.InvalidArgument {
		t.Errorf("inline block: %v", err)
	}
	if _, err := r.nodeC.NodePublishVolume(ctx, inlineReq(r, "csi-huge", map[string]string{"size": "20Gi"})); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("inline too big: %v", err)
	}
	if r.volumes(t) != 0 || r.mount.count() != 0 {
		t.Fatalf("rejected inline requests left %d volumes, %d mounts", r.volumes(t), r.mount.count())
	}

	req := inlineReq(r, "csi-abc", map[string]string{"size": "100Mi", "fsType": "xfs"})
	for i := 0; i < 2; i++ {
		if _, err := r.nodeC.NodePublishVolume(ctx, req); err != nil {
			t.Fatalf("inline publish #%d: %v", i, err)
		}
	}
	v, err := r.pool.Get(ctx, names.VolumeID("csi-abc"))
	// Rounded up to mkfs.xfs's minimum: 100 MiB could never be formatted.
	if err != nil || !v.Ephemeral || v.SizeBytes != mounter.MinXFSBytes || v.TargetPath != req.TargetPath {
		t.Fatalf("inline volume %+v, %v", v, err)
	}
	// Unpublishing the same id at another target leaves the volume to its own target.
	other := filepath.Join(filepath.Dir(req.TargetPath), "other")
	if _, err := r.nodeC.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-abc", TargetPath: other}); err != nil {
		t.Fatalf("inline unpublish at another target: %v", err)
	}
	if _, err := r.pool.Get(ctx, names.VolumeID("csi-abc")); err != nil {
		t.Fatalf("unpublish at another target removed the inline volume: %v", err)
	}
	for i := 0; i < 2; i++ {
		if _, err := r.nodeC.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-abc", TargetPath: req.TargetPath}); err != nil {
			t.Fatalf("inline unpublish #%d: %v", i, err)
		}
	}
	if r.volumes(t) != 0 || r.mount.count() != 0 {
		t.Fatalf("after inline unpublish: %d volumes, %d mounts", r.volumes(t), r.mount.count())
	}

	// The admin may allow pod authors to choose the pool.
	r.node.AllowInlinePool = true
	if _, err := r.nodeC.NodePublishVolume(ctx, inlineReq(r, "csi-pool", map[string]string{"pool": "default"})); err != nil {
		t.Fatalf("inline with allowed pool: %v", err)
	}
	if _, err := r.nodeC.NodePublishVolume(ctx, inlineReq(r, "csi-pool2", map[string]string{"pool": "gold"})); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("inline with unknown pool: %v", err)
	}
}

func TestUnpublishNeverDeletesPersistentVolumes(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	// A persistent volume whose CSI name looks like an inline volume id.
	if _, err := r.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "csi-xyz", VolumeCapabilities: []*csi.VolumeCapability{mountCap("")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.nodeC.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-xyz", TargetPath: filepath.Join(r.kubelet, "t")}); err != nil {
		t.Fatal(err)
	}
	if r.volumes(t) != 1 {
		t.Fatal("unpublish deleted a persistent volume")
	}
}

func TestCleanupOrphans(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	live, gone := inlineReq(r, "csi-live", nil), inlineReq(r, "csi-gone", nil)
	for _, req := range []*csi.NodePublishVolumeRequest{live, gone} {
		if _, err := r.nodeC.NodePublishVolume(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	persistent := r.create(t, "pvc-keep", mountCap(""))
	// The pod of csi-gone went away while the driver was down.
	delete(r.mount.mounts, gone.TargetPath)
	if err := r.node.CleanupOrphans(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.pool.Get(ctx, names.VolumeID("csi-gone")); err == nil {
		t.Error("orphaned inline volume survived")
	}
	if _, err := os.Stat(gone.TargetPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("orphan target left: %v", err)
	}
	for _, id := range []string{names.VolumeID("csi-live"), persistent} {
		if _, err := r.pool.Get(ctx, id); err != nil {
			t.Errorf("volume %s removed by cleanup: %v", id, err)
		}
	}
}

func TestNodeInfoAndCapabilities(t *testing.T) {
	r := newRig(t)
	info, err := r.nodeC.NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{})
	if err != nil || info.GetNodeId() != "node-1" || info.GetAccessibleTopology().GetSegments()[TopologyKey] != "node-1" {
		t.Fatalf("info %v, %v", info, err)
	}
	caps, err := r.nodeC.NodeGetCapabilities(context.Background(), &csi.NodeGetCapabilitiesRequest{})
	if err != nil || len(caps.GetCapabilities()) != 5 {
		t.Fatalf("caps %v, %v", caps, err)
	}
}
