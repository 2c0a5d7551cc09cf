package manifests

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

const driverName = "carve.csi.dev"

// env is where the test finds the repository and kubectl.
type env struct {
	root, bin, kubectl string
}

func setup(t *testing.T) env {
	t.Helper()
	if os.Getenv("CARVE_INTEGRATION") != "1" {
		t.Skip("needs kubectl and a control plane from .cache/k8s/bin: run `make test-integration` " +
			"(or hack/k8s/build.sh, then CARVE_INTEGRATION=1 go test ./test/manifests/)")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	bin := os.Getenv("CARVE_K8S_BIN")
	if bin == "" {
		bin = filepath.Join(root, ".cache", "k8s", "bin")
	}
	e := env{root: root, bin: bin, kubectl: filepath.Join(bin, "kubectl")}
	if _, err := os.Stat(e.kubectl); err != nil {
		t.Fatalf("%s is missing: run hack/k8s/build.sh first (%v)", e.kubectl, err)
	}
	return e
}

// object is one rendered object: typed from client-go's scheme, or
// unstructured for kinds it does not know (only the CRDs).
type object struct {
	kind, ns, name string
	obj            runtime.Object
	u              *unstructured.Unstructured
}

func (o object) key() string {
	if o.ns == "" {
		return o.kind + "/" + o.name
	}
	return o.kind + "/" + o.ns + "/" + o.name
}

type objects struct {
	raw  []byte
	list []object
}

func (s objects) keys() []string {
	var k []string
	for _, o := range s.list {
		k = append(k, o.key())
	}
	sort.Strings(k)
	return k
}

func (s objects) get(t *testing.T, kind, ns, name string) runtime.Object {
	t.Helper()
	for _, o := range s.list {
		if o.kind == kind && o.ns == ns && o.name == name {
			return o.obj
		}
	}
	t.Fatalf("no %s %s/%s rendered", kind, ns, name)
	return nil
}

// kustomize renders a kustomization folder (relative to the repository root).
func (e env) kustomize(t *testing.T, dir string) objects {
	t.Helper()
	cmd := exec.Command(e.kubectl, "kustomize", filepath.Join(e.root, dir))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr.String())
	}
	return decode(t, dir, out)
}

// files reads and decodes plain manifests.
func (e env) files(t *testing.T, dir string) objects {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(e.root, dir, "*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no manifests in %s (%v)", dir, err)
	}
	var all []byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, []byte("\n---\n")...)
		all = append(all, b...)
	}
	return decode(t, dir, all)
}

func decode(t *testing.T, what string, data []byte) objects {
	t.Helper()
	s := objects{raw: data}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: reading YAML: %v", what, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 || isComment(doc) {
			continue
		}
		obj, gvk, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		// CRDs stay unstructured even when a package linked into this test (helm's
		// kube client) registers apiextensions in client-go's scheme; so do the
		// snapshot API's objects (external-snapshotter's CRDs, not client-go's).
		if runtime.IsNotRegisteredError(err) || (err == nil && gvk.Kind == "CustomResourceDefinition") {
			u := &unstructured.Unstructured{}
			if err := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(doc), 4096).Decode(&u.Object); err != nil {
				t.Fatalf("%s: decoding unstructured: %v", what, err)
			}
			if u.GetKind() != "CustomResourceDefinition" && u.GetAPIVersion() != snapshotAPI {
				t.Errorf("%s: %s %s is not a kind client-go knows, not a CRD and not of %s", what, u.GetKind(), u.GetName(), snapshotAPI)
			}
			s.list = append(s.list, object{kind: u.GetKind(), ns: u.GetNamespace(), name: u.GetName(), u: u})
			continue
		}
		if err != nil {
			t.Fatalf("%s: decoding: %v\n%s", what, err, doc)
		}
		m, ok := obj.(interface {
			GetName() string
			GetNamespace() string
		})
		if !ok {
			t.Fatalf("%s: %s has no metadata", what, gvk)
		}
		s.list = append(s.list, object{kind: gvk.Kind, ns: m.GetNamespace(), name: m.GetName(), obj: obj})
	}
	return s
}

func isComment(doc []byte) bool {
	for _, l := range strings.Split(string(doc), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

// baseKeys is every object of the default install.
var baseKeys = []string{
	"ClusterRole/carve-controller", "ClusterRole/carve-external-provisioner", "ClusterRole/carve-external-resizer", "ClusterRole/carve-node",
	"ClusterRoleBinding/carve-controller", "ClusterRoleBinding/carve-external-provisioner", "ClusterRoleBinding/carve-external-resizer", "ClusterRoleBinding/carve-node",
	"CSIDriver/carve.csi.dev",
	"CustomResourceDefinition/localsnapshots.carve.csi.dev", "CustomResourceDefinition/localvolumes.carve.csi.dev",
	"CustomResourceDefinition/nodestorages.carve.csi.dev",
	"DaemonSet/carve-system/carve-node",
	"Namespace/carve-system",
	"Role/carve-system/carve-external-provisioner", "Role/carve-system/carve-leader-election",
	"RoleBinding/carve-system/carve-external-provisioner", "RoleBinding/carve-system/carve-leader-election",
	"ServiceAccount/carve-system/carve-controller", "ServiceAccount/carve-system/carve-node",
	"StatefulSet/carve-system/carve-controller",
	"StorageClass/carve-lvm", "StorageClass/carve-pmem",
}

// snapshotKeys is what components/snapshots adds to an install.
var snapshotKeys = []string{
	"ClusterRole/carve-external-snapshotter", "ClusterRoleBinding/carve-external-snapshotter",
	"ClusterRole/carve-external-provisioner-snapshots", "ClusterRoleBinding/carve-external-provisioner-snapshots",
	"StorageClass/carve-thin", "VolumeSnapshotClass/carve-thin",
}

// attacherSnapshots is overlays/attacher with components/snapshots, the
// combination components/snapshots/kustomization.yaml shows.
const attacherSnapshots = "test/manifests/testdata/attacher-snapshots"

func sorted(s ...[]string) []string {
	var out []string
	for _, x := range s {
		out = append(out, x...)
	}
	sort.Strings(out)
	return out
}

// pinned is a released sidecar or carve image: registry path and a vX.Y.Z tag.
var pinned = regexp.MustCompile(`^[a-z0-9.-]+(/[a-z0-9._-]+)+:v[0-9]+\.[0-9]+\.[0-9]+$`)

// wantImages is each container's image in the default install and the overlays.
var wantImages = map[string]string{
	"carve-csi":             "ghcr.io/carve-csi/carve-csi:v0.1.0",
	"csi-provisioner":       "registry.k8s.io/sig-storage/csi-provisioner:v6.3.0",
	"csi-resizer":           "registry.k8s.io/sig-storage/csi-resizer:v2.3.0",
	"csi-attacher":          "registry.k8s.io/sig-storage/csi-attacher:v4.13.0",
	"csi-snapshotter":       "registry.k8s.io/sig-storage/csi-snapshotter:v8.7.0",
	"liveness-probe":        "registry.k8s.io/sig-storage/livenessprobe:v2.20.0",
	"node-driver-registrar": "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.17.0",
}

func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

func hasArgs(t *testing.T, c corev1.Container, want ...string) {
	t.Helper()
	for _, w := range want {
		found := false
		for _, a := range c.Args {
			found = found || a == w
		}
		if !found {
			t.Errorf("container %s: no argument %q in %q", c.Name, w, c.Args)
		}
	}
}

// checkPodSpec checks what every workload must get right: pinned images,
// probes whose named ports resolve in their own container (the kubelet looks
// nowhere else), mounts of declared volumes, a rendered ServiceAccount.
func checkPodSpec(t *testing.T, s objects, what string, spec corev1.PodSpec) {
	t.Helper()
	vols := map[string]bool{}
	for _, v := range spec.Volumes {
		vols[v.Name] = true
	}
	healthPorts := map[string]bool{} // --health-port values of liveness-probe sidecars
	for _, c := range spec.Containers {
		if !pinned.MatchString(c.Image) {
			t.Errorf("%s: container %s: image %q is not pinned to a vX.Y.Z release", what, c.Name, c.Image)
		}
		if want := wantImages[c.Name]; c.Image != want {
			t.Errorf("%s: container %s: image %q, want %q", what, c.Name, c.Image, want)
		}
		for _, m := range c.VolumeMounts {
			if !vols[m.Name] {
				t.Errorf("%s: container %s mounts undeclared volume %q", what, c.Name, m.Name)
			}
		}
		for _, a := range c.Args {
			if p, ok := strings.CutPrefix(a, "--health-port="); ok {
				healthPorts[p] = true
			}
		}
	}
	for _, c := range spec.Containers {
		for kind, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe} {
			if p == nil {
				continue
			}
			var port intstr.IntOrString
			switch {
			case p.HTTPGet != nil:
				port = p.HTTPGet.Port
			case p.TCPSocket != nil:
				port = p.TCPSocket.Port
			default:
				continue
			}
			if port.Type != intstr.String {
				continue
			}
			var num int32
			for _, cp := range c.Ports {
				if cp.Name == port.StrVal {
					num = cp.ContainerPort
				}
			}
			if num == 0 {
				t.Errorf("%s: container %s: %s probe port %q is not a port of that container (the kubelet resolves it there only)",
					what, c.Name, kind, port.StrVal)
			} else if !healthPorts[fmt.Sprint(num)] {
				t.Errorf("%s: container %s: %s probe port %q = %d, but no liveness-probe sidecar serves --health-port=%d",
					what, c.Name, kind, port.StrVal, num, num)
			}
		}
	}
	for _, c := range spec.Containers {
		checkStartupBudget(t, what, c)
	}
	if spec.ServiceAccountName == "" {
		t.Errorf("%s: no serviceAccountName", what)
	} else {
		s.get(t, "ServiceAccount", carveNS, spec.ServiceAccountName)
	}
}

// checkStartupBudget: a carve-csi node container with a startup probe gives
// itself as long to start as the probe allows, less a margin for its own
// error to show first. carve-csi's --startup-timeout used to default to 1
// minute while the probe allowed 300 s, and on a busy node the start-up's
// lvcreate of the thin pool was killed at 60 s and carve-node restarted twice
// (the real-node rig with its VM slowed down).
func checkStartupBudget(t *testing.T, what string, c corev1.Container) {
	t.Helper()
	if c.StartupProbe == nil || !contains(c.Args, "--mode=node") {
		return
	}
	p := c.StartupProbe
	budget := time.Duration(p.InitialDelaySeconds+p.PeriodSeconds*p.FailureThreshold) * time.Second
	var timeout time.Duration
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--startup-timeout="); ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Errorf("%s: container %s: %s: %v", what, c.Name, a, err)
				return
			}
			timeout = d
		}
	}
	if timeout == 0 {
		t.Errorf("%s: container %s: no --startup-timeout, while its startup probe allows %v (set it just under that)", what, c.Name, budget)
		return
	}
	// After the limit the node still opens its socket and answers a CSI
	// Probe (which reads every pool): 30 s of the probe's budget for that.
	if lo, hi := budget-time.Minute, budget-30*time.Second; timeout < lo || timeout > hi {
		t.Errorf("%s: container %s: --startup-timeout=%v, its startup probe allows %v: want %v to %v",
			what, c.Name, timeout, budget, lo, hi)
	}
}

// features are the optional parts of an install: overlays/attacher and
// components/snapshots.
type features struct{ attach, snapshots bool }

// roles is every role the install must hold, no more.
func (f features) roles() []role {
	switch {
	case f.attach && f.snapshots:
		return attacherSnapshotterRoles
	case f.attach:
		return attacherRoles
	case f.snapshots:
		return snapshotterRoles
	}
	return baseRoles
}

// checkInstall checks a rendered install (base or an overlay).
func checkInstall(t *testing.T, s objects, f features, pools []string) {
	attach := f.attach
	// CSIDriver: exactly the fields issue #6 asks for.
	drv := s.get(t, "CSIDriver", "", driverName).(*storagev1.CSIDriver)
	want := storagev1.CSIDriverSpec{
		AttachRequired:       ptr(attach),
		PodInfoOnMount:       ptr(true),
		StorageCapacity:      ptr(true),
		FSGroupPolicy:        ptr(storagev1.FileFSGroupPolicy),
		VolumeLifecycleModes: []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent, storagev1.VolumeLifecycleEphemeral},
	}
	if !reflect.DeepEqual(drv.Spec, want) {
		t.Errorf("CSIDriver spec:\n got %s\nwant %s", spec(drv.Spec), spec(want))
	}

	// Controller: carve-csi --mode=controller with the provisioner's capacity and topology flags.
	sts := s.get(t, "StatefulSet", carveNS, "carve-controller").(*appsv1.StatefulSet)
	ps := sts.Spec.Template.Spec
	checkPodSpec(t, s, "StatefulSet carve-controller", ps)
	names := []string{"carve-csi", "csi-provisioner", "csi-resizer", "liveness-probe"}
	if attach {
		names = append(names, "csi-attacher")
	}
	if f.snapshots {
		names = append(names, "csi-snapshotter")
	}
	if got := containerNames(ps); !reflect.DeepEqual(got, sorted(names)) {
		t.Errorf("controller containers %q, want %q", got, sorted(names))
	}
	csiC := container(t, ps, "carve-csi")
	hasArgs(t, csiC, "--mode=controller", "--endpoint=unix:///csi/csi.sock")
	if has := contains(csiC.Args, "--attach"); has != attach {
		t.Errorf("controller carve-csi --attach = %v, want %v (args %q)", has, attach, csiC.Args)
	}
	prov := container(t, ps, "csi-provisioner")
	hasArgs(t, prov, "--csi-address=/csi/csi.sock", "--enable-capacity", "--capacity-ownerref-level=1",
		"--strict-topology", "--immediate-topology=false", "--extra-create-metadata", "--leader-election")
	// Every sidecar that elects a leader gets a lease that survives a slow API server
	// (external-provisioner#556; the real-node rig's sidecars crash-looped with the defaults).
	leaseArgs := []string{"--leader-election-lease-duration=137s", "--leader-election-renew-deadline=107s", "--leader-election-retry-period=26s"}
	hasArgs(t, prov, leaseArgs...)
	envFrom := map[string]string{}
	for _, e := range prov.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			envFrom[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if envFrom["NAMESPACE"] != "metadata.namespace" || envFrom["POD_NAME"] != "metadata.name" {
		t.Errorf("csi-provisioner needs NAMESPACE and POD_NAME from the pod (capacity objects and their owner), got %v", envFrom)
	}
	// The resizer role grants no pods: only this flag keeps the resizer from watching them.
	hasArgs(t, container(t, ps, "csi-resizer"), append([]string{"--csi-address=/csi/csi.sock", "--handle-volume-inuse-error=false", "--leader-election"}, leaseArgs...)...)
	if attach {
		hasArgs(t, container(t, ps, "csi-attacher"), append([]string{"--csi-address=/csi/csi.sock", "--leader-election"}, leaseArgs...)...)
	}
	if f.snapshots {
		// The group snapshot gate off: the role grants none of their objects.
		hasArgs(t, container(t, ps, "csi-snapshotter"), append([]string{"--csi-address=/csi/csi.sock", "--leader-election",
			"--timeout=60s", "--feature-gates=CSIVolumeGroupSnapshot=false"}, leaseArgs...)...)
	}

	// Node: privileged, host PID for nsenter, kubelet dir with Bidirectional propagation, /dev.
	ds := s.get(t, "DaemonSet", carveNS, "carve-node").(*appsv1.DaemonSet)
	ns := ds.Spec.Template.Spec
	checkPodSpec(t, s, "DaemonSet carve-node", ns)
	if got := containerNames(ns); !reflect.DeepEqual(got, sorted([]string{"carve-csi", "node-driver-registrar", "liveness-probe"})) {
		t.Errorf("node containers %q", got)
	}
	if !ns.HostPID {
		t.Error("node: hostPID is off, but --exec-prefix=nsenter -t 1 needs the host's PID 1")
	}
	node := container(t, ns, "carve-csi")
	if node.SecurityContext == nil || node.SecurityContext.Privileged == nil || !*node.SecurityContext.Privileged {
		t.Error("node carve-csi is not privileged (mounts, device nodes)")
	}
	hasArgs(t, node, "--mode=node", "--endpoint=unix:///csi/csi.sock", "--nodeid=$(NODE_NAME)",
		"--kubelet-dir=/var/lib/kubelet", "--exec-prefix=nsenter -t 1 -m -u -i -n -p")
	var gotPools []string
	for _, a := range node.Args {
		if p, ok := strings.CutPrefix(a, "--pool="); ok {
			gotPools = append(gotPools, p)
		}
	}
	if !reflect.DeepEqual(gotPools, pools) {
		t.Errorf("node pools %q, want %q", gotPools, pools)
	}
	hostPaths := map[string]string{}
	for _, v := range ns.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range node.VolumeMounts {
		mounts[m.MountPath] = m
	}
	kd := mounts["/var/lib/kubelet"]
	if hostPaths[kd.Name] != "/var/lib/kubelet" || kd.MountPropagation == nil || *kd.MountPropagation != corev1.MountPropagationBidirectional {
		t.Errorf("node carve-csi: /var/lib/kubelet must be the host's, Bidirectional (mounts reach the kubelet): %+v", kd)
	}
	if dev := mounts["/dev"]; hostPaths[dev.Name] != "/dev" {
		t.Errorf("node carve-csi: /dev must be the host's /dev (new LV and namespace device nodes): %+v", dev)
	}
	sock := mounts["/csi"]
	reg := container(t, ns, "node-driver-registrar")
	hasArgs(t, reg, "--csi-address=/csi/csi.sock", "--kubelet-registration-path="+hostPaths[sock.Name]+"/csi.sock")
	if hostPaths[sock.Name] != "/var/lib/kubelet/plugins/"+driverName {
		t.Errorf("node socket dir %q, want the kubelet's plugins/%s", hostPaths[sock.Name], driverName)
	}

	// StorageClasses: late binding so capacity decides, expansion on.
	classes := map[string]string{"carve-lvm": "lvm", "carve-pmem": "pmem"}
	if f.snapshots {
		classes["carve-thin"] = "thin"
		checkSnapshotClass(t, s)
	}
	for name, pool := range classes {
		sc := s.get(t, "StorageClass", "", name).(*storagev1.StorageClass)
		if sc.Provisioner != driverName || sc.VolumeBindingMode == nil || *sc.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer ||
			sc.AllowVolumeExpansion == nil || !*sc.AllowVolumeExpansion || sc.Parameters["pool"] != pool || len(sc.Parameters) != 1 {
			t.Errorf("StorageClass %s: %+v", name, sc)
		}
	}

	checkRBAC(t, s, f.roles())
}

// snapshotAPI is the API of VolumeSnapshotClass and VolumeSnapshot.
const snapshotAPI = "snapshot.storage.k8s.io/v1"

// checkSnapshotClass checks the VolumeSnapshotClass of components/snapshots:
// carve's driver, snapshots deleted with their VolumeSnapshot, no parameters
// (carve takes none).
func checkSnapshotClass(t *testing.T, s objects) {
	t.Helper()
	var vsc *unstructured.Unstructured
	for _, o := range s.list {
		if o.kind == "VolumeSnapshotClass" && o.name == "carve-thin" {
			vsc = o.u
		}
	}
	if vsc == nil {
		t.Fatalf("no VolumeSnapshotClass carve-thin rendered")
	}
	want := map[string]any{"apiVersion": snapshotAPI, "kind": "VolumeSnapshotClass", "metadata": map[string]any{"name": "carve-thin"},
		"driver": driverName, "deletionPolicy": "Delete"}
	if !reflect.DeepEqual(vsc.Object, want) {
		t.Errorf("VolumeSnapshotClass carve-thin:\n got %v\nwant %v", vsc.Object, want)
	}
}

// checkRBAC compares every rendered Role and ClusterRole with the expected
// list and checks each binding binds its role to the expected ServiceAccount.
func checkRBAC(t *testing.T, s objects, roles []role) {
	want := map[string]role{}
	for _, r := range roles {
		want[roleKey(r.ns, r.name)] = r
	}
	seen := map[string]bool{}
	for _, o := range s.list {
		var rules []rbacv1.PolicyRule
		switch r := o.obj.(type) {
		case *rbacv1.ClusterRole:
			rules = r.Rules
			if r.AggregationRule != nil {
				t.Errorf("%s aggregates other roles", o.key())
			}
		case *rbacv1.Role:
			rules = r.Rules
		case *rbacv1.ClusterRoleBinding:
			checkBinding(t, o.key(), r.RoleRef, r.Subjects, "ClusterRole", want[roleKey("", r.Name)])
			continue
		case *rbacv1.RoleBinding:
			checkBinding(t, o.key(), r.RoleRef, r.Subjects, "Role", want[roleKey(r.Namespace, r.Name)])
			continue
		default:
			continue
		}
		k := roleKey(o.ns, o.name)
		seen[k] = true
		exp, ok := want[k]
		if !ok {
			t.Errorf("unexpected %s", o.key())
			continue
		}
		for _, ru := range rules {
			if len(ru.ResourceNames) > 0 || len(ru.NonResourceURLs) > 0 {
				t.Errorf("%s: rule %+v: resourceNames/nonResourceURLs are not expected", o.key(), ru)
			}
			for _, x := range append(append(append([]string{}, ru.APIGroups...), ru.Resources...), ru.Verbs...) {
				if strings.Contains(x, "*") {
					t.Errorf("%s: wildcard %q in rule %+v", o.key(), x, ru)
				}
			}
		}
		missing, extra := diffAtoms(exp.atoms(), policyAtoms(o.ns, rules))
		if len(missing) > 0 || len(extra) > 0 {
			t.Errorf("%s: missing %q; not needed by the code %q", o.key(), missing, extra)
		}
	}
	for k := range want {
		if !seen[k] {
			t.Errorf("role %s not rendered", k)
		}
	}
}

func checkBinding(t *testing.T, what string, ref rbacv1.RoleRef, subjects []rbacv1.Subject, kind string, r role) {
	t.Helper()
	if r.name == "" {
		t.Errorf("unexpected %s", what)
		return
	}
	wantSub := []rbacv1.Subject{{Kind: "ServiceAccount", Name: r.sa, Namespace: carveNS}}
	if ref.Kind != kind || ref.Name != r.name || ref.APIGroup != rbacv1.GroupName || !reflect.DeepEqual(subjects, wantSub) {
		t.Errorf("%s binds %+v to %+v, want %s %s to ServiceAccount %s/%s", what, ref, subjects, kind, r.name, carveNS, r.sa)
	}
}

func roleKey(ns, name string) string {
	if ns == "" {
		return "ClusterRole/" + name
	}
	return "Role/" + ns + "/" + name
}

func containerNames(spec corev1.PodSpec) []string {
	var n []string
	for _, c := range spec.Containers {
		n = append(n, c.Name)
	}
	for _, c := range spec.InitContainers {
		n = append(n, "init:"+c.Name)
	}
	sort.Strings(n)
	return n
}

func contains(s []string, x string) bool {
	for _, e := range s {
		if e == x {
			return true
		}
	}
	return false
}

func ptr[T any](v T) *T { return &v }

func spec(s storagev1.CSIDriverSpec) string {
	f := func(b *bool) string {
		if b == nil {
			return "nil"
		}
		return fmt.Sprint(*b)
	}
	g := "nil"
	if s.FSGroupPolicy != nil {
		g = string(*s.FSGroupPolicy)
	}
	return fmt.Sprintf("attachRequired=%s podInfoOnMount=%s storageCapacity=%s fsGroupPolicy=%s modes=%v requiresRepublish=%s seLinuxMount=%s tokenRequests=%d",
		f(s.AttachRequired), f(s.PodInfoOnMount), f(s.StorageCapacity), g, s.VolumeLifecycleModes, f(s.RequiresRepublish), f(s.SELinuxMount), len(s.TokenRequests))
}

// examplePinned: example pods use a fixed release of a public test image.
var examplePinned = regexp.MustCompile(`^[a-z0-9.-]+(/[a-z0-9._-]+)+:[0-9]+\.[0-9]+\.[0-9]+(-[0-9]+)?$`)

// checkExamples checks the three ways to get a volume, and a volume made from
// a snapshot.
func checkExamples(t *testing.T, s objects) {
	wantKeys := sorted([]string{"PersistentVolumeClaim/carve-pvc", "Pod/carve-ephemeral-pod", "Pod/carve-inline-pod", "Pod/carve-pvc-pod"},
		snapshotExampleKeys)
	if got := s.keys(); !reflect.DeepEqual(got, wantKeys) {
		t.Errorf("examples: %q, want %q", got, wantKeys)
	}
	for _, o := range s.list {
		if p, ok := o.obj.(*corev1.Pod); ok {
			for _, c := range p.Spec.Containers {
				if !examplePinned.MatchString(c.Image) {
					t.Errorf("example %s: image %q is not a fixed release", o.name, c.Image)
				}
			}
		}
	}
	eph := s.get(t, "Pod", "", "carve-ephemeral-pod").(*corev1.Pod)
	if v := eph.Spec.Volumes[0].Ephemeral; v == nil || v.VolumeClaimTemplate == nil || ptrVal(v.VolumeClaimTemplate.Spec.StorageClassName) != "carve-lvm" {
		t.Errorf("carve-ephemeral-pod: want a generic ephemeral volume on carve-lvm: %+v", eph.Spec.Volumes)
	}
	in := s.get(t, "Pod", "", "carve-inline-pod").(*corev1.Pod)
	if v := in.Spec.Volumes[0].CSI; v == nil || v.Driver != driverName || v.VolumeAttributes["size"] == "" || v.VolumeAttributes["fsType"] == "" {
		t.Errorf("carve-inline-pod: want a CSI inline volume with size and fsType: %+v", in.Spec.Volumes)
	} else {
		for k := range v.VolumeAttributes {
			if k != "size" && k != "fsType" {
				t.Errorf("carve-inline-pod: attribute %q is InvalidArgument without --allow-inline-pool", k)
			}
		}
	}
	pvc := s.get(t, "PersistentVolumeClaim", "", "carve-pvc").(*corev1.PersistentVolumeClaim)
	pp := s.get(t, "Pod", "", "carve-pvc-pod").(*corev1.Pod)
	if ptrVal(pvc.Spec.StorageClassName) != "carve-lvm" || pp.Spec.Volumes[0].PersistentVolumeClaim == nil ||
		pp.Spec.Volumes[0].PersistentVolumeClaim.ClaimName != pvc.Name {
		t.Errorf("carve-pvc-pod: want a pod on PVC carve-pvc of class carve-lvm")
	}
	checkSnapshotExamples(t, s)
}

// snapshotExampleKeys: a thin volume filled by a pod, its snapshot, a pod
// with a copy of it.
var snapshotExampleKeys = []string{"PersistentVolumeClaim/carve-thin-pvc", "Pod/carve-thin-pod", "VolumeSnapshot/carve-snapshot", "Pod/carve-restore-pod"}

// checkSnapshotExamples: the snapshot is of a volume of the thin class
// (carve snapshots lvm-thin volumes only), with components/snapshots' class,
// and the restored volume comes from it, in the thin class again (a copy is
// made in its source's pool), no smaller than the source.
func checkSnapshotExamples(t *testing.T, s objects) {
	t.Helper()
	pvc := s.get(t, "PersistentVolumeClaim", "", "carve-thin-pvc").(*corev1.PersistentVolumeClaim)
	fill := s.get(t, "Pod", "", "carve-thin-pod").(*corev1.Pod)
	if ptrVal(pvc.Spec.StorageClassName) != "carve-thin" || fill.Spec.Volumes[0].PersistentVolumeClaim == nil ||
		fill.Spec.Volumes[0].PersistentVolumeClaim.ClaimName != pvc.Name {
		t.Errorf("carve-thin-pod: want a pod on PVC carve-thin-pvc of class carve-thin")
	}
	var snap *unstructured.Unstructured
	for _, o := range s.list {
		if o.kind == "VolumeSnapshot" && o.name == "carve-snapshot" {
			snap = o.u
		}
	}
	if snap == nil {
		t.Fatal("no VolumeSnapshot carve-snapshot among the examples")
	}
	class, _, _ := unstructured.NestedString(snap.Object, "spec", "volumeSnapshotClassName")
	src, _, _ := unstructured.NestedString(snap.Object, "spec", "source", "persistentVolumeClaimName")
	if snap.GetAPIVersion() != snapshotAPI || class != "carve-thin" || src != pvc.Name {
		t.Errorf("VolumeSnapshot carve-snapshot: want %s, class carve-thin, source PVC %s: %v", snapshotAPI, pvc.Name, snap.Object)
	}
	restore := s.get(t, "Pod", "", "carve-restore-pod").(*corev1.Pod)
	v := restore.Spec.Volumes[0].Ephemeral
	if v == nil || v.VolumeClaimTemplate == nil {
		t.Fatalf("carve-restore-pod: want a generic ephemeral volume: %+v", restore.Spec.Volumes)
	}
	spec := v.VolumeClaimTemplate.Spec
	ds := spec.DataSource
	if ptrVal(spec.StorageClassName) != "carve-thin" || ds == nil || ptrVal(ds.APIGroup) != "snapshot.storage.k8s.io" ||
		ds.Kind != "VolumeSnapshot" || ds.Name != snap.GetName() {
		t.Errorf("carve-restore-pod: want a carve-thin volume from VolumeSnapshot %s: %+v", snap.GetName(), spec)
	}
	if got, src := spec.Resources.Requests[corev1.ResourceStorage], pvc.Spec.Resources.Requests[corev1.ResourceStorage]; got.Cmp(src) < 0 {
		t.Errorf("carve-restore-pod: requests %s, less than the snapshot's source (%s)", got.String(), src.String())
	}
}

func ptrVal[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// TestRendered renders the default install, the overlays and the examples
// and checks them without a cluster.
func TestRendered(t *testing.T) {
	e := setup(t)
	t.Run("default", func(t *testing.T) {
		s := e.kustomize(t, "deploy/kubernetes")
		if got := s.keys(); !reflect.DeepEqual(got, sorted(baseKeys)) {
			t.Errorf("objects:\n got %q\nwant %q", got, sorted(baseKeys))
		}
		checkInstall(t, s, features{}, []string{"lvm=lvm:carve"})
	})
	t.Run("overlay-attacher", func(t *testing.T) {
		s := e.kustomize(t, "deploy/kubernetes/overlays/attacher")
		want := sorted(baseKeys, []string{"ClusterRole/carve-external-attacher", "ClusterRoleBinding/carve-external-attacher"})
		if got := s.keys(); !reflect.DeepEqual(got, want) {
			t.Errorf("objects:\n got %q\nwant %q", got, want)
		}
		checkInstall(t, s, features{attach: true}, []string{"lvm=lvm:carve"})
	})
	t.Run("overlay-pmem", func(t *testing.T) {
		s := e.kustomize(t, "deploy/kubernetes/overlays/pmem")
		if got := s.keys(); !reflect.DeepEqual(got, sorted(baseKeys)) {
			t.Errorf("objects:\n got %q\nwant %q", got, sorted(baseKeys))
		}
		checkInstall(t, s, features{}, []string{"lvm=lvm:carve", "pmem=pmem:all"})
	})
	t.Run("overlay-snapshots", func(t *testing.T) {
		s := e.kustomize(t, "deploy/kubernetes/overlays/snapshots")
		want := sorted(baseKeys, snapshotKeys)
		if got := s.keys(); !reflect.DeepEqual(got, want) {
			t.Errorf("objects:\n got %q\nwant %q", got, want)
		}
		checkInstall(t, s, features{snapshots: true}, []string{"lvm=lvm:carve"})
	})
	// How the component combines with an overlay (components/snapshots says so).
	t.Run("attacher-snapshots", func(t *testing.T) {
		s := e.kustomize(t, attacherSnapshots)
		want := sorted(baseKeys, []string{"ClusterRole/carve-external-attacher", "ClusterRoleBinding/carve-external-attacher"}, snapshotKeys)
		if got := s.keys(); !reflect.DeepEqual(got, want) {
			t.Errorf("objects:\n got %q\nwant %q", got, want)
		}
		checkInstall(t, s, features{attach: true, snapshots: true}, []string{"lvm=lvm:carve"})
	})
	t.Run("examples", func(t *testing.T) {
		checkExamples(t, e.files(t, "deploy/kubernetes/examples"))
	})
}
