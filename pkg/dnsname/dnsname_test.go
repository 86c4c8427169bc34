package dnsname

import (
	"strings"
	"testing"
)

func TestSanitize(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Joe's Mac mini", "joes-mac-mini"},
		{"laptop.local", "laptop"},
		{"--x--", "x"},
		{"", "node"},
		{"ÄÖÜ", "node"},
		{"web_01", "web-01"},
		{strings.Repeat("a", 70), strings.Repeat("a", 63)},
	} {
		if got := Sanitize(tc.in); got != tc.want {
			t.Errorf("Sanitize(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestUnique(t *testing.T) {
	taken := map[string]bool{"a": true, "a-1": true}
	if got := Unique("a", func(s string) bool { return taken[s] }); got != "a-2" {
		t.Fatalf("got %q", got)
	}
	if got := Unique("b", func(s string) bool { return taken[s] }); got != "b" {
		t.Fatalf("got %q", got)
	}
}
