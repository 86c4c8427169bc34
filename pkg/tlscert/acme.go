package tlscert

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// LetsEncryptURL is the default ACME directory (acme_url): Let's
// Encrypt's production CA.
const LetsEncryptURL = acme.LetsEncryptURL

// ACMEOptions configures certificates from an ACME CA.
type ACMEOptions struct {
	// Hostname is the one name on the certificate
	// (tls_letsencrypt_hostname).
	Hostname string
	// CacheDir keeps the account key and certificates across restarts
	// (tls_letsencrypt_cache_dir).
	CacheDir string
	// Challenge is ChallengeHTTP01 (served by HTTPHandler, with
	// TLS-ALPN-01 tried first as autocert does) or ChallengeTLSALPN01
	// (answered by the TLS listener itself).
	Challenge string
	// DirectoryURL is the CA's directory (acme_url); Email the contact
	// given to it (acme_email, may be empty).
	DirectoryURL, Email string
	// HTTPClient talks to the CA (nil: http.DefaultClient); tests set one
	// that trusts their CA's listener.
	HTTPClient *http.Client
	// RetryMin and RetryMax bound the backoff between failed attempts to
	// obtain the first certificate (defaults 10 s and 1 h).
	RetryMin, RetryMax time.Duration
	// Check is how often the served certificate is looked at, to notice a
	// renewal or an overdue one (default 1 min).
	Check time.Duration
}

// acmeSource drives autocert: the first certificate is obtained by run,
// with backoff; autocert renews it on its own timer; run watches what is
// served.
type acmeSource struct {
	s    *Source
	opts ACMEOptions
	// mgr is the autocert manager in use. autocert remembers a failure
	// to obtain a certificate for a minute, answering "missing
	// certificate" meanwhile, so each retry after a failure gets a new
	// manager (on the same cache: the account and the certificates stay).
	mgr    atomic.Pointer[manager]
	client *http.Client
	http01 http.Handler // routes to the current manager's HTTP-01 answers
	kick   chan struct{}
	// stop ends every request to the CA when run returns, so neither a
	// handshake nor shutdown waits for a CA that does not answer.
	stop     context.Context
	stopFunc context.CancelFunc

	errMu   sync.Mutex
	lastErr string // the latest failed request to the CA, "" after success
}

func newACME(s *Source, o ACMEOptions) (*acmeSource, error) {
	if o.Hostname == "" || o.CacheDir == "" {
		return nil, errors.New("ACME needs a hostname and a cache directory")
	}
	if o.Challenge != ChallengeHTTP01 && o.Challenge != ChallengeTLSALPN01 {
		return nil, fmt.Errorf("unknown ACME challenge type %q", o.Challenge)
	}
	if o.DirectoryURL == "" {
		o.DirectoryURL = LetsEncryptURL
	}
	if o.RetryMin <= 0 {
		o.RetryMin = 10 * time.Second
	}
	if o.RetryMax < o.RetryMin {
		o.RetryMax = max(time.Hour, o.RetryMin)
	}
	if o.Check <= 0 {
		o.Check = time.Minute
	}
	a := &acmeSource{s: s, opts: o, kick: make(chan struct{}, 1)}
	a.stop, a.stopFunc = context.WithCancel(context.Background())
	base := o.HTTPClient
	if base == nil {
		base = http.DefaultClient
	}
	client := *base
	client.Transport = &caTransport{a: a, base: base.Transport}
	a.client = &client
	a.newManager()
	if o.Challenge == ChallengeHTTP01 {
		a.http01 = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// autocert checks the Host header against the hostname; a
			// listener on another port than 80 (behind a port
			// forward) gets it with the port.
			if host, _, err := net.SplitHostPort(r.Host); err == nil {
				r = r.Clone(r.Context())
				r.Host = host
			}
			a.mgr.Load().http01.ServeHTTP(w, r)
		})
	}
	return a, nil
}

// manager is an autocert manager and its HTTP-01 handler.
type manager struct {
	m      *autocert.Manager
	http01 http.Handler
}

// newManager puts a fresh autocert manager in use.
func (a *acmeSource) newManager() {
	m := &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		Cache:      autocert.DirCache(filepath.Clean(a.opts.CacheDir)),
		HostPolicy: autocert.HostWhitelist(a.opts.Hostname),
		Email:      a.opts.Email,
		Client:     &acme.Client{DirectoryURL: a.opts.DirectoryURL, HTTPClient: a.client, UserAgent: "headscale (hsctl)"},
	}
	mg := &manager{m: m}
	if a.opts.Challenge == ChallengeHTTP01 {
		mg.http01 = m.HTTPHandler(nil) // also turns HTTP-01 on
	}
	a.mgr.Store(mg)
}

// hello is a handshake from a client that supports ECDSA, as Tailscale's
// do, for fetching the certificate outside a handshake.
func (a *acmeSource) hello() *tls.ClientHelloInfo {
	return &tls.ClientHelloInfo{
		ServerName:       a.opts.Hostname,
		SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
		SupportedCurves:  []tls.CurveID{tls.CurveP256},
		CipherSuites:     []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
	}
}

// getCertificate answers a handshake: challenge handshakes (TLS-ALPN-01)
// and, once the first certificate is there, ordinary ones go to autocert;
// before that a handshake fails at once rather than wait for the CA.
func (a *acmeSource) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	isChallenge := len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == "acme-tls/1"
	if !isChallenge && a.s.cur.Load() == nil {
		return nil, errors.New("no certificate from the ACME CA yet")
	}
	return a.mgr.Load().m.GetCertificate(hello)
}

// retryNow makes a waiting retry happen at once.
func (a *acmeSource) retryNow() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// run obtains the first certificate (from the cache or the CA), retrying
// with backoff, then checks the served certificate every Check: a new one
// (autocert renewed it) is logged, and a renewal overdue is reported.
func (a *acmeSource) run(ctx context.Context) {
	defer a.stopFunc()
	stopOnDone := context.AfterFunc(ctx, a.stopFunc)
	defer stopOnDone()
	wait := a.opts.RetryMin
	for a.s.cur.Load() == nil {
		if err := a.fetch(); err == nil {
			break
		} else {
			next := a.s.now().Add(wait)
			a.fail(fmt.Sprintf("obtaining a certificate for %s: %v", a.opts.Hostname, err), next)
			a.s.log.Warn("no TLS certificate from the ACME CA yet; retrying", "hostname", a.opts.Hostname,
				"acme_url", a.opts.DirectoryURL, "retry_in", wait.String(), "err", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-a.kick:
			t.Stop()
		case <-t.C:
		}
		a.newManager()
		// Full jitter on the doubled wait, so restarts do not align.
		wait = min(2*wait, a.opts.RetryMax)
		wait = wait/2 + rand.N(wait/2+1)
	}
	t := time.NewTicker(a.opts.Check)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		case <-t.C:
		}
		a.fetch()
		a.checkOverdue()
	}
}

// fetch gets the certificate autocert serves (obtaining it if it has none
// in memory or in the cache) and records it.
func (a *acmeSource) fetch() error {
	cert, err := a.mgr.Load().m.GetCertificate(a.hello())
	if err != nil {
		return err
	}
	if cert.Leaf == nil {
		return errors.New("autocert returned a certificate without its leaf")
	}
	old := a.s.cur.Load()
	if old != nil && sameChain(old, cert) {
		return nil
	}
	a.s.mu.Lock()
	a.s.setCert(cert)
	a.s.status.Problem, a.s.status.Since, a.s.status.NextRetry = "", time.Time{}, time.Time{}
	a.s.mu.Unlock()
	a.setLastErr("")
	what := "TLS certificate obtained from the ACME CA"
	if old != nil {
		what = "TLS certificate renewed by the ACME CA"
	}
	a.s.log.Info(what, "hostname", a.opts.Hostname, "not_after", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// fail records a current problem.
func (a *acmeSource) fail(problem string, next time.Time) {
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	if a.s.status.Problem == "" {
		a.s.status.Since = a.s.now()
	}
	a.s.status.Problem, a.s.status.NextRetry = problem, next
}

// checkOverdue reports a renewal that autocert should have made by now
// (it renews when a third of the lifetime is left and retries failures
// every 30 to 60 minutes): after a grace of a sixth of the lifetime (at
// most a day) it becomes a problem, naming the CA's last error.
func (a *acmeSource) checkOverdue() {
	cur := a.s.cur.Load()
	if cur == nil {
		return
	}
	life := cur.Leaf.NotAfter.Sub(cur.Leaf.NotBefore)
	due := cur.Leaf.NotAfter.Add(-life / 3).Add(min(life/6, 24*time.Hour))
	now := a.s.now()
	if now.Before(due) {
		return
	}
	reason := "no error seen from the CA"
	if e := a.getLastErr(); e != "" {
		reason = "last error from the CA: " + e
	}
	left := cur.Leaf.NotAfter.Sub(now).Round(time.Minute)
	problem := fmt.Sprintf("renewal overdue, certificate expires in %s (%s)", left, reason)
	a.s.mu.Lock()
	first := a.s.status.Problem == ""
	a.s.mu.Unlock()
	a.fail(problem, time.Time{})
	if first {
		a.s.log.Warn("TLS certificate renewal overdue", "hostname", a.opts.Hostname,
			"not_after", cur.Leaf.NotAfter.UTC().Format(time.RFC3339), "err", reason)
	}
}

func (a *acmeSource) setLastErr(e string) {
	a.errMu.Lock()
	a.lastErr = e
	a.errMu.Unlock()
}

func (a *acmeSource) getLastErr() string {
	a.errMu.Lock()
	defer a.errMu.Unlock()
	return a.lastErr
}

// caTransport sends requests to the CA, ending them when the source
// stops, and remembers the latest failure.
type caTransport struct {
	a    *acmeSource
	base http.RoundTripper
}

func (t *caTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.base
	if base == nil {
		base = http.DefaultTransport
	}
	ctx, cancel := context.WithCancel(req.Context())
	stop := context.AfterFunc(t.a.stop, cancel)
	resp, err := base.RoundTrip(req.WithContext(ctx))
	if err != nil {
		stop()
		cancel()
		t.a.setLastErr(err.Error())
		return nil, err
	}
	if resp.StatusCode >= 400 {
		t.a.setLastErr(fmt.Sprintf("%s %s: %s", req.Method, req.URL.Path, resp.Status))
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, done: func() { stop(); cancel() }}
	return resp, nil
}

// cancelBody ends the request's context once its body is closed.
type cancelBody struct {
	io.ReadCloser
	done func()
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.done()
	return err
}
