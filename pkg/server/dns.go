package server

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"sync"
	"time"

	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/filewatch"
	"github.com/hsctl/headscale/pkg/mapper"
	"tailscale.com/tailcfg"
)

// recordsPollInterval is how often dns.extra_records_path is polled for a
// change (see pkg/filewatch for why polling).
const recordsPollInterval = time.Second

// recordsFile is the state of dns.extra_records_path: the records of it in
// force and what was last read from it. The file is re-read when the
// watcher sees it change and on every reload (SIGHUP); mu orders the two.
type recordsFile struct {
	mu      sync.Mutex
	watch   *filewatch.Watcher // nil without dns.extra_records_path
	records []config.ExtraRecord
	// hash is the content last read (applied or refused), so a file
	// touched but unchanged, or already read by a reload, is not read
	// twice and a broken file is logged once.
	hash [sha256.Size]byte
	// gone is set while the file is missing.
	gone bool
}

// initDNS reads dns.extra_records_path (if set) and builds the DNS
// configuration nodes get first. The file must exist and hold valid
// records, as in Headscale; an empty file means no records yet.
func (s *Server) initDNS() error {
	path := s.cfg.DNS.ExtraRecordsPath
	if path != "" {
		// The watcher first, so a change made while the file is read is
		// seen by its first poll.
		s.records.watch = filewatch.New(path)
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		s.records.hash = sha256.Sum256(b)
		recs, err := config.ParseExtraRecords(path, b)
		switch {
		case errors.Is(err, config.ErrEmptyRecordsFile):
			s.log.Info("the extra DNS records file is empty: no records from it until it is written", "file", path)
		case err != nil:
			return err
		}
		s.records.records = recs
	}
	s.dns.Store(s.buildDNS())
	return nil
}

// watchRecords polls dns.extra_records_path until ctx ends and applies
// each change to its content; nothing without the key.
func (s *Server) watchRecords(ctx context.Context) {
	if s.records.watch == nil {
		return
	}
	s.records.watch.Run(ctx, recordsPollInterval, func() {
		if err := s.readRecords(false); err != nil {
			s.log.Error("extra DNS records file refused, the records in force stay", "file", s.cfg.DNS.ExtraRecordsPath, "err", err)
		}
	})
}

// reloadDNS re-reads dns.extra_records_path on reload (SIGHUP), even if
// the watcher has read it already, so a broken file is reported to the
// one who asked.
func (s *Server) reloadDNS() error {
	if s.records.watch == nil {
		return nil
	}
	if err := s.readRecords(true); err != nil {
		return fmt.Errorf("extra DNS records not reloaded, the ones in force stay: %w", err)
	}
	return nil
}

// readRecords reads the records file and, if its content is valid and not
// what was read last (always on reload), makes its records the ones in
// force and sends the new DNS configuration to every node. A missing,
// empty or broken file leaves the records in force: missing and empty are
// logged here (an editor or a script between two writes), a broken file
// is returned.
func (s *Server) readRecords(reload bool) error {
	r := &s.records
	r.mu.Lock()
	defer r.mu.Unlock()
	path := s.cfg.DNS.ExtraRecordsPath
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !reload {
		if !r.gone {
			r.gone = true
			s.log.Warn("the extra DNS records file is gone; the records in force stay until it is back", "file", path, "extra_records", len(r.records))
		}
		return nil
	}
	if err != nil {
		return err
	}
	if r.gone {
		r.gone = false
		s.log.Info("the extra DNS records file is back", "file", path)
	}
	hash := sha256.Sum256(b)
	if hash == r.hash && !reload {
		return nil
	}
	r.hash = hash
	recs, err := config.ParseExtraRecords(path, b)
	if errors.Is(err, config.ErrEmptyRecordsFile) {
		s.log.Warn("the extra DNS records file is empty; the records in force stay (write [] to remove them all)", "file", path, "extra_records", len(r.records))
		return nil
	}
	if err != nil {
		return err
	}
	r.records = recs
	trigger := "file changed"
	if reload {
		trigger = "reload"
	}
	s.publishDNS(trigger)
	return nil
}

// publishDNS rebuilds the DNS configuration and, if it changed, makes it
// the one full maps carry and sends it to every node. Called with
// records.mu held.
func (s *Server) publishDNS(trigger string) {
	dns := s.buildDNS()
	if reflect.DeepEqual(dns, s.dns.Load()) {
		return
	}
	s.dns.Store(dns)
	s.hub.Broadcast(&tailcfg.MapResponse{DNSConfig: dns})
	s.log.Info("DNS configuration changed and sent to every node", "trigger", trigger, "extra_records", len(dns.ExtraRecords))
}

// buildDNS makes the DNS configuration nodes receive from the config and
// the records of the extra records file in force.
func (s *Server) buildDNS() *tailcfg.DNSConfig {
	d := s.cfg.DNS
	var extra []tailcfg.DNSRecord
	for _, list := range [][]config.ExtraRecord{d.ExtraRecords, s.records.records} {
		for _, r := range list {
			extra = append(extra, tailcfg.DNSRecord{Name: r.Name, Type: r.Type, Value: r.Value})
		}
	}
	return mapper.DNSConfig(mapper.DNSSettings{
		MagicDNS:         d.MagicDNS,
		BaseDomain:       d.BaseDomain,
		OverrideLocalDNS: d.OverrideLocalDNS,
		Global:           d.Nameservers.Global,
		Split:            d.Nameservers.Split,
		SearchDomains:    d.SearchDomains,
		ExtraRecords:     extra,
	})
}
