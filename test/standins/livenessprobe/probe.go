package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	csirpc "github.com/kubernetes-csi/csi-lib-utils/rpc"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"
)

// prober answers /healthz from one CSI Probe call.
type prober struct {
	conn       *grpc.ClientConn
	timeout    time.Duration
	csiAddress string
}

// ServeHTTP: 200 "ok" when Probe succeeds and the driver is ready (an absent ready field means
// ready, CSI spec), else 500 with the reason.
func (p *prober) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), p.timeout)
	defer cancel()
	ready, err := csirpc.Probe(ctx, p.conn)
	switch {
	case err != nil:
		klog.ErrorS(err, "CSI Probe failed", "csiAddress", p.csiAddress)
		http.Error(w, fmt.Sprintf("CSI Probe on %s failed: %v", p.csiAddress, err), http.StatusInternalServerError)
	case !ready:
		klog.InfoS("CSI driver is not ready", "csiAddress", p.csiAddress)
		http.Error(w, "CSI driver responded but is not ready", http.StatusInternalServerError)
	default:
		klog.V(5).InfoS("CSI driver is ready", "csiAddress", p.csiAddress)
		fmt.Fprintln(w, "ok")
	}
}

// dialTarget turns a socket path (or a unix: address) into a gRPC target.
func dialTarget(addr string) string {
	if strings.HasPrefix(addr, "unix:") {
		return addr
	}
	return "unix:" + addr
}
