//go:build tools

// Package tools pins external-provisioner for hack/k8s/build.sh.
package tools

import _ "github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner"
