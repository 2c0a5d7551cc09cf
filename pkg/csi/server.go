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
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
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
// run inside the logging one, in one chain, in the order given; all of them
// see a call that ran out of its caller's time as DeadlineExceeded.
func NewServer(ids csi.IdentityServer, cs csi.ControllerServer, ns csi.NodeServer, interceptors ...grpc.UnaryServerInterceptor) *grpc.Server {
	chain := append(append([]grpc.UnaryServerInterceptor{logCall}, interceptors...), callerDeadline)
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(chain...))
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

// deadlineSlack is how close to its deadline a canceled call counts as timed out.
const deadlineSlack = time.Second

// callerDeadline answers DeadlineExceeded, not Canceled, for a call whose
// context was canceled at its deadline: a gRPC server sees the caller's
// deadline as a cancel, since the client resets the stream when its own timer
// fires, just before the server's (started when the request arrived) would.
func callerDeadline(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return handler(ctx, req)
	}
	var canceledAt atomic.Int64
	stop := context.AfterFunc(ctx, func() { canceledAt.Store(time.Now().UnixNano()) })
	defer stop()
	resp, err := handler(ctx, req)
	if status.Code(err) != codes.Canceled || ctx.Err() == nil {
		return resp, err
	}
	at := time.Now() // the AfterFunc may not have run yet: now is after the cancel
	if ns := canceledAt.Load(); ns != 0 {
		at = time.Unix(0, ns)
	}
	if deadline.Sub(at) < deadlineSlack {
		return resp, status.Error(codes.DeadlineExceeded, "the caller's deadline passed: "+status.Convert(err).Message())
	}
	return resp, err
}
