package cluster

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	carvev1 "github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
)

// The snapshot API (external-snapshotter's CRDs, which hack/cluster.sh
// installs with snapshot-controller): read and written as unstructured
// objects, so carve's module needs no snapshot client.
var (
	volumeSnapshotGVK        = schema.GroupVersionKind{Group: "snapshot.storage.k8s.io", Version: "v1", Kind: "VolumeSnapshot"}
	volumeSnapshotContentGVK = schema.GroupVersionKind{Group: "snapshot.storage.k8s.io", Version: "v1", Kind: "VolumeSnapshotContent"}
)

const (
	cacheBytes   = 20 * MiB         // what the writer pod puts into its volume
	snapReady    = 6 * time.Minute  // VolumeSnapshot readyToUse after its creation
	restoreStart = 16 * time.Minute // three pods started at once, each with a volume made from the snapshot
	restores     = 3                // pods restoring the snapshot
	cacheSize    = 64 * MiB         // the source claim and each restored volume
	thinFigures  = 2 * time.Second  // poll interval for capacity
	snapGone     = 6 * time.Minute  // VolumeSnapshot, its content, LocalSnapshot and LV after the delete
	writerDone   = podStart         // the writer pod: started, 20 MiB written, exited
	cacheLineFmt = "carve-cache %s" // the line the writer repeats (yes), token in it
)

// cacheContent is what the writer script leaves in /data/cache: the line
// repeated (busybox yes adds the newline) and cut at cacheBytes.
func cacheContent(token string) []byte {
	line := fmt.Sprintf(cacheLineFmt, token) + "\n"
	return bytes.Repeat([]byte(line), int(cacheBytes)/len(line)+1)[:cacheBytes]
}

// cacheSum is the md5 of cacheContent, computed here, not in the pod.
func cacheSum(token string) string {
	sum := md5.Sum(cacheContent(token))
	return hex.EncodeToString(sum[:])
}

// writeCacheScript fills /data/cache with cacheBytes of the token's line,
// syncs, and reports its size and md5 as the pod sees it.
func writeCacheScript(token string) string {
	return fmt.Sprintf(`set -e
yes '`+cacheLineFmt+`' | head -c %d > /data/cache
sync
{
echo "bytes=$(wc -c < /data/cache)"
echo "sum=$(md5sum /data/cache | cut -d' ' -f1)"
} > /dev/termination-log`, token, cacheBytes)
}

// readCacheScript reports the size and md5 of /data/cache, the filesystem
// type, and, after writing a file of its own (a restored volume is writable),
// the files the volume holds: a reader sharing its volume with another would
// see the other's file.
func readCacheScript(reader string) string {
	return `set -e
sum=$(md5sum /data/cache | cut -d' ' -f1)
echo ` + reader + ` > /data/` + reader + `
sync
{
echo "bytes=$(wc -c < /data/cache)"
echo "sum=$sum"
echo "fstype=$(awk '$2=="/data"{print $3}' /proc/mounts)"
echo "files=$(ls /data | grep -v '^lost+found$' | tr '\n' ' ')"
} > /dev/termination-log`
}

// thinCapacity is what carve publishes for its lvm-thin pool on the node:
// the CSIStorageCapacity of the pool's class and the NodeStorage pool.
type thinCapacity struct {
	CSICapacity, CSIMaxVolume int64 // CSIStorageCapacity of the class
	NodeFree, NodeMax         int64 // NodeStorage pool freeBytes, maxVolumeBytes
	// Real use of the thin pool (NodeStorage thin: lvm's data_percent of
	// dataBytes, virtual bytes of every thin LV). Not compared: written
	// blocks are not given back before the volumes are deleted.
	DataBytes                    int64
	DataPercent, MetadataPercent string
	VirtualBytes                 int64
}

// figures are the published capacity figures that must come back exactly.
func (c thinCapacity) figures() [4]int64 {
	return [4]int64{c.CSICapacity, c.CSIMaxVolume, c.NodeFree, c.NodeMax}
}

func (c thinCapacity) String() string {
	return fmt.Sprintf("CSIStorageCapacity %s (max volume %s), NodeStorage free %s (max volume %s); thin pool data %s at %s%%, metadata %s%%, virtual %s",
		Size(c.CSICapacity), Size(c.CSIMaxVolume), Size(c.NodeFree), Size(c.NodeMax),
		Size(c.DataBytes), c.DataPercent, c.MetadataPercent, Size(c.VirtualBytes))
}

// thinPool is the pool name the thin class asks for (its "pool" parameter).
func (s *suite) thinPool(ctx context.Context) (string, error) {
	sc, err := s.CS.StorageV1().StorageClasses().Get(ctx, s.ThinStorageClass, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("StorageClass %s: %w", s.ThinStorageClass, err)
	}
	if sc.Parameters["pool"] == "" {
		return "", fmt.Errorf("StorageClass %s names no pool (parameters %v)", s.ThinStorageClass, sc.Parameters)
	}
	return sc.Parameters["pool"], nil
}

// readThinCapacity reads the class's CSIStorageCapacity for the node and the
// NodeStorage's entry for pool.
func (s *suite) readThinCapacity(ctx context.Context, pool string) (thinCapacity, error) {
	var c thinCapacity
	rows, err := s.CapacityTable(ctx)
	if err != nil {
		return c, err
	}
	found := 0
	for _, r := range rows {
		if r.StorageClass == s.ThinStorageClass && r.Node == s.Node {
			c.CSICapacity, c.CSIMaxVolume = r.Capacity, r.MaxVolume
			found++
		}
	}
	if found != 1 {
		return c, fmt.Errorf("%d CSIStorageCapacity objects for class %s and node %s, want 1", found, s.ThinStorageClass, s.Node)
	}
	var ns carvev1.NodeStorage
	if err := s.C.Get(ctx, client.ObjectKey{Name: s.Node}, &ns); err != nil {
		return c, fmt.Errorf("NodeStorage %s: %w", s.Node, err)
	}
	for _, p := range ns.Status.Pools {
		if p.Name != pool {
			continue
		}
		if p.Type != "lvm-thin" || p.Thin == nil {
			return c, fmt.Errorf("NodeStorage %s pool %s: type %q, thin status %v; want lvm-thin", s.Node, pool, p.Type, p.Thin)
		}
		c.NodeFree, c.NodeMax = p.FreeBytes, p.MaxVolumeBytes
		c.DataBytes, c.DataPercent, c.MetadataPercent, c.VirtualBytes = p.Thin.DataBytes, p.Thin.DataPercent, p.Thin.MetadataPercent, p.Thin.VirtualBytes
		return c, nil
	}
	return c, fmt.Errorf("NodeStorage %s has no pool %s", s.Node, pool)
}

// waitThinCapacity waits until the published figures match ok.
func (s *suite) waitThinCapacity(ctx context.Context, pool string, timeout time.Duration, ok func(thinCapacity) bool) (thinCapacity, error) {
	var last thinCapacity
	var lastErr error
	err := Poll(ctx, timeout, thinFigures, func(ctx context.Context) (bool, error) {
		last, lastErr = s.readThinCapacity(ctx, pool)
		return lastErr == nil && ok(last), nil
	})
	if err != nil && lastErr != nil {
		err = fmt.Errorf("%w (last read: %v)", err, lastErr)
	}
	return last, err
}

// runPod starts a pod whose only container runs script with vol at /data and
// exits, waits until it succeeded and returns its termination message parsed.
// The pod stays (holding its volume) until the scenario deletes it.
func (s *suite) runPod(ctx context.Context, t *testing.T, name string, vol corev1.VolumeSource, script string, timeout time.Duration) (*corev1.Pod, map[string]string, error) {
	t.Helper()
	pod := s.NewPod(s.ns, PodOpts{Name: name, Volume: vol})
	pod.Spec.Containers[0].Name = "check"
	pod.Spec.Containers[0].Command = []string{"sh", "-c", script}
	if _, err := s.CS.CoreV1().Pods(s.ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return nil, nil, fmt.Errorf("create pod %s: %w", name, err)
	}
	t.Cleanup(func() {
		zero := int64(0)
		_ = s.CS.CoreV1().Pods(s.ns).Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	})
	var got *corev1.Pod
	err := Poll(ctx, timeout, time.Second, func(ctx context.Context) (bool, error) {
		p, err := s.CS.CoreV1().Pods(s.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		got = p
		switch p.Status.Phase {
		case corev1.PodFailed:
			return false, fmt.Errorf("%w: phase %s", ErrPodFailed, p.Status.Phase)
		case corev1.PodSucceeded:
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return got, nil, fmt.Errorf("pod %s/%s did not succeed within %v: %w\n%s", s.ns, name, timeout, err, s.Describe(ctx, s.ns, name))
	}
	for _, st := range got.Status.ContainerStatuses {
		if st.Name == "check" && st.State.Terminated != nil {
			return got, ParseKV(st.State.Terminated.Message), nil
		}
	}
	return got, nil, fmt.Errorf("pod %s succeeded without a terminated check container", name)
}

// volumeSnapshot is what the scenario reads from a VolumeSnapshot.
type volumeSnapshot struct {
	Ready       bool
	Content     string // status.boundVolumeSnapshotContentName
	RestoreSize string
	Error       string
}

func (s *suite) getVolumeSnapshot(ctx context.Context, name string) (volumeSnapshot, error) {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(volumeSnapshotGVK)
	if err := s.C.Get(ctx, client.ObjectKey{Namespace: s.ns, Name: name}, u); err != nil {
		return volumeSnapshot{}, err
	}
	var v volumeSnapshot
	v.Ready, _, _ = unstructured.NestedBool(u.Object, "status", "readyToUse")
	v.Content, _, _ = unstructured.NestedString(u.Object, "status", "boundVolumeSnapshotContentName")
	v.RestoreSize, _, _ = unstructured.NestedString(u.Object, "status", "restoreSize")
	v.Error, _, _ = unstructured.NestedString(u.Object, "status", "error", "message")
	return v, nil
}

// snapshotHandle is the CSI snapshot id a VolumeSnapshotContent carries.
func (s *suite) snapshotHandle(ctx context.Context, content string) (string, error) {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(volumeSnapshotContentGVK)
	if err := s.C.Get(ctx, client.ObjectKey{Name: content}, u); err != nil {
		return "", fmt.Errorf("VolumeSnapshotContent %s: %w", content, err)
	}
	h, _, _ := unstructured.NestedString(u.Object, "status", "snapshotHandle")
	if h == "" {
		return "", fmt.Errorf("VolumeSnapshotContent %s has no status.snapshotHandle", content)
	}
	return h, nil
}

// snapshotRestore is issue 14's story with real pods: a pod fills a cache
// (20 MiB of a known pattern) into a carve-thin PVC, a VolumeSnapshot of it
// becomes readyToUse, three pods at once each get a generic ephemeral volume
// whose dataSource is that snapshot and find the cache with the checksum
// computed here (each a writable thin snapshot of its own, in the source's
// pool on the source's node); the thin pool's published capacity drops by
// exactly the virtual sizes given out (claim, snapshot, three volumes), and
// deleting the pods, the snapshot and the PVC brings it back to the starting
// figures with no carve LV left in the thin VG, no LocalSnapshot, no
// VolumeSnapshotContent.
func (s *suite) snapshotRestore(ctx context.Context, t *testing.T) {
	if s.ThinVG == "" || s.ThinStorageClass == "" || s.SnapshotClass == "" {
		t.Fatalf("CARVE_THIN_VG, CARVE_THIN_STORAGECLASS and CARVE_SNAPSHOTCLASS must be set (hack/cluster.sh sets them): %q %q %q",
			s.ThinVG, s.ThinStorageClass, s.SnapshotClass)
	}
	pool, err := s.thinPool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before, err := s.waitThinCapacity(ctx, pool, capacityBack, func(c thinCapacity) bool { return c.CSICapacity > 0 })
	if err != nil {
		t.Fatalf("no capacity published for class %s, pool %s on %s: %v (last %v)", s.ThinStorageClass, pool, s.Node, err, before)
	}
	if lvs, err := s.LVsIn(ctx, s.ThinVG); err != nil || len(lvs) != 0 {
		t.Fatalf("carve LVs in %s before the scenario: %v (%v)", s.ThinVG, lvs, err)
	}
	t.Logf("pool %s (VG %s, class %s, snapshot class %s) before: %v", pool, s.ThinVG, s.ThinStorageClass, s.SnapshotClass, before)

	// 1. The cache, written by a pod into a PVC of the thin class.
	token := strconv.FormatInt(time.Now().UnixNano(), 36)
	want := cacheSum(token)
	const claim = "cache"
	s.createClaim(ctx, t, claim, s.ClaimSpec(s.ThinStorageClass, cacheSize, "", corev1.ReadWriteOnce))
	src := corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}
	start := time.Now()
	writer, m, err := s.runPod(ctx, t, "cache-writer", src, writeCacheScript(token), writerDone)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("writer done after %.0fs: %v", time.Since(start).Seconds(), m)
	t.Log(s.Timeline(ctx, writer))
	if m["bytes"] != strconv.FormatInt(cacheBytes, 10) || m["sum"] != want {
		t.Fatalf("the writer reports %s bytes with md5 %s, want %d bytes with md5 %s", m["bytes"], m["sum"], cacheBytes, want)
	}
	srcVol, err := s.BoundVolumeIn(ctx, s.ns, claim, s.ThinVG)
	if err != nil {
		t.Fatal(err)
	}
	if srcVol.SizeBytes != cacheSize {
		t.Errorf("source LV %s/%s is %d bytes, the claim asked for %d", s.ThinVG, srcVol.LV, srcVol.SizeBytes, cacheSize)
	}

	// 2. The VolumeSnapshot, readyToUse.
	const snap = "cache-snap"
	vs := &unstructured.Unstructured{}
	vs.SetGroupVersionKind(volumeSnapshotGVK)
	vs.SetNamespace(s.ns)
	vs.SetName(snap)
	_ = unstructured.SetNestedField(vs.Object, s.SnapshotClass, "spec", "volumeSnapshotClassName")
	_ = unstructured.SetNestedField(vs.Object, claim, "spec", "source", "persistentVolumeClaimName")
	start = time.Now()
	if err := s.C.Create(ctx, vs); err != nil {
		t.Fatalf("create VolumeSnapshot %s: %v", snap, err)
	}
	t.Cleanup(func() { _ = s.C.Delete(context.WithoutCancel(ctx), vs) })
	var got volumeSnapshot
	if err := Poll(ctx, snapReady, time.Second, func(ctx context.Context) (bool, error) {
		got, err = s.getVolumeSnapshot(ctx, snap)
		return err == nil && got.Ready, nil
	}); err != nil {
		t.Fatalf("VolumeSnapshot %s not readyToUse after %v: %+v (err %v)\nevents:\n%s", snap, snapReady, got, err, s.PodEvents(ctx, s.ns, snap))
	}
	handle, err := s.snapshotHandle(ctx, got.Content)
	if err != nil {
		t.Fatal(err)
	}
	var lsnap carvev1.LocalSnapshot
	if err := s.C.Get(ctx, client.ObjectKey{Name: handle}, &lsnap); err != nil {
		t.Fatalf("LocalSnapshot %s: %v", handle, err)
	}
	if lsnap.Spec.NodeName != s.Node || lsnap.Spec.Pool != pool || lsnap.Spec.SourceVolumeID != srcVol.LocalVolume || lsnap.Status.Phase != carvev1.PhaseReady {
		t.Errorf("LocalSnapshot %s: node %q pool %q source %q phase %q; want %q %q %q Ready", handle,
			lsnap.Spec.NodeName, lsnap.Spec.Pool, lsnap.Spec.SourceVolumeID, lsnap.Status.Phase, s.Node, pool, srcVol.LocalVolume)
	}
	if q, err := resource.ParseQuantity(got.RestoreSize); err != nil || q.Value() != cacheSize {
		t.Errorf("VolumeSnapshot %s restoreSize %q, want %s", snap, got.RestoreSize, Size(cacheSize))
	}
	snapLV := ""
	if lvs, err := s.LVsIn(ctx, s.ThinVG); err != nil {
		t.Fatal(err)
	} else {
		for _, l := range lvs {
			if l.Tags.Source == srcVol.LocalVolume && l.Name != srcVol.LV {
				snapLV = l.Name
			}
		}
	}
	if snapLV == "" {
		t.Errorf("no LV in %s tagged carve.source=%s besides the source", s.ThinVG, srcVol.LocalVolume)
	}
	t.Logf("VolumeSnapshot %s readyToUse after %.0fs: content %s, handle %s, LV %s/%s, restoreSize %s",
		snap, time.Since(start).Seconds(), got.Content, handle, s.ThinVG, snapLV, got.RestoreSize)

	// 3. Three pods at once, each restoring the snapshot into a generic ephemeral volume.
	apiGroup := "snapshot.storage.k8s.io"
	restore := s.EphemeralVolume(s.ThinStorageClass, cacheSize, "")
	restore.Ephemeral.VolumeClaimTemplate.Spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: &apiGroup, Kind: "VolumeSnapshot", Name: snap}
	type result struct {
		pod *corev1.Pod
		m   map[string]string
		err error
	}
	reads := make([]result, restores)
	start = time.Now()
	var wg sync.WaitGroup
	for i := range restores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("cache-reader-%d", i+1)
			p, m, err := s.runPod(ctx, t, name, restore, readCacheScript(name), restoreStart)
			reads[i] = result{p, m, err}
		}()
	}
	wg.Wait()
	t.Logf("%d restoring pods done after %.0fs", restores, time.Since(start).Seconds())
	var restored []Volume
	for i, r := range reads {
		name := fmt.Sprintf("cache-reader-%d", i+1)
		if r.err != nil {
			t.Error(r.err)
			continue
		}
		if i == 0 {
			t.Log(s.Timeline(ctx, r.pod))
		}
		if r.m["bytes"] != strconv.FormatInt(cacheBytes, 10) || r.m["sum"] != want {
			t.Errorf("%s read %s bytes with md5 %s from its volume, want %d bytes with md5 %s (report %v)", name, r.m["bytes"], r.m["sum"], cacheBytes, want, r.m)
		}
		if files := strings.TrimSpace(r.m["files"]); files != "cache "+name {
			t.Errorf("%s sees files %q in its volume, want only the cache and its own (%q)", name, files, "cache "+name)
		}
		v, err := s.BoundVolumeIn(ctx, s.ns, name+"-vol", s.ThinVG)
		if err != nil {
			t.Error(err)
			continue
		}
		if v.Source != handle || v.SizeBytes != cacheSize {
			t.Errorf("%s's LV %s/%s: carve.source %q, %d bytes; want the snapshot %q and %d bytes", name, s.ThinVG, v.LV, v.Source, v.SizeBytes, handle, cacheSize)
		}
		t.Logf("%s: %s on %s, LV %s/%s from %s, md5 %s", name, r.m["fstype"], r.pod.Spec.NodeName, s.ThinVG, v.LV, v.Source, r.m["sum"])
		restored = append(restored, v)
	}

	// 4. Capacity with everything in place: the claim, the snapshot (it
	// counts its source's size) and three volumes of the source's size.
	given := int64(2+restores) * cacheSize
	during, err := s.waitThinCapacity(ctx, pool, capacityBack, func(c thinCapacity) bool {
		return c.CSICapacity == before.CSICapacity-given && c.NodeFree == before.NodeFree-given
	})
	if err != nil {
		t.Errorf("capacity of pool %s not down by %s (claim, snapshot, %d restored volumes) within %v: %v; before %v",
			pool, Size(given), restores, capacityBack, during, before)
	} else {
		t.Logf("with the claim, the snapshot and %d restored volumes (%s promised): %v", restores, Size(given), during)
	}

	// 5. Everything deleted at once: the pods (their ephemeral claims go with
	// them), the snapshot and the source claim.
	start = time.Now()
	zero := int64(0)
	for _, name := range []string{"cache-writer", "cache-reader-1", "cache-reader-2", "cache-reader-3"} {
		if err := s.CS.CoreV1().Pods(s.ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete pod %s: %v", name, err)
		}
	}
	if err := s.C.Delete(ctx, vs); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete VolumeSnapshot %s: %v", snap, err)
	}
	s.deleteClaim(ctx, t, claim)
	var wg2 sync.WaitGroup
	for _, v := range append(restored, srcVol) {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			if err := s.WaitVolumeGone(ctx, v, volumeGone); err != nil {
				t.Error(err)
			}
		}()
	}
	wg2.Wait()
	var left []string
	if err := Poll(ctx, snapGone, 2*time.Second, func(ctx context.Context) (bool, error) {
		left = left[:0]
		if _, err := s.getVolumeSnapshot(ctx, snap); !apierrors.IsNotFound(err) {
			left = append(left, fmt.Sprintf("VolumeSnapshot %s (%v)", snap, err))
		}
		if _, err := s.snapshotHandle(ctx, got.Content); !apierrors.IsNotFound(err) {
			left = append(left, "VolumeSnapshotContent "+got.Content)
		}
		var ls carvev1.LocalSnapshotList
		if err := s.C.List(ctx, &ls); err != nil {
			left = append(left, "list LocalSnapshots: "+err.Error())
		}
		for _, l := range ls.Items {
			left = append(left, fmt.Sprintf("LocalSnapshot %s (phase %s, finalizers %v)", l.Name, l.Status.Phase, l.Finalizers))
		}
		if len(left) > 0 {
			return false, nil // lvs (in the emulated guest) only once the objects are gone
		}
		lvs, err := s.LVsIn(ctx, s.ThinVG)
		if err != nil {
			left = append(left, err.Error())
		}
		for _, l := range lvs {
			left = append(left, fmt.Sprintf("LV %s/%s (%s, csi name %q, source %q)", s.ThinVG, l.Name, Size(l.SizeBytes), l.Tags.Name, l.Tags.Source))
		}
		return len(left) == 0, nil
	}); err != nil {
		t.Errorf("left %v after deleting the pods, the snapshot and the claim: %s", snapGone, strings.Join(left, "; "))
	}
	t.Logf("pods, snapshot and claim deleted; every volume, the snapshot and their LVs gone after %.0fs", time.Since(start).Seconds())

	// 6. The space is free again: the published figures are the starting ones.
	after, err := s.waitThinCapacity(ctx, pool, capacityBack, func(c thinCapacity) bool { return c.figures() == before.figures() })
	if err != nil {
		t.Errorf("capacity of pool %s not back within %v: %v, started at %v", pool, capacityBack, after, before)
	} else {
		t.Logf("capacity back: %v", after)
	}
}
