package state

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/ipalloc"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// remoteWorld is two servers' States over one store: a writes, b learns
// a's changes only through ApplyRemote, as a cluster member learns them
// from the change log.
type remoteWorld struct {
	t    *testing.T
	st   *store.Store
	a, b *State
	bLog *changeLog
}

func newRemoteWorld(t *testing.T) *remoteWorld {
	t.Helper()
	ctx := t.Context()
	st, err := store.Open(ctx, testStoreOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	open := func() *State {
		alloc := ipalloc.New(netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd7a:115c:a1e0::/48"), ipalloc.Sequential)
		s, err := New(ctx, Options{Store: st, Alloc: alloc})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	w := &remoteWorld{t: t, st: st, a: open(), b: open(), bLog: &changeLog{}}
	w.b.SetSink(w.bLog)
	return w
}

// apply hands b the changes and returns the kinds b emitted.
func (w *remoteWorld) apply(cs ...RemoteChange) []ChangeKind {
	w.t.Helper()
	if err := w.b.ApplyRemote(w.t.Context(), cs); err != nil {
		w.t.Fatalf("ApplyRemote: %v", err)
	}
	var kinds []ChangeKind
	for _, c := range w.bLog.take() {
		kinds = append(kinds, c.Kind)
	}
	return kinds
}

func (w *remoteWorld) storedNode(id ids.NodeID) *store.Node {
	w.t.Helper()
	sn, err := w.st.GetNode(w.t.Context(), id)
	if err != nil {
		w.t.Fatal(err)
	}
	return &sn
}

func (w *remoteWorld) storedUser(id ids.UserID) *store.User {
	w.t.Helper()
	u, err := w.st.GetUser(w.t.Context(), id)
	if err != nil {
		w.t.Fatal(err)
	}
	return &u
}

func (w *remoteWorld) register(name string, user ids.UserID, tags []string, routes ...string) *Node {
	w.t.Helper()
	k := store.PreAuthKey{Reusable: true, Tags: tags}
	if len(tags) == 0 {
		k.UserID = &user
	}
	n, err := w.a.RegisterWithKey(w.t.Context(), RegisterParams{
		Machine:  key.NewMachine().Public(),
		NodeKey:  key.NewNode().Public(),
		Hostinfo: &tailcfg.Hostinfo{Hostname: name, RoutableIPs: pfx(routes...)},
		Key:      k,
	})
	if err != nil {
		w.t.Fatal(err)
	}
	return n
}

// sameAsFresh checks that b holds what a server starting now would load:
// the same users, nodes and policy text, and the same visibility between
// every pair of nodes.
func (w *remoteWorld) sameAsFresh() {
	w.t.Helper()
	alloc := ipalloc.New(netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd7a:115c:a1e0::/48"), ipalloc.Sequential)
	fresh, err := New(w.t.Context(), Options{Store: w.st, Alloc: alloc})
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := fresh.LoadStoredPolicy(w.t.Context(), false); err != nil {
		w.t.Fatal(err)
	}
	got, want := w.b.Nodes(), fresh.Nodes()
	if len(got) != len(want) {
		w.t.Fatalf("b holds %d nodes, the store %d", len(got), len(want))
	}
	for i := range got {
		if g, f := nodeToStore(got[i]), nodeToStore(want[i]); !reflect.DeepEqual(g, f) {
			w.t.Errorf("node %d differs from the store:\n got %+v\nwant %+v", want[i].ID, g, f)
		}
	}
	gu, fu := w.b.Users(), fresh.Users()
	if !reflect.DeepEqual(gu, fu) {
		w.t.Errorf("users differ from the store:\n got %+v\nwant %+v", gu, fu)
	}
	if gt, _ := w.b.PolicyText(); gt != func() string { s, _ := fresh.PolicyText(); return s }() {
		w.t.Errorf("b's policy text %q differs from the stored one", gt)
	}
	gc, fc := w.b.CompiledPolicy(), fresh.CompiledPolicy()
	for _, x := range want {
		for _, y := range want {
			if x.ID == y.ID {
				continue
			}
			if g, f := gc == nil || gc.CanSee(x.ID, y.ID), fc == nil || fc.CanSee(x.ID, y.ID); g != f {
				w.t.Errorf("b says %d sees %d: %v; a fresh load says %v", x.ID, y.ID, g, f)
			}
		}
	}
}

// TestApplyRemoteMatchesFresh applies every kind of remote change to a
// second State and checks, after each, that it holds exactly what a fresh
// load of the store holds, and that its sessions were told with the
// Changes a local change of the same kind gives.
func TestApplyRemoteMatchesFresh(t *testing.T) {
	w := newRemoteWorld(t)
	ctx := t.Context()

	alice, err := w.a.CreateUser(ctx, store.User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	bob, err := w.a.CreateUser(ctx, store.User{Name: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	w.apply(RemoteChange{User: w.storedUser(alice.ID)}, RemoteChange{User: w.storedUser(bob.ID)})
	w.sameAsFresh()

	n1 := w.register("laptop", alice.ID, nil)
	n2 := w.register("router", bob.ID, nil, "10.0.0.0/24")
	n3 := w.register("server", 0, []string{"tag:server"})
	kinds := w.apply(
		RemoteChange{Node: w.storedNode(n1.ID), Registered: true},
		RemoteChange{Node: w.storedNode(n2.ID), Registered: true},
		RemoteChange{Node: w.storedNode(n3.ID), Registered: true},
	)
	if want := []ChangeKind{NodeAdded, NodeAdded, NodeAdded}; !slices.Equal(kinds, want) {
		t.Errorf("registrations: b emitted %v, want %v", kinds, want)
	}
	w.sameAsFresh()
	if _, ok := w.b.NodeByNodeKey(n2.NodeKey); !ok {
		t.Error("b cannot find a remote node by its node key")
	}

	const pol = `{"tagOwners": {"tag:server": ["alice@"]},
		"acls": [{"action": "accept", "src": ["alice@"], "dst": ["bob@:*", "tag:server:22"]}]}`
	if _, err := w.a.StorePolicy(ctx, pol); err != nil {
		t.Fatal(err)
	}
	kinds = w.apply(RemoteChange{Policy: true})
	if !slices.Contains(kinds, PolicyChanged) {
		t.Errorf("stored policy: b emitted %v, want a PolicyChanged", kinds)
	}
	w.sameAsFresh()
	if w.b.CompiledPolicy().CanSee(n2.ID, n3.ID) {
		t.Error("under the remote policy bob's router still sees the tagged server")
	}

	if _, err := w.a.RenameNode(ctx, n1.ID, "alices-laptop"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.a.SetApprovedRoutes(ctx, n2.ID, pfx("10.0.0.0/24")); err != nil {
		t.Fatal(err)
	}
	kinds = w.apply(RemoteChange{Node: w.storedNode(n1.ID)}, RemoteChange{Node: w.storedNode(n2.ID)})
	if kinds[0] != NodeUpdated || kinds[1] != NodeUpdated {
		t.Errorf("edits: b emitted %v, want NodeUpdated first for each", kinds)
	}
	w.sameAsFresh()
	if n, _ := w.b.Node(n1.ID); n.GivenName != "alices-laptop" {
		t.Errorf("b's node %d is named %q after a remote rename", n1.ID, n.GivenName)
	}

	if _, err := w.a.RenameUser(ctx, bob.ID, "carol"); err != nil {
		t.Fatal(err)
	}
	kinds = w.apply(RemoteChange{User: w.storedUser(bob.ID)})
	if !slices.Contains(kinds, UserUpdated) {
		t.Errorf("user rename: b emitted %v, want a UserUpdated", kinds)
	}
	w.sameAsFresh()

	if err := w.a.DeleteNode(ctx, n3.ID); err != nil {
		t.Fatal(err)
	}
	kinds = w.apply(RemoteChange{NodeDeleted: n3.ID})
	if kinds[0] != NodeRemoved {
		t.Errorf("delete: b emitted %v, want NodeRemoved first", kinds)
	}
	w.sameAsFresh()
	// An edit of the node that arrives after its deletion is dropped.
	w.apply(RemoteChange{NodeDeleted: n3.ID})

	dave, err := w.a.CreateUser(ctx, store.User{Name: "dave"})
	if err != nil {
		t.Fatal(err)
	}
	w.apply(RemoteChange{User: w.storedUser(dave.ID)})
	if err := w.a.DeleteUser(ctx, dave.ID); err != nil {
		t.Fatal(err)
	}
	w.apply(RemoteChange{UserDeleted: dave.ID})
	w.sameAsFresh()

	// b registering next must not take an address a's nodes hold: the
	// remote nodes' addresses were taken from b's allocator.
	k := store.PreAuthKey{Reusable: true, UserID: &alice.ID}
	n4, err := w.b.RegisterWithKey(ctx, RegisterParams{Machine: key.NewMachine().Public(), NodeKey: key.NewNode().Public(),
		Hostinfo: &tailcfg.Hostinfo{Hostname: "phone"}, Key: k})
	if err != nil {
		t.Fatalf("registering on b after remote nodes: %v", err)
	}
	for _, n := range []*Node{n1, n2} {
		if n4.IPv4 == n.IPv4 || n4.IPv6 == n.IPv6 {
			t.Errorf("b gave its new node %v/%v, held by remote node %d", n4.IPv4, n4.IPv6, n.ID)
		}
	}
}

// TestRemoteEditAfterLocalDelete: another server's edit of a node that
// arrives after this server deleted the node does not bring it back (the
// deletion is this server's own change-log record, never read back).
func TestRemoteEditAfterLocalDelete(t *testing.T) {
	w := newRemoteWorld(t)
	ctx := t.Context()
	u, err := w.a.CreateUser(ctx, store.User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	n := w.register("laptop", u.ID, nil)
	w.apply(RemoteChange{User: w.storedUser(u.ID)}, RemoteChange{Node: w.storedNode(n.ID), Registered: true})
	// a renames it (version 2); before b hears of that, b deletes it.
	if _, err := w.a.RenameNode(ctx, n.ID, "renamed"); err != nil {
		t.Fatal(err)
	}
	edited := w.storedNode(n.ID)
	if err := w.b.DeleteNode(ctx, n.ID); err != nil {
		t.Fatal(err)
	}
	w.apply(RemoteChange{Node: edited})
	if _, ok := w.b.Node(n.ID); ok {
		t.Fatal("a remote edit arriving after the local deletion brought the node back")
	}
	// A new node (version 1) is still added.
	m := w.register("phone", u.ID, nil)
	w.apply(RemoteChange{Node: w.storedNode(m.ID), Registered: true})
	if _, ok := w.b.Node(m.ID); !ok {
		t.Fatal("a new remote node was not added")
	}
}
