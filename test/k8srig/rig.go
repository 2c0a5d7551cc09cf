// Package k8srig runs carve's controller path on a real Kubernetes control
// plane built from source (hack/k8s): etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler with TLS and RBAC, carve's CRDs
// and RBAC applied from deploy/kubernetes/base as they are, three simulated
// nodes (Node + CSINode objects, no kubelet), each with a metadata-only LVM
// volume group on its own loop device and its own `carve-csi --mode=node`,
// and the controller: `carve-csi --mode=controller` with external-provisioner
// (--enable-capacity) and external-resizer, every program running with its
// own ServiceAccount's token.
//
// It is used by test/integration (with a *testing.T) and by `make demo`
// (hack/demo/cluster, with a small adapter): both only need T.
package k8srig

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
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
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	cexec "github.com/carve-csi/carve/pkg/exec"
	"github.com/carve-csi/carve/test/lvmtest"
)

const (
	DriverName  = "carve.csi.dev"
	TopologyKey = "carve.csi.dev/node"
	CarveNS     = "carve-system" // namespace of deploy/kubernetes/base
	PodNS       = "default"
	SCName      = "carve-lvm" // from deploy/kubernetes/base/storageclasses.yaml
	PoolName    = "lvm"       // that class's pool
	NodeCount   = 3

	Mi     = int64(1) << 20
	Gi     = int64(1) << 30
	VGSize = 20 * Gi

	// WaitLong bounds every wait for the cluster to converge. The machines
	// are small and shared: generous, and never a fixed sleep.
	WaitLong = 90 * time.Second
)

// T is what the rig needs from its caller: *testing.T has it, and a command
// can implement it (Fatalf and FailNow run the cleanups and exit).
type T interface {
	Helper()
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	FailNow()
	Failed() bool
	Cleanup(func())
}

// Config says what to start. Bin and Carve are required.
type Config struct {
	Root  string // repository root (default: this checkout)
	Bin   string // rig binaries (.cache/k8s/bin)
	Carve string // carve-csi binary
	Logs  string // keep process logs here (default: a temporary folder, removed)
	// NodeArgs are extra carve-csi --mode=node flags (e.g. --vmodule=exec=5
	// to log every lvm2 command).
	NodeArgs []string
}

// Rig is the running cluster, the carve processes and the sidecars.
type Rig struct {
	Root    string // repository root
	Bin     string // rig binaries (.cache/k8s/bin)
	Dir     string // cluster folder (cluster.sh up)
	Logs    string // process logs
	Admin   string // admin kubeconfig
	Kubectl string

	CS *kubernetes.Clientset // admin, for the caller's own checks
	CL client.Client         // admin, for LocalVolume and NodeStorage

	CtrlKC, NodeKC string // ServiceAccount kubeconfigs: carve-system/carve-controller, carve-system/carve-node
	Carve          string // carve-csi binary

	Nodes       []*Node
	CtrlSock    string
	Controller  *Proc
	Provisioner *Proc
	Resizer     *Proc
	Distributed []*Proc // per-node external-provisioners (--node-deployment)

	mu    sync.Mutex
	procs []*Proc // every process, for log tails and the forbidden scan
}

// Node is one simulated node: a Node object, a VG, a carve-csi --mode=node.
type Node struct {
	Name       string
	VG         *lvmtest.VG
	Sock       string
	KubeletDir string
	Proc       *Proc
}

// ---------------------------------------------------------------------------
// Set-up

// RepoRoot is the root of the checkout this package was built from.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Binaries lists the programs the rig needs in its bin folder.
var Binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "csi-provisioner", "csi-resizer"}

// tempDir is t.TempDir for any T: removed at cleanup (LIFO like the rest).
func tempDir(t T, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// New starts everything; t.Cleanup stops it all (processes, cluster, VGs,
// loop devices, folders), also when the caller fails half-way.
func New(t T, cfg Config) *Rig {
	t.Helper()
	r := &Rig{Root: cfg.Root, Bin: cfg.Bin, Carve: cfg.Carve}
	if r.Root == "" {
		r.Root = RepoRoot()
	}
	root := r.Root
	r.Kubectl = filepath.Join(r.Bin, "kubectl")

	// The cluster folder first: its removal runs after every cleanup
	// registered later, so DumpLogs below still finds the component logs.
	r.Dir = tempDir(t, "carve-rig-cluster")
	r.Logs = cfg.Logs
	if r.Logs == "" {
		r.Logs = tempDir(t, "carve-rig-logs")
	} else if err := os.MkdirAll(r.Logs, 0o755); err != nil {
		t.Fatalf("%v", err)
	}
	// Registered before the processes: runs after they stopped.
	t.Cleanup(func() {
		if t.Failed() {
			r.DumpLogs(t)
		}
	})

	// external-provisioner and external-resizer write /dev/termination-log
	// when they lose the CSI connection (crash steps make them): remove it
	// afterwards unless it was there before.
	const termLog = "/dev/termination-log"
	if _, err := os.Stat(termLog); os.IsNotExist(err) {
		t.Cleanup(func() { _ = os.Remove(termLog) })
	}

	start := time.Now()
	t.Cleanup(func() {
		out, err := exec.Command(filepath.Join(root, "hack", "k8s", "cluster.sh"), "down", r.Dir).CombinedOutput()
		if err != nil {
			t.Errorf("cluster.sh down: %v\n%s", err, out)
		}
	})
	up := exec.Command(filepath.Join(root, "hack", "k8s", "cluster.sh"), "up", r.Dir)
	up.Env = append(withoutKubeconfig(os.Environ()), "CARVE_K8S_BIN="+r.Bin, "CARVE_K8S_TIMEOUT=180")
	if out, err := up.CombinedOutput(); err != nil {
		t.Fatalf("cluster.sh up: %v\n%s", err, out)
	}
	r.Admin = filepath.Join(r.Dir, "admin.kubeconfig")
	t.Logf("control plane up in %v (%s)", time.Since(start).Round(time.Millisecond), r.Dir)

	cfgREST, err := clientcmd.BuildConfigFromFlags("", r.Admin)
	if err != nil {
		t.Fatalf("%v", err)
	}
	cfgREST.QPS, cfgREST.Burst = 200, 400
	if r.CS, err = kubernetes.NewForConfig(cfgREST); err != nil {
		t.Fatalf("%v", err)
	}
	scheme := kruntime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatalf("%v", err)
	}
	if r.CL, err = client.New(cfgREST, client.Options{Scheme: scheme}); err != nil {
		t.Fatalf("%v", err)
	}

	// carve's manifests as they are: namespace, CRDs, CSIDriver, StorageClasses, RBAC.
	base := filepath.Join(root, "deploy", "kubernetes", "base")
	r.KubectlRun(t, "apply", "-f", filepath.Join(base, "namespace.yaml"))
	r.KubectlRun(t, "apply", "-f", filepath.Join(base, "crds"), "-f", filepath.Join(base, "csidriver.yaml"),
		"-f", filepath.Join(base, "storageclasses.yaml"))
	// The RBAC files leave namespaces to kustomize (namespace: carve-system).
	r.KubectlRun(t, "apply", "-n", CarveNS, "-f", filepath.Join(base, "rbac-controller.yaml"),
		"-f", filepath.Join(base, "rbac-node.yaml"))
	r.KubectlRun(t, "wait", "--for=condition=established", "--timeout=60s",
		"crd/localvolumes.carve.csi.dev", "crd/localsnapshots.carve.csi.dev", "crd/nodestorages.carve.csi.dev")
	r.CtrlKC = r.saKubeconfig(t, "carve-controller")
	r.NodeKC = r.saKubeconfig(t, "carve-node")
	for _, sa := range []struct{ kc, want string }{{r.CtrlKC, "carve-controller"}, {r.NodeKC, "carve-node"}} {
		who := r.KubectlOut(t, "--kubeconfig", sa.kc, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
		if who != "system:serviceaccount:"+CarveNS+":"+sa.want {
			t.Fatalf("kubeconfig %s authenticates as %q", sa.kc, who)
		}
	}

	// Three nodes, each with its own volume group on its own loop device and
	// its own carve-csi --mode=node.
	for i := 1; i <= NodeCount; i++ {
		n := &Node{Name: fmt.Sprintf("node-%d", i)}
		out, err := exec.Command(filepath.Join(root, "hack", "k8s", "cluster.sh"), "add-node", r.Dir, n.Name, DriverName).CombinedOutput()
		if err != nil {
			t.Fatalf("cluster.sh add-node %s: %v\n%s", n.Name, err, out)
		}
		n.VG = NewVG(t, VGSize)
		n.KubeletDir = tempDir(t, "carve-rig-kubelet")
		n.Sock = filepath.Join(tempDir(t, "carve-rig-sock"), "csi.sock")
		args := append([]string{"--mode=node", "--endpoint=unix://" + n.Sock, "--nodeid=" + n.Name,
			"--pool=" + PoolName + "=lvm:" + n.VG.Name, "--kubelet-dir=" + n.KubeletDir,
			"--kubeconfig=" + r.NodeKC, "--capacity-resync=10s", "--v=2"}, cfg.NodeArgs...)
		n.Proc = r.NewProc(n.Name, false, lvmtest.Env(n.VG.ConfigDir), r.Carve, args...)
		r.Nodes = append(r.Nodes, n)
	}
	// Registered after the VGs: every process stops (sidecars first, nodes
	// last) before the VGs, loop devices and the cluster go away.
	t.Cleanup(func() {
		r.mu.Lock()
		procs := append([]*Proc(nil), r.procs...)
		r.mu.Unlock()
		var starts []string
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].Stop(syscall.SIGTERM)
			starts = append(starts, fmt.Sprintf("%s %d", procs[i].Name, procs[i].StartCount()))
		}
		t.Logf("processes stopped; starts: %s", strings.Join(starts, ", "))
	})
	for _, n := range r.Nodes {
		r.StartAndWait(t, n.Proc, n.Sock)
	}

	// The controller pod: carve-csi --mode=controller, external-provisioner, external-resizer.
	r.CtrlSock = filepath.Join(tempDir(t, "carve-rig-sock"), "csi.sock")
	r.Controller = r.NewProc("carve-controller", false, nil, r.Carve,
		"--mode=controller", "--endpoint=unix://"+r.CtrlSock, "--kubeconfig="+r.CtrlKC, "--v=2")
	r.StartAndWait(t, r.Controller, r.CtrlSock)
	r.waitControllerSeesNodes(t)
	// The sidecars exit when they lose the CSI connection; like containers
	// with restartPolicy Always they are restarted.
	r.Provisioner = r.NewProc("csi-provisioner", true, []string{"NAMESPACE=" + CarveNS},
		filepath.Join(r.Bin, "csi-provisioner"), r.ProvisionerArgs(t, r.CtrlSock)...)
	r.Resizer = r.NewProc("csi-resizer", true, nil, filepath.Join(r.Bin, "csi-resizer"),
		r.SidecarArgs(t, "csi-resizer", r.CtrlSock)...)
	for _, p := range []*Proc{r.Provisioner, r.Resizer} {
		if err := p.Start(); err != nil {
			t.Fatalf("%v", err)
		}
	}
	t.Logf("rig ready in %v: 3 nodes (VGs %s, %s, %s), controller, provisioner, resizer",
		time.Since(start).Round(time.Millisecond), r.Nodes[0].VG.Name, r.Nodes[1].VG.Name, r.Nodes[2].VG.Name)
	return r
}

// NewVG makes a metadata-only volume group of sizeBytes on a fresh loop
// device over a sparse file (see test/lvmtest) and removes VG, PV, loop
// device and file at cleanup. Only 8 loop devices exist on the machines carve
// is tested on: when none is free it fails with the devices in use.
func NewVG(t T, sizeBytes int64) *lvmtest.VG {
	t.Helper()
	dir := tempDir(t, "carve-rig-vg")
	file := filepath.Join(dir, "backing.img")
	f, err := os.Create(file)
	if err != nil {
		t.Fatalf("%v", err)
	}
	if err := f.Truncate(sizeBytes); err != nil {
		t.Fatalf("%v", err)
	}
	f.Close()
	out, err := exec.Command("losetup", "-f", "--show", file).CombinedOutput()
	if err != nil {
		used, _ := exec.Command("losetup", "-a").CombinedOutput()
		t.Fatalf("no free loop device for a node's volume group (losetup -f --show: %v: %s); the rig needs 3, in use now:\n%s",
			err, strings.TrimSpace(string(out)), strings.TrimSpace(string(used)))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	if err := lvmtest.WriteConfig(dir, dev); err != nil {
		t.Fatalf("%v", err)
	}
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("%v", err)
	}
	v := &lvmtest.VG{Name: "carvetest" + hex.EncodeToString(b[:]), LoopDev: dev, ConfigDir: dir,
		Runner: &cexec.Host{Env: lvmtest.Env(dir)}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := v.Runner.Run(ctx, "lvm", "pvcreate", "-y", dev); err != nil {
		t.Fatalf("pvcreate: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := v.Runner.Run(ctx, "lvm", "pvremove", "-y", "-ff", dev); err != nil {
			t.Errorf("pvremove: %v", err)
		}
	})
	if _, err := v.Runner.Run(ctx, "lvm", "vgcreate", "-y", v.Name, dev); err != nil {
		t.Fatalf("vgcreate: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := v.Runner.Run(ctx, "lvm", "vgremove", "-f", v.Name); err != nil {
			t.Errorf("vgremove: %v", err)
		}
	})
	return v
}

// ProvisionerArgs are external-provisioner's flags as
// deploy/kubernetes/base/controller.yaml ships them (see SidecarArgs).
func (r *Rig) ProvisionerArgs(t T, sock string) []string {
	return r.SidecarArgs(t, "csi-provisioner", sock)
}

// SidecarArgs are the flags of the named container of the controller
// StatefulSet in deploy/kubernetes/base/controller.yaml, so that the rig runs
// every sidecar as the manifests ship it (a faster capacity poll than the
// shipped one hid capacity that lagged behind CreateVolume, issue 12). Only
// what a process outside a pod must differ in is replaced: the socket, a
// kubeconfig, no leader election (one replica, no Lease permissions
// needed), no owner for CSIStorageCapacity (there is no pod to own it) and
// log verbosity 3.
func (r *Rig) SidecarArgs(t T, container, sock string) []string {
	t.Helper()
	file := filepath.Join(r.Root, "deploy", "kubernetes", "base", "controller.yaml")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v", err)
	}
	var sts appsv1.StatefulSet
	if err := yaml.UnmarshalStrict(data, &sts); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	replace := map[string]string{
		"--csi-address": "--csi-address=" + sock, "--leader-election": "--leader-election=false",
		"--capacity-ownerref-level": "--capacity-ownerref-level=-1", "--v": "--v=3",
	}
	for _, c := range sts.Spec.Template.Spec.Containers {
		if c.Name != container {
			continue
		}
		args := []string{"--kubeconfig=" + r.CtrlKC}
		for _, a := range c.Args {
			if with, ok := replace[strings.SplitN(a, "=", 2)[0]]; ok {
				a = with
			}
			args = append(args, a)
		}
		return args
	}
	t.Fatalf("%s has no container %q", file, container)
	return nil
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

func (r *Rig) KubectlCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(r.Kubectl, args...)
	cmd.Env = append(withoutKubeconfig(os.Environ()), "KUBECONFIG="+r.Admin)
	return cmd
}

func (r *Rig) KubectlRun(t T, args ...string) {
	t.Helper()
	if out, err := r.KubectlCmd(args...).CombinedOutput(); err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (r *Rig) KubectlOut(t T, args ...string) string {
	t.Helper()
	out, err := r.KubectlCmd(args...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func (r *Rig) saKubeconfig(t T, name string) string {
	t.Helper()
	out := filepath.Join(r.Dir, "sa-"+name+".kubeconfig")
	cmd := exec.Command(filepath.Join(r.Root, "hack", "k8s", "cluster.sh"), "sa-kubeconfig", r.Dir, CarveNS, name, out)
	cmd.Env = append(withoutKubeconfig(os.Environ()), "CARVE_K8S_BIN="+r.Bin)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cluster.sh sa-kubeconfig %s: %v\n%s", name, err, b)
	}
	return out
}

func (r *Rig) StartAndWait(t T, p *Proc, sock string) {
	t.Helper()
	if err := p.Start(); err != nil {
		t.Fatalf("%v", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		if !p.Running() {
			t.Fatalf("%s exited at start-up:\n%s", p.Name, p.Tail(30))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not listen on %s after 60s:\n%s", p.Name, sock, p.Tail(30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitControllerSeesNodes waits until the controller offers capacity in
// PoolName on every node: each carve-node has published its NodeStorage and
// the controller's caches hold it and the Node. Until then a CreateVolume
// for a node is Unavailable (cluster.ErrNotPublished), which a test calling
// the controller at once took for a failure.
func (r *Rig) waitControllerSeesNodes(t T) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+r.CtrlSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial the controller: %v", err)
	}
	defer conn.Close()
	c := csi.NewControllerClient(conn)
	deadline := time.Now().Add(60 * time.Second)
	for _, n := range r.Nodes {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"pool": PoolName},
				AccessibleTopology: &csi.Topology{Segments: map[string]string{TopologyKey: n.Name}}})
			cancel()
			if err == nil && resp.GetAvailableCapacity() > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the controller offers no capacity on %s after 60s (last: %v, %v):\n%s", n.Name, resp, err, n.Proc.Tail(30))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// dumpLogs prints the tails of every process log and of the control plane.
func (r *Rig) DumpLogs(t T) {
	r.mu.Lock()
	procs := append([]*Proc(nil), r.procs...)
	r.mu.Unlock()
	for _, p := range procs {
		t.Logf("----- %s (%s), last 40 lines -----\n%s", p.Name, p.LogPath, p.Tail(40))
	}
	if r.Dir == "" {
		return
	}
	for _, c := range []string{"kube-scheduler", "kube-controller-manager", "kube-apiserver"} {
		p := &Proc{Name: c, LogPath: filepath.Join(r.Dir, c+".log")}
		t.Logf("----- %s, last 15 lines -----\n%s", c, p.Tail(15))
	}
}

// forbidden returns the lines of every process log that report an RBAC denial.
func (r *Rig) Forbidden() []string {
	r.mu.Lock()
	procs := append([]*Proc(nil), r.procs...)
	r.mu.Unlock()
	var out []string
	for _, p := range procs {
		f, err := os.Open(p.LogPath)
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
				out = append(out, p.Name+": "+l)
			}
		}
		f.Close()
	}
	return out
}

// ---------------------------------------------------------------------------
// Processes

// proc is a supervised process with its log in r.Logs. Sidecars (restart)
// are restarted when they exit on their own, as kubelet restarts a container;
// any other unexpected exit is recorded and fails the test.
type Proc struct {
	Name    string
	argv    []string
	env     []string
	LogPath string
	restart bool

	mu         sync.Mutex
	cmd        *exec.Cmd
	exited     chan struct{}
	stopping   bool
	starts     int
	unexpected []string
}

func (r *Rig) NewProc(name string, restart bool, env []string, argv0 string, args ...string) *Proc {
	p := &Proc{Name: name, argv: append([]string{argv0}, args...), restart: restart,
		env: append(withoutKubeconfig(os.Environ()), env...), LogPath: filepath.Join(r.Logs, name+".log")}
	r.mu.Lock()
	r.procs = append(r.procs, p)
	r.mu.Unlock()
	return p
}

func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !p.exitedLocked() {
		return fmt.Errorf("%s is already running", p.Name)
	}
	p.stopping = false
	return p.launchLocked()
}

func (p *Proc) exitedLocked() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && !p.exitedLocked()
}

func (p *Proc) launchLocked() error {
	f, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	p.starts++
	fmt.Fprintf(f, "=== %s start #%d at %s: %s\n", p.Name, p.starts, time.Now().Format("15:04:05.000"), strings.Join(p.argv, " "))
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group: a ^C to go test does not reach it before the cleanup does.
	// Pdeathsig: if go test dies without its cleanups, the process dies too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	exited := make(chan struct{})
	p.cmd, p.exited = cmd, exited
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		defer p.mu.Unlock()
		fmt.Fprintf(f, "=== %s exited at %s: %v\n", p.Name, time.Now().Format("15:04:05.000"), err)
		f.Close()
		close(exited)
		if p.stopping || p.cmd != cmd {
			return
		}
		if !p.restart {
			p.unexpected = append(p.unexpected, fmt.Sprintf("%s exited unexpectedly: %v", p.Name, err))
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
func (p *Proc) Stop(sig syscall.Signal) {
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
func (p *Proc) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.exitedLocked() {
		return fmt.Errorf("%s is not running", p.Name)
	}
	return p.cmd.Process.Signal(sig)
}

func (p *Proc) StartCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts
}

func (p *Proc) UnexpectedExits() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.unexpected...)
}

func (p *Proc) Tail(n int) string {
	b, err := os.ReadFile(p.LogPath)
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
func (r *Rig) CheckProcs(t T) {
	t.Helper()
	if lines := r.Forbidden(); len(lines) > 0 {
		t.Errorf("RBAC denied requests (deploy/kubernetes/base must grant what the programs use):\n%s", strings.Join(lines, "\n"))
	}
	r.mu.Lock()
	procs := append([]*Proc(nil), r.procs...)
	r.mu.Unlock()
	for _, p := range procs {
		for _, u := range p.UnexpectedExits() {
			t.Errorf("%s\n%s", u, p.Tail(30))
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
func WaitFor(t T, what string, timeout, every time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	// Fail a minute before go test's own deadline: its panic would skip the
	// cleanups and leave processes, volume groups and loop devices behind.
	if dl, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if d, ok := dl.Deadline(); ok && d.Add(-time.Minute).Before(deadline) {
			deadline = d.Add(-time.Minute)
		}
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
func (n *Node) LVs(ctx context.Context) (map[string]int64, error) {
	all, err := lvmtest.LVs(ctx, n.VG.Runner, n.VG.Name)
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
func (n *Node) VGFree(ctx context.Context) (int64, error) {
	out, err := n.VG.Runner.Run(ctx, "lvm", "vgs", "--noheadings", "--units", "b", "--nosuffix", "-o", "vg_free", n.VG.Name)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
}

func (r *Rig) Node(name string) *Node {
	for _, n := range r.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// Capacity views

// CapRow is one node's line in the capacity table.
type CapRow struct {
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
func (r *Rig) Capacities(ctx context.Context, sc string) (map[string]CapRow, string) {
	list, err := r.CS.StorageV1().CSIStorageCapacities(CarveNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err.Error()
	}
	rows := map[string]CapRow{}
	var problems []string
	for _, c := range list.Items {
		if c.StorageClassName != sc {
			continue
		}
		nodeName := ""
		if c.NodeTopology != nil {
			nodeName = c.NodeTopology.MatchLabels[TopologyKey]
		}
		if r.Node(nodeName) == nil {
			problems = append(problems, fmt.Sprintf("object %s has topology %v", c.Name, c.NodeTopology))
			continue
		}
		if _, dup := rows[nodeName]; dup {
			problems = append(problems, fmt.Sprintf("node %s has two objects", nodeName))
		}
		row := CapRow{Node: nodeName, Object: c.Name, Capacity: -1, MaxVolume: -1, ManagedBy: c.Labels["csi.storage.k8s.io/managed-by"]}
		if c.Capacity != nil {
			row.Capacity = c.Capacity.Value()
		}
		if c.MaximumVolumeSize != nil {
			row.MaxVolume = c.MaximumVolumeSize.Value()
		}
		rows[nodeName] = row
	}
	for _, n := range r.Nodes {
		row, ok := rows[n.Name]
		if !ok {
			problems = append(problems, "no object for "+n.Name)
			continue
		}
		free, err := n.VGFree(ctx)
		if err != nil {
			return nil, err.Error()
		}
		lvs, err := n.LVs(ctx)
		if err != nil {
			return nil, err.Error()
		}
		row.VGFree, row.LVs = free, len(lvs)
		rows[n.Name] = row
	}
	return rows, strings.Join(problems, "; ")
}

// waitCapacityExact waits until every node has exactly one CSIStorageCapacity
// for carve-lvm equal to its VG's free space, and returns them.
func (r *Rig) WaitCapacityExact(t T, what string) map[string]CapRow {
	t.Helper()
	ctx := context.Background()
	var rows map[string]CapRow
	WaitFor(t, "CSIStorageCapacity = VG free on every node ("+what+")", WaitLong, 200*time.Millisecond, func() (bool, string) {
		var problem string
		rows, problem = r.Capacities(ctx, SCName)
		if problem != "" {
			return false, problem
		}
		var diffs []string
		for _, n := range r.Nodes {
			if row := rows[n.Name]; row.Capacity != row.VGFree {
				diffs = append(diffs, fmt.Sprintf("%s: capacity %d, vg free %d", n.Name, row.Capacity, row.VGFree))
			}
		}
		return len(diffs) == 0, strings.Join(diffs, "; ")
	})
	return rows
}

// kubectlCapacities is the blog post's view: kubectl's own listing.
func (r *Rig) KubectlCapacities(t T) string {
	t.Helper()
	args := []string{"get", "csistoragecapacities", "-n", CarveNS, "--sort-by=.storageClassName",
		"-o", "custom-columns=NAME:.metadata.name,STORAGECLASS:.storageClassName,TOPOLOGY:.nodeTopology.matchLabels,CAPACITY:.capacity,MAXIMUMVOLUMESIZE:.maximumVolumeSize"}
	return "$ kubectl " + strings.Join(args, " ") + "\n" + r.KubectlOut(t, args...)
}

// capTable renders rows like `kubectl get csistoragecapacities` in the blog
// post, with the VG's own view beside it.
func (r *Rig) CapTable(title string, rows map[string]CapRow, ref map[string]CapRow) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", title)
	fmt.Fprintf(&b, "  %-22s %-10s %-8s %-12s %-12s %-12s %-4s %s\n", "NAME", "STORAGECLASS", "NODE", "CAPACITY", "MAXVOLUME", "VG FREE", "LVS", "CHANGE")
	for _, n := range r.Nodes {
		row := rows[n.Name]
		change := ""
		if ref != nil {
			if d := row.Capacity - ref[n.Name].Capacity; d != 0 {
				change = fmt.Sprintf("%+dMi", d/Mi)
			} else {
				change = "="
			}
		}
		fmt.Fprintf(&b, "  %-22s %-12s %-8s %-12s %-12s %-12s %-4d %s\n", row.Object, SCName, n.Name,
			fmt.Sprintf("%dMi", row.Capacity/Mi), fmt.Sprintf("%dMi", row.MaxVolume/Mi), fmt.Sprintf("%dMi", row.VGFree/Mi), row.LVs, change)
	}
	return b.String()
}

// ---------------------------------------------------------------------------
// Pods and claims

func EphemeralPod(name, sc string, size int64) *corev1.Pod {
	zero := int64(0)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: PodNS, Labels: map[string]string{"app": "carve-demo"}},
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
func ClaimOf(pod string) string { return pod + "-scratch" }

func (r *Rig) CreatePod(t T, name string, size int64) time.Time {
	t.Helper()
	start := time.Now()
	if _, err := r.CS.CoreV1().Pods(PodNS).Create(context.Background(), EphemeralPod(name, SCName, size), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	return start
}

// waitBound waits until the pod's PVC is Bound and returns the time it was
// first seen Bound (polled every 20 ms).
func (r *Rig) WaitBound(t T, pod string) (*corev1.PersistentVolumeClaim, time.Time) {
	t.Helper()
	var pvc *corev1.PersistentVolumeClaim
	WaitFor(t, "PVC "+ClaimOf(pod)+" Bound", WaitLong, 20*time.Millisecond, func() (bool, string) {
		c, err := r.CS.CoreV1().PersistentVolumeClaims(PodNS).Get(context.Background(), ClaimOf(pod), metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		pvc = c
		return c.Status.Phase == corev1.ClaimBound, fmt.Sprintf("phase %s, annotations %v; %s", c.Status.Phase, c.Annotations, r.PodState(pod))
	})
	return pvc, time.Now()
}

func (r *Rig) PodState(name string) string {
	p, err := r.CS.CoreV1().Pods(PodNS).Get(context.Background(), name, metav1.GetOptions{})
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
func (r *Rig) WaitPodNode(t T, pod string) string {
	t.Helper()
	var nodeName string
	WaitFor(t, "pod "+pod+" scheduled", WaitLong, 50*time.Millisecond, func() (bool, string) {
		p, err := r.CS.CoreV1().Pods(PodNS).Get(context.Background(), pod, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		nodeName = p.Spec.NodeName
		return nodeName != "", r.PodState(pod)
	})
	return nodeName
}

// pvNode is the node of a PV's required node affinity on carve's topology key.
func PVNode(pv *corev1.PersistentVolume) string {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return ""
	}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, e := range term.MatchExpressions {
			if e.Key == TopologyKey && e.Operator == corev1.NodeSelectorOpIn && len(e.Values) == 1 {
				return e.Values[0]
			}
		}
	}
	return ""
}

func (r *Rig) DeletePod(t T, name string) time.Time {
	t.Helper()
	zero := int64(0)
	start := time.Now()
	err := r.CS.CoreV1().Pods(PodNS).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil {
		t.Fatalf("delete pod %s: %v", name, err)
	}
	return start
}

// volume is one carve volume seen from every side.
type Volume struct {
	Pod, PVC, PV, Node, ID string
	LVSize                 int64
}

// volumeOf checks a bound pod's volume from end to end: PV bound with node
// affinity to the pod's node, the volume handle is the LocalVolume's name,
// the LocalVolume is Ready on that node, the LV exists there with the size.
func (r *Rig) VolumeOf(t T, pod string, size int64) Volume {
	t.Helper()
	ctx := context.Background()
	pvc, err := r.CS.CoreV1().PersistentVolumeClaims(PodNS).Get(ctx, ClaimOf(pod), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("%v", err)
	}
	pv, err := r.CS.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("%v", err)
	}
	v := Volume{Pod: pod, PVC: pvc.Name, PV: pv.Name, Node: PVNode(pv)}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != DriverName {
		t.Fatalf("PV %s is not a %s volume: %+v", pv.Name, DriverName, pv.Spec.PersistentVolumeSource)
	}
	v.ID = pv.Spec.CSI.VolumeHandle
	if v.Node == "" || r.Node(v.Node) == nil {
		t.Fatalf("PV %s has no node affinity to a carve node: %+v", pv.Name, pv.Spec.NodeAffinity)
	}
	if sel := pvc.Annotations["volume.kubernetes.io/selected-node"]; sel != v.Node {
		t.Errorf("PVC %s: selected-node %q, PV on %q", pvc.Name, sel, v.Node)
	}
	if podNode := r.WaitPodNode(t, pod); podNode != v.Node {
		t.Errorf("pod %s scheduled to %s, its volume is on %s", pod, podNode, v.Node)
	}
	lv := &v1alpha1.LocalVolume{}
	if err := r.CL.Get(ctx, client.ObjectKey{Name: v.ID}, lv); err != nil {
		t.Fatalf("LocalVolume %s of PV %s: %v", v.ID, pv.Name, err)
	}
	if lv.Spec.NodeName != v.Node || lv.Spec.VolumeName != pv.Name || lv.Status.Phase != v1alpha1.PhaseReady {
		t.Errorf("LocalVolume %s: node %s volumeName %s phase %s; want node %s volumeName %s Ready",
			lv.Name, lv.Spec.NodeName, lv.Spec.VolumeName, lv.Status.Phase, v.Node, pv.Name)
	}
	lvs, err := r.Node(v.Node).LVs(ctx)
	if err != nil {
		t.Fatalf("%v", err)
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
func (r *Rig) UnschedulableForStorage(pod string) (string, bool) {
	p, err := r.CS.CoreV1().Pods(PodNS).Get(context.Background(), pod, metav1.GetOptions{})
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
func (r *Rig) Events(ns, kind, name string) []corev1.Event {
	list, err := r.CS.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{
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
type State struct {
	LVs   map[string]map[string]int64 // node -> LV name -> size
	LVols []v1alpha1.LocalVolume
	PVs   []corev1.PersistentVolume // carve's
}

func (r *Rig) State(ctx context.Context) (*State, error) {
	s := &State{LVs: map[string]map[string]int64{}}
	for _, n := range r.Nodes {
		lvs, err := n.LVs(ctx)
		if err != nil {
			return nil, err
		}
		s.LVs[n.Name] = lvs
	}
	var list v1alpha1.LocalVolumeList
	if err := r.CL.List(ctx, &list); err != nil {
		return nil, err
	}
	s.LVols = list.Items
	pvs, err := r.CS.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for _, pv := range pvs.Items {
		if pv.Spec.CSI != nil && pv.Spec.CSI.Driver == DriverName {
			s.PVs = append(s.PVs, pv)
		}
	}
	return s, nil
}

func (s *State) LVCount() int {
	n := 0
	for _, lvs := range s.LVs {
		n += len(lvs)
	}
	return n
}

// problems lists every inconsistency between LVs, LocalVolumes and PVs, in
// controller mode: each LV has a Ready LocalVolume on its node of the same
// size and a Bound PV; each LocalVolume has its LV; none is being deleted.
func (s *State) Problems() []string {
	var out []string
	lvols := map[string]v1alpha1.LocalVolume{}
	for _, lv := range s.LVols {
		lvols[lv.Name] = lv
		if lv.DeletionTimestamp != nil {
			out = append(out, fmt.Sprintf("LocalVolume %s is being deleted (finalizers %v)", lv.Name, lv.Finalizers))
		}
		size, ok := s.LVs[lv.Spec.NodeName][lv.Name]
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
	for _, pv := range s.PVs {
		pvs[pv.Spec.CSI.VolumeHandle] = pv
		if _, ok := lvols[pv.Spec.CSI.VolumeHandle]; !ok {
			out = append(out, fmt.Sprintf("PV %s (%s, %s) has no LocalVolume", pv.Name, pv.Spec.CSI.VolumeHandle, pv.Status.Phase))
		}
	}
	for node, lvs := range s.LVs {
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
func (r *Rig) Audit(t T, label string, want int) *State {
	t.Helper()
	var s *State
	WaitFor(t, "a consistent state ("+label+")", WaitLong, 250*time.Millisecond, func() (bool, string) {
		var err error
		if s, err = r.State(context.Background()); err != nil {
			return false, err.Error()
		}
		p := s.Problems()
		if want >= 0 && (s.LVCount() != want || len(s.LVols) != want || len(s.PVs) != want) {
			p = append(p, fmt.Sprintf("want %d volumes: %d LVs, %d LocalVolumes, %d PVs", want, s.LVCount(), len(s.LVols), len(s.PVs)))
		}
		return len(p) == 0, strings.Join(p, "; ")
	})
	r.WaitCapacityExact(t, label)
	t.Logf("audit %s: %d LVs = %d LocalVolumes (all Ready, none being deleted) = %d bound PVs; capacity exact on every node",
		label, s.LVCount(), len(s.LVols), len(s.PVs))
	return s
}

// storageClass is a test-made class for bad input.
func StorageClass(name, pool string, mode storagev1.VolumeBindingMode) *storagev1.StorageClass {
	del := corev1.PersistentVolumeReclaimDelete
	return &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: name},
		Provisioner:       DriverName,
		Parameters:        map[string]string{"pool": pool},
		ReclaimPolicy:     &del,
		VolumeBindingMode: &mode,
	}
}

func Median(ds []time.Duration) time.Duration {
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

func MS(d time.Duration) string { return fmt.Sprintf("%dms", d.Milliseconds()) }
