// Package scale holds `make bench-scale` (BenchmarkScale, issue 13): carve's
// controller path at cluster scale on the control-plane rig (hack/k8s: etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler built from source,
// no kubelet), with simulated nodes: Node and CSINode objects, and in the
// benchmark's process one real node agent (pkg/nodeagent: LocalVolume
// reconciler and NodeStorage publisher) per node over an in-memory pool.
// carve's controller (the carve-csi binary) and external-provisioner run as
// their own processes, each with its own ServiceAccount. See the benchmark's
// doc and README.md, "Scale".
package scale
