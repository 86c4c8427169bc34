package state

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/hsctl/headscale/pkg/ids"
)

// TestRoutesByID drives the routes verbs of Headscale 0.23–0.25 on the
// state: listing numbers each (node, prefix) once and keeps the numbers,
// enable and disable approve and unapprove (an exit route as the pair),
// primaries show, delete forgets the ID (a still-announced prefix comes
// back with a new one), and an unknown ID is ErrRouteNotFound.
func TestRoutesByID(t *testing.T) {
	ctx := context.Background()
	w := newRoutesWorld(t, "alice")
	r := w.register("router", "alice", nil, "10.0.0.0/24", "0.0.0.0/0", "::/0")
	other := w.register("other", "alice", nil)
	w.approve(other.ID, "192.168.0.0/16") // approved but not announced
	w.connect(r.ID)

	list := func(only ids.NodeID) map[string]Route {
		t.Helper()
		rs, err := w.s.Routes(ctx, only)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]Route{}
		for _, x := range rs {
			out[fmt.Sprintf("%s %s", x.Node.GivenName, x.Prefix)] = x
		}
		return out
	}
	state := func(x Route) string {
		return fmt.Sprintf("adv=%v en=%v prim=%v", x.Advertised, x.Enabled, x.Primary)
	}
	first := list(0)
	if len(first) != 4 {
		t.Fatalf("routes %v", first)
	}
	for k, want := range map[string]string{
		"router 10.0.0.0/24":   "adv=true en=false prim=false",
		"router 0.0.0.0/0":     "adv=true en=false prim=false",
		"router ::/0":          "adv=true en=false prim=false",
		"other 192.168.0.0/16": "adv=false en=true prim=false",
	} {
		if got := state(first[k]); got != want {
			t.Errorf("%s: %s, want %s", k, got, want)
		}
	}
	var seen []ids.RouteID
	for _, x := range first {
		if x.ID == 0 || slices.Contains(seen, x.ID) {
			t.Errorf("route IDs not unique: %v", first)
		}
		seen = append(seen, x.ID)
	}
	if again := list(r.ID); len(again) != 3 || again["router 10.0.0.0/24"].ID != first["router 10.0.0.0/24"].ID {
		t.Errorf("listing one node again: %v", again)
	}

	subnet := first["router 10.0.0.0/24"].ID
	if _, err := w.s.EnableRoute(ctx, subnet); err != nil {
		t.Fatal(err)
	}
	if got := state(list(0)["router 10.0.0.0/24"]); got != "adv=true en=true prim=true" {
		t.Errorf("enabled subnet route: %s", got)
	}
	if _, err := w.s.EnableRoute(ctx, first["router 0.0.0.0/0"].ID); err != nil {
		t.Fatal(err)
	}
	w.wantApproved(r.ID, "0.0.0.0/0", "10.0.0.0/24", "::/0")
	if _, err := w.s.DisableRoute(ctx, first["router ::/0"].ID); err != nil {
		t.Fatal(err)
	}
	w.wantApproved(r.ID, "10.0.0.0/24")

	if err := w.s.DeleteRoute(ctx, subnet); err != nil {
		t.Fatal(err)
	}
	w.wantApproved(r.ID)
	after := list(0)
	if x := after["router 10.0.0.0/24"]; x.ID == subnet || x.ID == 0 || x.Enabled {
		t.Errorf("deleted, still announced: %+v (want a new ID, not enabled)", x)
	}
	if _, err := w.s.EnableRoute(ctx, subnet); !errors.Is(err, ErrRouteNotFound) {
		t.Errorf("enable a deleted route ID: %v", err)
	}
	if _, err := w.s.DisableRoute(ctx, 999); !errors.Is(err, ErrRouteNotFound) {
		t.Errorf("disable an unknown route ID: %v", err)
	}
	if _, err := w.s.Routes(ctx, 999); !errors.Is(err, ErrNodeNotFound) {
		t.Errorf("routes of an unknown node: %v", err)
	}
}
