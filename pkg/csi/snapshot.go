package csi

import (
	"context"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/names"
)

// Snapshots in the node-local Controller service (issue 14): thin snapshot
// LVs in lvm-thin pools, kept and listed on the node that has them.

func csiSnapshot(s *backend.Snapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:     s.ID,
		SourceVolumeId: s.SourceID,
		SizeBytes:      s.SizeBytes,
		CreationTime:   timestamppb.New(time.Unix(s.CreationTime, 0)),
		ReadyToUse:     true, // a thin snapshot is complete when lvcreate returns
	}
}

// CreateSnapshot takes a thin snapshot of the source volume, idempotent by
// name. Codes: InvalidArgument (no name or source, a pool that cannot
// snapshot), NotFound (no such volume), AlreadyExists (the name belongs to a
// snapshot of another volume), ResourceExhausted (the pool's budget).
func (c *LocalController) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if err := checkCreateSnapshot(req); err != nil {
		return nil, err
	}
	unlock, err := c.lock(ctx, names.SnapshotID(req.GetName()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	// The source too: a delete of it must not run while the snapshot is taken.
	unlockSrc, err := c.lock(ctx, req.GetSourceVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlockSrc()
	s, err := c.Vols.CreateSnapshot(ctx, req.GetName(), req.GetSourceVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	c.changed()
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(s)}, nil
}

// checkCreateSnapshot validates a CreateSnapshot request (both Controller
// services): name and source are required (InvalidArgument), and the
// VolumeSnapshotClass takes no parameters but csi-snapshotter's metadata.
func checkCreateSnapshot(req *csi.CreateSnapshotRequest) error {
	switch {
	case req.GetName() == "":
		return invalid("snapshot name is missing")
	case req.GetSourceVolumeId() == "":
		return invalid("source volume id is missing")
	}
	for k := range req.GetParameters() {
		// csi-snapshotter --extra-create-metadata adds csi.storage.k8s.io/volumesnapshot/... keys.
		if !strings.HasPrefix(k, reservedPrefix) {
			return invalid("unknown snapshot parameter %q (VolumeSnapshotClass parameters: none)", k)
		}
	}
	return nil
}

// DeleteSnapshot removes a snapshot; an unknown id is success (CSI spec).
func (c *LocalController) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, invalid("snapshot id is missing")
	}
	unlock, err := c.lock(ctx, req.GetSnapshotId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := c.Vols.DeleteSnapshot(ctx, req.GetSnapshotId()); err != nil {
		return nil, toStatus(err)
	}
	c.changed()
	return &csi.DeleteSnapshotResponse{}, nil
}

// ListSnapshots lists the node's snapshots by id, filtered by snapshot id or
// source volume id, in pages whose token is the id to resume at.
func (c *LocalController) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	if err := checkListSnapshots(req); err != nil {
		return nil, err
	}
	snaps, err := c.Vols.ListSnapshots(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	out := make([]*csi.Snapshot, len(snaps))
	for i := range snaps {
		out[i] = csiSnapshot(&snaps[i])
	}
	return snapshotPage(req, out), nil
}

// checkListSnapshots validates a ListSnapshots request: max_entries not
// negative (InvalidArgument), a starting token that is a snapshot id (the
// only tokens issued; else Aborted, as the CSI spec says for an invalid
// starting_token).
func checkListSnapshots(req *csi.ListSnapshotsRequest) error {
	if req.GetMaxEntries() < 0 {
		return invalid("max_entries must not be negative")
	}
	if t := req.GetStartingToken(); t != "" && !names.IsSnapshotID(t) {
		return status.Errorf(codes.Aborted, "starting token %q was not issued by this driver", t)
	}
	return nil
}

// snapshotPage filters snaps (sorted by id) by the request's snapshot id
// and source volume id and returns the page that starts at its token (the
// id to resume at) with at most max_entries entries (0: all).
func snapshotPage(req *csi.ListSnapshotsRequest, snaps []*csi.Snapshot) *csi.ListSnapshotsResponse {
	resp := &csi.ListSnapshotsResponse{}
	for _, s := range snaps {
		if id := req.GetSnapshotId(); id != "" && s.SnapshotId != id || req.GetSourceVolumeId() != "" && s.SourceVolumeId != req.GetSourceVolumeId() ||
			s.SnapshotId < req.GetStartingToken() {
			continue
		}
		if req.GetMaxEntries() > 0 && len(resp.Entries) == int(req.GetMaxEntries()) {
			resp.NextToken = s.SnapshotId
			break
		}
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: s})
	}
	return resp
}
