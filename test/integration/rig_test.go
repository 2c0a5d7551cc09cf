package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/test/driver"
	"github.com/carve-csi/carve/test/lvmtest"
)

const (
	driverName  = "carve.csi.dev"
	topologyKey = "carve.csi.dev/node"
	carveNS     = "carve-system" // namespace of deploy/kubernetes/base
	podNS       = "default"
	scName      = "carve-lvm" // from deploy/kubernetes/base/storageclasses.yaml
	poolName    = "lvm"       // that class's pool
	nodeCount   = 3

	mi     = int64(1) << 20
	gi     = int64(1) << 30
	vgSize = 20 * gi

	// waitLong bounds every wait for the cluster to converge. The machines
	// are small and shared: generous, and never a fixed sleep.
	waitLong = 90 * time.Second
)

// rig is the running cluster, the carve processes and the sidecars.
type rig struct {
	root    string // repository root
	bin     string // rig binaries (.cache/k8s/bin)
	dir     string // cluster folder (cluster.sh up)
	logs    string // process logs
	admin   string // admin kubeconfig
	kubectl string

	cs *kubernetes.Clientset // admin, for the test's own checks
	cl client.Client         // admin, for LocalVolume and NodeStorage

	ctrlKC, nodeKC string // ServiceAccount kubeconfigs: carve-system/carve-controller, carve-system/carve-node
	carve          string // carve-csi binary

	nodes       []*node
	ctrlSock    string
	controller  *proc
	provisioner *proc
	resizer     *proc
	distributed []*proc // per-node external-provisioners (--node-deployment)

	mu    sync.Mutex
	procs []*proc // every process, for log tails and the forbidden scan
}

type node struct {
	name       string
	vg         *lvmtest.VG
	sock       string
	kubeletDir string
	proc       *proc
}

// ---------------------------------------------------------------------------
// Gate and set-up

func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	root, err := filepath.Abs(filepath.Join(filepath.Dir(file), "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// gate decides whether the test runs: only with CARVE_INTEGRATION=1 (as make
// test-integration sets it), and then missing prerequisites fail the test.
// Otherwise it skips, so that `go test ./...` does not start a control plane
// beside the other packages' tests.
func gate(t *testing.T, root string) (bin string) {
	mode := os.Getenv("CARVE_INTEGRATION")
	if mode != "1" {
		t.Skip("skipping the control-plane integration test: set CARVE_INTEGRATION=1 (make test-integration does, after building the rig)")
	}
	demanded := mode == "1"
	missing := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if demanded {
			t.Fatalf("CARVE_INTEGRATION=1 but %s", msg)
		}
		t.Skipf("skipping the control-plane integration test: %s (set CARVE_INTEGRATION=1 to require it; make test-integration builds the rig)", msg)
	}
	if os.Geteuid() != 0 {
		missing("it needs root (loop devices, lvm2)")
	}
	for _, tool := range []string{"lvm", "losetup", "openssl", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing("%s is not installed", tool)
		}
	}
	if b := os.Getenv("CARVE_K8S_BIN"); b != "" {
		bin = b
	} else {
		bin = filepath.Join(root, ".cache", "k8s", "bin")
		check := exec.Command(filepath.Join(root, "hack", "k8s", "build.sh"), "--check")
		if out, err := check.CombinedOutput(); err != nil {
			missing("the rig binaries in %s are missing or stale (hack/k8s/build.sh --check: %v %s); run hack/k8s/build.sh",
				bin, err, strings.TrimSpace(string(out)))
		}
	}
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "csi-provisioner", "csi-resizer"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			missing("%s is missing (%v); run hack/k8s/build.sh", filepath.Join(bin, b), err)
		}
	}
	return bin
}

// newRig starts everything; t.Cleanup stops it all (processes, cluster, VGs,
// loop devices), also when the test fails half-way.
func newRig(t *testing.T) *rig {
	root := repoRoot(t)
	r := &rig{root: root, bin: gate(t, root)}
	r.kubectl = filepath.Join(r.bin, "kubectl")

	// The cluster folder first: t.TempDir's removal runs after every cleanup
	// registered later, so dumpLogs below still finds the component logs.
	r.dir = t.TempDir()
	r.logs = os.Getenv("CARVE_INTEGRATION_LOGS")
	if r.logs == "" {
		r.logs = t.TempDir()
	} else if err := os.MkdirAll(r.logs, 0o755); err != nil {
		t.Fatal(err)
	}
	// Registered before the processes: runs after they stopped.
	t.Cleanup(func() {
		if t.Failed() {
			r.dumpLogs(t)
		}
	})

	// external-provisioner and external-resizer write /dev/termination-log
	// when they lose the CSI connection (step 4 makes them): remove it
	// afterwards unless it was there before.
	const termLog = "/dev/termination-log"
	if _, err := os.Stat(termLog); os.IsNotExist(err) {
		t.Cleanup(func() { _ = os.Remove(termLog) })
	}

	// The carve binary first: a compile error should not cost a cluster.
	r.carve = driver.Binary(t)

	start := time.Now()
	t.Cleanup(func() {
		out, err := exec.Command(filepath.Join(root, "hack", "k8s", "cluster.sh"), "down", r.dir).CombinedOutput()
		if err != nil {
			t.Errorf("cluster.sh down: %v\n%s", err, out)
		}
	})
	up := exec.Command(filepath.Join(root, "hack", "k8s", "cluster.sh"), "up", r.dir)
	up.Env = append(withoutKubeconfig(os.Environ()), "CARVE_K8S_BIN="+r.bin, "CARVE_K8S_TIMEOUT=180")
	if out, err := up.CombinedOutput(); err != nil {
		t.Fatalf("cluster.sh up: %v\n%s", err, out)
	}
	r.admin = filepath.Join(r.dir, "admin.kubeconfig")
	t.Logf("control plane up in %v (%s)", time.Since(start).Round(time.Millisecond), r.dir)

	cfg, err := clientcmd.BuildConfigFromFlags("", r.admin)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	if r.cs, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	scheme := kruntime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if r.cl, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		t.Fatal(err)
	}

	// carve's manifests as they are: namespace, CRDs, CSIDriver, StorageClasses, RBAC.
	base := filepath.Join(root, "deploy", "kubernetes", "base")
	r.kubectlRun(t, "apply", "-f", filepath.Join(base, "namespace.yaml"))
	r.kubectlRun(t, "apply", "-f", filepath.Join(base, "crds"), "-f", filepath.Join(base, "csidriver.yaml"),
		"-f", filepath.Join(base, "storageclasses.yaml"))
	// The RBAC files leave namespaces to kustomize (namespace: carve-system).
	r.kubectlRun(t, "apply", "-n", carveNS, "-f", filepath.Join(base, "rbac-controller.yaml"),
		"-f", filepath.Join(base, "rbac-node.yaml"))
	r.kubectlRun(t, "wait", "--for=condition=established", "--timeout=60s",
		"crd/localvolumes.carve.csi.dev", "crd/nodestorages.carve.csi.dev")
	r.ctrlKC = r.saKubeconfig(t, "carve-controller")
	r.nodeKC = r.saKubeconfig(t, "carve-node")
	for _, sa := range []struct{ kc, want string }{{r.ctrlKC, "carve-controller"}, {r.nodeKC, "carve-node"}} {
		who := r.kubectlOut(t, "--kubeconfig", sa.kc, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
		if who != "system:serviceaccount:"+carveNS+":"+sa.want {
			t.Fatalf("kubeconfig %s authenticates as %q", sa.kc, who)
		}
	}

	// Three nodes, each with its own volume group on its own loop device and
	// its own carve-csi --mode=node.
	for i := 1; i <= nodeCount; i++ {
		n := &node{name: fmt.Sprintf("node-%d", i)}
		out, err := exec.Command(filepath.Join(root, "hack", "k8s", "cluster.sh"), "add-node", r.dir, n.name, driverName).CombinedOutput()
		if err != nil {
			t.Fatalf("cluster.sh add-node %s: %v\n%s", n.name, err, out)
		}
		n.vg = lvmtest.NewVGInfo(t, vgSize, "")
		n.kubeletDir = t.TempDir()
		n.sock = filepath.Join(t.TempDir(), "csi.sock")
		n.proc = r.newProc(n.name, false, lvmtest.Env(n.vg.ConfigDir), r.carve,
			"--mode=node", "--endpoint=unix://"+n.sock, "--nodeid="+n.name,
			"--pool="+poolName+"=lvm:"+n.vg.Name, "--kubelet-dir="+n.kubeletDir,
			"--kubeconfig="+r.nodeKC, "--capacity-resync=10s", "--v=2")
		r.nodes = append(r.nodes, n)
	}
	// Registered after the VGs: every process stops (sidecars first, nodes
	// last) before the VGs, loop devices and the cluster go away.
	t.Cleanup(func() {
		r.mu.Lock()
		procs := append([]*proc(nil), r.procs...)
		r.mu.Unlock()
		var starts []string
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop(syscall.SIGTERM)
			starts = append(starts, fmt.Sprintf("%s %d", procs[i].name, procs[i].startCount()))
		}
		t.Logf("processes stopped; starts: %s", strings.Join(starts, ", "))
	})
	for _, n := range r.nodes {
		r.startAndWait(t, n.proc, n.sock)
	}

	// The controller pod: carve-csi --mode=controller, external-provisioner, external-resizer.
	r.ctrlSock = filepath.Join(t.TempDir(), "csi.sock")
	r.controller = r.newProc("carve-controller", false, nil, r.carve,
		"--mode=controller", "--endpoint=unix://"+r.ctrlSock, "--kubeconfig="+r.ctrlKC, "--v=2")
	r.startAndWait(t, r.controller, r.ctrlSock)
	// The sidecars exit when they lose the CSI connection; like containers
	// with restartPolicy Always they are restarted.
	r.provisioner = r.newProc("csi-provisioner", true, []string{"NAMESPACE=" + carveNS},
		filepath.Join(r.bin, "csi-provisioner"), r.provisionerArgs(r.ctrlSock)...)
	r.resizer = r.newProc("csi-resizer", true, nil, filepath.Join(r.bin, "csi-resizer"),
		// As deploy/kubernetes/base/controller.yaml runs it: no pod informer.
		"--csi-address="+r.ctrlSock, "--kubeconfig="+r.ctrlKC, "--handle-volume-inuse-error=false",
		"--leader-election=false", "--timeout=30s", "--v=3")
	for _, p := range []*proc{r.provisioner, r.resizer} {
		if err := p.start(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("rig ready in %v: 3 nodes (VGs %s, %s, %s), controller, provisioner, resizer",
		time.Since(start).Round(time.Millisecond), r.nodes[0].vg.Name, r.nodes[1].vg.Name, r.nodes[2].vg.Name)
	return r
}

func (r *rig) provisionerArgs(sock string) []string {
	return []string{"--csi-address=" + sock, "--kubeconfig=" + r.ctrlKC,
		"--feature-gates=Topology=true", "--strict-topology", "--immediate-topology=false",
		"--enable-capacity", "--capacity-ownerref-level=-1", "--capacity-poll-interval=1s",
		"--extra-create-metadata", "--leader-election=false", "--timeout=30s", "--v=3"}
}

func withoutKubeconfig(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "KUBECONFIG=") {
			out = append(out, kv)
		}
	}
	return out
}

func (r *rig) kubectlCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(r.kubectl, args...)
	cmd.Env = append(withoutKubeconfig(os.Environ()), "KUBECONFIG="+r.admin)
	return cmd
}

func (r *rig) kubectlRun(t *testing.T, args ...string) {
	t.Helper()
	if out, err := r.kubectlCmd(args...).CombinedOutput(); err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (r *rig) kubectlOut(t *testing.T, args ...string) string {
	t.Helper()
	out, err := r.kubectlCmd(args...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func (r *rig) saKubeconfig(t *testing.T, name string) string {
	t.Helper()
	out := filepath.Join(r.dir, "sa-"+name+".kubeconfig")
	cmd := exec.Command(filepath.Join(r.root, "hack", "k8s", "cluster.sh"), "sa-kubeconfig", r.dir, carveNS, name, out)
	cmd.Env = append(withoutKubeconfig(os.Environ()), "CARVE_K8S_BIN="+r.bin)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cluster.sh sa-kubeconfig %s: %v\n%s", name, err, b)
	}
	return out
}

func (r *rig) startAndWait(t *testing.T, p *proc, sock string) {
	t.Helper()
	if err := p.start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		if !p.running() {
			t.Fatalf("%s exited at start-up:\n%s", p.name, p.tail(30))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not listen on %s after 60s:\n%s", p.name, sock, p.tail(30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dumpLogs prints the tails of every process log and of the control plane.
func (r *rig) dumpLogs(t *testing.T) {
	r.mu.Lock()
	procs := append([]*proc(nil), r.procs...)
	r.mu.Unlock()
	for _, p := range procs {
		t.Logf("----- %s (%s), last 40 lines -----\n%s", p.name, p.logPath, p.tail(40))
	}
	if r.dir == "" {
		return
	}
	for _, c := range []string{"kube-scheduler", "kube-controller-manager", "kube-apiserver"} {
		p := &proc{name: c, logPath: filepath.Join(r.dir, c+".log")}
		t.Logf("----- %s, last 15 lines -----\n%s", c, p.tail(15))
	}
}

// forbidden returns the lines of every process log that report an RBAC denial.
func (r *rig) forbidden() []string {
	r.mu.Lock()
	procs := append([]*proc(nil), r.procs...)
	r.mu.Unlock()
	var out []string
	for _, p := range procs {
		f, err := os.Open(p.logPath)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if l := sc.Text(); strings.Contains(strings.ToLower(l), "forbidden") {
				if len(l) > 400 {
					l = l[:400] + "..."
				}
				out = append(out, p.name+": "+l)
			}
		}
		f.Close()
	}
	return out
}

// ---------------------------------------------------------------------------
// Processes

// proc is a supervised process with its log in r.logs. Sidecars (restart)
// are restarted when they exit on their own, as kubelet restarts a container;
// any other unexpected exit is recorded and fails the test.
type proc struct {
	name    string
	argv    []string
	env     []string
	logPath string
	restart bool

	mu         sync.Mutex
	cmd        *exec.Cmd
	exited     chan struct{}
	stopping   bool
	starts     int
	unexpected []string
}

func (r *rig) newProc(name string, restart bool, env []string, argv0 string, args ...string) *proc {
	p := &proc{name: name, argv: append([]string{argv0}, args...), restart: restart,
		env: append(withoutKubeconfig(os.Environ()), env...), logPath: filepath.Join(r.logs, name+".log")}
	r.mu.Lock()
	r.procs = append(r.procs, p)
	r.mu.Unlock()
	return p
}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !p.exitedLocked() {
		return fmt.Errorf("%s is already running", p.name)
	}
	p.stopping = false
	return p.launchLocked()
}

func (p *proc) exitedLocked() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && !p.exitedLocked()
}

func (p *proc) launchLocked() error {
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	p.starts++
	fmt.Fprintf(f, "=== %s start #%d at %s: %s\n", p.name, p.starts, time.Now().Format("15:04:05.000"), strings.Join(p.argv, " "))
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group: a ^C to go test does not reach it before the cleanup does.
	// Pdeathsig: if go test dies without its cleanups, the process dies too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	exited := make(chan struct{})
	p.cmd, p.exited = cmd, exited
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		defer p.mu.Unlock()
		fmt.Fprintf(f, "=== %s exited at %s: %v\n", p.name, time.Now().Format("15:04:05.000"), err)
		f.Close()
		close(exited)
		if p.stopping || p.cmd != cmd {
			return
		}
		if !p.restart {
			p.unexpected = append(p.unexpected, fmt.Sprintf("%s exited unexpectedly: %v", p.name, err))
			return
		}
		go func() {
			time.Sleep(500 * time.Millisecond) // kubelet's first restart back-off is longer; keep the test quick
			p.mu.Lock()
			defer p.mu.Unlock()
			if !p.stopping && p.cmd == cmd {
				if err := p.launchLocked(); err != nil {
					p.unexpected = append(p.unexpected, err.Error())
				}
			}
		}()
	}()
	return nil
}

// stop ends the process with sig (SIGKILL for a crash) and waits for it.
// It is not restarted until start is called.
func (p *proc) stop(sig syscall.Signal) {
	p.mu.Lock()
	p.stopping = true
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGCONT) // a stopped process must run to handle SIGTERM
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// signal sends sig (SIGSTOP, SIGCONT) to the running process.
func (p *proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.exitedLocked() {
		return fmt.Errorf("%s is not running", p.name)
	}
	return p.cmd.Process.Signal(sig)
}

func (p *proc) startCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts
}

func (p *proc) unexpectedExits() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.unexpected...)
}

func (p *proc) tail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// checkProcs fails the test if a carve process died on its own or any
// process was denied a request by RBAC.
func (r *rig) checkProcs(t *testing.T) {
	t.Helper()
	if lines := r.forbidden(); len(lines) > 0 {
		t.Errorf("RBAC denied requests (deploy/kubernetes/base must grant what the programs use):\n%s", strings.Join(lines, "\n"))
	}
	r.mu.Lock()
	procs := append([]*proc(nil), r.procs...)
	r.mu.Unlock()
	for _, p := range procs {
		for _, u := range p.unexpectedExits() {
			t.Errorf("%s\n%s", u, p.tail(30))
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

// ---------------------------------------------------------------------------
// Waiting

// waitFor polls cond until it reports done or the timeout passes; the
// failure names what was awaited and the last state seen.
func waitFor(t *testing.T, what string, timeout, every time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	// Fail a minute before go test's own deadline: its panic would skip the
	// cleanups and leave processes, volume groups and loop devices behind.
	if d, ok := t.Deadline(); ok && d.Add(-time.Minute).Before(deadline) {
		deadline = d.Add(-time.Minute)
	}
	for {
		done, state := cond()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last state: %s", timeout, what, state)
		}
		time.Sleep(every)
	}
}

// ---------------------------------------------------------------------------
// LVM views

// lvs lists the LVs in a node's volume group.
func (n *node) lvs(ctx context.Context) (map[string]int64, error) {
	all, err := lvmtest.LVs(ctx, n.vg.Runner, n.vg.Name)
	if err != nil {
		return nil, err
	}
	lvs := map[string]int64{}
	for _, lv := range all {
		lvs[lv.Name] = lv.SizeBytes
	}
	return lvs, nil
}

// vgFree is the VG's free space as vgs reports it.
func (n *node) vgFree(ctx context.Context) (int64, error) {
	out, err := n.vg.Runner.Run(ctx, "lvm", "vgs", "--noheadings", "--units", "b", "--nosuffix", "-o", "vg_free", n.vg.Name)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
}

func (r *rig) node(name string) *node {
	for _, n := range r.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// Capacity views

// capRow is one node's line in the capacity table.
type capRow struct {
	Node      string
	Object    string
	Capacity  int64 // CSIStorageCapacity.capacity
	MaxVolume int64 // CSIStorageCapacity.maximumVolumeSize
	VGFree    int64 // vgs
	LVs       int
	ManagedBy string
}

// capacities reads the CSIStorageCapacity objects of class sc, one row per
// node, and each node's VG. It reports a problem when a node has no object
// or more than one, or an object belongs to no carve node.
func (r *rig) capacities(ctx context.Context, sc string) (map[string]capRow, string) {
	list, err := r.cs.StorageV1().CSIStorageCapacities(carveNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err.Error()
	}
	rows := map[string]capRow{}
	var problems []string
	for _, c := range list.Items {
		if c.StorageClassName != sc {
			continue
		}
		nodeName := ""
		if c.NodeTopology != nil {
			nodeName = c.NodeTopology.MatchLabels[topologyKey]
		}
		if r.node(nodeName) == nil {
			problems = append(problems, fmt.Sprintf("object %s has topology %v", c.Name, c.NodeTopology))
			continue
		}
		if _, dup := rows[nodeName]; dup {
			problems = append(problems, fmt.Sprintf("node %s has two objects", nodeName))
		}
		row := capRow{Node: nodeName, Object: c.Name, Capacity: -1, MaxVolume: -1, ManagedBy: c.Labels["csi.storage.k8s.io/managed-by"]}
		if c.Capacity != nil {
			row.Capacity = c.Capacity.Value()
		}
		if c.MaximumVolumeSize != nil {
			row.MaxVolume = c.MaximumVolumeSize.Value()
		}
		rows[nodeName] = row
	}
	for _, n := range r.nodes {
		row, ok := rows[n.name]
		if !ok {
			problems = append(problems, "no object for "+n.name)
			continue
		}
		free, err := n.vgFree(ctx)
		if err != nil {
			return nil, err.Error()
		}
		lvs, err := n.lvs(ctx)
		if err != nil {
			return nil, err.Error()
		}
		row.VGFree, row.LVs = free, len(lvs)
		rows[n.name] = row
	}
	return rows, strings.Join(problems, "; ")
}

// waitCapacityExact waits until every node has exactly one CSIStorageCapacity
// for carve-lvm equal to its VG's free space, and returns them.
func (r *rig) waitCapacityExact(t *testing.T, what string) map[string]capRow {
	t.Helper()
	ctx := context.Background()
	var rows map[string]capRow
	waitFor(t, "CSIStorageCapacity = VG free on every node ("+what+")", waitLong, 200*time.Millisecond, func() (bool, string) {
		var problem string
		rows, problem = r.capacities(ctx, scName)
		if problem != "" {
			return false, problem
		}
		var diffs []string
		for _, n := range r.nodes {
			if row := rows[n.name]; row.Capacity != row.VGFree {
				diffs = append(diffs, fmt.Sprintf("%s: capacity %d, vg free %d", n.name, row.Capacity, row.VGFree))
			}
		}
		return len(diffs) == 0, strings.Join(diffs, "; ")
	})
	return rows
}

// kubectlCapacities is the blog post's view: kubectl's own listing.
func (r *rig) kubectlCapacities(t *testing.T) string {
	t.Helper()
	args := []string{"get", "csistoragecapacities", "-n", carveNS, "--sort-by=.storageClassName",
		"-o", "custom-columns=NAME:.metadata.name,STORAGECLASS:.storageClassName,TOPOLOGY:.nodeTopology.matchLabels,CAPACITY:.capacity,MAXIMUMVOLUMESIZE:.maximumVolumeSize"}
	return "$ kubectl " + strings.Join(args, " ") + "\n" + r.kubectlOut(t, args...)
}

// capTable renders rows like `kubectl get csistoragecapacities` in the blog
// post, with the VG's own view beside it.
func (r *rig) capTable(title string, rows map[string]capRow, ref map[string]capRow) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", title)
	fmt.Fprintf(&b, "  %-22s %-10s %-8s %-12s %-12s %-12s %-4s %s\n", "NAME", "STORAGECLASS", "NODE", "CAPACITY", "MAXVOLUME", "VG FREE", "LVS", "CHANGE")
	for _, n := range r.nodes {
		row := rows[n.name]
		change := ""
		if ref != nil {
			if d := row.Capacity - ref[n.name].Capacity; d != 0 {
				change = fmt.Sprintf("%+dMi", d/mi)
			} else {
				change = "="
			}
		}
		fmt.Fprintf(&b, "  %-22s %-12s %-8s %-12s %-12s %-12s %-4d %s\n", row.Object, scName, n.name,
			fmt.Sprintf("%dMi", row.Capacity/mi), fmt.Sprintf("%dMi", row.MaxVolume/mi), fmt.Sprintf("%dMi", row.VGFree/mi), row.LVs, change)
	}
	return b.String()
}

// ---------------------------------------------------------------------------
// Pods and claims

func ephemeralPod(name, sc string, size int64) *corev1.Pod {
	zero := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: podNS, Labels: map[string]string{"app": "carve-demo"}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{
				Name: "app", Image: "registry.k8s.io/pause:3.10",
				VolumeMounts: []corev1.VolumeMount{{Name: "scratch", MountPath: "/scratch"}},
			}},
			Volumes: []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{
				Ephemeral: &corev1.EphemeralVolumeSource{VolumeClaimTemplate: &corev1.PersistentVolumeClaimTemplate{
					Spec: corev1.PersistentVolumeClaimSpec{
						AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
						StorageClassName: &sc,
						Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
							corev1.ResourceStorage: *resource.NewQuantity(size, resource.BinarySI)}},
					},
				}},
			}}},
		},
	}
}

// claimOf is the generic ephemeral volume's PVC name.
func claimOf(pod string) string { return pod + "-scratch" }

func (r *rig) createPod(t *testing.T, name string, size int64) time.Time {
	t.Helper()
	start := time.Now()
	if _, err := r.cs.CoreV1().Pods(podNS).Create(context.Background(), ephemeralPod(name, scName, size), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	return start
}

// waitBound waits until the pod's PVC is Bound and returns the time it was
// first seen Bound (polled every 20 ms).
func (r *rig) waitBound(t *testing.T, pod string) (*corev1.PersistentVolumeClaim, time.Time) {
	t.Helper()
	var pvc *corev1.PersistentVolumeClaim
	waitFor(t, "PVC "+claimOf(pod)+" Bound", waitLong, 20*time.Millisecond, func() (bool, string) {
		c, err := r.cs.CoreV1().PersistentVolumeClaims(podNS).Get(context.Background(), claimOf(pod), metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		pvc = c
		return c.Status.Phase == corev1.ClaimBound, fmt.Sprintf("phase %s, annotations %v; %s", c.Status.Phase, c.Annotations, r.podState(pod))
	})
	return pvc, time.Now()
}

func (r *rig) podState(name string) string {
	p, err := r.cs.CoreV1().Pods(podNS).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return "pod: " + err.Error()
	}
	s := fmt.Sprintf("pod node %q", p.Spec.NodeName)
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled {
			s += fmt.Sprintf(", PodScheduled=%s %s", c.Status, c.Message)
		}
	}
	return s
}

// waitPodNode waits until the scheduler has bound the pod and returns its node.
func (r *rig) waitPodNode(t *testing.T, pod string) string {
	t.Helper()
	var nodeName string
	waitFor(t, "pod "+pod+" scheduled", waitLong, 50*time.Millisecond, func() (bool, string) {
		p, err := r.cs.CoreV1().Pods(podNS).Get(context.Background(), pod, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		nodeName = p.Spec.NodeName
		return nodeName != "", r.podState(pod)
	})
	return nodeName
}

// pvNode is the node of a PV's required node affinity on carve's topology key.
func pvNode(pv *corev1.PersistentVolume) string {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return ""
	}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, e := range term.MatchExpressions {
			if e.Key == topologyKey && e.Operator == corev1.NodeSelectorOpIn && len(e.Values) == 1 {
				return e.Values[0]
			}
		}
	}
	return ""
}

func (r *rig) deletePod(t *testing.T, name string) time.Time {
	t.Helper()
	zero := int64(0)
	start := time.Now()
	err := r.cs.CoreV1().Pods(podNS).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil {
		t.Fatalf("delete pod %s: %v", name, err)
	}
	return start
}

// volume is one carve volume seen from every side.
type volume struct {
	Pod, PVC, PV, Node, ID string
	LVSize                 int64
}

// volumeOf checks a bound pod's volume from end to end: PV bound with node
// affinity to the pod's node, the volume handle is the LocalVolume's name,
// the LocalVolume is Ready on that node, the LV exists there with the size.
func (r *rig) volumeOf(t *testing.T, pod string, size int64) volume {
	t.Helper()
	ctx := context.Background()
	pvc, err := r.cs.CoreV1().PersistentVolumeClaims(podNS).Get(ctx, claimOf(pod), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pv, err := r.cs.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v := volume{Pod: pod, PVC: pvc.Name, PV: pv.Name, Node: pvNode(pv)}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != driverName {
		t.Fatalf("PV %s is not a %s volume: %+v", pv.Name, driverName, pv.Spec.PersistentVolumeSource)
	}
	v.ID = pv.Spec.CSI.VolumeHandle
	if v.Node == "" || r.node(v.Node) == nil {
		t.Fatalf("PV %s has no node affinity to a carve node: %+v", pv.Name, pv.Spec.NodeAffinity)
	}
	if sel := pvc.Annotations["volume.kubernetes.io/selected-node"]; sel != v.Node {
		t.Errorf("PVC %s: selected-node %q, PV on %q", pvc.Name, sel, v.Node)
	}
	if podNode := r.waitPodNode(t, pod); podNode != v.Node {
		t.Errorf("pod %s scheduled to %s, its volume is on %s", pod, podNode, v.Node)
	}
	lv := &v1alpha1.LocalVolume{}
	if err := r.cl.Get(ctx, client.ObjectKey{Name: v.ID}, lv); err != nil {
		t.Fatalf("LocalVolume %s of PV %s: %v", v.ID, pv.Name, err)
	}
	if lv.Spec.NodeName != v.Node || lv.Spec.VolumeName != pv.Name || lv.Status.Phase != v1alpha1.PhaseReady {
		t.Errorf("LocalVolume %s: node %s volumeName %s phase %s; want node %s volumeName %s Ready",
			lv.Name, lv.Spec.NodeName, lv.Spec.VolumeName, lv.Status.Phase, v.Node, pv.Name)
	}
	lvs, err := r.node(v.Node).lvs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v.LVSize = lvs[v.ID]
	if v.LVSize != size {
		t.Errorf("LV %s on %s: size %d, want %d (all LVs there: %v)", v.ID, v.Node, v.LVSize, size, lvs)
	}
	capQ := pv.Spec.Capacity[corev1.ResourceStorage]
	if capQ.Value() != size {
		t.Errorf("PV %s capacity %s, want %d", pv.Name, capQ.String(), size)
	}
	if t.Failed() {
		t.FailNow()
	}
	return v
}

// unschedulableForStorage reports the scheduler's verdict if it says the pod
// does not fit for lack of storage.
func (r *rig) unschedulableForStorage(pod string) (string, bool) {
	p, err := r.cs.CoreV1().Pods(podNS).Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil || p.Spec.NodeName != "" {
		return "", false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && strings.Contains(c.Message, "did not have enough free storage") {
			return c.Message, true
		}
	}
	return "", false
}

// events returns the events about an object, oldest first.
func (r *rig) events(ns, kind, name string) []corev1.Event {
	list, err := r.cs.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{
		FieldSelector: "involvedObject.kind=" + kind + ",involvedObject.name=" + name})
	if err != nil {
		return nil
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].LastTimestamp.Before(&list.Items[j].LastTimestamp) })
	return list.Items
}

// ---------------------------------------------------------------------------
// The leak audit

// state is every view of carve's volumes at one moment.
type state struct {
	lvs   map[string]map[string]int64 // node -> LV name -> size
	lvols []v1alpha1.LocalVolume
	pvs   []corev1.PersistentVolume // carve's
}

func (r *rig) state(ctx context.Context) (*state, error) {
	s := &state{lvs: map[string]map[string]int64{}}
	for _, n := range r.nodes {
		lvs, err := n.lvs(ctx)
		if err != nil {
			return nil, err
		}
		s.lvs[n.name] = lvs
	}
	var list v1alpha1.LocalVolumeList
	if err := r.cl.List(ctx, &list); err != nil {
		return nil, err
	}
	s.lvols = list.Items
	pvs, err := r.cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for _, pv := range pvs.Items {
		if pv.Spec.CSI != nil && pv.Spec.CSI.Driver == driverName {
			s.pvs = append(s.pvs, pv)
		}
	}
	return s, nil
}

func (s *state) lvCount() int {
	n := 0
	for _, lvs := range s.lvs {
		n += len(lvs)
	}
	return n
}

// problems lists every inconsistency between LVs, LocalVolumes and PVs, in
// controller mode: each LV has a Ready LocalVolume on its node of the same
// size and a Bound PV; each LocalVolume has its LV; none is being deleted.
func (s *state) problems() []string {
	var out []string
	lvols := map[string]v1alpha1.LocalVolume{}
	for _, lv := range s.lvols {
		lvols[lv.Name] = lv
		if lv.DeletionTimestamp != nil {
			out = append(out, fmt.Sprintf("LocalVolume %s is being deleted (finalizers %v)", lv.Name, lv.Finalizers))
		}
		size, ok := s.lvs[lv.Spec.NodeName][lv.Name]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("LocalVolume %s (node %s, phase %s) has no LV", lv.Name, lv.Spec.NodeName, lv.Status.Phase))
		case lv.Status.Phase != v1alpha1.PhaseReady:
			out = append(out, fmt.Sprintf("LocalVolume %s is %s (%s %s)", lv.Name, lv.Status.Phase, lv.Status.Code, lv.Status.Message))
		case lv.Status.CurrentSizeBytes != size:
			out = append(out, fmt.Sprintf("LocalVolume %s says %d bytes, LV has %d", lv.Name, lv.Status.CurrentSizeBytes, size))
		}
	}
	pvs := map[string]corev1.PersistentVolume{}
	for _, pv := range s.pvs {
		pvs[pv.Spec.CSI.VolumeHandle] = pv
		if _, ok := lvols[pv.Spec.CSI.VolumeHandle]; !ok {
			out = append(out, fmt.Sprintf("PV %s (%s, %s) has no LocalVolume", pv.Name, pv.Spec.CSI.VolumeHandle, pv.Status.Phase))
		}
	}
	for node, lvs := range s.lvs {
		for name := range lvs {
			lv, ok := lvols[name]
			if !ok {
				out = append(out, fmt.Sprintf("LV %s on %s has no LocalVolume", name, node))
			} else if lv.Spec.NodeName != node {
				out = append(out, fmt.Sprintf("LV %s is on %s, its LocalVolume says %s", name, node, lv.Spec.NodeName))
			}
			if pv, ok := pvs[name]; !ok {
				out = append(out, fmt.Sprintf("LV %s on %s has no PV", name, node))
			} else if pv.Status.Phase != corev1.VolumeBound {
				out = append(out, fmt.Sprintf("LV %s on %s: PV %s is %s", name, node, pv.Name, pv.Status.Phase))
			}
		}
	}
	sort.Strings(out)
	return out
}

// audit waits until LVs, LocalVolumes and PVs agree (want >= 0: that many
// volumes) and the published capacity is exact, then logs the result.
func (r *rig) audit(t *testing.T, label string, want int) *state {
	t.Helper()
	var s *state
	waitFor(t, "a consistent state ("+label+")", waitLong, 250*time.Millisecond, func() (bool, string) {
		var err error
		if s, err = r.state(context.Background()); err != nil {
			return false, err.Error()
		}
		p := s.problems()
		if want >= 0 && (s.lvCount() != want || len(s.lvols) != want || len(s.pvs) != want) {
			p = append(p, fmt.Sprintf("want %d volumes: %d LVs, %d LocalVolumes, %d PVs", want, s.lvCount(), len(s.lvols), len(s.pvs)))
		}
		return len(p) == 0, strings.Join(p, "; ")
	})
	r.waitCapacityExact(t, label)
	t.Logf("audit %s: %d LVs = %d LocalVolumes (all Ready, none being deleted) = %d bound PVs; capacity exact on every node",
		label, s.lvCount(), len(s.lvols), len(s.pvs))
	return s
}

// storageClass is a test-made class for bad input.
func storageClass(name, pool string, mode storagev1.VolumeBindingMode) *storagev1.StorageClass {
	del := corev1.PersistentVolumeReclaimDelete
	return &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: name},
		Provisioner:       driverName,
		Parameters:        map[string]string{"pool": pool},
		ReclaimPolicy:     &del,
		VolumeBindingMode: &mode,
	}
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) string { return fmt.Sprintf("%dms", d.Milliseconds()) }
