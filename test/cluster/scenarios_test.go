package cluster

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	carvev1 "github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
)

// fsScript writes a token and 1 MiB of random data to /data, reads both back
// and reports them with the filesystem's size (df, KiB), type and owner
// group, and the container's uid, in its termination message.
func fsScript(token string) string {
	return `set -e
echo ` + token + ` > /data/token
head -c 1048576 /dev/urandom > /data/blob
sum=$(md5sum /data/blob | cut -d' ' -f1)
sync
{
echo "token=$(cat /data/token)"
echo "sum=$sum"
echo "sum2=$(md5sum /data/blob | cut -d' ' -f1)"
echo "dfk=$(df -Pk /data | awk 'NR==2{print $2}')"
echo "fstype=$(awk '$2=="/data"{print $3}' /proc/mounts)"
echo "uid=$(id -u)"
echo "gid=$(stat -c %g /data)"
} > /dev/termination-log`
}

// blockScript writes a token to the first sector of the raw device, reads it
// back, and reads the whole device to count its bytes (Debian's busybox dd
// prints no byte count, so wc does).
func blockScript(token string) string {
	return `set -e
printf '%s' ` + token + ` | dd of=` + DevicePath + ` bs=512 count=1 conv=sync,fsync,notrunc 2>/dev/null
{
echo "token=$(dd if=` + DevicePath + ` bs=512 count=1 2>/dev/null | tr -d '\000')"
echo "bytes=$(wc -c < ` + DevicePath + `)"
} > /dev/termination-log`
}

// growScript waits (at most 6 min, as ephemeralRun) until df shows more than
// beforeKiB and reports the size and the token.
func growScript(beforeKiB int64) string {
	return fmt.Sprintf(`for i in $(seq 180); do k=$(df -Pk /data | awk 'NR==2{print $2}'); [ "$k" -gt %d ] && break; sleep 2; done
{ echo "dfk=$k"; echo "token=$(cat /data/token)"; } > /dev/termination-log`, beforeKiB)
}

// lookScript reads the token back and writes a new file.
const lookScript = `{ echo "token=$(cat /data/token)"; echo after > /data/after && echo "wrote=$(cat /data/after)"; } > /dev/termination-log`

// dfSize is the "dfk" field in bytes.
func dfSize(t *testing.T, m map[string]string) int64 {
	t.Helper()
	k, err := strconv.ParseInt(m["dfk"], 10, 64)
	if err != nil {
		t.Fatalf("df size in the pod: %q (%v); the check reported %v", m["dfk"], err, m)
	}
	return k * 1024
}

// checkFS asserts the check container's report: the token and data read
// back, the filesystem type, and a df size that is the requested size less
// the filesystem's own overhead (journal, xfs log: under 25% at these sizes).
func checkFS(t *testing.T, m map[string]string, token, fstype string, size int64) {
	t.Helper()
	if m == nil {
		t.Fatal("the check container left no report")
	}
	if m["token"] != token {
		t.Errorf("read back token %q, wrote %q", m["token"], token)
	}
	if m["sum"] == "" || m["sum"] != m["sum2"] {
		t.Errorf("1 MiB blob read back with md5 %q, written with %q", m["sum2"], m["sum"])
	}
	if fstype != "" && m["fstype"] != fstype {
		t.Errorf("filesystem at /data is %q, want %q", m["fstype"], fstype)
	}
	if df := dfSize(t, m); df > size || df < size*3/4 {
		t.Errorf("df in the pod shows %s for a %s volume, want between 75%% and 100%% of it", Size(df), Size(size))
	}
}

// startPod creates the pod, deletes it when the test ends (in case the test
// stops early; a scenario deletes its pods itself and checks the cleanup),
// and waits until it runs.
func (s *suite) startPod(ctx context.Context, t *testing.T, o PodOpts) *corev1.Pod {
	t.Helper()
	s.createPod(ctx, t, o)
	pod, err := s.WaitPodRunning(ctx, s.ns, o.Name, podStart)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(s.Timeline(ctx, pod))
	return pod
}

func (s *suite) createPod(ctx context.Context, t *testing.T, o PodOpts) {
	t.Helper()
	if _, err := s.CS.CoreV1().Pods(s.ns).Create(ctx, s.NewPod(s.ns, o), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", o.Name, err)
	}
	t.Cleanup(func() {
		zero := int64(0)
		_ = s.CS.CoreV1().Pods(s.ns).Delete(context.WithoutCancel(ctx), o.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	})
}

func (s *suite) createClaim(ctx context.Context, t *testing.T, name string, spec corev1.PersistentVolumeClaimSpec) {
	t.Helper()
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.ns}, Spec: spec}
	if _, err := s.CS.CoreV1().PersistentVolumeClaims(s.ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create PVC %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = s.CS.CoreV1().PersistentVolumeClaims(s.ns).Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{})
	})
}

func (s *suite) deletePod(ctx context.Context, t *testing.T, name string) {
	t.Helper()
	start := time.Now()
	if err := s.DeletePod(ctx, s.ns, name, podGone); err != nil {
		t.Fatal(err)
	}
	t.Logf("pod %s gone after %.0fs", name, time.Since(start).Seconds())
}

func (s *suite) deleteClaim(ctx context.Context, t *testing.T, name string) {
	t.Helper()
	if err := s.CS.CoreV1().PersistentVolumeClaims(s.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("delete PVC %s: %v", name, err)
	}
}

func (s *suite) boundVolume(ctx context.Context, t *testing.T, claim string, size int64) Volume {
	t.Helper()
	v, err := s.BoundVolume(ctx, s.ns, claim)
	if err != nil {
		t.Fatal(err)
	}
	if v.SizeBytes != size {
		t.Errorf("LV %s is %d bytes, the claim asked for %d", v.LV, v.SizeBytes, size)
	}
	return v
}

func (s *suite) volumeGone(ctx context.Context, t *testing.T, v Volume) {
	t.Helper()
	start := time.Now()
	if err := s.WaitVolumeGone(ctx, v, volumeGone); err != nil {
		t.Fatal(err)
	}
	t.Logf("volume %s (PVC, PV, LocalVolume, LV) gone after %.0fs", v.PV, time.Since(start).Seconds())
}

func (s *suite) capacityBack(ctx context.Context, t *testing.T) {
	t.Helper()
	start := time.Now()
	if err := s.WaitCapacity(ctx, s.baseline, capacityBack); err != nil {
		t.Fatal(err)
	}
	t.Logf("capacity back to the baseline after %.0fs", time.Since(start).Seconds())
}

// ephemeralFS: a generic ephemeral volume formatted fs: data round trip, df
// size; the pod deleted removes PVC, PV, LocalVolume and LV, and the node's
// capacity comes back to the baseline. The ext4 pod runs as uid 1000 with
// fsGroup 2000 and writes to its volume (the fsgroup-non-root scenario, folded
// in here: one pod start less on the emulated node, the same checks); the xfs
// one runs as root.
func (s *suite) ephemeralFS(ctx context.Context, t *testing.T, fs string) {
	const size = 512 * MiB // xfs needs at least 300 MiB with bookworm's xfsprogs
	sc := ""
	var security *corev1.PodSecurityContext
	if fs == "xfs" {
		sc = xfsClass
	} else {
		uid, gid, fsGroup, yes := int64(1000), int64(1000), int64(2000), true
		security = &corev1.PodSecurityContext{RunAsUser: &uid, RunAsGroup: &gid, FSGroup: &fsGroup, RunAsNonRoot: &yes}
	}
	name, token := "ephemeral-"+fs, "carve-"+fs+"-"+strconv.FormatInt(time.Now().UnixNano(), 36)
	pod := s.startPod(ctx, t, PodOpts{Name: name, Volume: s.EphemeralVolume(sc, size, ""), Script: fsScript(token), Security: security})
	m := InitMessage(pod)
	checkFS(t, m, token, fs, size)
	if security != nil && (m["uid"] != "1000" || m["gid"] != "2000") {
		t.Errorf("wrote as uid %q into a volume of group %q, want uid 1000 and group 2000 (fsGroup)", m["uid"], m["gid"])
	}
	v := s.boundVolume(ctx, t, name+"-vol", size)
	t.Logf("pod %s runs on %s with %s (LV %s)", name, pod.Spec.NodeName, fs, v.LV)
	s.deletePod(ctx, t, name)
	s.volumeGone(ctx, t, v)
	s.capacityBack(ctx, t)
}

// inline: a CSI inline volume of 64Mi: data round trip, its LV exists while
// the pod runs and is gone after.
func (s *suite) inline(ctx context.Context, t *testing.T) {
	const size = 64 * MiB
	name, token := "inline", "carve-inline-"+strconv.FormatInt(time.Now().UnixNano(), 36)
	pod := s.startPod(ctx, t, PodOpts{Name: name, Volume: InlineVolume(map[string]string{"size": "64Mi"}), Script: fsScript(token)})
	checkFS(t, InitMessage(pod), token, "ext4", size)
	lv, ok, err := s.InlineLV(ctx, pod.UID)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Fatalf("no inline LV tagged with pod %s's target path in %s", pod.UID, s.VG)
	}
	if lv.SizeBytes != size {
		t.Errorf("inline LV %s is %d bytes, want %d", lv.Name, lv.SizeBytes, size)
	}
	s.deletePod(ctx, t, name)
	s.inlineLVGone(ctx, t, pod.UID)
}

func (s *suite) inlineLVGone(ctx context.Context, t *testing.T, uid types.UID) {
	t.Helper()
	var left LV
	err := Poll(ctx, volumeGone, 2*time.Second, func(ctx context.Context) (bool, error) {
		l, ok, err := s.InlineLV(ctx, uid)
		left = l
		return err == nil && !ok, nil
	})
	if err != nil {
		t.Fatalf("inline LV of pod %s still there %v after the pod is gone: %q", uid, volumeGone, left.Name)
	}
}

// inlineForbidden: an inline volume with an attribute carve does not accept:
// the pod never starts, kubelet's event carries InvalidArgument, no LV.
func (s *suite) inlineForbidden(ctx context.Context, t *testing.T) {
	name := "inline-forbidden"
	s.createPod(ctx, t, PodOpts{Name: name, Volume: InlineVolume(map[string]string{"size": "64Mi", "colour": "blue"})})
	var msg string
	err := Poll(ctx, podStart, 2*time.Second, func(ctx context.Context) (bool, error) {
		list, err := s.CS.CoreV1().Events(s.ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
		if err != nil {
			return false, nil
		}
		for _, e := range list.Items {
			if e.Reason == "FailedMount" && strings.Contains(e.Message, "InvalidArgument") {
				msg = e.Message
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no FailedMount event with InvalidArgument for pod %s after %v:\n%s", name, podStart, s.Describe(ctx, s.ns, name))
	}
	t.Logf("event: %s", msg)
	pod, err := s.CS.CoreV1().Pods(s.ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pod.Status.Phase != corev1.PodPending {
		t.Errorf("pod %s is %s, want Pending (never started)", name, pod.Status.Phase)
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.State.Running != nil || cs.State.Terminated != nil {
			t.Errorf("container %s of %s started: %s", cs.Name, name, stateString(cs.State))
		}
	}
	if lv, ok, err := s.InlineLV(ctx, pod.UID); err != nil || ok {
		t.Errorf("an LV exists for the refused inline volume: %q (lvs error %v)", lv.Name, err)
	}
	s.deletePod(ctx, t, name)
}

// block: a PVC with volumeMode Block: the pod writes and reads the raw device.
func (s *suite) block(ctx context.Context, t *testing.T) {
	const size = 64 * MiB
	name, token := "block", "carve-block-"+strconv.FormatInt(time.Now().UnixNano(), 36)
	s.createClaim(ctx, t, name, s.ClaimSpec("", size, corev1.PersistentVolumeBlock, corev1.ReadWriteOnce))
	script := blockScript(token)
	claim := corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: name}}
	pod := s.startPod(ctx, t, PodOpts{Name: name, Volume: claim, Block: true, Script: script})
	m := InitMessage(pod)
	if m["token"] != token {
		t.Errorf("read %q back from the raw device, wrote %q (report %v)", m["token"], token, m)
	}
	if m["bytes"] != strconv.FormatInt(size, 10) {
		t.Errorf("the raw device read %q bytes, want %d", m["bytes"], size)
	}
	v := s.boundVolume(ctx, t, name, size)
	s.deletePod(ctx, t, name)
	s.deleteClaim(ctx, t, name)
	s.volumeGone(ctx, t, v)
}

// expansion: the PVC of a running pod grows from 256Mi to 512Mi; the pod
// sees the bigger filesystem without a restart.
func (s *suite) expansion(ctx context.Context, t *testing.T) {
	const size, bigger = 256 * MiB, 512 * MiB
	name, token := "expand", "carve-expand-"+strconv.FormatInt(time.Now().UnixNano(), 36)
	s.createClaim(ctx, t, name, s.ClaimSpec("", size, "", corev1.ReadWriteOnce))
	claim := corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: name}}
	pod := s.startPod(ctx, t, PodOpts{Name: name, Volume: claim, Script: fsScript(token)})
	m := InitMessage(pod)
	checkFS(t, m, token, "ext4", size)
	before := dfSize(t, m)

	patch := fmt.Sprintf(`{"spec":{"resources":{"requests":{"storage":"%d"}}}}`, bigger)
	if _, err := s.CS.CoreV1().PersistentVolumeClaims(s.ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("resize PVC %s to %s: %v", name, Size(bigger), err)
	}
	var status corev1.PersistentVolumeClaimStatus
	err := Poll(ctx, podStart, 2*time.Second, func(ctx context.Context) (bool, error) {
		p, err := s.CS.CoreV1().PersistentVolumeClaims(s.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		status = p.Status
		got := p.Status.Capacity[corev1.ResourceStorage]
		return got.Value() >= bigger, nil
	})
	if err != nil {
		t.Fatalf("PVC %s capacity not %s after %v: status %+v\nevents of PVC %s:\n%s", name, Size(bigger), podStart, status, name, s.PodEvents(ctx, s.ns, name))
	}
	// The pod looks from inside, in a new ephemeral container, until df
	// shows the new size (kubelet grows the filesystem asynchronously).
	script := growScript(before / 1024)
	out, code, err := s.RunInPod(ctx, s.ns, name, "look-after-resize", script, false, ephemeralRun)
	if err != nil {
		t.Fatal(err)
	}
	m2 := ParseKV(out)
	after := dfSize(t, m2)
	if code != 0 || after <= before || after < bigger*3/4 || after > bigger {
		t.Errorf("after the resize df in the running pod shows %s (before %s, exit %d), want between 75%% and 100%% of %s", Size(after), Size(before), code, Size(bigger))
	}
	if m2["token"] != token {
		t.Errorf("token after resize %q, want %q", m2["token"], token)
	}
	t.Logf("df in the running pod: %s -> %s", Size(before), Size(after))
	v := s.boundVolume(ctx, t, name, bigger)
	s.deletePod(ctx, t, name)
	s.deleteClaim(ctx, t, name)
	s.volumeGone(ctx, t, v)
}

// rwop: a ReadWriteOncePod claim works for one pod; a second pod on the same
// claim is refused by the scheduler.
func (s *suite) rwop(ctx context.Context, t *testing.T) {
	const size = 64 * MiB
	name, token := "rwop", "carve-rwop-"+strconv.FormatInt(time.Now().UnixNano(), 36)
	s.createClaim(ctx, t, name, s.ClaimSpec("", size, "", corev1.ReadWriteOncePod))
	claim := corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: name}}
	pod := s.startPod(ctx, t, PodOpts{Name: name, Volume: claim, Script: fsScript(token)})
	checkFS(t, InitMessage(pod), token, "ext4", size)
	second := name + "-second"
	s.createPod(ctx, t, PodOpts{Name: second, Volume: claim})
	if msg, err := s.waitUnschedulable(ctx, second, "ReadWriteOncePod"); err != nil {
		t.Error(err)
	} else {
		t.Logf("second pod: %s", msg)
	}
	v := s.boundVolume(ctx, t, name, size)
	s.deletePod(ctx, t, second)
	s.deletePod(ctx, t, name)
	s.deleteClaim(ctx, t, name)
	s.volumeGone(ctx, t, v)
}

// waitUnschedulable waits until the scheduler marks the pod unschedulable
// with a message containing want, and returns that message.
func (s *suite) waitUnschedulable(ctx context.Context, name, want string) (string, error) {
	var msg string
	err := Poll(ctx, 4*time.Minute, time.Second, func(ctx context.Context) (bool, error) {
		p, err := s.CS.CoreV1().Pods(s.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		if p.Spec.NodeName != "" {
			return false, fmt.Errorf("pod %s was scheduled to %s", name, p.Spec.NodeName)
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
				msg = c.Message
				return strings.Contains(c.Message, want), nil
			}
		}
		return false, nil
	})
	if err != nil {
		return msg, fmt.Errorf("pod %s not unschedulable with %q: %v (last message %q)\n%s", name, want, err, msg, s.Describe(ctx, s.ns, name))
	}
	return msg, nil
}

// capacity: with a filler volume in place, a pod whose ephemeral volume needs
// more than the node has left stays Pending with the scheduler's storage
// capacity reason and nothing is carved; once the filler is deleted, it runs.
func (s *suite) capacity(ctx context.Context, t *testing.T) {
	const extent = 4 * MiB
	filler := min(1024*MiB, s.baseline.CSIMaxVolume/4) / extent * extent
	if filler < 64*MiB {
		t.Fatalf("the node's pool is too small for this scenario: max volume %s", Size(s.baseline.CSIMaxVolume))
	}
	// More than is left with the filler, less than the pool's largest volume without it.
	big := (s.baseline.CSIMaxVolume - filler/2) / extent * extent
	s.startPod(ctx, t, PodOpts{Name: "filler", Volume: s.EphemeralVolume("", filler, "")})
	fv := s.boundVolume(ctx, t, "filler-vol", filler)
	// Wait until the scheduler's view (CSIStorageCapacity) has the filler in it.
	var last Capacity
	if err := Poll(ctx, capacityBack, 2*time.Second, func(ctx context.Context) (bool, error) {
		var err error
		last, err = s.Capacity(ctx)
		return err == nil && last.CSIMaxVolume < big, nil
	}); err != nil {
		t.Fatalf("CSIStorageCapacity did not drop below %s with the %s filler in %v: %v", Size(big), Size(filler), capacityBack, last)
	}
	lvsBefore, err := s.LVs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("filler %s carved; asking for %s with %v", Size(filler), Size(big), last)

	name := "too-big"
	token := "carve-big-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	s.createPod(ctx, t, PodOpts{Name: name, Volume: s.EphemeralVolume("", big, ""), Script: fsScript(token)})
	msg, err := s.waitUnschedulable(ctx, name, "did not have enough free storage")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pending: %s", msg)
	// Nothing made for it: its claim unbound, no LocalVolume or LV beyond the filler's.
	pvc, err := s.CS.CoreV1().PersistentVolumeClaims(s.ns).Get(ctx, name+"-vol", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the pending pod's claim: %v", err)
	}
	if pvc.Spec.VolumeName != "" || pvc.Status.Phase != corev1.ClaimPending {
		t.Errorf("the pending pod's claim is %s, bound to %q; want Pending, unbound", pvc.Status.Phase, pvc.Spec.VolumeName)
	}
	var lvols carvev1.LocalVolumeList
	if err := s.C.List(ctx, &lvols); err != nil {
		t.Fatal(err)
	}
	if len(lvols.Items) != 1 || lvols.Items[0].Name != fv.LocalVolume {
		t.Errorf("LocalVolumes while the pod is pending: %v, want only the filler's %s", localVolumeNames(lvols), fv.LocalVolume)
	}
	if lvsAfter, err := s.LVs(ctx); err != nil || len(lvsAfter) != len(lvsBefore) {
		t.Errorf("LVs changed while the pod is pending: %v -> %v (%v)", lvsBefore, lvsAfter, err)
	}

	// Space frees: the filler goes, the pod is placed and runs.
	s.deletePod(ctx, t, "filler")
	s.volumeGone(ctx, t, fv)
	pod, err := s.WaitPodRunning(ctx, s.ns, name, podStart+capacityBack)
	if err != nil {
		t.Fatal(err)
	}
	checkFS(t, InitMessage(pod), token, "ext4", big)
	v := s.boundVolume(ctx, t, name+"-vol", big)
	s.deletePod(ctx, t, name)
	s.volumeGone(ctx, t, v)
	s.capacityBack(ctx, t)
}

func localVolumeNames(l carvev1.LocalVolumeList) []string {
	var n []string
	for _, v := range l.Items {
		n = append(n, v.Name)
	}
	return n
}

// nodeRestart: the carve-node pod is deleted while a volume pod runs; the
// DaemonSet makes a new one, the data stays, and deleting the volume pod
// afterwards still cleans up everything.
func (s *suite) nodeRestart(ctx context.Context, t *testing.T) {
	const size = 128 * MiB
	name, token := "survivor", "carve-survivor-"+strconv.FormatInt(time.Now().UnixNano(), 36)
	pod := s.startPod(ctx, t, PodOpts{Name: name, Volume: s.EphemeralVolume("", size, ""), Script: fsScript(token)})
	checkFS(t, InitMessage(pod), token, "ext4", size)
	v := s.boundVolume(ctx, t, name+"-vol", size)

	old, err := s.carveNodePod(ctx)
	if err != nil {
		t.Fatal(err)
	}
	restart := time.Now()
	if err := s.CS.CoreV1().Pods(s.Namespace).Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete carve-node pod %s: %v", old.Name, err)
	}
	var cur *corev1.Pod
	if err := Poll(ctx, podStart, 2*time.Second, func(ctx context.Context) (bool, error) {
		p, err := s.carveNodePod(ctx)
		if err != nil || p.UID == old.UID {
			return false, nil
		}
		cur = p
		return allReady(p), nil
	}); err != nil {
		desc := "no new carve-node pod"
		if cur != nil {
			desc = s.Describe(ctx, s.Namespace, cur.Name)
		}
		t.Fatalf("carve-node pod not back, all containers Ready, %v after deleting %s: %v\n%s", podStart, old.Name, err, desc)
	}
	t.Logf("carve-node pod %s replaced by %s, all containers Ready after %.0fs", old.Name, cur.Name, time.Since(restart).Seconds())
	t.Log(s.Timeline(ctx, cur))

	out, code, err := s.RunInPod(ctx, s.ns, name, "look-after-restart", lookScript, false, ephemeralRun)
	if err != nil {
		t.Fatal(err)
	}
	if m := ParseKV(out); code != 0 || m["token"] != token || m["wrote"] != "after" {
		t.Errorf("after the carve-node restart the pod read %q (want %q) and wrote %q (want \"after\"), exit %d", m["token"], token, m["wrote"], code)
	}
	s.deletePod(ctx, t, name)
	s.volumeGone(ctx, t, v)
	s.capacityBack(ctx, t)
}

// carveNodePod is the carve-node DaemonSet's pod on the node.
func (s *suite) carveNodePod(ctx context.Context) (*corev1.Pod, error) {
	list, err := s.CS.CoreV1().Pods(s.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: "app=carve-node", FieldSelector: "spec.nodeName=" + s.Node,
	})
	if err != nil {
		return nil, err
	}
	var live []*corev1.Pod
	for i := range list.Items {
		if list.Items[i].DeletionTimestamp == nil {
			live = append(live, &list.Items[i])
		}
	}
	if len(live) != 1 {
		return nil, fmt.Errorf("%d carve-node pods on %s, want 1", len(live), s.Node)
	}
	return live[0], nil
}

func allReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning || len(p.Status.ContainerStatuses) != len(p.Spec.Containers) {
		return false
	}
	for _, c := range p.Status.ContainerStatuses {
		if !c.Ready {
			return false
		}
	}
	return true
}

// leakAudit deletes the test namespace (and with it anything a failed
// scenario left) and then finds no carve LV (in the default pool's VG and the
// thin pool's), CSI mount, LocalVolume, LocalSnapshot, carve PV or PVC left,
// and the capacity back at the baseline.
func (s *suite) leakAudit(ctx context.Context, t *testing.T) {
	if err := s.CS.CoreV1().Namespaces().Delete(ctx, s.ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("delete namespace %s: %v", s.ns, err)
	}
	if err := Poll(ctx, podGone+volumeGone, 2*time.Second, func(ctx context.Context) (bool, error) {
		_, err := s.CS.CoreV1().Namespaces().Get(ctx, s.ns, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		var left []string
		if pods, err := s.CS.CoreV1().Pods(s.ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, p := range pods.Items {
				left = append(left, "pod "+p.Name)
			}
		}
		if pvcs, err := s.CS.CoreV1().PersistentVolumeClaims(s.ns).List(ctx, metav1.ListOptions{}); err == nil {
			for _, p := range pvcs.Items {
				left = append(left, fmt.Sprintf("PVC %s (finalizers %v)", p.Name, p.Finalizers))
			}
		}
		t.Errorf("namespace %s not gone after %v, left: %v", s.ns, podGone+volumeGone, left)
	}
	var problems []string
	err := Poll(ctx, volumeGone, 2*time.Second, func(ctx context.Context) (bool, error) {
		problems = problems[:0]
		lvs, err := s.LVs(ctx)
		if err != nil {
			problems = append(problems, err.Error())
		}
		for _, l := range lvs {
			problems = append(problems, fmt.Sprintf("LV %s/%s (%s, csi name %q, target %q)", s.VG, l.Name, Size(l.SizeBytes), l.Tags.Name, l.Tags.TargetPath))
		}
		if s.ThinVG != "" {
			thin, err := s.LVsIn(ctx, s.ThinVG)
			if err != nil {
				problems = append(problems, err.Error())
			}
			for _, l := range thin {
				problems = append(problems, fmt.Sprintf("LV %s/%s (%s, csi name %q, source %q)", s.ThinVG, l.Name, Size(l.SizeBytes), l.Tags.Name, l.Tags.Source))
			}
		}
		var lsnaps carvev1.LocalSnapshotList
		if err := s.C.List(ctx, &lsnaps); err != nil {
			problems = append(problems, "list LocalSnapshots: "+err.Error())
		}
		for _, l := range lsnaps.Items {
			problems = append(problems, fmt.Sprintf("LocalSnapshot %s (phase %s, finalizers %v)", l.Name, l.Status.Phase, l.Finalizers))
		}
		mounts, err := s.CSIMounts(ctx)
		if err != nil {
			problems = append(problems, err.Error())
		}
		for _, m := range mounts {
			problems = append(problems, "mount "+m)
		}
		var lvols carvev1.LocalVolumeList
		if err := s.C.List(ctx, &lvols); err != nil {
			problems = append(problems, "list LocalVolumes: "+err.Error())
		}
		for _, l := range lvols.Items {
			problems = append(problems, fmt.Sprintf("LocalVolume %s (phase %s, finalizers %v)", l.Name, l.Status.Phase, l.Finalizers))
		}
		pvs, err := s.CS.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err != nil {
			problems = append(problems, "list PVs: "+err.Error())
		} else {
			for _, pv := range pvs.Items {
				if pv.Spec.CSI != nil && pv.Spec.CSI.Driver == Driver {
					problems = append(problems, fmt.Sprintf("PV %s (phase %s, finalizers %v)", pv.Name, pv.Status.Phase, pv.Finalizers))
				}
			}
		}
		var ns carvev1.NodeStorage
		if err := s.C.Get(ctx, client.ObjectKey{Name: s.Node}, &ns); err != nil {
			problems = append(problems, "NodeStorage: "+err.Error())
		} else if ns.DeletionTimestamp != nil {
			problems = append(problems, fmt.Sprintf("NodeStorage %s being deleted (finalizers %v)", ns.Name, ns.Finalizers))
		}
		return len(problems) == 0, nil
	})
	if err != nil {
		t.Errorf("left after every scenario (%v later):\n  %s", volumeGone, strings.Join(problems, "\n  "))
	}
	s.capacityBack(ctx, t)
}
