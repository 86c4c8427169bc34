package sysdns

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsServer answers A queries for one name with 127.0.0.1 on a loopback
// UDP port and counts the queries it saw.
func dnsServer(t *testing.T, name string) (port string, queries *atomic.Int32) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	queries = new(atomic.Int32)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			queries.Add(1)
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
			b.EnableCompression()
			b.StartQuestions()
			b.Question(q)
			b.StartAnswers()
			if q.Name.String() == name+"." && q.Type == dnsmessage.TypeA {
				b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: [4]byte{127, 0, 0, 1}})
			}
			out, _ := b.Finish()
			pc.WriteTo(out, from)
		}
	}()
	_, port, _ = net.SplitHostPort(pc.LocalAddr().String())
	return port, queries
}

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestServers(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, conf, fallback string
		want                 string // comma-separated, "" means an error
	}{
		{"plain", "search example.com\nnameserver 192.0.2.1\nnameserver 2001:db8::1\n", "", "192.0.2.1:53,[2001:db8::1]:53"},
		{"magicdns skipped", "nameserver 100.100.100.100\nnameserver 192.0.2.1\n", "", "192.0.2.1:53"},
		{"magicdns v6 skipped", "nameserver fd7a:115c:a1e0::53\nnameserver 192.0.2.1\n", "", "192.0.2.1:53"},
		{"only magicdns, fallback", "nameserver 100.100.100.100\n", "nameserver 192.0.2.7\n", "192.0.2.7:53"},
		{"only magicdns, no fallback", "nameserver 100.100.100.100\n", "nameserver 100.100.100.100\n", ""},
		{"none listed", "options edns0\n", "", "127.0.0.1:53,[::1]:53"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf := writeFile(t, dir, "resolv-"+strings.ReplaceAll(tc.name, " ", "_"), tc.conf)
			var fallbacks []string
			if tc.fallback != "" {
				fallbacks = []string{filepath.Join(dir, "missing"), writeFile(t, dir, "fb-"+strings.ReplaceAll(tc.name, " ", "_"), tc.fallback)}
			} else {
				fallbacks = []string{}
			}
			got, err := New(Options{ResolvConf: conf, Fallbacks: fallbacks}).Servers()
			if tc.want == "" {
				if err == nil {
					t.Fatalf("got %v, want an error", got)
				}
				return
			}
			if err != nil || strings.Join(got, ",") != tc.want {
				t.Fatalf("got %v, %v; want %s", got, err, tc.want)
			}
		})
	}
}

// TestHTTPClientUsesHostResolver fetches a URL by name through a
// resolv.conf that lists MagicDNS first: the name resolves through the
// host's (test) nameserver and the request arrives.
func TestHTTPClientUsesHostResolver(t *testing.T) {
	const name = "derp-map.headscale.test"
	port, queries := dnsServer(t, name)
	dir := t.TempDir()
	conf := writeFile(t, dir, "resolv.conf", "nameserver 100.100.100.100\nnameserver 127.0.0.1\n")
	r := New(Options{ResolvConf: conf, Fallbacks: []string{}, Port: port})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from "+r.Host)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	_, httpPort, _ := net.SplitHostPort(ln.Addr().String())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+name+":"+httpPort+"/", nil)
	resp, err := r.HTTPClient(10 * time.Second).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !strings.HasPrefix(string(body), "hello from "+name) {
		t.Fatalf("body = %q", body)
	}
	if queries.Load() == 0 {
		t.Fatal("the host nameserver saw no query")
	}
	if servers, _ := r.Servers(); len(servers) != 1 || servers[0] != "127.0.0.1:"+port {
		t.Fatalf("servers = %v", servers)
	}
}
