package manifests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// cluster is a control plane from hack/k8s/cluster.sh.
type cluster struct {
	env
	dir, admin string
}

func (c *cluster) kubectlIn(t *testing.T, stdin []byte, kubeconfig string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(c.kubectl, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (c *cluster) kubectlOK(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	out, err := c.kubectlIn(t, stdin, c.admin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func startCluster(t *testing.T, e env) *cluster {
	t.Helper()
	dir := t.TempDir()
	script := filepath.Join(e.root, "hack", "k8s", "cluster.sh")
	// Registered before up: a half-started cluster is stopped too (down reads the pid files).
	t.Cleanup(func() {
		if out, err := exec.Command(script, "down", dir).CombinedOutput(); err != nil {
			t.Errorf("cluster.sh down: %v\n%s", err, out)
		}
	})
	cmd := exec.Command(script, "up", dir)
	cmd.Env = append(os.Environ(), "CARVE_K8S_BIN="+e.bin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cluster.sh up: %v\n%s", err, out)
	}
	return &cluster{env: e, dir: dir, admin: filepath.Join(dir, "admin.kubeconfig")}
}

// saClient returns a client that authenticates with the ServiceAccount's own token.
func (c *cluster) saClient(t *testing.T, sa string) (*kubernetes.Clientset, string) {
	t.Helper()
	out, err := exec.Command(filepath.Join(c.root, "hack", "k8s", "cluster.sh"), "sa-kubeconfig", c.dir, carveNS, sa).CombinedOutput()
	if err != nil {
		t.Fatalf("cluster.sh sa-kubeconfig %s: %v\n%s", sa, err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	kc := lines[len(lines)-1]
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs, kc
}

// rules asks the API server what the client may do in ns.
func rules(t *testing.T, cs *kubernetes.Clientset, ns string) map[atom]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := cs.AuthorizationV1().SelfSubjectRulesReviews().Create(ctx,
		&authzv1.SelfSubjectRulesReview{Spec: authzv1.SelfSubjectRulesReviewSpec{Namespace: ns}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectRulesReview in %s: %v", ns, err)
	}
	if r.Status.Incomplete {
		t.Fatalf("SelfSubjectRulesReview in %s is incomplete: %s", ns, r.Status.EvaluationError)
	}
	m := map[atom]bool{}
	for _, ru := range r.Status.ResourceRules {
		if len(ru.ResourceNames) > 0 {
			// Only the baseline has such rules; name them so that a diff shows them.
			for _, a := range expand(ns, ru.APIGroups, ru.Resources, ru.Verbs) {
				a.resource += "[" + strings.Join(ru.ResourceNames, ",") + "]"
				m[a] = true
			}
			continue
		}
		for _, a := range expand(ns, ru.APIGroups, ru.Resources, ru.Verbs) {
			m[a] = true
		}
	}
	return m
}

func minus(a, b map[atom]bool) map[atom]bool {
	m := map[atom]bool{}
	for x := range a {
		if !b[x] {
			m[x] = true
		}
	}
	return m
}

// allowed asks the API server whether the client may do one thing.
func allowed(t *testing.T, cs *kubernetes.Clientset, ra authzv1.ResourceAttributes) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx,
		&authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &ra}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectAccessReview %+v: %v", ra, err)
	}
	return r.Status.Allowed
}

// forbidden is what no carve ServiceAccount may do, whatever its role.
var forbidden = []authzv1.ResourceAttributes{
	{Verb: "get", Resource: "secrets"},
	{Verb: "list", Resource: "secrets"},
	{Verb: "watch", Resource: "secrets"},
	{Verb: "get", Resource: "secrets", Namespace: carveNS},
	{Verb: "list", Resource: "secrets", Namespace: carveNS},
	{Verb: "create", Resource: "pods", Subresource: "exec", Namespace: carveNS},
	{Verb: "get", Resource: "pods", Subresource: "exec", Namespace: carveNS},
	{Verb: "create", Resource: "pods", Subresource: "exec", Namespace: "default"},
	{Verb: "create", Resource: "pods", Namespace: carveNS},
	{Verb: "update", Resource: "nodes"},
	{Verb: "patch", Resource: "nodes"},
	{Verb: "delete", Resource: "nodes"},
	{Verb: "patch", Resource: "nodes", Subresource: "status"},
	{Verb: "create", Resource: "serviceaccounts", Subresource: "token", Namespace: carveNS},
	{Verb: "bind", Group: "rbac.authorization.k8s.io", Resource: "clusterroles"},
	{Verb: "escalate", Group: "rbac.authorization.k8s.io", Resource: "clusterroles"},
	{Verb: "*", Group: "*", Resource: "*"},
	{Verb: "get", Group: "*", Resource: "*"},
	{Verb: "create", Group: "storage.k8s.io", Resource: "csistoragecapacities", Namespace: "default"},
	{Verb: "update", Group: "coordination.k8s.io", Resource: "leases", Namespace: "kube-system"},
}

// nodeForbidden: a node writes LocalVolumes and LocalSnapshots only for its
// finalizer and status, and never writes a Node. It may list and watch Nodes
// (issue 13: it watches its own Node's metadata, a field selector RBAC cannot
// limit to one name per node); that grants nothing new, as carve-node runs
// privileged with /var/lib/kubelet mounted, where the kubelet's own
// credentials (system:node, which may list and watch every Node) live.
var nodeForbidden = []authzv1.ResourceAttributes{
	{Verb: "create", Group: "carve.csi.dev", Resource: "localvolumes"},
	{Verb: "delete", Group: "carve.csi.dev", Resource: "localvolumes"},
	{Verb: "create", Group: "carve.csi.dev", Resource: "localsnapshots"},
	{Verb: "delete", Group: "carve.csi.dev", Resource: "localsnapshots"},
	{Verb: "delete", Group: "carve.csi.dev", Resource: "nodestorages"},
	{Verb: "get", Resource: "persistentvolumes"},
	{Verb: "create", Resource: "persistentvolumes"},
}

// TestCluster applies the install to a real API server and checks what each
// ServiceAccount may do there.
func TestCluster(t *testing.T) {
	e := setup(t)
	base := e.kustomize(t, "deploy/kubernetes")
	c := startCluster(t, e)

	// CRDs first, then everything once they are Established: a real apply, server-side.
	var crds bytes.Buffer
	for _, o := range base.list {
		if o.u == nil {
			continue
		}
		b, err := o.u.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		crds.Write(b)
		crds.WriteString("\n")
	}
	c.kubectlOK(t, crds.Bytes(), "apply", "--server-side", "--field-manager=carve-test", "-f", "-")
	c.kubectlOK(t, nil, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/localvolumes.carve.csi.dev", "crd/localsnapshots.carve.csi.dev", "crd/nodestorages.carve.csi.dev")
	out := c.kubectlOK(t, base.raw, "apply", "--server-side", "--field-manager=carve-test", "-f", "-")
	t.Logf("applied deploy/kubernetes:\n%s", out)
	if n := strings.Count(strings.TrimSpace(out), "\n") + 1; n != len(base.list) {
		t.Errorf("apply reported %d objects, rendered %d", n, len(base.list))
	}
	// Every object is on the server, and kubectl diff finds nothing left to change.
	for _, o := range base.list {
		args := []string{"get", strings.ToLower(o.kind), o.name, "-o", "name"}
		if o.ns != "" {
			args = append(args, "-n", o.ns)
		}
		c.kubectlOK(t, nil, args...)
	}
	if out, err := c.kubectlIn(t, base.raw, c.admin, "diff", "--server-side", "--field-manager=carve-test", "-f", "-"); err != nil {
		t.Errorf("kubectl diff after apply (want no difference): %v\n%s", err, out)
	}
	drv := c.kubectlOK(t, nil, "get", "csidriver", driverName, "-o",
		"jsonpath={.spec.attachRequired} {.spec.podInfoOnMount} {.spec.storageCapacity} {.spec.fsGroupPolicy} {.spec.volumeLifecycleModes}")
	if want := `false true true File ["Persistent","Ephemeral"]`; drv != want {
		t.Errorf("CSIDriver on the server: %q, want %q", drv, want)
	}

	// Examples and the pmem overlay: the API server validates and admits them (dry run).
	// The snapshot examples and overlays/snapshots need the cluster's snapshot CRDs.
	c.installSnapshotCRDs(t)
	ex := e.files(t, "deploy/kubernetes/examples")
	out = c.kubectlOK(t, ex.raw, "apply", "--server-side", "--dry-run=server", "--field-manager=carve-test", "-n", "default", "-f", "-")
	t.Logf("examples (dry run):\n%s", out)
	pmem := e.kustomize(t, "deploy/kubernetes/overlays/pmem")
	out = c.kubectlOK(t, pmem.raw, "apply", "--server-side", "--dry-run=server", "--field-manager=carve-test", "-f", "-")
	if n := strings.Count(strings.TrimSpace(out), "\n") + 1; n != len(pmem.list) {
		t.Errorf("overlay pmem: dry run reported %d objects, rendered %d:\n%s", n, len(pmem.list), out)
	}

	// Least privilege, asked of the API server by each ServiceAccount with its own token.
	nobody, _ := c.saClient(t, "carve-nobody") // what every authenticated ServiceAccount may do
	baseline := map[string]map[atom]bool{}
	for _, ns := range []string{carveNS, "default"} {
		baseline[ns] = rules(t, nobody, ns)
		if len(baseline[ns]) == 0 {
			t.Fatalf("empty rules review for a bare ServiceAccount in %s: the API server answered nothing to compare", ns)
		}
	}
	t.Logf("baseline (any ServiceAccount, left out below):\n%s", table(baseline[carveNS]))
	var summary strings.Builder
	for _, sa := range []string{"carve-controller", "carve-node"} {
		summary.WriteString(c.leastPrivilege(t, baseRoles, sa, sa, baseline))
	}

	c.liveController(t, base)
	summary.WriteString(c.snapshotOverlay(t, baseline))

	// The attacher overlay. attachRequired is immutable: moving an install to
	// it means deleting the CSIDriver first (the README says so).
	att := e.kustomize(t, "deploy/kubernetes/overlays/attacher")
	out, err := c.kubectlIn(t, att.raw, c.admin, "apply", "--server-side", "--dry-run=server", "--field-manager=carve-test", "-f", "-")
	if err == nil || !strings.Contains(out, "field is immutable") {
		t.Errorf("attacher overlay over the default install: want attachRequired refused as immutable, got %v:\n%s", err, out)
	}
	c.kubectlOK(t, nil, "delete", "csidriver", driverName)
	out = c.kubectlOK(t, att.raw, "apply", "--server-side", "--dry-run=server", "--field-manager=carve-test", "-f", "-")
	if n := strings.Count(strings.TrimSpace(out), "\n") + 1; n != len(att.list) {
		t.Errorf("overlay attacher: dry run reported %d objects, rendered %d:\n%s", n, len(att.list), out)
	}
	c.kubectlOK(t, att.raw, "apply", "--server-side", "--field-manager=carve-test", "-f", "-")
	if got := c.kubectlOK(t, nil, "get", "csidriver", driverName, "-o", "jsonpath={.spec.attachRequired}"); got != "true" {
		t.Errorf("attacher overlay: CSIDriver attachRequired %q on the server", got)
	}
	summary.WriteString(c.leastPrivilege(t, attacherRoles, "carve-controller", "carve-controller with overlays/attacher", baseline))
	// Both: overlays/attacher with components/snapshots.
	c.applyCounted(t, attacherSnapshots, e.kustomize(t, attacherSnapshots))
	summary.WriteString(c.leastPrivilege(t, attacherSnapshotterRoles, "carve-controller", "carve-controller with overlays/attacher and components/snapshots", baseline))
	t.Logf("what each ServiceAccount may do beyond the baseline:\n%s", summary.String())
}

// leastPrivilege checks that the ServiceAccount may do exactly what roles
// grant it, in its namespace and elsewhere, and none of the forbidden things;
// it returns a table of its grants.
func (c *cluster) leastPrivilege(t *testing.T, roles []role, sa, label string, baseline map[string]map[atom]bool) string {
	t.Helper()
	cs, kc := c.saClient(t, sa)
	var tab string
	for _, ns := range []string{carveNS, "default"} {
		got := minus(rules(t, cs, ns), baseline[ns])
		missing, extra := diffAtoms(saAtoms(roles, sa, ns), got)
		if len(missing) > 0 || len(extra) > 0 {
			t.Errorf("%s in namespace %s: missing %q; granted beyond the code's needs %q", sa, ns, missing, extra)
		}
		if ns == carveNS {
			tab = fmt.Sprintf("  %s (%d roles; in %s, cluster-wide grants included):\n%s", label, countRoles(roles, sa), ns, table(got))
		}
	}
	deny := forbidden
	if sa == "carve-node" {
		deny = append(append([]authzv1.ResourceAttributes{}, forbidden...), nodeForbidden...)
	}
	for _, ra := range deny {
		if allowed(t, cs, ra) {
			t.Errorf("%s may %s %s/%s/%s in %q", sa, ra.Verb, ra.Group, ra.Resource, ra.Subresource, ra.Namespace)
		}
	}
	// kubectl's own view for the log, without the URLs every client may read.
	out, err := c.kubectlIn(t, nil, kc, "auth", "can-i", "--list", "-n", carveNS)
	if err != nil {
		t.Errorf("kubectl auth can-i --list as %s: %v\n%s", sa, err, out)
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if l != "" && !strings.HasPrefix(l, " ") {
			lines = append(lines, l)
		}
	}
	t.Logf("%s: kubectl auth can-i --list -n %s as system:serviceaccount:%s:%s (%d forbidden actions checked and denied):\n%s",
		label, carveNS, carveNS, sa, len(deny), strings.Join(lines, "\n"))
	return tab
}

func countRoles(roles []role, sa string) int {
	n := 0
	for _, r := range roles {
		if r.sa == sa {
			n++
		}
	}
	return n
}
