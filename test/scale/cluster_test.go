package scale

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/carve-csi/carve/pkg/nodeagent"
	"github.com/carve-csi/carve/test/k8srig"
)

// Users whose requests the API server counts apart: one ServiceAccount per
// component, each matched by a FlowSchema of its own, so that
// apiserver_flowcontrol_dispatched_requests_total{flow_schema=...} counts
// that component's requests (the API server's own metric).
const (
	userController  = "carve-controller" // carve-csi --mode=controller (deploy's ServiceAccount)
	userNode        = "carve-node"       // every node agent (deploy's ServiceAccount, shared by all nodes as in a DaemonSet)
	userProvisioner = "csi-provisioner"  // external-provisioner; in deploy it shares carve-controller's account
	flowPrefix      = "carve-scale-"
	distLabel       = "carve-scale/dist" // nodes of item 2
)

// plane is one control plane with carve's manifests, the ServiceAccounts'
// kubeconfigs, the flow schemas and the simulated nodes' objects.
type plane struct {
	rig   *k8srig.Rig // Root, Bin, Dir, Logs, Admin, Kubectl: process and kubectl helpers
	admin *rest.Config
	cs    *kubernetes.Clientset
	cl    client.WithWatch
	kc    map[string]string // user -> kubeconfig
	// auditLog records carve's and external-provisioner's requests (auditArgs).
	auditLog string
}

func startPlane(t testing.TB, bin, scoring, kcmArgs, schedArgs, logs string) *plane {
	root := k8srig.RepoRoot()
	dir, err := os.MkdirTemp("", "carve-scale-cluster")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	r := &k8srig.Rig{Root: root, Bin: bin, Dir: dir, Logs: logs, Kubectl: filepath.Join(bin, "kubectl")}
	sh := filepath.Join(root, "hack", "k8s", "cluster.sh")
	t.Cleanup(func() {
		// The control plane's logs are kept beside the processes'.
		for _, c := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "audit"} {
			if b, err := os.ReadFile(filepath.Join(dir, c+".log")); err == nil {
				_ = os.WriteFile(filepath.Join(logs, c+".log"), b, 0o644)
			}
		}
		if out, err := exec.Command(sh, "down", dir).CombinedOutput(); err != nil {
			t.Errorf("cluster.sh down: %v\n%s", err, out)
		}
	})
	audit, auditLog := auditArgs(t, dir)
	up := exec.Command(sh, "up", dir)
	up.Env = append(os.Environ(), "CARVE_K8S_BIN="+bin, "CARVE_K8S_TIMEOUT=180", "CARVE_K8S_APISERVER_ARGS="+audit,
		"CARVE_K8S_SCHEDULER_ARGS=--feature-gates=StorageCapacityScoring="+scoring+" "+schedArgs, "CARVE_K8S_KCM_ARGS="+kcmArgs)
	if out, err := up.CombinedOutput(); err != nil {
		t.Fatalf("cluster.sh up: %v\n%s", err, out)
	}
	r.Admin = filepath.Join(dir, "admin.kubeconfig")
	p := &plane{rig: r, kc: map[string]string{}, auditLog: auditLog}
	if p.admin, err = clientcmd.BuildConfigFromFlags("", r.Admin); err != nil {
		t.Fatal(err)
	}
	// The benchmark's own client (system:masters, exempt from priority and
	// fairness) must never be the one that waits.
	p.admin.QPS, p.admin.Burst = 2000, 4000
	if p.cs, err = kubernetes.NewForConfig(p.admin); err != nil {
		t.Fatal(err)
	}
	scheme, err := nodeagent.Scheme()
	if err != nil {
		t.Fatal(err)
	}
	if p.cl, err = client.NewWithWatch(p.admin, client.Options{Scheme: scheme}); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(root, "deploy", "kubernetes", "base")
	r.KubectlRun(t, "apply", "-f", filepath.Join(base, "namespace.yaml"))
	r.KubectlRun(t, "apply", "-f", filepath.Join(base, "crds"), "-f", filepath.Join(base, "csidriver.yaml"),
		"-f", filepath.Join(base, "storageclasses.yaml"))
	r.KubectlRun(t, "apply", "-n", k8srig.CarveNS, "-f", filepath.Join(base, "rbac-controller.yaml"),
		"-f", filepath.Join(base, "rbac-node.yaml"))
	r.KubectlRun(t, "wait", "--for=condition=established", "--timeout=60s",
		"crd/localvolumes.carve.csi.dev", "crd/localsnapshots.carve.csi.dev", "crd/nodestorages.carve.csi.dev")
	for _, u := range []string{userController, userNode, userProvisioner} {
		out := filepath.Join(dir, "sa-"+u+".kubeconfig")
		cmd := exec.Command(sh, "sa-kubeconfig", dir, k8srig.CarveNS, u, out)
		cmd.Env = append(os.Environ(), "CARVE_K8S_BIN="+bin)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cluster.sh sa-kubeconfig %s: %v\n%s", u, err, b)
		}
		p.kc[u] = out
	}
	p.bindProvisioner(t)
	p.flowSchemas(t)
	return p
}

// bindProvisioner gives external-provisioner's own ServiceAccount the roles
// deploy/kubernetes binds to carve-controller for it.
func (p *plane) bindProvisioner(t testing.TB) {
	ctx := context.Background()
	sub := []rbacv1.Subject{{Kind: "ServiceAccount", Name: userProvisioner, Namespace: k8srig.CarveNS}}
	for _, role := range []string{"carve-external-provisioner"} {
		if _, err := p.cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "scale-" + role}, Subjects: sub,
			RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := p.cs.RbacV1().RoleBindings(k8srig.CarveNS).Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "scale-" + role}, Subjects: sub,
			RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// flowSchemas routes each component's ServiceAccount to a flow schema of its
// own, at the priority level the default "service-accounts" schema gives
// them (workload-low), so the API server counts each component's requests
// without treating them differently.
func (p *plane) flowSchemas(t testing.TB) {
	for _, u := range []string{userController, userNode, userProvisioner} {
		fs := &flowcontrolv1.FlowSchema{
			ObjectMeta: metav1.ObjectMeta{Name: flowPrefix + u},
			Spec: flowcontrolv1.FlowSchemaSpec{
				PriorityLevelConfiguration: flowcontrolv1.PriorityLevelConfigurationReference{Name: "workload-low"},
				MatchingPrecedence:         500, // before service-accounts (9000), after exempt and system
				DistinguisherMethod:        &flowcontrolv1.FlowDistinguisherMethod{Type: flowcontrolv1.FlowDistinguisherMethodByUserType},
				Rules: []flowcontrolv1.PolicyRulesWithSubjects{{
					Subjects: []flowcontrolv1.Subject{{Kind: flowcontrolv1.SubjectKindServiceAccount,
						ServiceAccount: &flowcontrolv1.ServiceAccountSubject{Namespace: k8srig.CarveNS, Name: u}}},
					ResourceRules: []flowcontrolv1.ResourcePolicyRule{{Verbs: []string{"*"}, APIGroups: []string{"*"},
						Resources: []string{"*"}, ClusterScope: true, Namespaces: []string{"*"}}},
					NonResourceRules: []flowcontrolv1.NonResourcePolicyRule{{Verbs: []string{"*"}, NonResourceURLs: []string{"*"}}},
				}},
			},
		}
		if _, err := p.cs.FlowcontrolV1().FlowSchemas().Create(context.Background(), fs, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

func nodeName(i int) string { return fmt.Sprintf("sim-%03d", i) }

// addNodes creates n Ready Node objects (room for 110 pods, as kubelet's
// default) and their CSINode objects, as kubelet and carve's registrar would;
// the first dist carry distLabel.
func (p *plane) addNodes(t testing.TB, n, dist int) {
	ctx := context.Background()
	errs := make(chan error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			name := nodeName(i)
			labels := map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
				"kubernetes.io/arch": "amd64", k8srig.TopologyKey: name}
			if i < dist {
				labels[distLabel] = "true"
			}
			res := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("8"), corev1.ResourceMemory: resource.MustParse("32Gi"),
				corev1.ResourcePods: resource.MustParse("110"), corev1.ResourceEphemeralStorage: resource.MustParse("100Gi")}
			now := metav1.Now()
			node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
				Status: corev1.NodeStatus{Capacity: res, Allocatable: res,
					Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
						Message: "simulated node (test/scale)", LastHeartbeatTime: now, LastTransitionTime: now}},
					NodeInfo: corev1.NodeSystemInfo{Architecture: "amd64", OperatingSystem: "linux", KubeletVersion: "v1.37.2"}}}
			if _, err := p.cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
				errs <- err
				return
			}
			csiNode := &storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{{Name: k8srig.DriverName, NodeID: name,
					TopologyKeys: []string{k8srig.TopologyKey}}}}}
			if _, err := p.cs.StorageV1().CSINodes().Create(ctx, csiNode, metav1.CreateOptions{}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("simulated node: %v", err)
	}
}

// apiserverMetrics is the API server's /metrics page.
func (p *plane) apiserverMetrics(t testing.TB) string {
	b, err := p.cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatalf("API server metrics: %v", err)
	}
	return string(b)
}

// flowRequests is the API server's count of requests per component so far.
func (p *plane) flowRequests(t testing.TB) map[string]float64 {
	text := p.apiserverMetrics(t)
	out := map[string]float64{}
	for _, u := range []string{userController, userNode, userProvisioner} {
		out[u] = sumMetric(text, "apiserver_flowcontrol_dispatched_requests_total", `flow_schema="`+flowPrefix+u+`"`)
	}
	return out
}

// sumMetric adds up the samples of a Prometheus text exposition whose metric
// is name and whose labels contain every string of match.
func sumMetric(text, name string, match ...string) float64 {
	var sum float64
	for _, l := range strings.Split(text, "\n") {
		if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
			continue
		}
		ok := true
		for _, m := range match {
			ok = ok && strings.Contains(l, m)
		}
		if !ok {
			continue
		}
		f := strings.Fields(l)
		var v float64
		if _, err := fmt.Sscan(f[len(f)-1], &v); err == nil {
			sum += v
		}
	}
	return sum
}

// serverTime is the API server's time spent serving requests
// (apiserver_request_duration_seconds, watches left out) and their number,
// by "VERB resource[/subresource]".
type serverTime map[string]struct{ secs, n float64 }

func (p *plane) serverTime(t testing.TB) serverTime {
	out := serverTime{}
	for _, l := range strings.Split(p.apiserverMetrics(t), "\n") {
		var sum bool
		switch {
		case strings.HasPrefix(l, "apiserver_request_duration_seconds_sum{"):
			sum = true
		case strings.HasPrefix(l, "apiserver_request_duration_seconds_count{"):
		default:
			continue
		}
		labels := map[string]string{}
		for _, kv := range strings.Split(l[strings.Index(l, "{")+1:strings.LastIndex(l, "}")], ",") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				labels[k] = strings.Trim(v, `"`)
			}
		}
		if labels["verb"] == "WATCH" || labels["verb"] == "CONNECT" {
			continue
		}
		key := labels["verb"] + " " + labels["resource"]
		if labels["subresource"] != "" {
			key += "/" + labels["subresource"]
		}
		f := strings.Fields(l)
		var v float64
		if _, err := fmt.Sscan(f[len(f)-1], &v); err != nil {
			continue
		}
		e := out[key]
		if sum {
			e.secs += v
		} else {
			e.n += v
		}
		out[key] = e
	}
	return out
}

// top renders the n request kinds that took the most server time since
// before, with their count and mean.
func (after serverTime) top(before serverTime, n int) []string {
	type row struct {
		key     string
		secs, c float64
	}
	var rows []row
	for k, e := range after {
		if r := (row{k, e.secs - before[k].secs, e.n - before[k].n}); r.c > 0 {
			rows = append(rows, r)
		}
	}
	slices.SortFunc(rows, func(a, b row) int { return cmp.Compare(b.secs, a.secs) })
	var out []string
	for _, r := range rows[:min(n, len(rows))] {
		out = append(out, fmt.Sprintf("%-40s %8.0fs %6.0f requests, mean %.3fs", r.key, r.secs, r.c, r.secs/r.c))
	}
	return out
}
