package loadgen

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"time"

	"tailscale.com/control/ts2021"
	"tailscale.com/control/tsp"
	"tailscale.com/health"
	"tailscale.com/net/tsdial"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
)

// ServerKey fetches a control server's Noise public key (what a client
// learns from /key before its handshake).
func ServerKey(ctx context.Context, url string) (key.MachinePublic, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	k, err := tsp.DiscoverServerKey(ctx, url)
	if err != nil {
		return key.MachinePublic{}, fmt.Errorf("fetching the server's Noise key from %s: %w", url, err)
	}
	return k, nil
}

// DialNoise returns a Noise (ts2021) client to the control server at url
// with machine key mk; it connects on first use.
func DialNoise(url string, mk key.MachinePrivate, serverKey key.MachinePublic) (*ts2021.Client, error) {
	return ts2021.NewClient(ts2021.ClientOpts{
		ServerURL:    url,
		PrivKey:      mk,
		ServerPubKey: serverKey,
		Dialer:       tsdial.NewFromFuncForDebug(logger.Discard, (&net.Dialer{}).DialContext),
		Logf:         logger.Discard,
		// The dialer asks a health tracker whether it dialed recently
		// (and prints a stack trace to stderr under CI when there is
		// none); each client keeps its own, as a tailscaled does.
		HealthTracker: new(health.Tracker),
	})
}

// Registration names the keys of a node RegisterOne registered (or tried
// to).
type Registration struct {
	Machine key.MachinePublic
	Node    key.NodePublic
}

// RegisterOne registers a fresh node (new machine and node keys) with a
// pre-auth key on its own Noise connection, then closes the connection:
// one registration and nothing else. A nil error means the server answered
// 200 with the node authorized, so (for a server that acknowledges only
// what is durable) the node is stored.
func RegisterOne(ctx context.Context, url string, serverKey key.MachinePublic, authKey, hostname string) (Registration, error) {
	mk, nk := key.NewMachine(), key.NewNode()
	reg := Registration{Machine: mk.Public(), Node: nk.Public()}
	nc, err := DialNoise(url, mk, serverKey)
	if err != nil {
		return reg, err
	}
	defer nc.Close()
	req := tailcfg.RegisterRequest{
		Version: tailcfg.CurrentCapabilityVersion,
		NodeKey: reg.Node,
		Hostinfo: &tailcfg.Hostinfo{
			Hostname: hostname, OS: "linux", OSVersion: "loadgen", IPNVersion: "1.102.5-loadgen", GoArch: runtime.GOARCH,
		},
		Auth: &tailcfg.RegisterResponseAuth{AuthKey: authKey},
	}
	res, err := nc.Post(ctx, "/machine/register", reg.Node, req)
	if err != nil {
		return reg, fmt.Errorf("register: %w", err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return reg, fmt.Errorf("register: reading the answer: %w", err)
	}
	if res.StatusCode != http.StatusOK {
		return reg, fmt.Errorf("register: http %d: %.200s", res.StatusCode, strings.TrimSpace(string(b)))
	}
	var resp tailcfg.RegisterResponse
	if err := json.Unmarshal(b, &resp); err != nil {
		return reg, fmt.Errorf("register: decoding response: %w", err)
	}
	if resp.Error != "" {
		return reg, fmt.Errorf("register: %s", resp.Error)
	}
	if !resp.MachineAuthorized {
		return reg, fmt.Errorf("register: node not authorized (auth URL %q)", resp.AuthURL)
	}
	return reg, nil
}
