// Package csi is carve's gRPC layer: it validates CSI requests, maps them to
// the volume logic and mount operations, and maps errors to gRPC codes.
package csi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// Listen opens a CSI endpoint such as unix:///csi/csi.sock, replacing a stale socket.
func Listen(endpoint string) (net.Listener, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", endpoint, err)
	}
	path := u.Path
	if u.Host != "" { // unix://relative/path
		path = u.Host + u.Path
	}
	if u.Scheme != "unix" || path == "" {
		return nil, fmt.Errorf("endpoint %q: only unix:///path/to/socket is supported", endpoint)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	return net.Listen("unix", path)
}

// NewServer returns a gRPC server with the given services registered (nil ones
// are left out) and every call logged once. The interceptors (e.g. metrics)
// run inside the logging one, in one chain, in the order given.
func NewServer(ids csi.IdentityServer, cs csi.ControllerServer, ns csi.NodeServer, interceptors ...grpc.UnaryServerInterceptor) *grpc.Server {
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(append([]grpc.UnaryServerInterceptor{logCall}, interceptors...)...))
	if ids != nil {
		csi.RegisterIdentityServer(srv, ids)
	}
	if cs != nil {
		csi.RegisterControllerServer(srv, cs)
	}
	if ns != nil {
		csi.RegisterNodeServer(srv, ns)
	}
	return srv
}

// logCall logs each call with its method, duration and code; requests go
// through protosanitizer so secrets never reach the logs.
func logCall(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	klog.V(4).InfoS("GRPC request", "method", info.FullMethod, "request", protosanitizer.StripSecrets(req))
	resp, err := handler(ctx, req)
	code := status.Code(err)
	if err != nil {
		klog.ErrorS(err, "GRPC call failed", "method", info.FullMethod, "duration", time.Since(start), "code", code.String(),
			"request", protosanitizer.StripSecrets(req))
	} else {
		klog.V(2).InfoS("GRPC call", "method", info.FullMethod, "duration", time.Since(start), "code", code.String())
		klog.V(5).InfoS("GRPC response", "method", info.FullMethod, "response", protosanitizer.StripSecrets(resp))
	}
	return resp, err
}
