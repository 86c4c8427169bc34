// Package clientaddr tells who made an HTTP request: the address of the
// connection, or, when that connection comes from a trusted reverse proxy
// (the trusted_proxies setting), the client address the proxy reports in
// X-Forwarded-For or X-Real-IP. Headers from anyone else are ignored, so a
// client cannot choose the address logs, limits and metrics see.
//
// X-Forwarded-For is read right to left: each proxy appends the address it
// received the request from, so the entries a client may have forged are on
// the left. The answer is the right-most entry that is not itself a
// trusted proxy. X-Real-IP (one address, set by the last proxy) is used
// only when X-Forwarded-For is absent. X-Forwarded-Proto and
// X-Forwarded-Host are not read at all: URLs the server gives out are built
// from server_url.
package clientaddr

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Resolver finds a request's client address. Its zero value and a nil
// *Resolver trust no proxy. It is safe for concurrent use: it is never
// changed after New.
type Resolver struct {
	trusted []netip.Prefix
}

// New returns a Resolver trusting proxies connecting from trusted.
func New(trusted []netip.Prefix) *Resolver {
	r := &Resolver{}
	for _, p := range trusted {
		r.trusted = append(r.trusted, netip.PrefixFrom(p.Addr().Unmap(), unmappedBits(p)).Masked())
	}
	return r
}

// unmappedBits is p's length for its unmapped address (::ffff:10.0.0.0/104
// is 10.0.0.0/8).
func unmappedBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return max(0, p.Bits()-96)
	}
	return p.Bits()
}

// ParsePrefix reads one trusted_proxies entry: an address (a single proxy)
// or a CIDR prefix. Host names are refused: the check must not depend on
// DNS.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Prefix{}, fmt.Errorf("empty entry: give an address (10.0.0.5) or a prefix (10.0.0.0/24)")
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a prefix like 10.0.0.0/24 or fd00::/64: %w", s, err)
		}
		if p.Addr().Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q: a zone is not allowed", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or prefix (host names are not accepted): %w", s, err)
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q: a zone is not allowed", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// ParseList reads a trusted_proxies list; the error names the first bad
// entry (1-based).
func ParseList(entries []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(entries))
	for i, e := range entries {
		p, err := ParsePrefix(e)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i+1, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// Trusted reports whether a is a trusted proxy.
func (r *Resolver) Trusted(a netip.Addr) bool {
	if r == nil || !a.IsValid() {
		return false
	}
	a = a.Unmap().WithZone("")
	for _, p := range r.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Peer is the address of the connection that sent req; for a request not
// over TCP or UDP (a unix socket) it is the invalid netip.Addr.
func Peer(req *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(req.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap().WithZone("")
}

// Addr is req's client address: the connection's, unless the connection
// comes from a trusted proxy and the headers name another one (see the
// package comment). It is the invalid netip.Addr when req did not come
// over IP and no trusted proxy vouches for an address.
func (r *Resolver) Addr(req *http.Request) netip.Addr {
	peer := Peer(req)
	if !r.Trusted(peer) {
		return peer
	}
	if xff := req.Header.Values("X-Forwarded-For"); len(xff) > 0 {
		var hops []string
		for _, line := range xff {
			hops = append(hops, strings.Split(line, ",")...)
		}
		client := peer
		for i := len(hops) - 1; i >= 0; i-- {
			a, ok := parseHop(hops[i])
			if !ok {
				// Garbage in the chain: nothing left of it can be
				// believed; the last trusted hop is the best answer.
				return client
			}
			client = a
			if !r.Trusted(a) {
				return a
			}
		}
		return client // every hop a trusted proxy: the left-most
	}
	if v := req.Header.Values("X-Real-IP"); len(v) > 0 {
		if a, ok := parseHop(v[len(v)-1]); ok {
			return a
		}
	}
	return peer
}

// Text is Addr as text for logs: "unix" for a request over a unix socket.
func (r *Resolver) Text(req *http.Request) string {
	a := r.Addr(req)
	if !a.IsValid() {
		return "unix"
	}
	return a.String()
}

// parseHop reads one X-Forwarded-For entry or X-Real-IP value: an address,
// possibly with a port ("192.0.2.1:4711", "[2001:db8::1]:4711") or in
// brackets.
func parseHop(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return a.Unmap(), true
	}
	if host, _, err := net.SplitHostPort(s); err == nil {
		s = host
	} else {
		s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}
