package scale

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
)

// settings are the benchmark's sizes; every one can be overridden by an
// environment variable (README.md, "Scale") so that a short run is possible.
type settings struct {
	Nodes      int           // CARVE_SCALE_NODES: simulated nodes
	Pods       int           // CARVE_SCALE_PODS: pods of item 1, each arm
	VolSize    int64         // CARVE_SCALE_VOLUME_SIZE: item 1's volumes (bytes)
	PoolBytes  int64         // CARVE_SCALE_POOL_SIZE: each node's pool (bytes)
	Burst      int           // CARVE_SCALE_BURST: pods of item 3
	BurstFit   int           // CARVE_SCALE_BURST_FIT: item 3's volumes one node holds
	DistNodes  int           // CARVE_SCALE_DIST_NODES: nodes of item 2 (one external-provisioner each in distributed mode)
	DistPods   int           // CARVE_SCALE_DIST_PODS: pods of item 2, each mode
	DistRate   float64       // CARVE_SCALE_DIST_RATE: item 2's pods created per second
	Idle       time.Duration // CARVE_SCALE_IDLE: idle window of item 4
	Scoring    []string      // CARVE_SCALE_SCORING: StorageCapacityScoring values, one control plane each
	KCMArgs    string        // CARVE_SCALE_KCM_ARGS: extra kube-controller-manager flags
	SchedArgs  string        // CARVE_SCALE_SCHEDULER_ARGS: extra kube-scheduler flags
	Resync     time.Duration // CARVE_SCALE_RESYNC: the node agents' --capacity-resync
	PhaseLimit time.Duration // CARVE_SCALE_PHASE_TIMEOUT: bound of every wait for a phase to finish
}

func loadSettings(tb testing.TB) settings {
	s := settings{Nodes: 100, Pods: 1000, VolSize: 64 << 20, PoolBytes: 20 << 30, Burst: 200, BurstFit: 3,
		DistNodes: 20, DistPods: 200, DistRate: 10, Idle: 75 * time.Second, Scoring: []string{"true", "false"},
		Resync: time.Minute, PhaseLimit: 15 * time.Minute}
	intVar := func(name string, p *int) {
		if v := os.Getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				tb.Fatalf("%s=%q: want a positive integer", name, v)
			}
			*p = n
		}
	}
	sizeVar := func(name string, p *int64) {
		if v := os.Getenv(name); v != "" {
			q, err := resource.ParseQuantity(v)
			if err != nil || q.Value() <= 0 {
				tb.Fatalf("%s=%q: want a positive quantity (64Mi)", name, v)
			}
			*p = q.Value()
		}
	}
	durVar := func(name string, p *time.Duration) {
		if v := os.Getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				tb.Fatalf("%s=%q: want a positive duration (90s)", name, v)
			}
			*p = d
		}
	}
	intVar("CARVE_SCALE_NODES", &s.Nodes)
	intVar("CARVE_SCALE_PODS", &s.Pods)
	sizeVar("CARVE_SCALE_VOLUME_SIZE", &s.VolSize)
	sizeVar("CARVE_SCALE_POOL_SIZE", &s.PoolBytes)
	intVar("CARVE_SCALE_BURST", &s.Burst)
	intVar("CARVE_SCALE_BURST_FIT", &s.BurstFit)
	intVar("CARVE_SCALE_DIST_NODES", &s.DistNodes)
	intVar("CARVE_SCALE_DIST_PODS", &s.DistPods)
	durVar("CARVE_SCALE_IDLE", &s.Idle)
	durVar("CARVE_SCALE_RESYNC", &s.Resync)
	durVar("CARVE_SCALE_PHASE_TIMEOUT", &s.PhaseLimit)
	if v := os.Getenv("CARVE_SCALE_DIST_RATE"); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r <= 0 {
			tb.Fatalf("CARVE_SCALE_DIST_RATE=%q: want pods per second", v)
		}
		s.DistRate = r
	}
	if v := os.Getenv("CARVE_SCALE_SCORING"); v != "" {
		s.Scoring = strings.Split(v, ",")
		for _, x := range s.Scoring {
			if x != "true" && x != "false" {
				tb.Fatalf("CARVE_SCALE_SCORING=%q: want true, false or both (true,false)", v)
			}
		}
	}
	s.KCMArgs = os.Getenv("CARVE_SCALE_KCM_ARGS")
	s.SchedArgs = os.Getenv("CARVE_SCALE_SCHEDULER_ARGS")
	s.DistNodes = min(s.DistNodes, s.Nodes)
	if s.VolSize*int64(s.Pods) > s.PoolBytes*int64(s.Nodes)/2 {
		tb.Fatalf("%d volumes of %d bytes need more than half of %d pools of %d bytes: item 1 must fit wherever the scheduler puts them",
			s.Pods, s.VolSize, s.Nodes, s.PoolBytes)
	}
	if s.Burst > s.BurstFit*s.Nodes {
		tb.Fatalf("a burst of %d pods cannot fit on %d nodes holding %d each", s.Burst, s.Nodes, s.BurstFit)
	}
	return s
}

// burstSize is the size of item 3's volumes: BurstFit of them fit in a pool,
// one more does not (pool/(fit+1/2), whole 4 MiB extents).
func (s settings) burstSize() int64 {
	return s.PoolBytes * 2 / int64(2*s.BurstFit+1) &^ (4<<20 - 1)
}

// clientLimits is a control-plane client's client-side limit as this run
// starts it: kube-scheduler's --kube-api-qps/--kube-api-burst defaults
// (50/100; its events go through a second client) unless
// CARVE_SCALE_SCHEDULER_ARGS sets them, and kube-controller-manager's
// (20/30; each controller's client, its events included, has its own
// limiter) unless CARVE_SCALE_KCM_ARGS sets them.
func (s settings) clientLimits(client string) clientLimit {
	if strings.HasPrefix(client, "kube-scheduler/") {
		return limitFlags(clientLimit{qps: 50, burst: 100, eventsApart: true}, s.SchedArgs)
	}
	return limitFlags(clientLimit{qps: 20, burst: 30}, s.KCMArgs)
}

// limitFlags applies --kube-api-qps and --kube-api-burst of args to l.
func limitFlags(l clientLimit, args string) clientLimit {
	for _, f := range strings.Fields(args) {
		if v, ok := strings.CutPrefix(f, "--kube-api-qps="); ok {
			if q, err := strconv.ParseFloat(v, 64); err == nil {
				l.qps = q
			}
		}
		if v, ok := strings.CutPrefix(f, "--kube-api-burst="); ok {
			if b, err := strconv.Atoi(v); err == nil {
				l.burst = b
			}
		}
	}
	return l
}
