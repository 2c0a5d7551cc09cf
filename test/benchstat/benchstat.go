// Package benchstat holds the statistics carve's benchmarks print: medians
// of durations and the median of paired ratios (issue 13's node-path and
// PMEM benchmarks, which run in different test packages).
package benchstat

import (
	"slices"
	"time"
)

// Median is the median of d (the mean of the two middle values for an even
// count); 0 for none.
func Median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// PairedRatio is the median of the per-round ratios arm[i]/bare[i] over the
// rounds both have: the arms of one round run back to back, so a slow spell
// of a shared, emulated machine stretches both sides of the same ratio
// instead of whichever arm's median it lands in. 0 for no rounds.
func PairedRatio(arm, bare []time.Duration) float64 {
	n := min(len(arm), len(bare))
	if n == 0 {
		return 0
	}
	r := make([]float64, n)
	for i := range n {
		r[i] = float64(arm[i]) / float64(bare[i])
	}
	slices.Sort(r)
	if n%2 == 1 {
		return r[n/2]
	}
	return (r[n/2-1] + r[n/2]) / 2
}
