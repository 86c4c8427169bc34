package loadgen

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// apiCheck compares the nodes the server's REST API lists (Headscale's
// GET /api/v1/node) with the simulated nodes: every one must be listed,
// once, and online. Skipped without an API key.
func (r *runner) apiCheck(ctx context.Context, res *PhaseResult) {
	if r.cfg.APIKey == "" {
		return
	}
	listed, ours, online, err := r.apiNodes(ctx)
	if err != nil {
		res.check("the server's API lists every node", false, err.Error())
		return
	}
	res.Metrics["api_nodes_listed"] = float64(listed)
	res.Metrics["api_nodes_ours"] = float64(ours)
	res.Metrics["api_nodes_ours_online"] = float64(online)
	n := r.registeredCount()
	res.check("the server's API lists every node", ours == n,
		fmt.Sprintf("%d of this run's %d registered nodes listed (%d nodes listed in all)", ours, n, listed))
	// Online is updated by the server as sessions come and go; give it a
	// moment before calling a miss.
	for deadline := time.Now().Add(10 * time.Second); online != n && time.Now().Before(deadline) && ctx.Err() == nil; {
		time.Sleep(500 * time.Millisecond)
		if _, _, o, err := r.apiNodes(ctx); err == nil {
			online = o
		}
	}
	res.check("the server's API shows every node online", online == n, fmt.Sprintf("%d of %d online", online, n))
}

func (r *runner) apiNodes(ctx context.Context) (listed, ours, online int, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimRight(r.cfg.APIURL, "/")+"/api/v1/node", nil)
	if err != nil {
		return 0, 0, 0, err
	}
	req.Header.Set("Authorization", "Bearer "+r.cfg.APIKey)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("listing nodes: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		return 0, 0, 0, fmt.Errorf("listing nodes: http %d: %s", res.StatusCode, strings.TrimSpace(string(b)))
	}
	var out struct {
		Nodes []struct {
			NodeKey string `json:"nodeKey"`
			Online  bool   `json:"online"`
		} `json:"nodes"`
	}
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		return 0, 0, 0, fmt.Errorf("listing nodes: %w", err)
	}
	mine := make(map[string]bool, len(r.nodes))
	for _, n := range r.nodes {
		if n.registered.Load() {
			mine[n.nodePub.String()] = true
		}
	}
	seen := make(map[string]bool, len(mine))
	for _, n := range out.Nodes {
		if mine[n.NodeKey] && !seen[n.NodeKey] {
			seen[n.NodeKey] = true
			ours++
			if n.Online {
				online++
			}
		}
	}
	return len(out.Nodes), ours, online, nil
}
