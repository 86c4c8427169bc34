// Package dnsname turns the host names clients report into MagicDNS labels.
//
// Clients report whatever the OS calls the machine ("Joe's MacBook Pro"); the
// tailnet needs a lowercase DNS label that is unique among nodes.
package dnsname

import (
	"strconv"
	"strings"
)

// MaxLabel is the longest DNS label allowed.
const MaxLabel = 63

// Sanitize maps a host name to a DNS label: lowercase letters, digits and
// hyphens, no leading or trailing hyphen, at most 63 bytes. It returns "node"
// when nothing usable remains.
func Sanitize(host string) string {
	host, _, _ = strings.Cut(host, ".")
	var b strings.Builder
	lastHyphen := true
	for _, r := range strings.ToLower(host) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
			lastHyphen = false
		case r == '\'' || r == '’':
			// "Joe's" reads better as "joes" than "joe-s".
		default:
			if !lastHyphen {
				b.WriteByte('-')
				lastHyphen = true
			}
		}
	}
	s := strings.Trim(b.String(), "-")
	if len(s) > MaxLabel {
		s = strings.TrimRight(s[:MaxLabel], "-")
	}
	if s == "" {
		return "node"
	}
	return s
}

// Unique returns base, or base with the smallest "-N" suffix that taken
// reports as free.
func Unique(base string, taken func(string) bool) string {
	if !taken(base) {
		return base
	}
	for i := 1; ; i++ {
		suffix := "-" + strconv.Itoa(i)
		b := base
		if len(b)+len(suffix) > MaxLabel {
			b = strings.TrimRight(b[:MaxLabel-len(suffix)], "-")
		}
		if c := b + suffix; !taken(c) {
			return c
		}
	}
}

// Valid reports whether s is already a usable label (for admin renames).
func Valid(s string) bool {
	return s != "" && Sanitize(s) == s
}
