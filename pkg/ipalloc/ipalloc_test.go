package ipalloc

import (
	"errors"
	"net/netip"
	"testing"
)

func TestSequential(t *testing.T) {
	a := New(netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd7a:115c:a1e0::/48"), Sequential)
	v4, v6, err := a.Next()
	if err != nil {
		t.Fatal(err)
	}
	if v4.String() != "100.64.0.1" || v6.String() != "fd7a:115c:a1e0::1" {
		t.Fatalf("got %v %v", v4, v6)
	}
	a.Reserve(netip.MustParseAddr("100.64.0.2"))
	v4, _, _ = a.Next()
	if v4.String() != "100.64.0.3" {
		t.Fatalf("got %v, want skip of reserved", v4)
	}
	a.Release(netip.MustParseAddr("100.64.0.1"))
	v4, _, _ = a.Next()
	if v4.String() != "100.64.0.4" {
		t.Fatalf("sequential should continue after last pick, got %v", v4)
	}
}

func TestSkipsReservedAndExhausts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		prefix string
		want   []string
	}{
		{"tiny v4", "100.100.100.96/30", []string{"100.100.100.97", "100.100.100.98"}},
		{"service ip", "100.100.100.96/29", []string{"100.100.100.97", "100.100.100.98", "100.100.100.99", "100.100.100.101", "100.100.100.102"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := New(netip.MustParsePrefix(tc.prefix), netip.Prefix{}, Sequential)
			for _, w := range tc.want {
				got, v6, err := a.Next()
				if err != nil || got.String() != w || v6.IsValid() {
					t.Fatalf("got %v %v %v, want %v", got, v6, err, w)
				}
			}
			if _, _, err := a.Next(); !errors.Is(err, ErrExhausted) {
				t.Fatalf("err = %v, want exhausted", err)
			}
		})
	}
	a := New(netip.MustParsePrefix("100.100.100.96/30"), netip.Prefix{}, Sequential)
	a.Next()
	a.Next()
	a.Release(netip.MustParseAddr("100.100.100.97"))
	if got, _, err := a.Next(); err != nil || got.String() != "100.100.100.97" {
		t.Fatalf("wrap-around: got %v %v", got, err)
	}
}

func TestRandomUnique(t *testing.T) {
	a := New(netip.MustParsePrefix("100.64.0.0/24"), netip.MustParsePrefix("fd7a:115c:a1e0::/120"), Random)
	seen := map[netip.Addr]bool{}
	for i := 0; i < 200; i++ {
		v4, v6, err := a.Next()
		if err != nil {
			t.Fatal(err)
		}
		if seen[v4] || seen[v6] {
			t.Fatalf("duplicate %v %v", v4, v6)
		}
		seen[v4], seen[v6] = true, true
	}
}

func TestNextOf(t *testing.T) {
	a := New(netip.MustParsePrefix("100.64.0.0/10"), netip.Prefix{}, Sequential)
	a.Reserve(netip.MustParseAddr("100.64.0.1"))
	if ip, err := a.NextOf(true); err != nil || ip.String() != "100.64.0.2" {
		t.Fatalf("v4: %v %v", ip, err)
	}
	if v4, _, _ := a.Next(); v4.String() != "100.64.0.3" {
		t.Fatalf("Next after NextOf: %v", v4)
	}
	if ip, err := a.NextOf(false); err == nil {
		t.Fatalf("v6 is not configured, got %v", ip)
	}
	if v4, v6 := a.Prefixes(); v4.String() != "100.64.0.0/10" || v6.IsValid() {
		t.Fatalf("prefixes %v %v", v4, v6)
	}
}
