package tlscert_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pebbletest"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/tlscert"
)

const acmeHost = "hs.test"

// acmeFixture is a Source on an ACME CA (Pebble, validating for real)
// with the two listeners a server has: TLS (answers TLS-ALPN-01) and
// plain HTTP (answers HTTP-01).
type acmeFixture struct {
	src        *tlscert.Source
	pebble     *pebbletest.Pebble
	tlsAddr    string
	http01Hits atomic.Int32
	logs       *tstest.Buffer
	cancel     func()
}

type acmeSetup struct {
	challenge string
	validity  time.Duration
	cacheDir  string
	noStart   bool // prepare Pebble without starting it
	// pebbleTLS/HTTP false: Pebble's port for that challenge is one where
	// nothing listens.
	pebbleTLS, pebbleHTTP bool
}

func newACMEFixture(t *testing.T, s acmeSetup) *acmeFixture {
	if testing.Short() {
		t.Skip("builds and runs pebble")
	}
	f := &acmeFixture{logs: &tstest.Buffer{}}
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var popts pebbletest.Options
	popts.Names = []string{acmeHost}
	popts.Validity = s.validity
	if s.pebbleTLS {
		popts.TLSPort = tlsLn.Addr().(*net.TCPAddr).Port
	}
	if s.pebbleHTTP {
		popts.HTTPPort = httpLn.Addr().(*net.TCPAddr).Port
	}
	f.pebble = pebbletest.New(t, popts)
	if !s.noStart {
		f.pebble.Start()
	}
	if s.cacheDir == "" {
		s.cacheDir = t.TempDir()
	}
	f.src, err = tlscert.New(tlscert.Options{
		ACME: &tlscert.ACMEOptions{
			Hostname: acmeHost, CacheDir: s.cacheDir, Challenge: s.challenge,
			DirectoryURL: f.pebble.DirectoryURL(), HTTPClient: f.pebble.HTTPClient(),
			RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond, Check: 50 * time.Millisecond,
		},
		Logger: slog.New(slog.NewTextHandler(f.logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	tlsSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }),
		TLSConfig: f.src.TLSConfig("http/1.1")}
	wg.Go(func() { tlsSrv.ServeTLS(tlsLn, "", "") })
	f.tlsAddr = tlsLn.Addr().String()
	var h http.Handler = http.NotFoundHandler()
	if h01 := f.src.HTTPHandler(); h01 != nil {
		h = h01
	}
	httpSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
			f.http01Hits.Add(1)
		}
		h.ServeHTTP(w, r)
	})}
	wg.Go(func() { httpSrv.Serve(httpLn) })
	ctx, cancel := context.WithCancel(context.Background())
	wg.Go(func() { f.src.Run(ctx) })
	f.cancel = cancel
	t.Cleanup(func() {
		cancel()
		tlsSrv.Close()
		httpSrv.Close()
		wg.Wait()
		if t.Failed() {
			t.Logf("source logs:\n%s", f.logs.String())
		}
	})
	return f
}

// waitServing waits for a certificate and returns it.
func (f *acmeFixture) waitServing(t *testing.T) tlscert.Status {
	t.Helper()
	tstest.WaitFor(t, 60*time.Second, "a certificate from Pebble", func() error {
		if st := f.src.Status(); !st.Serving() {
			return errorf("not serving yet: " + st.Problem)
		}
		return nil
	})
	return f.src.Status()
}

// dial makes a TLS connection to the server as a client trusting only
// Pebble's root would, and returns it.
func (f *acmeFixture) dial(t *testing.T) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", f.tlsAddr, &tls.Config{ServerName: acmeHost, RootCAs: f.pebble.Roots(t)})
	if err != nil {
		t.Fatalf("TLS to the server with Pebble's root: %v", err)
	}
	return c
}

func TestACMEChallenges(t *testing.T) {
	tests := []struct {
		challenge             string
		pebbleTLS, pebbleHTTP bool
		wantHTTP01            bool
	}{
		// TLS-ALPN-01: answered by the TLS listener; Pebble's HTTP-01
		// port leads nowhere, and autocert does not try HTTP-01 anyway.
		{challenge: tlscert.ChallengeTLSALPN01, pebbleTLS: true, pebbleHTTP: true},
		// HTTP-01: Pebble's TLS-ALPN-01 port leads nowhere, so autocert's
		// first try (TLS-ALPN-01) fails and HTTP-01 must do it.
		{challenge: tlscert.ChallengeHTTP01, pebbleHTTP: true, wantHTTP01: true},
	}
	for _, tc := range tests {
		t.Run(tc.challenge, func(t *testing.T) {
			f := newACMEFixture(t, acmeSetup{challenge: tc.challenge, pebbleTLS: tc.pebbleTLS, pebbleHTTP: tc.pebbleHTTP})
			st := f.waitServing(t)
			if len(st.Names) != 1 || st.Names[0] != acmeHost || st.Problem != "" {
				t.Errorf("status %+v", st)
			}
			f.dial(t).Close()
			if got := f.http01Hits.Load() > 0; got != tc.wantHTTP01 {
				t.Errorf("HTTP-01 challenge fetched: %v, want %v", got, tc.wantHTTP01)
			}
		})
	}
}

// TestACMEServerDownAtStart: the CA does not answer at first; the source
// reports it and retries, handshakes fail at once meanwhile, and the
// certificate comes once the CA is up.
func TestACMEServerDownAtStart(t *testing.T) {
	f := newACMEFixture(t, acmeSetup{challenge: tlscert.ChallengeTLSALPN01, noStart: true, pebbleTLS: true})
	tstest.WaitFor(t, 10*time.Second, "the failure to be reported", func() error {
		st := f.src.Status()
		if !strings.Contains(st.Problem, "obtaining a certificate for "+acmeHost) || st.NextRetry.IsZero() || st.Since.IsZero() {
			return errorf("problem " + st.Problem)
		}
		return nil
	})
	tstest.WaitFor(t, 10*time.Second, "a second attempt", func() error {
		if n := strings.Count(f.logs.String(), "retrying"); n < 2 {
			return errorf("attempts so far: " + strings.Repeat("I", n))
		}
		return nil
	})
	start := time.Now()
	c, err := tls.Dial("tcp", f.tlsAddr, &tls.Config{ServerName: acmeHost, InsecureSkipVerify: true})
	if err == nil {
		c.Close()
		t.Fatal("handshake succeeded without a certificate")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a handshake waited %v for the CA", d)
	}
	f.pebble.Start()
	st := f.waitServing(t)
	if st.Problem != "" || !st.NextRetry.IsZero() {
		t.Errorf("status after success %+v", st)
	}
	f.dial(t).Close()
}

// TestACMERenewal: with certificates that last 12 s, autocert renews
// after 8 s; the new one is served, a connection made before it carries
// on, and a restart (with the CA down) serves the cached certificate.
func TestACMERenewal(t *testing.T) {
	cache := t.TempDir()
	f := newACMEFixture(t, acmeSetup{challenge: tlscert.ChallengeTLSALPN01, validity: 12 * time.Second, pebbleTLS: true, cacheDir: cache})
	first := f.waitServing(t)
	old := f.dial(t)
	defer old.Close()
	tstest.WaitFor(t, 30*time.Second, "a renewed certificate", func() error {
		if st := f.src.Status(); !st.NotAfter.After(first.NotAfter) {
			return errorf("still the first certificate")
		}
		return nil
	})
	if !strings.Contains(f.logs.String(), "TLS certificate renewed") {
		t.Errorf("renewal not logged:\n%s", f.logs.String())
	}
	renewed := f.src.Status()
	c := f.dial(t)
	if got := c.ConnectionState().PeerCertificates[0].NotAfter; !got.Equal(renewed.NotAfter) {
		t.Errorf("new handshake got a certificate valid until %v, want %v", got, renewed.NotAfter)
	}
	c.Close()
	// The connection made before the renewal still works.
	old.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := old.Write([]byte("GET / HTTP/1.1\r\nHost: hs.test\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if n, err := old.Read(buf); err != nil || !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 200") {
		t.Errorf("old connection: %q %v", buf[:n], err)
	}

	// A restart finds the certificate in the cache, CA or not.
	f.cancel()
	f.pebble.Stop()
	src, err := tlscert.New(tlscert.Options{ACME: &tlscert.ACMEOptions{Hostname: acmeHost, CacheDir: cache,
		Challenge: tlscert.ChallengeTLSALPN01, DirectoryURL: f.pebble.DirectoryURL(), HTTPClient: f.pebble.HTTPClient(),
		RetryMin: 50 * time.Millisecond, Check: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { src.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	tstest.WaitFor(t, 10*time.Second, "the cached certificate", func() error {
		if st := src.Status(); !st.Serving() {
			return errorf("not serving: " + st.Problem)
		}
		return nil
	})
}
