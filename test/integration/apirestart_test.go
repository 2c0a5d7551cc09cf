package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/pkg/kubeclient"
	"github.com/carve-csi/carve/test/k8srig"
)

// TestAPIServerRestartMidBurst (issue 13, "Bad input and faults"): the API
// server is killed and restarted in the middle of a burst of 30 CreateVolume calls, then
// again in the middle of their 30 DeleteVolume calls. Each call is retried as
// external-provisioner does (a new call after a non-final code). Every call
// ends OK, Unavailable, DeadlineExceeded or Aborted (never a final code such
// as Internal, which would make the provisioner forget a volume), and the
// retries converge exactly once: one LocalVolume and one device per volume
// after the creates, no LocalVolume and no device after the deletes, and
// every node's published free space equal to its pool's.
//
// Controller and node agents run in this process as in
// BenchmarkControllerBurst (in-memory pools, admin kubeconfig); the API
// server is hack/k8s's, restarted with its own command line.
func TestAPIServerRestartMidBurst(t *testing.T) {
	gate(t, k8srig.RepoRoot())
	admin, dir := startControlPlane(t, benchBin(t))
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	r := startArm(t, ctx, admin, &burstArm{name: "restart", watch: true, qps: kubeclient.DefaultQPS, burst: kubeclient.DefaultBurst})

	const n = 30
	seen := map[codes.Code]int{}
	var mu sync.Mutex
	// retry calls one volume's RPC until OK, as the provisioner does: every
	// code it retries is retried; a final code fails the test.
	retry := func(what string, i int, call func(ctx context.Context) error) {
		for attempt := 1; ; attempt++ {
			cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
			err := call(cctx)
			ccancel()
			code := status.Code(err)
			mu.Lock()
			seen[code]++
			mu.Unlock()
			switch code {
			case codes.OK:
				return
			case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted:
			default:
				t.Errorf("%s #%d attempt %d: %v (a final code)", what, i, attempt, err)
				return
			}
			if ctx.Err() != nil {
				t.Errorf("%s #%d: no success after %d attempts: %v", what, i, attempt, err)
				return
			}
			time.Sleep(min(time.Duration(attempt)*200*time.Millisecond, 2*time.Second))
		}
	}
	burst := func(what string, call func(ctx context.Context, i int) error) {
		var wg sync.WaitGroup
		var started, finished sync.WaitGroup
		started.Add(n)
		finished.Add(1)
		for i := range n {
			wg.Go(func() {
				first := true
				retry(what, i, func(ctx context.Context) error {
					if first {
						first = false
						started.Done()
						finished.Wait() // hold the first attempts until the kill is under way
					}
					return call(ctx, i)
				})
			})
		}
		// Kill the API server while every first attempt is in flight: with
		// fast node agents a burst of 30 can finish within a fixed wait, and a
		// restart after it tests nothing.
		started.Wait()
		go func() { time.Sleep(5 * time.Millisecond); finished.Done() }()
		restartAPIServer(t, dir, admin)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		if len(seen) == 1 && seen[codes.OK] > 0 {
			t.Errorf("%s: every call succeeded at its first attempt (%v): the restart did not land mid-burst", what, seen)
		}
	}

	ids := make([]string, n)
	burst("CreateVolume", func(ctx context.Context, i int) error {
		resp, err := r.cc.CreateVolume(ctx, burstCreate(fmt.Sprintf("pvc-restart-%d", i), i))
		if err == nil {
			ids[i] = resp.GetVolume().GetVolumeId()
		}
		return err
	})
	t.Logf("codes during the creates: %v", seen)
	audit(t, ctx, r, n)

	clear(seen)
	burst("DeleteVolume", func(ctx context.Context, i int) error {
		_, err := r.cc.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: ids[i]})
		return err
	})
	t.Logf("codes during the deletes: %v", seen)
	audit(t, ctx, r, 0)
}

// audit checks that exactly want volumes exist, each once: as Ready
// LocalVolumes and as devices in the pools, and that every node's published
// free space is its pool's.
func audit(t *testing.T, ctx context.Context, r *armRig, want int) {
	t.Helper()
	deadline := time.Now().Add(k8srig.WaitLong)
	for {
		var problems []string
		var lvs v1alpha1.LocalVolumeList
		if err := r.direct.List(ctx, &lvs); err != nil {
			problems = append(problems, err.Error())
		}
		devices := 0
		for node, pool := range r.pools {
			vols, err := pool.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			devices += len(vols)
			capa, err := pool.Capacity(ctx)
			if err != nil {
				t.Fatal(err)
			}
			ns := &v1alpha1.NodeStorage{}
			if err := r.direct.Get(ctx, client.ObjectKey{Name: node}, ns); err != nil {
				problems = append(problems, err.Error())
			} else if len(ns.Status.Pools) != 1 || ns.Status.Pools[0].FreeBytes != capa.FreeBytes {
				problems = append(problems, fmt.Sprintf("node %s publishes %+v, its pool has %d bytes free", node, ns.Status.Pools, capa.FreeBytes))
			}
		}
		for _, lv := range lvs.Items {
			if lv.Status.Phase != v1alpha1.PhaseReady || lv.DeletionTimestamp != nil {
				problems = append(problems, fmt.Sprintf("LocalVolume %s: phase %q, deleting %v", lv.Name, lv.Status.Phase, lv.DeletionTimestamp != nil))
			}
		}
		if len(lvs.Items) != want || devices != want {
			problems = append(problems, fmt.Sprintf("%d LocalVolumes and %d devices, want %d of each", len(lvs.Items), devices, want))
		}
		if len(problems) == 0 {
			t.Logf("audit: %d LocalVolumes = %d devices, all Ready, capacity exact on every node", want, devices)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit after %v: %s", k8srig.WaitLong, strings.Join(problems, "; "))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// alive: the process exists and is not a zombie (its parent, cluster.sh's
// shell, is gone, and whoever inherited it may reap it late).
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) S ...": the state follows the last ')'.
	i := strings.LastIndexByte(string(stat), ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// restartAPIServer kills hack/k8s's kube-apiserver (SIGKILL) and starts it
// again with the command line its log's first line records, as cluster.sh
// does (hack/k8s/README.md: pids/NAME.pid, NAME.log), then waits until it
// answers /readyz.
func restartAPIServer(t *testing.T, dir string, cfg *rest.Config) {
	t.Helper()
	pidFile := filepath.Join(dir, "pids", "kube-apiserver.pid")
	logFile := filepath.Join(dir, "kube-apiserver.log")
	raw, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	logText, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(string(logText), "\n")
	// "# <date> <binary> <args...>": paths and flags without spaces.
	fields := strings.Fields(first)
	if len(fields) < 3 || fields[0] != "#" || filepath.Base(fields[2]) != "kube-apiserver" {
		t.Fatalf("%s does not start with kube-apiserver's command line: %q", logFile, first)
	}
	argv := fields[2:]
	t0 := time.Now()
	// SIGKILL: a crash. (With SIGTERM it drains for over 30 s here.)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for alive(pid) {
		if time.Since(t0) > 30*time.Second {
			t.Fatalf("kube-apiserver (pid %d) still runs 30 s after SIGKILL", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopped := time.Since(t0)
	// The leader thread shows as a zombie while the other threads still exit and
	// hold the listening socket: starting now failed with "address already in
	// use" on a loaded machine. Wait until the port can be bound.
	u, err := url.Parse(cfg.Host)
	if err != nil {
		t.Fatal(err)
	}
	for {
		l, err := net.Listen("tcp", u.Host)
		if err == nil {
			l.Close()
			break
		}
		if time.Since(t0) > 30*time.Second {
			t.Fatalf("kube-apiserver's address %s still taken 30 s after SIGKILL: %v", u.Host, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, err := os.OpenFile(logFile, os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// cluster.sh down stops the pid recorded here.
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait() }() // reap it when cluster.sh down stops it
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := hc.Get(cfg.Host + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Since(t0) > k8srig.WaitLong {
			logText, _ := os.ReadFile(logFile)
			lines := strings.Split(strings.TrimSpace(string(logText)), "\n")
			t.Fatalf("kube-apiserver not ready %v after its restart: %v; the end of its log:\n%s", k8srig.WaitLong, err,
				strings.Join(lines[max(0, len(lines)-15):], "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("kube-apiserver restarted: stopped after %v, ready again after %v", stopped.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
}
