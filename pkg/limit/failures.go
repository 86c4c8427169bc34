package limit

import (
	"net/netip"
	"sync"
	"time"
)

// Failures slows clients that fail repeatedly (wrong API keys, say). Each
// client, an IPv4 address or an IPv6 /64, has a budget of Burst failures
// that refills by one every Refill; a client whose budget is used up is
// blocked until it has refilled by one.
//
// The table holds at most MaxClients clients. Clients whose budget is full
// again are the same as clients never seen and are dropped when room is
// needed; if the table is still full, clients not in it share one budget,
// so however many addresses an attacker uses the memory stays bounded and
// the attacker's failures are still slowed as a whole. A client that never
// fails is never in the table and never slowed.
type Failures struct {
	burst  float64
	refill time.Duration
	max    int
	now    func() time.Time

	mu        sync.Mutex
	clients   map[netip.Prefix]*bucket
	shared    bucket // clients that found the table full
	lastPrune time.Time
}

type bucket struct {
	tokens float64 // at at
	at     time.Time
}

// NewFailures returns a table allowing burst failures per client,
// refilling one every refill, with at most maxClients clients.
func NewFailures(burst int, refill time.Duration, maxClients int) *Failures {
	return newFailures(burst, refill, maxClients, time.Now)
}

func newFailures(burst int, refill time.Duration, maxClients int, now func() time.Time) *Failures {
	f := &Failures{burst: float64(max(burst, 1)), refill: refill, max: max(maxClients, 1), now: now,
		clients: make(map[netip.Prefix]*bucket)}
	f.shared = bucket{tokens: f.burst, at: now()}
	return f
}

// Client is the table's key for addr: the address itself for IPv4, its /64
// for IPv6 (one host usually holds a whole /64).
func Client(addr netip.Addr) netip.Prefix {
	addr = addr.Unmap()
	bits := 32
	if addr.Is6() {
		bits = 64
	}
	p, _ := addr.Prefix(bits)
	return p
}

// tokens brings b up to now and returns its budget.
func (f *Failures) tokens(b *bucket, now time.Time) float64 {
	if f.refill > 0 {
		b.tokens = min(f.burst, b.tokens+float64(now.Sub(b.at))/float64(f.refill))
	}
	b.at = now
	return b.tokens
}

// wait is how long until b has one failure to spend again.
func (f *Failures) wait(b *bucket) time.Duration {
	return time.Duration((1 - b.tokens) * float64(f.refill))
}

// Blocked reports whether addr's client has used up its budget, and if so
// how long until it may try again. Clients not in the table are never
// blocked before they fail.
func (f *Failures) Blocked(addr netip.Addr) (time.Duration, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.clients[Client(addr)]
	if b == nil || f.tokens(b, f.now()) >= 1 {
		return 0, false
	}
	return f.wait(b), true
}

// Fail records one failure of addr's client. It reports whether the client
// has now used up its budget (then the caller answers "too many") and how
// long until it may try again.
func (f *Failures) Fail(addr netip.Addr) (time.Duration, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	c := Client(addr)
	b := f.clients[c]
	if b == nil {
		if len(f.clients) >= f.max {
			f.pruneLocked(now)
		}
		if len(f.clients) < f.max {
			b = &bucket{tokens: f.burst, at: now}
			f.clients[c] = b
		} else {
			b = &f.shared
		}
	}
	f.tokens(b, now)
	b.tokens = max(0, b.tokens-1)
	if b.tokens >= 1 {
		return 0, false
	}
	return f.wait(b), true
}

// pruneLocked drops clients whose budget is full again, at most once per
// refill interval so that a full table costs one scan per interval, not
// one per failure.
func (f *Failures) pruneLocked(now time.Time) {
	if now.Sub(f.lastPrune) < f.refill {
		return
	}
	f.lastPrune = now
	for c, b := range f.clients {
		if f.tokens(b, now) >= f.burst {
			delete(f.clients, c)
		}
	}
}

// Len is the number of clients in the table.
func (f *Failures) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.clients)
}
