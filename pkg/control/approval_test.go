package control_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/servertest"
	"tailscale.com/control/tsp"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// mapView follows a streaming map session: the self node and the peer
// set as the deltas leave them.
type mapView struct {
	frames chan *tailcfg.MapResponse
	self   *tailcfg.Node
	peers  map[tailcfg.NodeID]bool
}

// watchMap opens a streaming map session for a registered node.
func watchMap(t *testing.T, c *tsp.Client, nk key.NodePrivate, hostname string) *mapView {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sess, err := c.Map(ctx, tsp.MapOpts{NodeKey: nk, Stream: true, Hostinfo: &tailcfg.Hostinfo{Hostname: hostname}})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	v := &mapView{frames: make(chan *tailcfg.MapResponse, 64), peers: map[tailcfg.NodeID]bool{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(v.frames)
		for {
			m, err := sess.Next()
			if err != nil {
				return
			}
			v.frames <- m
		}
	}()
	t.Cleanup(func() {
		cancel()
		sess.Close()
		for range v.frames {
		}
		<-done
	})
	return v
}

// waitFor applies frames until cond holds, failing t after a deadline.
func (v *mapView) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for !cond() {
		select {
		case m, ok := <-v.frames:
			if !ok {
				t.Fatalf("map session ended waiting for %s", what)
			}
			if m.Node != nil {
				v.self = m.Node
			}
			if m.Peers != nil {
				clear(v.peers)
				for _, p := range m.Peers {
					v.peers[p.ID] = true
				}
			}
			for _, p := range m.PeersChanged {
				v.peers[p.ID] = true
			}
			for _, id := range m.PeersRemoved {
				delete(v.peers, id)
			}
		case <-deadline:
			t.Fatalf("waiting for %s: self %v, peers %v", what, v.self, v.peers)
		}
	}
}

// TestDeviceApprovalOverNoise: with node.require_approval, a node
// registered with a plain pre-auth key is told MachineAuthorized false in
// its RegisterResponse and in its self node, and has no peers and is
// nobody's peer, until POST /api/v1/node/{id}/approve; then both sides
// get each other, and a new registration of the machine is authorized.
func TestDeviceApprovalOverNoise(t *testing.T) {
	ts := servertest.Start(t, servertest.Options{ExtraYAML: "node:\n  require_approval: true\n"})
	authKey := ts.CreatePreAuthKey(t, ts.CreateUser(t, "alice"), true, time.Now().Add(time.Hour))
	ctx := context.Background()

	type client struct {
		c    *tsp.Client
		nk   key.NodePrivate
		id   string
		view *mapView
	}
	register := func(hostname string, nk key.NodePrivate, c *tsp.Client) (*client, *tailcfg.RegisterResponse) {
		t.Helper()
		if c == nil {
			var err error
			if c, err = tsp.NewClient(tsp.ClientOpts{ServerURL: ts.URL, MachineKey: key.NewMachine()}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		resp, err := c.Register(rctx, tsp.RegisterOpts{NodeKey: nk, AuthKey: authKey, Hostinfo: &tailcfg.Hostinfo{Hostname: hostname}})
		if err != nil || resp.Error != "" {
			t.Fatalf("registering %s: %v %+v", hostname, err, resp)
		}
		return &client{c: c, nk: nk}, resp
	}
	a, respA := register("a", key.NewNode(), nil)
	b, respB := register("b", key.NewNode(), nil)
	if respA.MachineAuthorized || respB.MachineAuthorized {
		t.Fatalf("RegisterResponse authorizes a node waiting for approval: %+v %+v", respA, respB)
	}
	a.view = watchMap(t, a.c, a.nk, "a")
	b.view = watchMap(t, b.c, b.nk, "b")
	for _, c := range []*client{a, b} {
		c.view.waitFor(t, "the self node", func() bool { return c.view.self != nil })
		if c.view.self.MachineAuthorized || len(c.view.peers) != 0 {
			t.Fatalf("waiting node %s: MachineAuthorized %v, peers %v", c.view.self.Name, c.view.self.MachineAuthorized, c.view.peers)
		}
		c.id = string(c.view.self.StableID)
	}

	n := apiNode(t, ts, "POST", "/api/v1/node/"+a.id+"/approve", "", http.StatusOK)
	if !n.Approved || n.ID != a.id {
		t.Fatalf("approve answered %+v", n)
	}
	a.view.waitFor(t, "a authorized", func() bool { return a.view.self.MachineAuthorized })
	if len(a.view.peers) != 0 {
		t.Errorf("a sees the waiting node b: %v", a.view.peers)
	}
	if n := apiNode(t, ts, "GET", "/api/v1/node/"+b.id, "", http.StatusOK); n.Approved {
		t.Error("b is approved with a")
	}

	apiNode(t, ts, "POST", "/api/v1/node/"+b.id+"/approve", "", http.StatusOK)
	aID, bID := a.view.self.ID, b.view.self.ID
	b.view.waitFor(t, "b authorized with peer a", func() bool { return b.view.self.MachineAuthorized && b.view.peers[aID] })
	a.view.waitFor(t, "a gets peer b", func() bool { return a.view.peers[bID] })
	if len(b.view.peers) != 1 {
		t.Errorf("b's peers %v, want a only", b.view.peers)
	}

	// The machine registers again (same node key): authorized now.
	if _, resp := register("b", b.nk, b.c); !resp.MachineAuthorized {
		t.Errorf("re-registration of the approved node: %+v", resp)
	}
	apiNode(t, ts, "POST", "/api/v1/node/9999/approve", "", http.StatusNotFound)
	apiNode(t, ts, "POST", "/api/v1/node/x/approve", "", http.StatusBadRequest)
}
