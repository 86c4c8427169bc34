package loadgen

import (
	"math"
	"math/bits"
	"slices"
	"time"
)

// Latency summarises a latency distribution in milliseconds.
type Latency struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// rank is the 1-based nearest rank of the p-th percentile among n values.
func rank(p float64, n int64) int64 {
	r := int64(math.Ceil(p / 100 * float64(n)))
	return min(max(r, 1), n)
}

// percentile is the p-th percentile (nearest rank) of sorted values.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[rank(p, int64(len(sorted)))-1]
}

// summarize sorts d in place and summarises it exactly.
func summarize(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	slices.Sort(d)
	return Latency{
		Count: int64(len(d)),
		P50:   ms(percentile(d, 50)),
		P90:   ms(percentile(d, 90)),
		P99:   ms(percentile(d, 99)),
		Max:   ms(d[len(d)-1]),
	}
}

// histSub is log2 of the number of sub-buckets per power of two: values
// are kept with a relative error below 1/2^(histSub-1) (about 3%).
const histSub = 6

// histBuckets covers microsecond values up to 2^40 (12 days).
const histBuckets = (40-histSub+2)<<(histSub-1) + 1

// histogram is a log-linear histogram of durations at microsecond
// resolution, for distributions too large to keep every sample of.
type histogram struct {
	counts [histBuckets]int64
	n      int64
	max    time.Duration
}

func bucketOf(us uint64) int {
	if us < 1<<histSub {
		return int(us)
	}
	e := bits.Len64(us) - histSub
	return min(e<<(histSub-1)+int(us>>e), histBuckets-1)
}

// bucketTop is the largest microsecond value bucket b holds.
func bucketTop(b int) uint64 {
	if b < 1<<histSub {
		return uint64(b)
	}
	e := b>>(histSub-1) - 1
	m := uint64(b - e<<(histSub-1))
	return (m+1)<<e - 1
}

func (h *histogram) add(d time.Duration) {
	us := max(d.Microseconds(), 0)
	h.counts[bucketOf(uint64(us))]++
	h.n++
	h.max = max(h.max, d)
}

// quantile is the p-th percentile (nearest rank), as the top of its
// bucket but never above the largest value seen.
func (h *histogram) quantile(p float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	r := rank(p, h.n)
	var cum int64
	for b, c := range h.counts {
		cum += c
		if cum >= r {
			return min(time.Duration(bucketTop(b))*time.Microsecond, h.max)
		}
	}
	return h.max
}

func (h *histogram) summary() Latency {
	if h.n == 0 {
		return Latency{}
	}
	return Latency{
		Count: h.n,
		P50:   ms(h.quantile(50)),
		P90:   ms(h.quantile(90)),
		P99:   ms(h.quantile(99)),
		Max:   ms(h.max),
	}
}
