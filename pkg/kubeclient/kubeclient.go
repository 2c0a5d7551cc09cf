// Package kubeclient builds carve's Kubernetes API client configuration, the
// same for both roles.
package kubeclient

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Client-side rate limits (--kube-api-qps, --kube-api-burst). client-go's
// own default, 5 requests/s with a burst of 10 when rest.Config leaves QPS
// unset, made 50 concurrent CreateVolume calls take 38 s (issue 13's
// measurement; 28 s on BenchmarkControllerBurst). 50/100 left the limiter idle on the burst benchmark and on
// bench-scale with kube-controller-manager's default limits, but once those
// were raised (500/1000) 1000 volumes in 68 s needed about 100 requests/s of
// carve's controller and it logged 157 throttling waits: 200/400 leaves room
// above that. The API server's priority and fairness, not this limiter,
// protects the server (README, "Scale").
const (
	DefaultQPS   = 200
	DefaultBurst = 400
)

// Config reads kubeconfig (in-cluster configuration when "") and sets the
// client-side rate limits: qps requests per second, burst above it. Errors
// name the cause; outside a cluster without kubeconfig it says how to run
// without the API.
func Config(kubeconfig string, qps float32, burst int) (*rest.Config, error) {
	if qps <= 0 || burst <= 0 {
		return nil, fmt.Errorf("client rate limits must be positive: qps %g, burst %d", qps, burst)
	}
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		if cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
			return nil, err
		}
	} else if cfg, err = rest.InClusterConfig(); err != nil {
		return nil, fmt.Errorf("no --kubeconfig and not in a cluster (%v); use --standalone to serve CSI without the Kubernetes API", err)
	}
	cfg.QPS, cfg.Burst = qps, burst
	return cfg, nil
}
