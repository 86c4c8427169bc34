package store

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/hsctl/headscale/pkg/ids"
)

// TestRouteIDs: pairs get IDs once (adding again keeps them), IDs survive
// a reopen, deleting forgets a pair (it gets a new ID when added again),
// and deleting the node removes its rows.
func TestRouteIDs(t *testing.T) { forEachEngine(t, testRouteIDs) }

func testRouteIDs(t *testing.T, e engine) {
	ctx := t.Context()
	s, err := Open(ctx, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	u, err := s.CreateUser(ctx, User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.RegisterNode(ctx, testNode("a", &u.ID), 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.RegisterNode(ctx, testNode("b", &u.ID), 0)
	if err != nil {
		t.Fatal(err)
	}
	p := netip.MustParsePrefix
	subnet, exit4 := p("10.0.0.0/24"), p("0.0.0.0/0")
	if err := s.AddRouteIDs(ctx, []RouteKey{{a.ID, subnet}, {a.ID, exit4}, {b.ID, subnet}}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddRouteIDs(ctx, []RouteKey{{b.ID, subnet}, {a.ID, subnet}}); err != nil {
		t.Fatalf("adding known pairs again: %v", err)
	}
	if err := s.AddRouteIDs(ctx, []RouteKey{{ids.NodeID(999), subnet}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("pair of a missing node: %v, want ErrNotFound", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = e.open(t)
	got, err := s.ListRouteIDs(ctx)
	if err != nil || len(got) != 3 {
		t.Fatalf("after reopen: %+v %v", got, err)
	}
	want := []RouteKey{{a.ID, subnet}, {a.ID, exit4}, {b.ID, subnet}}
	for i, r := range got {
		if r.ID != ids.RouteID(i+1) || r.NodeID != want[i].NodeID || r.Prefix != want[i].Prefix || r.CreatedAt.IsZero() {
			t.Errorf("route %d = %+v, want ID %d %+v", i, r, i+1, want[i])
		}
	}
	if r, err := s.GetRouteID(ctx, 2); err != nil || r.Prefix != exit4 || r.NodeID != a.ID {
		t.Errorf("GetRouteID(2) = %+v %v", r, err)
	}
	if _, err := s.GetRouteID(ctx, 99); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetRouteID(99) = %v, want ErrNotFound", err)
	}

	if err := s.DeleteRouteIDs(ctx, []RouteKey{{a.ID, subnet}, {a.ID, p("192.168.0.0/16")}}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddRouteIDs(ctx, []RouteKey{{a.ID, subnet}}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteNode(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	got, _ = s.ListRouteIDs(ctx)
	// PostgreSQL's sequence also used up an ID for the refused pair of the
	// missing node; SQLite's AUTOINCREMENT did not.
	wantNew := ids.RouteID(4)
	if e.name == "postgres" {
		wantNew = 5
	}
	if len(got) != 2 || got[0].ID != 2 || got[1].ID != wantNew || got[1].Prefix != subnet {
		t.Errorf("after delete, re-add and node removal: %+v (want IDs 2 and a new %d; IDs are never reused)", got, wantNew)
	}
}
