package tlscert_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/testca"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/tlscert"
)

// fixture is a Source over files in a directory, served by an echo TLS
// server on loopback.
type fixture struct {
	t     *testing.T
	ca    *testca.CA
	dir   string
	src   *tlscert.Source
	addr  string
	clock atomic.Pointer[time.Time] // nil: time.Now
	logs  *tstest.Buffer
}

func (f *fixture) now() time.Time {
	if p := f.clock.Load(); p != nil {
		return *p
	}
	return time.Now()
}

func issue(t *testing.T, ca *testca.CA, validFor time.Duration, names ...string) testca.Leaf {
	t.Helper()
	l, err := ca.Issue(validFor, names...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// newFixture writes a first pair for "first.test" and starts the source
// (polling every poll) and the echo server.
func newFixture(t *testing.T, poll time.Duration) *fixture {
	ca, err := testca.New("tlscert test")
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, ca: ca, dir: t.TempDir(), logs: &tstest.Buffer{}}
	if _, _, err := issue(t, ca, time.Hour, "first.test").Write(f.dir); err != nil {
		t.Fatal(err)
	}
	f.src, err = tlscert.New(tlscert.Options{
		CertPath: filepath.Join(f.dir, "cert.pem"), KeyPath: filepath.Join(f.dir, "key.pem"),
		Poll: poll, Now: f.now, Logger: slog.New(slog.NewTextHandler(f.logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { f.src.Run(ctx) })
	ln, err := tls.Listen("tcp", "127.0.0.1:0", f.src.TLSConfig("echo"))
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	wg.Go(func() {
		var conns sync.WaitGroup
		defer conns.Wait()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(line))
				}
			})
		}
	})
	t.Cleanup(func() { cancel(); ln.Close(); wg.Wait() })
	return f
}

// dial connects trusting the fixture's CA and returns the connection and
// the name on the certificate it got.
func (f *fixture) dial() (*tls.Conn, string) {
	f.t.Helper()
	c, err := tls.Dial("tcp", f.addr, &tls.Config{RootCAs: f.ca.Pool(), InsecureSkipVerify: true, NextProtos: []string{"echo"}})
	if err != nil {
		f.t.Fatal(err)
	}
	return c, c.ConnectionState().PeerCertificates[0].Subject.CommonName
}

func (f *fixture) served() string {
	c, name := f.dial()
	c.Close()
	return name
}

// echo checks that an open connection still carries data.
func echo(t *testing.T, c *tls.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		t.Fatalf("write on the old connection: %v", err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != msg+"\n" {
		t.Fatalf("old connection: got %q, %v", got, err)
	}
}

// replace installs a new pair as certbot does: written beside, renamed
// over (a new inode).
func replace(t *testing.T, dir string, certPEM, keyPEM []byte) {
	t.Helper()
	for name, b := range map[string][]byte{"cert.pem": certPEM, "key.pem": keyPEM} {
		tmp := filepath.Join(dir, "."+name+".new")
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

func waitServed(t *testing.T, f *fixture, want string) {
	t.Helper()
	tstest.WaitFor(t, 10*time.Second, "the server to serve "+want, func() error {
		if got := f.served(); got != want {
			return errorf("serving " + got)
		}
		return nil
	})
}

type errorf string

func (e errorf) Error() string { return string(e) }

func TestFilesReloadedWhenChanged(t *testing.T) {
	f := newFixture(t, 20*time.Millisecond)
	old, name := f.dial()
	defer old.Close()
	if name != "first.test" {
		t.Fatalf("serving %s at start", name)
	}
	echo(t, old, "before")
	l := issue(t, f.ca, time.Hour, "second.test")
	replace(t, f.dir, l.CertPEM, l.KeyPEM)
	waitServed(t, f, "second.test")
	echo(t, old, "after") // the connection made before the change carries on
	if st := f.src.Status(); st.Problem != "" || st.Names[0] != "second.test" || !st.NotAfter.Equal(l.NotAfter.Truncate(time.Second)) {
		t.Errorf("status %+v", st)
	}
	if !strings.Contains(f.logs.String(), "TLS certificate loaded") {
		t.Errorf("no log line for the reload:\n%s", f.logs.String())
	}
}

// TestFilesCertbotSymlinks flips symbolic links as certbot does under
// /etc/letsencrypt/live: the files they point to never change.
func TestFilesCertbotSymlinks(t *testing.T) {
	ca, err := testca.New("tlscert test")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	archive, live := filepath.Join(root, "archive"), filepath.Join(root, "live")
	for _, d := range []string{archive, live} {
		os.Mkdir(d, 0o700)
	}
	install := func(n int, l testca.Leaf) {
		for _, f := range []struct {
			name string
			b    []byte
		}{{"cert", l.CertPEM}, {"privkey", l.KeyPEM}} {
			target := filepath.Join(archive, f.name+string(rune('0'+n))+".pem")
			if err := os.WriteFile(target, f.b, 0o600); err != nil {
				t.Fatal(err)
			}
			tmp := filepath.Join(live, ".tmp")
			os.Remove(tmp)
			if err := os.Symlink(target, tmp); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, filepath.Join(live, f.name+".pem")); err != nil {
				t.Fatal(err)
			}
		}
	}
	install(1, issue(t, ca, time.Hour, "one.test"))
	src, err := tlscert.New(tlscert.Options{CertPath: filepath.Join(live, "cert.pem"), KeyPath: filepath.Join(live, "privkey.pem"), Poll: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { src.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	install(2, issue(t, ca, time.Hour, "two.test"))
	tstest.WaitFor(t, 10*time.Second, "two.test to be served", func() error {
		c, err := src.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			return err
		}
		if got := c.Leaf.Subject.CommonName; got != "two.test" {
			return errorf("serving " + got)
		}
		return nil
	})
}

func TestFilesBadPairRefused(t *testing.T) {
	ca, err := testca.New("other")
	if err != nil {
		t.Fatal(err)
	}
	other := issue(t, ca, time.Hour, "other.test")
	tests := []struct {
		name string
		// pair returns the new files' contents; clock, when set, moves the
		// source's clock.
		pair  func(f *fixture) (certPEM, keyPEM []byte)
		clock func(f *fixture) time.Time
		want  string
	}{
		{"key of another certificate", func(f *fixture) ([]byte, []byte) {
			return issue(t, f.ca, time.Hour, "new.test").CertPEM, other.KeyPEM
		}, nil, "private key does not match"},
		{"not PEM", func(f *fixture) ([]byte, []byte) {
			return []byte("certbot was interrupted"), other.KeyPEM
		}, nil, "failed to find any PEM data"},
		{"empty key", func(f *fixture) ([]byte, []byte) {
			return other.CertPEM, nil
		}, nil, "failed to find any PEM data in key"},
		{"expired", func(f *fixture) ([]byte, []byte) {
			l := issue(t, f.ca, -time.Minute, "new.test")
			return l.CertPEM, l.KeyPEM
		}, nil, "certificate expired"},
		{"not yet valid", func(f *fixture) ([]byte, []byte) {
			l := issue(t, f.ca, time.Hour, "new.test")
			return l.CertPEM, l.KeyPEM
		}, func(f *fixture) time.Time { return time.Now().Add(-2 * time.Hour) }, "not valid before"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, 20*time.Millisecond)
			old, _ := f.dial()
			defer old.Close()
			certPEM, keyPEM := tc.pair(f)
			if tc.clock != nil {
				now := tc.clock(f)
				f.clock.Store(&now)
			}
			replace(t, f.dir, certPEM, keyPEM)
			tstest.WaitFor(t, 10*time.Second, "the new pair to be refused", func() error {
				if st := f.src.Status(); !strings.Contains(st.Problem, tc.want) {
					return errorf("problem " + st.Problem)
				}
				return nil
			})
			if got := f.served(); got != "first.test" {
				t.Errorf("serving %s after a bad pair; want the old one", got)
			}
			echo(t, old, "still there")
			if err := f.src.Reload(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Reload: %v, want an error with %q", err, tc.want)
			}
			logs := f.logs.String()
			if n := strings.Count(logs, "new TLS certificate refused"); n != 1 || !strings.Contains(logs, "level=WARN") {
				t.Errorf("want one warning for the refused pair, got %d:\n%s", n, logs)
			}
			f.clock.Store(nil)
			good := issue(t, f.ca, time.Hour, "fixed.test")
			replace(t, f.dir, good.CertPEM, good.KeyPEM)
			waitServed(t, f, "fixed.test")
			if st := f.src.Status(); st.Problem != "" {
				t.Errorf("problem %q stays after a good pair", st.Problem)
			}
		})
	}
}

// TestFilesReloadOnSIGHUP: with polling too slow to matter, Reload (what
// SIGHUP calls) switches at once.
func TestFilesReloadOnSIGHUP(t *testing.T) {
	f := newFixture(t, time.Hour)
	old, _ := f.dial()
	defer old.Close()
	l := issue(t, f.ca, time.Hour, "hup.test")
	replace(t, f.dir, l.CertPEM, l.KeyPEM)
	if err := f.src.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := f.served(); got != "hup.test" {
		t.Errorf("serving %s after Reload", got)
	}
	echo(t, old, "kept")
}

func TestNewRefusesBadPair(t *testing.T) {
	ca, err := testca.New("x")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	a, b := issue(t, ca, time.Hour, "a.test"), issue(t, ca, time.Hour, "b.test")
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(cert, a.CertPEM, 0o600)
	os.WriteFile(key, b.KeyPEM, 0o600)
	if _, err := tlscert.New(tlscert.Options{CertPath: cert, KeyPath: key}); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched pair: %v", err)
	}
	// An expired pair is served (with a warning): it is all there is.
	exp := issue(t, ca, -time.Minute, "old.test")
	os.WriteFile(cert, exp.CertPEM, 0o600)
	os.WriteFile(key, exp.KeyPEM, 0o600)
	var logs tstest.Buffer
	src, err := tlscert.New(tlscert.Options{CertPath: cert, KeyPath: key, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("expired pair: %v", err)
	}
	if !src.Status().Serving() || !strings.Contains(logs.String(), "not valid now") {
		t.Errorf("status %+v, logs %s", src.Status(), logs.String())
	}
}
