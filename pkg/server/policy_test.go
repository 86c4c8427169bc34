package server_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/api"
	"github.com/hsctl/headscale/pkg/server"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/control/tsp"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// registerWithTags registers a new machine advertising tags, as
// `tailscale up --advertise-tags` does, and returns the refusal text.
func registerWithTags(t *testing.T, url, authKey, host string, tags []string) string {
	t.Helper()
	c := newClient(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Register(ctx, tsp.RegisterOpts{NodeKey: key.NewNode(), AuthKey: authKey, Hostinfo: &tailcfg.Hostinfo{Hostname: host, RequestTags: tags}})
	if err != nil {
		return err.Error()
	}
	if !resp.MachineAuthorized {
		return "not authorized"
	}
	return ""
}

// TestTagOwners: advertised tags need tagOwners; admin tags must be
// defined in the policy; without a policy no tag can be advertised.
func TestTagOwners(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.hujson")
	os.WriteFile(pol, []byte(`{
  "groups": {"group:ops": ["ops@"]},
  "tagOwners": {"tag:web": ["group:ops"], "tag:db": ["tag:web"]},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}`), 0o600)
	ts := startServerWith(t, dir, "policy:\n  mode: file\n  path: "+pol+"\n", nil)
	ctx := context.Background()
	ops, err := ts.State().CreateUser(ctx, store.User{Name: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	dev, err := ts.State().CreateUser(ctx, store.User{Name: "dev"})
	if err != nil {
		t.Fatal(err)
	}
	opsKey := ts.makeKey(t, ops.ID, true, time.Now().Add(time.Hour))
	devKey := ts.makeKey(t, dev.ID, true, time.Now().Add(time.Hour))

	if msg := registerWithTags(t, ts.URL, opsKey, "web1", []string{"tag:web"}); msg != "" {
		t.Fatalf("ops advertising tag:web: %s", msg)
	}
	n, ok := ts.State().NodeByMachineKey(findMachine(t, ts, "web1"))
	if !ok || !sameTags(n.Tags, "tag:web") || n.UserID != 0 {
		t.Fatalf("web1 = %+v", n)
	}
	for _, tc := range []struct {
		key  string
		tags []string
	}{
		{devKey, []string{"tag:web"}},   // dev is not in group:ops
		{devKey, []string{"tag:db"}},    // owned through tag:web, which dev cannot apply
		{opsKey, []string{"tag:other"}}, // not in tagOwners at all
	} {
		if msg := registerWithTags(t, ts.URL, tc.key, "x", tc.tags); !strings.Contains(msg, "invalid or not permitted") {
			t.Errorf("advertising %v: %q, want a refusal", tc.tags, msg)
		}
	}

	// Admin tagging: any tag defined in tagOwners, nothing else.
	out := doAPI(t, ts.APIHandler(), "POST", fmt.Sprintf("/api/v1/node/%d/tags", n.ID), `{"tags": ["tag:db"]}`)
	if !strings.Contains(out, `"tag:db"`) {
		t.Fatalf("tagging with a defined tag: %s", out)
	}
	out = doAPI(t, ts.APIHandler(), "POST", fmt.Sprintf("/api/v1/node/%d/tags", n.ID), `{"tags": ["tag:nope"]}`)
	if !strings.Contains(out, "not defined in the policy's tagOwners") || !strings.Contains(out, `"status":400`) {
		t.Fatalf("tagging with an undefined tag: %s", out)
	}
}

func TestNoPolicyRefusesAdvertisedTags(t *testing.T) {
	ts := startServer(t)
	if msg := registerWithTags(t, ts.URL, ts.key(t, false, time.Now().Add(time.Hour)), "x", []string{"tag:web"}); !strings.Contains(msg, "invalid or not permitted") {
		t.Fatalf("advertised tag without a policy: %q", msg)
	}
}

func findMachine(t *testing.T, ts *testServer, host string) key.MachinePublic {
	t.Helper()
	for _, n := range ts.State().Nodes() {
		if n.Hostname == host {
			return n.MachineKey
		}
	}
	t.Fatalf("no node %s", host)
	return key.MachinePublic{}
}

func sameTags(have []string, want ...string) bool {
	return strings.Join(have, ",") == strings.Join(want, ",")
}

// TestPolicyAPIError: a rejected policy is the client's mistake (400); a
// database fault while storing one stays a server fault (500).
func TestPolicyAPIError(t *testing.T) {
	for _, tc := range []struct {
		name       string
		err        error
		wantStatus int // 0: not an *api.Error, so the API answers 500
	}{
		{"parse error", func() error { _, err := state.ParsePolicy("{", ""); return err }(), 400},
		{"compile error", fmt.Errorf("%w: tests failed", state.ErrPolicyRejected), 400},
		{"database fault", errors.New("storing the policy: disk I/O error"), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ae *api.Error
			got := server.PolicyAPIError(tc.err)
			switch {
			case tc.wantStatus == 0 && errors.As(got, &ae):
				t.Errorf("policyAPIError(%v) = status %d, want a server fault", tc.err, ae.Status)
			case tc.wantStatus != 0 && (!errors.As(got, &ae) || ae.Status != tc.wantStatus):
				t.Errorf("policyAPIError(%v) = %v, want status %d", tc.err, got, tc.wantStatus)
			}
		})
	}
}
