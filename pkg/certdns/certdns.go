// Package certdns sets the DNS records of ACME DNS-01 challenges for nodes
// getting a certificate for their MagicDNS name (`tailscale cert`): a TXT
// record at _acme-challenge.<name>, set through a libdns provider on the
// zone's DNS server and removed again after a while.
package certdns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/libdns/libdns"
)

// Provider sets and removes records in a zone (a libdns provider such as
// github.com/libdns/rfc2136).
type Provider interface {
	libdns.RecordAppender
	libdns.RecordDeleter
}

// ChallengePrefix starts the name of a DNS-01 challenge record.
const ChallengePrefix = "_acme-challenge."

// Options configures a Setter.
type Options struct {
	// Provider sets the records.
	Provider Provider
	// Zone is the zone records are set in (no trailing dot).
	Zone string
	// TTL is the records' TTL (default one minute: a challenge is looked
	// up once, and a stale answer only delays a retry).
	TTL time.Duration
	// Keep is how long a record stays before it is removed (default ten
	// minutes: an ACME order's validation is over long before).
	Keep time.Duration
	// Timeout bounds one update of the DNS server (default 20 s).
	Timeout time.Duration
	// Logger receives the log lines (records set, removal failures).
	Logger *slog.Logger
}

// Setter sets challenge records and removes each one Keep after it was
// set (or at Close). It is safe for concurrent use.
type Setter struct {
	opts Options

	mu      sync.Mutex
	pending map[record]*time.Timer
	closed  bool
	wg      sync.WaitGroup // removals in progress
}

type record struct{ name, value string }

// New returns a Setter.
func New(opts Options) *Setter {
	if opts.TTL <= 0 {
		opts.TTL = time.Minute
	}
	if opts.Keep <= 0 {
		opts.Keep = 10 * time.Minute
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 20 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	opts.Zone = strings.ToLower(strings.TrimSuffix(opts.Zone, "."))
	return &Setter{opts: opts, pending: map[record]*time.Timer{}}
}

// ErrNotInZone is returned for a name outside the Setter's zone.
var ErrNotInZone = errors.New("name is not in the zone")

// ErrClosed is returned by SetTXT after Close.
var ErrClosed = errors.New("closed")

// relative is name relative to the zone.
func (s *Setter) relative(name string) (string, error) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	rel, ok := strings.CutSuffix(name, "."+s.opts.Zone)
	if !ok || rel == "" {
		return "", fmt.Errorf("%s: %w %s", name, ErrNotInZone, s.opts.Zone)
	}
	return rel, nil
}

// SetTXT adds the TXT record name (a fully qualified name in the zone)
// with value, beside any others at that name, and schedules its removal.
// Setting the same record again restarts its time.
func (s *Setter) SetTXT(ctx context.Context, name, value string) error {
	rel, err := s.relative(name)
	if err != nil {
		return err
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	rr := libdns.TXT{Name: rel, TTL: s.opts.TTL, Text: value}
	if _, err := s.opts.Provider.AppendRecords(ctx, s.opts.Zone, []libdns.Record{rr}); err != nil {
		return fmt.Errorf("setting TXT %s in zone %s: %w", name, s.opts.Zone, err)
	}
	key := record{rel, value}
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.pending[key]; t != nil {
		t.Stop()
	}
	if s.closed {
		// Close ran while the update was on its way: take it back.
		s.opts.Provider.DeleteRecords(ctx, s.opts.Zone, []libdns.Record{rr})
		return ErrClosed
	}
	s.pending[key] = time.AfterFunc(s.opts.Keep, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.pending[key] != nil && !s.closed {
			s.removeLocked(key)
		}
	})
	return nil
}

// removeLocked forgets key and removes its record in the background;
// s.mu is held.
func (s *Setter) removeLocked(key record) {
	delete(s.pending, key)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), s.opts.Timeout)
		defer cancel()
		rr := libdns.TXT{Name: key.name, TTL: s.opts.TTL, Text: key.value}
		if _, err := s.opts.Provider.DeleteRecords(ctx, s.opts.Zone, []libdns.Record{rr}); err != nil {
			s.opts.Logger.Warn("removing a certificate challenge record failed; it stays in the zone until removed by hand",
				"record", key.name+"."+s.opts.Zone, "err", err)
		}
	}()
}

// Pending is how many records are set and not yet removed.
func (s *Setter) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// Close removes every record still set (each within Timeout) and waits
// for removals in progress.
func (s *Setter) Close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		for key, t := range s.pending {
			t.Stop()
			s.removeLocked(key)
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
}
