package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/names"
	"github.com/carve-csi/carve/test/driver"
	"github.com/carve-csi/carve/test/lvmtest"
)

const (
	footprintVolumes = 100
	footprintGoal    = 20 << 20 // bytes: issue 13's ceiling for carve-node with 100 volumes
	mib              = float64(1 << 20)
)

// BenchmarkNodeFootprint measures carve-node's resident memory (VmRSS) as
// deployed: `carve-csi --mode=node` built like the image (static, -s -w),
// with its Kubernetes client (node agent, LocalVolume informer, NodeStorage
// publisher) against a real API server (hack/k8s), metrics served, an LVM
// pool on a metadata-only volume group. It prints RSS once the node has
// published its NodeStorage and settled (idle), and after 100 LocalVolumes
// assigned to it are Ready (100 more of another node exist meanwhile: they
// must cost the node nothing), the peak (VmHWM), where the pages are (the
// binary's file pages against anonymous memory, from /proc/PID/smaps; Go's
// heap and stacks from its metrics) and the heap profile's top allocators.
//
// CARVE_FOOTPRINT_BASELINE=<carve-csi binary> measures that binary too, in
// the same run (README "Scale" names the commit it was built from). Skips
// without root or the control-plane binaries (CARVE_K8S_BIN or
// CARVE_K8S_CACHE).
func BenchmarkNodeFootprint(b *testing.B) {
	bin := k8sBin(b)
	if os.Geteuid() != 0 {
		b.Skip("skipping: needs root (loop device, lvm2)")
	}
	cp := startControlPlane(b, bin)
	type arm struct {
		name, binary string
		env, args    []string
	}
	this := imageBinary(b)
	arms := []arm{{name: "this build", binary: this}}
	if base := os.Getenv("CARVE_FOOTPRINT_BASELINE"); base != "" {
		arms = append(arms, arm{name: "baseline " + filepath.Base(base), binary: base})
	}
	for i, arm := range arms {
		f := measureNode(b, cp, arm.binary, fmt.Sprintf("footprint-%d", i), arm.env, arm.args...)
		fmt.Printf("carve-node footprint (%s): RSS idle %.1f MiB, with %d volumes %.1f MiB (goal <= %.0f MiB: ratio %.2f), peak %.1f MiB\n",
			arm.name, float64(f.idle)/mib, footprintVolumes, float64(f.loaded)/mib, footprintGoal/mib,
			float64(f.loaded)/footprintGoal, float64(f.peak)/mib)
		heap, free := f.metric("go_memstats_heap_inuse_bytes"), f.metric("go_memstats_heap_idle_bytes")-f.metric("go_memstats_heap_released_bytes")
		stacks := f.metric("go_memstats_stack_inuse_bytes")
		fmt.Printf("  where (with %d volumes): the binary's pages %.1f MiB (code that ran and the tables Go reads: pclntab, types), anonymous %.1f MiB = Go heap in use %.1f MiB + heap free but not returned %.1f MiB + goroutine stacks %.1f MiB + runtime and GC metadata %.1f MiB\n",
			footprintVolumes, float64(f.binPages)/mib, float64(f.anon)/mib, heap/mib, free/mib, stacks/mib, (float64(f.anon)-heap-free-stacks)/mib)
		b.ReportMetric(float64(f.loaded)/mib, "MiB-"+strconv.Itoa(i))
	}
	// The heap profile from a run of its own: sampling every 16 KiB (the
	// default is 512 KiB, too coarse for a heap this small) costs memory itself.
	f := measureNode(b, cp, this, "footprint-profile", []string{"GODEBUG=memprofilerate=16384"}, "--pprof")
	fmt.Printf("  heap profile of this build with %d volumes (another run, sampled every 16 KiB), top allocators (inuse_space):\n%s",
		footprintVolumes, f.heapTop)
}

// footprint is one arm's measurement, in bytes.
type footprint struct {
	idle, loaded, peak int64
	binPages, anon     int64
	metrics            map[string]float64
	heapTop            string
}

func (f *footprint) metric(name string) float64 { return f.metrics[name] }

type controlPlane struct {
	bin, dir, admin, nodeKC string
	cl                      client.Client
	addNode                 func(name string) // a Ready Node and its CSINode
}

// k8sBin finds the control-plane binaries, or skips.
func k8sBin(b testing.TB) string {
	bin := os.Getenv("CARVE_K8S_BIN")
	if bin == "" && os.Getenv("CARVE_K8S_CACHE") != "" {
		bin = filepath.Join(os.Getenv("CARVE_K8S_CACHE"), "bin")
	}
	if bin == "" {
		bin = filepath.Join(repoRoot(), ".cache", "k8s", "bin")
	}
	for _, p := range []string{"etcd", "kube-apiserver", "kubectl"} {
		if _, err := os.Stat(filepath.Join(bin, p)); err != nil {
			b.Skipf("the control-plane binaries are not built (%v): run hack/k8s/build.sh, or set CARVE_K8S_BIN", err)
		}
	}
	return bin
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// imageBinary builds carve-csi as the image does (static, stripped), or
// returns $CARVE_BINARY.
func imageBinary(b testing.TB) string {
	if p := os.Getenv("CARVE_BINARY"); p != "" {
		return p
	}
	out := filepath.Join(b.TempDir(), "carve-csi")
	cmd := exec.Command("go", "build", "-ldflags", "-s -w", "-o", out, "./cmd/carve-csi")
	cmd.Dir, cmd.Env = repoRoot(), append(os.Environ(), "CGO_ENABLED=0")
	if o, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, o)
	}
	return out
}

// startControlPlane starts hack/k8s's cluster with carve's CRDs and the node
// role's RBAC, and returns a kubeconfig of the carve-node ServiceAccount.
func startControlPlane(b testing.TB, bin string) *controlPlane {
	root := repoRoot()
	cp := &controlPlane{bin: bin, dir: b.TempDir()}
	sh := filepath.Join(root, "hack", "k8s", "cluster.sh")
	env := append(os.Environ(), "CARVE_K8S_BIN="+bin, "CARVE_K8S_TIMEOUT=180", "KUBECONFIG=")
	run := func(args ...string) {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	b.Cleanup(func() {
		if out, err := exec.Command(sh, "down", cp.dir).CombinedOutput(); err != nil {
			b.Errorf("cluster.sh down: %v\n%s", err, out)
		}
	})
	run(sh, "up", cp.dir)
	cp.admin = filepath.Join(cp.dir, "admin.kubeconfig")
	kubectl := filepath.Join(bin, "kubectl")
	base := filepath.Join(root, "deploy", "kubernetes", "base")
	run(kubectl, "--kubeconfig", cp.admin, "apply", "-f", filepath.Join(base, "namespace.yaml"), "-f", filepath.Join(base, "crds"))
	run(kubectl, "--kubeconfig", cp.admin, "apply", "-n", "carve-system", "-f", filepath.Join(base, "rbac-node.yaml"))
	run(kubectl, "--kubeconfig", cp.admin, "wait", "--for=condition=established", "--timeout=60s",
		"crd/localvolumes.carve.csi.dev", "crd/localsnapshots.carve.csi.dev", "crd/nodestorages.carve.csi.dev")
	cp.nodeKC = filepath.Join(cp.dir, "node.kubeconfig")
	run(sh, "sa-kubeconfig", cp.dir, "carve-system", "carve-node", cp.nodeKC)
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.admin)
	if err != nil {
		b.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	scheme := kruntime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		b.Fatal(err)
	}
	if cp.cl, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		b.Fatal(err)
	}
	cp.addNode = func(name string) { run(sh, "add-node", cp.dir, name, "carve.csi.dev") }
	return cp
}

var metricsAddr = regexp.MustCompile(`"Metrics listening" address="([^"]+)"`)

// measureNode runs one carve-node of binary as node and measures it.
func measureNode(b *testing.B, cp *controlPlane, binary, node string, env []string, extra ...string) *footprint {
	ctx := context.Background()
	cp.addNode(node)
	vg := lvmtest.NewVGInfo(b, 64<<30, "")
	b.Setenv("CARVE_BINARY", binary)
	args := append([]string{"--mode=node", "--nodeid=" + node, "--pool=lvm=lvm:" + vg.Name, "--kubelet-dir=" + b.TempDir(),
		"--kubeconfig=" + cp.nodeKC, "--metrics-address=127.0.0.1:0", "--v=2"}, extra...)
	p := driver.Start(b, append(lvmtest.Env(vg.ConfigDir), env...), args...)
	addr := ""
	for deadline := time.Now().Add(10 * time.Second); addr == "" && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if m := metricsAddr.FindStringSubmatch(p.Tail(200)); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		b.Fatalf("no metrics address in the log:\n%s", p.Tail(20))
	}
	// Idle: NodeStorage published, then a settle period of the same length for every arm.
	waitFor(b, "NodeStorage "+node, time.Minute, func() bool {
		ns := &v1alpha1.NodeStorage{}
		return cp.cl.Get(ctx, types.NamespacedName{Name: node}, ns) == nil && len(ns.Status.Pools) == 1
	})
	time.Sleep(5 * time.Second)
	// Scraped as Prometheus scrapes it (Go's client asks for gzip, as Prometheus does).
	scrape(b, "http://"+addr+"/metrics")
	f := &footprint{}
	f.idle = procStatus(b, p.PID(), "VmRSS")

	create := func(owner, prefix string) []string {
		var ids []string
		for i := range footprintVolumes {
			name := fmt.Sprintf("pvc-%s-%03d", prefix, i)
			id := names.VolumeID(name)
			lv := &v1alpha1.LocalVolume{
				ObjectMeta: metav1.ObjectMeta{Name: id, Labels: map[string]string{"carve.csi.dev/node": owner}},
				Spec:       v1alpha1.LocalVolumeSpec{VolumeName: name, NodeName: owner, Pool: "lvm", SizeBytes: 64 << 20, FSType: "ext4", VolumeMode: "Filesystem"},
			}
			if err := cp.cl.Create(ctx, lv); err != nil {
				b.Fatal(err)
			}
			ids = append(ids, id)
		}
		return ids
	}
	create("elsewhere-"+node, node+"-other") // another node's: never seen by this one
	mine := create(node, node)
	waitFor(b, fmt.Sprintf("%d LocalVolumes Ready on %s", footprintVolumes, node), 5*time.Minute, func() bool {
		for _, id := range mine {
			lv := &v1alpha1.LocalVolume{}
			if cp.cl.Get(ctx, types.NamespacedName{Name: id}, lv) != nil || lv.Status.Phase != v1alpha1.PhaseReady {
				return false
			}
		}
		return true
	})
	time.Sleep(5 * time.Second) // the last NodeStorage publish and the informer settle
	f.metrics = scrape(b, "http://"+addr+"/metrics")
	f.loaded = procStatus(b, p.PID(), "VmRSS")
	f.peak = procStatus(b, p.PID(), "VmHWM")
	f.binPages, f.anon = smaps(b, p.PID(), binary)
	if slices.Contains(extra, "--pprof") {
		f.heapTop = heapTop(b, "http://"+addr+"/debug/pprof/heap")
	}
	// The volumes go as they came (finalizer released by the node), so a
	// cache that broke the node's writes fails the benchmark.
	for _, id := range mine {
		if err := cp.cl.Delete(ctx, &v1alpha1.LocalVolume{ObjectMeta: metav1.ObjectMeta{Name: id}}); err != nil {
			b.Fatal(err)
		}
	}
	waitFor(b, fmt.Sprintf("%d LocalVolumes of %s gone", footprintVolumes, node), 5*time.Minute, func() bool {
		for _, id := range mine {
			if cp.cl.Get(ctx, types.NamespacedName{Name: id}, &v1alpha1.LocalVolume{}) == nil {
				return false
			}
		}
		return true
	})
	p.Stop(15)
	return f
}

func waitFor(b testing.TB, what string, timeout time.Duration, cond func() bool) {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// procStatus reads a "kB" field of /proc/PID/status, in bytes.
func procStatus(b testing.TB, pid int, field string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// smaps sums the resident pages of the mappings of file (the binary's text
// and data) and of anonymous mappings (heap, stacks, runtime), in bytes.
func smaps(b testing.TB, pid int, file string) (filePages, anon int64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	file, _ = filepath.EvalSymlinks(file)
	var current string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			current = ""
			if len(fields) >= 6 {
				current = fields[5]
			}
			continue
		}
		if len(fields) == 3 && fields[0] == "Rss:" {
			kb, _ := strconv.ParseInt(fields[1], 10, 64)
			switch {
			case current == file:
				filePages += kb << 10
			case current == "":
				anon += kb << 10
			}
		}
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	return filePages, anon
}

// scrape reads the untyped values of a Prometheus text page (no labels).
func scrape(b testing.TB, url string) map[string]float64 {
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 2 && !strings.HasPrefix(fields[0], "#") {
			if v, err := strconv.ParseFloat(fields[1], 64); err == nil {
				m[fields[0]] = v
			}
		}
	}
	return m
}

// heapTop fetches a heap profile (after a GC) and returns `go tool pprof
// -top`'s first lines, or "" when the binary serves no profile.
func heapTop(b testing.TB, url string) string {
	resp, err := http.Get(url + "?gc=1")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Logf("no heap profile at %s: %s", url, resp.Status)
		return ""
	}
	prof := filepath.Join(b.TempDir(), "heap.pb.gz")
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(prof, data, 0o644); err != nil {
		b.Fatal(err)
	}
	out, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=15", "-sample_index=inuse_space", prof).CombinedOutput()
	if err != nil {
		b.Fatalf("go tool pprof: %v\n%s", err, out)
	}
	var keep []string
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		if strings.HasPrefix(l, "File:") || strings.HasPrefix(l, "Build ID:") || strings.HasPrefix(l, "Type:") || strings.HasPrefix(l, "Time:") {
			continue
		}
		keep = append(keep, "    "+l)
	}
	return strings.Join(keep, "\n") + "\n"
}
