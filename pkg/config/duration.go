package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Units ParseDuration adds on top of time.ParseDuration.
const (
	day  = 24 * time.Hour
	week = 7 * day
	year = 365 * day
)

// ParseDuration parses Go durations plus the suffixes d (days), w (weeks)
// and y (365 days), which Headscale users write for key expiries: "180d",
// "1w2d", "90m", "1.5d". "0" means zero; a leading sign is allowed. It exists
// so node.expiry and the CLI's --expiration accept the same syntax.
func ParseDuration(s string) (time.Duration, error) {
	orig := s
	s = strings.TrimSpace(s)
	neg := false
	if s != "" && (s[0] == '-' || s[0] == '+') {
		neg = s[0] == '-'
		s = s[1:]
	}
	if s == "0" {
		return 0, nil
	}
	if s == "" {
		return 0, fmt.Errorf("invalid duration %q: empty", orig)
	}

	var total time.Duration
	for s != "" {
		// One segment: a number and a unit.
		i := 0
		for i < len(s) && (s[i] == '.' || (s[i] >= '0' && s[i] <= '9')) {
			i++
		}
		num := s[:i]
		j := i
		for j < len(s) && s[j] != '.' && (s[j] < '0' || s[j] > '9') {
			j++
		}
		unit := s[i:j]
		seg := s[:j]
		s = s[j:]
		if num == "" || num == "." {
			return 0, fmt.Errorf("invalid duration %q: expected a number before %q", orig, unit)
		}
		if unit == "" {
			return 0, fmt.Errorf("invalid duration %q: %s needs a unit (ns, us, ms, s, m, h, d, w, y)", orig, num)
		}

		var d time.Duration
		switch unit {
		case "d", "w", "y":
			mult := map[string]time.Duration{"d": day, "w": week, "y": year}[unit]
			f, err := strconv.ParseFloat(num, 64)
			if err != nil {
				return 0, fmt.Errorf("invalid duration %q: %w", orig, err)
			}
			v := f * float64(mult)
			if v >= math.MaxInt64 {
				return 0, fmt.Errorf("invalid duration %q: too large", orig)
			}
			d = time.Duration(math.Round(v))
		default:
			var err error
			d, err = time.ParseDuration(seg)
			if err != nil {
				return 0, fmt.Errorf("invalid duration %q: %w", orig, err)
			}
		}
		if total > math.MaxInt64-d {
			return 0, fmt.Errorf("invalid duration %q: too large", orig)
		}
		total += d
	}
	if neg {
		total = -total
	}
	return total, nil
}
