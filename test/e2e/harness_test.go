package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/carve-csi/carve/test/driver"
)

const (
	driverName = "carve.csi.dev"
	ownerTag   = "carve.owner=" + driverName
	nodeID     = "e2e-node"
	// callTimeout bounds one CSI call; mkfs and lvm are slow under TCG.
	callTimeout = 3 * time.Minute
	mib         = int64(1) << 20
)

// suite is what all scenarios share: the VG, one kubelet directory and the
// long-running driver most scenarios use (as one DaemonSet pod serves a node).
type suite struct {
	vg      string
	extent  int64
	kubelet string
	shared  *drv
}

// scenario is one subtest's view: a tag that prefixes its volume names and
// directories, so that a failed scenario can clean up only what is its own.
type scenario struct {
	t   *testing.T
	s   *suite
	tag string
}

func (s *suite) scenario(t *testing.T, tag string) *scenario {
	sc := &scenario{t: t, s: s, tag: tag}
	t.Cleanup(sc.scrubIfFailed)
	return sc
}

// name is a CSI volume name owned by this scenario.
func (sc *scenario) name(vol string) string { return "e2e-" + sc.tag + "-" + vol }

// inlineID is a kubelet-style volume handle for an inline volume ("csi-<hex>"),
// with the scenario tag in it.
func (sc *scenario) inlineID(vol string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "csi-e2e-" + sc.tag + "-" + vol + "-" + hex.EncodeToString(b)
}

func (sc *scenario) mkdir(p string) string {
	sc.t.Helper()
	if err := os.MkdirAll(p, 0o750); err != nil {
		sc.t.Fatal(err)
	}
	return p
}

// target is a pod's mount target; kubelet creates its parent, the driver the target.
func (sc *scenario) target(vol string) string {
	dir := filepath.Join(sc.s.kubelet, "pods", sc.tag+"-pod", "volumes", "kubernetes.io~csi", vol)
	return filepath.Join(sc.mkdir(dir), "mount")
}

// staging is a filesystem volume's staging directory; kubelet creates it.
func (sc *scenario) staging(vol string) string {
	return sc.mkdir(filepath.Join(sc.s.kubelet, "plugins", "kubernetes.io", "csi", driverName, sc.tag+"-"+vol, "globalmount"))
}

// blockStaging is a raw block volume's staging directory; kubelet creates it.
func (sc *scenario) blockStaging(vol string) string {
	return sc.mkdir(filepath.Join(sc.s.kubelet, "plugins", "kubernetes.io", "csi", "volumeDevices", "staging", sc.tag+"-"+vol))
}

// blockTarget is a raw block volume's publish path (a file the driver creates).
func (sc *scenario) blockTarget(vol string) string {
	dir := filepath.Join(sc.s.kubelet, "plugins", "kubernetes.io", "csi", "volumeDevices", "publish", sc.tag+"-"+vol)
	return filepath.Join(sc.mkdir(dir), sc.tag+"-pod")
}

// scrubIfFailed removes what a failed scenario left behind (its mounts under
// the kubelet directory and its LVs), so that the next scenarios and the leak
// audit start clean. A passing scenario has checked that it left nothing, so
// nothing is scrubbed then, and a leak it did not check for reaches the audit.
func (sc *scenario) scrubIfFailed() {
	if !sc.t.Failed() {
		return
	}
	t := sc.t
	for _, m := range mountsUnder(t, sc.s.kubelet) {
		if strings.Contains(m.Point, "/"+sc.tag+"-") {
			t.Logf("scrub: unmounting %s (left by the failed scenario)", m.Point)
			if err := unix.Unmount(m.Point, unix.MNT_DETACH); err != nil {
				t.Logf("scrub: umount %s: %v", m.Point, err)
			}
		}
	}
	for _, lv := range listLVs(t, sc.s.vg) {
		if lv.Owner == driverName && strings.Contains(lv.CSIName, "e2e-"+sc.tag+"-") {
			t.Logf("scrub: removing LV %s (%s, left by the failed scenario)", lv.Name, lv.CSIName)
			removeLV(t, sc.s.vg, lv.Name)
		}
	}
}

func removeLV(t *testing.T, vg, name string) {
	out, err := exec.Command("lvm", "lvremove", "-f", vg+"/"+name).CombinedOutput()
	if err != nil {
		t.Logf("lvremove %s/%s: %v: %s", vg, name, err, out)
	}
}

// drv is one running carve-csi with a client.
type drv struct {
	t    *testing.T
	s    *suite
	sc   *scenario
	proc *driver.Process
	ids  csi.IdentityClient
	ctrl csi.ControllerClient
	node csi.NodeClient
}

// startDriver runs a carve-csi --mode=node on the suite's VG and kubelet
// directory; it stops when t ends (a crash test stops it earlier).
func startDriver(t *testing.T, s *suite, extra ...string) *drv {
	t.Helper()
	start := time.Now()
	p := driver.Start(t, nil, append([]string{"--mode=node", "--nodeid=" + nodeID, "--drivername=" + driverName,
		"--pool=default=lvm:" + s.vg, "--kubelet-dir=" + s.kubelet, "--allow-inline-pool", "--v=4"}, extra...)...)
	conn, err := grpc.NewClient("unix://"+p.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc client for %s: %v", p.Socket, err)
	}
	t.Cleanup(func() { conn.Close() })
	d := &drv{t: t, s: s, proc: p, ids: csi.NewIdentityClient(conn), ctrl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn)}
	resp, err := d.ids.Probe(d.ctx(), &csi.ProbeRequest{})
	if err != nil || !resp.GetReady().GetValue() {
		t.Fatalf("Probe: ready=%v, %v", resp.GetReady().GetValue(), err)
	}
	t.Logf("carve-csi started and ready in %v (log %s)", time.Since(start).Round(time.Millisecond), p.Log)
	return d
}

// start runs a driver of the scenario's own, stopped when the scenario ends.
func (sc *scenario) start(extra ...string) *drv {
	sc.t.Helper()
	d := startDriver(sc.t, sc.s, extra...)
	d.sc = sc
	return d
}

// driver returns the suite's shared driver, seen from this scenario: calls
// fail this scenario, and if it fails, the driver's log lines written during
// the scenario are shown.
func (sc *scenario) driver() *drv {
	sc.t.Helper()
	base := sc.s.shared
	if base == nil {
		sc.t.Fatalf("the shared carve-csi is not running")
	}
	from := int64(0)
	if fi, err := os.Stat(base.proc.Log); err == nil {
		from = fi.Size()
	}
	sc.t.Cleanup(func() {
		if sc.t.Failed() {
			sc.t.Logf("carve-csi log during this scenario:\n%s", tailFrom(base.proc.Log, from, 80))
		}
	})
	d := *base
	d.t, d.sc = sc.t, sc
	return &d
}

// tailFrom returns up to n last lines of the file after offset from.
func tailFrom(path string, from int64, n int) string {
	b, _ := os.ReadFile(path)
	if from > int64(len(b)) {
		from = 0
	}
	lines := strings.Split(strings.TrimRight(string(b[from:]), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (d *drv) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	d.t.Cleanup(cancel)
	return ctx
}

// log returns the driver's whole log.
func (d *drv) log() string {
	b, _ := os.ReadFile(d.proc.Log)
	return string(b)
}

// --- capabilities -------------------------------------------------------------------------

func mountCap(fsType string, mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

func blockCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

const rwo = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER

// --- CSI calls that must succeed ------------------------------------------------------------

func (d *drv) create(name string, size int64, c *csi.VolumeCapability) *csi.Volume {
	d.t.Helper()
	resp, err := d.ctrl.CreateVolume(d.ctx(), &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{c},
	})
	if err != nil {
		d.t.Fatalf("CreateVolume %s (%d bytes): %v", name, size, err)
	}
	v := resp.GetVolume()
	if v.GetCapacityBytes() < size || v.GetCapacityBytes()%d.s.extent != 0 {
		d.t.Fatalf("CreateVolume %s: capacity %d, want >= %d and a multiple of the extent size %d", name, v.GetCapacityBytes(), size, d.s.extent)
	}
	return v
}

func (d *drv) delete(id string) {
	d.t.Helper()
	if _, err := d.ctrl.DeleteVolume(d.ctx(), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		d.t.Fatalf("DeleteVolume %s: %v", id, err)
	}
}

func (d *drv) stage(id, staging string, c *csi.VolumeCapability) {
	d.t.Helper()
	_, err := d.node.NodeStageVolume(d.ctx(), &csi.NodeStageVolumeRequest{
		VolumeId: id, StagingTargetPath: staging, VolumeCapability: c,
	})
	if err != nil {
		d.t.Fatalf("NodeStageVolume %s at %s: %v", id, staging, err)
	}
}

func (d *drv) unstage(id, staging string) {
	d.t.Helper()
	if _, err := d.node.NodeUnstageVolume(d.ctx(), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		d.t.Fatalf("NodeUnstageVolume %s at %s: %v", id, staging, err)
	}
}

func (d *drv) publishReq(id, staging, target string, c *csi.VolumeCapability, readOnly bool, vctx map[string]string) error {
	_, err := d.node.NodePublishVolume(d.ctx(), &csi.NodePublishVolumeRequest{
		VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: c,
		Readonly: readOnly, VolumeContext: vctx,
	})
	return err
}

func (d *drv) publish(id, staging, target string, c *csi.VolumeCapability, readOnly bool) {
	d.t.Helper()
	if err := d.publishReq(id, staging, target, c, readOnly, nil); err != nil {
		d.t.Fatalf("NodePublishVolume %s at %s (read-only %v): %v", id, target, readOnly, err)
	}
}

func (d *drv) unpublish(id, target string) {
	d.t.Helper()
	if _, err := d.node.NodeUnpublishVolume(d.ctx(), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		d.t.Fatalf("NodeUnpublishVolume %s at %s: %v", id, target, err)
	}
}

// inlineCtx is the volume context kubelet sends for an inline volume, plus attrs.
func inlineCtx(attrs map[string]string) map[string]string {
	m := map[string]string{
		"csi.storage.k8s.io/ephemeral":           "true",
		"csi.storage.k8s.io/pod.name":            "e2e-pod",
		"csi.storage.k8s.io/pod.namespace":       "default",
		"csi.storage.k8s.io/pod.uid":             "00000000-0000-0000-0000-00000000e2e0",
		"csi.storage.k8s.io/serviceAccount.name": "default",
	}
	for k, v := range attrs {
		m[k] = v
	}
	return m
}

func (d *drv) publishInline(id, target string, attrs map[string]string) error {
	return d.publishReq(id, "", target, mountCap("", rwo), false, inlineCtx(attrs))
}

type usage struct{ bytes, inodes *csi.VolumeUsage }

func (d *drv) stats(id, path string) usage {
	d.t.Helper()
	resp, err := d.node.NodeGetVolumeStats(d.ctx(), &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: path})
	if err != nil {
		d.t.Fatalf("NodeGetVolumeStats %s at %s: %v", id, path, err)
	}
	var u usage
	for _, x := range resp.GetUsage() {
		switch x.GetUnit() {
		case csi.VolumeUsage_BYTES:
			u.bytes = x
		case csi.VolumeUsage_INODES:
			u.inodes = x
		}
	}
	if u.bytes == nil {
		d.t.Fatalf("NodeGetVolumeStats %s: no BYTES usage in %v", id, resp)
	}
	return u
}

type capacity struct{ available, maximum, minimum int64 }

func (d *drv) capacity() capacity {
	d.t.Helper()
	resp, err := d.ctrl.GetCapacity(d.ctx(), &csi.GetCapacityRequest{})
	if err != nil {
		d.t.Fatalf("GetCapacity: %v", err)
	}
	return capacity{resp.GetAvailableCapacity(), resp.GetMaximumVolumeSize().GetValue(), resp.GetMinimumVolumeSize().GetValue()}
}

// --- gRPC codes -----------------------------------------------------------------------------

func wantOK(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func wantCode(t *testing.T, err error, want codes.Code, what string) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Errorf("%s: code %v, want %v (error: %v)", what, got, want, err)
	}
}

// --- lvm --------------------------------------------------------------------------------------

type lvInfo struct {
	Name, Attr, RawTags string
	Size                int64
	Owner, CSIName      string
	Target              string
	Ephemeral           bool
}

func (lv lvInfo) active() bool { return len(lv.Attr) > 4 && lv.Attr[4] == 'a' }

func (lv lvInfo) hasTag(tag string) bool {
	for _, x := range strings.Split(lv.RawTags, ",") {
		if x == tag {
			return true
		}
	}
	return false
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// listLVs returns every LV of vg with carve's tags decoded.
func listLVs(t *testing.T, vg string) []lvInfo {
	t.Helper()
	out, err := exec.Command("lvm", "lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
		"-o", "lv_name,lv_attr,lv_size,lv_tags", vg).Output()
	if err != nil {
		t.Fatalf("lvs %s: %v: %s", vg, err, stderrOf(err))
	}
	var rep struct {
		Report []struct {
			LV []struct {
				Name string `json:"lv_name"`
				Attr string `json:"lv_attr"`
				Size string `json:"lv_size"`
				Tags string `json:"lv_tags"`
			} `json:"lv"`
		} `json:"report"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("lvs %s: %v: %s", vg, err, out)
	}
	var lvs []lvInfo
	for _, r := range rep.Report {
		for _, l := range r.LV {
			lv := lvInfo{Name: l.Name, Attr: l.Attr, RawTags: l.Tags}
			lv.Size, _ = strconv.ParseInt(l.Size, 10, 64)
			for _, tag := range strings.Split(l.Tags, ",") {
				k, v, _ := strings.Cut(tag, "=")
				switch k {
				case "carve.owner":
					lv.Owner = v
				case "carve.ephemeral":
					lv.Ephemeral = v == "true"
				case "carve.name", "carve.target":
					raw, err := base64.RawURLEncoding.DecodeString(v)
					if err != nil {
						t.Errorf("LV %s: tag %s is not base64url: %v", l.Name, tag, err)
					}
					if k == "carve.name" {
						lv.CSIName = string(raw)
					} else {
						lv.Target = string(raw)
					}
				}
			}
			lvs = append(lvs, lv)
		}
	}
	return lvs
}

// lvNamed returns the carve LV created for CSI name csiName, or nil.
func lvNamed(t *testing.T, vg, csiName string) *lvInfo {
	t.Helper()
	var found *lvInfo
	for _, lv := range listLVs(t, vg) {
		if lv.Owner == driverName && lv.CSIName == csiName {
			if found != nil {
				t.Fatalf("two LVs carry carve.name=%q: %s and %s", csiName, found.Name, lv.Name)
			}
			lv := lv
			found = &lv
		}
	}
	return found
}

func carveLVs(t *testing.T, vg string) []lvInfo {
	t.Helper()
	var out []lvInfo
	for _, lv := range listLVs(t, vg) {
		if strings.Contains(lv.RawTags, "carve.owner=") {
			out = append(out, lv)
		}
	}
	return out
}

// vgFree returns the VG's free bytes straight from vgs.
func vgFree(t *testing.T, vg string) (free, size int64) {
	t.Helper()
	out, err := exec.Command("lvm", "vgs", "--reportformat", "json", "--units", "b", "--nosuffix",
		"-o", "vg_free,vg_size", vg).Output()
	if err != nil {
		t.Fatalf("vgs %s: %v: %s", vg, err, stderrOf(err))
	}
	var rep struct {
		Report []struct {
			VG []struct {
				Free string `json:"vg_free"`
				Size string `json:"vg_size"`
			} `json:"vg"`
		} `json:"report"`
	}
	if err := json.Unmarshal(out, &rep); err != nil || len(rep.Report) == 0 || len(rep.Report[0].VG) != 1 {
		t.Fatalf("vgs %s: %v: %s", vg, err, out)
	}
	free, _ = strconv.ParseInt(rep.Report[0].VG[0].Free, 10, 64)
	size, _ = strconv.ParseInt(rep.Report[0].VG[0].Size, 10, 64)
	return free, size
}

// devPath is the device node of the volume with that id.
func (s *suite) devPath(id string) string { return "/dev/" + s.vg + "/" + id }

// --- mounts ---------------------------------------------------------------------------------

type mountEntry struct {
	Major, Minor uint32
	Root, Point  string
	Options      []string // per-mount options (ro/rw, nosuid, ...)
	FSType       string
	Source       string
}

func (m mountEntry) readOnly() bool {
	for _, o := range m.Options {
		if o == "ro" {
			return true
		}
	}
	return false
}

// unescapeMount undoes the octal escapes of /proc/self/mountinfo (\040 etc.).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func mounts(t *testing.T) []mountEntry {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var ms []mountEntry
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 7 || sep < 0 || sep+2 >= len(f) {
			t.Fatalf("unexpected mountinfo line %q", line)
		}
		var m mountEntry
		maj, min, _ := strings.Cut(f[2], ":")
		a, _ := strconv.ParseUint(maj, 10, 32)
		b, _ := strconv.ParseUint(min, 10, 32)
		m.Major, m.Minor = uint32(a), uint32(b)
		m.Root, m.Point = unescapeMount(f[3]), unescapeMount(f[4])
		m.Options = strings.Split(f[5], ",")
		m.FSType, m.Source = f[sep+1], unescapeMount(f[sep+2])
		ms = append(ms, m)
	}
	return ms
}

// mountAt returns the top-most mount at path, or nil.
func mountAt(t *testing.T, path string) *mountEntry {
	t.Helper()
	var found *mountEntry
	for _, m := range mounts(t) {
		if m.Point == path {
			m := m
			found = &m
		}
	}
	return found
}

func mountsUnder(t *testing.T, dir string) []mountEntry {
	t.Helper()
	var out []mountEntry
	for _, m := range mounts(t) {
		if strings.HasPrefix(m.Point, dir+"/") {
			out = append(out, m)
		}
	}
	// Deepest first, so that a scrub unmounts targets before what they bind.
	sort.Slice(out, func(i, j int) bool { return len(out[i].Point) > len(out[j].Point) })
	return out
}

// devNum returns the device number of a block device node.
func devNum(t *testing.T, path string) (uint32, uint32) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		t.Fatalf("%s is not a block device (mode %o)", path, st.Mode)
	}
	return unix.Major(st.Rdev), unix.Minor(st.Rdev)
}

// wantMountOf checks that path is a mount of the device node dev with fsType
// (root "/" of the filesystem, i.e. a whole-filesystem mount or a bind of it).
func wantMountOf(t *testing.T, path, dev, fsType string) *mountEntry {
	t.Helper()
	m := mountAt(t, path)
	if m == nil {
		t.Fatalf("%s is not in /proc/self/mountinfo", path)
	}
	maj, min := devNum(t, dev)
	if m.Major != maj || m.Minor != min || m.Root != "/" || m.FSType != fsType {
		t.Fatalf("%s is mounted from %d:%d root %s type %s (%s), want %s = %d:%d root / type %s",
			path, m.Major, m.Minor, m.Root, m.FSType, m.Source, dev, maj, min, fsType)
	}
	return m
}

func wantNotMounted(t *testing.T, path string) {
	t.Helper()
	if m := mountAt(t, path); m != nil {
		t.Errorf("%s is still mounted (%s %s from %s)", path, m.FSType, strings.Join(m.Options, ","), m.Source)
	}
}

func wantGone(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s still exists after unpublish (lstat: %v)", path, err)
	}
}

// --- data -----------------------------------------------------------------------------------

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// writeSync writes a file and fsyncs it and its directory.
func writeSync(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatalf("create %s: %v", path, err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", path, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

func wantContent(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: read back %d bytes that differ from the %d written (first difference at %d)", path, len(got), len(want), firstDiff(got, want))
	}
}

func firstDiff(a, b []byte) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// alignedBuf is page-aligned memory for O_DIRECT.
func alignedBuf(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("mmap %d bytes: %v", n, err)
	}
	t.Cleanup(func() { _ = unix.Munmap(b) })
	return b
}

// directWrite writes data at off with O_DIRECT (bypassing the page cache) and fsyncs.
func directWrite(t *testing.T, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatalf("open %s O_DIRECT for writing: %v", path, err)
	}
	defer f.Close()
	buf := alignedBuf(t, len(data))
	copy(buf, data)
	if n, err := f.WriteAt(buf, off); err != nil || n != len(data) {
		t.Fatalf("O_DIRECT write of %d bytes at %d to %s: %d, %v", len(data), off, path, n, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", path, err)
	}
}

// directRead reads n bytes at off with O_DIRECT, so from the device itself.
func directRead(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatalf("open %s O_DIRECT: %v", path, err)
	}
	defer f.Close()
	buf := alignedBuf(t, n)
	if got, err := f.ReadAt(buf, off); err != nil || got != n {
		t.Fatalf("O_DIRECT read of %d bytes at %d from %s: %d, %v", n, off, path, got, err)
	}
	return append([]byte(nil), buf...)
}

func statfs(t *testing.T, path string) unix.Statfs_t {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatalf("statfs %s: %v", path, err)
	}
	return st
}

func statfsTotal(t *testing.T, path string) int64 {
	st := statfs(t, path)
	return int64(st.Blocks) * st.Frsize
}

func human(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/float64(mib)) }
