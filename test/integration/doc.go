// Package integration runs carve's controller path on a real Kubernetes
// control plane built from source (hack/k8s): etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler with TLS and RBAC, carve's CRDs
// and RBAC applied from deploy/kubernetes/base as they are, three fake nodes
// (Node + CSINode objects, no kubelet), each with a metadata-only LVM volume
// group on its own loop device and its own `carve-csi --mode=node` process,
// and the controller: `carve-csi --mode=controller` with external-provisioner
// (--enable-capacity) and external-resizer, every program running with its own
// ServiceAccount's token.
//
// TestCapacityDemo replays the storage capacity tracking demo of the
// Kubernetes 1.19 blog post (generic ephemeral volumes landing only where
// there is room), then crashes the controller in the middle of a CreateVolume,
// a node in the middle of a delete and the controller in the middle of a
// delete (exactly once: one lvremove, nothing stuck), expands a volume, feeds
// bad input, audits for leaks, and compares pod-to-bound latency with the
// node-local controller (external-provisioner --node-deployment). The rig
// itself is test/k8srig, which `make demo` uses too.
//
// Run it with `make test-integration` (builds the rig first; the first build
// takes 9-15 minutes), or `CARVE_INTEGRATION=1 go test -count=1 -v -timeout 40m
// ./test/integration/` once `hack/k8s/build.sh` has built the binaries. It
// needs root, lvm2, losetup and three free loop devices. Without
// CARVE_INTEGRATION=1 it skips.
// CARVE_INTEGRATION_LOGS=DIR keeps every process log in DIR.
package integration
