package disks

import (
	"context"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/lvm"
	"github.com/carve-csi/carve/pkg/exec"
)

// Backend is an lvm pool whose volume group carve builds from disks: the lvm
// backend (which lists its devices, lvm.Backend.Devices, as every lvm pool
// does) on a volume group Setup made.
type Backend struct {
	*lvm.Backend
}

var (
	_ backend.Backend       = (*Backend)(nil)
	_ backend.DeviceLister  = (*Backend)(nil)
	_ backend.InlineRemover = (*Backend)(nil)
)

// New sets up the volume group (Setup) and returns the lvm pool named pool on it.
func New(ctx context.Context, runner exec.Runner, pool string, opts Options) (*Backend, error) {
	if _, err := Setup(ctx, runner, opts); err != nil {
		return nil, err
	}
	b, err := lvm.New(ctx, runner, pool, opts.VG, opts.Owner)
	if err != nil {
		return nil, err
	}
	return &Backend{Backend: b}, nil
}
