package csi

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/names"
)

// Snapshots in the cluster Controller service (--mode=controller, issue 14):
// each snapshot is a LocalSnapshot on its source volume's node, taken and
// removed by that node's agent.

func clusterSnapshot(ls *v1alpha1.LocalSnapshot) *csi.Snapshot {
	s := &csi.Snapshot{
		SnapshotId:     ls.Name,
		SourceVolumeId: ls.Spec.SourceVolumeID,
		SizeBytes:      ls.Status.SizeBytes,
		ReadyToUse:     ls.Status.ReadyToUse,
	}
	if t := ls.Status.CreationTime; t != nil {
		s.CreationTime = timestamppb.New(t.Time)
	}
	return s
}

// CreateSnapshot writes a LocalSnapshot on the source volume's node and
// waits until the node took it, idempotent by name. Codes: InvalidArgument
// (no name or source, unknown parameters, a pool that cannot snapshot: the
// node's message names lvm-thin), NotFound (no such volume, or one being
// deleted or failed), AlreadyExists (the name belongs to a snapshot of
// another volume), ResourceExhausted (the thin pool's budget), Unavailable
// (the source is still being made, or the API server cannot answer),
// FailedPrecondition (the LocalSnapshot CRD is not installed).
func (c *ClusterController) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if err := checkCreateSnapshot(req); err != nil {
		return nil, err
	}
	unlock, err := c.lock(ctx, names.SnapshotID(req.GetName()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	// The source too: this controller's delete of it waits meanwhile.
	unlockSrc, err := c.lock(ctx, req.GetSourceVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlockSrc()
	ls, err := c.Vols.CreateSnapshot(ctx, req.GetName(), req.GetSourceVolumeId())
	if err != nil {
		return nil, clusterStatus(ctx, err)
	}
	return &csi.CreateSnapshotResponse{Snapshot: clusterSnapshot(ls)}, nil
}

// DeleteSnapshot deletes the snapshot's LocalSnapshot and waits until its
// node removed the snapshot; an unknown id is success (CSI spec).
func (c *ClusterController) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, invalid("snapshot id is missing")
	}
	unlock, err := c.lock(ctx, req.GetSnapshotId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := c.Vols.DeleteSnapshot(ctx, req.GetSnapshotId()); err != nil {
		return nil, clusterStatus(ctx, err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// ListSnapshots lists the snapshots their nodes took, by id, filtered by
// snapshot id or source volume id, in pages whose token is the id to resume
// at (a token this driver did not issue: Aborted).
func (c *ClusterController) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	if err := checkListSnapshots(req); err != nil {
		return nil, err
	}
	lss, err := c.Vols.ListSnapshots(ctx)
	if err != nil {
		return nil, clusterStatus(ctx, err)
	}
	out := make([]*csi.Snapshot, len(lss))
	for i := range lss {
		out[i] = clusterSnapshot(&lss[i])
	}
	return snapshotPage(req, out), nil
}

// clusterSource is the LocalVolume spec.source for a CreateVolume request's
// content source (nil for none).
func clusterSource(req *csi.CreateVolumeRequest) (*v1alpha1.VolumeSource, error) {
	id, snapshot, err := contentSource(req)
	if err != nil || id == "" {
		return nil, err
	}
	if snapshot {
		return &v1alpha1.VolumeSource{Kind: v1alpha1.SourceSnapshot, ID: id}, nil
	}
	return &v1alpha1.VolumeSource{Kind: v1alpha1.SourceVolume, ID: id}, nil
}
