package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// xfsMin is mkfs.xfs's minimum (xfsprogs 6.1: "Filesystem must be larger than 300MB.").
const xfsMin = 300 * mib

// podTarget is the target of volume vol in pod pod (kubelet makes the pod's
// directory and the volume's, the driver the target).
func (sc *scenario) podTarget(pod, vol string) string {
	dir := filepath.Join(sc.s.kubelet, "pods", sc.tag+"-"+pod, "volumes", "kubernetes.io~csi", vol)
	return filepath.Join(sc.mkdir(dir), "mount")
}

// lvUUID is the LV's uuid: a device made again under the same name has another.
func lvUUID(t *testing.T, vg, lv string) string {
	t.Helper()
	out, err := exec.Command("lvm", "lvs", "--noheadings", "-o", "lv_uuid", vg+"/"+lv).Output()
	if err != nil {
		t.Fatalf("lvs %s/%s: %v: %s", vg, lv, err, stderrOf(err))
	}
	return strings.TrimSpace(string(out))
}

// wantReadOnlyBlank checks a read-only mount of a new filesystem: creating a file is EROFS.
func wantReadOnlyBlank(t *testing.T, dir string) {
	t.Helper()
	if m := mountAt(t, dir); m == nil || !m.readOnly() {
		t.Errorf("%s: mount %+v, want read-only", dir, m)
	}
	if err := os.WriteFile(filepath.Join(dir, "new"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("creating a file in read-only %s: %v, want EROFS", dir, err)
	}
}

// 11. Requests that used to make a device that could never come up (issue 12,
// item 1): read-only inline volumes (readonly and SINGLE_NODE_READER_ONLY) are
// formatted, then mounted read-only; xfs below mkfs.xfs's minimum is rounded
// up (inline, and CreateVolume without a limit) or refused before any LV
// exists (a limit below it); a publish that fails after the LV exists keeps
// that LV for the retry (same lv_uuid) with a one-line error.
func testNeverUp(t *testing.T, s *suite) {
	sc := s.scenario(t, "s11")
	d := sc.driver()
	cap0 := d.capacity()

	roMode := mountCap("", csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY)
	for _, tc := range []struct {
		vol      string
		c        *csi.VolumeCapability
		readOnly bool
		attrs    map[string]string
		fsType   string
		size     int64
	}{
		{"ro-flag", mountCap("", rwo), true, map[string]string{"size": "64Mi"}, "ext4", 64 * mib},
		{"ro-mode", roMode, false, map[string]string{"size": "64Mi"}, "ext4", 64 * mib},
		{"xfs-small", mountCap("", rwo), false, map[string]string{"size": "100Mi", "fsType": "xfs"}, "xfs", xfsMin},
	} {
		id, target := sc.inlineID(tc.vol), sc.target(tc.vol)
		for i := 0; i < 2; i++ {
			wantOK(t, d.publishReq(id, "", target, tc.c, tc.readOnly, inlineCtx(tc.attrs)), "inline NodePublishVolume "+tc.vol)
		}
		lv := lvNamed(t, s.vg, id)
		if lv == nil || lv.Size != tc.size {
			t.Fatalf("%s: LV %+v, want %d bytes", tc.vol, lv, tc.size)
		}
		wantMountOf(t, target, s.devPath(lv.Name), tc.fsType)
		if tc.readOnly || tc.c == roMode {
			wantReadOnlyBlank(t, target)
		}
		d.unpublish(id, target)
		wantNotMounted(t, target)
		if lv := lvNamed(t, s.vg, id); lv != nil {
			t.Errorf("%s: LV %s left after unpublish", tc.vol, lv.Name)
		}
	}

	// A PVC staged read-only (mount flag ro) first: formatted, then mounted read-only.
	rovol := d.create(sc.name("ro"), 64*mib, mountCap("ext4", rwo))
	rostaging := sc.staging("ro")
	roFlag := mountCap("ext4", rwo)
	roFlag.GetMount().MountFlags = []string{"ro"}
	d.stage(rovol.GetVolumeId(), rostaging, roFlag)
	wantMountOf(t, rostaging, s.devPath(rovol.GetVolumeId()), "ext4")
	wantReadOnlyBlank(t, rostaging)
	d.unstage(rovol.GetVolumeId(), rostaging)
	d.delete(rovol.GetVolumeId())

	// CreateVolume 100 MiB xfs: 300 MiB, which stages.
	xfs := mountCap("xfs", rwo)
	vol := d.create(sc.name("xfs"), 100*mib, xfs)
	if vol.GetCapacityBytes() != xfsMin {
		t.Errorf("CreateVolume 100 MiB xfs: %d bytes, want %d", vol.GetCapacityBytes(), xfsMin)
	}
	staging := sc.staging("xfs")
	d.stage(vol.GetVolumeId(), staging, xfs)
	wantMountOf(t, staging, s.devPath(vol.GetVolumeId()), "xfs")
	d.unstage(vol.GetVolumeId(), staging)
	d.delete(vol.GetVolumeId())
	// With a limit below the minimum: OutOfRange, no LV.
	_, err := d.ctrl.CreateVolume(d.ctx(), &csi.CreateVolumeRequest{Name: sc.name("xfs-limit"),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 100 * mib, LimitBytes: 200 * mib}, VolumeCapabilities: []*csi.VolumeCapability{xfs}})
	wantCode(t, err, codes.OutOfRange, "CreateVolume xfs 100-200 MiB")
	if lv := lvNamed(t, s.vg, sc.name("xfs-limit")); lv != nil {
		t.Errorf("refused CreateVolume made LV %s", lv.Name)
	}

	// A mount that fails after the LV exists: the retries find the same LV.
	bad := mountCap("", rwo)
	bad.GetMount().MountFlags = []string{"no-such-option"}
	id, target := sc.inlineID("bad-flag"), sc.target("bad-flag")
	uuid := ""
	for i := 0; i < 3; i++ {
		err := d.publishReq(id, "", target, bad, false, inlineCtx(map[string]string{"size": "16Mi"}))
		if status.Code(err) != codes.Internal {
			t.Fatalf("publish #%d with a bad mount flag: %v, want Internal", i, err)
		}
		if msg := status.Convert(err).Message(); strings.Contains(msg, "\n") || len(msg) > 600 {
			t.Errorf("error message is not one line (%d bytes): %q", len(msg), msg)
		}
		lv := lvNamed(t, s.vg, id)
		if lv == nil {
			t.Fatalf("publish #%d: the failed publish's LV is gone (kubelet's retry would make a new one)", i)
		}
		if u := lvUUID(t, s.vg, lv.Name); uuid == "" {
			uuid = u
		} else if u != uuid {
			t.Fatalf("publish #%d: LV %s was made again (uuid %s, was %s)", i, lv.Name, u, uuid)
		}
	}
	d.unpublish(id, target)
	if lv := lvNamed(t, s.vg, id); lv != nil {
		t.Errorf("LV %s left after unpublishing the failed inline volume", lv.Name)
	}
	if got := d.capacity(); got != cap0 {
		t.Errorf("GetCapacity at the end: %+v, at the start: %+v", got, cap0)
	}
}

// 12. An active LV whose /dev/<vg>/<lv> link is gone (issue 12, item 5):
// staging finds the device through device-mapper, formats and mounts it; the
// data is there after unstage and restage, still without the link.
func testMissingDevLink(t *testing.T, s *suite) {
	sc := s.scenario(t, "s12")
	d := sc.driver()
	c := mountCap("ext4", rwo)
	vol := d.create(sc.name("vol"), 32*mib, c)
	id := vol.GetVolumeId()
	link := s.devPath(id)
	real, err := filepath.EvalSymlinks(link)
	if err != nil {
		t.Fatalf("the LV's link %s: %v", link, err)
	}
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	t.Logf("removed %s (-> %s)", link, real)
	staging, target := sc.staging("vol"), sc.target("vol")
	for i := 0; i < 2; i++ {
		d.stage(id, staging, c)
	}
	wantMountOf(t, staging, real, "ext4")
	d.publish(id, staging, target, c, false)
	data := randomBytes(t, 123457)
	writeSync(t, filepath.Join(target, "d"), data)
	d.unpublish(id, target)
	d.unstage(id, staging)
	d.stage(id, staging, c)
	wantContent(t, filepath.Join(staging, "d"), data)
	d.unstage(id, staging)
	d.delete(id)
	if lv := lvNamed(t, s.vg, sc.name("vol")); lv != nil {
		t.Errorf("LV %s left after delete", lv.Name)
	}
}

// 7. Inline volumes orphaned while the driver runs (issue 12, item 4): a pod
// gone without NodeUnpublishVolume (target unmounted, pod directory removed)
// has its LV removed by the periodic sweep; a mounted one, and a failed
// publish whose pod still exists, stay.
func testPeriodicReclaim(t *testing.T, s *suite) {
	sc := s.scenario(t, "s7reclaim")
	d := sc.start("--inline-cleanup-period=1s")
	cap0 := d.capacity()
	attrs := map[string]string{"size": "16Mi"}
	goneID, goneTarget := sc.inlineID("gone"), sc.podTarget("gone", "v")
	liveID, liveTarget := sc.inlineID("live"), sc.podTarget("live", "v")
	for _, v := range [][2]string{{goneID, goneTarget}, {liveID, liveTarget}} {
		wantOK(t, d.publishInline(v[0], v[1], attrs), "inline NodePublishVolume")
	}
	failID, failTarget := sc.inlineID("fail"), sc.podTarget("fail", "v")
	bad := mountCap("", rwo)
	bad.GetMount().MountFlags = []string{"no-such-option"}
	if err := d.publishReq(failID, "", failTarget, bad, false, inlineCtx(attrs)); status.Code(err) != codes.Internal {
		t.Fatalf("publish with a bad mount flag: %v", err)
	}
	gone := lvNamed(t, s.vg, goneID)
	if gone == nil || lvNamed(t, s.vg, failID) == nil {
		t.Fatal("inline LVs missing after publish")
	}
	// kubelet forgot the pod: its target is unmounted and its directory removed.
	if err := unix.Unmount(goneTarget, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(s.kubelet, "pods", sc.tag+"-gone")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for lvNamed(t, s.vg, goneID) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("orphaned inline LV %s not removed within 60 s while running:\n%s", gone.Name, d.proc.Tail(40))
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("orphan %s removed while running", gone.Name)
	time.Sleep(3 * time.Second) // more sweeps
	live := lvNamed(t, s.vg, liveID)
	if live == nil {
		t.Fatal("the mounted inline LV was removed")
	}
	wantMountOf(t, liveTarget, s.devPath(live.Name), "ext4")
	if lvNamed(t, s.vg, failID) == nil {
		t.Fatal("the failed publish's LV was removed while its pod exists")
	}
	if !strings.Contains(d.log(), gone.Name) {
		t.Errorf("the log does not name the reclaimed %s", gone.Name)
	}
	d.unpublish(liveID, liveTarget)
	d.unpublish(failID, failTarget)
	if got := d.capacity(); got != cap0 {
		t.Errorf("GetCapacity at the end: %+v, at the start: %+v", got, cap0)
	}
}
