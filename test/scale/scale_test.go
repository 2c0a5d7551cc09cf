package scale

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
	"github.com/carve-csi/carve/test/driver"
	"github.com/carve-csi/carve/test/k8srig"
)

// result is one control plane's figures (one StorageCapacityScoring value).
type result struct {
	scoring string
	// 1.
	plain, withVols time.Duration
	stages          []stage
	createCalls     float64       // carve's CreateVolume calls so far (item 1's and the lost races)
	createMean      time.Duration // their mean duration
	serverTop       []string      // the API server's busiest request kinds while item 1's volumes were made
	// control-plane clients' requests (audit log) until all pods without,
	// then with volumes were scheduled (and bound): client -> kind -> count
	cpPlain, cpVols map[string]map[string]int
	// 2.
	ctlBound, distBound []time.Duration
	// 3.
	burst          time.Duration
	burstExhausted float64 // ResourceExhausted answers of carve's controller to CreateVolume
	burstFailed    int32   // ProvisioningFailed events (counted with their repeats)
	burstMaxOnNode int
	// 4.
	perVolume         map[string]float64 // user -> API requests per volume, create to delete
	breakdown         map[string]string  // user -> the same by verb and resource, from the audit log
	idleWrites        float64            // NodeStorage writes per node per minute at idle
	idleNodeReqs      float64            // node agents' API requests per node per minute at idle
	idleMeasured      bool
	ctrlRSS, ctrlHeap float64
	throttled         map[string]int // log file -> client-side throttling lines
}

type stage struct {
	name     string
	med, p99 time.Duration
}

// BenchmarkScale (issue 13, `make bench-scale`) measures carve's controller
// path at cluster scale on the control-plane rig, once per
// StorageCapacityScoring value (kube-scheduler --feature-gates; beta and on
// by default in v1.37), each on a fresh control plane:
//
//  1. CARVE_SCALE_PODS (1000) pods without volumes, then as many with a
//     generic ephemeral volume of carve-lvm (WaitForFirstConsumer), over
//     CARVE_SCALE_NODES (100) simulated nodes: time from the first creation
//     until all are scheduled (and their claims Bound), and the ratio.
//  2. pod -> claim Bound, median and p99, in controller mode and in
//     distributed mode (one external-provisioner --node-deployment per node
//     beside that node's CSI socket), CARVE_SCALE_DIST_PODS (200) pods
//     created at CARVE_SCALE_DIST_RATE (10/s) on the first
//     CARVE_SCALE_DIST_NODES (20) nodes, and the ratio.
//  3. a burst of CARVE_SCALE_BURST (200) pods whose volumes fit only if
//     spread (a pool holds CARVE_SCALE_BURST_FIT, 3, of them): carve's
//     ResourceExhausted answers and ProvisioningFailed events, and the time
//     until all are scheduled and bound.
//  4. API requests per volume, create to delete, by carve's controller, the
//     node agents and external-provisioner, from the API server's
//     apiserver_flowcontrol_dispatched_requests_total (each component has its
//     own ServiceAccount and FlowSchema); NodeStorage writes per node per
//     minute over CARVE_SCALE_IDLE (75s, more than the 1m resync) of idle
//     (first control plane only).
//
// Also carve's controller's RSS and heap in use with item 1's volumes, and the
// client-side throttling lines of every component's log. Simulated nodes:
// Node and CSINode objects, no kubelet (pods never start); in this process a
// real node agent per node over an in-memory pool (README, "Scale", says
// where that differs from a real node).
//
// Needs the control-plane binaries (CARVE_K8S_BIN or CARVE_K8S_CACHE), not
// root. Logs: CARVE_SCALE_LOGS (default a temporary folder, kept).
func BenchmarkScale(b *testing.B) {
	bin := benchBin(b)
	s := loadSettings(b)
	carve := driver.Binary(b)
	logs := os.Getenv("CARVE_SCALE_LOGS")
	if logs == "" {
		var err error
		if logs, err = os.MkdirTemp("", "carve-scale-logs"); err != nil {
			b.Fatal(err)
		}
	}
	fmt.Printf("bench-scale: %d nodes, %d pods (%d MiB volumes), burst %d (%d MiB, %d per node fit), item 2: %d pods at %g/s on %d nodes; logs in %s\n",
		s.Nodes, s.Pods, s.VolSize>>20, s.Burst, s.burstSize()>>20, s.BurstFit, s.DistPods, s.DistRate, s.DistNodes, logs)
	var results []*result
	for i, scoring := range s.Scoring {
		dir := filepath.Join(logs, "scoring-"+scoring)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		b.Run("StorageCapacityScoring="+scoring, func(b *testing.B) {
			results = append(results, runPlane(b, s, bin, carve, scoring, dir, i == 0))
		})
	}
	report(s, results)
}

func benchBin(tb testing.TB) string {
	bin := os.Getenv("CARVE_K8S_BIN")
	if bin == "" && os.Getenv("CARVE_K8S_CACHE") != "" {
		bin = filepath.Join(os.Getenv("CARVE_K8S_CACHE"), "bin")
	}
	if bin == "" {
		bin = filepath.Join(k8srig.RepoRoot(), ".cache", "k8s", "bin")
	}
	for _, p := range k8srig.Binaries {
		if _, err := os.Stat(filepath.Join(bin, p)); err != nil {
			tb.Skipf("the control-plane binaries are not built (%v): run hack/k8s/build.sh, or set CARVE_K8S_BIN", err)
		}
	}
	return bin
}

// processLog sends this process's klog (the node agents', at --v=3 like the
// other components, so client-go's throttling waits over 50 ms show) to file.
func processLog(tb testing.TB, file string) {
	f, err := os.Create(file)
	if err != nil {
		tb.Fatal(err)
	}
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	for k, v := range map[string]string{"v": "3", "logtostderr": "false", "alsologtostderr": "false", "stderrthreshold": "FATAL"} {
		if err := fs.Set(k, v); err != nil {
			tb.Fatal(err)
		}
	}
	klog.SetOutput(f)
	crlog.SetLogger(klog.NewKlogr())
	tb.Cleanup(func() {
		klog.Flush()
		klog.SetOutput(io.Discard)
		f.Close()
	})
}

func freePort(tb testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// runPlane runs items 1-4 on a fresh control plane.
func runPlane(b *testing.B, s settings, bin, carve, scoring, logs string, idle bool) *result {
	res := &result{scoring: scoring}
	t0 := time.Now()
	phase := func(format string, args ...any) {
		fmt.Printf("[%6.1fs scoring=%s] %s\n", time.Since(t0).Seconds(), scoring, fmt.Sprintf(format, args...))
	}
	processLog(b, filepath.Join(logs, "bench-process.log"))
	p := startPlane(b, bin, scoring, s.KCMArgs, s.SchedArgs, logs)
	ctx := context.Background()
	if _, err := p.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: podNS}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	p.addNodes(b, s.Nodes, s.DistNodes)
	st := track(b, p)
	nodes := startNodes(b, p, s)
	waitPublished(b, p, s.Nodes, 3*time.Minute)
	phase("control plane, %d nodes and their agents up", len(nodes))

	// carve's controller and external-provisioner as deploy/kubernetes runs them.
	r := p.rig
	sockDir, err := os.MkdirTemp("", "carve-scale-ctrl")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	ctrlSock := filepath.Join(sockDir, "csi.sock")
	port := freePort(b)
	ctrl := r.NewProc("carve-controller", false, nil, carve, "--mode=controller", "--endpoint=unix://"+ctrlSock,
		"--kubeconfig="+p.kc[userController], fmt.Sprintf("--metrics-address=127.0.0.1:%d", port), "--v=3")
	var procs []*k8srig.Proc
	b.Cleanup(func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].Stop(syscall.SIGTERM)
		}
	})
	procs = append(procs, ctrl)
	r.StartAndWait(b, ctrl, ctrlSock)
	// external-provisioner's flags as deploy/kubernetes ships them, with its own account.
	provRig := &k8srig.Rig{Root: r.Root, CtrlKC: p.kc[userProvisioner]}
	prov := r.NewProc("csi-provisioner", true, []string{"NAMESPACE=" + k8srig.CarveNS}, filepath.Join(bin, "csi-provisioner"),
		provRig.ProvisionerArgs(b, ctrlSock)...)
	procs = append(procs, prov)
	if err := prov.Start(); err != nil {
		b.Fatal(err)
	}
	waitCapacities(b, p, s.Nodes, "")
	ctrlMetrics := func() string {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
		if err != nil {
			b.Fatalf("controller metrics: %v", err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}
	exhausted := func() float64 {
		return sumMetric(ctrlMetrics(), "carve_csi_operations_total", "CreateVolume", `code="ResourceExhausted"`)
	}
	phase("carve controller and external-provisioner up, CSIStorageCapacity of every node published")

	// 1. Without volumes, then with.
	plainFrom := time.Now()
	pods := createPods(b, p, st, "plain", s.Pods, 0, nil, 0)
	res.plain = waitDone(b, st, pods, false, s.PhaseLimit)
	phase("1. %d pods without volumes scheduled in %v", s.Pods, res.plain.Round(time.Millisecond))
	cleanup(b, p, s.PhaseLimit)
	req0, from, srv0 := p.flowRequests(b), time.Now(), p.serverTime(b)
	pods = createPods(b, p, st, "vol", s.Pods, s.VolSize, nil, 0)
	res.withVols = waitDone(b, st, pods, true, s.PhaseLimit)
	phase("1. %d pods with volumes scheduled and bound in %v", s.Pods, res.withVols.Round(time.Millisecond))
	for _, sg := range []struct {
		name  string
		step  map[string]time.Time
		claim bool
	}{{"claim created (kube-controller-manager, ephemeral volume)", st.claimSeen, true},
		{"node selected (kube-scheduler, selected-node)", st.selected, true},
		{"PV created (external-provisioner + carve)", st.pvSeen, true},
		{"claim Bound (kube-controller-manager, PV binder)", st.claimed, true},
		{"pod scheduled (kube-scheduler, binding)", st.scheduled, false}} {
		ds := st.since(pods, sg.step, sg.claim)
		res.stages = append(res.stages, stage{sg.name, pct(ds, 0.5), pct(ds, 0.99)})
	}
	res.serverTop = p.serverTime(b).top(srv0, 10)
	m := ctrlMetrics()
	res.ctrlRSS, res.ctrlHeap = sumMetric(m, "process_resident_memory_bytes"), sumMetric(m, "go_memstats_heap_inuse_bytes")
	res.createCalls = sumMetric(m, "carve_csi_operation_duration_seconds_count", "CreateVolume")
	res.createMean = time.Duration(sumMetric(m, "carve_csi_operation_duration_seconds_sum", "CreateVolume") / res.createCalls * float64(time.Second))
	var lvs v1alpha1.LocalVolumeList
	if err := p.cl.List(ctx, &lvs); err != nil || len(lvs.Items) != s.Pods {
		b.Fatalf("%d LocalVolumes for %d bound pods (%v)", len(lvs.Items), s.Pods, err)
	}
	cleanup(b, p, s.PhaseLimit)
	req1, to := p.flowRequests(b), time.Now()
	res.perVolume = map[string]float64{}
	for u, n := range req1 {
		res.perVolume[u] = (n - req0[u]) / float64(s.Pods)
	}
	time.Sleep(time.Second) // requests still being written to the audit log
	res.breakdown = map[string]string{}
	for u, counts := range auditCounts(b, p.auditLog, from, to) {
		res.breakdown[u] = topPerVolume(counts, s.Pods)
	}
	res.cpPlain = controlPlane(auditCounts(b, p.auditLog, plainFrom, plainFrom.Add(res.plain)))
	res.cpVols = controlPlane(auditCounts(b, p.auditLog, from, from.Add(res.withVols)))
	phase("1. cleaned up; requests per volume %v", res.perVolume)

	// 3. The burst that fits only if spread.
	ex0 := exhausted()
	pods = createPods(b, p, st, "burst", s.Burst, s.burstSize(), nil, 0)
	res.burst = waitDone(b, st, pods, true, s.PhaseLimit)
	res.burstExhausted = exhausted() - ex0
	res.burstFailed = failedEvents(b, p, "burst-")
	perNode := map[string]int{}
	st.mu.Lock()
	for _, pod := range pods {
		perNode[st.node[pod]]++
	}
	st.mu.Unlock()
	for _, n := range perNode {
		res.burstMaxOnNode = max(res.burstMaxOnNode, n)
	}
	phase("3. burst of %d scheduled and bound in %v; %g ResourceExhausted, %d ProvisioningFailed events",
		s.Burst, res.burst.Round(time.Millisecond), res.burstExhausted, res.burstFailed)
	cleanup(b, p, s.PhaseLimit)

	// 2. Controller mode.
	sel := map[string]string{distLabel: "true"}
	pods = createPods(b, p, st, "ctl", s.DistPods, s.VolSize, sel, s.DistRate)
	waitDone(b, st, pods, true, s.PhaseLimit)
	res.ctlBound = st.since(pods, st.claimed, true)
	phase("2. controller mode: pod -> claim Bound median %v p99 %v", pct(res.ctlBound, 0.5), pct(res.ctlBound, 0.99))
	cleanup(b, p, s.PhaseLimit)

	// 4. Idle.
	if idle {
		res.idleWrites, res.idleNodeReqs = idleWindow(b, p, s)
		res.idleMeasured = true
		phase("4. idle: %.2f NodeStorage writes and %.2f node agent requests per node per minute", res.idleWrites, res.idleNodeReqs)
	}

	// 2. Distributed mode: the central provisioner goes, and with it its
	// CSIStorageCapacity objects (no owner here, as an uninstall would).
	prov.Stop(syscall.SIGTERM)
	if err := p.cs.StorageV1().CSIStorageCapacities(k8srig.CarveNS).DeleteCollection(ctx, metav1.DeleteOptions{},
		metav1.ListOptions{LabelSelector: "csi.storage.k8s.io/managed-by=external-provisioner"}); err != nil {
		b.Fatal(err)
	}
	for _, n := range nodes[:s.DistNodes] {
		dp := r.NewProc("csi-provisioner-"+n.name, true, []string{"NAMESPACE=" + k8srig.CarveNS, "NODE_NAME=" + n.name},
			filepath.Join(bin, "csi-provisioner"), append(provRig.ProvisionerArgs(b, n.sock), "--node-deployment")...)
		procs = append(procs, dp)
		if err := dp.Start(); err != nil {
			b.Fatal(err)
		}
	}
	waitCapacities(b, p, s.DistNodes, "external-provisioner-")
	phase("2. %d per-node external-provisioners up", s.DistNodes)
	pods = createPods(b, p, st, "dist", s.DistPods, s.VolSize, sel, s.DistRate)
	waitDone(b, st, pods, true, s.PhaseLimit)
	res.distBound = st.since(pods, st.claimed, true)
	phase("2. distributed mode: pod -> claim Bound median %v p99 %v", pct(res.distBound, 0.5), pct(res.distBound, 0.99))
	cleanup(b, p, s.PhaseLimit)
	for _, pr := range procs[2:] {
		pr.Stop(syscall.SIGTERM)
	}
	for _, pr := range procs {
		if u := pr.UnexpectedExits(); len(u) > 0 {
			b.Errorf("%s: %v\n%s", pr.Name, u, pr.Tail(20))
		}
	}
	klog.Flush()
	res.throttled = throttled(b, logs, p.rig.Dir)
	return res
}

// waitCapacities waits until n nodes have a CSIStorageCapacity of carve-lvm
// with room, managed by external-provisioner (managedBy "") or by the
// per-node ones (prefix "external-provisioner-").
func waitCapacities(tb testing.TB, p *plane, n int, managedBy string) {
	k8srig.WaitFor(tb, fmt.Sprintf("CSIStorageCapacity of %d nodes", n), 5*time.Minute, time.Second, func() (bool, string) {
		list, err := p.cs.StorageV1().CSIStorageCapacities(k8srig.CarveNS).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		got := 0
		for _, c := range list.Items {
			by := c.Labels["csi.storage.k8s.io/managed-by"]
			ok := by == "external-provisioner"
			if managedBy != "" {
				ok = strings.HasPrefix(by, managedBy)
			}
			if ok && c.StorageClassName == k8srig.SCName && c.Capacity != nil && c.Capacity.Value() > 0 {
				got++
			}
		}
		return got == n, fmt.Sprintf("%d of %d", got, n)
	})
}

// cleanup deletes every pod and claim of the benchmark's namespace and waits
// until no pod, claim, carve PV or LocalVolume is left.
func cleanup(tb testing.TB, p *plane, limit time.Duration) {
	ctx := context.Background()
	zero := int64(0)
	// One delete per object (16 at once), not a collection delete: a
	// collection of 1000 pods outlived the request's stream on this machine.
	pods, err := p.cs.CoreV1().Pods(podNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	claims, err := p.cs.CoreV1().PersistentVolumeClaims(podNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	var del []func() error
	for _, pod := range pods.Items {
		del = append(del, func() error {
			return p.cs.CoreV1().Pods(podNS).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
		})
	}
	for _, c := range claims.Items {
		del = append(del, func() error {
			return p.cs.CoreV1().PersistentVolumeClaims(podNS).Delete(ctx, c.Name, metav1.DeleteOptions{})
		})
	}
	work := make(chan func() error)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for f := range work {
				for try := 1; ; try++ {
					err := f()
					if err == nil || apierrors.IsNotFound(err) {
						break
					}
					if try == 5 {
						tb.Errorf("cleanup: %v", err)
						break
					}
					time.Sleep(time.Second)
				}
			}
		})
	}
	for _, f := range del {
		work <- f
	}
	close(work)
	wg.Wait()
	k8srig.WaitFor(tb, "every pod, claim, PV and LocalVolume gone", limit, 500*time.Millisecond, func() (bool, string) {
		pods, err1 := p.cs.CoreV1().Pods(podNS).List(ctx, metav1.ListOptions{})
		pvcs, err2 := p.cs.CoreV1().PersistentVolumeClaims(podNS).List(ctx, metav1.ListOptions{})
		pvs, err3 := p.cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		var lvs v1alpha1.LocalVolumeList
		err4 := p.cl.List(ctx, &lvs)
		for _, err := range []error{err1, err2, err3, err4} {
			if err != nil {
				return false, err.Error()
			}
		}
		left := len(pods.Items) + len(pvcs.Items) + len(pvs.Items) + len(lvs.Items)
		return left == 0, fmt.Sprintf("%d pods, %d claims, %d PVs, %d LocalVolumes", len(pods.Items), len(pvcs.Items), len(pvs.Items), len(lvs.Items))
	})
}

// failedEvents counts ProvisioningFailed events (with their repeats) about
// the claims of pods named prefix*.
func failedEvents(tb testing.TB, p *plane, prefix string) int32 {
	list, err := p.cs.CoreV1().Events(podNS).List(context.Background(), metav1.ListOptions{FieldSelector: "reason=ProvisioningFailed"})
	if err != nil {
		tb.Fatal(err)
	}
	var n int32
	for _, e := range list.Items {
		if strings.HasPrefix(e.InvolvedObject.Name, prefix) {
			n += max(e.Count, 1)
			if e.Series != nil {
				n += e.Series.Count - 1
			}
		}
	}
	return n
}

// idleWindow watches every NodeStorage for s.Idle while nothing changes and
// returns the writes and the node agents' API requests per node per minute.
func idleWindow(tb testing.TB, p *plane, s settings) (writes, reqs float64) {
	ctx := context.Background()
	time.Sleep(2 * time.Second) // the last change's debounced publish
	var list v1alpha1.NodeStorageList
	if err := p.cl.List(ctx, &list); err != nil {
		tb.Fatal(err)
	}
	w, err := p.cl.Watch(ctx, &v1alpha1.NodeStorageList{}, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: list.ResourceVersion}})
	if err != nil {
		tb.Fatal(err)
	}
	defer w.Stop()
	r0 := p.flowRequests(tb)[userNode]
	end := time.After(s.Idle)
	n := 0
	for done := false; !done; {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				tb.Fatal("NodeStorage watch closed during the idle window")
			}
			if ev.Type == watch.Modified || ev.Type == watch.Added {
				n++
			}
		case <-end:
			done = true
		}
	}
	r1 := p.flowRequests(tb)[userNode]
	mins := s.Idle.Minutes() * float64(s.Nodes)
	return float64(n) / mins, (r1 - r0) / mins
}

// throttled counts client-go's "client-side throttling" lines in every log.
func throttled(tb testing.TB, logs, clusterDir string) map[string]int {
	out := map[string]int{}
	var files []string
	for _, dir := range []string{logs, clusterDir} {
		m, _ := filepath.Glob(filepath.Join(dir, "*.log"))
		files = append(files, m...)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		name := strings.TrimSuffix(filepath.Base(f), ".log")
		if strings.HasPrefix(name, "csi-provisioner-") {
			name = "csi-provisioner-<node>"
		}
		out[name] += strings.Count(string(b), "client-side throttling")
	}
	return out
}
