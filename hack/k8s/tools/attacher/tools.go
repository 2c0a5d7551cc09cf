//go:build tools

// Package tools pins external-attacher for hack/k8s/build.sh.
package tools

import _ "github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher"
