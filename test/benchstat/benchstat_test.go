package benchstat

import (
	"testing"
	"time"
)

func TestMedianAndPairedRatio(t *testing.T) {
	s := time.Second
	if got := Median([]time.Duration{3 * s, 1 * s, 2 * s}); got != 2*s {
		t.Errorf("odd median %v", got)
	}
	if got := Median([]time.Duration{4 * s, 1 * s, 2 * s, 3 * s}); got != 2500*time.Millisecond {
		t.Errorf("even median %v", got)
	}
	if Median(nil) != 0 || PairedRatio(nil, nil) != 0 {
		t.Error("empty input")
	}
	// Round 2 ran on a slow spell: both arms doubled, its ratio stays 1.1.
	arm := []time.Duration{1100 * time.Millisecond, 2200 * time.Millisecond, 1100 * time.Millisecond}
	bare := []time.Duration{1000 * time.Millisecond, 2000 * time.Millisecond, 1000 * time.Millisecond}
	if got := PairedRatio(arm, bare); got < 1.0999 || got > 1.1001 {
		t.Errorf("paired ratio %v, want 1.1", got)
	}
}

func TestPairedRatioRounds(t *testing.T) {
	s := time.Second
	// Round 2 ran while the machine was slow: it moves both medians, not the rounds' ratios.
	carve, bare := []time.Duration{2 * s, 6 * s, 2 * s}, []time.Duration{2 * s, 3 * s, 2 * s}
	if got := PairedRatio(carve, bare); got != 1 {
		t.Errorf("PairedRatio = %v, want 1", got)
	}
	if got := PairedRatio(append(carve, 3*s), append(bare, 2*s)); got != 1.25 {
		t.Errorf("PairedRatio of 4 rounds (1, 2, 1, 1.5) = %v, want 1.25 (mean of the middle two)", got)
	}
}
