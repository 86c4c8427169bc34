// Package tlscert provides the certificate the server's TLS listeners
// serve, from one of two sources:
//
//   - a certificate and key file pair (tls_cert_path, tls_key_path),
//     re-read when either file changes on disk (certbot's renew) and on
//     Reload (SIGHUP); a new pair that does not parse, whose key does not
//     match, or that is expired or not yet valid is refused and the one in
//     use stays;
//   - an ACME CA such as Let's Encrypt (tls_letsencrypt_*), through
//     golang.org/x/crypto/acme/autocert: the certificate is obtained in the
//     background (start-up never waits for the CA; failures are retried
//     with backoff), cached in a directory, and renewed by autocert a third
//     of its lifetime before it expires.
//
// Listeners take certificates through GetCertificate (TLSConfig), so a new
// certificate applies to new handshakes while connections already open
// (map sessions, DERP) carry on. Status says what is served and what went
// wrong, for /health, the systemd status line and metrics.
//
// Files are watched by polling: every Options.Poll the paths are stat'ed
// (following symbolic links, so certbot flipping the links under
// /etc/letsencrypt/live is seen) and a pair whose files changed and then
// stayed unchanged for one more poll is loaded. Polling needs no
// dependency, works where inotify does not (network filesystems, bind
// mounts into containers, a directory replaced whole), and the stable-for-
// one-poll rule avoids reading a pair half written.
package tlscert

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hsctl/headscale/pkg/filewatch"
)

// Challenge types, spelled as Headscale's tls_letsencrypt_challenge_type.
const (
	ChallengeHTTP01    = "HTTP-01"
	ChallengeTLSALPN01 = "TLS-ALPN-01"
)

// DefaultPoll is how often certificate files are checked for changes.
const DefaultPoll = 5 * time.Second

// Options configures a Source: CertPath and KeyPath, or ACME.
type Options struct {
	CertPath, KeyPath string
	ACME              *ACMEOptions
	// Poll is how often the files are checked (DefaultPoll when zero).
	Poll   time.Duration
	Logger *slog.Logger
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Source is the certificate the TLS listeners serve.
type Source struct {
	opts Options
	log  *slog.Logger
	now  func() time.Time

	cur atomic.Pointer[tls.Certificate] // served (files), or last seen (ACME)

	mu     sync.Mutex // guards the fields below and file loads
	status Status
	// files: the stat signature of the pair loaded, the one seen at the
	// last poll, and the one last refused (warned about once).
	loadedSig, seenSig, refusedSig string

	acme *acmeSource
}

// Status describes the certificate in use and the latest problem.
type Status struct {
	// Source is "files" or "acme".
	Source string
	// Names are the served certificate's DNS names; empty when none.
	Names []string
	// NotBefore and NotAfter bound the served certificate's validity;
	// zero when there is none.
	NotBefore, NotAfter time.Time
	// Problem is the latest failure still current (a refused file pair,
	// a failed ACME attempt, a renewal overdue), "" when none; Since is
	// when it started.
	Problem string
	Since   time.Time
	// NextRetry is when the next ACME attempt is due (while retrying).
	NextRetry time.Time
}

// Serving reports whether there is a certificate to serve.
func (st Status) Serving() bool { return !st.NotAfter.IsZero() }

// New makes a Source. With files, the pair is loaded now: a pair that
// does not parse or whose key does not match is an error, while an
// expired or not yet valid one is served with a warning (it is all there
// is; the file watch picks up its replacement). With ACME nothing is
// contacted until Run.
func New(opts Options) (*Source, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Poll <= 0 {
		opts.Poll = DefaultPoll
	}
	s := &Source{opts: opts, log: opts.Logger, now: opts.Now}
	if opts.ACME != nil {
		s.status.Source = "acme"
		a, err := newACME(s, *opts.ACME)
		if err != nil {
			return nil, err
		}
		s.acme = a
		return s, nil
	}
	s.status.Source = "files"
	sig := s.fileSig()
	cert, err := LoadPair(opts.CertPath, opts.KeyPath)
	if err != nil {
		return nil, err
	}
	if err := checkValidity(cert.Leaf, s.now()); err != nil {
		s.log.Warn("serving a certificate that is not valid now: clients will refuse it until it is replaced",
			"path", opts.CertPath, "err", err)
	}
	s.setCert(cert)
	s.loadedSig, s.seenSig = sig, sig
	return s, nil
}

// LoadPair reads and parses a certificate (with its chain) and its
// private key, and checks that they belong together. It does not check
// the validity period.
func LoadPair(certPath, keyPath string) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("reading the certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("reading the key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("loading the certificate and key: %w", err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("parsing the certificate: %w", err)
		}
	}
	return &cert, nil
}

// checkValidity refuses a certificate outside its validity period.
func checkValidity(leaf *x509.Certificate, now time.Time) error {
	switch {
	case now.After(leaf.NotAfter):
		return fmt.Errorf("certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return fmt.Errorf("certificate not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// setCert makes cert the one served and recorded in the status.
func (s *Source) setCert(cert *tls.Certificate) {
	s.cur.Store(cert)
	s.status.Names = certNames(cert.Leaf)
	s.status.NotBefore, s.status.NotAfter = cert.Leaf.NotBefore, cert.Leaf.NotAfter
}

func certNames(leaf *x509.Certificate) []string {
	if len(leaf.DNSNames) > 0 {
		return append([]string(nil), leaf.DNSNames...)
	}
	var names []string
	for _, ip := range leaf.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 && leaf.Subject.CommonName != "" {
		names = []string{leaf.Subject.CommonName}
	}
	return names
}

// GetCertificate is tls.Config.GetCertificate.
func (s *Source) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if s.acme != nil {
		return s.acme.getCertificate(hello)
	}
	return s.cur.Load(), nil
}

// TLSConfig is a server configuration taking certificates from s,
// offering the application protocols protos (with ACME's TLS-ALPN-01
// challenge protocol added when that challenge is in use).
func (s *Source) TLSConfig(protos ...string) *tls.Config {
	protos = append([]string(nil), protos...)
	if s.acme != nil && s.acme.opts.Challenge == ChallengeTLSALPN01 {
		protos = append(protos, "acme-tls/1")
	}
	return &tls.Config{GetCertificate: s.GetCertificate, MinVersion: tls.VersionTLS12, NextProtos: protos}
}

// Status is what is served now and the latest problem.
func (s *Source) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.Names = append([]string(nil), st.Names...)
	return st
}

// Reload re-reads the certificate files now (SIGHUP). A pair that does
// not load or is not valid now is refused with an error and the one in
// use stays. With ACME there is nothing to re-read: a pending retry is
// made at once instead.
func (s *Source) Reload() error {
	if s.acme != nil {
		s.acme.retryNow()
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sig := s.fileSig()
	s.seenSig = sig
	if err := s.loadLocked(sig, "SIGHUP"); err != nil {
		return fmt.Errorf("tls_cert_path: new certificate refused, the one in use stays: %w", err)
	}
	return nil
}

// SetPoll changes how often the files are checked; call it before Run.
func (s *Source) SetPoll(d time.Duration) {
	if d > 0 {
		s.opts.Poll = d
	}
}

// Run watches the files, or obtains and watches the ACME certificate,
// until ctx ends.
func (s *Source) Run(ctx context.Context) {
	if s.acme != nil {
		s.acme.run(ctx)
		return
	}
	t := time.NewTicker(s.opts.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.poll()
		}
	}
}

// poll loads the pair when its files changed and have stayed unchanged
// since the previous poll (a pair half written is not read).
func (s *Source) poll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	sig := s.fileSig()
	stable := sig == s.seenSig
	s.seenSig = sig
	if !stable || sig == s.loadedSig || sig == s.refusedSig {
		return
	}
	if err := s.loadLocked(sig, "files changed"); err != nil {
		s.log.Warn("new TLS certificate refused; the one in use stays", "path", s.opts.CertPath, "err", err)
	}
}

// loadLocked loads the pair and serves it if it is good; otherwise it
// records the refusal and returns why.
func (s *Source) loadLocked(sig, why string) error {
	cert, err := LoadPair(s.opts.CertPath, s.opts.KeyPath)
	if err == nil {
		err = checkValidity(cert.Leaf, s.now())
	}
	if err != nil {
		s.refusedSig = sig
		if s.status.Problem == "" {
			s.status.Since = s.now()
		}
		s.status.Problem = "new certificate refused, the one in use stays: " + err.Error()
		return err
	}
	s.loadedSig, s.refusedSig = sig, ""
	s.status.Problem, s.status.Since = "", time.Time{}
	if old := s.cur.Load(); old != nil && sameChain(old, cert) {
		return nil
	}
	s.setCert(cert)
	s.log.Info("TLS certificate loaded", "reason", why, "names", strings.Join(s.status.Names, ","),
		"not_after", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

func sameChain(a, b *tls.Certificate) bool {
	if len(a.Certificate) != len(b.Certificate) {
		return false
	}
	for i := range a.Certificate {
		if !bytes.Equal(a.Certificate[i], b.Certificate[i]) {
			return false
		}
	}
	return true
}

// fileSig identifies the current version of the pair's files
// (filewatch.Sig).
func (s *Source) fileSig() string { return filewatch.Sig(s.opts.CertPath, s.opts.KeyPath) }

// HTTPHandler answers ACME HTTP-01 challenges (for the
// tls_letsencrypt_listen listener) and redirects every other request to
// https; nil unless the HTTP-01 challenge is in use.
func (s *Source) HTTPHandler() http.Handler {
	if s.acme == nil {
		return nil
	}
	return s.acme.http01
}
