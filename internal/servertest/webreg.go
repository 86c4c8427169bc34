package servertest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/loadgen"
	"tailscale.com/control/ts2021"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// WebClient is a client registering without a pre-auth key (web
// registration), speaking /machine/register by hand over its own Noise
// connection: Register sends what tailscaled sends.
type WebClient struct {
	Machine key.MachinePrivate
	Key     key.NodePrivate
	// Hostinfo is sent with every request.
	Hostinfo *tailcfg.Hostinfo
	ts       *Server
	nc       *ts2021.Client
}

// WebClient returns a client with a fresh machine key (or mk, when not
// zero) and node key, announcing hostname and tags (RequestTags). Auth
// IDs it is given are noted as secrets: no log line may carry them.
func (ts *Server) WebClient(tb testing.TB, mk key.MachinePrivate, hostname string, tags ...string) *WebClient {
	tb.Helper()
	if mk.IsZero() {
		mk = key.NewMachine()
	}
	// The server's Noise key, fetched without keep-alive (a kept
	// connection's goroutines would outlive the test).
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	res, err := hc.Get(ts.URL + "/key?v=" + fmt.Sprint(tailcfg.CurrentCapabilityVersion))
	if err != nil {
		tb.Fatalf("server key: %v", err)
	}
	var keys tailcfg.OverTLSPublicKeyResponse
	err = json.NewDecoder(res.Body).Decode(&keys)
	res.Body.Close()
	if err != nil {
		tb.Fatalf("server key: %v", err)
	}
	pub := keys.PublicKey
	nc, err := loadgen.DialNoise(ts.URL, mk, pub)
	if err != nil {
		tb.Fatalf("noise client: %v", err)
	}
	tb.Cleanup(func() { nc.Close() })
	return &WebClient{Machine: mk, Key: key.NewNode(), Hostinfo: &tailcfg.Hostinfo{Hostname: hostname, RequestTags: tags}, ts: ts, nc: nc}
}

// Register sends a RegisterRequest without an auth key (with followup as
// its Followup, and oldKey as its OldNodeKey when not zero) and returns the
// HTTP status and, on 200, the response. An AuthURL it carries is noted as
// a secret.
func (c *WebClient) Register(ctx context.Context, followup string, oldKey key.NodePublic) (int, *tailcfg.RegisterResponse, error) {
	req := tailcfg.RegisterRequest{
		Version:    tailcfg.CurrentCapabilityVersion,
		NodeKey:    c.Key.Public(),
		OldNodeKey: oldKey,
		Hostinfo:   c.Hostinfo,
		Followup:   followup,
	}
	b, err := json.Marshal(req)
	if err != nil {
		return 0, nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, "POST", "https://"+strings.TrimPrefix(c.ts.URL, "http://")+"/machine/register", bytes.NewReader(b))
	if err != nil {
		return 0, nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	res, err := c.nc.Do(hr)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if res.StatusCode != http.StatusOK {
		return res.StatusCode, nil, fmt.Errorf("register: %d %s", res.StatusCode, body)
	}
	var resp tailcfg.RegisterResponse
	if err := json.Unmarshal(body, &resp); err != nil {
		return res.StatusCode, nil, fmt.Errorf("register: decoding %q: %w", body, err)
	}
	if i := strings.LastIndex(resp.AuthURL, "/"); i >= 0 {
		c.ts.NoteSecret(resp.AuthURL[i+1:])
	}
	return res.StatusCode, &resp, nil
}

// Start sends the first request and returns the AuthURL the server
// answers with; it fails tb on any other answer.
func (c *WebClient) Start(tb testing.TB) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, resp, err := c.Register(ctx, "", key.NodePublic{})
	if err != nil || resp.AuthURL == "" || resp.MachineAuthorized {
		tb.Fatalf("starting web registration: %v %+v", err, resp)
	}
	return resp.AuthURL
}

// AuthID is the auth ID that ends an AuthURL.
func AuthID(authURL string) string {
	return authURL[strings.LastIndex(authURL, "/")+1:]
}
