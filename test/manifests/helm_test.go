package manifests

// The Helm chart (deploy/helm/carve) against the kustomize install
// (deploy/kubernetes): both are rendered in-process, Helm with its own Go
// packages (helm.sh/helm/v4: the current major, built against the same
// k8s.io 0.37 and controller-runtime 0.25 as carve) the way `helm install
// --dry-run=client --include-crds` does,
// kustomize with sigs.k8s.io/kustomize/api (the library behind `kubectl
// kustomize`), so these tests need neither kubectl nor a cluster and run in
// `make test-unit`. Kustomize is the source of truth: the chart must render
// its objects, field for field.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	"helm.sh/helm/v4/pkg/strvals"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

const (
	chartDir    = "deploy/helm/carve"
	releaseName = "carve"
)

// helmCases pairs each kustomization with the chart values meant to render
// the same objects. namespace.create=true renders the base's Namespace;
// TestHelmCreateNamespace covers the default, where `helm install
// --create-namespace` makes it.
var helmCases = []struct {
	name, kustomization string
	set                 []string // as `helm --set`
}{
	{"base", "deploy/kubernetes", []string{"namespace.create=true"}},
	{"attacher", "deploy/kubernetes/overlays/attacher", []string{"namespace.create=true", "attacher.enabled=true"}},
	{"pmem", "deploy/kubernetes/overlays/pmem", []string{"namespace.create=true", "pmem.enabled=true"}},
	{"snapshots", "deploy/kubernetes/overlays/snapshots", []string{"namespace.create=true", "snapshots.enabled=true"}},
	{"attacher-snapshots", attacherSnapshots, []string{"namespace.create=true", "attacher.enabled=true", "snapshots.enabled=true"}},
}

func TestHelmMatchesKustomize(t *testing.T) {
	root := repoRoot(t)
	for _, c := range helmCases {
		t.Run(c.name, func(t *testing.T) {
			want := kustomizeObjects(t, root, c.kustomization)
			got := helmObjects(t, root, carveNS, c.set...)
			d := diffObjectSets(want, got)
			for _, l := range d {
				t.Errorf("chart (--set %s) vs %s: %s", strings.Join(c.set, ","), c.kustomization, l)
			}
			if len(d) == 0 {
				t.Logf("%d objects, each equal: %s", len(want), strings.Join(sortedKeys(want), " "))
			}
		})
	}
}

// The kustomize library renders what `kubectl kustomize` does, where a
// kubectl is at hand (.cache/k8s/bin from hack/k8s/build.sh, or
// $CARVE_K8S_BIN): the other tests here trust the library.
func TestHelmKustomizeIsKubectls(t *testing.T) {
	root := repoRoot(t)
	bin := os.Getenv("CARVE_K8S_BIN")
	if bin == "" {
		bin = filepath.Join(root, ".cache", "k8s", "bin")
	}
	kubectl := filepath.Join(bin, "kubectl")
	if _, err := os.Stat(kubectl); err != nil {
		t.Skipf("no %s to compare with (hack/k8s/build.sh builds it)", kubectl)
	}
	for _, c := range helmCases {
		out, err := exec.Command(kubectl, "kustomize", filepath.Join(root, c.kustomization)).Output()
		if err != nil {
			t.Fatalf("%s kustomize %s: %v", kubectl, c.kustomization, err)
		}
		for _, d := range diffObjectSets(splitObjects(t, "kubectl kustomize", out), kustomizeObjects(t, root, c.kustomization)) {
			t.Errorf("%s: kubectl kustomize vs sigs.k8s.io/kustomize/api: %s", c.kustomization, strings.Replace(d, "chart", "library", -1))
		}
	}
}

// With the chart's defaults every object of the base is rendered but the
// Namespace, which Helm creates for the release (`--create-namespace`); a
// chart that rendered it too would make that install fail (Helm does not
// adopt a namespace it created without its ownership labels).
func TestHelmCreateNamespace(t *testing.T) {
	root := repoRoot(t)
	want := kustomizeObjects(t, root, "deploy/kubernetes")
	ns := "Namespace//" + carveNS
	if _, ok := want[ns]; !ok {
		t.Fatalf("the kustomize base renders no %s", ns)
	}
	delete(want, ns)
	got := helmObjects(t, root, carveNS)
	for _, d := range diffObjectSets(want, got) {
		t.Errorf("chart (default values) vs deploy/kubernetes without its Namespace: %s", d)
	}
}

// The CRDs in the chart's crds/ folder are copies of the base's (`make
// generate` writes both); Helm installs them unrendered, so the bytes must
// be the same.
func TestHelmCRDsAreTheBase(t *testing.T) {
	root := repoRoot(t)
	base := readDir(t, filepath.Join(root, "deploy/kubernetes/base/crds"))
	chart := readDir(t, filepath.Join(root, chartDir, "crds"))
	if len(base) == 0 {
		t.Fatal("deploy/kubernetes/base/crds holds no files")
	}
	for name, b := range base {
		c, ok := chart[name]
		switch {
		case !ok:
			t.Errorf("%s/crds/%s is missing: run `make generate` (or copy it from deploy/kubernetes/base/crds)", chartDir, name)
		case !bytes.Equal(b, c):
			t.Errorf("%s/crds/%s differs from deploy/kubernetes/base/crds/%s: run `make generate`", chartDir, name, name)
		}
	}
	for name := range chart {
		if _, ok := base[name]; !ok {
			t.Errorf("%s/crds/%s is not in deploy/kubernetes/base/crds", chartDir, name)
		}
	}
}

// The values that have no kustomize counterpart land where they should and
// change nothing else.
func TestHelmValues(t *testing.T) {
	root := repoRoot(t)
	def := helmObjects(t, root, carveNS)

	chartYAML, err := os.ReadFile(filepath.Join(root, chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var meta struct{ Version, AppVersion string }
	if err := yaml.Unmarshal(chartYAML, &meta); err != nil {
		t.Fatal(err)
	}
	img := field(def["StatefulSet/"+carveNS+"/carve-controller"], "spec.template.spec.containers[0].image")
	if want := "ghcr.io/carve-csi/carve-csi:" + meta.AppVersion; img != want {
		t.Errorf("Chart.yaml appVersion %q: carve-csi image is %v, want %s", meta.AppVersion, img, want)
	}

	got := helmObjects(t, root, "storage",
		"driverName=scratch.example.com", "logLevel=5", "imagePullPolicy=IfNotPresent",
		"node.pools={lvm=lvm:vg0,fast=lvm-pmem:all:50%}", "node.kubeletDir=/data/kubelet",
		"node.nodeSelector.carve=yes", "controller.tolerations[0].key=infra", "controller.tolerations[0].operator=Exists",
		"controller.resources.provisioner.limits.memory=64Mi", "storageClasses.create=false")
	ctrl := got["StatefulSet/storage/carve-controller"]
	node := got["DaemonSet/storage/carve-node"]
	if ctrl == nil || node == nil {
		t.Fatalf("no StatefulSet or DaemonSet in namespace storage: %v", sortedKeys(got))
	}
	for _, c := range []struct {
		obj      map[string]any
		path     string
		want     any
		whatFrom string
	}{
		{got["CSIDriver//scratch.example.com"], "spec.attachRequired", false, "driverName"},
		{ctrl, "spec.template.spec.containers[0].args", []any{"--mode=controller", "--endpoint=unix:///csi/csi.sock",
			"--metrics-address=:8080", "--v=5", "--drivername=scratch.example.com"}, "driverName, logLevel"},
		{ctrl, "spec.template.spec.containers[1].resources", map[string]any{"limits": map[string]any{"memory": "64Mi"}}, "controller.resources"},
		{ctrl, "spec.template.spec.containers[2].imagePullPolicy", "IfNotPresent", "imagePullPolicy"},
		{ctrl, "spec.template.spec.tolerations", []any{map[string]any{"key": "infra", "operator": "Exists"}}, "controller.tolerations"},
		{node, "spec.template.spec.nodeSelector", map[string]any{"carve": "yes"}, "node.nodeSelector"},
		{node, "spec.template.spec.containers[0].args", []any{"--mode=node", "--endpoint=unix:///csi/csi.sock",
			"--nodeid=$(NODE_NAME)", "--pool=lvm=lvm:vg0", "--pool=fast=lvm-pmem:all:50%", "--kubelet-dir=/data/kubelet",
			"--exec-prefix=nsenter -t 1 -m -u -i -n -p", "--startup-timeout=270s", "--metrics-address=:8081", "--v=5", "--drivername=scratch.example.com"},
			"node.pools, node.kubeletDir"},
		{node, "spec.template.spec.containers[1].args", []any{"--csi-address=/csi/csi.sock",
			"--kubelet-registration-path=/data/kubelet/plugins/scratch.example.com/csi.sock"}, "node.kubeletDir, driverName"},
		{node, "spec.template.spec.volumes[0].hostPath.path", "/data/kubelet/plugins/scratch.example.com", "node.kubeletDir"},
		{got["ClusterRoleBinding//carve-node"], "subjects[0].namespace", "storage", "release namespace"},
	} {
		if v := field(c.obj, c.path); !reflect.DeepEqual(v, c.want) {
			t.Errorf("%s: %s = %s, want %s", c.whatFrom, c.path, jsonString(v), jsonString(c.want))
		}
	}
	for k := range got {
		if strings.HasPrefix(k, "StorageClass/") {
			t.Errorf("storageClasses.create=false still renders %s", k)
		}
	}
	// Everything else is as with the defaults.
	if d := diffObjectSets(objectKinds(def, "ServiceAccount", "Role", "ClusterRole"), objectKinds(renamespace(got, "storage", carveNS), "ServiceAccount", "Role", "ClusterRole")); len(d) > 0 {
		t.Errorf("values that do not touch RBAC changed it: %s", strings.Join(d, "; "))
	}
}

// The comparison itself names the object and the field of a difference, and
// sees every kind of change: a value, a type, an element or key added or gone.
func TestHelmDiffNamesTheField(t *testing.T) {
	root := repoRoot(t)
	want := kustomizeObjects(t, root, "deploy/kubernetes")
	ss := "StatefulSet/" + carveNS + "/carve-controller"
	for _, c := range []struct {
		name   string
		change func(got map[string]map[string]any)
		expect string
	}{
		{"value", func(g map[string]map[string]any) {
			containers(g[ss])[1].(map[string]any)["args"].([]any)[12] = "--v=3"
		}, ss + `: spec.template.spec.containers[1](csi-provisioner).args[12]: kustomize "--v=2", chart "--v=3"`},
		{"type", func(g map[string]map[string]any) {
			g[ss]["spec"].(map[string]any)["replicas"] = "1"
		}, ss + `: spec.replicas: kustomize 1, chart "1"`},
		{"extra key", func(g map[string]map[string]any) {
			g[ss]["metadata"].(map[string]any)["labels"] = map[string]any{"helm.sh/chart": "carve-0.1.0"}
		}, ss + `: metadata.labels: only in the chart: {"helm.sh/chart":"carve-0.1.0"}`},
		{"missing element", func(g map[string]map[string]any) {
			c := containers(g[ss])
			g[ss]["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"] = c[:3]
		}, ss + `: spec.template.spec.containers[3](liveness-probe): only in kustomize`},
		{"missing object", func(g map[string]map[string]any) {
			delete(g, "StorageClass//carve-pmem")
		}, "StorageClass//carve-pmem: only in kustomize"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := helmObjects(t, root, carveNS, "namespace.create=true")
			if d := diffObjectSets(want, got); len(d) > 0 {
				t.Fatalf("differences before the change: %v", d)
			}
			c.change(got)
			d := diffObjectSets(want, got)
			if len(d) != 1 || !strings.HasPrefix(d[0], c.expect) {
				t.Errorf("after a %s change the comparison reports %q, want one line starting %q", c.name, d, c.expect)
			}
		})
	}
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// kustomizeObjects renders a kustomization (relative to the repository root)
// as `kubectl kustomize` does.
func kustomizeObjects(t *testing.T, root, dir string) map[string]map[string]any {
	t.Helper()
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), filepath.Join(root, dir))
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	return splitObjects(t, "kustomize "+dir, out)
}

// helmObjects renders the chart as `helm install carve deploy/helm/carve -n
// <namespace> --dry-run=client --include-crds --set <set>...` would: the
// steps of Helm's action.Install for a client-only install (values with
// Helm's default capabilities, the template engine, the manifest sorter that
// splits off hooks, then the CRDs) without the action package, whose
// Kubernetes client stack would add some 250 packages to the test's build.
// The result is what Helm applies; its ownership labels and annotations it
// adds only to the live objects.
func helmObjects(t *testing.T, root, namespace string, set ...string) map[string]map[string]any {
	t.Helper()
	ch, err := loader.Load(filepath.Join(root, chartDir))
	if err != nil {
		t.Fatalf("loading %s: %v", chartDir, err)
	}
	vals := map[string]any{}
	for _, s := range set {
		if err := strvals.ParseInto(s, vals); err != nil {
			t.Fatalf("--set %s: %v", s, err)
		}
	}
	what := fmt.Sprintf("helm %s -n %s --set %s", chartDir, namespace, strings.Join(set, ","))
	caps := common.DefaultCapabilities.Copy()
	opts := common.ReleaseOptions{Name: releaseName, Namespace: namespace, Revision: 1, IsInstall: true}
	rv, err := chartutil.ToRenderValuesWithSchemaValidation(ch, vals, opts, caps, false)
	if err != nil {
		t.Fatalf("%s: values: %v", what, err)
	}
	files, err := engine.Render(ch, rv)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	for name := range files {
		if strings.HasSuffix(name, "NOTES.txt") {
			delete(files, name)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, nil, releaseutil.InstallOrder)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if len(hooks) > 0 {
		t.Errorf("%s renders %d hooks: the kustomize install has none", what, len(hooks))
	}
	var b bytes.Buffer
	for _, crd := range ch.CRDObjects() {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", crd.Filename, crd.File.Data)
	}
	for _, m := range manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Name, m.Content)
	}
	return splitObjects(t, what, b.Bytes())
}

// splitObjects decodes a YAML stream into objects keyed kind/namespace/name.
// Both sides go through the same decoder (YAML to JSON), so 8080 and "8080"
// stay different.
func splitObjects(t *testing.T, what string, data []byte) map[string]map[string]any {
	t.Helper()
	objs := map[string]map[string]any{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: reading YAML: %v", what, err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			t.Fatalf("%s: decoding: %v\n%s", what, err, doc)
		}
		if obj == nil { // only comments, e.g. a template that rendered nothing
			continue
		}
		meta, _ := obj["metadata"].(map[string]any)
		kind, _ := obj["kind"].(string)
		name, _ := meta["name"].(string)
		ns, _ := meta["namespace"].(string)
		if kind == "" || name == "" {
			t.Fatalf("%s: an object without kind or name:\n%s", what, doc)
		}
		key := kind + "/" + ns + "/" + name
		if _, dup := objs[key]; dup {
			t.Errorf("%s: %s rendered twice", what, key)
		}
		objs[key] = obj
	}
	if len(objs) == 0 {
		t.Fatalf("%s rendered no objects", what)
	}
	return objs
}

// diffObjectSets lists every difference, one line each: an object only on
// one side, or an object's field path and both values.
func diffObjectSets(kustomize, chart map[string]map[string]any) []string {
	var out []string
	for _, k := range sortedKeys(kustomize) {
		c, ok := chart[k]
		if !ok {
			out = append(out, k+": only in kustomize")
			continue
		}
		var d []string
		diffValue("", kustomize[k], c, &d)
		for _, l := range d {
			out = append(out, k+": "+l)
		}
	}
	for _, k := range sortedKeys(chart) {
		if _, ok := kustomize[k]; !ok {
			out = append(out, k+": only in the chart")
		}
	}
	return out
}

func diffValue(path string, k, c any, out *[]string) {
	switch kv := k.(type) {
	case map[string]any:
		cv, ok := c.(map[string]any)
		if !ok {
			break
		}
		keys := map[string]bool{}
		for key := range kv {
			keys[key] = true
		}
		for key := range cv {
			keys[key] = true
		}
		for _, key := range sortedKeys(keys) {
			p := key
			if path != "" {
				p = path + "." + key
			}
			a, inK := kv[key]
			b, inC := cv[key]
			switch {
			case !inC:
				*out = append(*out, fmt.Sprintf("%s: only in kustomize: %s", p, jsonString(a)))
			case !inK:
				*out = append(*out, fmt.Sprintf("%s: only in the chart: %s", p, jsonString(b)))
			default:
				diffValue(p, a, b, out)
			}
		}
		return
	case []any:
		cv, ok := c.([]any)
		if !ok {
			break
		}
		for i := 0; i < len(kv) || i < len(cv); i++ {
			switch {
			case i >= len(cv):
				*out = append(*out, fmt.Sprintf("%s: only in kustomize", elemPath(path, i, kv[i])))
			case i >= len(kv):
				*out = append(*out, fmt.Sprintf("%s: only in the chart", elemPath(path, i, cv[i])))
			default:
				diffValue(elemPath(path, i, kv[i]), kv[i], cv[i], out)
			}
		}
		return
	}
	if !reflect.DeepEqual(k, c) {
		*out = append(*out, fmt.Sprintf("%s: kustomize %s, chart %s", path, jsonString(k), jsonString(c)))
	}
}

// elemPath names a list element by index, and by its name where it has one
// (containers, volumes, env, ports).
func elemPath(path string, i int, e any) string {
	p := fmt.Sprintf("%s[%d]", path, i)
	if m, ok := e.(map[string]any); ok {
		if n, ok := m["name"].(string); ok {
			p += "(" + n + ")"
		}
	}
	return p
}

// field returns the value at a path like "spec.containers[0].args", or nil.
func field(obj map[string]any, path string) any {
	var v any = obj
	for _, part := range strings.Split(path, ".") {
		idx := -1
		if i := strings.IndexByte(part, '['); i >= 0 {
			fmt.Sscanf(part[i:], "[%d]", &idx)
			part = part[:i]
		}
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[part]
		if idx >= 0 {
			l, ok := v.([]any)
			if !ok || idx >= len(l) {
				return nil
			}
			v = l[idx]
		}
	}
	return v
}

func containers(obj map[string]any) []any {
	c, _ := field(obj, "spec.template.spec.containers").([]any)
	return c
}

func objectKinds(objs map[string]map[string]any, kinds ...string) map[string]map[string]any {
	out := map[string]map[string]any{}
	for k, o := range objs {
		for _, kind := range kinds {
			if o["kind"] == kind {
				out[k] = o
			}
		}
	}
	return out
}

// renamespace moves the objects of namespace from to namespace to (keys and
// metadata), so objects rendered for another release namespace compare.
func renamespace(objs map[string]map[string]any, from, to string) map[string]map[string]any {
	out := map[string]map[string]any{}
	for k, o := range objs {
		if meta, ok := o["metadata"].(map[string]any); ok && meta["namespace"] == from {
			meta["namespace"] = to
			k = strings.Replace(k, "/"+from+"/", "/"+to+"/", 1)
		}
		out[k] = o
	}
	return out
}

func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = b
	}
	return files
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func jsonString(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
