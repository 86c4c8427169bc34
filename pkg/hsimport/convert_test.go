package hsimport

import (
	"bytes"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hsctl/headscale/pkg/authkey"
	"github.com/hsctl/headscale/pkg/hsdb"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/store"
	"golang.org/x/crypto/bcrypt"
)

// buildEra writes ../hsdb/testdata/<name>.sql (plus extra SQL) into a new
// SQLite file in a new directory and returns its path.
func buildEra(t testing.TB, name, extra string) string {
	t.Helper()
	script, err := os.ReadFile(filepath.Join("..", "hsdb", "testdata", name+".sql"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "db.sqlite")
	db, err := sql.Open("sqlite", "file:"+p+"?_pragma=synchronous(0)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(string(script) + extra); err != nil {
		t.Fatalf("building the test database: %v", err)
	}
	return p
}

// convertEra reads and converts an era's database.
func convertEra(t *testing.T, name, extra string, opts Options) (store.ImportData, *Report, error) {
	t.Helper()
	snap, err := hsdb.Read(t.Context(), buildEra(t, name, extra))
	if err != nil {
		t.Fatal(err)
	}
	return Convert(snap, opts)
}

func entry(rep *Report, kind string, id uint64) Entry {
	for _, e := range rep.Entries {
		if e.Kind == kind && e.ID == id {
			return e
		}
	}
	return Entry{}
}

func nodeByID(d store.ImportData, id ids.NodeID) *store.Node {
	for i := range d.Nodes {
		if d.Nodes[i].ID == id {
			return &d.Nodes[i]
		}
	}
	return nil
}

func userOf(n *store.Node) ids.UserID {
	if n == nil || n.UserID == nil {
		return 0
	}
	return *n.UserID
}

type counts struct{ read, converted, changed, skipped int }

func checkCounts(t *testing.T, rep *Report, want map[string]counts) {
	t.Helper()
	for kind, w := range want {
		c := rep.Count(kind)
		if (counts{c.Read, c.Converted, c.Changed, c.Skipped}) != w {
			t.Errorf("%s: %+v, want %+v", kind, c, w)
		}
	}
	if t.Failed() {
		t.Log(rep.Text())
	}
}

// TestConvert023: tags from the acl-tags table and from requests the
// policy allows, routes from the routes table, a policy v1 rewritten,
// duplicates and soft-deleted rows.
func TestConvert023(t *testing.T) {
	d, rep, err := convertEra(t, "v0.23.0", "", fixtureOpts)
	if err != nil {
		t.Fatal(err)
	}
	checkCounts(t, rep, map[string]counts{
		KindUsers:       {3, 2, 0, 1},
		KindNodes:       {7, 5, 2, 2},
		KindPreAuthKeys: {2, 2, 0, 0},
		KindAPIKeys:     {1, 1, 0, 0},
		KindPolicies:    {2, 2, 1, 0},
		KindRoutes:      {5, 4, 0, 1},
	})
	if e := entry(rep, KindUsers, 3); e.Action != Skipped || !strings.Contains(e.Reason, "deleted in Headscale") {
		t.Errorf("user 3: %+v", e)
	}
	if n := nodeByID(d, 2); n == nil || !slices.Equal(n.Tags, []string{"tag:ci"}) || n.UserID != nil || !n.Ephemeral || n.DiscoKey != "" || n.Endpoints != nil {
		t.Errorf("node 2 (tagged by its key, ephemeral key): %+v", n)
	}
	n3 := nodeByID(d, 3)
	if n3 == nil || !slices.Equal(n3.Tags, []string{"tag:router"}) || n3.UserID != nil || n3.DiscoKey != "" ||
		!slices.Equal(n3.ApprovedRoutes, []string{"0.0.0.0/0", "10.0.0.0/24", "::/0"}) || n3.RegisterMethod != "cli" {
		t.Errorf("node 3 (request tag allowed, enabled routes): %+v", n3)
	}
	if e := entry(rep, KindNodes, 3); !strings.Contains(e.Reason, "tag:router, requested by the client") || !strings.Contains(e.Reason, "tag:nope are not applied") {
		t.Errorf("node 3 entry: %+v", e)
	}
	if nodeByID(d, 4) != nil || entry(rep, KindNodes, 4).Action != Skipped {
		t.Error("soft-deleted node 4 converted")
	}
	if n := nodeByID(d, 5); n == nil || n.GivenName != "alice-laptop-5" || entry(rep, KindNodes, 5).Action != Changed {
		t.Errorf("node 5 (name taken): %+v %+v", n, entry(rep, KindNodes, 5))
	}
	// Node 6 gets the first free addresses: those of the soft-deleted node 4.
	if n := nodeByID(d, 6); n == nil || n.IPv4 != "100.64.0.4" || n.IPv6 != "fd7a:115c:a1e0::4" || !strings.Contains(entry(rep, KindNodes, 6).Reason, "100.64.0.1 is node 1's too") ||
		!strings.Contains(entry(rep, KindNodes, 6).Reason, "it had no IPv4 address: given 100.64.0.4") {
		t.Errorf("node 6 (address taken): %+v %+v", n, entry(rep, KindNodes, 6))
	}
	if n := nodeByID(d, 1); n == nil || n.IPv4 != "100.64.0.1" || !n.Expiry.IsZero() || userOf(n) != 1 || n.Ephemeral {
		t.Errorf("node 1: %+v", n)
	}
	if e := entry(rep, KindNodes, 7); nodeByID(d, 7) != nil || e.Action != Skipped || !strings.Contains(e.Reason, "user 3, was not converted") {
		t.Errorf("node 7 (owner deleted): %+v", e)
	}
	var routes []string
	for _, r := range d.RouteIDs {
		routes = append(routes, r.ID.String()+" "+r.NodeID.String()+" "+r.Prefix.String())
	}
	if want := []string{"1 3 10.0.0.0/24", "2 3 192.168.0.0/24", "3 3 0.0.0.0/0", "4 3 ::/0"}; !slices.Equal(routes, want) {
		t.Errorf("route IDs %v, want %v", routes, want)
	}
	if k := d.PreAuthKeys[1]; !slices.Equal(k.Tags, []string{"tag:ci"}) || k.Prefix != "fedcba987654" || !authkey.Verify(k.Hash, "3210fedcba9876543210fedcba9876543210") {
		t.Errorf("pre-auth key 2: %+v", k)
	}
	// The policy: history kept, a rewrite with "@" is current.
	if len(d.Policies) != 3 || !strings.Contains(d.Policies[2].Data, `"alice@"`) || !strings.Contains(d.Policies[2].Data, `"alice@:22"`) ||
		!strings.Contains(d.Policies[2].Data, "// policy v1") || d.Policies[2].ID != 3 || strings.Contains(d.Policies[1].Data, "alice@") {
		t.Errorf("policies %+v", d.Policies)
	}
	if d.Sequences["nodes"] != 9 || d.Sequences["route_ids"] != 5 || d.Sequences["policies"] < 3 {
		t.Errorf("sequences %v", d.Sequences)
	}
}

// TestConvert025: a name two users share, a machine key two nodes of
// different users share (both kept, as Headscale 0.26+ has a node per
// user) and a third node of one of them has too (skipped), an unreadable
// key, a pre-auth key that is gone.
func TestConvert025(t *testing.T) {
	// Node 5: the machine of nodes 1 and 2 again, user 2's, seen before
	// node 2.
	const sameMachineAndUser = `INSERT INTO nodes VALUES(5,'mkey:f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114','nodekey:6a0bc76e7a1a4fb6d04a9a2b9ff9ae5d1e71d0bcb7ff64ee3e2a2e44b5d0c2a1','','[]','{}','100.64.0.5','fd7a:115c:a1e0::5','laptop-old','laptop-old',2,'oidc','[]',NULL,'2025-01-02 12:00:00+00:00','0001-01-01 00:00:00+00:00','2025-01-02 11:05:00+00:00','2025-01-02 12:00:00+00:00',NULL);`
	d, rep, err := convertEra(t, "v0.25.1", sameMachineAndUser, fixtureOpts)
	if err != nil {
		t.Fatal(err)
	}
	checkCounts(t, rep, map[string]counts{
		KindUsers:       {2, 2, 1, 0},
		KindNodes:       {5, 3, 1, 2},
		KindPreAuthKeys: {1, 1, 1, 0},
		KindRoutes:      {2, 2, 0, 0},
	})
	if u := d.Users[1]; u.Name != "alice-2" || u.ProviderID != "https://sso.example.com/alice" || u.Provider != "oidc" || !strings.Contains(entry(rep, KindUsers, 2).Reason, "alice@ must be edited") {
		t.Errorf("user 2: %+v %+v", u, entry(rep, KindUsers, 2))
	}
	n1, n2 := nodeByID(d, 1), nodeByID(d, 2)
	if n1 == nil || userOf(n1) != 1 || !slices.Equal(n1.ApprovedRoutes, []string{"10.2.0.0/16"}) {
		t.Errorf("node 1 (the machine's node of user 1): %+v %+v", n1, entry(rep, KindNodes, 1))
	}
	if n2 == nil || userOf(n2) != 2 || !slices.Equal(n2.ApprovedRoutes, []string{"10.1.0.0/16"}) || n2.RegisterMethod != "oidc" {
		t.Errorf("node 2: %+v", n2)
	}
	if n1 != nil && n2 != nil && n1.MachineKey != n2.MachineKey {
		t.Errorf("nodes 1 and 2: machine keys %s and %s, want one", n1.MachineKey, n2.MachineKey)
	}
	if e := entry(rep, KindNodes, 5); nodeByID(d, 5) != nil || !strings.Contains(e.Reason, "node 2 (laptop) has the same node key, or the same machine key and user") {
		t.Errorf("node 5: %+v", e)
	}
	if e := entry(rep, KindNodes, 3); e.Action != Skipped || !strings.Contains(e.Reason, "node key") {
		t.Errorf("node 3: %+v", e)
	}
	if n := nodeByID(d, 4); n == nil || n.AuthKeyID != nil || !slices.Equal(n.Tags, []string{"tag:web"}) || n.UserID != nil || !strings.Contains(entry(rep, KindNodes, 4).Reason, "pre-auth key 7 was not converted") {
		t.Errorf("node 4: %+v %+v", n, entry(rep, KindNodes, 4))
	}
	if k := d.PreAuthKeys[0]; !slices.Equal(k.Tags, []string{"tag:web"}) || !k.Used || !strings.Contains(entry(rep, KindPreAuthKeys, 1).Reason, `"bogus" is not a tag`) {
		t.Errorf("pre-auth key 1: %+v", k)
	}
}

// TestConvert026: approved routes from the column (deduplicated), request
// tags without a policy, a name that is not a DNS label, no IPv6.
func TestConvert026(t *testing.T) {
	d, rep, err := convertEra(t, "v0.26.1", "", fixtureOpts)
	if err != nil {
		t.Fatal(err)
	}
	checkCounts(t, rep, map[string]counts{KindUsers: {1, 1, 0, 0}, KindNodes: {2, 2, 2, 0}, KindPolicies: {0, 0, 0, 0}})
	if n := nodeByID(d, 10); n == nil || !slices.Equal(n.ApprovedRoutes, []string{"10.9.0.0/16"}) || n.Tags != nil || userOf(n) != 4 || n.IPv6 != "fd7a:115c:a1e0::1" || n.Expiry.IsZero() {
		t.Errorf("node 10: %+v", n)
	}
	if e := entry(rep, KindNodes, 10); e.Action != Changed || !strings.Contains(e.Reason, "tag:web are not applied") || !strings.Contains(e.Reason, "it had no IPv6 address: given fd7a:115c:a1e0::1") {
		t.Errorf("node 10 entry: %+v", e)
	}
	if n := nodeByID(d, 11); n == nil || n.GivenName != "danas-phone" || n.IPv6 != "fd7a:115c:a1e0::2" || n.Hostname != "Dana's Phone" || entry(rep, KindNodes, 11).Action != Changed {
		t.Errorf("node 11: %+v %+v", n, entry(rep, KindNodes, 11))
	}
}

// TestConvert028: keys with prefix and bcrypt hash beside a legacy one,
// the tags column (request tags not merged again).
func TestConvert028(t *testing.T) {
	d, rep, err := convertEra(t, "v0.28.0", "", fixtureOpts)
	if err != nil {
		t.Fatal(err)
	}
	checkCounts(t, rep, map[string]counts{KindNodes: {2, 2, 0, 0}, KindPreAuthKeys: {2, 2, 0, 0}, KindAPIKeys: {1, 1, 0, 0}, KindPolicies: {1, 1, 0, 0}})
	k := d.PreAuthKeys[0]
	if k.Prefix != "Ab-cD_ef0123" || k.UserID != nil || bcrypt.CompareHashAndPassword(k.Hash, []byte("Ab-cD_ef0123456789Ab-cD_ef0123456789Ab-cD_ef0123456789Ab-cD_ef01")) != nil {
		t.Errorf("pre-auth key 1 (bcrypt): %+v", k)
	}
	if k := d.PreAuthKeys[1]; k.Prefix != "001122334455" || !authkey.Verify(k.Hash, "66778899aabbccddeeff0011223344556677") || !k.Ephemeral {
		t.Errorf("pre-auth key 2 (legacy): %+v", k)
	}
	if n := nodeByID(d, 1); n == nil || !slices.Equal(n.Tags, []string{"tag:db"}) || n.UserID != nil {
		t.Errorf("node 1: %+v", n)
	}
	if n := nodeByID(d, 2); n == nil || !n.Ephemeral || userOf(n) != 1 || !n.Expiry.IsZero() {
		t.Errorf("node 2: %+v", n)
	}
	if a := d.APIKeys[0]; a.Prefix != "Zy_x-Wv98765" || bcrypt.CompareHashAndPassword(a.Hash, []byte("api-secret-0123456789_-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNO")) != nil {
		t.Errorf("API key: %+v", a)
	}
}

// TestConvert029: tagged nodes without a user, a user restored from the
// key, a node with no owner at all.
func TestConvert029(t *testing.T) {
	d, rep, err := convertEra(t, "v0.29.2", "", fixtureOpts)
	if err != nil {
		t.Fatal(err)
	}
	checkCounts(t, rep, map[string]counts{KindNodes: {3, 2, 1, 1}})
	if rep.Version != "v0.29.2" {
		t.Errorf("version %q", rep.Version)
	}
	if n := nodeByID(d, 1); n == nil || n.UserID != nil || !slices.Equal(n.ApprovedRoutes, []string{"0.0.0.0/0", "::/0"}) || entry(rep, KindNodes, 1).Action != "" {
		t.Errorf("node 1: %+v %+v", n, entry(rep, KindNodes, 1))
	}
	if n := nodeByID(d, 2); n == nil || userOf(n) != 1 || !strings.Contains(entry(rep, KindNodes, 2).Reason, "restored from its pre-auth key") {
		t.Errorf("node 2: %+v", n)
	}
	if e := entry(rep, KindNodes, 3); e.Action != Skipped || !strings.Contains(e.Reason, "neither an owner nor tags") {
		t.Errorf("node 3: %+v", e)
	}
}

// TestConvertPolicyThatDoesNotCompile: in database mode the conversion is
// refused (the server could not start on it); in file mode it is kept as
// history and reported.
func TestConvertPolicyThatDoesNotCompile(t *testing.T) {
	bad := `INSERT INTO policies VALUES(1,'2025-06-01 10:00:00+00:00','2025-06-01 10:00:00+00:00',NULL,'{"acls": [{"action": "accept", "src": ["group:nobody"], "dst": ["*:*"]}]}');`
	_, rep, err := convertEra(t, "v0.26.1", bad, Options{PolicyMode: "database"})
	if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "group:nobody") || entry(rep, KindPolicies, 1).Action != Skipped {
		t.Errorf("database mode: %v %+v", err, rep)
	}
	d, rep, err := convertEra(t, "v0.26.1", bad, Options{PolicyMode: "file"})
	if err != nil || len(d.Policies) != 1 || entry(rep, KindPolicies, 1).Action != Noted || !strings.Contains(entry(rep, KindPolicies, 1).Reason, "not in force") {
		t.Errorf("file mode: %v %+v", err, rep)
	}
}

// TestTakeOverEras: each era's database taken over and opened by the
// store: the ID sequences continue after Headscale's.
func TestTakeOverEras(t *testing.T) {
	for _, era := range []string{"v0.23.0", "v0.25.1", "v0.26.1", "v0.28.0", "v0.29.2"} {
		t.Run(era, func(t *testing.T) {
			db := buildEra(t, era, "")
			orig, _ := os.ReadFile(db)
			rep, err := TakeOver(t.Context(), TakeOverOptions{Path: db, Convert: fixtureOpts})
			if err != nil {
				t.Fatal(err)
			}
			if cp, _ := os.ReadFile(db + ".headscale-" + era); !bytes.Equal(cp, orig) || rep.Copy != db+".headscale-"+era {
				t.Errorf("copy %q not byte-equal to the original", rep.Copy)
			}
			s, err := store.Open(t.Context(), store.Options{Path: db})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			nodes, err := s.ListNodes(t.Context())
			if err != nil || len(nodes) != rep.Count(KindNodes).Converted {
				t.Errorf("nodes %d (%v), report says %d", len(nodes), err, rep.Count(KindNodes).Converted)
			}
			for _, n := range nodes {
				if n.PendingApproval {
					t.Errorf("imported node %d waits for device approval; nodes from Headscale are approved", n.ID)
				}
			}
			n, err := s.RegisterNode(t.Context(), store.Node{MachineKey: "mkey:new", NodeKey: "nodekey:new", GivenName: "new-node"}, 0)
			if err != nil || uint64(n.ID) <= uint64(nodes[len(nodes)-1].ID) {
				t.Errorf("new node %d (%v)", n.ID, err)
			}
			if era == "v0.23.0" && n.ID != 10 {
				t.Errorf("new node %d, want 10 (Headscale had used 9)", n.ID)
			}
		})
	}
}
