package loadgen

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	got := summarize(d)
	want := Latency{Count: 100, P50: 50, P90: 90, P99: 99, Max: 100}
	if got != want {
		t.Errorf("1..100 ms: %+v, want %+v", got, want)
	}
	// Nearest rank on a small set: p50 of three is the second, p99 the third.
	three := []time.Duration{30 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond}
	if got := summarize(three); got != (Latency{Count: 3, P50: 20, P90: 30, P99: 30, Max: 30}) {
		t.Errorf("three: %+v", got)
	}
	if got := summarize([]time.Duration{1500 * time.Microsecond}); got != (Latency{Count: 1, P50: 1.5, P90: 1.5, P99: 1.5, Max: 1.5}) {
		t.Errorf("one: %+v", got)
	}
	if got := summarize(nil); got != (Latency{}) {
		t.Errorf("none: %+v", got)
	}
	for _, c := range []struct {
		p    float64
		n    int64
		want int64
	}{{50, 1, 1}, {50, 2, 1}, {50, 3, 2}, {90, 10, 9}, {99, 10, 10}, {99, 1000, 990}, {100, 7, 7}, {0, 7, 1}} {
		if got := rank(c.p, c.n); got != c.want {
			t.Errorf("rank(%v, %d) = %d, want %d", c.p, c.n, got, c.want)
		}
	}
}

func TestHistogramBuckets(t *testing.T) {
	prev := -1
	for us := uint64(0); us < 1<<22; us += 1 + us/97 {
		b := bucketOf(us)
		if b < prev {
			t.Fatalf("bucketOf not monotonic at %d", us)
		}
		prev = b
		top := bucketTop(b)
		if top < us {
			t.Fatalf("bucketTop(bucketOf(%d)) = %d, below the value", us, top)
		}
		if us >= 64 && float64(top-us) > float64(us)/32 {
			t.Fatalf("bucket of %d tops at %d: error above 1/32", us, top)
		}
		if b > 0 && bucketTop(b-1) >= us {
			t.Fatalf("value %d also fits the bucket below", us)
		}
	}
	if b := bucketOf(1 << 62); b != histBuckets-1 {
		t.Errorf("huge value in bucket %d", b)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h histogram
	var exact []time.Duration
	for range 20000 {
		// Log-normal-ish latencies from 50 µs to seconds.
		d := time.Duration(50+rng.ExpFloat64()*rng.ExpFloat64()*3000) * time.Microsecond
		h.add(d)
		exact = append(exact, d)
	}
	slices.Sort(exact)
	for _, p := range []float64{50, 90, 99, 99.9, 100} {
		want := percentile(exact, p)
		got := h.quantile(p)
		if got < want || float64(got-want) > float64(want)/32+float64(time.Microsecond) {
			t.Errorf("p%v = %v, exact %v", p, got, want)
		}
	}
	s := h.summary()
	if s.Count != 20000 || s.Max != ms(exact[len(exact)-1]) {
		t.Errorf("summary %+v", s)
	}
	var empty histogram
	if empty.quantile(50) != 0 || empty.summary() != (Latency{}) {
		t.Error("empty histogram")
	}
	var one histogram
	one.add(-time.Second) // clock steps are clamped, not a panic
	one.add(1234 * time.Microsecond)
	if one.quantile(100) != 1234*time.Microsecond {
		t.Errorf("max of two: %v", one.quantile(100))
	}
}
