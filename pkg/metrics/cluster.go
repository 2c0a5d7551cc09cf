package metrics

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/carve-csi/carve/pkg/apis/carve/v1alpha1"
)

var (
	localVolumesDesc = prometheus.NewDesc("carve_localvolumes",
		"LocalVolume objects in the cluster by status phase (no phase yet counts as Pending).", []string{"phase"}, nil)
	localVolumesErrorsDesc = prometheus.NewDesc("carve_localvolumes_scrape_errors_total",
		"Scrapes that could not list LocalVolumes (carve_localvolumes is then absent).", nil, nil)
)

// LocalVolumes counts the cluster's LocalVolumes by phase at scrape time. The
// reader should be the controller manager's cached client, whose informer
// the release controller keeps anyway, so a scrape costs no API call.
type LocalVolumes struct {
	reader  client.Reader
	timeout time.Duration

	mu     sync.Mutex
	errors float64
}

var _ prometheus.Collector = (*LocalVolumes)(nil)

// NewLocalVolumes returns a collector listing through r; timeout <= 0 means
// DefaultScrapeTimeout (the cache waits for its first sync within it).
func NewLocalVolumes(r client.Reader, timeout time.Duration) *LocalVolumes {
	if timeout <= 0 {
		timeout = DefaultScrapeTimeout
	}
	return &LocalVolumes{reader: r, timeout: timeout}
}

// Describe implements prometheus.Collector.
func (c *LocalVolumes) Describe(ch chan<- *prometheus.Desc) {
	ch <- localVolumesDesc
	ch <- localVolumesErrorsDesc
}

// Collect implements prometheus.Collector.
func (c *LocalVolumes) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	var list v1alpha1.LocalVolumeList
	err := c.reader.List(ctx, &list)
	c.mu.Lock()
	if err != nil {
		c.errors++
	}
	errs := c.errors
	c.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(localVolumesErrorsDesc, prometheus.CounterValue, errs)
	if err != nil {
		klog.ErrorS(err, "Listing LocalVolumes for metrics")
		return
	}
	count := map[v1alpha1.LocalVolumePhase]float64{v1alpha1.PhasePending: 0, v1alpha1.PhaseReady: 0, v1alpha1.PhaseFailed: 0}
	for _, lv := range list.Items {
		phase := lv.Status.Phase
		if phase == "" {
			phase = v1alpha1.PhasePending
		}
		count[phase]++
	}
	for phase, n := range count {
		ch <- prometheus.MustNewConstMetric(localVolumesDesc, prometheus.GaugeValue, n, string(phase))
	}
}
