// Package ipalloc hands out tailnet addresses from the configured prefixes.
//
// Each node gets at most one IPv4 and one IPv6 address. Addresses stay with a
// node for its lifetime (the server reloads them from the store at start-up)
// and return to the pool when the node is deleted.
package ipalloc

import (
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"sync"

	"tailscale.com/net/tsaddr"
)

// ErrExhausted reports that a prefix has no free address left.
var ErrExhausted = errors.New("address pool exhausted")

// Strategy names how the next free address is chosen.
type Strategy string

// The strategies Headscale users know from prefixes.allocation.
const (
	Sequential Strategy = "sequential"
	Random     Strategy = "random"
)

// Allocator tracks which addresses are in use. It is safe for concurrent use.
type Allocator struct {
	v4, v6   netip.Prefix
	strategy Strategy

	mu   sync.Mutex
	used map[netip.Addr]bool
	last map[bool]netip.Addr // per family (true = v4): last sequential pick
}

// New returns an allocator for the given prefixes; a zero prefix disables
// that family.
func New(v4, v6 netip.Prefix, strategy Strategy) *Allocator {
	if strategy == "" {
		strategy = Sequential
	}
	return &Allocator{
		v4: v4.Masked(), v6: v6.Masked(), strategy: strategy,
		used: make(map[netip.Addr]bool),
		last: make(map[bool]netip.Addr),
	}
}

// Reserve marks addresses already held by existing nodes. Invalid addresses
// are ignored.
func (a *Allocator) Reserve(addrs ...netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ip := range addrs {
		if ip.IsValid() {
			a.used[ip] = true
		}
	}
}

// Release returns addresses to the pool.
func (a *Allocator) Release(addrs ...netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ip := range addrs {
		delete(a.used, ip)
	}
}

// Next allocates one address from each configured family. On error nothing
// is allocated.
func (a *Allocator) Next() (v4, v6 netip.Addr, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.v4.IsValid() {
		if v4, err = a.pick(a.v4); err != nil {
			return netip.Addr{}, netip.Addr{}, fmt.Errorf("allocating from %v: %w", a.v4, err)
		}
	}
	if a.v6.IsValid() {
		if v6, err = a.pick(a.v6); err != nil {
			return netip.Addr{}, netip.Addr{}, fmt.Errorf("allocating from %v: %w", a.v6, err)
		}
	}
	if v4.IsValid() {
		a.used[v4] = true
		a.last[true] = v4
	}
	if v6.IsValid() {
		a.used[v6] = true
		a.last[false] = v6
	}
	return v4, v6, nil
}

// pick finds a free address in p, starting after the last pick (sequential)
// or at a random offset (random), wrapping around once.
func (a *Allocator) pick(p netip.Prefix) (netip.Addr, error) {
	first := p.Addr().Next() // skip the network address
	start := first
	if a.strategy == Random {
		start = randomIn(p)
	} else if l, ok := a.last[p.Addr().Is4()]; ok && p.Contains(l) {
		start = l.Next()
	}
	ip := start
	for wrapped := false; ; {
		if !ip.IsValid() || !p.Contains(ip) {
			if wrapped {
				return netip.Addr{}, ErrExhausted
			}
			wrapped = true
			ip = first
		}
		if wrapped && ip == start {
			return netip.Addr{}, ErrExhausted
		}
		if a.usable(p, ip) {
			return ip, nil
		}
		ip = ip.Next()
		if ip == start {
			return netip.Addr{}, ErrExhausted
		}
	}
}

func (a *Allocator) usable(p netip.Prefix, ip netip.Addr) bool {
	if a.used[ip] {
		return false
	}
	if ip.Is4() {
		if ip == tsaddr.TailscaleServiceIP() || tsaddr.ChromeOSVMRange().Contains(ip) {
			return false
		}
		if isBroadcast(p, ip) {
			return false
		}
	} else if ip == tsaddr.TailscaleServiceIPv6() {
		return false
	}
	return true
}

func isBroadcast(p netip.Prefix, ip netip.Addr) bool {
	return ip.Next().IsValid() && !p.Contains(ip.Next())
}

func randomIn(p netip.Prefix) netip.Addr {
	bits := p.Addr().BitLen() - p.Bits()
	if bits > 62 {
		bits = 62
	}
	n, err := rand.Int(rand.Reader, big.NewInt(1<<bits))
	if err != nil {
		return p.Addr().Next()
	}
	b := p.Addr().AsSlice()
	off := n.Uint64()
	for i := len(b) - 1; i >= 0 && off > 0; i-- {
		sum := uint64(b[i]) + off&0xff
		b[i] = byte(sum)
		off = off>>8 + sum>>8
	}
	ip, _ := netip.AddrFromSlice(b)
	if !p.Contains(ip) {
		return p.Addr().Next()
	}
	return ip
}

// Prefixes returns the configured prefixes; a zero prefix means the
// family is not configured.
func (a *Allocator) Prefixes() (v4, v6 netip.Prefix) {
	return a.v4, a.v6
}

// NextOf allocates one address of one family (IPv4 when v4 is set),
// which must be configured.
func (a *Allocator) NextOf(v4 bool) (netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.v6
	if v4 {
		p = a.v4
	}
	if !p.IsValid() {
		return netip.Addr{}, fmt.Errorf("no prefix is configured for this address family")
	}
	ip, err := a.pick(p)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("allocating from %v: %w", p, err)
	}
	a.used[ip] = true
	a.last[v4] = ip
	return ip, nil
}
