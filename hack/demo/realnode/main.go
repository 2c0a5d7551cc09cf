// Command realnode is the real-pod half of `make demo`, run by hack/demo.sh
// through hack/cluster.sh (which sets KUBECONFIG, CARVE_GUEST_EXEC and the
// other CARVE_* variables): carve installed from deploy/kubernetes on a
// kubelet node, the CSIStorageCapacity table, a pod with a 4Gi generic
// ephemeral volume writing to it, the table after with the change marked, the
// pod deleted and the capacity back, then a pod with a CSI inline volume.
// It deletes what it made, also on failure or Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/carve-csi/carve/test/cluster"
)

const (
	ns       = "carve-demo"
	podWait  = 5 * time.Minute // the node runs under TCG emulation
	capWait  = 3 * time.Minute // external-provisioner refreshes capacity once a minute
	goneWait = 3 * time.Minute
)

var (
	stepNo, steps int
	stepStart     time.Time
)

func step(format string, args ...any) {
	doneStep()
	stepNo++
	stepStart = time.Now()
	fmt.Printf("\n==> [%d/%d] %s\n", stepNo, steps, fmt.Sprintf(format, args...))
}

func doneStep() {
	if !stepStart.IsZero() {
		fmt.Printf("    (%.0fs)\n", time.Since(stepStart).Seconds())
	}
}

func say(format string, args ...any) { fmt.Println(indent(fmt.Sprintf(format, args...))) }

func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = "    " + l
	}
	return strings.Join(lines, "\n")
}

func main() {
	first := flag.Int("first-step", 1, "number of this program's first step")
	flag.IntVar(&steps, "steps", 5, "steps of the whole demo")
	flag.Parse()
	stepNo = *first - 1
	env, err := cluster.EnvFromOS()
	if err != nil {
		fmt.Fprintln(os.Stderr, "realnode:", err)
		os.Exit(2)
	}
	c, err := cluster.Connect(env)
	if err != nil {
		fmt.Fprintln(os.Stderr, "realnode:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = run(ctx, c)
	doneStep()
	// Whatever happened, the namespace goes (and with it the pods and claims).
	cleanup(c)
	if err != nil {
		fmt.Printf("\n==> the demo failed: %v\n", err)
		os.Exit(1)
	}
}

func cleanup(c *cluster.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), goneWait)
	defer cancel()
	if err := c.CS.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		fmt.Printf("    cleanup: delete namespace %s: %v\n", ns, err)
		return
	}
	_ = cluster.Poll(ctx, goneWait, 2*time.Second, func(ctx context.Context) (bool, error) {
		_, err := c.CS.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
}

func run(ctx context.Context, c *cluster.Cluster) error {
	if _, err := c.CS.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	if err := cluster.Poll(ctx, time.Minute, time.Second, func(ctx context.Context) (bool, error) {
		_, err := c.CS.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		return fmt.Errorf("ServiceAccount %s/default not created: %w", ns, err)
	}

	step("The CSIStorageCapacity objects external-provisioner published for node %s", c.Node)
	var before cluster.Capacity
	if err := cluster.Poll(ctx, capWait, 2*time.Second, func(ctx context.Context) (bool, error) {
		var err error
		before, err = c.Capacity(ctx)
		return err == nil, nil
	}); err != nil {
		return fmt.Errorf("no capacity published for %s: %w", c.Node, err)
	}
	rows, err := c.CapacityTable(ctx)
	if err != nil {
		return err
	}
	say("$ kubectl get csistoragecapacities -n %s   (as a table, with the node of each)", c.Namespace)
	fmt.Print(table(rows, nil))
	if before.CSIMaxVolume < 4<<30 {
		return fmt.Errorf("the node's pool has room for at most %s, the demo needs 4Gi", cluster.Size(before.CSIMaxVolume))
	}

	step("A pod with a 4Gi generic ephemeral volume (StorageClass %s, WaitForFirstConsumer)", c.StorageClass)
	const pod, size = "demo", int64(4 << 30)
	script := `set -e
dd if=/dev/zero of=/data/written bs=1048576 count=256 2>/dev/null
sync
{ echo "wrote: $(ls -l /data/written | awk '{print $5}') bytes to /data/written"; df -h /data; } > /dev/termination-log`
	created := time.Now()
	if _, err := c.CS.CoreV1().Pods(ns).Create(ctx, c.NewPod(ns, cluster.PodOpts{Name: pod, Volume: c.EphemeralVolume("", size, ""), Script: script}), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create pod: %w", err)
	}
	say("pod spec (excerpt): volumes: [{name: vol, ephemeral: {volumeClaimTemplate: {spec: {storageClassName: %s, resources: {requests: {storage: 4Gi}}}}}}]", c.StorageClass)
	p, err := c.WaitPodRunning(ctx, ns, pod, podWait)
	if err != nil {
		return err
	}
	say("pod %s Running on %s after %.0fs; what it wrote and saw:", pod, p.Spec.NodeName, time.Since(created).Seconds())
	for _, s := range p.Status.InitContainerStatuses {
		if s.State.Terminated != nil {
			say("%s", indent(s.State.Terminated.Message))
		}
	}
	v, err := c.BoundVolume(ctx, ns, pod+"-vol")
	if err != nil {
		return err
	}
	say("PVC %s -> PV %s -> LocalVolume %s -> LV %s/%s (%s)", v.Claim, v.PV, v.LocalVolume, c.VG, v.LV, cluster.Size(v.SizeBytes))
	if out, err := c.Guest(ctx, "lvs -o lv_name,lv_size "+c.VG); err == nil {
		say("$ lvs %s   (on the node)\n%s", c.VG, indent(out))
	}

	step("The CSIStorageCapacity table after the pod (external-provisioner refreshes it about once a minute)")
	var after cluster.Capacity
	if err := cluster.Poll(ctx, capWait, 2*time.Second, func(ctx context.Context) (bool, error) {
		var err error
		after, err = c.Capacity(ctx)
		return err == nil && after.CSICapacity == before.CSICapacity-v.SizeBytes, nil
	}); err != nil {
		return fmt.Errorf("capacity did not drop by %s: before %v, now %v", cluster.Size(v.SizeBytes), before, after)
	}
	rows2, err := c.CapacityTable(ctx)
	if err != nil {
		return err
	}
	fmt.Print(table(rows2, rows))

	step("Deleting the pod: its PVC, PV, LocalVolume and LV go with it, and the capacity comes back")
	deleted := time.Now()
	if err := c.DeletePod(ctx, ns, pod, goneWait); err != nil {
		return err
	}
	if err := c.WaitVolumeGone(ctx, v, goneWait); err != nil {
		return err
	}
	say("PVC, PV, LocalVolume and LV gone %.0fs after the delete", time.Since(deleted).Seconds())
	if err := c.WaitCapacity(ctx, before, capWait); err != nil {
		return err
	}
	rows3, err := c.CapacityTable(ctx)
	if err != nil {
		return err
	}
	fmt.Print(table(rows3, rows2))
	say("capacity back to its value before the pod (%s)", cluster.Size(before.CSICapacity))

	step("A pod with a CSI inline volume (size: 64Mi): carved when the pod starts, removed when it goes")
	const ipod = "inline"
	iscript := `set -e
echo "hello from an inline volume" > /data/hello
{ echo "read back: $(cat /data/hello)"; df -h /data; } > /dev/termination-log`
	created = time.Now()
	if _, err := c.CS.CoreV1().Pods(ns).Create(ctx, c.NewPod(ns, cluster.PodOpts{Name: ipod, Volume: cluster.InlineVolume(map[string]string{"size": "64Mi"}), Script: iscript}), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create pod: %w", err)
	}
	say("pod spec (excerpt): volumes: [{name: vol, csi: {driver: %s, volumeAttributes: {size: 64Mi}}}]", cluster.Driver)
	p, err = c.WaitPodRunning(ctx, ns, ipod, podWait)
	if err != nil {
		return err
	}
	say("pod %s Running after %.0fs; what it wrote and saw:", ipod, time.Since(created).Seconds())
	for _, s := range p.Status.InitContainerStatuses {
		if s.State.Terminated != nil {
			say("%s", indent(s.State.Terminated.Message))
		}
	}
	lv, ok, err := c.InlineLV(ctx, p.UID)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("no inline LV for pod %s in %s", p.UID, c.VG)
	}
	say("its LV: %s/%s (%s), tagged carve.ephemeral=true with the pod's target path %s", c.VG, lv.Name, cluster.Size(lv.SizeBytes), lv.Tags.TargetPath)
	deleted = time.Now()
	if err := c.DeletePod(ctx, ns, ipod, goneWait); err != nil {
		return err
	}
	if err := cluster.Poll(ctx, goneWait, 2*time.Second, func(ctx context.Context) (bool, error) {
		_, ok, err := c.InlineLV(ctx, p.UID)
		return err == nil && !ok, nil
	}); err != nil {
		return fmt.Errorf("inline LV %s still there after the pod is gone", lv.Name)
	}
	say("pod deleted, LV %s gone %.0fs later", lv.Name, time.Since(deleted).Seconds())
	return nil
}

// table renders CSIStorageCapacity rows; with ref, each row's change against
// the row of the same class and node in ref is marked.
func table(rows, ref []cluster.CapacityRow) string {
	var b strings.Builder
	fmt.Fprintf(&b, "    %-12s %-14s %12s %16s   %s\n", "NODE", "STORAGECLASS", "CAPACITY", "MAXIMUMVOLUME", "CHANGE")
	for _, r := range rows {
		change := ""
		if ref != nil {
			change = "="
			for _, o := range ref {
				if o.StorageClass == r.StorageClass && o.Node == r.Node {
					if d := r.Capacity - o.Capacity; d != 0 {
						change = fmt.Sprintf("%+dMi  <==", d/cluster.MiB)
					}
				}
			}
		}
		fmt.Fprintf(&b, "    %-12s %-14s %12s %16s   %s\n", r.Node, r.StorageClass, cluster.Size(r.Capacity), cluster.Size(r.MaxVolume), change)
	}
	return b.String()
}
