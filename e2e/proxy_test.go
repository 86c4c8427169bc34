//go:build linux

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/oidctest"
	"github.com/hsctl/headscale/internal/testbin"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/api"
	"github.com/hsctl/headscale/pkg/pendingreg"
)

// reverseProxy is one of the proxies whose example configuration ships in
// packaging/examples (and the .deb's /usr/share/doc/headscale/examples).
type reverseProxy struct {
	name, host string // binary and Debian package name; its testHosts name
	pkg        string
	// apiRateLimit is how many quick requests to /api/ from one address
	// the example lets through before answering 429 (0: it sets none).
	apiRateLimit int
	// start renders the shipped example for p and runs the proxy.
	start func(t *testing.T, p *proxyRun)
}

// proxyRun is one proxy instance in front of one server.
type proxyRun struct {
	env               *Env
	bin               string
	dir               string // config, pid file, temp dirs, logs
	host              string
	port, httpPort    int    // TLS port (server_url's) and plain HTTP (redirect)
	upstream          string // the server's listen_addr
	certPath, keyPath string
	logPath           string
	proc              *process
}

// URL is the proxy's https URL, the server's server_url.
func (p *proxyRun) URL() string { return fmt.Sprintf("https://%s:%d", p.host, p.port) }

// renderExample reads packaging/examples/name and applies the replacements
// (from, to pairs, in order): only host names, ports and paths, each of
// which must occur, so the test fails when the example and its template
// drift apart.
func renderExample(t *testing.T, name string, pairs ...string) string {
	t.Helper()
	root, err := testbin.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "packaging", "examples", name))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for i := 0; i+1 < len(pairs); i += 2 {
		if !strings.Contains(s, pairs[i]) {
			t.Fatalf("packaging/examples/%s no longer contains %q, which the test replaces", name, pairs[i])
		}
		s = strings.ReplaceAll(s, pairs[i], pairs[i+1])
	}
	return s
}

// reverseProxies are the proxies tested, with how each is run from its
// shipped example.
var reverseProxies = []reverseProxy{
	{name: "nginx", pkg: "nginx-light", host: "nginx.e2e.test", apiRateLimit: 21, start: func(t *testing.T, p *proxyRun) {
		site := renderExample(t, "nginx.conf",
			"/etc/letsencrypt/live/headscale.example.com/fullchain.pem", p.certPath,
			"/etc/letsencrypt/live/headscale.example.com/privkey.pem", p.keyPath,
			"headscale.example.com", p.host,
			"listen 443 ssl http2;", fmt.Sprintf("listen 127.0.0.1:%d ssl http2;", p.port),
			"listen 80;", fmt.Sprintf("listen 127.0.0.1:%d;", p.httpPort),
			"127.0.0.1:8080", p.upstream)
		sitePath := filepath.Join(p.dir, "headscale.conf")
		writeFile(t, sitePath, site)
		runNginx(t, p, sitePath)
	}},
	{name: "haproxy", pkg: "haproxy", host: "haproxy.e2e.test", apiRateLimit: 101, start: func(t *testing.T, p *proxyRun) {
		// HAProxy takes the chain and key in one file.
		pem := filepath.Join(p.dir, "haproxy.pem")
		cert, _ := os.ReadFile(p.certPath)
		key, _ := os.ReadFile(p.keyPath)
		writeFile(t, pem, string(cert)+string(key))
		cfg := renderExample(t, "haproxy.cfg",
			"/etc/haproxy/certs/headscale.pem", pem,
			"bind :443 ", fmt.Sprintf("bind 127.0.0.1:%d ", p.port),
			"bind :80\n", fmt.Sprintf("bind 127.0.0.1:%d\n", p.httpPort),
			"127.0.0.1:8080", p.upstream)
		writeFile(t, filepath.Join(p.dir, "haproxy.cfg"), cfg)
		p.run(t, "-db", "-f", filepath.Join(p.dir, "haproxy.cfg"), "-p", filepath.Join(p.dir, "haproxy.pid"))
	}},
	{name: "caddy", pkg: "caddy", host: "caddy.e2e.test", start: func(t *testing.T, p *proxyRun) {
		site := renderExample(t, "Caddyfile",
			"/etc/ssl/headscale/fullchain.pem", p.certPath,
			"/etc/ssl/headscale/privkey.pem", p.keyPath,
			"headscale.example.com", p.host,
			"127.0.0.1:8080", p.upstream)
		// Global options of the test's own: its ports, no admin endpoint,
		// storage in the test's directory.
		global := fmt.Sprintf("{\n\tadmin off\n\thttp_port %d\n\thttps_port %d\n\tstorage file_system %s\n}\n\n",
			p.httpPort, p.port, filepath.Join(p.dir, "storage"))
		writeFile(t, filepath.Join(p.dir, "Caddyfile"), global+site)
		p.run(t, "run", "--adapter", "caddyfile", "--config", filepath.Join(p.dir, "Caddyfile"),
			"--pidfile", filepath.Join(p.dir, "caddy.pid"))
	}},
}

// runNginx runs nginx for p with sitePath included in its http block, as
// a Debian nginx.conf includes its sites, everything else in p.dir.
func runNginx(t *testing.T, p *proxyRun, sitePath string) {
	t.Helper()
	d := func(name string) string { return filepath.Join(p.dir, name) }
	main := fmt.Sprintf(`daemon off;
user root;
worker_processes 1;
pid %s;
error_log %s info;
events { worker_connections 512; }
http {
    access_log %s;
    client_body_temp_path %s;
    proxy_temp_path %s;
    fastcgi_temp_path %s;
    uwsgi_temp_path %s;
    scgi_temp_path %s;
    include %s;
}
`, d("nginx.pid"), d("error.log"), d("access.log"), d("client_body"), d("proxy"), d("fastcgi"), d("uwsgi"), d("scgi"), sitePath)
	writeFile(t, d("nginx.conf"), main)
	p.run(t, "-p", p.dir, "-e", d("error.log"), "-c", d("nginx.conf"))
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// newProxyRun prepares a proxy instance's directory, ports and certificate.
func newProxyRun(t *testing.T, env *Env, rp reverseProxy) *proxyRun {
	t.Helper()
	p := &proxyRun{env: env, bin: testbin.Tool(t, rp.name, rp.pkg), dir: t.TempDir(), host: rp.host,
		port: env.FreePort(t), httpPort: env.FreePort(t)}
	leaf, err := env.CA.Issue(0, rp.host)
	if err != nil {
		t.Fatal(err)
	}
	if p.certPath, p.keyPath, err = leaf.Write(p.dir); err != nil {
		t.Fatal(err)
	}
	p.logPath = filepath.Join(p.dir, rp.name+".log")
	return p
}

// run starts the proxy binary as root with args, stops it when the test
// ends, and waits (with a deadline) until /health answers through it.
func (p *proxyRun) run(t *testing.T, args ...string) {
	t.Helper()
	env := []string{"HOME=" + p.dir, "XDG_DATA_HOME=" + filepath.Join(p.dir, "data"), "XDG_CONFIG_HOME=" + filepath.Join(p.dir, "config")}
	proc, err := startProcess(filepath.Base(p.bin), p.bin, args, env, p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	p.proc = proc
	logTailOnFailure(t, filepath.Base(p.bin), p.logPath, 40)
	t.Cleanup(func() { proc.stop(5 * time.Second) })
	c := p.env.HTTPClient()
	c.Timeout = 2 * time.Second
	tstest.WaitFor(t, 20*time.Second, filepath.Base(p.bin)+" to pass /health on", func() error {
		if err := proc.exited(); err != nil {
			return tstest.Permanent(err)
		}
		resp, err := c.Get(p.URL() + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/health through the proxy: %s", resp.Status)
		}
		return nil
	})
}

// clientFrom is an HTTP client trusting the run's CA whose connections
// come from the loopback address local: a distinct client as far as the
// proxy or the server can tell.
func clientFrom(env *Env, local string) *http.Client {
	c := env.HTTPClient()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	tr := c.Transport.(*http.Transport)
	tr.DialContext = d.DialContext
	tr.DisableKeepAlives = true
	return c
}

// apiGet sends GET url with the API key and extra headers and returns the
// status and body.
func apiGet(t *testing.T, c *http.Client, url, key string, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

// TestReverseProxies runs headscale behind nginx, HAProxy and Caddy, each
// started from the example shipped in packaging/examples (only host name,
// ports and paths replaced), with server_url the proxy's https URL and the
// server on plain HTTP on loopback. Through each: official clients join
// (the Noise upgrade), get streaming map updates (a third node appearing),
// pass traffic over the embedded DERP (whose region is the proxy's URL:
// TLS and the DERP upgrade through the proxy), the REST API and /health
// answer with the example's security headers, port 80 redirects, the
// example's rate limit on /api/ (nginx, HAProxy) answers 429, and a web
// registration's page loads under the proxy's URL and completes. With
// trusted_proxies naming the proxy's address, the API's failed-key limit
// and its log line name the client behind the proxy, not the proxy nor an
// address the client forged; a forged X-Forwarded-For sent to the server
// directly is not believed. Through nginx, an OIDC login with a real
// provider completes with the proxy's URL as the redirect URL.
func TestReverseProxies(t *testing.T) {
	env := requireHosts(t)
	for _, rp := range reverseProxies {
		t.Run(rp.name, func(t *testing.T) {
			p := newProxyRun(t, env, rp)
			srv := StartServer(t, ServerOptions{ServerURL: p.URL(), ExtraConfig: "trusted_proxies: [127.0.0.1]\n"})
			p.upstream = fmt.Sprintf("127.0.0.1:%d", srv.Port)
			rp.start(t, p)
			testThroughProxy(t, env, srv, p, rp)
		})
	}
	t.Run("nginx OIDC", func(t *testing.T) {
		testOIDCThroughProxy(t, env, reverseProxies[0])
	})
}

func testThroughProxy(t *testing.T, env *Env, srv *Server, p *proxyRun, rp reverseProxy) {
	var apiKey string
	srv.cliJSON(t, &apiKey, "apikeys", "create", "-o", "json")
	env.audit.addKey(t, "API key", apiKey)

	t.Run("health, security headers and the port 80 redirect", func(t *testing.T) {
		c := env.HTTPClient()
		resp, err := c.Get(p.URL() + "/health")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"pass"`) {
			t.Fatalf("/health through the proxy: %s %s", resp.Status, body)
		}
		for h, want := range map[string]string{"Strict-Transport-Security": "max-age=31536000", "X-Content-Type-Options": "nosniff",
			"X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"} {
			if got := resp.Header.Get(h); got != want {
				t.Errorf("%s: %q, want %q", h, got, want)
			}
		}
		resp, err = c.Get(fmt.Sprintf("http://%s:%d/health", p.host, p.httpPort))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if loc := resp.Header.Get("Location"); resp.StatusCode/100 != 3 || !strings.HasPrefix(loc, "https://"+p.host) {
			t.Errorf("plain HTTP: %s, Location %q; want a redirect to https", resp.Status, loc)
		}
	})

	srv.CreateUser(t, "proxied")
	key := srv.CreatePreAuthKey(t, "proxied", PreAuthKeyOptions{Reusable: true})
	derpOnly := NodeOptions{Env: []string{"TS_DEBUG_ALWAYS_USE_DERP=1"}}
	t.Run("clients join, see a new peer and talk over DERP through the proxy", func(t *testing.T) {
		a, b := startPair(t, srv, key.Key, derpOnly)
		out := mustPing(t, a, b)
		if !strings.Contains(out, "via DERP") {
			t.Errorf("ping did not go over DERP: %s", out)
		}
		// A map update streamed through the proxy: a node joining later
		// appears at the first two.
		c := StartNode(t, srv, p.host[:strings.IndexByte(p.host, '.')]+"-c", derpOnly)
		c.MustUp(key.Key)
		a.WaitForPeer(c, 30*time.Second)
		b.WaitForPeer(c, 30*time.Second)

		if out := mustPing(t, c, a); !strings.Contains(out, "via DERP") {
			t.Errorf("ping did not go over DERP: %s", out)
		}
		code, body := apiGet(t, env.HTTPClient(), p.URL()+"/api/v1/node", apiKey)
		if code != http.StatusOK || !strings.Contains(body, `"`+c.Name+`"`) {
			t.Errorf("GET /api/v1/node through the proxy: %d %s", code, body)
		}
	})

	t.Run("web registration under the proxy's URL", func(t *testing.T) {
		n := StartNode(t, srv, p.host[:strings.IndexByte(p.host, '.')]+"-web", NodeOptions{})
		up := startWebUp(n)
		u := authURL(t, n, "")
		id := u[strings.LastIndex(u, "/")+1:]
		if !strings.HasPrefix(u, p.URL()+"/register/") || !pendingreg.ValidID(id) {
			t.Fatalf("AuthURL %q, want one under %s/register/", u, p.URL())
		}
		resp, err := env.HTTPClient().Get(u)
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := "headscale auth register --auth-id " + id; resp.StatusCode != http.StatusOK || !strings.Contains(string(page), want) {
			t.Fatalf("register page through the proxy: %s, lacks %q:\n%s", resp.Status, want, page)
		}
		if _, err := srv.CLI(t, "auth", "register", "--auth-id", id, "--user", "proxied"); err != nil {
			t.Fatal(err)
		}
		up.wait(t)
		runningAs(t, n, "proxied", 30*time.Second)
	})

	t.Run("trusted_proxies: the client behind the proxy, not a forged address", func(t *testing.T) {
		bad := "hskey-api-000000000000-" + strings.Repeat("0", 64)
		// 127.0.0.5 behind the proxy fails with wrong keys, claiming to
		// be 127.0.0.6 in its own X-Forwarded-For.
		attacker := clientFrom(env, "127.0.0.5")
		var code int
		for range api.KeyFailureBurst {
			code, _ = apiGet(t, attacker, p.URL()+"/api/v1/user", bad, "X-Forwarded-For", "127.0.0.6")
		}
		if code != http.StatusTooManyRequests {
			t.Fatalf("%d wrong keys through the proxy: last answer %d, want 429", api.KeyFailureBurst, code)
		}
		if code, _ := apiGet(t, attacker, p.URL()+"/api/v1/user", apiKey); code != http.StatusTooManyRequests {
			t.Errorf("valid key from the slowed client through the proxy: %d, want 429", code)
		}
		// The neighbour it named, and anyone else behind the proxy, is
		// not slowed: the limit is per client, not per proxy.
		if code, _ := apiGet(t, clientFrom(env, "127.0.0.6"), p.URL()+"/api/v1/user", apiKey); code != http.StatusOK {
			t.Errorf("valid key from another client through the proxy: %d, want 200", code)
		}
		// Straight to the server, X-Forwarded-For is not believed: this
		// client is 127.0.0.7, whatever it says.
		if code, _ := apiGet(t, clientFrom(env, "127.0.0.7"), srv.Direct+"/api/v1/user", apiKey, "X-Forwarded-For", "127.0.0.5", "X-Real-IP", "127.0.0.5"); code != http.StatusOK {
			t.Errorf("valid key sent directly with a forged X-Forwarded-For naming the slowed client: %d, want 200", code)
		}
		tstest.WaitFor(t, 5*time.Second, "the limit's log line to name the client behind the proxy", func() error {
			return srv.logContains("remote=127.0.0.5")
		})
		if err := srv.logContains("remote=127.0.0.6"); err == nil {
			t.Error("the server logged the forged address 127.0.0.6")
		}
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", srv.MetricsPort))
		if err != nil {
			t.Fatal(err)
		}
		metrics, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := regexp.MustCompile(`(?m)^headscale_limit_hits_total\{limit="api_key_failures"\} (\d+)$`).FindSubmatch(metrics)
		if m == nil {
			t.Fatal("no headscale_limit_hits_total{limit=\"api_key_failures\"} in /metrics")
		}
		// One 429 for the last wrong key, one for the valid key after it.
		if n, _ := strconv.Atoi(string(m[1])); n != 2 {
			t.Errorf("api_key_failures hits: %d, want 2", n)
		}
	})

	if rp.apiRateLimit > 0 {
		t.Run("the example's rate limit on /api/", func(t *testing.T) {
			c := clientFrom(env, "127.0.0.9")
			limited := 0
			for i := 1; i <= rp.apiRateLimit+5; i++ {
				code, _ := apiGet(t, c, p.URL()+"/api/v1/user", apiKey)
				if code == http.StatusTooManyRequests {
					limited = i
					break
				}
				if code != http.StatusOK {
					t.Fatalf("request %d: %d", i, code)
				}
			}
			if limited == 0 || limited <= rp.apiRateLimit-5 {
				t.Errorf("first 429 at request %d, want one soon after %d", limited, rp.apiRateLimit)
			}
			// /health is not limited.
			if code, _ := apiGet(t, c, p.URL()+"/health", ""); code != http.StatusOK {
				t.Errorf("/health after the API limit: %d", code)
			}
		})
	}
}

// testOIDCThroughProxy logs a client in through a real OpenID provider
// with the server behind the proxy: the redirect URL the provider accepts
// is only the proxy's (path-less server_url), and the login completes.
func testOIDCThroughProxy(t *testing.T, env *Env, rp reverseProxy) {
	p := newProxyRun(t, env, rp)
	env.audit.addKey(t, "OIDC client secret", oidcSecret)
	idp := oidctest.Start(t, oidctest.Options{
		Clients: []oidctest.Client{{ID: "headscale", Secret: oidcSecret, RedirectURIGlobs: []string{p.URL() + "/oidc/callback"}}},
		Users:   []oidctest.User{{Username: "alice", Password: "alice-pw", Email: "alice@example.com", EmailVerified: true, Name: "Alice Example"}},
	})
	srv := StartServer(t, ServerOptions{ServerURL: p.URL(), ExtraConfig: "trusted_proxies: [127.0.0.1]\n" +
		"oidc:\n  issuer: " + idp.Issuer() + "\n  client_id: headscale\n  client_secret: " + oidcSecret + "\n" +
		"  pkce:\n    enabled: true\n    method: S256\n"})
	p.upstream = fmt.Sprintf("127.0.0.1:%d", srv.Port)
	rp.start(t, p)

	n := StartNode(t, srv, "oidc-proxied", NodeOptions{})
	up := startWebUp(n)
	u := authURL(t, n, "")
	if !strings.HasPrefix(u, p.URL()+"/register/") {
		t.Fatalf("AuthURL %q, want one under %s/register/", u, p.URL())
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	jar, _ := cookiejar.New(nil)
	browser := env.HTTPClient()
	browser.Jar = jar
	browser.Timeout = 30 * time.Second
	status, page, err := idp.CompleteLogin(ctx, browser, u, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	if status != http.StatusOK || !strings.Contains(page, "Device registered") {
		t.Fatalf("after the login through the proxy: %d %s", status, page)
	}
	up.wait(t)
	runningAs(t, n, "alice@example.com", 30*time.Second)
}
