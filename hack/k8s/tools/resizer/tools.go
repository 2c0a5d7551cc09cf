//go:build tools

// Package tools pins external-resizer for hack/k8s/build.sh.
package tools

import _ "github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer"
