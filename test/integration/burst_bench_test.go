package integration

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/backend/backendtest"
	"github.com/carve-csi/carve/pkg/cluster"
	carvecsi "github.com/carve-csi/carve/pkg/csi"
	"github.com/carve-csi/carve/pkg/keylock"
	"github.com/carve-csi/carve/pkg/kubeclient"
	"github.com/carve-csi/carve/pkg/nodeagent"
	"github.com/carve-csi/carve/pkg/volume"
	"github.com/carve-csi/carve/test/k8srig"
)

// burstArm is one way of running the controller and node agents.
type burstArm struct {
	name       string
	watch      bool    // waits on the informer (issue 13) rather than polling the API server every 15 ms
	qps        float32 // client-side limits of every client; 0: client-go's default (5/s, burst 10)
	burst      int
	createWall time.Duration
	deleteWall time.Duration
	createMed  time.Duration
	deleteMed  time.Duration
	throttled  int // log lines of client-go's client-side throttling (waits over 50 ms)
	// snapshots gives every node a snapshotting in-memory pool of type
	// lvm-thin (backendtest.Snapshots) instead of an lvm-like one.
	snapshots bool
	// nodeCfg, if set, adjusts each node agent's client config (a counting transport).
	nodeCfg func(node string, cfg *rest.Config)
}

// BenchmarkControllerBurst (issue 13): 50 concurrent CreateVolume calls, then
// 50 concurrent DeleteVolume calls, on carve's controller (in this process,
// as cmd/carve-csi wires it) against a real API server (hack/k8s, no
// kubelet) and three simulated nodes: real node agents (pkg/nodeagent, each
// with its own manager and client, as `carve-csi --mode=node` runs it) over
// in-memory pools instead of lvm2, so the figures are the API path's alone.
// Every client uses the admin kubeconfig, not the ServiceAccounts.
//
// Arms, in the same run: "before" polls the API server every 15 ms with
// client-go's default limits (what carve did before issue 13); "after" waits
// on the watch with the --kube-api-qps/--kube-api-burst defaults. Extra arms
// with other limits: CARVE_BURST_LIMITS="20/40,100/200". It prints the wall
// time and median of each phase, the ratios, and the count of client-go's
// "client-side throttling" log lines per arm (goal 0 after).
//
// Run: make bench-controller (or go test -run XXX -bench ControllerBurst
// -benchtime 1x ./test/integration/ with CARVE_K8S_BIN or CARVE_K8S_CACHE).
func BenchmarkControllerBurst(b *testing.B) {
	bin := benchBin(b)
	arms := []*burstArm{
		{name: "before", watch: false},
		{name: "after", watch: true, qps: kubeclient.DefaultQPS, burst: kubeclient.DefaultBurst},
	}
	for _, l := range strings.FieldsFunc(os.Getenv("CARVE_BURST_LIMITS"), func(r rune) bool { return r == ',' }) {
		q, bu, ok := strings.Cut(l, "/")
		qps, err1 := strconv.ParseFloat(q, 32)
		burst, err2 := strconv.Atoi(bu)
		if !ok || err1 != nil || err2 != nil {
			b.Fatalf("CARVE_BURST_LIMITS: %q is not qps/burst", l)
		}
		arms = append(arms, &burstArm{name: "after " + l, watch: true, qps: float32(qps), burst: burst})
	}
	admin, _ := startControlPlane(b, bin)
	crlog.SetLogger(klog.NewKlogr())

	// client-go logs a throttling wait over 50 ms at V(3): capture them.
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	var logs syncBuffer
	for k, v := range map[string]string{"v": "3", "logtostderr": "false", "alsologtostderr": "false", "stderrthreshold": "FATAL"} {
		if err := fs.Set(k, v); err != nil {
			b.Fatal(err)
		}
	}
	klog.SetOutput(&logs)
	b.Cleanup(func() {
		klog.SetOutput(os.Stderr)
		_ = fs.Set("v", "0")
		_ = fs.Set("logtostderr", "true")
		if b.Failed() {
			f := filepath.Join(os.TempDir(), "carve-burst-bench.log")
			_ = os.WriteFile(f, []byte(logs.String()), 0o644)
			b.Logf("the failed arm's log: %s", f)
		}
	})

	for i := 0; i < b.N; i++ {
		for _, arm := range arms {
			logs.Reset()
			runArm(b, admin, arm, fmt.Sprintf("%d", i))
			arm.throttled = strings.Count(logs.String(), "client-side throttling")
		}
	}
	b.StopTimer()
	base := arms[0]
	fmt.Printf("\n%d concurrent CreateVolume, then %d concurrent DeleteVolume, %d nodes, %d MiB volumes\n",
		burstVolumes, burstVolumes, len(burstNodes), burstSize>>20)
	fmt.Printf("%-16s %-9s %12s %12s %12s %12s %10s\n", "arm", "limits", "create wall", "create med", "delete wall", "delete med", "throttled")
	for _, a := range arms {
		limits := "5/10"
		if a.qps > 0 {
			limits = fmt.Sprintf("%g/%d", a.qps, a.burst)
		}
		fmt.Printf("%-16s %-9s %12s %12s %12s %12s %10d\n", a.name, limits, k8srig.MS(a.createWall), k8srig.MS(a.createMed),
			k8srig.MS(a.deleteWall), k8srig.MS(a.deleteMed), a.throttled)
	}
	for _, a := range arms[1:] {
		fmt.Printf("%s vs %s: create wall %.2fx, median %.2fx; delete wall %.2fx, median %.2fx\n", a.name, base.name,
			ratio(a.createWall, base.createWall), ratio(a.createMed, base.createMed),
			ratio(a.deleteWall, base.deleteWall), ratio(a.deleteMed, base.deleteMed))
	}
	b.ReportMetric(arms[1].createWall.Seconds(), "create-wall-s")
	b.ReportMetric(ratio(arms[1].createWall, base.createWall), "create-wall-ratio")
	b.ReportMetric(float64(arms[1].throttled), "throttled-lines")
}

const (
	burstVolumes = 50
	burstSize    = 64 << 20
	nodePool     = 20 << 30
)

var burstNodes = []string{"node-1", "node-2", "node-3"}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

// benchBin finds the rig's binaries, or skips.
func benchBin(b testing.TB) string {
	bin := os.Getenv("CARVE_K8S_BIN")
	if bin == "" && os.Getenv("CARVE_K8S_CACHE") != "" {
		bin = filepath.Join(os.Getenv("CARVE_K8S_CACHE"), "bin")
	}
	if bin == "" {
		bin = filepath.Join(k8srig.RepoRoot(), ".cache", "k8s", "bin")
	}
	for _, p := range []string{"etcd", "kube-apiserver", "kubectl"} {
		if _, err := os.Stat(filepath.Join(bin, p)); err != nil {
			b.Skipf("the control-plane binaries are not built (%v): run hack/k8s/build.sh, or set CARVE_K8S_BIN", err)
		}
	}
	return bin
}

// startControlPlane starts hack/k8s's cluster with carve's CRDs and the
// simulated nodes' Node and CSINode objects; it returns the admin config and
// the cluster folder.
func startControlPlane(b testing.TB, bin string) (*rest.Config, string) {
	root := k8srig.RepoRoot()
	dir := b.TempDir()
	sh := filepath.Join(root, "hack", "k8s", "cluster.sh")
	env := append(os.Environ(), "CARVE_K8S_BIN="+bin, "CARVE_K8S_TIMEOUT=180")
	run := func(args ...string) {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	b.Cleanup(func() {
		if out, err := exec.Command(sh, "down", dir).CombinedOutput(); err != nil {
			b.Errorf("cluster.sh down: %v\n%s", err, out)
		}
	})
	run(sh, "up", dir)
	admin := filepath.Join(dir, "admin.kubeconfig")
	kubectl := filepath.Join(bin, "kubectl")
	run(kubectl, "--kubeconfig", admin, "apply", "-f", filepath.Join(root, "deploy", "kubernetes", "base", "crds"))
	run(kubectl, "--kubeconfig", admin, "wait", "--for=condition=established", "--timeout=60s",
		"crd/localvolumes.carve.csi.dev", "crd/localsnapshots.carve.csi.dev", "crd/nodestorages.carve.csi.dev")
	for _, n := range burstNodes {
		run(sh, "add-node", dir, n, k8srig.DriverName)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", admin)
	if err != nil {
		b.Fatal(err)
	}
	return cfg, dir
}

func withLimits(cfg *rest.Config, arm *burstArm) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.QPS, c.Burst = arm.qps, arm.burst // 0: client-go's default
	return c
}

// armRig is a running arm: the controller service, a direct client and the
// simulated nodes' pools.
type armRig struct {
	cc     *carvecsi.ClusterController
	direct client.Client
	pools  map[string]*backendtest.Memory
}

// startArm starts the node agents and the controller as arm says; they stop
// at cleanup (or when ctx ends).
func startArm(tb testing.TB, ctx context.Context, admin *rest.Config, arm *burstArm) *armRig {
	// controller-runtime logs through klog (else it prints a "log.SetLogger
	// was never called" stack once, which reads like a failure).
	crlog.SetLogger(klog.NewKlogr())
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	tb.Cleanup(func() { cancel(); wg.Wait() })
	start := func(mgr ctrl.Manager) {
		wg.Go(func() {
			if err := mgr.Start(ctx); err != nil {
				tb.Errorf("manager: %v", err)
			}
		})
	}
	r := &armRig{pools: map[string]*backendtest.Memory{}}
	for _, n := range burstNodes {
		var b backend.Backend
		if arm.snapshots {
			sn := backendtest.NewSnapshots(k8srig.PoolName, nodePool, 4<<20)
			r.pools[n], b = sn.Memory, thinLike{sn}
		} else {
			r.pools[n] = backendtest.NewMemory(k8srig.PoolName, nodePool, 4<<20)
			b = lvmLike{r.pools[n]}
		}
		vols, err := volume.NewManager([]volume.Pool{{Name: k8srig.PoolName, Backend: b}}, k8srig.PoolName)
		if err != nil {
			tb.Fatal(err)
		}
		ncfg := withLimits(admin, arm)
		if arm.nodeCfg != nil {
			arm.nodeCfg(n, ncfg)
		}
		mgr, err := nodeagent.NewManager(ncfg, nodeagent.ManagerOptions{NodeName: n, Select: nodeagent.SelectByLabel, ManyPerProcess: true})
		if err != nil {
			tb.Fatal(err)
		}
		if err := (&nodeagent.Agent{NodeName: n, Vols: vols, Locks: &keylock.Locks{}}).SetupWithManager(mgr); err != nil {
			tb.Fatal(err)
		}
		start(mgr)
	}
	// The controller as cmd/carve-csi's runController wires it (but for the
	// name check: every arm runs a Releaser in this process).
	many := true
	cfg := withLimits(admin, arm)
	scheme, err := nodeagent.Scheme()
	if err != nil {
		tb.Fatal(err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		Controller: config.Controller{SkipNameValidation: &many}})
	if err != nil {
		tb.Fatal(err)
	}
	if err := (&cluster.Releaser{Client: mgr.GetClient()}).SetupWithManager(mgr); err != nil {
		tb.Fatal(err)
	}
	if err := (&cluster.SnapshotReleaser{Client: mgr.GetClient()}).SetupWithManager(mgr); err != nil {
		tb.Fatal(err)
	}
	if r.direct, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		tb.Fatal(err)
	}
	vols := &cluster.Volumes{Client: r.direct}
	if arm.watch {
		if vols, err = cluster.NewVolumes(ctx, mgr.GetCache(), r.direct); err != nil {
			tb.Fatal(err)
		}
	}
	start(mgr)
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		tb.Fatal("controller cache did not sync")
	}
	r.cc = &carvecsi.ClusterController{Vols: vols, Locks: &keylock.Locks{}}
	waitNodeStorages(tb, ctx, r.direct)
	return r
}

// burstCaps is what external-provisioner passes for an ext4 PVC.
var burstCaps = []*csi.VolumeCapability{{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}}

// burstCreate is external-provisioner's CreateVolume for volume i of a
// late-bound PVC whose pod went to one of the nodes (strict topology).
func burstCreate(name string, i int) *csi.CreateVolumeRequest {
	seg := []*csi.Topology{{Segments: map[string]string{k8srig.TopologyKey: burstNodes[i%len(burstNodes)]}}}
	return &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: burstSize}, VolumeCapabilities: burstCaps,
		Parameters:                map[string]string{carvecsi.ParamPool: k8srig.PoolName},
		AccessibilityRequirements: &csi.TopologyRequirement{Requisite: seg, Preferred: seg}}
}

// runArm runs the burst on a fresh arm and stops it again.
func runArm(b *testing.B, admin *rest.Config, arm *burstArm, run string) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := startArm(b, ctx, admin, arm)
	cc, direct := r.cc, r.direct
	ids := make([]string, burstVolumes)
	burst := func(what string, call func(i int) error) (wall, median time.Duration) {
		took := make([]time.Duration, burstVolumes)
		errs := make([]error, burstVolumes)
		var cwg sync.WaitGroup
		t0 := time.Now()
		for i := range burstVolumes {
			cwg.Go(func() {
				// external-provisioner's --timeout=60s per call
				t := time.Now()
				errs[i] = call(i)
				took[i] = time.Since(t)
			})
		}
		cwg.Wait()
		wall = time.Since(t0)
		for i, err := range errs {
			if err != nil {
				b.Fatalf("%s: %s #%d: %v", arm.name, what, i, err)
			}
		}
		slices.Sort(took)
		return wall, took[len(took)/2]
	}
	arm.createWall, arm.createMed = burst("CreateVolume", func(i int) error {
		cctx, ccancel := context.WithTimeout(ctx, 60*time.Second)
		defer ccancel()
		resp, err := cc.CreateVolume(cctx, burstCreate(fmt.Sprintf("pvc-burst-%s-%s-%d", strings.ReplaceAll(arm.name, "/", "-"), run, i), i))
		if err == nil {
			ids[i] = resp.GetVolume().GetVolumeId()
		}
		return err
	})
	arm.deleteWall, arm.deleteMed = burst("DeleteVolume", func(i int) error {
		cctx, ccancel := context.WithTimeout(ctx, 60*time.Second)
		defer ccancel()
		_, err := cc.DeleteVolume(cctx, &csi.DeleteVolumeRequest{VolumeId: ids[i]})
		return err
	})
	var left v1alpha1.LocalVolumeList
	if err := direct.List(ctx, &left); err != nil || len(left.Items) != 0 {
		b.Fatalf("%s: %d LocalVolumes left after the deletes (%v)", arm.name, len(left.Items), err)
	}
}

// waitNodeStorages waits until every simulated node has published.
func waitNodeStorages(tb testing.TB, ctx context.Context, c client.Client) {
	deadline := time.Now().Add(k8srig.WaitLong)
	for {
		var list v1alpha1.NodeStorageList
		if err := c.List(ctx, &list); err == nil && len(list.Items) == len(burstNodes) &&
			!slices.ContainsFunc(list.Items, func(ns v1alpha1.NodeStorage) bool { return len(ns.Status.Pools) == 0 }) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the node agents published no NodeStorage within %v", k8srig.WaitLong)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lvmLike is an in-memory pool that calls itself lvm: NodeStorage's CRD
// admits only the real pool types.
type lvmLike struct{ *backendtest.Memory }

func (lvmLike) Type() string { return "lvm" }

// thinLike is an in-memory snapshotting pool that calls itself lvm-thin.
type thinLike struct{ backendtest.Snapshots }

func (thinLike) Type() string { return "lvm-thin" }

// syncBuffer is a bytes.Buffer for concurrent writers (klog).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}
