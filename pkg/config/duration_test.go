package config

import (
	"strings"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	const day = 24 * time.Hour
	tests := []struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		{in: "0", want: 0},
		{in: "-0", want: 0},
		{in: "90m", want: 90 * time.Minute},
		{in: "1h30m", want: 90 * time.Minute},
		{in: "180d", want: 180 * day},
		{in: "1w2d", want: 9 * day},
		{in: "1y", want: 365 * day},
		{in: "1.5d", want: 36 * time.Hour},
		{in: "2d12h", want: 60 * time.Hour},
		{in: "500ms", want: 500 * time.Millisecond},
		{in: " 30s ", want: 30 * time.Second},
		{in: "-1d", want: -day},
		{in: "+2w", want: 14 * day},
		{in: "1y1w1d1h1m1s", want: 365*day + 8*day + time.Hour + time.Minute + time.Second},
		{in: "", wantErr: "empty"},
		{in: "30", wantErr: "needs a unit"},
		{in: "d", wantErr: "expected a number"},
		{in: "5x", wantErr: "unknown unit"},
		{in: "1.2.3d", wantErr: "invalid duration"},
		{in: "300y", wantErr: "too large"},
		{in: "290y290y", wantErr: "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDuration(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseDuration(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseDuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}
