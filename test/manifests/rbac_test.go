package manifests

import (
	"fmt"
	"sort"
	"strings"

	rbacv1 "k8s.io/api/rbac/v1"
)

// rule is one expected RBAC rule and why the code needs it. Verbs get and
// list go together where the code reads through an informer or a lister:
// list already returns every object, so get adds no reach.
type rule struct {
	group     string
	resources []string
	verbs     []string
	why       string
}

const carveNS = "carve-system"

// role is an expected ClusterRole (ns "") or Role, its binding (same name) and
// the ServiceAccount bound.
type role struct {
	name  string
	ns    string // "" = ClusterRole + ClusterRoleBinding
	sa    string
	rules []rule
}

var (
	carveController = role{name: "carve-controller", sa: "carve-controller", rules: []rule{
		{"carve.csi.dev", []string{"localvolumes"}, []string{"get"},
			"pkg/cluster Volumes.Get/waitSettled read the LocalVolume straight from the API server (a retry must see the last write)"},
		{"carve.csi.dev", []string{"localvolumes"}, []string{"list", "watch"},
			"pkg/cluster Volumes.List (ListVolumes, readiness) and the Releaser's informer (release.go For LocalVolume)"},
		{"carve.csi.dev", []string{"localvolumes"}, []string{"create"},
			"pkg/cluster Volumes.Create writes the LocalVolume its node acts on"},
		{"carve.csi.dev", []string{"localvolumes"}, []string{"delete"},
			"pkg/cluster Volumes.Delete, and Create removing a Failed attempt"},
		{"carve.csi.dev", []string{"localvolumes"}, []string{"patch"},
			"pkg/cluster Volumes.Expand raises spec.sizeBytes; the Releaser drops a gone node's finalizer"},
		{"carve.csi.dev", []string{"localvolumes/status"}, []string{"patch"},
			"pkg/cluster Releaser marks Failed; Expand resets a failed expansion to Pending"},
		{"carve.csi.dev", []string{"localsnapshots"}, []string{"get", "list", "watch"},
			"pkg/cluster snapshot.go reads LocalSnapshots from the API server (GetSnapshot, ListSnapshots) and waits on their informer (NewVolumes); the SnapshotReleaser's informer"},
		{"carve.csi.dev", []string{"localsnapshots"}, []string{"create", "delete"},
			"pkg/cluster Volumes.CreateSnapshot writes the LocalSnapshot its node acts on; DeleteSnapshot and a failed attempt delete it"},
		{"carve.csi.dev", []string{"localsnapshots"}, []string{"patch"},
			"pkg/cluster Volumes.DeleteSnapshot and the SnapshotReleaser drop a gone node's finalizer"},
		{"carve.csi.dev", []string{"localsnapshots/status"}, []string{"patch"},
			"pkg/cluster SnapshotReleaser marks a gone node's snapshot Failed"},
		{"carve.csi.dev", []string{"nodestorages"}, []string{"get", "list", "watch"},
			"pkg/cluster Volumes.place and Capacity read published capacity from an informer (NewVolumes), and per node from the API server after an operation (FreshReader)"},
		{"", []string{"nodes"}, []string{"get", "list", "watch"},
			"pkg/cluster Releaser watches Nodes' metadata (release.go Watches) and reads the volume's node from that cache; Volumes reads the same informer (NewVolumes)"},
	}}
	carveProvisioner = role{name: "carve-external-provisioner", sa: "carve-controller", rules: []rule{
		{"", []string{"persistentvolumes"}, []string{"get", "list", "watch", "create", "delete", "patch"},
			"external-provisioner: PV informer, Create on provision, Delete on reclaim, Patch of its finalizer"},
		{"", []string{"persistentvolumeclaims"}, []string{"get", "list", "watch", "update"},
			"external-provisioner: claim informer; Update drops volume.kubernetes.io/selected-node on reschedule"},
		{"storage.k8s.io", []string{"storageclasses"}, []string{"get", "list", "watch"},
			"external-provisioner: class informer (parameters, binding mode) and capacity per class"},
		{"storage.k8s.io", []string{"csinodes"}, []string{"get", "list", "watch"},
			"external-provisioner --strict-topology/--enable-capacity: CSINode topologyKeys make the segments"},
		{"", []string{"nodes"}, []string{"get", "list", "watch"},
			"external-provisioner: Node labels give the segments' values (Node lister)"},
		{"storage.k8s.io", []string{"volumeattachments"}, []string{"get", "list", "watch"},
			"external-provisioner: VolumeAttachment lister, no PV deletion while attached"},
		{"", []string{"events"}, []string{"create", "update", "patch"},
			"external-provisioner: event recorder (EventSinkImpl writes only)"},
	}}
	carveProvisionerNS = role{name: "carve-external-provisioner", ns: carveNS, sa: "carve-controller", rules: []rule{
		{"storage.k8s.io", []string{"csistoragecapacities"}, []string{"get", "list", "watch", "create", "update", "delete"},
			"external-provisioner --enable-capacity: namespaced informer, Create/Update/Delete per segment and class (pkg/capacity)"},
		{"", []string{"pods"}, []string{"get"},
			"external-provisioner --capacity-ownerref-level=1: owner.Lookup reads $POD_NAME for its StatefulSet owner reference"},
	}}
	carveLeaderElection = role{name: "carve-leader-election", ns: carveNS, sa: "carve-controller", rules: []rule{
		{"coordination.k8s.io", []string{"leases"}, []string{"get", "create", "update"},
			"--leader-election of every controller sidecar: client-go LeaseLock Get, Create, Update"},
	}}
	carveResizer = role{name: "carve-external-resizer", sa: "carve-controller", rules: []rule{
		{"", []string{"persistentvolumes"}, []string{"get", "list", "watch", "patch"},
			"external-resizer: PV informer; Patch of spec.capacity after ControllerExpandVolume"},
		{"", []string{"persistentvolumeclaims"}, []string{"get", "list", "watch"},
			"external-resizer: claim informer (requests vs. capacity)"},
		{"", []string{"persistentvolumeclaims/status"}, []string{"patch"},
			"external-resizer: claim conditions and allocatedResources"},
		{"", []string{"events"}, []string{"create", "update", "patch"},
			"external-resizer: event recorder (EventSinkImpl writes only)"},
	}}
	carveAttacher = role{name: "carve-external-attacher", sa: "carve-controller", rules: []rule{
		{"", []string{"persistentvolumes"}, []string{"get", "list", "watch", "patch"},
			"external-attacher: PV lister; JSON patch of its finalizer (csi_handler.go)"},
		{"storage.k8s.io", []string{"csinodes"}, []string{"get", "list", "watch"},
			"external-attacher: CSINode lister maps Node to the driver's node ID"},
		{"storage.k8s.io", []string{"volumeattachments"}, []string{"get", "list", "watch", "patch"},
			"external-attacher: VolumeAttachment informer; patches its finalizer"},
		{"storage.k8s.io", []string{"volumeattachments/status"}, []string{"patch"},
			"external-attacher: attached/detached status (util.go)"},
	}}
	carveNode = role{name: "carve-node", sa: "carve-node", rules: []rule{
		{"carve.csi.dev", []string{"localvolumes"}, []string{"get", "list", "watch"},
			"pkg/nodeagent: LocalVolume informer limited to its node's label (manager.go cacheOptions)"},
		{"carve.csi.dev", []string{"localvolumes"}, []string{"update"},
			"pkg/nodeagent reconcile.go adds and removes its finalizer"},
		{"carve.csi.dev", []string{"localvolumes/status"}, []string{"patch"},
			"pkg/nodeagent reconcile.go reports Ready/Failed, size and code"},
		{"carve.csi.dev", []string{"localsnapshots"}, []string{"get", "list", "watch"},
			"pkg/nodeagent: LocalSnapshot informer limited to its node's label (manager.go cacheOptions)"},
		{"carve.csi.dev", []string{"localsnapshots"}, []string{"update"},
			"pkg/nodeagent snapshot.go adds and removes its finalizer"},
		{"carve.csi.dev", []string{"localsnapshots/status"}, []string{"patch"},
			"pkg/nodeagent snapshot.go reports Ready/Failed, size, creation time and code"},
		{"carve.csi.dev", []string{"nodestorages"}, []string{"get", "create", "update"},
			"pkg/nodeagent agent.go writeNodeStorage: read, create once, set the owner reference to the Node"},
		{"carve.csi.dev", []string{"nodestorages/status"}, []string{"update"},
			"pkg/nodeagent agent.go publishes capacity in status"},
		{"", []string{"nodes"}, []string{"get", "list", "watch"},
			"pkg/nodeagent agent.go nodeOwner reads its own Node's UID for the owner reference from a watch of that Node's metadata (manager.go cacheOptions; get: APIReader's fallback)"},
	}}
)

// baseRoles and attacherRoles are the roles each install must hold, no more.
var (
	baseRoles     = []role{carveController, carveProvisioner, carveProvisionerNS, carveLeaderElection, carveResizer, carveNode}
	attacherRoles = append(append([]role{}, baseRoles...), carveAttacher)
)

// atom is one (namespace, group, resource, verb) permission; ns "" is cluster-wide.
type atom struct{ ns, group, resource, verb string }

func (a atom) String() string {
	scope := a.ns
	if scope == "" {
		scope = "cluster"
	}
	g := a.group
	if g == "" {
		g = "core"
	}
	return fmt.Sprintf("%s %s/%s %s", scope, g, a.resource, a.verb)
}

func expand(ns string, groups, resources, verbs []string) []atom {
	var out []atom
	for _, g := range groups {
		for _, r := range resources {
			for _, v := range verbs {
				out = append(out, atom{ns, g, r, v})
			}
		}
	}
	return out
}

func (r role) atoms() map[atom]bool {
	m := map[atom]bool{}
	for _, ru := range r.rules {
		for _, a := range expand(r.ns, []string{ru.group}, ru.resources, ru.verbs) {
			m[a] = true
		}
	}
	return m
}

func policyAtoms(ns string, rules []rbacv1.PolicyRule) map[atom]bool {
	m := map[atom]bool{}
	for _, ru := range rules {
		for _, a := range expand(ns, ru.APIGroups, ru.Resources, ru.Verbs) {
			m[a] = true
		}
	}
	return m
}

// saAtoms is what the ServiceAccount may do in namespace ns (cluster-wide
// grants apply there too), from the expected roles.
func saAtoms(roles []role, sa, ns string) map[atom]bool {
	m := map[atom]bool{}
	for _, r := range roles {
		if r.sa != sa || r.ns != "" && r.ns != ns {
			continue
		}
		for a := range r.atoms() {
			a.ns = ns
			m[a] = true
		}
	}
	return m
}

// diffAtoms lists what is missing from got and what got has in excess.
func diffAtoms(want, got map[atom]bool) (missing, extra []string) {
	for a := range want {
		if !got[a] {
			missing = append(missing, a.String())
		}
	}
	for a := range got {
		if !want[a] {
			extra = append(extra, a.String())
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	return missing, extra
}

// table renders atoms as "group/resource: verbs" lines, one per resource.
func table(atoms map[atom]bool) string {
	byRes := map[string][]string{}
	for a := range atoms {
		g := a.group
		if g == "" {
			g = "core"
		}
		k := g + "/" + a.resource
		byRes[k] = append(byRes[k], a.verb)
	}
	keys := make([]string, 0, len(byRes))
	for k := range byRes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		v := byRes[k]
		sort.Strings(v)
		fmt.Fprintf(&b, "    %-42s %s\n", k, strings.Join(v, ","))
	}
	return b.String()
}

// carveSnapshotter is components/snapshots' role (overlays/snapshots).
var carveSnapshotter = role{name: "carve-external-snapshotter", sa: "carve-controller", rules: []rule{
	{"snapshot.storage.k8s.io", []string{"volumesnapshotcontents"}, []string{"get", "list", "watch"},
		"csi-snapshotter: content informer (sidecar-controller snapshot_controller_base.go); Get of the latest copy before a status write (snapshot_controller.go)"},
	{"snapshot.storage.k8s.io", []string{"volumesnapshotcontents"}, []string{"patch"},
		"csi-snapshotter: JSON patches of its finalizer and annotations (utils.PatchVolumeSnapshotContent); v8.7.0 never updates a content"},
	{"snapshot.storage.k8s.io", []string{"volumesnapshotcontents/status"}, []string{"update", "patch"},
		"csi-snapshotter: handle, readyToUse, size and errors patched in status; clearVolumeContentStatus uses UpdateStatus"},
	{"snapshot.storage.k8s.io", []string{"volumesnapshotclasses"}, []string{"get", "list", "watch"},
		"csi-snapshotter: class lister (deletion policy, secret parameters)"},
	{"", []string{"events"}, []string{"create", "patch"},
		"csi-snapshotter: event recorder (client-go recordEvent: Create, or Patch of a repeated event)"},
}}

// carveProvisionerSnapshots is components/snapshots' role for the
// external-provisioner already in the controller pod: volumes from snapshots.
var carveProvisionerSnapshots = role{name: "carve-external-provisioner-snapshots", sa: "carve-controller", rules: []rule{
	{"snapshot.storage.k8s.io", []string{"volumesnapshots"}, []string{"get"},
		"external-provisioner: the claim's dataSource snapshot (controller.go getSnapshotSource) and the latest copy before a finalizer change"},
	{"snapshot.storage.k8s.io", []string{"volumesnapshots"}, []string{"update"},
		"external-provisioner: source-protection finalizer added while a volume is made from the snapshot and removed after (setSnapshotFinalizer, removeSnapshotFinalizer, the sweep)"},
	{"snapshot.storage.k8s.io", []string{"volumesnapshots"}, []string{"list", "watch"},
		"external-provisioner: SnapshotFinalizerController's informer for the sweep of orphaned finalizers (disabled without list)"},
	{"snapshot.storage.k8s.io", []string{"volumesnapshotcontents"}, []string{"get"},
		"external-provisioner: the bound VolumeSnapshotContent's snapshot handle (getSnapshotSource); v6.3.0 never lists contents"},
}}

// snapshotterRoles and attacherSnapshotterRoles: overlays/snapshots, and
// overlays/attacher with components/snapshots.
var (
	snapshotterRoles         = append(append([]role{}, baseRoles...), carveSnapshotter, carveProvisionerSnapshots)
	attacherSnapshotterRoles = append(append([]role{}, attacherRoles...), carveSnapshotter, carveProvisionerSnapshots)
)
