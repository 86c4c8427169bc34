package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/testca"
	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/store"
	"go.uber.org/goleak"
	"tailscale.com/control/tsp"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// The shutdown tests check with goleak that every goroutine a server
// started is gone once New failed, Close returned or Run returned, and
// that the database is closed: the store holds a shared flock on the file
// while open, so an exclusive non-blocking flock succeeds only after it
// closed.

// loadTestConfig writes the base test config plus extraYAML into dir and
// loads it.
func loadTestConfig(t *testing.T, dir, extraYAML string) *config.Config {
	t.Helper()
	cfgPath := filepath.Join(dir, "config.yaml")
	body := fmt.Sprintf(`
server_url: http://127.0.0.1:8080
listen_addr: 127.0.0.1:0
metrics_listen_addr: 127.0.0.1:0
grpc_listen_addr: 127.0.0.1:0
state_dir: %s
unix_socket: %s/hs.sock
derp:
  server:
    stun_listen_addr: 127.0.0.1:0
`, dir, dir) + extraYAML
	if err := os.WriteFile(cfgPath, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := config.Load(config.LoadOptions{Path: cfgPath})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// serverGoroutines returns the stacks of goroutines now running code of
// the packages behind the server's state (control protocol, state owner,
// map hub, store, the server's own loops), other than the test's own.
func serverGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "_test.go:") {
			continue
		}
		for _, pkg := range []string{"/pkg/control.", "/pkg/state.", "/pkg/mapper.", "/pkg/store.", "/pkg/server."} {
			if strings.Contains(g, "github.com/hsctl/headscale"+pkg) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// preAuthKey creates a user and a reusable pre-auth key for it through
// s's API handler, and returns the key.
func preAuthKey(t *testing.T, s *Server) string {
	t.Helper()
	u, err := s.state.CreateUser(context.Background(), store.User{Name: "alpha"})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	s.api.Handler().ServeHTTP(rec, httptest.NewRequest("POST", "/api/v1/preauthkey", strings.NewReader(
		fmt.Sprintf(`{"user":"%d","reusable":true,"expiration":%q}`, u.ID, time.Now().Add(time.Hour).UTC().Format(time.RFC3339)))))
	var out struct {
		Key struct {
			Key string `json:"key"`
		} `json:"preAuthKey"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Key.Key == "" {
		t.Fatalf("creating a pre-auth key: %d %s", rec.Code, rec.Body)
	}
	return out.Key.Key
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// databaseReleased reports nil when nothing in this process (or another)
// holds the database at path open through a Store.
func databaseReleased(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("database %s still open: %w", path, err)
	}
	return syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}

// checkReleased fails the test when goroutines started since ignore was
// taken are still running (goleak retries for a while) or the database is
// still open.
func checkReleased(t *testing.T, ignore goleak.Option, cfg *config.Config) {
	t.Helper()
	if err := goleak.Find(ignore); err != nil {
		t.Errorf("goroutines left behind: %v", err)
	}
	if _, err := os.Stat(cfg.Database.SQLite.Path); err == nil {
		if err := databaseReleased(cfg.Database.SQLite.Path); err != nil {
			t.Error(err)
		}
	}
}

// TestNewFailsCleanly: every way New can fail after it opened something
// closes it again; a bad TLS certificate fails before anything is opened.
func TestNewFailsCleanly(t *testing.T) {
	for _, tc := range []struct {
		name    string
		extra   string
		prepare func(t *testing.T, dir string)
		want    string
		noDB    bool // New fails before the database is created
	}{{
		name:  "unreadable TLS certificate",
		extra: "tls_cert_path: {{dir}}/cert.pem\ntls_key_path: {{dir}}/key.pem\n",
		prepare: func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "cert.pem"), []byte("not a certificate"), 0o600)
			os.WriteFile(filepath.Join(dir, "key.pem"), []byte("not a key"), 0o600)
		},
		want: "tls_cert_path: loading the certificate and key",
		noDB: true,
	}, {
		name: "garbage noise key",
		prepare: func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "noise_private.key"), []byte("garbage"), 0o600)
		},
		want: "reading private key",
	}, {
		name: "garbage DERP key",
		prepare: func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "derp_server_private.key"), []byte("garbage"), 0o600)
		},
		want: "reading private key",
	}, {
		name:  "broken policy file (after the map hub started)",
		extra: "policy:\n  mode: file\n  path: {{dir}}/policy.hujson\n",
		prepare: func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "policy.hujson"), []byte(`{"acls": [{"action": "accept", "src": ["group:nobody"], "dst": ["*:*"]}]}`), 0o600)
		},
		want: "group:nobody",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			dir := t.TempDir()
			tc.prepare(t, dir)
			cfg := loadTestConfig(t, dir, strings.ReplaceAll(tc.extra, "{{dir}}", dir))
			s, err := New(context.Background(), cfg, quietLogger(), "test")
			if err == nil {
				s.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want it to mention %q", err, tc.want)
			}
			if _, err := os.Stat(cfg.Database.SQLite.Path); tc.noDB != errors.Is(err, os.ErrNotExist) {
				t.Errorf("database file after the failure: %v (want it absent: %v)", err, tc.noDB)
			}
			checkReleased(t, ignore, cfg)
		})
	}
}

// TestRunListenFailureCloses: Run that has to bind and cannot (listen_addr
// taken) returns the error and leaves nothing open, as does Close after a
// failed Listen (the serve command's path).
func TestRunListenFailureCloses(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, viaClose := range []bool{false, true} {
		t.Run(fmt.Sprintf("close=%v", viaClose), func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			dir := t.TempDir()
			// The main listener binds first, so the metrics one fails with
			// it already bound.
			cfg := loadTestConfig(t, dir, "")
			cfg.MetricsListenAddr = taken.Addr().String()
			s, err := New(context.Background(), cfg, quietLogger(), "test")
			if err != nil {
				t.Fatal(err)
			}
			if viaClose {
				err = s.Listen(context.Background())
				if cerr := s.Close(); cerr != nil {
					t.Errorf("Close: %v", cerr)
				}
			} else {
				err = s.Run(context.Background())
			}
			if err == nil || !strings.Contains(err.Error(), "metrics_listen_addr") {
				t.Fatalf("got %v, want a metrics_listen_addr bind error", err)
			}
			if s.mainLn == nil {
				t.Fatal("the main listener was not bound before the failure; the test checks nothing")
			}
			checkReleased(t, ignore, cfg)
		})
	}
}

// TestRunStopsEverything: Run ends on its context and on a failing
// listener; either way the Noise connections, map sessions, HTTP servers
// and background loops are gone and the database is closed, and a server
// on the same state directory starts again.
func TestRunStopsEverything(t *testing.T) {
	for _, how := range []string{"context", "listener fails"} {
		t.Run(how, func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			dir := t.TempDir()
			cfg := loadTestConfig(t, dir, "")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			s, err := New(ctx, cfg, quietLogger(), "test")
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Listen(ctx); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx) }()
			if err := databaseReleased(cfg.Database.SQLite.Path); err == nil {
				t.Fatal("the database looks released while the server runs; the check proves nothing")
			}

			// A registered node with an open map session, so shutdown has
			// a Noise connection and a session to end.
			c, err := tsp.NewClient(tsp.ClientOpts{ServerURL: "http://" + s.Addr().String(), MachineKey: key.NewMachine()})
			if err != nil {
				t.Fatal(err)
			}
			mctx, mcancel := context.WithTimeout(ctx, 30*time.Second)
			defer mcancel()
			nk := key.NewNode()
			if resp, err := c.Register(mctx, tsp.RegisterOpts{NodeKey: nk, AuthKey: preAuthKey(t, s), Hostinfo: &tailcfg.Hostinfo{Hostname: "alpha"}}); err != nil || !resp.MachineAuthorized {
				t.Fatalf("registering: %v %+v", err, resp)
			}
			sess, err := c.Map(mctx, tsp.MapOpts{NodeKey: nk, Stream: true, Hostinfo: &tailcfg.Hostinfo{Hostname: "alpha"}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := sess.Next(); err != nil {
				t.Fatal(err)
			}

			if how == "context" {
				cancel()
			} else {
				s.mainLn.Close()
			}
			select {
			case err := <-done:
				if how == "context" && err != nil {
					t.Errorf("Run: %v", err)
				}
				if how != "context" && (err == nil || !strings.Contains(err.Error(), "HTTP server failed")) {
					t.Errorf("Run: %v, want an HTTP server failure", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return")
			}
			// Run waited for its goroutines: at once, with no retry, none
			// is left in the packages that reach the state or the store.
			if left := serverGoroutines(); len(left) > 0 {
				t.Errorf("goroutines still running when Run returned:\n%s", strings.Join(left, "\n\n"))
			}
			// The server ended the session; the client's side follows.
			if _, err := sess.Next(); err == nil {
				t.Error("the map session is still open after Run returned")
			}
			sess.Close()
			c.Close()
			if err := s.Close(); err != nil {
				t.Errorf("Close after Run: %v", err)
			}
			if _, err := os.Stat(cfg.UnixSocket); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("unix socket after Run: %v, want it removed", err)
			}
			checkReleased(t, ignore, cfg)

			// The node's state was flushed and the files are free: the same
			// directory serves again.
			s2, err := New(context.Background(), loadTestConfig(t, dir, ""), quietLogger(), "test")
			if err != nil {
				t.Fatalf("New on the same state directory: %v", err)
			}
			defer s2.Close()
			if n := len(s2.state.Nodes()); n != 1 {
				t.Errorf("%d nodes after restart, want 1", n)
			}
		})
	}
}

// TestTLSServes: with tls_cert_path set, the certificate New loaded is the
// one the main listener serves (HTTP/1.1 only, for the control upgrade),
// and Run's shutdown leaves nothing behind.
func TestTLSServes(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	dir := t.TempDir()
	pool, _, _ := testca.Files(t, dir, "127.0.0.1")
	cfg := loadTestConfig(t, dir, "tls_cert_path: "+dir+"/cert.pem\ntls_key_path: "+dir+"/key.pem\n")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := New(ctx, cfg, quietLogger(), "test")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + s.Addr().String() + "/health")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"pass"`) {
		t.Errorf("GET /health over TLS: %s %s", resp.Status, body)
	}
	if resp.TLS == nil || resp.TLS.NegotiatedProtocol != "http/1.1" || resp.ProtoMajor != 1 {
		t.Errorf("negotiated %v over %s, want http/1.1 only", resp.TLS, resp.Proto)
	}
	tr.CloseIdleConnections()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	checkReleased(t, ignore, cfg)
}
