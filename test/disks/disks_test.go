// Package disks runs issue 15's checks in the carve test VM with several
// virtio disks (test/disks/run-vm.sh boots hack/vm/run.sh --disks 6): a pool
// built from the pattern /dev/vd[b-z] with one disk holding a filesystem,
// striped volumes and their exact maximum, a disk removed (the pool
// degraded, a volume on another disk still readable), whether a new block
// volume shows an earlier volume's bytes, and what wiping costs per GiB.
// It skips outside the VM (CARVE_DISKS_VM=1 is set by vm.sh).
package disks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/disks"
	"github.com/carve-csi/carve/pkg/backend/registry"
	"github.com/carve-csi/carve/pkg/config"
	carvecsi "github.com/carve-csi/carve/pkg/csi"
	"github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/volume"
)

const (
	vg    = "carve-disks"
	owner = "carve.csi.dev"
	ext   = 4 << 20
)

func inVM(t testing.TB) {
	t.Helper()
	if os.Getenv("CARVE_DISKS_VM") != "1" {
		t.Skip("runs in the VM rig: test/disks/run-vm.sh")
	}
}

func sh(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := osexec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// show logs a command's output for the record (lsblk, lvs).
func show(t testing.TB, name string, args ...string) {
	t.Helper()
	t.Logf("$ %s %s\n%s", name, strings.Join(args, " "), sh(t, name, args...))
}

var block = []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}}

// BenchmarkVMWipeCost times zeroing 1 GiB: blkdiscard -z (BLKZEROOUT) and dd of
// /dev/zero with O_DIRECT, on a thick LV on a virtio disk (/dev/vdg) and on
// an fsdax namespace of the emulated NVDIMM; and writing 1 GiB into a thin
// LV with and without the pool's zeroing of new chunks. A measurement, not a
// check: `make bench-wipe` runs it (it was a test that asserted nothing and
// cost make test two minutes).
func BenchmarkVMWipeCost(b *testing.B) {
	t := b
	inVM(t)
	const gib = 1 << 30
	timed := func(what string, name string, args ...string) {
		t.Helper()
		start := time.Now()
		sh(t, name, args...)
		d := time.Since(start)
		fmt.Printf("wipe: %-40s %6.2f s/GiB\n", what, d.Seconds())
		t.Logf("wipe: %s: %.2f s/GiB", what, d.Seconds())
	}
	show(t, "lsblk", "-b", "-o", "NAME,SIZE,TYPE")
	sh(t, "lvm", "vgcreate", "-y", "wipe", "/dev/vdg")
	sh(t, "lvm", "lvcreate", "-y", "-n", "thick", "-L", "1g", "wipe")
	lv := "/dev/wipe/thick"
	timed("blkdiscard -z, thick LV on virtio", "blkdiscard", "-z", lv)
	timed("dd /dev/zero O_DIRECT, thick LV on virtio", "dd", "if=/dev/zero", "of="+lv, "bs=4M", "count=256", "oflag=direct")
	sh(t, "lvm", "lvremove", "-y", "wipe/thick")
	sh(t, "lvm", "lvcreate", "-y", "--type", "thin-pool", "-n", "pool", "-L", "1200m", "-Zy", "wipe")
	for _, z := range []string{"y", "n"} {
		if z == "n" { // made with -Zy; lvchange refuses to set what is set
			sh(t, "lvm", "lvchange", "-Z", z, "wipe/pool")
		}
		sh(t, "lvm", "lvcreate", "-y", "-n", "thin"+z, "-V", "1g", "--thinpool", "pool", "wipe")
		timed("dd 1 GiB into a thin LV, pool zeroing "+z, "dd", "if=/dev/urandom", "of=/dev/wipe/thin"+z, "bs=4M", "count=256", "oflag=direct")
		sh(t, "lvm", "lvremove", "-y", "wipe/thin"+z)
	}
	timed("dd /dev/urandom 1 GiB to /dev/null (the pattern's own cost)", "dd", "if=/dev/urandom", "of=/dev/null", "bs=4M", "count=256")

	// PMEM: one fsdax namespace of 1 GiB.
	for _, args := range [][]string{{"disable-region", "all"}, {"init-labels", "-f", "all"}, {"enable-region", "all"}} {
		sh(t, "ndctl", args...)
	}
	out := sh(t, "ndctl", "create-namespace", "-r", "region0", "-m", "fsdax", "-s", strconv.Itoa(gib+(64<<20)), "-n", "wipe")
	i := strings.Index(out, `"blockdev":"`)
	if i < 0 {
		t.Fatalf("ndctl create-namespace: %s", out)
	}
	pm := "/dev/" + strings.SplitN(out[i+len(`"blockdev":"`):], `"`, 2)[0]
	timed("blkdiscard -z, fsdax namespace", "blkdiscard", "-z", "-l", strconv.Itoa(gib), pm)
	timed("dd /dev/zero O_DIRECT, fsdax namespace", "dd", "if=/dev/zero", "of="+pm, "bs=4M", "count=256", "oflag=direct")
}

// pool builds a pool as carve-csi does (config, registry: lvm pools zero new volumes).
func pool(t *testing.T, flag string) backend.Backend {
	t.Helper()
	spec, err := config.ParsePool(flag)
	if err != nil {
		t.Fatal(err)
	}
	b, err := registry.New(context.Background(), registry.Env{Runner: &exec.Host{}, Owner: owner, KubeletDir: t.TempDir()}, spec)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestVMDisks: the pool, striping, capacity and a removed disk, in order.
func TestVMDisks(t *testing.T) {
	inVM(t)
	ctx := context.Background()
	runner := &exec.Host{}
	sh(t, "mkfs.ext4", "-q", "/dev/vdc") // a disk holding a filesystem: left alone
	opts := disks.Options{VG: vg, Owner: owner, Patterns: []string{"/dev/vd[b-e]"}}

	// A mounted match refuses the pattern; nothing is written.
	sh(t, "mkdir", "-p", "/mnt/vdc")
	sh(t, "mount", "/dev/vdc", "/mnt/vdc")
	_, err := disks.Setup(ctx, runner, opts)
	sh(t, "umount", "/mnt/vdc")
	if !errors.Is(err, disks.ErrRefused) {
		t.Fatalf("pattern matching a mounted disk: %v, want ErrRefused", err)
	}
	t.Logf("mounted disk: %v", err)
	pvs := sh(t, "lvm", "pvs", "--noheadings", "-o", "pv_name")
	for _, d := range []string{"/dev/vdb", "/dev/vdc", "/dev/vdd", "/dev/vde"} {
		if strings.Contains(pvs, d+"\n") || strings.HasSuffix(strings.TrimSpace(pvs), d) {
			t.Fatalf("a refused pattern made %s a PV: %s", d, pvs)
		}
	}

	res, err := disks.Setup(ctx, runner, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pool from /dev/vd[b-e]: %+v", res)
	if !res.Created || strings.Join(res.Members, " ") != "/dev/vdb /dev/vdd /dev/vde" ||
		len(res.Skipped) != 1 || res.Skipped[0].Device != "/dev/vdc" || !strings.Contains(res.Skipped[0].Reason, "ext4") {
		t.Fatalf("want the VG from vdb, vdd, vde and vdc (ext4) left alone: %+v", res)
	}
	b := pool(t, "disks=lvm:"+vg+":devices=/dev/vd[b-e]") // a restart: nothing changes
	show(t, "lvm", "vgs", "-o", "vg_name,vg_tags,pv_count,vg_size,vg_free", vg)
	devs, err := b.(backend.DeviceLister).Devices(ctx)
	if err != nil || len(devs) != 3 {
		t.Fatalf("devices %+v, %v", devs, err)
	}
	t.Logf("NodeStorage devices: %+v", devs)

	vols, err := volume.NewManager([]volume.Pool{{Name: "disks", Backend: b}}, "disks")
	if err != nil {
		t.Fatal(err)
	}
	c := &carvecsi.LocalController{Vols: vols, NodeID: "vm", Locks: &keylock.Locks{}}
	create := func(name string, size int64, params map[string]string) (*csi.Volume, error) {
		r, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, Parameters: params, VolumeCapabilities: block,
			CapacityRange: &csi.CapacityRange{RequiredBytes: size}})
		return r.GetVolume(), err
	}
	del := func(v *csi.Volume) {
		t.Helper()
		if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId()}); err != nil {
			t.Fatal(err)
		}
	}
	// A linear volume first, so the disks differ in free space.
	lin, err := create("pvc-linear", 64<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, params := range []map[string]string{{"stripes": "all", "stripeSize": "128Ki"}, {"stripes": "2"}, nil} {
		capa, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: params, VolumeCapabilities: block})
		if err != nil {
			t.Fatal(err)
		}
		max := capa.GetMaximumVolumeSize().GetValue()
		t.Logf("GetCapacity(%v): available %d, maximum_volume_size %d", params, capa.GetAvailableCapacity(), max)
		_, err = create("pvc-over", max+ext, params)
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("%v: max + 1 extent: %v, want ResourceExhausted", params, err)
		}
		t.Logf("max + 1 extent: %v", err)
		v, err := create("pvc-max", max, params)
		if err != nil || v.GetCapacityBytes() != max {
			t.Fatalf("%v: exactly max %d: %v, %v", params, max, v, err)
		}
		show(t, "lvm", "lvs", "-o", "lv_name,lv_size,stripes,stripe_size,devices", "--units", "b", vg+"/"+v.GetVolumeId())
		show(t, "lsblk", "-o", "NAME,TYPE,SIZE", "/dev/vdb", "/dev/vdd", "/dev/vde")
		del(v)
	}

	// A disk removed: vde's virtio device unbound from its driver.
	linDev := "/dev/" + vg + "/" + lin.GetVolumeId()
	show(t, "lvm", "lvs", "-o", "lv_name,devices", vg+"/"+lin.GetVolumeId())
	link, err := os.Readlink("/sys/block/vde/device")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("/sys/bus/virtio/drivers/virtio_blk/unbind", []byte(filepath.Base(link)), 0); err != nil {
		t.Fatalf("unbinding vde (%s): %v", link, err)
	}
	if _, err := os.Stat("/dev/vde"); err == nil {
		_ = os.Remove("/dev/vde") // devtmpfs removes it; no udev to lag behind
	}
	capa, err := b.Capacity(ctx)
	t.Logf("capacity after vde went: %+v, %v", capa, err)
	if !errors.Is(err, backend.ErrDegraded) || capa.FreeBytes != 0 {
		t.Errorf("want the pool degraded with nothing free: %+v, %v", capa, err)
	}
	if gc, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{VolumeCapabilities: block}); err != nil || gc.GetAvailableCapacity() != 0 {
		t.Errorf("GetCapacity of the degraded pool: %v, %v; want 0", gc, err)
	}
	if _, err := create("pvc-after", ext, nil); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("create in the degraded pool: %v, want ResourceExhausted", err)
	} else {
		t.Logf("create in the degraded pool: %v", err)
	}
	devs, err = b.(backend.DeviceLister).Devices(ctx)
	t.Logf("NodeStorage devices after vde went: %+v, %v", devs, err)
	if out, err := osexec.Command("dd", "if="+linDev, "of=/dev/null", "bs=1M", "count=64", "iflag=direct").CombinedOutput(); err != nil {
		t.Errorf("the volume on vdb is not readable after vde went: %v: %s", err, out)
	} else {
		t.Logf("the volume on vdb still reads: %s", strings.TrimSpace(string(out)))
	}
}

// TestVMStaleData writes a pattern into a block volume, deletes it, creates
// another of the same size and counts the bytes of the new one that are not
// zero (thick LVM on /dev/vdf).
func TestVMStaleData(t *testing.T) {
	inVM(t)
	ctx := context.Background()
	b := pool(t, "stale=lvm:carve-stale:devices=/dev/vdf")
	vols, err := volume.NewManager([]volume.Pool{{Name: "stale", Backend: b}}, "stale")
	if err != nil {
		t.Fatal(err)
	}
	c := &carvecsi.LocalController{Vols: vols, NodeID: "vm", Locks: &keylock.Locks{}}
	const size = 64 << 20
	dev := func(name string) (string, string) {
		r, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: block,
			CapacityRange: &csi.CapacityRange{RequiredBytes: size}})
		if err != nil {
			t.Fatal(err)
		}
		id := r.GetVolume().GetVolumeId()
		v, err := vols.Find(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		p, err := vols.Activate(ctx, v)
		if err != nil {
			t.Fatal(err)
		}
		return id, p
	}
	firstID, first := dev("pvc-first")
	if err := os.WriteFile(first, bytes.Repeat([]byte{0xab}, size), 0); err != nil {
		t.Fatal(err)
	}
	sh(t, "sync")
	// Where each LV's extents are: only a second LV on the first one's extents can show its
	// bytes, so this test fails rather than pass with the new LV elsewhere.
	extents := func(lv string) string {
		return strings.TrimSpace(sh(t, "lvm", "lvs", "--noheadings", "-o", "seg_pe_ranges", lv))
	}
	firstExtents := extents(first)
	if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: firstID}); err != nil {
		t.Fatal(err)
	}
	_, second := dev("pvc-second")
	if got := extents(second); got != firstExtents {
		t.Fatalf("the second LV is on %q, the first was on %q: nothing to show", got, firstExtents)
	}
	data, err := os.ReadFile(second)
	if err != nil {
		t.Fatal(err)
	}
	stale := len(data) - bytes.Count(data, []byte{0})
	t.Logf("lvm: a new %d-byte block volume holds %d non-zero bytes of the previous one's 0xab pattern", len(data), stale)
	if stale != 0 {
		t.Errorf("lvm: the new volume shows %d bytes of the previous volume", stale)
	}
}

// TestVMStaleDataPMEM is TestVMStaleData on a pmem pool (region0): the two
// volumes are made one after the other at the same place of the region.
func TestVMStaleDataPMEM(t *testing.T) {
	inVM(t)
	ctx := context.Background()
	b := pool(t, "pm=pmem:region0")
	vols, err := volume.NewManager([]volume.Pool{{Name: "pm", Backend: b}}, "pm")
	if err != nil {
		t.Fatal(err)
	}
	c := &carvecsi.LocalController{Vols: vols, NodeID: "vm", Locks: &keylock.Locks{}}
	const size = 64 << 20
	dev := func(name string) (string, string, int64) {
		r, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: block,
			CapacityRange: &csi.CapacityRange{RequiredBytes: size}})
		if err != nil {
			t.Fatal(err)
		}
		v, err := vols.Find(ctx, r.GetVolume().GetVolumeId())
		if err != nil {
			t.Fatal(err)
		}
		p, err := vols.Activate(ctx, v)
		if err != nil {
			t.Fatal(err)
		}
		return v.ID, p, v.SizeBytes
	}
	firstID, first, n := dev("pvc-pm-first")
	if err := os.WriteFile(first, bytes.Repeat([]byte{0xab}, int(n)), 0); err != nil {
		t.Fatal(err)
	}
	sh(t, "sync")
	firstStart, firstSize := nsResource(t, first)
	if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: firstID}); err != nil {
		t.Fatal(err)
	}
	_, second, _ := dev("pvc-pm-second")
	// Only a namespace made over the first one's space can show its bytes: check that it was,
	// or this test would pass whatever the wipe does.
	secondStart, secondSize := nsResource(t, second)
	if secondStart >= firstStart+firstSize || firstStart >= secondStart+secondSize {
		t.Fatalf("the second namespace [%#x, +%d) does not overlap the first [%#x, +%d): nothing to show", secondStart, secondSize, firstStart, firstSize)
	}
	data, err := os.ReadFile(second)
	if err != nil {
		t.Fatal(err)
	}
	stale := len(data) - bytes.Count(data, []byte{0})
	t.Logf("pmem: a new %d-byte block volume (%s, after %s) holds %d non-zero bytes of the previous one's 0xab pattern", len(data), second, first, stale)
	if stale != 0 {
		t.Errorf("pmem: the new volume shows %d bytes of the previous volume", stale)
	}
}

// nsResource is the physical range of the namespace behind a pmem block
// device (/sys/block/<dev>/device is the namespace: its resource and size).
func nsResource(t *testing.T, dev string) (start, size int64) {
	t.Helper()
	ns, err := filepath.EvalSymlinks(filepath.Join("/sys/block", filepath.Base(dev), "device"))
	if err != nil {
		t.Fatal(err)
	}
	read := func(f string) int64 {
		b, err := os.ReadFile(filepath.Join(ns, f))
		if err != nil {
			t.Fatal(err)
		}
		v, err := strconv.ParseInt(strings.TrimPrefix(strings.TrimSpace(string(b)), "0x"), map[bool]int{true: 16, false: 10}[f == "resource"], 64)
		if err != nil {
			t.Fatalf("%s of %s: %v", f, ns, err)
		}
		return v
	}
	return read("resource"), read("size")
}
