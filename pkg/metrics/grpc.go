package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// DurationBuckets span 1 ms (Identity calls, cache hits) to 2 min (lvcreate
// plus mkfs on a busy node, or a controller CreateVolume waiting for its node).
var DurationBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}

// GRPC counts and times every CSI call by method and gRPC code. It is one
// prometheus.Collector, so registering it registers both families.
type GRPC struct {
	calls    *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

var _ prometheus.Collector = (*GRPC)(nil)

// NewGRPC returns unregistered gRPC metrics.
func NewGRPC() *GRPC {
	return &GRPC{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "carve_csi_operations_total",
			Help: "CSI calls served, by full gRPC method and status code (code != OK are the errors).",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "carve_csi_operation_duration_seconds",
			Help:    "Time spent serving CSI calls, by full gRPC method and status code.",
			Buckets: DurationBuckets,
		}, []string{"method", "code"}),
	}
}

// Describe implements prometheus.Collector.
func (g *GRPC) Describe(ch chan<- *prometheus.Desc) {
	g.calls.Describe(ch)
	g.duration.Describe(ch)
}

// Collect implements prometheus.Collector.
func (g *GRPC) Collect(ch chan<- prometheus.Metric) {
	g.calls.Collect(ch)
	g.duration.Collect(ch)
}

// UnaryInterceptor records each call once it returns.
func (g *GRPC) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	g.Observe(info.FullMethod, status.Code(err).String(), time.Since(start))
	return resp, err
}

// Observe records one call.
func (g *GRPC) Observe(method, code string, d time.Duration) {
	g.calls.WithLabelValues(method, code).Inc()
	g.duration.WithLabelValues(method, code).Observe(d.Seconds())
}
