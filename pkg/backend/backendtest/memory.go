// Package backendtest provides an in-memory backend.Backend for tests of the
// layers above the backends, and Run, the contract suite every backend passes.
// Memory follows the contract the real backends keep (sentinel errors,
// alignment, ownership): TestMemoryContract runs Run on it, as lvm and pmem
// run it on theirs.
package backendtest

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/carve-csi/carve/pkg/backend"
)

// Memory is a pool held in memory.
type Memory struct {
	PoolName string
	Align    int64
	Total    int64

	mu      sync.Mutex
	vols    map[string]backend.Volume
	foreign map[string]bool
	snaps   map[string]backend.Snapshot // Snapshots' (a thin pool's snapshots)
	// FailNext, if set, is returned (once) by the next call of any method.
	FailNext error
}

var _ backend.Backend = (*Memory)(nil)

// NewMemory returns an empty pool of total bytes with the given alignment.
func NewMemory(pool string, total, align int64) *Memory {
	return &Memory{PoolName: pool, Align: align, Total: total, vols: map[string]backend.Volume{}, foreign: map[string]bool{},
		snaps: map[string]backend.Snapshot{}}
}

// AddForeign makes a device with that id that carve does not own.
func (m *Memory) AddForeign(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.foreign[id] = true
}

func (m *Memory) fail() error {
	err := m.FailNext
	m.FailNext = nil
	return err
}

func (m *Memory) used() int64 {
	var u int64
	for _, v := range m.vols {
		u += v.SizeBytes
	}
	for _, s := range m.snaps { // as a thin pool counts its snapshots' virtual sizes
		u += s.SizeBytes
	}
	return u
}

func (m *Memory) Type() string      { return "memory" }
func (m *Memory) AlignBytes() int64 { return m.Align }

func (m *Memory) Create(_ context.Context, req backend.CreateRequest) (*backend.Volume, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fail(); err != nil {
		return nil, err
	}
	if req.SizeBytes <= 0 { // as lvm and pmem
		return nil, fmt.Errorf("create %s: size must be positive, got %d", req.ID, req.SizeBytes)
	}
	if _, ok := m.vols[req.ID]; ok || m.foreign[req.ID] {
		return nil, fmt.Errorf("create %s: %w", req.ID, backend.ErrExists)
	}
	size := backend.AlignUp(req.SizeBytes, m.Align)
	if size > m.Total-m.used() {
		return nil, fmt.Errorf("create %s (%d bytes): %w", req.ID, size, backend.ErrNoSpace)
	}
	v := backend.Volume{ID: req.ID, Name: req.Name, Pool: m.PoolName, SizeBytes: size,
		DevicePath: "/dev/" + m.PoolName + "/" + req.ID, Ephemeral: req.Ephemeral, TargetPath: req.TargetPath}
	m.vols[req.ID] = v
	return &v, nil
}

func (m *Memory) Delete(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fail(); err != nil {
		return err
	}
	if m.foreign[id] {
		return fmt.Errorf("delete %s: %w", id, backend.ErrNotOwned)
	}
	if _, ok := m.vols[id]; !ok {
		return fmt.Errorf("delete %s: %w", id, backend.ErrNotFound)
	}
	delete(m.vols, id)
	return nil
}

func (m *Memory) Expand(_ context.Context, id string, size int64) (*backend.Volume, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fail(); err != nil {
		return nil, err
	}
	if m.foreign[id] { // as lvm and pmem: refused as not carve's, not reported missing
		return nil, fmt.Errorf("expand %s: %w", id, backend.ErrNotOwned)
	}
	v, ok := m.vols[id]
	if !ok {
		return nil, fmt.Errorf("expand %s: %w", id, backend.ErrNotFound)
	}
	size = backend.AlignUp(size, m.Align)
	if size <= v.SizeBytes {
		return &v, nil
	}
	if size-v.SizeBytes > m.Total-m.used() {
		return nil, fmt.Errorf("expand %s: %w", id, backend.ErrNoSpace)
	}
	v.SizeBytes = size
	m.vols[id] = v
	return &v, nil
}

func (m *Memory) Get(_ context.Context, id string) (*backend.Volume, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fail(); err != nil {
		return nil, err
	}
	if m.foreign[id] {
		return nil, fmt.Errorf("get %s: %w", id, backend.ErrNotOwned)
	}
	v, ok := m.vols[id]
	if !ok {
		return nil, fmt.Errorf("get %s: %w", id, backend.ErrNotFound)
	}
	return &v, nil
}

func (m *Memory) List(context.Context) ([]backend.Volume, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fail(); err != nil {
		return nil, err
	}
	var out []backend.Volume
	for _, v := range m.vols {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (m *Memory) Capacity(context.Context) (backend.Capacity, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fail(); err != nil {
		return backend.Capacity{}, err
	}
	free := m.Total - m.used()
	return backend.Capacity{TotalBytes: m.Total, FreeBytes: free, MaxVolumeBytes: backend.AlignDown(free, m.Align), AlignBytes: m.Align}, nil
}

func (m *Memory) Activate(ctx context.Context, id string) (string, error) {
	v, err := m.Get(ctx, id)
	if err != nil {
		return "", err
	}
	return v.DevicePath, nil
}

// SetCondition sets the Condition of volume id (as lvm reports a partial LV).
func (m *Memory) SetCondition(id, condition string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v, ok := m.vols[id]; ok {
		v.Condition = condition
		m.vols[id] = v
	}
}

// Thin is a Memory pool that reports a thin pool's use (backend.Capacity.Thin)
// beside its capacity, as lvm.Thin does, for the layers that publish it.
type Thin struct {
	*Memory
	Usage backend.ThinUsage
}

func (p Thin) Capacity(ctx context.Context) (backend.Capacity, error) {
	c, err := p.Memory.Capacity(ctx)
	c.Thin = p.Usage
	return c, err
}
