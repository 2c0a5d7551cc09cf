package csi

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/mounter"
	"github.com/carve-csi/carve/pkg/volume"
)

// pmemLike is an in-memory pool that behaves like a PMEM pool where it matters
// to the CSI layer: DAX volumes, a fixed size, and real sizes above the
// aligned request (whole region alignment steps less the fsdax layout).
type pmemLike struct {
	*backendtest.Memory
	overshoot int64
}

func (p *pmemLike) FixedSize() bool { return true }

func (p *pmemLike) Create(ctx context.Context, req backend.CreateRequest) (*backend.Volume, error) {
	req.SizeBytes += p.overshoot
	return dax(p.Memory.Create(ctx, req))
}

func (p *pmemLike) Get(ctx context.Context, id string) (*backend.Volume, error) {
	return dax(p.Memory.Get(ctx, id))
}

func dax(v *backend.Volume, err error) (*backend.Volume, error) {
	if v != nil {
		v.DAX = true
	}
	return v, err
}

// optsMounter records FormatAndMount's options and can fail it.
type optsMounter struct {
	opts [][]string
	err  error
}

func (m *optsMounter) FormatAndMountUUID(device, target, fsType, uuid string, options []string) error {
	m.opts = append(m.opts, slices.Clone(options))
	return m.err
}
func (m *optsMounter) BindMount(string, string, bool, []string) error { return nil }
func (m *optsMounter) BindBlock(string, string, bool) error           { return nil }
func (m *optsMounter) Unmount(string) error                           { return nil }
func (m *optsMounter) IsMountPoint(string) (bool, error)              { return false, nil }
func (m *optsMounter) Stats(string) (mounter.Stats, error)            { return mounter.Stats{}, nil }
func (m *optsMounter) Resize(string, string) error                    { return nil }
func (m *optsMounter) OtherMounts(string) ([]string, error)           { return nil, nil }
func (m *optsMounter) last() []string                                 { return m.opts[len(m.opts)-1] }

func daxRig(t *testing.T, b backend.Backend) (*LocalController, *Node, *optsMounter) {
	t.Helper()
	vols, err := volume.NewManager([]volume.Pool{{Name: "pmem", Backend: b}}, "pmem")
	if err != nil {
		t.Fatal(err)
	}
	m := &optsMounter{}
	locks := &keylock.Locks{}
	return &LocalController{Vols: vols, NodeID: "n", Locks: locks},
		&Node{Vols: vols, Mount: m, NodeID: "n", Locks: locks, KubeletDir: t.TempDir()}, m
}

func TestDAXOptions(t *testing.T) {
	for _, c := range []struct {
		dax   bool
		ctx   map[string]string
		flags []string
		want  []string
	}{
		{false, nil, nil, nil},
		{true, nil, nil, []string{"dax"}},
		{true, nil, []string{"noatime"}, []string{"noatime", "dax"}},
		{true, map[string]string{"dax": "false"}, []string{"noatime"}, []string{"noatime"}},
		{false, map[string]string{"dax": "true"}, nil, []string{"dax"}},
		{false, map[string]string{"dax": "false"}, []string{"dax=always"}, []string{"dax=always"}},
		{true, nil, []string{"dax"}, []string{"dax"}},
	} {
		got, err := daxOptions(&backend.Volume{DAX: c.dax}, c.ctx, c.flags)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("daxOptions(%v, %v, %q) = %q, %v; want %q", c.dax, c.ctx, c.flags, got, err, c.want)
		}
	}
	if _, err := daxOptions(&backend.Volume{}, map[string]string{"dax": "maybe"}, nil); status.Code(err) != codes.InvalidArgument {
		t.Errorf("dax=maybe: %v", err)
	}
}

func TestCreateVolumeDAXParameter(t *testing.T) {
	ctrl, _, _ := daxRig(t, backendtest.NewMemory("pmem", 10*gib, 2*mib))
	ctx := context.Background()
	caps := []*csi.VolumeCapability{mountCap("ext4")}
	resp, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: caps, Parameters: map[string]string{"dax": "false"}})
	if err != nil || resp.GetVolume().GetVolumeContext()["dax"] != "false" {
		t.Fatalf("dax=false not passed on: %v %v", resp, err)
	}
	resp, err = ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "b", VolumeCapabilities: caps})
	if _, ok := resp.GetVolume().GetVolumeContext()["dax"]; err != nil || ok {
		t.Fatalf("dax set without the parameter: %v %v", resp, err)
	}
	_, err = ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "c", VolumeCapabilities: caps, Parameters: map[string]string{"dax": "on"}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("dax=on: %v", err)
	}
}

// A real size above the limit is OutOfRange, and the volume is not left behind.
func TestCreateVolumeOvershootingLimit(t *testing.T) {
	mem := backendtest.NewMemory("pmem", 10*gib, 2*mib)
	ctrl, _, _ := daxRig(t, &pmemLike{Memory: mem, overshoot: 14 * mib})
	ctx := context.Background()
	caps := []*csi.VolumeCapability{mountCap("ext4")}
	_, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "exact", VolumeCapabilities: caps,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 * mib, LimitBytes: 64 * mib}})
	if status.Code(err) != codes.OutOfRange {
		t.Fatalf("err = %v, want OutOfRange", err)
	}
	if vols, _ := mem.List(ctx); len(vols) != 0 {
		t.Fatalf("volume left: %+v", vols)
	}
	resp, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "loose", VolumeCapabilities: caps,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 * mib}})
	if err != nil || resp.GetVolume().GetCapacityBytes() != 78*mib {
		t.Fatalf("got %v, %v; want the real 78 MiB", resp, err)
	}
}

func TestExpandCapabilityFollowsPools(t *testing.T) {
	ctx := context.Background()
	hasExpand := func(ctrl *LocalController, node *Node, _ *optsMounter) (bool, bool) {
		c, _ := ctrl.ControllerGetCapabilities(ctx, nil)
		n, _ := node.NodeGetCapabilities(ctx, nil)
		var ce, ne bool
		for _, x := range c.GetCapabilities() {
			ce = ce || x.GetRpc().GetType() == csi.ControllerServiceCapability_RPC_EXPAND_VOLUME
		}
		for _, x := range n.GetCapabilities() {
			ne = ne || x.GetRpc().GetType() == csi.NodeServiceCapability_RPC_EXPAND_VOLUME
		}
		return ce, ne
	}
	if c, n := hasExpand(daxRig(t, backendtest.NewMemory("m", gib, mib))); !c || !n {
		t.Errorf("expandable pool: controller %v node %v", c, n)
	}
	c, n := hasExpand(daxRig(t, &pmemLike{Memory: backendtest.NewMemory("m", gib, mib)}))
	if c || n {
		t.Errorf("only fixed-size pools, yet EXPAND_VOLUME offered: controller %v node %v", c, n)
	}
}

func TestNodeStageDAX(t *testing.T) {
	mem := backendtest.NewMemory("pmem", 10*gib, 2*mib)
	ctrl, node, m := daxRig(t, &pmemLike{Memory: mem})
	ctx := context.Background()
	resp, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: []*csi.VolumeCapability{mountCap("xfs")}})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetVolume().GetVolumeId()
	stage := func(volCtx map[string]string, flags ...string) error {
		c := mountCap("xfs")
		c.GetMount().MountFlags = flags
		_, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, VolumeCapability: c,
			StagingTargetPath: filepath.Join(node.KubeletDir, "staging"), VolumeContext: volCtx})
		return err
	}
	if err := stage(nil); err != nil || !reflect.DeepEqual(m.last(), []string{"dax"}) {
		t.Errorf("PMEM volume staged with %q (%v), want dax", m.last(), err)
	}
	if err := stage(map[string]string{"dax": "false"}, "noatime"); err != nil || !reflect.DeepEqual(m.last(), []string{"noatime"}) {
		t.Errorf("dax=false staged with %q (%v)", m.last(), err)
	}
	// The device cannot do it: FailedPrecondition, never a silent non-DAX mount.
	m.err = fmt.Errorf("stage: %w", mounter.ErrDAXUnsupported)
	if err := stage(map[string]string{"dax": "true"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("err = %v, want FailedPrecondition", err)
	}
}

func TestNotExpandableCode(t *testing.T) {
	if c := status.Code(toStatus(fmt.Errorf("x: %w", backend.ErrNotExpandable))); c != codes.OutOfRange {
		t.Errorf("ErrNotExpandable -> %s", c)
	}
	if c := status.Code(toStatus(fmt.Errorf("x: %w", mounter.ErrDAXUnsupported))); c != codes.FailedPrecondition {
		t.Errorf("ErrDAXUnsupported -> %s", c)
	}
}
