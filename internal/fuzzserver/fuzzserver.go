// Package fuzzserver starts a real server for fuzz targets that drive the
// API and the control protocol end to end: SQLite in a temp dir, loopback
// listeners, a user, a reusable pre-auth key and one node registered with
// it over Noise. A fuzz process starts one and reuses it for every input.
package fuzzserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/server"
	"tailscale.com/control/tsp"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// Server is a running server and what was set up in it.
type Server struct {
	// URL is the main listener, "http://127.0.0.1:port".
	URL string
	// UserID and NodeID are the user and its registered node (decimal).
	UserID, NodeID string
	// AuthKey is the user's reusable pre-auth key.
	AuthKey string
	// Machine and Node are the registered node's keys.
	Machine key.MachinePrivate
	Node    key.NodePrivate

	socket *http.Client // the unix socket: the API with local trust
}

// Start runs a server until tb ends, with policy.mode database so the
// policy API is live. It fails tb if anything does not come up.
func Start(tb testing.TB) *Server {
	tb.Helper()
	dir := tb.TempDir()
	sock := filepath.Join(dir, "hs.sock")
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
server_url: http://127.0.0.1:8080
listen_addr: 127.0.0.1:0
metrics_listen_addr: ""
state_dir: %s
unix_socket: %s
policy:
  mode: database
derp:
  server:
    stun_listen_addr: 127.0.0.1:0
`, dir, sock)), 0o600); err != nil {
		tb.Fatal(err)
	}
	cfg, _, err := config.Load(config.LoadOptions{Path: cfgPath})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := server.New(ctx, cfg, slog.New(slog.DiscardHandler), "fuzz")
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	if err := s.Listen(ctx); err != nil {
		cancel()
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("server run: %v", err)
		}
	})
	fs := &Server{URL: "http://" + s.Addr().String(), socket: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}},
	}}
	tb.Cleanup(fs.socket.CloseIdleConnections)

	out := fs.must(tb, "POST", "/api/v1/user", `{"name":"fuzz"}`)
	fs.UserID = field(tb, out, "user", "id")
	out = fs.must(tb, "POST", "/api/v1/preauthkey", fmt.Sprintf(`{"user":%q,"reusable":true,"expiration":%q}`,
		fs.UserID, time.Now().Add(24*time.Hour).UTC().Format(time.RFC3339)))
	fs.AuthKey = field(tb, out, "preAuthKey", "key")

	fs.Machine, fs.Node = key.NewMachine(), key.NewNode()
	c, err := tsp.NewClient(tsp.ClientOpts{ServerURL: fs.URL, MachineKey: fs.Machine})
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
	defer rcancel()
	resp, err := c.Register(rctx, tsp.RegisterOpts{NodeKey: fs.Node, AuthKey: fs.AuthKey, Hostinfo: &tailcfg.Hostinfo{Hostname: "fuzz-node"}})
	if err != nil || !resp.MachineAuthorized {
		tb.Fatalf("registering the fuzz node: %v %+v", err, resp)
	}
	var nodes struct {
		Nodes []struct {
			ID string `json:"id"`
		} `json:"nodes"`
	}
	out = fs.must(tb, "GET", "/api/v1/node", "")
	if err := json.Unmarshal(out, &nodes); err != nil || len(nodes.Nodes) != 1 {
		tb.Fatalf("listing nodes: %v %s", err, out)
	}
	fs.NodeID = nodes.Nodes[0].ID
	return fs
}

// API makes one call over the unix socket, with {node} and {user} in path
// replaced by NodeID and UserID, and returns the response with its body
// (read up to 8 MiB).
func (s *Server) API(method, path string, body []byte) (*http.Response, []byte, error) {
	path = strings.NewReplacer("{node}", s.NodeID, "{user}", s.UserID).Replace(path)
	req, err := http.NewRequest(method, "http://headscale"+path, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.socket.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	return resp, out, err
}

func (s *Server) must(tb testing.TB, method, path, body string) []byte {
	tb.Helper()
	resp, out, err := s.API(method, path, []byte(body))
	if err != nil || resp.StatusCode != http.StatusOK {
		tb.Fatalf("%s %s: %v %s", method, path, err, out)
	}
	return out
}

func field(tb testing.TB, b []byte, obj, name string) string {
	tb.Helper()
	var v map[string]map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		tb.Fatalf("%s: %v", b, err)
	}
	s, ok := v[obj][name].(string)
	if !ok {
		tb.Fatalf("%s: no %s.%s", b, obj, name)
	}
	return s
}
