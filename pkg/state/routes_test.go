package state

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/policy"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// changeLog records every change the state emits.
type changeLog struct {
	mu      sync.Mutex
	changes []Change
}

func (l *changeLog) Apply(c Change) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.changes = append(l.changes, c)
}

// take returns and forgets the changes recorded so far.
func (l *changeLog) take() []Change {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.changes
	l.changes = nil
	return out
}

// updatedSelf lists, in order, the nodes that got a NodeUpdated carrying a
// new self node.
func updatedSelf(cs []Change) []ids.NodeID {
	var out []ids.NodeID
	for _, c := range cs {
		if c.Kind == NodeUpdated && c.Self {
			out = append(out, c.Node.ID)
		}
	}
	return out
}

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

type routesWorld struct {
	t     *testing.T
	s     *State
	log   *changeLog
	users map[string]ids.UserID
}

func newRoutesWorld(t *testing.T, users ...string) *routesWorld {
	t.Helper()
	w := &routesWorld{t: t, s: newTestState(t), log: &changeLog{}, users: map[string]ids.UserID{}}
	w.s.SetSink(w.log)
	for _, name := range users {
		u, err := w.s.CreateUser(context.Background(), store.User{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		w.users[name] = u.ID
	}
	return w
}

// register adds a node owned by user (or tagged, when tags are given)
// advertising routes.
func (w *routesWorld) register(name, user string, tags []string, routes ...string) *Node {
	w.t.Helper()
	k := store.PreAuthKey{Reusable: true, Tags: tags}
	if len(tags) == 0 {
		uid := w.users[user]
		k.UserID = &uid
	}
	n, err := w.s.RegisterWithKey(context.Background(), RegisterParams{
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

func (w *routesWorld) node(id ids.NodeID) *Node {
	w.t.Helper()
	n, ok := w.s.Node(id)
	if !ok {
		w.t.Fatalf("node %d not found", id)
	}
	return n
}

func (w *routesWorld) connect(id ids.NodeID) {
	w.t.Helper()
	if err := w.s.Connect(id, func(Snapshot) {}); err != nil {
		w.t.Fatal(err)
	}
}

func (w *routesWorld) approve(id ids.NodeID, routes ...string) {
	w.t.Helper()
	if _, err := w.s.SetApprovedRoutes(context.Background(), id, pfx(routes...)); err != nil {
		w.t.Fatal(err)
	}
}

func (w *routesWorld) advertise(id ids.NodeID, routes ...string) {
	w.t.Helper()
	n := w.node(id)
	if err := w.s.ApplyMapUpdate(id, MapUpdate{Hostinfo: &tailcfg.Hostinfo{Hostname: n.Hostname, RoutableIPs: pfx(routes...)}}); err != nil {
		w.t.Fatal(err)
	}
}

func (w *routesWorld) setPolicy(src string) {
	w.t.Helper()
	p, err := policy.Parse([]byte(src))
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := w.s.SetPolicy(p, true); err != nil {
		w.t.Fatal(err)
	}
	if err := w.s.AutoApproveAll(context.Background()); err != nil {
		w.t.Fatal(err)
	}
}

// wantPrimary checks who is primary for prefix (0: nobody) both in the
// route table and in the nodes' snapshots.
func (w *routesWorld) wantPrimary(prefix string, want ids.NodeID) {
	w.t.Helper()
	p := netip.MustParsePrefix(prefix)
	got := w.s.PrimaryRoutes()[p]
	if got != want {
		w.t.Fatalf("primary for %s = %d, want %d", p, got, want)
	}
	for _, n := range w.s.Nodes() {
		if has := slices.Contains(n.PrimaryRoutes, p); has != (n.ID == want) {
			w.t.Fatalf("node %d PrimaryRoutes %v; primary for %s should be %d", n.ID, n.PrimaryRoutes, p, want)
		}
	}
}

// wantApproved checks a node's approved routes in memory and in the store.
func (w *routesWorld) wantApproved(id ids.NodeID, routes ...string) {
	w.t.Helper()
	want := pfx(routes...)
	if got := w.node(id).ApprovedRoutes; !slices.Equal(got, want) {
		w.t.Fatalf("node %d approved routes %v, want %v", id, got, want)
	}
	sn, err := w.s.st.GetNode(context.Background(), id)
	if err != nil {
		w.t.Fatal(err)
	}
	var stored []string
	for _, r := range want {
		stored = append(stored, r.String())
	}
	if fmt.Sprint(sn.ApprovedRoutes) != fmt.Sprint(stored) {
		w.t.Fatalf("node %d stored approved routes %v, want %v", id, sn.ApprovedRoutes, stored)
	}
}

func TestServedRoutes(t *testing.T) {
	n := &Node{
		Hostinfo:       &tailcfg.Hostinfo{RoutableIPs: pfx("10.1.0.0/24", "10.2.0.5/24", "0.0.0.0/0", "::/0", "10.3.0.0/16")},
		ApprovedRoutes: pfx("10.2.0.0/24", "10.3.0.0/16", "0.0.0.0/0", "::/0", "10.9.0.0/16"),
	}
	if got, want := n.AnnouncedRoutes(), pfx("0.0.0.0/0", "10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/16", "::/0"); !slices.Equal(got, want) {
		t.Errorf("announced %v, want %v", got, want)
	}
	if got, want := n.SubnetRoutes(), pfx("10.2.0.0/24", "10.3.0.0/16"); !slices.Equal(got, want) {
		t.Errorf("subnet routes %v, want %v (advertised and approved, exit routes apart)", got, want)
	}
	if got, want := n.ExitRoutes(), pfx("0.0.0.0/0", "::/0"); !slices.Equal(got, want) {
		t.Errorf("exit routes %v, want %v", got, want)
	}
	// Approved but no longer advertised: not served.
	n.Hostinfo = &tailcfg.Hostinfo{RoutableIPs: pfx("10.2.0.0/24")}
	if got := n.ServedRoutes(); !slices.Equal(got, pfx("10.2.0.0/24")) {
		t.Errorf("served %v after the node stopped advertising", got)
	}
	if got, want := NormalizeRoutes(pfx("::/0", "10.0.0.7/8", "10.0.0.0/8")), pfx("0.0.0.0/0", "10.0.0.0/8", "::/0"); !slices.Equal(got, want) {
		t.Errorf("NormalizeRoutes = %v, want %v (one exit route approves the pair)", got, want)
	}
}

// TestPrimaryRouteStickyAndFailover follows one prefix served by three
// routers through connects, disconnects, withdrawn advertisement, revoked
// approval and deletion, checking the primary and that both the old and
// the new primary are announced with a new self node.
func TestPrimaryRouteStickyAndFailover(t *testing.T) {
	w := newRoutesWorld(t, "alice")
	const route = "10.33.0.0/24"
	r1 := w.register("r1", "alice", nil, route).ID
	r2 := w.register("r2", "alice", nil, route).ID
	r3 := w.register("r3", "alice", nil, route).ID
	for _, id := range []ids.NodeID{r1, r2, r3} {
		w.approve(id, route)
	}
	w.wantPrimary(route, 0) // nobody online
	w.log.take()

	w.connect(r2)
	w.wantPrimary(route, r2)
	if got := updatedSelf(w.log.take()); !slices.Equal(got, []ids.NodeID{r2}) {
		t.Fatalf("r2 coming online: updates for %v, want [r2]", got)
	}
	w.connect(r1)
	w.connect(r3)
	w.wantPrimary(route, r2) // sticky: a lower ID coming online does not take over
	if got := updatedSelf(w.log.take()); len(got) != 0 {
		t.Fatalf("non-primary routers coming online caused updates for %v", got)
	}

	// A second session of the primary ending is no failover.
	w.connect(r2)
	w.s.Disconnect(r2)
	w.wantPrimary(route, r2)

	w.s.Disconnect(r2)
	w.wantPrimary(route, r1) // the lowest online server takes over
	got := updatedSelf(w.log.take())
	slices.Sort(got)
	if !slices.Equal(got, []ids.NodeID{r1, r2}) {
		t.Fatalf("failover r2 -> r1: updates for %v, want both routers", got)
	}
	if p := w.node(r2).PrimaryRoutes; len(p) != 0 {
		t.Fatalf("offline r2 still primary for %v", p)
	}

	w.connect(r2)
	w.wantPrimary(route, r1) // the old primary does not reclaim it

	w.advertise(r1) // r1 stops advertising
	w.wantPrimary(route, r2)
	got = updatedSelf(w.log.take())
	slices.Sort(got)
	if !slices.Equal(got, []ids.NodeID{r1, r2}) {
		t.Fatalf("withdrawal r1 -> r2: updates for %v, want both routers", got)
	}

	w.approve(r2) // admin revokes r2's approval
	w.wantPrimary(route, r3)
	w.advertise(r1, route) // r1 advertises again: r3 keeps it
	w.wantPrimary(route, r3)

	if err := w.s.DeleteNode(context.Background(), r3); err != nil {
		t.Fatal(err)
	}
	w.wantPrimary(route, r1)
	w.s.Disconnect(r1)
	w.wantPrimary(route, 0)
}

// TestPrimaryRoutesPerPrefix checks that prefixes elect independently and
// that exit routes never become primary routes.
func TestPrimaryRoutesPerPrefix(t *testing.T) {
	w := newRoutesWorld(t, "alice")
	a := w.register("a", "alice", nil, "10.1.0.0/24", "10.2.0.0/24", "0.0.0.0/0", "::/0").ID
	b := w.register("b", "alice", nil, "10.2.0.0/24", "0.0.0.0/0", "::/0").ID
	w.approve(a, "10.1.0.0/24", "10.2.0.0/24", "0.0.0.0/0")
	w.approve(b, "10.2.0.0/24", "::/0")
	w.wantApproved(a, "0.0.0.0/0", "10.1.0.0/24", "10.2.0.0/24", "::/0")
	w.wantApproved(b, "0.0.0.0/0", "10.2.0.0/24", "::/0")
	w.connect(b)
	w.connect(a)
	w.wantPrimary("10.1.0.0/24", a)
	w.wantPrimary("10.2.0.0/24", b)
	if got := w.s.PrimaryRoutes(); len(got) != 2 {
		t.Fatalf("primary routes %v: exit routes must not be primary routes", got)
	}
	if got := w.node(a).ExitRoutes(); !slices.Equal(got, pfx("0.0.0.0/0", "::/0")) {
		t.Fatalf("a's exit routes %v", got)
	}
}

const autoApprovePolicy = `{
  "groups": {"group:routers": ["alice@"]},
  "tagOwners": {"tag:router": ["alice@"]},
  "autoApprovers": {
    "routes": {"10.33.0.0/16": ["group:routers", "tag:router"]},
    "exitNode": ["alice@"],
  },
  "acls": [
    {"action": "accept", "src": ["bob@"], "dst": ["10.33.0.0/24:*"]},
  ],
}`

// TestAutoApproveOnRouteChange: a node advertising new routes in a map
// request gets those the autoApprovers allow approved and stored; an
// admin's earlier approval stays.
func TestAutoApproveOnRouteChange(t *testing.T) {
	w := newRoutesWorld(t, "alice", "bob")
	w.setPolicy(autoApprovePolicy)
	a := w.register("a", "alice", nil).ID
	b := w.register("b", "bob", nil).ID
	w.approve(a, "192.168.7.0/24")
	w.connect(a)
	w.log.take()

	w.advertise(a, "10.33.1.0/24", "192.168.7.0/24", "172.16.0.0/12", "0.0.0.0/0", "::/0")
	w.wantApproved(a, "0.0.0.0/0", "10.33.1.0/24", "192.168.7.0/24", "::/0")
	w.wantPrimary("10.33.1.0/24", a)
	if got := updatedSelf(w.log.take()); !slices.Contains(got, a) {
		t.Fatalf("auto-approval sent no self update to a: %v", got)
	}

	// Bob is no route owner: nothing approved for him.
	w.advertise(b, "10.33.1.0/24", "0.0.0.0/0", "::/0")
	w.wantApproved(b)
}

// TestAutoApproveOnRegister: routes advertised at login are approved in
// the same write that creates the node; tag owners count.
func TestAutoApproveOnRegister(t *testing.T) {
	w := newRoutesWorld(t, "alice")
	w.setPolicy(autoApprovePolicy)
	n := w.register("tagged", "", []string{"tag:router"}, "10.33.9.0/24", "0.0.0.0/0", "::/0")
	// The tag may approve the subnet; exitNode names alice, and a tagged
	// node is matched by its tags only.
	w.wantApproved(n.ID, "10.33.9.0/24")
}

// TestAutoApproveOnPolicySet: a policy set later approves what nodes
// already advertise, without removing what an admin approved, and when
// several routers are approved at once the lowest ID becomes primary.
func TestAutoApproveOnPolicySet(t *testing.T) {
	w := newRoutesWorld(t, "alice", "bob")
	a := w.register("a", "alice", nil, "10.33.0.0/24", "10.99.0.0/24").ID
	b := w.register("b", "alice", nil, "10.33.0.0/24").ID
	w.approve(a, "10.99.0.0/24", "10.50.0.0/24")
	w.connect(b)
	w.connect(a)
	w.wantPrimary("10.33.0.0/24", 0)

	w.setPolicy(autoApprovePolicy)
	w.wantApproved(a, "10.33.0.0/24", "10.50.0.0/24", "10.99.0.0/24")
	w.wantApproved(b, "10.33.0.0/24")
	w.wantPrimary("10.33.0.0/24", a)

	// A policy without autoApprovers removes nothing.
	w.setPolicy(`{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`)
	w.wantApproved(a, "10.33.0.0/24", "10.50.0.0/24", "10.99.0.0/24")
}

// TestSubnetRuleReachesRouter: a rule whose destination is a subnet ends
// up in the subnet router's packet filter once the route is approved, and
// makes the router visible to the rule's source.
func TestSubnetRuleReachesRouter(t *testing.T) {
	w := newRoutesWorld(t, "alice", "bob")
	router := w.register("router", "alice", nil).ID
	client := w.register("client", "bob", nil).ID
	w.setPolicy(autoApprovePolicy)
	compiled := func() *policy.Compiled {
		w.s.mu.Lock()
		defer w.s.mu.Unlock()
		return w.s.compiled
	}
	hasSubnet := func() bool {
		for _, r := range compiled().Filter(router) {
			for _, d := range r.DstPorts {
				if strings.HasPrefix(d.IP, "10.33.0.0/24") {
					return true
				}
			}
		}
		return false
	}
	if hasSubnet() {
		t.Fatal("router has the subnet rule before advertising it")
	}
	w.advertise(router, "10.33.0.0/24") // auto-approved
	if !hasSubnet() {
		t.Fatalf("router's filter lacks the subnet rule: %+v", compiled().Filter(router))
	}
	if !compiled().CanSee(client, router) {
		t.Fatal("the rule's source cannot see the subnet router")
	}
	var policyChanges int
	for _, c := range w.log.take() {
		if c.Kind == PolicyChanged {
			policyChanges++
		}
	}
	if policyChanges == 0 {
		t.Fatal("approving a route announced no policy change (filters stay stale)")
	}
}
