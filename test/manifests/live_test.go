package manifests

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// proc is a program the test started; stop ends it by its pid.
type proc struct {
	name, log string
	cmd       *exec.Cmd
	done      chan struct{}
}

func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (c *cluster) start(t *testing.T, dir, name string, env []string, path string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path, args...)
	// Without KUBECONFIG: external-provisioner prefers it over --kubeconfig (hack/k8s/README).
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KUBECONFIG=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(p.stop) // runs before the cluster's down: clients first
	return p
}

// withArgs replaces the manifest's --csi-address and adds what running
// outside a pod needs (a kubeconfig instead of the in-cluster token).
func withArgs(args []string, sock, kc string) []string {
	var out []string
	for _, a := range args {
		switch {
		case strings.HasPrefix(a, "--csi-address="):
			out = append(out, "--csi-address="+sock)
		case strings.HasPrefix(a, "--endpoint="):
			out = append(out, "--endpoint=unix://"+sock)
		default:
			out = append(out, a)
		}
	}
	return append(out, "--kubeconfig="+kc)
}

func forbiddenLines(t *testing.T, p *proc) []string {
	t.Helper()
	f, err := os.Open(p.log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.Contains(strings.ToLower(l), "forbidden") {
			lines = append(lines, p.name+": "+l)
		}
	}
	return lines
}

func tail(p *proc) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// liveController runs the controller pod's programs with exactly the
// manifest's arguments, as the carve-controller ServiceAccount, leader
// election on, next to the StatefulSet's (never started) pod: the paths the
// integration test leaves out (Leases, the owner lookup of
// --capacity-ownerref-level=1, CSIStorageCapacity in carve-system) must work
// with the granted rules and log no RBAC denial.
func (c *cluster) liveController(t *testing.T, base objects) {
	t.Helper()
	dir := t.TempDir()
	carve := filepath.Join(dir, "carve-csi")
	build := exec.Command("go", "build", "-o", carve, "./cmd/carve-csi")
	build.Dir = c.root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/carve-csi: %v\n%s", err, out)
	}
	if out, err := exec.Command(filepath.Join(c.root, "hack", "k8s", "cluster.sh"), "add-node", c.dir, "node-1").CombinedOutput(); err != nil {
		t.Fatalf("cluster.sh add-node: %v\n%s", err, out)
	}
	// The StatefulSet controller makes the pod whose owner the provisioner looks up.
	c.kubectlOK(t, nil, "wait", "--for=create", "--timeout=60s", "-n", carveNS, "pod/carve-controller-0")
	_, kc := c.saClient(t, "carve-controller")

	spec := base.get(t, "StatefulSet", carveNS, "carve-controller").(*appsv1.StatefulSet).Spec.Template.Spec
	sock := filepath.Join(dir, "csi.sock")
	// In a pod these come from the downward API and the token's namespace file.
	podEnv := []string{"NAMESPACE=" + carveNS, "POD_NAME=carve-controller-0", "POD_NAMESPACE=" + carveNS}
	bins := map[string]string{"carve-csi": carve,
		"csi-provisioner": filepath.Join(c.bin, "csi-provisioner"), "csi-resizer": filepath.Join(c.bin, "csi-resizer")}
	var procs []*proc
	for _, name := range []string{"carve-csi", "csi-provisioner", "csi-resizer"} {
		var ct corev1.Container
		for _, x := range spec.Containers {
			if x.Name == name {
				ct = x
			}
		}
		procs = append(procs, c.start(t, dir, name, podEnv, bins[name], withArgs(ct.Args, sock, kc)...))
		if name == "carve-csi" {
			deadline := time.Now().Add(60 * time.Second)
			for _, err := os.Stat(sock); err != nil; _, err = os.Stat(sock) {
				if time.Now().After(deadline) || procs[0].exited() {
					t.Fatalf("carve-csi --mode=controller never opened its socket:\n%s", tail(procs[0]))
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}

	// Both sidecars lead (their Leases), and capacity for node-1 in both classes is
	// published in carve-system, owned by the StatefulSet.
	want := map[string]bool{
		"lease carve-csi-dev":                              false,
		"lease external-resizer-carve-csi-dev":             false,
		"capacity carve-lvm StatefulSet/carve-controller":  false,
		"capacity carve-pmem StatefulSet/carve-controller": false,
	}
	deadline := time.Now().Add(120 * time.Second)
	for {
		out := c.kubectlOK(t, nil, "get", "leases", "-n", carveNS, "-o",
			`jsonpath={range .items[*]}lease {.metadata.name}|{.spec.holderIdentity}{"\n"}{end}`)
		out += c.kubectlOK(t, nil, "get", "csistoragecapacities", "-n", carveNS, "-o",
			`jsonpath={range .items[*]}capacity {.storageClassName} {.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}|{.nodeTopology.matchLabels}{"\n"}{end}`)
		for _, l := range strings.Split(out, "\n") {
			k, v, _ := strings.Cut(l, "|")
			if _, ok := want[k]; ok && v != "" && (strings.HasPrefix(k, "lease") || strings.Contains(v, "node-1")) {
				want[k] = true
			}
		}
		all := true
		for _, ok := range want {
			all = all && ok
		}
		if all {
			t.Logf("controller programs as carve-controller with leader election:\n%s", out)
			break
		}
		for _, p := range procs {
			if p.exited() {
				t.Fatalf("%s exited:\n%s", p.name, tail(p))
			}
		}
		if time.Now().After(deadline) {
			var logs string
			for _, p := range procs {
				logs += "----- " + p.name + "\n" + tail(p) + "\n"
			}
			t.Fatalf("after 120 s still missing some of %v; server has:\n%s\n%s", want, out, logs)
		}
		time.Sleep(500 * time.Millisecond)
	}
	var denied []string
	for _, p := range procs {
		p.stop() // before any log scan: all lines written
		denied = append(denied, forbiddenLines(t, p)...)
	}
	if len(denied) > 0 {
		t.Errorf("RBAC denials in the controller programs' logs:\n%s", strings.Join(denied, "\n"))
	}
}
