package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

// TestNodePath runs the scenarios in order, then the leak audit.
func TestNodePath(t *testing.T) {
	requireEnv(t)
	s := &suite{vg: e2eVG, extent: e2eExtent, kubelet: filepath.Join(t.TempDir(), "kubelet")}
	for _, d := range []string{"pods", "plugins"} {
		if err := os.MkdirAll(filepath.Join(s.kubelet, d), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	if left := carveLVs(t, s.vg); len(left) > 0 {
		t.Fatalf("volume group %s already holds carve LVs %v: it must be dedicated to this test", s.vg, left)
	}
	// Registered after t.TempDir, so it runs before the directory is removed:
	// whatever the scenarios left must not block that removal or the next run.
	t.Cleanup(func() { s.scrubAll(t) })
	free, size := vgFree(t, s.vg)
	t.Logf("volume group %s: %s, %s free, extent %s; kubelet dir %s", s.vg, human(size), human(free), human(s.extent), s.kubelet)

	s.shared = startDriver(t, s)
	scenarios := []struct {
		name string
		f    func(*testing.T, *suite)
	}{
		{"1-stage-publish-ext4", func(t *testing.T, s *suite) { testStagePublish(t, s, "ext4", 64*mib) }},
		{"1-stage-publish-xfs", func(t *testing.T, s *suite) { testStagePublish(t, s, "xfs", 512*mib) }},
		{"2-raw-block", testRawBlock},
		{"3-read-only", testReadOnly},
		{"4-volume-stats", testStats},
		{"5-expand-ext4", func(t *testing.T, s *suite) { testExpand(t, s, "ext4", 64*mib, 192*mib) }},
		{"5-expand-xfs", func(t *testing.T, s *suite) { testExpand(t, s, "xfs", 512*mib, 768*mib) }},
		{"6-inline", testInline},
		{"6-inline-bad-attributes", testInlineBadAttributes},
		{"8-full-pool", testFullPool},
		{"10-delete-while-staged", testDeleteWhileStaged},
		{"11-never-up", testNeverUp},
		{"12-missing-dev-link", testMissingDevLink},
		// These kill and start drivers of their own: the shared one goes first.
		{"7-restart-keeps-published", testRestart},
		{"7-restart-removes-orphans", testRestartOrphans},
		{"7-periodic-reclaim", testPeriodicReclaim},
		{"9-leak-audit", s.audit},
	}
	for _, sc := range scenarios {
		if strings.HasPrefix(sc.name, "7-") && s.shared != nil {
			s.shared.proc.Stop(syscall.SIGTERM)
			s.shared = nil
		}
		start := time.Now()
		run(t, sc.name, func(t *testing.T) { sc.f(t, s) })
		t.Logf("scenario %s took %v", sc.name, time.Since(start).Round(time.Millisecond))
	}
}

// audit fails if any carve LV is left in the VG or any mount under the
// kubelet directory: every scenario must clean up through the driver.
func (s *suite) audit(t *testing.T, _ *suite) {
	for _, lv := range carveLVs(t, s.vg) {
		t.Errorf("leak: carve LV %s/%s (name %q, tags %s) is left", s.vg, lv.Name, lv.CSIName, lv.RawTags)
	}
	for _, m := range mountsUnder(t, s.kubelet) {
		t.Errorf("leak: %s is still mounted (%s from %s)", m.Point, m.FSType, m.Source)
	}
	if !t.Failed() {
		t.Logf("no carve LV left in %s, no mount left under %s", s.vg, s.kubelet)
	}
}

// scrubAll removes every mount under the kubelet dir and every carve LV, after
// the audit (or a set-up failure) has reported them.
func (s *suite) scrubAll(t *testing.T) {
	for _, m := range mountsUnder(t, s.kubelet) {
		t.Logf("final clean-up: unmounting %s", m.Point)
		if err := unix.Unmount(m.Point, unix.MNT_DETACH); err != nil {
			t.Errorf("final clean-up: umount %s: %v", m.Point, err)
		}
	}
	for _, lv := range carveLVs(t, s.vg) {
		t.Logf("final clean-up: removing LV %s", lv.Name)
		removeLV(t, s.vg, lv.Name)
	}
}

// 1. Stage, publish, write, read back, unpublish, unstage, with every call
// repeated (idempotency), and the data still there after a second staging.
func testStagePublish(t *testing.T, s *suite, fsType string, size int64) {
	sc := s.scenario(t, "s1"+fsType)
	d := sc.driver()
	c := mountCap(fsType, rwo)
	name := sc.name("vol")

	vol := d.create(name, size, c)
	again := d.create(name, size, c)
	if again.GetVolumeId() != vol.GetVolumeId() || again.GetCapacityBytes() != vol.GetCapacityBytes() {
		t.Fatalf("repeated CreateVolume returned %s/%d, first %s/%d", again.GetVolumeId(), again.GetCapacityBytes(), vol.GetVolumeId(), vol.GetCapacityBytes())
	}
	id := vol.GetVolumeId()
	lv := lvNamed(t, s.vg, name)
	if lv == nil || lv.Name != id || lv.Size != vol.GetCapacityBytes() || !lv.hasTag(ownerTag) || lv.Ephemeral {
		t.Fatalf("LV for %s: %+v, want %s of %d bytes tagged %s", name, lv, id, vol.GetCapacityBytes(), ownerTag)
	}
	dev := s.devPath(id)

	staging, target := sc.staging("vol"), sc.target("vol")
	for i := 0; i < 2; i++ {
		d.stage(id, staging, c)
	}
	wantMountOf(t, staging, dev, fsType)
	for i := 0; i < 2; i++ {
		d.publish(id, staging, target, c, false)
	}
	if m := wantMountOf(t, target, dev, fsType); m.readOnly() {
		t.Errorf("%s is mounted read-only: %v", target, m.Options)
	}

	data := randomBytes(t, int(mib)+123)
	writeSync(t, filepath.Join(target, "data.bin"), data)
	wantContent(t, filepath.Join(target, "data.bin"), data)
	wantContent(t, filepath.Join(staging, "data.bin"), data) // the same filesystem

	for i := 0; i < 2; i++ {
		d.unpublish(id, target)
	}
	wantNotMounted(t, target)
	wantGone(t, target)
	wantMountOf(t, staging, dev, fsType)
	for i := 0; i < 2; i++ {
		d.unstage(id, staging)
	}
	wantNotMounted(t, staging)

	// Staged again, the filesystem is not reformatted and the data came from the LV.
	d.stage(id, staging, c)
	d.publish(id, staging, target, c, false)
	wantContent(t, filepath.Join(target, "data.bin"), data)
	d.unpublish(id, target)
	d.unstage(id, staging)
	wantNotMounted(t, target)
	wantNotMounted(t, staging)

	for i := 0; i < 2; i++ {
		d.delete(id)
	}
	if lv := lvNamed(t, s.vg, name); lv != nil {
		t.Errorf("LV %s still exists after DeleteVolume", lv.Name)
	}
}

// 2. Raw block: stage is a no-op, publish binds the device node onto a file.
func testRawBlock(t *testing.T, s *suite) {
	sc := s.scenario(t, "s2")
	d := sc.driver()
	c := blockCap(rwo)
	name := sc.name("blk")
	vol := d.create(name, 16*mib, c)
	id, dev := vol.GetVolumeId(), s.devPath(vol.GetVolumeId())

	staging, target := sc.blockStaging("blk"), sc.blockTarget("blk")
	for i := 0; i < 2; i++ {
		d.stage(id, staging, c)
	}
	wantNotMounted(t, staging)
	for i := 0; i < 2; i++ {
		d.publish(id, staging, target, c, false)
	}
	maj, min := devNum(t, dev)
	tmaj, tmin := devNum(t, target)
	if tmaj != maj || tmin != min {
		t.Fatalf("%s is block device %d:%d, want %s = %d:%d", target, tmaj, tmin, dev, maj, min)
	}
	if m := mountAt(t, target); m == nil {
		t.Fatalf("%s is not in /proc/self/mountinfo", target)
	}

	// Through the published file to the LV, and back the other way.
	data := randomBytes(t, int(mib))
	directWrite(t, target, 0, data)
	if got := directRead(t, dev, 0, len(data)); string(got) != string(data) {
		t.Fatalf("1 MiB written through %s reads back differently from %s (first difference at %d)", target, dev, firstDiff(got, data))
	}
	data2 := randomBytes(t, int(mib))
	directWrite(t, dev, 8*mib, data2)
	if got := directRead(t, target, 8*mib, len(data2)); string(got) != string(data2) {
		t.Fatalf("1 MiB written to %s reads back differently through %s (first difference at %d)", dev, target, firstDiff(got, data2))
	}

	u := d.stats(id, target)
	if u.bytes.GetTotal() != vol.GetCapacityBytes() || u.inodes != nil {
		t.Errorf("NodeGetVolumeStats of the block target: total %d bytes, inodes %v; want total %d and no inodes", u.bytes.GetTotal(), u.inodes, vol.GetCapacityBytes())
	}

	for i := 0; i < 2; i++ {
		d.unpublish(id, target)
	}
	wantNotMounted(t, target)
	wantGone(t, target)
	for i := 0; i < 2; i++ {
		d.unstage(id, staging)
	}
	d.delete(id)
	if lv := lvNamed(t, s.vg, name); lv != nil {
		t.Errorf("LV %s still exists after DeleteVolume", lv.Name)
	}
}

// 3. A read-only publish refuses writes with EROFS; the read-write one and the
// staging mount stay writable.
func testReadOnly(t *testing.T, s *suite) {
	sc := s.scenario(t, "s3")
	d := sc.driver()
	c := mountCap("ext4", rwo)
	name := sc.name("vol")
	vol := d.create(name, 32*mib, c)
	id, dev := vol.GetVolumeId(), s.devPath(vol.GetVolumeId())
	staging, rw, ro, roMode := sc.staging("vol"), sc.target("rw"), sc.target("ro"), sc.target("romode")

	d.stage(id, staging, c)
	d.publish(id, staging, rw, c, false)
	data := []byte("written before the read-only publish\n")
	writeSync(t, filepath.Join(rw, "f"), data)

	for i := 0; i < 2; i++ {
		d.publish(id, staging, ro, c, true)
	}
	if m := wantMountOf(t, ro, dev, "ext4"); !m.readOnly() {
		t.Errorf("%s: mount options %v lack ro", ro, m.Options)
	}
	wantContent(t, filepath.Join(ro, "f"), data)
	wantEROFS(t, ro)

	// The same target asked read-write now is incompatible.
	err := d.publishReq(id, staging, ro, c, false, nil)
	wantCode(t, err, codes.AlreadyExists, "NodePublishVolume read-write on a read-only published target")

	// SINGLE_NODE_READER_ONLY access mode publishes read-only too.
	d.publish(id, staging, roMode, mountCap("ext4", csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY), false)
	if m := wantMountOf(t, roMode, dev, "ext4"); !m.readOnly() {
		t.Errorf("%s (SINGLE_NODE_READER_ONLY): mount options %v lack ro", roMode, m.Options)
	}
	wantEROFS(t, roMode)

	// Only the binds are read-only: the read-write publish still writes, and
	// the read-only one sees it.
	if m := mountAt(t, rw); m == nil || m.readOnly() {
		t.Errorf("%s: mount %+v, want read-write", rw, m)
	}
	if m := mountAt(t, staging); m == nil || m.readOnly() {
		t.Errorf("%s (staging): mount %+v, want read-write", staging, m)
	}
	more := []byte("written after the read-only publish\n")
	writeSync(t, filepath.Join(rw, "g"), more)
	wantContent(t, filepath.Join(ro, "g"), more)

	for _, target := range []string{ro, roMode, rw} {
		d.unpublish(id, target)
		wantNotMounted(t, target)
		wantGone(t, target)
	}
	d.unstage(id, staging)
	wantNotMounted(t, staging)
	d.delete(id)
}

// wantEROFS checks that creating, writing and removing files under dir fail with EROFS.
func wantEROFS(t *testing.T, dir string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "new"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("creating a file in read-only %s: %v, want EROFS", dir, err)
	}
	if f, err := os.OpenFile(filepath.Join(dir, "f"), os.O_WRONLY|os.O_APPEND, 0); !errors.Is(err, syscall.EROFS) {
		if err == nil {
			f.Close()
		}
		t.Errorf("opening a file for writing in read-only %s: %v, want EROFS", dir, err)
	}
	if err := os.Remove(filepath.Join(dir, "f")); !errors.Is(err, syscall.EROFS) {
		t.Errorf("removing a file in read-only %s: %v, want EROFS", dir, err)
	}
}

// 4. NodeGetVolumeStats: bytes and inodes match statfs, and grow after a write.
func testStats(t *testing.T, s *suite) {
	sc := s.scenario(t, "s4")
	d := sc.driver()
	c := mountCap("ext4", rwo)
	name := sc.name("vol")
	vol := d.create(name, 128*mib, c)
	id := vol.GetVolumeId()
	staging, target := sc.staging("vol"), sc.target("vol")
	d.stage(id, staging, c)
	d.publish(id, staging, target, c, false)

	u0 := d.stats(id, target)
	st := statfs(t, target)
	b0, i0 := u0.bytes, u0.inodes
	if i0 == nil {
		t.Fatalf("NodeGetVolumeStats of a filesystem volume has no INODES usage")
	}
	if b0.GetTotal() != int64(st.Blocks)*st.Frsize || b0.GetAvailable() != int64(st.Bavail)*st.Frsize ||
		b0.GetUsed() != int64(st.Blocks-st.Bfree)*st.Frsize {
		t.Errorf("bytes: total %d available %d used %d; statfs says %d, %d, %d", b0.GetTotal(), b0.GetAvailable(), b0.GetUsed(),
			int64(st.Blocks)*st.Frsize, int64(st.Bavail)*st.Frsize, int64(st.Blocks-st.Bfree)*st.Frsize)
	}
	if i0.GetTotal() != int64(st.Files) || i0.GetAvailable() != int64(st.Ffree) || i0.GetUsed() != int64(st.Files-st.Ffree) {
		t.Errorf("inodes: total %d available %d used %d; statfs says %d, %d, %d", i0.GetTotal(), i0.GetAvailable(), i0.GetUsed(),
			st.Files, st.Ffree, st.Files-st.Ffree)
	}
	if b0.GetTotal() <= vol.GetCapacityBytes()/2 || b0.GetTotal() > vol.GetCapacityBytes() {
		t.Errorf("bytes total %d for a %d-byte volume", b0.GetTotal(), vol.GetCapacityBytes())
	}

	const n = 8 << 20
	writeSync(t, filepath.Join(target, "eight-mib"), randomBytes(t, n))
	u1 := d.stats(id, target)
	b1, i1 := u1.bytes, u1.inodes
	if grown := b1.GetUsed() - b0.GetUsed(); grown < n {
		t.Errorf("used bytes grew by %d after writing %d bytes (%d -> %d)", grown, n, b0.GetUsed(), b1.GetUsed())
	}
	if shrunk := b0.GetAvailable() - b1.GetAvailable(); shrunk < n {
		t.Errorf("available bytes fell by %d after writing %d bytes", shrunk, n)
	}
	if b1.GetTotal() != b0.GetTotal() {
		t.Errorf("total bytes changed from %d to %d by a write", b0.GetTotal(), b1.GetTotal())
	}
	if i1.GetUsed() != i0.GetUsed()+1 {
		t.Errorf("used inodes %d -> %d after creating one file, want +1", i0.GetUsed(), i1.GetUsed())
	}
	t.Logf("stats: %s total, used %s -> %s; inodes used %d -> %d of %d",
		human(b0.GetTotal()), human(b0.GetUsed()), human(b1.GetUsed()), i0.GetUsed(), i1.GetUsed(), i1.GetTotal())

	// The staging path is the same filesystem.
	if us := d.stats(id, staging); us.bytes.GetTotal() != b1.GetTotal() || us.bytes.GetUsed() != b1.GetUsed() {
		t.Errorf("stats at the staging path: %v, at the target: %v", us.bytes, b1)
	}
	// Errors: a path that does not exist, a volume that does not exist.
	_, err := d.node.NodeGetVolumeStats(d.ctx(), &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: filepath.Join(filepath.Dir(target), "nothing")})
	wantCode(t, err, codes.NotFound, "NodeGetVolumeStats of a missing path")
	_, err = d.node.NodeGetVolumeStats(d.ctx(), &csi.NodeGetVolumeStatsRequest{VolumeId: "carve-e2e-nothing-0123456789abcdef", VolumePath: target})
	wantCode(t, err, codes.NotFound, "NodeGetVolumeStats of a missing volume")

	d.unpublish(id, target)
	d.unstage(id, staging)
	wantNotMounted(t, target)
	wantNotMounted(t, staging)
	d.delete(id)
}

// 5. Online expansion: lvextend through ControllerExpandVolume, then the
// filesystem grows through NodeExpandVolume on the published path.
func testExpand(t *testing.T, s *suite, fsType string, size, newSize int64) {
	sc := s.scenario(t, "s5"+fsType)
	d := sc.driver()
	c := mountCap(fsType, rwo)
	name := sc.name("vol")
	vol := d.create(name, size, c)
	id := vol.GetVolumeId()
	staging, target := sc.staging("vol"), sc.target("vol")
	d.stage(id, staging, c)
	d.publish(id, staging, target, c, false)
	data := randomBytes(t, 256<<10)
	writeSync(t, filepath.Join(target, "data.bin"), data)
	total0 := statfsTotal(t, target)

	for i := 0; i < 2; i++ {
		resp, err := d.ctrl.ControllerExpandVolume(d.ctx(), &csi.ControllerExpandVolumeRequest{
			VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: newSize}, VolumeCapability: c,
		})
		wantOK(t, err, "ControllerExpandVolume")
		if resp.GetCapacityBytes() != newSize || !resp.GetNodeExpansionRequired() {
			t.Fatalf("ControllerExpandVolume: capacity %d, node expansion required %v; want %d, true", resp.GetCapacityBytes(), resp.GetNodeExpansionRequired(), newSize)
		}
	}
	if lv := lvNamed(t, s.vg, name); lv == nil || lv.Size != newSize {
		t.Fatalf("LV after ControllerExpandVolume: %+v, want %d bytes", lv, newSize)
	}
	if got := statfsTotal(t, target); got != total0 {
		t.Errorf("the filesystem changed size before NodeExpandVolume: %d -> %d", total0, got)
	}

	var total1 int64
	for i := 0; i < 2; i++ {
		resp, err := d.node.NodeExpandVolume(d.ctx(), &csi.NodeExpandVolumeRequest{
			VolumeId: id, VolumePath: target, StagingTargetPath: staging, VolumeCapability: c,
			CapacityRange: &csi.CapacityRange{RequiredBytes: newSize},
		})
		wantOK(t, err, "NodeExpandVolume")
		if resp.GetCapacityBytes() != newSize {
			t.Errorf("NodeExpandVolume: capacity %d, want %d", resp.GetCapacityBytes(), newSize)
		}
		got := statfsTotal(t, target)
		if i == 1 && got != total1 {
			t.Errorf("repeated NodeExpandVolume changed the filesystem size %d -> %d", total1, got)
		}
		total1 = got
	}
	if grown, want := total1-total0, (newSize-size)*8/10; grown < want || total1 > newSize {
		t.Errorf("%s filesystem: %d -> %d bytes after growing the LV %d -> %d; want growth >= %d and total <= %d",
			fsType, total0, total1, size, newSize, want, newSize)
	}
	t.Logf("%s: statfs total %s -> %s (LV %s -> %s)", fsType, human(total0), human(total1), human(size), human(newSize))
	if u := d.stats(id, target); u.bytes.GetTotal() != total1 {
		t.Errorf("NodeGetVolumeStats total %d after expansion, statfs %d", u.bytes.GetTotal(), total1)
	}
	wantContent(t, filepath.Join(target, "data.bin"), data)
	// The filesystem can allocate more than the whole old volume now.
	f, err := os.Create(filepath.Join(target, "big.bin"))
	wantOK(t, err, "create big.bin")
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		t.Errorf("fallocate %d bytes (the old volume size) after expansion: %v", size, err)
	}
	f.Close()
	if u := d.stats(id, target); u.bytes.GetUsed() < size {
		t.Errorf("used bytes %d after allocating %d", u.bytes.GetUsed(), size)
	}

	_, err = d.node.NodeExpandVolume(d.ctx(), &csi.NodeExpandVolumeRequest{
		VolumeId: id, VolumePath: target, VolumeCapability: c, CapacityRange: &csi.CapacityRange{RequiredBytes: newSize + s.extent},
	})
	wantCode(t, err, codes.OutOfRange, "NodeExpandVolume beyond the LV size")

	d.unpublish(id, target)
	d.unstage(id, staging)
	wantNotMounted(t, target)
	wantNotMounted(t, staging)
	d.delete(id)
}

// 6. Inline ephemeral volumes: created, formatted and mounted by publish,
// removed by unpublish; capacity is exact throughout.
func testInline(t *testing.T, s *suite) {
	sc := s.scenario(t, "s6")
	d := sc.driver()
	cap0 := d.capacity()

	for _, tc := range []struct {
		vol, fsType string
		attrs       map[string]string
		size        int64
	}{
		{"ext4", "ext4", map[string]string{"size": "64Mi"}, 64 * mib},
		{"xfs", "xfs", map[string]string{"size": "512Mi", "fsType": "xfs"}, 512 * mib},
	} {
		volID, target := sc.inlineID(tc.vol), sc.target("inline-"+tc.vol)
		for i := 0; i < 2; i++ {
			wantOK(t, d.publishInline(volID, target, tc.attrs), "inline NodePublishVolume "+tc.vol)
		}
		lv := lvNamed(t, s.vg, volID)
		if lv == nil {
			t.Fatalf("no LV tagged carve.name=%s after the inline publish", b64(volID))
		}
		if !lv.hasTag("carve.ephemeral=true") || !lv.hasTag("carve.target="+b64(target)) || !lv.hasTag(ownerTag) ||
			lv.Target != target || lv.Size != tc.size || !lv.active() {
			t.Fatalf("inline LV %+v: want active, %d bytes, tags %s, carve.ephemeral=true, carve.target=<%s>", lv, tc.size, ownerTag, target)
		}
		wantMountOf(t, target, s.devPath(lv.Name), tc.fsType)
		if got := d.capacity().available; got != cap0.available-tc.size {
			t.Errorf("GetCapacity with the %s inline volume: %d, want %d - %d", tc.vol, got, cap0.available, tc.size)
		}

		data := randomBytes(t, 3*int(mib)+7)
		writeSync(t, filepath.Join(target, "data.bin"), data)
		wantContent(t, filepath.Join(target, "data.bin"), data)
		if u := d.stats(volID, target); u.bytes.GetTotal() != statfsTotal(t, target) || u.inodes == nil {
			t.Errorf("NodeGetVolumeStats of the inline volume: %v", u)
		}

		for i := 0; i < 2; i++ {
			d.unpublish(volID, target)
		}
		wantNotMounted(t, target)
		wantGone(t, target)
		if lv := lvNamed(t, s.vg, volID); lv != nil {
			t.Errorf("inline LV %s still exists after NodeUnpublishVolume", lv.Name)
		}
		if got := d.capacity(); got != cap0 {
			t.Errorf("GetCapacity after the inline volume is gone: %+v, before it: %+v", got, cap0)
		}
	}
}

// 6. Inline attributes a pod author may not set (or gets wrong) are
// InvalidArgument, and nothing is created or mounted.
func testInlineBadAttributes(t *testing.T, s *suite) {
	sc := s.scenario(t, "s6bad")
	d := sc.driver()
	cap0 := d.capacity()
	before := lvNames(carveLVs(t, s.vg))
	for _, attrs := range []map[string]string{
		{"foo": "bar"},
		{"size": "64Mi", "foo": "bar"},
		{"size": "lots"},
		{"size": "-64Mi"},
		{"size": "0"},
		{"fsType": "btrfs"},
		{"pool": "no-such-pool"},
	} {
		volID, target := sc.inlineID("bad"), sc.target("bad")
		err := d.publishInline(volID, target, attrs)
		wantCode(t, err, codes.InvalidArgument, "inline NodePublishVolume with "+formatAttrs(attrs))
		if lv := lvNamed(t, s.vg, volID); lv != nil {
			t.Errorf("attributes %v: LV %s was created", attrs, lv.Name)
		}
		wantNotMounted(t, target)
	}
	// Block access is not offered for inline volumes.
	volID, target := sc.inlineID("block"), sc.target("block")
	err := d.publishReq(volID, "", target, blockCap(rwo), false, inlineCtx(map[string]string{"size": "64Mi"}))
	wantCode(t, err, codes.InvalidArgument, "inline NodePublishVolume with block access")
	if lv := lvNamed(t, s.vg, volID); lv != nil {
		t.Errorf("inline block request: LV %s was created", lv.Name)
	}
	if got := d.capacity(); got != cap0 {
		t.Errorf("GetCapacity after refused inline requests: %+v, before: %+v", got, cap0)
	}
	if after := lvNames(carveLVs(t, s.vg)); after != before {
		t.Errorf("carve LVs changed after only refused requests: before [%s], after [%s]", before, after)
	}
}

func lvNames(lvs []lvInfo) string {
	var names []string
	for _, lv := range lvs {
		names = append(names, lv.Name)
	}
	return strings.Join(names, " ")
}

func formatAttrs(m map[string]string) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ",")
}

// 7. A driver killed between publish and unpublish: the mounts and data stay,
// and a new process finishes the job.
func testRestart(t *testing.T, s *suite) {
	sc := s.scenario(t, "s7")
	d1 := sc.start()
	cap0 := d1.capacity()
	c := mountCap("ext4", rwo)
	name := sc.name("vol")
	vol := d1.create(name, 32*mib, c)
	id := vol.GetVolumeId()
	staging, target := sc.staging("vol"), sc.target("vol")
	d1.stage(id, staging, c)
	d1.publish(id, staging, target, c, false)
	pdata := randomBytes(t, int(mib))
	writeSync(t, filepath.Join(target, "p.bin"), pdata)

	inlineID, itarget := sc.inlineID("inline"), sc.target("inline")
	iattrs := map[string]string{"size": "32Mi"}
	wantOK(t, d1.publishInline(inlineID, itarget, iattrs), "inline NodePublishVolume")
	ilv := lvNamed(t, s.vg, inlineID)
	if ilv == nil {
		t.Fatalf("no inline LV")
	}
	idata := randomBytes(t, int(mib))
	writeSync(t, filepath.Join(itarget, "i.bin"), idata)

	d1.proc.Stop(syscall.SIGKILL)
	t.Logf("carve-csi killed with SIGKILL")

	d2 := sc.start()
	if strings.Contains(d2.log(), "Removing orphaned inline volume") {
		t.Errorf("the new process removed an inline volume that is still mounted:\n%s", d2.proc.Tail(40))
	}
	dev := s.devPath(id)
	wantMountOf(t, staging, dev, "ext4")
	wantMountOf(t, target, dev, "ext4")
	wantMountOf(t, itarget, s.devPath(ilv.Name), "ext4")
	if lv := lvNamed(t, s.vg, inlineID); lv == nil || lv.Name != ilv.Name {
		t.Fatalf("inline LV after the restart: %+v, want %s", lv, ilv.Name)
	}
	wantContent(t, filepath.Join(target, "p.bin"), pdata)
	wantContent(t, filepath.Join(itarget, "i.bin"), idata)

	// The new process sees the same state: repeated calls are idempotent.
	d2.stage(id, staging, c)
	d2.publish(id, staging, target, c, false)
	wantOK(t, d2.publishInline(inlineID, itarget, iattrs), "inline NodePublishVolume repeated after the restart")
	if u := d2.stats(inlineID, itarget); u.bytes.GetTotal() != statfsTotal(t, itarget) {
		t.Errorf("NodeGetVolumeStats of the inline volume after the restart: %v", u.bytes)
	}

	d2.unpublish(id, target)
	d2.unstage(id, staging)
	d2.delete(id)
	d2.unpublish(inlineID, itarget)
	for _, p := range []string{target, staging, itarget} {
		wantNotMounted(t, p)
	}
	wantGone(t, target)
	wantGone(t, itarget)
	for _, n := range []string{name, inlineID} {
		if lv := lvNamed(t, s.vg, n); lv != nil {
			t.Errorf("LV %s (%s) still exists", lv.Name, n)
		}
	}
	if got := d2.capacity(); got != cap0 {
		t.Errorf("GetCapacity at the end: %+v, at the start: %+v", got, cap0)
	}
}

// 7. Inline volumes whose pods went away while the driver was down (target
// unmounted, or unmounted and removed) are deleted by the next start; one
// still mounted is kept.
func testRestartOrphans(t *testing.T, s *suite) {
	sc := s.scenario(t, "s7orphan")
	d1 := sc.start()
	cap0 := d1.capacity()
	type inline struct {
		id, target string
		lv         string
		data       []byte
	}
	var vols []*inline
	for _, n := range []string{"unmounted", "removed", "kept"} {
		v := &inline{id: sc.inlineID(n), target: sc.target(n)}
		wantOK(t, d1.publishInline(v.id, v.target, map[string]string{"size": "16Mi"}), "inline NodePublishVolume "+n)
		lv := lvNamed(t, s.vg, v.id)
		if lv == nil {
			t.Fatalf("no LV for inline volume %s", n)
		}
		v.lv, v.data = lv.Name, randomBytes(t, 64<<10)
		writeSync(t, filepath.Join(v.target, "data"), v.data)
		vols = append(vols, v)
	}
	unmounted, removed, kept := vols[0], vols[1], vols[2]

	d1.proc.Stop(syscall.SIGKILL)
	// Behind the driver's back: kubelet tore two pods down while it was away.
	for _, v := range []*inline{unmounted, removed} {
		if err := unix.Unmount(v.target, 0); err != nil {
			t.Fatalf("umount %s: %v", v.target, err)
		}
	}
	if err := os.Remove(removed.target); err != nil {
		t.Fatal(err)
	}

	d2 := sc.start() // listening means start-up clean-up is done
	log := d2.log()
	for _, v := range []*inline{unmounted, removed} {
		if lv := lvNamed(t, s.vg, v.id); lv != nil {
			t.Errorf("orphaned inline LV %s (target %s) was not removed at start-up", lv.Name, v.target)
		}
		if !strings.Contains(log, v.lv) {
			t.Errorf("the start-up log does not mention the orphan %s", v.lv)
		}
		wantGone(t, v.target)
	}
	if lv := lvNamed(t, s.vg, kept.id); lv == nil || lv.Name != kept.lv {
		t.Fatalf("the still-mounted inline LV %s was removed at start-up:\n%s", kept.lv, d2.proc.Tail(40))
	}
	wantMountOf(t, kept.target, s.devPath(kept.lv), "ext4")
	wantContent(t, filepath.Join(kept.target, "data"), kept.data)
	if got, want := d2.capacity().available, cap0.available-16*mib; got != want {
		t.Errorf("GetCapacity with one inline volume left: %d, want %d", got, want)
	}

	d2.unpublish(kept.id, kept.target)
	wantNotMounted(t, kept.target)
	if lv := lvNamed(t, s.vg, kept.id); lv != nil {
		t.Errorf("inline LV %s still exists after NodeUnpublishVolume", lv.Name)
	}
	if got := d2.capacity(); got != cap0 {
		t.Errorf("GetCapacity at the end: %+v, at the start: %+v", got, cap0)
	}
}

// 8. A full pool: requests that do not fit are ResourceExhausted and leave
// nothing behind; the largest advertised volume does fit, exactly.
func testFullPool(t *testing.T, s *suite) {
	sc := s.scenario(t, "s8")
	d := sc.driver()
	c := mountCap("ext4", rwo)
	cap0 := d.capacity()
	free0, vgSize := vgFree(t, s.vg)
	if cap0.available != free0 || cap0.maximum != free0 || cap0.minimum != s.extent {
		t.Errorf("GetCapacity %+v; vgs free %d, extent %d", cap0, free0, s.extent)
	}

	for _, tc := range []struct {
		name string
		size int64
	}{{"free-plus-one-extent", free0 + s.extent}, {"twice-the-vg", 2 * vgSize}} {
		name := sc.name(tc.name)
		_, err := d.ctrl.CreateVolume(d.ctx(), &csi.CreateVolumeRequest{
			Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: tc.size}, VolumeCapabilities: []*csi.VolumeCapability{c},
		})
		wantCode(t, err, codes.ResourceExhausted, "CreateVolume of "+strconv.FormatInt(tc.size, 10)+" bytes with "+strconv.FormatInt(free0, 10)+" free")
		if lv := lvNamed(t, s.vg, name); lv != nil {
			t.Errorf("CreateVolume %s failed but left LV %s", name, lv.Name)
		}
		if got := d.capacity(); got != cap0 {
			t.Errorf("GetCapacity after a refused CreateVolume: %+v, before: %+v", got, cap0)
		}
		if free, _ := vgFree(t, s.vg); free != free0 {
			t.Errorf("vgs free after a refused CreateVolume: %d, before: %d", free, free0)
		}
	}

	// Exactly the advertised maximum fits; then nothing does.
	allName := sc.name("all")
	resp, err := d.ctrl.CreateVolume(d.ctx(), &csi.CreateVolumeRequest{
		Name: allName, CapacityRange: &csi.CapacityRange{RequiredBytes: cap0.maximum, LimitBytes: cap0.maximum},
		VolumeCapabilities: []*csi.VolumeCapability{c},
	})
	wantOK(t, err, "CreateVolume of the advertised maximum volume size")
	if resp.GetVolume().GetCapacityBytes() != cap0.maximum {
		t.Errorf("CreateVolume of the maximum: %d bytes, want %d", resp.GetVolume().GetCapacityBytes(), cap0.maximum)
	}
	if got := d.capacity(); got.available != 0 || got.maximum != 0 {
		t.Errorf("GetCapacity with the pool full: %+v, want 0 available and maximum", got)
	}
	_, err = d.ctrl.CreateVolume(d.ctx(), &csi.CreateVolumeRequest{
		Name: sc.name("one-more"), CapacityRange: &csi.CapacityRange{RequiredBytes: s.extent}, VolumeCapabilities: []*csi.VolumeCapability{c},
	})
	wantCode(t, err, codes.ResourceExhausted, "CreateVolume of one extent in a full pool")
	if lv := lvNamed(t, s.vg, sc.name("one-more")); lv != nil {
		t.Errorf("CreateVolume in a full pool left LV %s", lv.Name)
	}
	d.delete(resp.GetVolume().GetVolumeId())
	if got := d.capacity(); got != cap0 {
		t.Errorf("GetCapacity after deleting the full-pool volume: %+v, before: %+v", got, cap0)
	}

	// An inline volume too big for the pool.
	volID, target := sc.inlineID("huge"), sc.target("huge")
	err = d.publishInline(volID, target, map[string]string{"size": strconv.FormatInt(free0+s.extent, 10)})
	wantCode(t, err, codes.ResourceExhausted, "inline NodePublishVolume larger than the pool's free space")
	if lv := lvNamed(t, s.vg, volID); lv != nil {
		t.Errorf("the refused inline publish left LV %s", lv.Name)
	}
	wantNotMounted(t, target)
	if _, err := os.Lstat(target); err == nil {
		t.Errorf("the refused inline publish left its target %s", target)
	}
	if got := d.capacity(); got != cap0 {
		t.Errorf("GetCapacity after the refused inline publish: %+v, before: %+v", got, cap0)
	}
	if free, _ := vgFree(t, s.vg); free != free0 {
		t.Errorf("vgs free after the refused inline publish: %d, before: %d", free, free0)
	}
}

// 10. DeleteVolume of a staged volume fails with FailedPrecondition (lvremove
// refuses an LV whose filesystem is mounted) and leaves the data alone; after
// unstaging, it succeeds.
func testDeleteWhileStaged(t *testing.T, s *suite) {
	sc := s.scenario(t, "s10")
	d := sc.driver()
	c := mountCap("ext4", rwo)
	name := sc.name("busy")
	vol := d.create(name, 32*mib, c)
	id, staging := vol.GetVolumeId(), sc.staging("busy")
	d.stage(id, staging, c)
	_, err := d.ctrl.DeleteVolume(d.ctx(), &csi.DeleteVolumeRequest{VolumeId: id})
	wantCode(t, err, codes.FailedPrecondition, "DeleteVolume of a staged volume")
	if lv := lvNamed(t, s.vg, name); lv == nil {
		t.Fatalf("LV of %s gone after a refused DeleteVolume", name)
	}
	d.unstage(id, staging)
	d.delete(id)
	if lv := lvNamed(t, s.vg, name); lv != nil {
		t.Errorf("LV %s still exists after DeleteVolume", lv.Name)
	}
}
