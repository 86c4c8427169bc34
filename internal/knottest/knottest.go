// Package knottest runs Knot DNS (Debian's knot package) on loopback for
// tests: an authoritative server for one zone that accepts dynamic updates
// (RFC 2136) signed with a TSIG key, as a real deployment's primary does.
package knottest

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/testbin"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/miekg/dns"
)

// Server is a running knotd.
type Server struct {
	// Addr is host:port it answers on (UDP and TCP).
	Addr string
	// Zone is the zone it serves (no trailing dot).
	Zone string
	// KeyName, Algorithm and Secret are the TSIG key updates must be
	// signed with.
	KeyName, Algorithm, Secret string
}

// Options tunes Start.
type Options struct {
	// Host is the loopback address it listens on; "" means 127.0.0.1.
	// Another one (all of 127.0.0.0/8 is loopback) lets a test run it on
	// port 53 beside other servers, as clients' nameservers must be.
	Host string
	// Port fixes the port; zero picks a free one.
	Port int
	// Records are extra zone-file lines (relative to the zone), e.g.
	// "ns A 127.0.0.1".
	Records []string
}

// Start runs knotd serving zone on 127.0.0.1 (or opts.Host) until the test ends. It skips
// the test when knotd is not installed (see testbin.Tool).
func Start(tb testing.TB, zone string, opts Options) *Server {
	tb.Helper()
	knotd := testbin.Tool(tb, "knotd", "knot")
	dir := tb.TempDir()
	host := opts.Host
	if host == "" {
		host = "127.0.0.1"
	}
	port := opts.Port
	if port == 0 {
		port = freePort(tb)
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	s := &Server{
		Addr: net.JoinHostPort(host, strconv.Itoa(port)), Zone: zone,
		KeyName: "headscale-test", Algorithm: "hmac-sha256", Secret: base64.StdEncoding.EncodeToString(secret),
	}
	j := func(f string) string { return strconv.Quote(filepath.Join(dir, f)) }
	conf := fmt.Sprintf(`server:
    rundir: %s
    listen: %s@%d
    pidfile: %s
control:
    listen: %s
database:
    storage: %s
log:
  - target: stderr
    any: info
key:
  - id: %s
    algorithm: %s
    secret: %s
acl:
  - id: update
    key: %s
    action: update
zone:
  - domain: %s
    storage: %s
    file: zone
    acl: update
    zonefile-sync: -1
`, strconv.Quote(dir), host, port, j("knot.pid"), j("knot.sock"), j("db"), s.KeyName, s.Algorithm, s.Secret, s.KeyName, zone, strconv.Quote(dir))
	records := append([]string{
		"$ORIGIN " + zone + ".", "$TTL 60",
		"@ SOA ns." + zone + ". admin." + zone + ". 1 60 60 600 60",
		"@ NS ns", "ns A 127.0.0.1",
	}, opts.Records...)
	if err := os.WriteFile(filepath.Join(dir, "knot.conf"), []byte(conf), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "db"), 0o700); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "zone"), []byte(strings.Join(records, "\n")+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "knotd.log"))
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(knotd, "-c", filepath.Join(dir, "knot.conf"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting knotd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); logf.Close() }()
	tb.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if tb.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "knotd.log"))
			tb.Logf("knotd log:\n%s", b)
		}
	})
	err = tstest.Poll(15*time.Second, func() error {
		select {
		case err := <-exited:
			b, _ := os.ReadFile(filepath.Join(dir, "knotd.log"))
			return tstest.Permanent(fmt.Errorf("knotd exited: %v\n%s", err, b))
		default:
		}
		_, err := s.Query(context.Background(), zone, dns.TypeSOA)
		return err
	})
	if err != nil {
		tb.Fatalf("knotd not answering: %v", err)
	}
	return s
}

// Query asks the server for name's records of type qtype (over UDP) and
// returns the answer section; an answer other than NOERROR is an error.
func (s *Server) Query(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Timeout: 2 * time.Second}
	r, _, err := c.ExchangeContext(ctx, m, s.Addr)
	if err != nil {
		return nil, err
	}
	if r.Rcode != dns.RcodeSuccess {
		return nil, fmt.Errorf("%s %s: %s", name, dns.TypeToString[qtype], dns.RcodeToString[r.Rcode])
	}
	return r.Answer, nil
}

// TXT returns the TXT strings at name (none when it has no such record).
func (s *Server) TXT(ctx context.Context, name string) ([]string, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
	c := &dns.Client{Timeout: 2 * time.Second}
	r, _, err := c.ExchangeContext(ctx, m, s.Addr)
	if err != nil {
		return nil, err
	}
	if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
		return nil, fmt.Errorf("%s TXT: %s", name, dns.RcodeToString[r.Rcode])
	}
	var out []string
	for _, rr := range r.Answer {
		if t, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(t.Txt, ""))
		}
	}
	return out, nil
}

// freePort returns a port free on 127.0.0.1 for both UDP and TCP.
func freePort(tb testing.TB) int {
	tb.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	tb.Fatal("no free port for knotd")
	return 0
}
