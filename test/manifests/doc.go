// Package manifests checks the install in deploy/kubernetes: it renders the
// default kustomization (base), every overlay and the examples with
// `kubectl kustomize`, decodes every object with client-go's scheme (the CRDs
// as unstructured) and checks kinds and names, the CSIDriver's fields, pinned
// images, the sidecars' flags, the node plugin's privileges and mounts, that
// every probe's named port resolves in its own container, the StorageClasses,
// and that the RBAC rules are exactly the list in rbac_test.go, where every
// rule names the code that needs it.
//
// Then it starts a control plane (hack/k8s/cluster.sh), applies the base for
// real (server-side, CRDs first), applies the examples and the overlays with
// --dry-run=server, and asks the API server, as each ServiceAccount with its
// own token, what it may do: the answer (SelfSubjectRulesReview, minus what
// every authenticated user may do) must equal the expected list, and explicit
// SelfSubjectAccessReviews must deny secrets, pods/exec, writes to Nodes and
// anything cluster-wide with "*". Before the examples, the snapshot API's CRDs
// (external-snapshotter's client module, from the Go module cache) are
// installed, so that the snapshot examples are admitted; overlays/snapshots,
// and the attacher overlay with components/snapshots, are applied for real and
// carve-controller's permissions checked the same way.
// Then carve-csi --mode=controller,
// external-provisioner and external-resizer run with the StatefulSet's own
// arguments as carve-controller, leader election on: the Leases, the owner
// lookup of --capacity-ownerref-level=1 and the CSIStorageCapacity objects
// must work with exactly those rules (test/integration runs the sidecars
// without leader election or an owner).
//
// kubectl and the control plane come from .cache/k8s/bin (hack/k8s/build.sh),
// so the test runs only with CARVE_INTEGRATION=1, as `make test-integration`
// sets it: `CARVE_INTEGRATION=1 go test -count=1 -v ./test/manifests/`.
package manifests
