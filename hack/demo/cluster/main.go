// Command cluster is the control-plane half of `make demo`: the storage
// capacity story of the Kubernetes 1.19 blog post on a real control plane
// built from source (test/k8srig: etcd, kube-apiserver, controller-manager,
// scheduler, three simulated nodes with carve-csi --mode=node on loop-device
// volume groups, carve-csi --mode=controller with external-provisioner and
// external-resizer). It prints the CSIStorageCapacity table, creates a pod
// with a generic ephemeral volume, shows where it landed and the table after,
// deletes the pod, and tears everything down, also on failure or Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/carve-csi/carve/test/k8srig"
)

// runner is k8srig.T for a command: it collects cleanups and runs them (last
// first) at the end, on Fatalf/FailNow and on SIGINT/SIGTERM.
type runner struct {
	mu       sync.Mutex
	cleanups []func()
	failed   bool
	once     sync.Once
}

func (r *runner) Helper() {}

func (r *runner) Logf(format string, args ...any) {
	fmt.Println(indent(fmt.Sprintf(format, args...)))
}

func (r *runner) Errorf(format string, args ...any) {
	r.mu.Lock()
	r.failed = true
	r.mu.Unlock()
	fmt.Println(indent("ERROR: " + fmt.Sprintf(format, args...)))
}

func (r *runner) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	r.FailNow()
}

func (r *runner) FailNow() {
	r.mu.Lock()
	r.failed = true
	r.mu.Unlock()
	fmt.Println("\n==> the demo failed; cleaning up everything it made")
	r.cleanup()
	os.Exit(1)
}

func (r *runner) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func (r *runner) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

// cleanup runs every cleanup once, last registered first; a second caller
// waits until the first is done.
func (r *runner) cleanup() {
	r.once.Do(func() {
		r.mu.Lock()
		fs := r.cleanups
		r.cleanups = nil
		r.mu.Unlock()
		for i := len(fs) - 1; i >= 0; i-- {
			func() {
				defer func() {
					if p := recover(); p != nil {
						fmt.Printf("    cleanup panicked: %v\n", p)
					}
				}()
				fs[i]()
			}()
		}
	})
}

func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = "    " + l
	}
	return strings.Join(lines, "\n")
}

var (
	stepNo, steps int
	started       = time.Now()
	stepStart     time.Time
)

// step prints the numbered step line; the previous step's time goes first.
func step(format string, args ...any) {
	doneStep()
	stepNo++
	stepStart = time.Now()
	fmt.Printf("\n==> [%d/%d] %s\n", stepNo, steps, fmt.Sprintf(format, args...))
}

func doneStep() {
	if !stepStart.IsZero() {
		fmt.Printf("    (%.1fs)\n", time.Since(stepStart).Seconds())
	}
}

func main() {
	bin := flag.String("bin", "", "rig binaries (hack/k8s/build.sh output)")
	carve := flag.String("carve", "", "carve-csi binary")
	first := flag.Int("first-step", 1, "number of this program's first step")
	flag.IntVar(&steps, "steps", 6, "steps of the whole demo")
	flag.Parse()
	stepNo = *first - 1
	if *bin == "" || *carve == "" {
		fmt.Fprintln(os.Stderr, "usage: cluster --bin=<.cache/k8s/bin> --carve=<carve-csi> (hack/demo.sh runs it)")
		os.Exit(2)
	}
	t := &runner{}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Printf("\n==> %v: cleaning up everything the demo made\n", s)
		t.cleanup()
		os.Exit(130)
	}()
	run(t, *bin, *carve)
	doneStep()
}

func run(t *runner, bin, carve string) {
	ctx := context.Background()
	step("Starting the control plane (etcd, kube-apiserver, controller-manager, scheduler) and three nodes with carve")
	fmt.Println("    each node: a Node object (no kubelet), a 20Gi volume group on its own loop device, carve-csi --mode=node;")
	fmt.Println("    the controller: carve-csi --mode=controller + external-provisioner (--enable-capacity) + external-resizer")
	r := k8srig.New(t, k8srig.Config{Bin: bin, Carve: carve})
	var loops []string
	for _, n := range r.Nodes {
		loops = append(loops, n.VG.LoopDev)
		fmt.Printf("    %s: VG %s on %s\n", n.Name, n.VG.Name, n.VG.LoopDev)
	}

	step("The CSIStorageCapacity objects external-provisioner published (one per node and storage class)")
	before := r.WaitCapacityExact(t, "empty cluster")
	fmt.Println("    $ kubectl get csistoragecapacities -n carve-system   (as a table: node, class, capacity, max volume size)")
	fmt.Print(table(r, before, nil))

	step("A pod with a 4Gi generic ephemeral volume (storage class %s, WaitForFirstConsumer)", k8srig.SCName)
	const pod, size = "demo", 4 * k8srig.Gi
	spec, err := yaml.Marshal(map[string]any{"volumes": k8srig.EphemeralPod(pod, k8srig.SCName, size).Spec.Volumes})
	if err != nil {
		t.Fatalf("%v", err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(spec)), "\n") {
		if strings.TrimSpace(l) != "metadata: {}" {
			lines = append(lines, l)
		}
	}
	fmt.Println("    pod spec (excerpt):")
	fmt.Println(indent(indent(strings.Join(lines, "\n"))))
	created := r.CreatePod(t, pod, size)
	nodeName := r.WaitPodNode(t, pod)
	fmt.Printf("    the scheduler placed pod %s on %s (only nodes whose capacity fits 4Gi qualify) after %s\n", pod, nodeName, k8srig.MS(time.Since(created)))
	pvc, boundAt := r.WaitBound(t, pod)
	fmt.Printf("    PVC %s Bound to %s %s after the pod was created\n", pvc.Name, pvc.Spec.VolumeName, k8srig.MS(boundAt.Sub(created)))
	v := r.VolumeOf(t, pod, size)
	n := r.Node(v.Node)
	lvs, err := n.VG.Runner.Run(ctx, "lvm", "lvs", "-o", "lv_name,lv_size", "--units", "m", n.VG.Name)
	if err != nil {
		t.Fatalf("%v", err)
	}
	fmt.Printf("    $ lvs %s   (on %s; metadata-only VG: this kernel has no device-mapper)\n%s\n", n.VG.Name, n.Name, indent(indent(string(lvs))))
	fmt.Printf("    $ kubectl get localvolumes -o wide\n%s\n", indent(indent(r.KubectlOut(t, "get", "localvolumes", "-o", "wide"))))

	step("The CSIStorageCapacity table after the pod")
	after := r.WaitCapacityExact(t, "after the pod")
	fmt.Print(table(r, after, before))
	for _, x := range r.Nodes {
		want := before[x.Name].Capacity
		if x.Name == v.Node {
			want -= v.LVSize
		}
		if after[x.Name].Capacity != want {
			t.Fatalf("%s: capacity %d after the pod, want %d", x.Name, after[x.Name].Capacity, want)
		}
	}

	step("Deleting the pod: its PVC, PV, LocalVolume and LV go with it, the capacity comes back")
	deleted := r.DeletePod(t, pod)
	k8srig.WaitFor(t, "PVC, PV, LocalVolume and LV of "+pod+" gone", k8srig.WaitLong, 50*time.Millisecond, func() (bool, string) {
		s, err := r.State(ctx)
		if err != nil {
			return false, err.Error()
		}
		_, pvcErr := r.CS.CoreV1().PersistentVolumeClaims(k8srig.PodNS).Get(ctx, v.PVC, metav1.GetOptions{})
		return apierrors.IsNotFound(pvcErr) && s.LVCount() == 0 && len(s.LVols) == 0 && len(s.PVs) == 0,
			fmt.Sprintf("PVC: %v; %d LVs, %d LocalVolumes, %d PVs", pvcErr, s.LVCount(), len(s.LVols), len(s.PVs))
	})
	fmt.Printf("    PVC, PV, LocalVolume and LV gone %s after the delete\n", k8srig.MS(time.Since(deleted)))
	final := r.WaitCapacityExact(t, "after deleting the pod")
	fmt.Print(table(r, final, after))
	for _, x := range r.Nodes {
		if final[x.Name].Capacity != before[x.Name].Capacity {
			t.Fatalf("%s: capacity %d after the delete, %d before the pod", x.Name, final[x.Name].Capacity, before[x.Name].Capacity)
		}
	}
	fmt.Println("    capacity restored: every node is back to its value before the pod")
	if t.Failed() {
		t.FailNow()
	}

	step("Tearing down: processes, cluster (cluster.sh down), volume groups, loop devices, folders")
	dirs := []string{r.Dir, r.Logs, filepath.Dir(r.CtrlSock)}
	for _, x := range r.Nodes {
		dirs = append(dirs, x.VG.ConfigDir, x.KubeletDir, filepath.Dir(x.Sock))
	}
	t.cleanup()
	if t.Failed() {
		fmt.Println("    the teardown reported errors (above)")
		os.Exit(1)
	}
	verify(loops, dirs)
}

// verify checks that the teardown left nothing: no loop device of the demo,
// no folder, no process whose command line names the demo's files.
func verify(loops, dirs []string) {
	var left []string
	for _, l := range loops {
		if b, err := os.ReadFile("/sys/block/" + filepath.Base(l) + "/loop/backing_file"); err == nil {
			left = append(left, fmt.Sprintf("%s still backed by %s", l, strings.TrimSpace(string(b))))
		}
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil {
			left = append(left, "folder "+d)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	nprocs := 0
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || len(b) == 0 {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if filepath.Base(filepath.Dir(p)) == fmt.Sprint(os.Getpid()) {
			continue
		}
		nprocs++
		for _, m := range dirs {
			if m != "" && strings.Contains(cmd, m) {
				left = append(left, "process "+filepath.Base(filepath.Dir(p))+": "+cmd)
				break
			}
		}
	}
	if len(left) > 0 {
		fmt.Printf("    left behind:\n%s\n", indent(strings.Join(left, "\n")))
		os.Exit(1)
	}
	fmt.Printf("    verified: loop devices %s detached, %d folders removed, none of %d processes refers to the demo's files\n",
		strings.Join(loops, " "), len(dirs), nprocs)
}

// table renders the capacity per node like `kubectl get csistoragecapacities`
// would if it showed the node: ref marks what changed.
func table(r *k8srig.Rig, rows, ref map[string]k8srig.CapRow) string {
	var b strings.Builder
	fmt.Fprintf(&b, "    %-8s %-12s %12s %16s %8s   %s\n", "NODE", "STORAGECLASS", "CAPACITY", "MAXIMUMVOLUME", "LVS", "CHANGE")
	for _, n := range r.Nodes {
		row := rows[n.Name]
		change := ""
		if ref != nil {
			if d := row.Capacity - ref[n.Name].Capacity; d != 0 {
				change = fmt.Sprintf("%+dMi  <==", d/k8srig.Mi)
			} else {
				change = "="
			}
		}
		fmt.Fprintf(&b, "    %-8s %-12s %12s %16s %8d   %s\n", n.Name, k8srig.SCName,
			fmt.Sprintf("%dMi", row.Capacity/k8srig.Mi), fmt.Sprintf("%dMi", row.MaxVolume/k8srig.Mi), row.LVs, change)
	}
	return b.String()
}
