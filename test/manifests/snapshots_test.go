package manifests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// snapshotClientModule holds the snapshot API's CRDs (config/crd), released
// with external-snapshotter's csi-snapshotter and snapshot-controller.
const snapshotClientModule = "github.com/kubernetes-csi/external-snapshotter/client/v8"

// snapshotCRDKinds are the CRDs a cluster needs for VolumeSnapshots (the
// README's Snapshots section has users install them).
var snapshotCRDKinds = []string{"volumesnapshotclasses", "volumesnapshotcontents", "volumesnapshots"}

// snapshotCRDs returns the snapshot API's CRDs of the external-snapshotter
// release whose csi-snapshotter components/snapshots runs, from the Go module
// cache: `go mod download` fetches the module through the module proxy where
// it is missing (a fresh CI machine), so the repository holds no copy.
func (e env) snapshotCRDs(t *testing.T) []byte {
	t.Helper()
	img := wantImages["csi-snapshotter"]
	version := img[strings.LastIndex(img, ":")+1:]
	cmd := exec.Command("go", "mod", "download", "-json", snapshotClientModule+"@"+version)
	cmd.Dir = e.root
	out, err := cmd.Output()
	var mod struct{ Dir, Error string }
	if jerr := json.Unmarshal(out, &mod); err != nil || jerr != nil || mod.Error != "" || mod.Dir == "" {
		t.Fatalf("go mod download %s@%s: %v %v %s\n%s", snapshotClientModule, version, err, jerr, mod.Error, out)
	}
	var all []byte
	for _, k := range snapshotCRDKinds {
		b, err := os.ReadFile(filepath.Join(mod.Dir, "config", "crd", "snapshot.storage.k8s.io_"+k+".yaml"))
		if err != nil {
			t.Fatal(err)
		}
		all = append(append(all, []byte("\n---\n")...), b...)
	}
	return all
}

// installSnapshotCRDs installs the snapshot API as a cluster that runs
// snapshot-controller has it.
func (c *cluster) installSnapshotCRDs(t *testing.T) {
	t.Helper()
	out := c.kubectlOK(t, c.snapshotCRDs(t), "apply", "--server-side", "--field-manager=carve-test", "-f", "-")
	t.Logf("snapshot CRDs:\n%s", out)
	args := []string{"wait", "--for=condition=Established", "--timeout=60s"}
	for _, k := range snapshotCRDKinds {
		args = append(args, "crd/"+k+".snapshot.storage.k8s.io")
	}
	c.kubectlOK(t, nil, args...)
}

// applyCounted applies a rendered install for real and checks the API server
// took every object and kubectl diff finds nothing left to change.
func (c *cluster) applyCounted(t *testing.T, what string, s objects) {
	t.Helper()
	out := c.kubectlOK(t, s.raw, "apply", "--server-side", "--field-manager=carve-test", "-f", "-")
	if n := strings.Count(strings.TrimSpace(out), "\n") + 1; n != len(s.list) {
		t.Errorf("%s: apply reported %d objects, rendered %d:\n%s", what, n, len(s.list), out)
	}
	if out, err := c.kubectlIn(t, s.raw, c.admin, "diff", "--server-side", "--field-manager=carve-test", "-f", "-"); err != nil {
		t.Errorf("%s: kubectl diff after apply (want no difference): %v\n%s", what, err, out)
	}
}

// snapshotOverlay applies overlays/snapshots over the default install and
// checks what carve-controller may do then; it leaves the snapshotter's RBAC
// deleted again (apply never removes objects), so that the attacher case
// after it starts from the base's roles.
func (c *cluster) snapshotOverlay(t *testing.T, baseline map[string]map[atom]bool) string {
	t.Helper()
	snap := c.kustomize(t, "deploy/kubernetes/overlays/snapshots")
	c.applyCounted(t, "overlays/snapshots", snap)
	if got := c.kubectlOK(t, nil, "get", "volumesnapshotclass", "carve-thin", "-o", "jsonpath={.driver} {.deletionPolicy}"); got != driverName+" Delete" {
		t.Errorf("VolumeSnapshotClass carve-thin on the server: %q, want %q", got, driverName+" Delete")
	}
	if got := c.kubectlOK(t, nil, "get", "statefulset", "-n", carveNS, "carve-controller", "-o",
		"jsonpath={.spec.template.spec.containers[*].name}"); !strings.Contains(got, "csi-snapshotter") {
		t.Errorf("overlays/snapshots: StatefulSet containers on the server %q, want csi-snapshotter among them", got)
	}
	tab := c.leastPrivilege(t, snapshotterRoles, "carve-controller", "carve-controller with overlays/snapshots", baseline)
	c.kubectlOK(t, nil, "delete", "clusterrolebinding/carve-external-snapshotter", "clusterrole/carve-external-snapshotter")
	return tab
}

// The chart's snapshot values that have no kustomize counterpart: the class
// names, the StorageClass's pool, driverName, and storageClasses.create=false
// (no StorageClass at all, the VolumeSnapshotClass still).
func TestHelmSnapshotValues(t *testing.T) {
	root := repoRoot(t)
	got := helmObjects(t, root, carveNS, "snapshots.enabled=true", "driverName=scratch.example.com",
		"snapshots.volumeSnapshotClass=fast-snap", "snapshots.storageClass.name=fast", "snapshots.storageClass.pool=nvme-thin")
	vsc := got["VolumeSnapshotClass//fast-snap"]
	if vsc == nil {
		t.Fatalf("no VolumeSnapshotClass fast-snap: %v", sortedKeys(got))
	}
	if vsc["driver"] != "scratch.example.com" || vsc["deletionPolicy"] != "Delete" {
		t.Errorf("VolumeSnapshotClass fast-snap: %s", jsonString(vsc))
	}
	sc := got["StorageClass//fast"]
	if field(sc, "provisioner") != "scratch.example.com" || field(sc, "parameters.pool") != "nvme-thin" {
		t.Errorf("StorageClass fast: %s", jsonString(sc))
	}
	for _, k := range []string{"VolumeSnapshotClass//carve-thin", "StorageClass//carve-thin"} {
		if got[k] != nil {
			t.Errorf("renamed classes still render %s", k)
		}
	}

	got = helmObjects(t, root, carveNS, "snapshots.enabled=true", "storageClasses.create=false")
	for k := range got {
		if strings.HasPrefix(k, "StorageClass/") {
			t.Errorf("storageClasses.create=false still renders %s", k)
		}
	}
	if got["VolumeSnapshotClass//carve-thin"] == nil {
		t.Errorf("storageClasses.create=false dropped the VolumeSnapshotClass: %v", sortedKeys(got))
	}
}
