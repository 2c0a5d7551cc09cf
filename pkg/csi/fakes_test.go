package csi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/mounter"
	"github.com/carve-csi/carve/pkg/volume"
)

// fakeMounter records mounts by target; it creates target paths like the real one.
type fakeMounter struct {
	mu       sync.Mutex
	mounts   map[string]string // target -> device or source
	failNext error
}

func newFakeMounter() *fakeMounter { return &fakeMounter{mounts: map[string]string{}} }

func (f *fakeMounter) take() error {
	err := f.failNext
	f.failNext = nil
	return err
}

func (f *fakeMounter) mount(src, target string, dir bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.take(); err != nil {
		return err
	}
	if cur, ok := f.mounts[target]; ok {
		if cur != src {
			return fmt.Errorf("%s: %w", target, mounter.ErrMountedElsewhere)
		}
		return nil
	}
	if dir {
		if err := os.MkdirAll(target, 0o750); err != nil {
			return err
		}
	} else if err := os.WriteFile(target, nil, 0o640); err != nil {
		return err
	}
	f.mounts[target] = src
	return nil
}

func (f *fakeMounter) FormatAndMountUUID(device, target, fsType, uuid string, options []string) error {
	return f.mount(device, target, true)
}
func (f *fakeMounter) BindMount(source, target string, readOnly bool, options []string) error {
	f.mu.Lock()
	_, staged := f.mounts[source]
	f.mu.Unlock()
	if !staged {
		return fmt.Errorf("%s: %w", source, mounter.ErrNotMounted)
	}
	return f.mount(source, target, true)
}
func (f *fakeMounter) BindBlock(device, target string, readOnly bool) error {
	return f.mount(device, target, false)
}
func (f *fakeMounter) Unmount(target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.take(); err != nil {
		return err
	}
	delete(f.mounts, target)
	if err := os.RemoveAll(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
func (f *fakeMounter) IsMountPoint(path string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.mounts[path]
	return ok, nil
}
func (f *fakeMounter) Stats(path string) (mounter.Stats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := os.Stat(path); err != nil {
		return mounter.Stats{}, fmt.Errorf("%s: %w", path, mounter.ErrNotFound)
	}
	if _, ok := f.mounts[path]; !ok {
		return mounter.Stats{}, fmt.Errorf("%s: %w", path, mounter.ErrNotMounted)
	}
	return mounter.Stats{TotalBytes: 100, AvailableBytes: 60, UsedBytes: 40, TotalInodes: 10, FreeInodes: 7, UsedInodes: 3}, nil
}
func (f *fakeMounter) Resize(device, mountPath string) error { return nil }

func (f *fakeMounter) OtherMounts(path string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for target, src := range f.mounts {
		if src == path {
			out = append(out, target)
		}
	}
	return out, nil
}

func (f *fakeMounter) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.mounts)
}

// rig is one node's services on a real gRPC connection over a Unix socket.
type rig struct {
	pool    *backendtest.Memory
	mount   *fakeMounter
	node    *Node
	kubelet string
	ids     csi.IdentityClient
	ctrl    csi.ControllerClient
	nodeC   csi.NodeClient
}

const (
	mib = int64(1) << 20
	gib = int64(1) << 30
)

func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{pool: backendtest.NewMemory("default", 10*gib, 4*mib), mount: newFakeMounter()}
	vols, err := volume.NewManager([]volume.Pool{{Name: "default", Backend: r.pool}}, "default")
	if err != nil {
		t.Fatal(err)
	}
	r.kubelet = t.TempDir()
	locks := &keylock.Locks{}
	r.node = &Node{Vols: vols, Mount: r.mount, NodeID: "node-1", Locks: locks, KubeletDir: r.kubelet}
	conn := serve(t, NewServer(&Identity{Name: "carve.csi.dev", Version: "test", Ready: vols.Check, Controller: true},
		&LocalController{Vols: vols, NodeID: "node-1", Locks: locks}, r.node))
	r.ids, r.ctrl, r.nodeC = csi.NewIdentityClient(conn), csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	return r
}

// serve serves srv on a Unix socket of its own until the test ends and
// returns a client connection to it.
func serve(t *testing.T, srv *grpc.Server) *grpc.ClientConn {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "csi.sock")
	lis, err := Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func (r *rig) volumes(t *testing.T) int {
	t.Helper()
	vs, err := r.pool.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return len(vs)
}

func mountCap(fs string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func blockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func withMode(c *csi.VolumeCapability, m csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	c.AccessMode.Mode = m
	return c
}
