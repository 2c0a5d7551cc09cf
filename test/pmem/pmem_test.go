// Package pmem is carve's PMEM suite: carve-csi --mode=node with pmem and
// lvm-on-pmem pools on a real NVDIMM region (the VM rig's emulated one),
// through the CSI socket as kubelet and the sidecars use it. It needs root,
// ndctl, lvm2 and mkfs, and a scratch region whose namespaces it may destroy:
//
//	CARVE_PMEM_REGION=region0 CARVE_BINARY=<carve-csi> ./pmem.test -test.v
//
// Without CARVE_PMEM_REGION every test skips, so `go test ./...` on a host
// without PMEM stays green. test/pmem/vm-pmem.sh runs it in the VM.
package pmem

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/pkg/backend/pmem"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/test/driver"
)

const mib = int64(1) << 20

// scratchRegion returns the region under test, or skips.
func scratchRegion(t testing.TB) string {
	t.Helper()
	r := os.Getenv("CARVE_PMEM_REGION")
	if r == "" {
		t.Skip("set CARVE_PMEM_REGION=<scratch region> (as test/pmem/vm-pmem.sh does in the VM) to run the PMEM suite")
	}
	if os.Geteuid() != 0 {
		t.Skip("the PMEM suite needs root")
	}
	return r
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// region is what `ndctl list` says about the region and its namespaces.
type region struct {
	Dev                string `json:"dev"`
	Size               int64  `json:"size"`
	Align              int64  `json:"align"`
	AvailableSize      int64  `json:"available_size"`
	MaxAvailableExtent int64  `json:"max_available_extent"`
	Namespaces         []struct {
		Dev      string `json:"dev"`
		Name     string `json:"name"`
		Size     int64  `json:"size"`
		Mode     string `json:"mode"`
		Blockdev string `json:"blockdev"`
	} `json:"namespaces"`
}

func ndctlList(t testing.TB, reg string) region {
	t.Helper()
	out := bytes.TrimSpace([]byte(run(t, "ndctl", "list", "-R", "-N", "-r", reg)))
	var rs []region
	if len(out) > 0 && out[0] == '{' {
		var obj struct {
			Regions []region `json:"regions"`
		}
		if err := json.Unmarshal(out, &obj); err != nil {
			t.Fatalf("ndctl list: %v: %s", err, out)
		}
		rs = obj.Regions
	} else if err := json.Unmarshal(out, &rs); err != nil {
		t.Fatalf("ndctl list: %v: %s", err, out)
	}
	if len(rs) != 1 {
		t.Fatalf("ndctl list -r %s: %s", reg, out)
	}
	return rs[0]
}

// namespacesNamed returns the namespace devices named name.
func namespacesNamed(t testing.TB, reg, name string) []string {
	t.Helper()
	var devs []string
	for _, ns := range ndctlList(t, reg).Namespaces {
		if ns.Name == name && ns.Size > 0 {
			devs = append(devs, ns.Dev)
		}
	}
	return devs
}

// carveNamespaces lists namespaces whose name is a carve volume id.
func carveNamespaces(t testing.TB, reg string) []string {
	t.Helper()
	var ids []string
	for _, ns := range ndctlList(t, reg).Namespaces {
		if names.IsVolumeID(ns.Name) && ns.Size > 0 {
			ids = append(ids, ns.Name)
		}
	}
	return ids
}

// cleanRegion removes every namespace and carve's lvm-on-pmem volume groups,
// now and when the test ends.
func cleanRegion(t testing.TB, reg string) {
	t.Helper()
	clean := func() {
		out, _ := exec.Command("lvm", "vgs", "--noheadings", "-o", "vg_name").Output()
		for _, vg := range strings.Fields(string(out)) {
			if strings.HasPrefix(vg, "carve-lvm-") || strings.HasPrefix(vg, "carvedisk") {
				_ = exec.Command("lvm", "vgremove", "-f", "-y", vg).Run()
			}
		}
		_ = exec.Command("ndctl", "destroy-namespace", "-f", "-r", reg, "all").Run()
	}
	clean()
	if left := carveNamespaces(t, reg); len(left) > 0 {
		t.Fatalf("could not clean %s: %v", reg, left)
	}
	t.Cleanup(clean)
}

// fillRegion gives all but about leave bytes of reg's free space to a
// namespace carve does not own (ndctl writes no data into it, so it costs no
// wipe), and returns that leave. Tests that fill the region then zero a few
// hundred MiB, not the whole emulated NVDIMM (a 4 GiB wipe took ~2 minutes
// under TCG); a foreign neighbour is also what a shared region looks like.
// cleanRegion removes it.
func fillRegion(t testing.TB, reg string, leave int64) {
	t.Helper()
	r := ndctlList(t, reg)
	if r.AvailableSize <= leave+r.Align {
		return
	}
	size := (r.AvailableSize - leave) / r.Align * r.Align
	run(t, "ndctl", "create-namespace", "-r", reg, "-m", "fsdax", "-s", strconv.FormatInt(size, 10), "-n", "filler")
	t.Logf("a foreign namespace takes %d MiB of %s; %d MiB left", size/mib, reg, ndctlList(t, reg).AvailableSize/mib)
}

// node is a running carve-csi --mode=node and its CSI clients.
type node struct {
	proc    *driver.Process
	kubelet string
	args    []string
	conn    *grpc.ClientConn
	ctrl    csi.ControllerClient
	node    csi.NodeClient
}

func newKubeletDir(t testing.TB) string {
	t.Helper()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	k := filepath.Join(dir, "kubelet")
	for _, d := range []string{"pods", "plugins"} {
		if err := os.MkdirAll(filepath.Join(k, d), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

func startNode(t testing.TB, kubelet string, pools ...string) *node {
	t.Helper()
	args := []string{"--mode=node", "--nodeid=pmem-node", "--kubelet-dir=" + kubelet, "--standalone", "--v=3"}
	for _, p := range pools {
		args = append(args, "--pool="+p)
	}
	n := &node{kubelet: kubelet, args: args}
	n.start(t)
	return n
}

func (n *node) start(t testing.TB) {
	t.Helper()
	n.proc = driver.Start(t, nil, n.args...)
	conn, err := grpc.NewClient("unix://"+n.proc.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	n.conn, n.ctrl, n.node = conn, csi.NewControllerClient(conn), csi.NewNodeClient(conn)
}

// restart kills the process (a crash) and starts it again on the same state.
func (n *node) restart(t testing.TB) {
	t.Helper()
	n.proc.Stop(syscall.SIGKILL)
	n.conn.Close()
	n.start(t)
}

func mountCap(fs string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func (n *node) create(t testing.TB, name, pool string, required, limit int64, params map[string]string) (*csi.Volume, error) {
	t.Helper()
	p := map[string]string{"pool": pool}
	for k, v := range params {
		p[k] = v
	}
	resp, err := n.ctrl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: name, VolumeCapabilities: []*csi.VolumeCapability{mountCap("")}, Parameters: p,
		CapacityRange: &csi.CapacityRange{RequiredBytes: required, LimitBytes: limit},
	})
	return resp.GetVolume(), err
}

func (n *node) mustCreate(t testing.TB, name, pool string, required int64) *csi.Volume {
	t.Helper()
	v, err := n.create(t, name, pool, required, 0, nil)
	if err != nil {
		t.Fatalf("CreateVolume %s (%d bytes in %s): %v", name, required, pool, err)
	}
	if v.GetCapacityBytes() < required {
		t.Fatalf("CreateVolume %s: %d bytes, %d requested", name, v.GetCapacityBytes(), required)
	}
	return v
}

func (n *node) delete(t testing.TB, id string) {
	t.Helper()
	if _, err := n.ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatalf("DeleteVolume %s: %v", id, err)
	}
}

func (n *node) capacity(t testing.TB, pool string) (avail, maxVol int64) {
	t.Helper()
	resp, err := n.ctrl.GetCapacity(context.Background(), &csi.GetCapacityRequest{Parameters: map[string]string{"pool": pool}})
	if err != nil {
		t.Fatalf("GetCapacity %s: %v", pool, err)
	}
	return resp.GetAvailableCapacity(), resp.GetMaximumVolumeSize().GetValue()
}

// checkCapacity compares GetCapacity with `ndctl list`: available is the
// region's available_size, the maximum volume the usable size of its largest
// free extent.
func (n *node) checkCapacity(t testing.TB, pool, reg, when string) (avail, maxVol int64) {
	t.Helper()
	avail, maxVol = n.capacity(t, pool)
	r := ndctlList(t, reg)
	wantMax := pmem.MaxVolumeBytes(r.MaxAvailableExtent, r.Align)
	if avail != r.AvailableSize || maxVol != wantMax {
		t.Errorf("%s: GetCapacity available %d, max %d; ndctl list: available_size %d, max_available_extent %d (max volume %d)",
			when, avail, maxVol, r.AvailableSize, r.MaxAvailableExtent, wantMax)
	} else {
		t.Logf("%s: capacity %d MiB free, largest volume %d MiB (= ndctl list)", when, avail/mib, maxVol/mib)
	}
	return avail, maxVol
}

// mountOptions returns the /proc/mounts options of the mount at path.
func mountOptions(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	opts := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 4 && fields[1] == path {
			opts = fields[2] + " " + fields[3] // the last (top) mount wins
		}
	}
	return opts
}

func hasDAX(opts string) bool {
	for _, o := range strings.Split(strings.TrimPrefix(opts, strings.SplitN(opts, " ", 2)[0]+" "), ",") {
		if o == "dax" || o == "dax=always" {
			return true
		}
	}
	return false
}

func (n *node) stage(t testing.TB, id, fs string, volCtx map[string]string) (string, error) {
	t.Helper()
	staging := filepath.Join(n.kubelet, "plugins", "staging", id)
	_, err := n.node.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{
		VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap(fs), VolumeContext: volCtx})
	return staging, err
}

func (n *node) unstage(t testing.TB, id, staging string) {
	t.Helper()
	if _, err := n.node.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatalf("NodeUnstageVolume %s: %v", id, err)
	}
}

// TestDAXMounts: volumes of pmem and lvm-on-pmem pools mount with DAX (ext4
// and xfs, seen in /proc/mounts); dax=false in the volume context mounts
// without; DAX asked for on a disk LV is FailedPrecondition with nothing mounted.
func TestDAXMounts(t *testing.T) {
	reg := scratchRegion(t)
	cleanRegion(t, reg)
	disk := diskVG(t)
	n := startNode(t, newKubeletDir(t), "pm=pmem:"+reg, "pl=lvm-pmem:"+reg+":25%", "disk=lvm:"+disk)
	for _, c := range []struct {
		pool, fs string
		volCtx   map[string]string
		wantDAX  bool
	}{
		{"pm", "ext4", nil, true},
		{"pm", "xfs", nil, true},
		{"pm", "ext4", map[string]string{"dax": "false"}, false},
		{"pl", "ext4", nil, true},
		{"pl", "xfs", nil, true},
		{"disk", "ext4", nil, false},
	} {
		name := fmt.Sprintf("dax-%s-%s-%v", c.pool, c.fs, c.wantDAX)
		size := 62 * mib
		if c.fs == "xfs" {
			size = 400 * mib // mkfs.xfs: "Filesystem must be larger than 300MB."
		}
		v := n.mustCreate(t, name, c.pool, size)
		staging, err := n.stage(t, v.GetVolumeId(), c.fs, c.volCtx)
		if err != nil {
			t.Fatalf("%s: NodeStageVolume: %v", name, err)
		}
		opts := mountOptions(t, staging)
		if hasDAX(opts) != c.wantDAX {
			t.Errorf("%s: /proc/mounts options %q, want DAX %v", name, opts, c.wantDAX)
		} else {
			t.Logf("%s: /proc/mounts: %s", name, opts)
		}
		n.unstage(t, v.GetVolumeId(), staging)
		n.delete(t, v.GetVolumeId())
	}
	// DAX asked for where the device cannot do it (xfs would mount anyway,
	// silently without DAX).
	v, err := n.create(t, "dax-on-disk", "disk", 400*mib, 0, map[string]string{"dax": "true"})
	if err != nil {
		t.Fatal(err)
	}
	staging, err := n.stage(t, v.GetVolumeId(), "xfs", v.GetVolumeContext())
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("DAX on a disk LV: err = %v, want FailedPrecondition", err)
	} else {
		t.Logf("DAX on a disk LV: %v", err)
	}
	if opts := mountOptions(t, staging); opts != "" {
		t.Errorf("mounted anyway: %s", opts)
	}
	out, _ := exec.Command("blkid", "-p", "-o", "value", "-s", "TYPE", "/dev/"+disk+"/"+v.GetVolumeId()).Output()
	if len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("the device was formatted (%s) although DAX was refused", out)
	}
	n.delete(t, v.GetVolumeId())
}

// diskVG makes a volume group on the VM's virtio disk, which cannot do DAX.
func diskVG(t testing.TB) string {
	t.Helper()
	const vg = "carvedisk"
	if _, err := os.Stat("/dev/vda"); err != nil {
		t.Skip("no /dev/vda for a non-DAX volume group")
	}
	_ = exec.Command("lvm", "vgremove", "-f", "-y", vg).Run()
	run(t, "wipefs", "-a", "/dev/vda")
	run(t, "lvm", "pvcreate", "-y", "/dev/vda")
	run(t, "lvm", "vgcreate", vg, "/dev/vda")
	t.Cleanup(func() {
		_ = exec.Command("lvm", "vgremove", "-f", "-y", vg).Run()
		_ = exec.Command("lvm", "pvremove", "-y", "/dev/vda").Run()
	})
	return vg
}

// TestCapacityExact: after every create and delete (inline volumes included),
// GetCapacity matches `ndctl list` exactly, and ends where it started.
func TestCapacityExact(t *testing.T) {
	reg := scratchRegion(t)
	cleanRegion(t, reg)
	n := startNode(t, newKubeletDir(t), "pm=pmem:"+reg)
	ctx := context.Background()
	a0, m0 := n.checkCapacity(t, "pm", reg, "empty")
	var ids []string
	for i, size := range []int64{62 * mib, 100 * mib, 1 << 30, 130*mib + 12345} {
		v := n.mustCreate(t, fmt.Sprintf("cap-%d", i), "pm", size)
		ids = append(ids, v.GetVolumeId())
		a, _ := n.checkCapacity(t, "pm", reg, fmt.Sprintf("after creating %d bytes (got %d)", size, v.GetCapacityBytes()))
		if a >= a0 {
			t.Errorf("available did not drop")
		}
	}
	// An inline volume counts too.
	target := filepath.Join(n.kubelet, "pods", "uid-1", "volumes", "kubernetes.io~csi", "scratch", "mount")
	inline := "csi-" + strings.Repeat("ab", 32)
	_, err := n.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: inline, TargetPath: target,
		VolumeCapability: mountCap("ext4"), VolumeContext: map[string]string{"csi.storage.k8s.io/ephemeral": "true", "size": "30Mi"}})
	if err != nil {
		t.Fatalf("inline volume: %v", err)
	}
	if !hasDAX(mountOptions(t, target)) {
		t.Errorf("inline PMEM volume not mounted with DAX: %s", mountOptions(t, target))
	}
	n.checkCapacity(t, "pm", reg, "after an inline volume")
	if _, err := n.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: inline, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	n.checkCapacity(t, "pm", reg, "after removing the inline volume")
	for _, id := range ids {
		n.delete(t, id)
		n.checkCapacity(t, "pm", reg, "after deleting "+id)
	}
	if a, m := n.capacity(t, "pm"); a != a0 || m != m0 {
		t.Errorf("capacity after deleting everything: %d/%d, at start %d/%d", a, m, a0, m0)
	}
	if left := carveNamespaces(t, reg); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
}

// TestRegionFull: the largest reported volume fits exactly; the next request
// is ResourceExhausted, and nothing half-made is left.
func TestRegionFull(t *testing.T) {
	reg := scratchRegion(t)
	cleanRegion(t, reg)
	fillRegion(t, reg, 512*mib)
	n := startNode(t, newKubeletDir(t), "pm=pmem:"+reg)
	_, maxVol := n.checkCapacity(t, "pm", reg, "empty")
	if _, err := n.create(t, "too-big", "pm", maxVol+2*mib, 0, nil); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("%d bytes (more than the largest volume): err = %v, want ResourceExhausted", maxVol+2*mib, err)
	}
	big := n.mustCreate(t, "fill", "pm", maxVol)
	if big.GetCapacityBytes() != maxVol {
		t.Errorf("the largest volume has %d bytes, GetCapacity said %d", big.GetCapacityBytes(), maxVol)
	}
	n.checkCapacity(t, "pm", reg, "full")
	_, err := n.create(t, "one-more", "pm", 14*mib, 0, nil)
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("full region: err = %v, want ResourceExhausted", err)
	} else {
		t.Logf("full region: %v", err)
	}
	if left := carveNamespaces(t, reg); len(left) != 1 {
		t.Errorf("namespaces after the failed creates: %v", left)
	}
	n.delete(t, big.GetVolumeId())
}

// TestFragmentation: after deleting the middle of three volumes the free space
// is split; maximum_volume_size is the larger gap's volume, which fits, while
// anything bigger is ResourceExhausted although the free sum would hold it.
func TestFragmentation(t *testing.T) {
	reg := scratchRegion(t)
	cleanRegion(t, reg)
	fillRegion(t, reg, 1024*mib)
	n := startNode(t, newKubeletDir(t), "pm=pmem:"+reg)
	a := n.mustCreate(t, "frag-a", "pm", 250*mib)
	b := n.mustCreate(t, "frag-b", "pm", 400*mib)
	c := n.mustCreate(t, "frag-c", "pm", 250*mib)
	n.delete(t, b.GetVolumeId())
	avail, maxVol := n.checkCapacity(t, "pm", reg, "after deleting the middle volume")
	if maxVol >= avail || maxVol < 400*mib {
		t.Fatalf("available %d, max volume %d: want the middle gap (>= 400 MiB) below the free sum", avail, maxVol)
	}
	if _, err := n.create(t, "frag-too-big", "pm", maxVol+2*mib, 0, nil); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("max+2MiB (%d of %d free): err = %v, want ResourceExhausted", maxVol+2*mib, avail, err)
	}
	fit := n.mustCreate(t, "frag-fit", "pm", maxVol)
	n.checkCapacity(t, "pm", reg, "after filling the gap")
	for _, v := range []*csi.Volume{a, c, fit} {
		n.delete(t, v.GetVolumeId())
	}
}

// TestRestart: after a crash, persistent volumes are found again by name
// (idempotent CreateVolume), inline volumes whose pod is gone are removed,
// mounted ones stay, and namespaces carve does not own are never touched.
func TestRestart(t *testing.T) {
	reg := scratchRegion(t)
	cleanRegion(t, reg)
	run(t, "ndctl", "create-namespace", "-r", reg, "-m", "fsdax", "-s", "32M", "-n", "carve-foreign-0123456789abcdef")
	run(t, "ndctl", "create-namespace", "-r", reg, "-m", "fsdax", "-s", "32M", "-n", "scratch")
	kubelet := newKubeletDir(t)
	n := startNode(t, kubelet, "pm=pmem:"+reg)
	ctx := context.Background()
	vol := n.mustCreate(t, "pvc-Restart/Odd Name", "pm", 100*mib)
	publish := func(handle, pod string) string {
		target := filepath.Join(kubelet, "pods", pod, "volumes", "kubernetes.io~csi", "scratch", "mount")
		if _, err := n.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: handle, TargetPath: target,
			VolumeCapability: mountCap("ext4"), VolumeContext: map[string]string{"csi.storage.k8s.io/ephemeral": "true", "size": "20Mi"}}); err != nil {
			t.Fatalf("inline %s: %v", handle, err)
		}
		return target
	}
	gone, stays := "csi-"+strings.Repeat("01", 32), "csi-"+strings.Repeat("02", 32)
	goneTarget := publish(gone, "pod-gone")
	staysTarget := publish(stays, "pod-stays")
	n.proc.Stop(syscall.SIGKILL)
	run(t, "umount", goneTarget) // the pod went away while carve was down
	n.start(t)
	if devs := namespacesNamed(t, reg, names.VolumeID(gone)); len(devs) != 0 {
		t.Errorf("orphaned inline volume not removed at start-up: %v", devs)
	}
	if devs := namespacesNamed(t, reg, names.VolumeID(stays)); len(devs) != 1 || !hasDAX(mountOptions(t, staysTarget)) {
		t.Errorf("mounted inline volume: namespaces %v, mount %q", devs, mountOptions(t, staysTarget))
	}
	again, err := n.create(t, "pvc-Restart/Odd Name", "pm", 100*mib, 0, nil)
	if err != nil || again.GetVolumeId() != vol.GetVolumeId() || again.GetCapacityBytes() != vol.GetCapacityBytes() {
		t.Errorf("CreateVolume after restart: %v, %v; before: %v", again, err, vol)
	}
	list, err := n.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range list.GetEntries() {
		if strings.Contains(e.GetVolume().GetVolumeId(), "foreign") {
			t.Errorf("ListVolumes shows a namespace carve does not own: %v", e.GetVolume())
		}
	}
	if len(list.GetEntries()) != 2 {
		t.Errorf("ListVolumes: %d entries, want the volume and the mounted inline volume", len(list.GetEntries()))
	}
	if _, err := n.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "carve-foreign-0123456789abcdef"}); err != nil {
		t.Errorf("DeleteVolume of a foreign namespace: %v", err)
	}
	for _, name := range []string{"carve-foreign-0123456789abcdef", "scratch"} {
		if len(namespacesNamed(t, reg, name)) != 1 {
			t.Errorf("namespace %s carve does not own was touched", name)
		}
	}
	if _, err := n.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: stays, TargetPath: staysTarget}); err != nil {
		t.Fatal(err)
	}
	n.delete(t, vol.GetVolumeId())
	if left := carveNamespaces(t, reg); len(left) != 1 || left[0] != "carve-foreign-0123456789abcdef" {
		t.Errorf("carve-named namespaces left: %v", left)
	}
}

// TestLVMOnPMEMRestart: the lvm-on-pmem pool survives a restart without being
// wiped: a volume and its data are still there.
func TestLVMOnPMEMRestart(t *testing.T) {
	reg := scratchRegion(t)
	cleanRegion(t, reg)
	n := startNode(t, newKubeletDir(t), "pl=lvm-pmem:"+reg+":50%")
	ctx := context.Background()
	v := n.mustCreate(t, "pvc-lvm-restart", "pl", 64*mib)
	staging, err := n.stage(t, v.GetVolumeId(), "ext4", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !hasDAX(mountOptions(t, staging)) {
		t.Errorf("LV on PMEM not mounted with DAX: %s", mountOptions(t, staging))
	}
	if err := os.WriteFile(filepath.Join(staging, "data"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	n.unstage(t, v.GetVolumeId(), staging)
	n.restart(t)
	if devs := namespacesNamed(t, reg, "carve-lvm-pl"); len(devs) != 1 {
		t.Fatalf("lvm-pmem namespaces after restart: %v", devs)
	}
	staging, err = n.stage(t, v.GetVolumeId(), "ext4", nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(staging, "data")); err != nil || string(b) != "kept" {
		t.Errorf("data after restart: %q %v", b, err)
	}
	n.unstage(t, v.GetVolumeId(), staging)
	// Expansion works on LVM on PMEM (online, with DAX).
	if _, err := n.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: v.GetVolumeId(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 128 * mib}}); err != nil {
		t.Errorf("expand: %v", err)
	}
	n.delete(t, v.GetVolumeId())
}

// TestPMEMCannotExpand: a node with only pmem pools does not offer expansion;
// a node that also has LVM does, and answers OutOfRange for a namespace.
func TestPMEMCannotExpand(t *testing.T) {
	reg := scratchRegion(t)
	cleanRegion(t, reg)
	n := startNode(t, newKubeletDir(t), "pm=pmem:"+reg)
	caps, err := n.ctrl.ControllerGetCapabilities(context.Background(), &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range caps.GetCapabilities() {
		if c.GetRpc().GetType() == csi.ControllerServiceCapability_RPC_EXPAND_VOLUME {
			t.Error("EXPAND_VOLUME offered by a node with only pmem pools")
		}
	}
	v := n.mustCreate(t, "pvc-fixed", "pm", 62*mib)
	_, err = n.ctrl.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{VolumeId: v.GetVolumeId(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 200 * mib}})
	if status.Code(err) != codes.OutOfRange {
		t.Errorf("expand a namespace: %v, want OutOfRange", err)
	}
	n.delete(t, v.GetVolumeId())
}

// TestBadInput: an exact size the region cannot hold is OutOfRange with
// nothing left; a missing region stops start-up with a clear message.
func TestBadInput(t *testing.T) {
	reg := scratchRegion(t)
	cleanRegion(t, reg)
	n := startNode(t, newKubeletDir(t), "pm=pmem:"+reg)
	if _, err := n.create(t, "exact-64", "pm", 64*mib, 64*mib, nil); status.Code(err) != codes.OutOfRange {
		t.Errorf("exactly 64 MiB (not a size a 16 MiB-aligned fsdax namespace has): %v, want OutOfRange", err)
	}
	if left := carveNamespaces(t, reg); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
	v, err := n.create(t, "exact-62", "pm", 62*mib, 62*mib, nil)
	if err != nil || v.GetCapacityBytes() != 62*mib {
		t.Errorf("exactly 62 MiB: %v %v", v, err)
	} else {
		n.delete(t, v.GetVolumeId())
	}
	cmd := exec.Command(driver.Binary(t), "--mode=node", "--nodeid=n", "--standalone", "--pool=pm=pmem:region9",
		"--kubelet-dir="+newKubeletDir(t), "--endpoint=unix://"+filepath.Join(t.TempDir(), "csi.sock"))
	out, err := cmd.CombinedOutput()
	last := strings.TrimSpace(string(out))
	if i := strings.LastIndex(last, "\n"); i >= 0 {
		last = last[i+1:]
	}
	if err == nil || !strings.Contains(last, `pool "pm"`) || !strings.Contains(last, "region9") {
		t.Errorf("start-up with a missing region: %v, last line %q", err, last)
	} else {
		t.Logf("missing region: %s", last)
	}
}
