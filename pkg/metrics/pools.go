package metrics

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/carve-csi/carve/pkg/backend"
	"github.com/carve-csi/carve/pkg/volume"
)

// DefaultScrapeTimeout bounds one scrape of the pools; it stays below
// Prometheus' default 10 s scrape timeout so the rest of /metrics still arrives.
const DefaultScrapeTimeout = 5 * time.Second

var poolLabels = []string{"pool", "backend"}

var (
	poolUpDesc = prometheus.NewDesc("carve_pool_up",
		"1 if the pool's capacity and volumes could be read at this scrape, 0 if not (the other carve_pool_* figures are then absent).",
		poolLabels, nil)
	poolDegradedDesc = prometheus.NewDesc("carve_pool_degraded",
		"1 if the pool can be read but cannot create or grow volumes (a volume group missing a physical volume); its free and max volume bytes are then 0. The reason is in the log and in NodeStorage.",
		poolLabels, nil)
	poolScrapeErrorsDesc = prometheus.NewDesc("carve_pool_scrape_errors_total",
		"Scrapes that could not read the pool (tool failure or timeout).", poolLabels, nil)
	poolSizeDesc = prometheus.NewDesc("carve_pool_size_bytes",
		"Total size of the pool (vgs vg_size; for PMEM the size of its region or regions).", poolLabels, nil)
	poolFreeDesc = prometheus.NewDesc("carve_pool_free_bytes",
		"Free bytes in the pool, as GetCapacity reports them.", poolLabels, nil)
	poolMaxVolumeDesc = prometheus.NewDesc("carve_pool_max_volume_bytes",
		"Largest single volume the pool can still hold (GetCapacity's maximum_volume_size).", poolLabels, nil)
	poolVolumesDesc = prometheus.NewDesc("carve_pool_volumes",
		"carve-owned volumes in the pool; ephemeral=\"true\" are CSI inline volumes.",
		append(append([]string{}, poolLabels...), "ephemeral"), nil)
	poolVolumeBytesDesc = prometheus.NewDesc("carve_pool_volume_bytes",
		"Sum of the sizes of the carve-owned volumes in the pool.", poolLabels, nil)
	thinDataPercentDesc = prometheus.NewDesc("carve_pool_thin_data_percent",
		"lvm-thin pools: the thin pool's provisioned share of its data (lvs data_percent); new volumes are refused at carve_pool_thin_threshold_percent.", poolLabels, nil)
	thinMetadataPercentDesc = prometheus.NewDesc("carve_pool_thin_metadata_percent",
		"lvm-thin pools: the used share of the thin pool's metadata (lvs metadata_percent).", poolLabels, nil)
	thinThresholdDesc = prometheus.NewDesc("carve_pool_thin_threshold_percent",
		"lvm-thin pools: the data or metadata use at which new volumes and expansions are refused.", poolLabels, nil)
	thinVirtualDesc = prometheus.NewDesc("carve_pool_thin_virtual_bytes",
		"lvm-thin pools: the virtual sizes of every thin volume in the thin pool; carve_pool_size_bytes is the limit (data size times the overprovisioning ratio).", poolLabels, nil)
)

// Pools reads the node's pools at scrape time, with the same Capacity and
// List calls that GetCapacity and ListVolumes use, so no CSI call runs an
// extra tool and the figures are never older than the scrape.
type Pools struct {
	pools   []volume.Pool
	timeout time.Duration

	mu     sync.Mutex
	errors map[string]float64 // pool name -> failed scrapes
}

var _ prometheus.Collector = (*Pools)(nil)

// NewPools returns a collector for pools; timeout <= 0 means DefaultScrapeTimeout.
func NewPools(pools []volume.Pool, timeout time.Duration) *Pools {
	if timeout <= 0 {
		timeout = DefaultScrapeTimeout
	}
	return &Pools{pools: pools, timeout: timeout, errors: map[string]float64{}}
}

// Describe implements prometheus.Collector.
func (c *Pools) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolUpDesc, poolDegradedDesc, poolScrapeErrorsDesc, poolSizeDesc, poolFreeDesc,
		poolMaxVolumeDesc, poolVolumesDesc, poolVolumeBytesDesc, thinDataPercentDesc, thinMetadataPercentDesc, thinThresholdDesc, thinVirtualDesc} {
		ch <- d
	}
}

type poolReading struct {
	cap      backend.Capacity
	vols     []backend.Volume
	degraded error // the pool was read but is degraded (backend.ErrDegraded)
	err      error
}

func readPool(ctx context.Context, b backend.Backend) poolReading {
	c, err := b.Capacity(ctx)
	var degraded error
	if errors.Is(err, backend.ErrDegraded) {
		// Read fine, but offers no space: up, degraded, free 0.
		degraded, err = err, nil
		c.FreeBytes, c.MaxVolumeBytes = 0, 0
	}
	if err != nil {
		return poolReading{err: fmt.Errorf("capacity: %w", err)}
	}
	vs, err := b.List(ctx)
	if err != nil {
		return poolReading{err: fmt.Errorf("list: %w", err)}
	}
	return poolReading{cap: c, vols: vs, degraded: degraded}
}

// Collect implements prometheus.Collector. Pools are read in parallel; one
// that does not answer within the timeout is reported down without holding
// up the others (its tool is killed by the context).
func (c *Pools) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	results := make([]chan poolReading, len(c.pools))
	for i, p := range c.pools {
		results[i] = make(chan poolReading, 1) // buffered: a late reader never blocks
		go func() { results[i] <- readPool(ctx, p.Backend) }()
	}
	for i, p := range c.pools {
		var r poolReading
		select {
		case r = <-results[i]:
		case <-ctx.Done():
			// An answer that came while an earlier pool used up the time still counts.
			select {
			case r = <-results[i]:
			default:
				r.err = fmt.Errorf("no answer within %v", c.timeout)
			}
		}
		labels := []string{p.Name, p.Backend.Type()}
		c.mu.Lock()
		if r.err != nil {
			c.errors[p.Name]++
		}
		errs := c.errors[p.Name]
		c.mu.Unlock()
		ch <- prometheus.MustNewConstMetric(poolScrapeErrorsDesc, prometheus.CounterValue, errs, labels...)
		if r.err != nil {
			klog.ErrorS(r.err, "Reading pool for metrics", "pool", p.Name)
			ch <- prometheus.MustNewConstMetric(poolUpDesc, prometheus.GaugeValue, 0, labels...)
			continue
		}
		ch <- prometheus.MustNewConstMetric(poolUpDesc, prometheus.GaugeValue, 1, labels...)
		degraded := 0.0
		if r.degraded != nil {
			degraded = 1
			klog.InfoS("Pool is degraded: it offers no space", "pool", p.Name, "reason", r.degraded.Error())
		}
		ch <- prometheus.MustNewConstMetric(poolDegradedDesc, prometheus.GaugeValue, degraded, labels...)
		ch <- prometheus.MustNewConstMetric(poolSizeDesc, prometheus.GaugeValue, float64(r.cap.TotalBytes), labels...)
		ch <- prometheus.MustNewConstMetric(poolFreeDesc, prometheus.GaugeValue, float64(r.cap.FreeBytes), labels...)
		ch <- prometheus.MustNewConstMetric(poolMaxVolumeDesc, prometheus.GaugeValue, float64(r.cap.MaxVolumeBytes), labels...)
		if u := r.cap.Thin; r.cap.IsThin() {
			if u.Active { // an inactive pool's use is unknown: absent, not 0
				ch <- prometheus.MustNewConstMetric(thinDataPercentDesc, prometheus.GaugeValue, u.DataPercent, labels...)
				ch <- prometheus.MustNewConstMetric(thinMetadataPercentDesc, prometheus.GaugeValue, u.MetadataPercent, labels...)
			}
			ch <- prometheus.MustNewConstMetric(thinThresholdDesc, prometheus.GaugeValue, float64(u.ThresholdPercent), labels...)
			ch <- prometheus.MustNewConstMetric(thinVirtualDesc, prometheus.GaugeValue, float64(u.VirtualBytes), labels...)
		}
		var persistent, ephemeral, bytes float64
		for _, v := range r.vols {
			if v.Ephemeral {
				ephemeral++
			} else {
				persistent++
			}
			bytes += float64(v.SizeBytes)
		}
		ch <- prometheus.MustNewConstMetric(poolVolumesDesc, prometheus.GaugeValue, persistent, p.Name, p.Backend.Type(), "false")
		ch <- prometheus.MustNewConstMetric(poolVolumesDesc, prometheus.GaugeValue, ephemeral, p.Name, p.Backend.Type(), "true")
		ch <- prometheus.MustNewConstMetric(poolVolumeBytesDesc, prometheus.GaugeValue, bytes, labels...)
	}
}
