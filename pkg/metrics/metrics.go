// Package metrics holds carve's own Prometheus metrics (CSI calls by method
// and code, the node's pools, the cluster's LocalVolumes, build info) and the
// HTTP server that exposes them on --metrics-address.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"
)

// BuildInfo is the constant 1 labeled with the binary's version.
func BuildInfo(version string) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "carve_build_info",
		Help:        "Always 1; the version label is the running carve-csi's version.",
		ConstLabels: prometheus.Labels{"version": version},
	})
	g.Set(1)
	return g
}

// NewRegistry returns a registry with carve_build_info and cs. It has no Go
// runtime or process collectors: carve-csi serves it together with
// controller-runtime's registry, which has them, and the same series from two
// gatherers is an error on every scrape.
func NewRegistry(version string, cs ...prometheus.Collector) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	all := append([]prometheus.Collector{BuildInfo(version)}, cs...)
	for _, c := range all {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return reg, nil
}

// Server serves /metrics from its gatherers on its own listener.
type Server struct {
	lis net.Listener
	srv *http.Server
	mux *http.ServeMux
}

// Listen opens addr for the metrics server; "" and "0" mean no server (nil,
// nil). Listening here, before anything else starts, makes a bad address a
// start-up error.
func Listen(addr string, g prometheus.Gatherer) (*Server, error) {
	if addr == "" || addr == "0" {
		return nil, nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-address: %w", err)
	}
	mux := http.NewServeMux()
	// ContinueOnError: one failing collector must not hide every other family;
	// its error is logged. No gzip: a compressor kept for the next scrape holds
	// about 0.8 MiB of carve-node's heap, for a page of about 60 KB scraped from
	// the node's own network (issue 13, README "Scale").
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, ErrorLog: gatherLog{}, DisableCompression: true}))
	return &Server{lis: lis, mux: mux, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}, nil
}

// ServePprof adds Go's runtime profiles (heap, goroutine, CPU profile, ...)
// under /debug/pprof/, as net/http/pprof serves them. Call it before Serve.
// net/http/pprof is linked into carve-csi anyway (controller-runtime's
// manager imports it), so this costs no binary size.
func (s *Server) ServePprof() {
	s.mux.HandleFunc("/debug/pprof/", pprof.Index)
	s.mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	s.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	s.mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	s.mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}

// Addr is the address actually listened on (useful with port 0).
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// Serve blocks until Shutdown or Close; it returns nil after either.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.lis); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown lets scrapes in flight finish until ctx ends, then closes them.
func (s *Server) Shutdown(ctx context.Context) error {
	if err := s.srv.Shutdown(ctx); err != nil {
		return errors.Join(err, s.srv.Close())
	}
	return nil
}

// gatherLog logs the errors promhttp meets while gathering.
type gatherLog struct{}

func (gatherLog) Println(v ...any) { klog.ErrorS(nil, "Serving /metrics", "error", fmt.Sprint(v...)) }

// Close stops the server and its listener at once (also before Serve).
func (s *Server) Close() error {
	err := s.srv.Close()
	if cerr := s.lis.Close(); err == nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	return err
}
