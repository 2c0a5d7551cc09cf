// Command livenessprobe is carve's STAND-IN for the kubernetes-csi livenessprobe sidecar, which the
// Go module proxy here does not serve. It is not the real sidecar and says so when it starts.
//
// It does the sidecar's job the way the manifests use it: /healthz on --health-port (all
// addresses, or --http-endpoint) calls CSI Probe on the driver at --csi-address, bounded by
// --probe-timeout, and answers 200 when the driver is ready, 500 with the reason when the
// call fails or the driver says it is not ready.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"
)

// banner is the first line the stand-in prints: it must never pass for the real sidecar.
const banner = "carve STAND-IN for livenessprobe (test/standins/livenessprobe): not the real kubernetes-csi sidecar"

func main() {
	fmt.Fprintln(os.Stderr, banner)
	fs := flag.NewFlagSet(os.Args[0], flag.ExitOnError)
	klog.InitFlags(fs)
	csiAddress := fs.String("csi-address", "/run/csi/socket", "path of the CSI driver's socket")
	healthPort := fs.Int("health-port", 9808, "TCP port of /healthz (on all addresses)")
	httpEndpoint := fs.String("http-endpoint", "", "host:port of /healthz; overrides --health-port")
	timeout := fs.Duration("probe-timeout", time.Second, "timeout of one CSI Probe call")
	_ = fs.Parse(os.Args[1:])

	addr := *httpEndpoint
	if addr == "" {
		addr = net.JoinHostPort("", strconv.Itoa(*healthPort))
	}
	if err := run(*csiAddress, addr, *timeout); err != nil {
		klog.ErrorS(err, "livenessprobe stopped")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
}

// run serves /healthz on addr until SIGTERM or SIGINT.
func run(csiAddress, addr string, timeout time.Duration) error {
	conn, err := dial(csiAddress)
	if err != nil {
		return fmt.Errorf("CSI address %s: %w", csiAddress, err)
	}
	defer conn.Close()
	mux := http.NewServeMux()
	mux.Handle("/healthz", &prober{conn: conn, timeout: timeout, csiAddress: csiAddress})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	klog.InfoS("serving /healthz", "address", addr, "csiAddress", csiAddress)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve /healthz on %s: %w", addr, err)
	}
	return nil
}

// dial opens the client connection to the driver. A failed connect is retried every second at
// most, as csi-lib-utils' connection package (which the real sidecar uses) does: with gRPC's
// default backoff (growing to 120 s) a probe made after the driver's socket appeared still failed
// with the last dial error (seen on the real-node rig: carve-csi serving for 7 s, the probe still
// reporting "no such file", the container killed by its liveness probe).
func dial(csiAddress string) (*grpc.ClientConn, error) {
	bc := backoff.DefaultConfig
	bc.MaxDelay = time.Second
	return grpc.NewClient(dialTarget(csiAddress), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bc}))
}
