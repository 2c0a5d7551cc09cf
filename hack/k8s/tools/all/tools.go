//go:build tools

// Package tools pins the Kubernetes programs and the CSI sidecars that hack/k8s/build.sh
// builds in one go build, so the libraries they share (client-go, k8s.io/api, gRPC, ...)
// compile once: these sidecars are built against the control plane's k8s.io/* release.
// Not here: etcd, and csi-provisioner v6.3.0/v6.4.0, which do not compile against
// client-go v0.37 (CSIStorageCapacityInformer lost a method they use), so they keep their
// own module (tools/provisioner) at the k8s.io/* release they pin.
package tools

import (
	_ "github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher"
	_ "github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer"
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter"
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
