package backendtest

import (
	"context"
	"fmt"
	"sort"

	"github.com/carve-csi/carve/pkg/backend"
)

// Snapshots is a Memory pool that also takes snapshots and creates volumes
// from sources (backend.Snapshotter), as lvm-thin pools do: a snapshot
// counts its source's size against the pool, outlives its source, and a
// volume from a source is at least the source's size. Content is not modeled.
type Snapshots struct {
	*Memory
	// Clock gives CreationTime (seconds); nil: 1.
	Clock func() int64
}

var _ backend.Snapshotter = Snapshots{}

// NewSnapshots returns an empty snapshotting pool (see NewMemory).
func NewSnapshots(pool string, total, align int64) Snapshots {
	return Snapshots{Memory: NewMemory(pool, total, align)}
}

func (s Snapshots) now() int64 {
	if s.Clock != nil {
		return s.Clock()
	}
	return 1
}

func (s Snapshots) CreateSnapshot(_ context.Context, id, name, sourceID string) (*backend.Snapshot, error) {
	m := s.Memory
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fail(); err != nil {
		return nil, err
	}
	if _, ok := m.snaps[id]; ok || m.foreign[id] {
		return nil, fmt.Errorf("snapshot %s: %w", id, backend.ErrExists)
	}
	src, ok := m.vols[sourceID]
	if !ok {
		return nil, fmt.Errorf("snapshot %s: source %s: %w", id, sourceID, backend.ErrNotFound)
	}
	if src.SizeBytes > m.Total-m.used() {
		return nil, fmt.Errorf("snapshot %s (%d bytes): %w", id, src.SizeBytes, backend.ErrNoSpace)
	}
	snap := backend.Snapshot{ID: id, Name: name, SourceID: sourceID, Pool: m.PoolName, SizeBytes: src.SizeBytes, CreationTime: s.now()}
	m.snaps[id] = snap
	return &snap, nil
}

func (s Snapshots) GetSnapshot(_ context.Context, id string) (*backend.Snapshot, error) {
	m := s.Memory
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fail(); err != nil {
		return nil, err
	}
	if m.foreign[id] {
		return nil, fmt.Errorf("snapshot %s: %w", id, backend.ErrNotOwned)
	}
	snap, ok := m.snaps[id]
	if !ok {
		return nil, fmt.Errorf("snapshot %s: %w", id, backend.ErrNotFound)
	}
	return &snap, nil
}

func (s Snapshots) ListSnapshots(context.Context) ([]backend.Snapshot, error) {
	m := s.Memory
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fail(); err != nil {
		return nil, err
	}
	out := []backend.Snapshot{}
	for _, snap := range m.snaps {
		out = append(out, snap)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (s Snapshots) DeleteSnapshot(_ context.Context, id string) error {
	m := s.Memory
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fail(); err != nil {
		return err
	}
	if m.foreign[id] {
		return fmt.Errorf("delete snapshot %s: %w", id, backend.ErrNotOwned)
	}
	if _, ok := m.snaps[id]; !ok {
		return fmt.Errorf("delete snapshot %s: %w", id, backend.ErrNotFound)
	}
	delete(m.snaps, id)
	return nil
}

func (s Snapshots) CreateFrom(ctx context.Context, req backend.CreateRequest, sourceID string) (*backend.Volume, error) {
	m := s.Memory
	m.mu.Lock()
	var srcSize int64
	if snap, ok := m.snaps[sourceID]; ok {
		srcSize = snap.SizeBytes
	} else if v, ok := m.vols[sourceID]; ok {
		srcSize = v.SizeBytes
	} else {
		m.mu.Unlock()
		return nil, fmt.Errorf("create %s: source %s: %w", req.ID, sourceID, backend.ErrNotFound)
	}
	m.mu.Unlock()
	req.SizeBytes = max(req.SizeBytes, srcSize)
	v, err := m.Create(ctx, req)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	v.Source = sourceID
	m.vols[v.ID] = *v
	return v, nil
}
