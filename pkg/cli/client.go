package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// errNotRunning is printed when nothing answers on the unix socket (or on
// any of the sockets tried).
type errNotRunning struct{ sockets []string }

func (e errNotRunning) Error() string {
	which := "unix socket " + e.sockets[0]
	if len(e.sockets) > 1 {
		which = "unix sockets " + strings.Join(e.sockets, " and ")
	}
	return fmt.Sprintf("headscale is not running: nothing answers on %s (start it with `headscale serve` or `systemctl start headscale`)", which)
}

// client calls the v1 API, over the server's unix socket (local trust) or
// over HTTP(S) to a remote server with an API key.
type client struct {
	http    *http.Client
	sockets []string // empty for a remote server
	base    string   // URL prefix, e.g. https://hs.example.com
	apiKey  string
}

// newClient talks to the first of sockets that answers (config.Config's
// ClientSockets: one socket, or Headscale's then ./data's).
func newClient(sockets []string, timeout time.Duration) *client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			var first error
			for _, s := range sockets {
				c, err := d.DialContext(ctx, "unix", s)
				if err == nil {
					return c, nil
				}
				if first == nil {
					first = err
				}
			}
			return nil, first
		},
	}
	return &client{http: &http.Client{Transport: tr, Timeout: timeout}, sockets: sockets, base: "http://headscale"}
}

// newRemoteClient talks to address ("https://host", "http://host:port" or
// "host:port", which means https) with an API key.
func newRemoteClient(address, apiKey string, timeout time.Duration, insecure bool) (*client, error) {
	base := strings.TrimSuffix(address, "/")
	if !strings.Contains(base, "://") {
		base = "https://" + base
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("cli.address %q: want https://host[:port] or host:port", address)
	}
	if apiKey == "" {
		return nil, errors.New("cli.address is set but there is no API key: set HEADSCALE_CLI_API_KEY (create one with `headscale apikeys create` on the server)")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if insecure {
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	}
	return &client{http: &http.Client{Transport: tr, Timeout: timeout}, base: base, apiKey: apiKey}, nil
}

// do sends a request and decodes the JSON answer into out. A problem+json
// answer becomes an error carrying its detail.
func (c *client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.apiKey)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) && ne.Op == "dial" && len(c.sockets) > 0 {
			return errNotRunning{c.sockets}
		}
		if len(c.sockets) == 0 {
			return fmt.Errorf("calling headscale at %s: %w", c.base, err)
		}
		return fmt.Errorf("calling headscale: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		var p struct {
			Detail string `json:"detail"`
		}
		if json.Unmarshal(data, &p) == nil && p.Detail != "" {
			return errors.New(p.Detail)
		}
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(data)))
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decoding answer: %w", err)
		}
	}
	return nil
}

// httpGet fetches a plain HTTP URL and returns its body; any status but
// 200 is an error.
func httpGet(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(b), nil
}
