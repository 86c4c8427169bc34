package servertest_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/internal/tstest"
)

// TestTwoNodesSeeEachOther is the harness in ten lines: a server, a user,
// a key, two simulated nodes, and a wait until each lists the other
// online in its netmap.
func TestTwoNodesSeeEachOther(t *testing.T) {
	ts := servertest.Start(t, servertest.Options{})
	authKey := ts.CreatePreAuthKey(t, ts.CreateUser(t, "alice"), true, time.Time{})
	fleet := ts.Fleet(t, authKey, 2, "node")
	for i, other := range []int{1, 0} {
		tstest.WaitFor(t, 10*time.Second, fleet.Hostname(i)+" to see its peer", func() error {
			peers, err := fleet.Peers(context.Background(), i)
			if err != nil || len(peers) != 1 || peers[0].Hostname != fleet.Hostname(other) || !peers[0].Online {
				return fmt.Errorf("peers %+v, %v", peers, err)
			}
			return nil
		})
	}
}

// TestHarness checks what the harness sets up besides the nodes: the
// options reach the server, a registered node is listed under its ID, an
// API key works on the main listener, and the logs are kept.
func TestHarness(t *testing.T) {
	ts := servertest.Start(t, servertest.Options{ExtraYAML: "policy:\n  mode: database\n", Version: "v9.9.9"})
	if ts.Config.Policy.Mode != "database" {
		t.Errorf("policy mode %q: ExtraYAML not applied", ts.Config.Policy.Mode)
	}
	user := ts.CreateUser(t, "bob")
	n := ts.RegisterNode(t, ts.CreatePreAuthKey(t, user, false, time.Time{}), "solo")
	if out := ts.MustAPI(t, "GET", "/api/v1/node/"+n.ID, ""); !strings.Contains(string(out), `"solo"`) {
		t.Errorf("node %s: %s", n.ID, out)
	}
	req, _ := http.NewRequest("GET", ts.URL+"/api/v1/user", nil)
	req.Header.Set("Authorization", "Bearer "+ts.CreateAPIKey(t, time.Now().Add(time.Hour)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("API key on the main listener: %d", resp.StatusCode)
	}
	http.DefaultClient.CloseIdleConnections()
	resp2, err := http.Get(ts.URL + "/version")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp2.Body)
	resp2.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	if !strings.Contains(string(body), "v9.9.9") {
		t.Errorf("/version: %s, want the Version option", body)
	}
	if ts.Logs() == "" {
		t.Error("no log lines kept")
	}
	if err := ts.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
}
