package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/backendtest"
)

func TestDMName(t *testing.T) {
	for _, tc := range []struct{ vg, lv, want string }{
		{"carve", "carve-pvc-1-0123456789abcdef", "carve-carve--pvc--1--0123456789abcdef"},
		{"my-vg", "lv", "my--vg-lv"},
		{"vg", "a--b", "vg-a----b"},
	} {
		if got := dmName(tc.vg, tc.lv); got != tc.want {
			t.Errorf("dmName(%q, %q) = %q, want %q", tc.vg, tc.lv, got, tc.want)
		}
	}
	for in, ok := range map[string]bool{"/dev/vg/lv": true, "/dev/pmem0": false, "/dev/vg/lv/x": false, "/other/vg/lv": false, "": false} {
		if _, _, got := splitLVPath(in); got != ok {
			t.Errorf("splitLVPath(%q) ok = %v, want %v", in, got, ok)
		}
	}
}

// linkless is an LVM pool as lvm.Backend behaves when /dev/<vg>/<lv> is
// missing: lvchange -ay succeeds, then the link is not there.
type linkless struct {
	*backendtest.Memory
	activations int
}

func (l *linkless) Activate(ctx context.Context, id string) (string, error) {
	l.activations++
	if _, err := l.Get(ctx, id); err != nil {
		return "", err
	}
	return "", fmt.Errorf("lvm: activate carve/%s: lvchange -ay succeeded but /dev/carve/%s does not exist (activation disabled or no device-mapper?): %w",
		id, id, backend.ErrUnavailable)
}

// fakeDM makes a sysfs and /dev tree in which the dm device of name has the
// number of a real block device node (a loop device node: only stat'ed); its
// /dev is empty.
func fakeDM(t *testing.T, name string) (DeviceMapper, string) {
	t.Helper()
	real := ""
	for _, p := range []string{"/dev/loop0", "/dev/loop1", "/dev/loop-control"} {
		var st unix.Stat_t
		if unix.Stat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK {
			real = p
			break
		}
	}
	if real == "" {
		t.Skip("skipping: no block device node to stand in for a dm device")
	}
	var st unix.Stat_t
	if err := unix.Stat(real, &st); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	d := DeviceMapper{SysRoot: filepath.Join(root, "sys"), DevRoot: filepath.Join(root, "dev")}
	for _, dm := range []struct{ dir, name, dev string }{
		{"dm-0", "other-lv", "254:0"},
		{"dm-3", name, fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))},
	} {
		dir := filepath.Join(d.SysRoot, "block", dm.dir)
		if err := os.MkdirAll(filepath.Join(dir, "dm"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "dm", "name"), []byte(dm.name+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "dev"), []byte(dm.dev+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d, real
}

// An active LV whose /dev/<vg>/<lv> link is missing is found through
// device-mapper (issue 12, item 5: every NodeStageVolume failed Unavailable),
// by whichever node of it exists: /dev/mapper/<name>, /dev/dm-N, /dev/block/MAJ:MIN.
func TestActivateWithoutDevLink(t *testing.T) {
	ctx := context.Background()
	for _, node := range []string{"mapper", "dm-3", "block"} {
		pool := &linkless{Memory: backendtest.NewMemory("carve", 10*gib, 4*mib)}
		m, err := NewManager([]Pool{{"carve", pool}}, "carve")
		if err != nil {
			t.Fatal(err)
		}
		v, err := m.Create(ctx, CreateRequest{Name: "vol", Range: Range{RequiredBytes: 4 * mib}})
		if err != nil {
			t.Fatal(err)
		}
		name := dmName("carve", v.ID)
		dm, real := fakeDM(t, name)
		var st unix.Stat_t
		if err := unix.Stat(real, &st); err != nil {
			t.Fatal(err)
		}
		rel := map[string]string{"mapper": "mapper/" + name, "dm-3": "dm-3",
			"block": fmt.Sprintf("block/%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))}[node]
		want := filepath.Join(dm.DevRoot, rel)
		if err := os.MkdirAll(filepath.Dir(want), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(real, want); err != nil {
			t.Fatal(err)
		}
		m.dm = dm
		dev, err := m.Activate(ctx, v)
		if err != nil || dev != want {
			t.Errorf("%s: Activate = %q, %v; want %s", node, dev, err, want)
		}
		if pool.activations != 0 {
			t.Errorf("%s: lvchange ran %d times for an LV device-mapper has active", node, pool.activations)
		}
	}
}

// Without a dm device (the LV really is not active) the backend's error stays,
// with what device-mapper said.
func TestActivateNoDMDevice(t *testing.T) {
	ctx := context.Background()
	pool := &linkless{Memory: backendtest.NewMemory("carve", 10*gib, 4*mib)}
	m, err := NewManager([]Pool{{"carve", pool}}, "carve")
	if err != nil {
		t.Fatal(err)
	}
	v, err := m.Create(ctx, CreateRequest{Name: "vol", Range: Range{RequiredBytes: 4 * mib}})
	if err != nil {
		t.Fatal(err)
	}
	m.dm, _ = fakeDM(t, "carve-something--else")
	_, err = m.Activate(ctx, v)
	if !errors.Is(err, backend.ErrUnavailable) || pool.activations != 1 {
		t.Fatalf("Activate without a dm device: %v (%d activations), want ErrUnavailable after one", err, pool.activations)
	}
	// A dm device of that name whose node is nowhere: says so.
	m.dm, _ = fakeDM(t, dmName("carve", v.ID))
	if _, err = m.Activate(ctx, v); !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("Activate with a dm device but no node: %v", err)
	}
}
