package manifests

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"
	appsv1 "k8s.io/api/apps/v1"
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
	t.Run("csi-snapshotter", func(t *testing.T) { c.liveSnapshotter(t, snap) })
	c.kubectlOK(t, nil, "delete", "clusterrolebinding/carve-external-snapshotter", "clusterrole/carve-external-snapshotter",
		"clusterrolebinding/carve-external-provisioner-snapshots", "clusterrole/carve-external-provisioner-snapshots")
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

// fakeSnapshots is a CSI driver named carve.csi.dev that takes snapshots and
// nothing else: what csi-snapshotter needs to run, without a node agent and
// an lvm-thin pool behind carve's controller (its snapshots are tested in
// test/integration and pkg/csi; here the sidecar's permissions are).
type fakeSnapshots struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	mu               sync.Mutex
	created, deleted []string
}

func (f *fakeSnapshots) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: driverName, VendorVersion: "test"}, nil
}

func (f *fakeSnapshots) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{{Type: &csi.PluginCapability_Service_{
		Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}}}}}, nil
}

func (f *fakeSnapshots) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}

func (f *fakeSnapshots) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: []*csi.ControllerServiceCapability{{Type: &csi.ControllerServiceCapability_Rpc{
		Rpc: &csi.ControllerServiceCapability_RPC{Type: csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT}}}}}, nil
}

func (f *fakeSnapshots) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	f.mu.Lock()
	f.created = append(f.created, req.GetName()+" of "+req.GetSourceVolumeId())
	f.mu.Unlock()
	return &csi.CreateSnapshotResponse{Snapshot: &csi.Snapshot{SnapshotId: "id-" + req.GetName(), SourceVolumeId: req.GetSourceVolumeId(),
		CreationTime: timestamppb.Now(), ReadyToUse: true, SizeBytes: 1 << 30}}, nil
}

func (f *fakeSnapshots) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	f.mu.Lock()
	f.deleted = append(f.deleted, req.GetSnapshotId())
	f.mu.Unlock()
	return &csi.DeleteSnapshotResponse{}, nil
}

func (f *fakeSnapshots) calls() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fmt.Sprintf("created %q, deleted %q", f.created, f.deleted)
}

// liveSnapshotter runs csi-snapshotter with exactly the StatefulSet's
// arguments as carve-controller, leader election on, against a driver that
// takes snapshots, and walks one VolumeSnapshotContent through what
// snapshot-controller leaves to it (not run here): create (annotation,
// CreateSnapshot, status), then delete (DeleteSnapshot, status cleared,
// finalizer removed). Every step must work with the granted rules, and the
// sidecar log no RBAC denial.
func (c *cluster) liveSnapshotter(t *testing.T, snap objects) {
	bin := filepath.Join(c.bin, "csi-snapshotter")
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no %s: the sidecar's live run is left out (build external-snapshotter %s's cmd/csi-snapshotter there)", bin, "v8.7.0")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "csi.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	drv := &fakeSnapshots{}
	srv := grpc.NewServer()
	csi.RegisterIdentityServer(srv, drv)
	csi.RegisterControllerServer(srv, drv)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop) // after the sidecar's stop (cleanups run last first)

	_, kc := c.saClient(t, "carve-controller")
	spec := snap.get(t, "StatefulSet", carveNS, "carve-controller").(*appsv1.StatefulSet).Spec.Template.Spec
	args := withArgs(container(t, spec, "csi-snapshotter").Args, sock, kc)
	p := c.start(t, dir, "csi-snapshotter", []string{"NAMESPACE=" + carveNS, "POD_NAME=carve-controller-0", "POD_NAMESPACE=" + carveNS}, bin, args...)

	const name, uid = "carve-test-content", "0d3b1a2c-0000-4000-8000-000000000001"
	content := fmt.Sprintf(`apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotContent
metadata:
  name: %s
  finalizers: [snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection]
spec:
  driver: %s
  deletionPolicy: Delete
  volumeSnapshotClassName: carve-thin
  source: {volumeHandle: carve-test-volume}
  volumeSnapshotRef: {apiVersion: snapshot.storage.k8s.io/v1, kind: VolumeSnapshot, name: carve-test-snapshot, namespace: default, uid: %s}
`, name, driverName, uid)
	c.kubectlOK(t, []byte(content), "create", "-f", "-")
	wait := func(what string, done func() (string, bool)) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			got, ok := done()
			if ok {
				t.Logf("%s: %s", what, got)
				return
			}
			if p.exited() || time.Now().After(deadline) {
				t.Fatalf("%s: still %q (driver: %s); csi-snapshotter:\n%s", what, got, drv.calls(), tail(p))
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	wantID := "id-snapshot-" + uid
	wait("content ready", func() (string, bool) {
		out, _ := c.kubectlIn(t, nil, c.admin, "get", "volumesnapshotcontent", name, "-o",
			`jsonpath={.status.readyToUse} {.status.snapshotHandle} {.status.restoreSize} {.metadata.annotations}`)
		return out, strings.HasPrefix(out, "true "+wantID+" 1073741824 ") && !strings.Contains(out, "volumesnapshot-being-created")
	})
	lease := c.kubectlOK(t, nil, "get", "lease", "-n", carveNS, "external-snapshotter-leader-"+strings.ReplaceAll(driverName, ".", "-"),
		"-o", "jsonpath={.spec.holderIdentity}")
	if lease == "" {
		t.Errorf("csi-snapshotter holds no Lease in %s", carveNS)
	}

	// snapshot-controller's part of a deletion: the annotation, then the delete.
	c.kubectlOK(t, nil, "annotate", "volumesnapshotcontent", name, "snapshot.storage.kubernetes.io/volumesnapshot-being-deleted=yes")
	c.kubectlOK(t, nil, "delete", "volumesnapshotcontent", name, "--wait=false")
	wait("content gone", func() (string, bool) {
		out, err := c.kubectlIn(t, nil, c.admin, "get", "volumesnapshotcontent", name, "-o", "name")
		return strings.TrimSpace(out), err != nil && strings.Contains(out, "NotFound")
	})
	// A retried call repeats the same arguments (CSI calls are idempotent).
	drv.mu.Lock()
	for _, c := range drv.created {
		if want := "snapshot-" + uid + " of carve-test-volume"; c != want {
			t.Errorf("CreateSnapshot %s, want %s", c, want)
		}
	}
	for _, d := range drv.deleted {
		if d != wantID {
			t.Errorf("DeleteSnapshot %s, want %s", d, wantID)
		}
	}
	if len(drv.created) == 0 || len(drv.deleted) == 0 {
		t.Errorf("driver calls: created %q, deleted %q: want both", drv.created, drv.deleted)
	}
	drv.mu.Unlock()
	p.stop()
	if denied := forbiddenLines(t, p); len(denied) > 0 {
		t.Errorf("RBAC denials in csi-snapshotter's log:\n%s", strings.Join(denied, "\n"))
	}
}
