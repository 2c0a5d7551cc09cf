package volume

import (
	"errors"
	"math"
	"testing"
)

// FuzzSizeFor: the size chosen for a capacity range is positive, a multiple
// of the pool's granularity, inside the range and the smallest such size; when
// there is none (including sizes whose rounding would overflow int64) the
// answer is ErrOutOfRange, never a wrapped-around size.
func FuzzSizeFor(f *testing.F) {
	for _, s := range [][3]int64{
		{0, 0, 4 << 20}, {1, 0, 4 << 20}, {1 << 30, 0, 4 << 20}, {100 << 20, 100 << 20, 4 << 20},
		{5 << 20, 6 << 20, 4 << 20}, {0, 1, 2 << 20}, {0, 512 << 20, 2 << 20}, {-1, 0, 1}, {1, -1, 1},
		{math.MaxInt64, 0, 4 << 20}, {math.MaxInt64 - 1, 0, 2 << 20}, {math.MaxInt64, math.MaxInt64, 1},
		{3, 0, 0}, {3, 0, -8}, {1 << 62, 0, 3}, {math.MaxInt64 - 1, 0, 3},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, required, limit, align int64) {
		r := Range{RequiredBytes: required, LimitBytes: limit}
		size, err := SizeFor(r, align)
		step := max(align, 1)
		if err != nil {
			if !errors.Is(err, ErrOutOfRange) {
				t.Fatalf("SizeFor(%+v, %d): %v, want ErrOutOfRange", r, align, err)
			}
			if required < 0 || limit < 0 || (limit > 0 && limit < required) {
				return
			}
			// Refused although a multiple of step may fit: there must be none
			// in [want, limit], or none below MaxInt64.
			want := required
			if want == 0 {
				want = min(DefaultSizeBytes, limit)
				if limit == 0 {
					want = DefaultSizeBytes
				}
			}
			top := int64(math.MaxInt64)
			if limit > 0 {
				top = limit
			}
			if top/step*step >= want {
				t.Fatalf("SizeFor(%+v, %d) refused, but %d fits: %v", r, align, top/step*step, err)
			}
			return
		}
		if size <= 0 || size%step != 0 || !r.Contains(size) {
			t.Fatalf("SizeFor(%+v, %d) = %d: not a positive multiple of %d inside the range", r, align, size, step)
		}
		if required > 0 && size-step >= required {
			t.Fatalf("SizeFor(%+v, %d) = %d: %d is smaller and fits", r, align, size, size-step)
		}
		if required == 0 && size > DefaultSizeBytes && size-step >= DefaultSizeBytes {
			t.Fatalf("SizeFor(%+v, %d) = %d: above the default size", r, align, size)
		}
	})
}
