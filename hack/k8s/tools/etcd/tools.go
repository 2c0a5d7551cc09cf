//go:build tools

// Package tools pins etcd for hack/k8s/build.sh (go.etcd.io/etcd/server/v3 is the etcd main).
package tools

import _ "go.etcd.io/etcd/server/v3"
