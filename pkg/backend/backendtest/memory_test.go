package backendtest

import "testing"

// TestMemoryContract: the in-memory pool keeps the contract the real backends
// keep (its own tests above the backends rely on that).
func TestMemoryContract(t *testing.T) {
	Run(t, func(t *testing.T) Subject {
		m := NewMemory("fast", 1<<30, 4<<20)
		return Subject{Backend: m, Pool: "fast", AddForeign: func(_ *testing.T, id string) { m.AddForeign(id) }}
	})
}
