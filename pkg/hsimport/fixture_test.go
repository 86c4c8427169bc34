package hsimport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/authkey"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/store"
	"golang.org/x/crypto/bcrypt"
)

// fixtureDir is the real Headscale 0.27.1 SQLite deployment.
func fixtureDir(t testing.TB) string {
	return tstest.Shared(t, "fixtures/headscale-db/0.27.1-sqlite")
}

// copyFixture copies the fixture's database into a new directory and
// returns its path.
func copyFixture(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtureDir(t), "db.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "db.sqlite")
	if err := os.WriteFile(p, b, 0o644); err != nil { // as Headscale's package leaves it
		t.Fatal(err)
	}
	return p
}

var fixtureOpts = Options{PolicyMode: "database", V4: netip.MustParsePrefix("100.64.0.0/10"), V6: netip.MustParsePrefix("fd7a:115c:a1e0::/48")}

// TestTakeOverFixture takes over the database a real Headscale 0.27.1
// wrote and checks every fact its MANIFEST lists.
func TestTakeOverFixture(t *testing.T) {
	db := copyFixture(t)
	orig, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	rep, err := TakeOver(context.Background(), TakeOverOptions{Path: db, Convert: fixtureOpts, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(rep.Text())

	// The copy: named by version, byte-equal to the original.
	cp := db + ".headscale-v0.27.1"
	if rep.Copy != cp {
		t.Errorf("copy %q, want %q", rep.Copy, cp)
	}
	got, err := os.ReadFile(cp)
	if err != nil || !bytes.Equal(got, orig) {
		t.Errorf("the copy is not byte-equal to the original (%v)", err)
	}
	if fi, err := os.Stat(cp); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("the copy's mode: %v %v, want the original's 0644", fi.Mode(), err)
	}
	if fi, err := os.Stat(db); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the converted database's mode: %v %v, want 0600", fi.Mode(), err)
	}
	if txt, err := os.ReadFile(cp + ".report.txt"); err != nil || !strings.Contains(string(txt), "nodes") {
		t.Errorf("report file: %q, %v", txt, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(db))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"db.sqlite", "db.sqlite.headscale-v0.27.1", "db.sqlite.headscale-v0.27.1.report.txt"}; !slices.Equal(names, want) {
		t.Errorf("files %v, want %v", names, want)
	}

	// Counts: everything converted, nothing changed or skipped.
	for kind, want := range map[string]int{KindUsers: 3, KindNodes: 4, KindPreAuthKeys: 5, KindAPIKeys: 1, KindPolicies: 1, KindRoutes: 0} {
		c := rep.Count(kind)
		if c.Read != want || c.Converted != want || c.Changed != 0 || c.Skipped != 0 {
			t.Errorf("%s: %+v, want %d read and converted", kind, c, want)
		}
	}
	for _, kind := range kinds {
		if !strings.Contains(logs.String(), " kind="+logValue(kind)+" read=") {
			t.Errorf("no log line for %s in\n%s", kind, logs.String())
		}
	}

	s, err := store.Open(context.Background(), store.Options{Path: db, WAL: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	plain := map[ids.PreAuthKeyID]string{
		1: "2b196a5ee1110735e7f9c274eef6850790ebc08ba9d5f15d",
		2: "790f8e0183edad49d0918dbe56a57af54c31ad194b4297e1",
		3: "77e37e81691e618f3f3c20d0ee2d45de233b18880ce0c0e6",
		4: "5f6074adb3cbb21d2eb5c1bf7cb869c2d2a02e062345da11",
		5: "35fa6096a89feb9bf821d46e1101fec9a8ddeed06836e9d7",
	}
	nodes, keys := checkFixtureStore(t, s, fixtureFacts{
		dir: fixtureDir(t), keys: plain,
		apiPrefix: "fND2Ksx", apiSecret: "-F2_-Ebss_BplKFE8ByMRSZ6JDNEep3n",
	})

	// What only the SQLite deployment's MANIFEST lists.
	keyOf := map[ids.NodeID]ids.PreAuthKeyID{1: 1, 2: 1, 3: 5, 4: 2}
	for _, n := range nodes {
		if n.AuthKeyID == nil || *n.AuthKeyID != keyOf[n.ID] || n.Ephemeral || len(n.Endpoints) != 1 {
			t.Errorf("node %d: key %v ephemeral %v endpoints %v; want key %d, one endpoint", n.ID, n.AuthKeyID, n.Ephemeral, n.Endpoints, keyOf[n.ID])
		}
	}
	if nodes[0].MachineKey != "mkey:52505e775b7f2eb31937f7859d285e5e810fd9982c866ecceaac102ce439c152" ||
		nodes[0].NodeKey != "nodekey:0ee66c30e9dfa8e26d84417d8d3274fe4135e46452d1f10eed76f30de21b2300" {
		t.Errorf("node 1 keys %s %s", nodes[0].MachineKey, nodes[0].NodeKey)
	}
	users, err := s.ListUsers(ctx)
	if err != nil || len(users) != 3 || users[0].Email != "alice@example.test" || users[2].Name != "carol" {
		t.Errorf("users %+v, %v", users, err)
	}
	for _, k := range keys {
		sum := sha256.Sum256([]byte(plain[k.ID][12:]))
		if hex.EncodeToString(k.Hash) != hex.EncodeToString(sum[:]) {
			t.Errorf("pre-auth key %d: hash is not the SHA-256 of the secret", k.ID)
		}
	}
	byID := func(id ids.PreAuthKeyID) store.PreAuthKey { return keys[id-1] }
	if k := byID(1); !k.Reusable || k.Used || k.Ephemeral || k.UserID == nil || *k.UserID != 1 {
		t.Errorf("reusable key %+v", k)
	}
	if k := byID(3); k.Expiration.IsZero() || k.Expiration.After(byID(2).Expiration) {
		t.Errorf("expired key %+v", k)
	}
	if k := byID(4); !k.Ephemeral {
		t.Errorf("ephemeral key %+v", k)
	}
}

// fixtureFacts is what differs between the MANIFESTs of the Headscale
// 0.27.1 SQLite and PostgreSQL deployments among the facts
// checkFixtureStore checks.
type fixtureFacts struct {
	dir string // the fixture's directory (its policy.hujson)
	// keys are the pre-auth keys' plaintexts by ID.
	keys map[ids.PreAuthKeyID]string
	// apiPrefix and apiSecret are the operator's API key.
	apiPrefix, apiSecret string
}

// checkFixtureStore checks the facts both 0.27.1 deployments share in
// the store they were taken over into: four nodes with their names,
// addresses, owners, tags and routes; three users; five pre-auth keys
// whose plaintexts still match (one single-use and used, one tagged);
// the API key; the policy; and IDs for new nodes that Headscale never
// gave out (that node is left behind). It returns the nodes and keys as
// stored, in ID order, for the caller's own checks.
func checkFixtureStore(t *testing.T, s *store.Store, fx fixtureFacts) ([]store.Node, []store.PreAuthKey) {
	t.Helper()
	ctx := t.Context()
	nodes, err := s.ListNodes(ctx)
	if err != nil || len(nodes) != 4 {
		t.Fatalf("nodes %d, %v; want 4", len(nodes), err)
	}
	type nodeWant struct {
		given, host, v4, v6 string
		user                ids.UserID
		tags, routes        []string
	}
	want := map[ids.NodeID]nodeWant{
		1: {"alice-laptop", "alice-laptop", "100.64.0.1", "fd7a:115c:a1e0::1", 1, nil, nil},
		2: {"alice-pixel", "alice-phone", "100.64.0.2", "fd7a:115c:a1e0::2", 1, nil, nil},
		3: {"bob-server", "bob-server", "100.64.0.3", "fd7a:115c:a1e0::3", 0, []string{"tag:server"}, []string{"0.0.0.0/0", "10.33.0.0/24", "::/0"}},
		4: {"bob-laptop", "bob-laptop", "100.64.0.4", "fd7a:115c:a1e0::4", 2, nil, nil},
	}
	for _, n := range nodes {
		w := want[n.ID]
		var user ids.UserID
		if n.UserID != nil {
			user = *n.UserID
		}
		if n.GivenName != w.given || n.Hostname != w.host || n.IPv4 != w.v4 || n.IPv6 != w.v6 || user != w.user ||
			!slices.Equal(n.Tags, w.tags) || !slices.Equal(n.ApprovedRoutes, w.routes) {
			t.Errorf("node %d: %+v, want %+v", n.ID, n, w)
		}
		if !n.Expiry.IsZero() || n.LastSeen.IsZero() || n.DiscoKey == "" || len(n.Hostinfo) == 0 || n.RegisterMethod != "authkey" {
			t.Errorf("node %d: expiry %v last seen %v disco %q method %q", n.ID, n.Expiry, n.LastSeen, n.DiscoKey, n.RegisterMethod)
		}
	}
	users, err := s.ListUsers(ctx)
	if err != nil || len(users) != 3 || users[0].Name != "alice" || users[0].DisplayName != "Alice Anders" {
		t.Errorf("users %+v, %v", users, err)
	}
	keys, err := s.ListPreAuthKeys(ctx)
	if err != nil || len(keys) != 5 {
		t.Fatalf("keys %+v, %v", keys, err)
	}
	for _, k := range keys {
		p := fx.keys[k.ID]
		if len(p) < 12 || k.Prefix != p[:12] || !authkey.Verify(k.Hash, p[12:]) || !k.Legacy {
			t.Errorf("pre-auth key %d: prefix %q hash %x does not match its plaintext", k.ID, k.Prefix, k.Hash)
		}
	}
	if k := keys[1]; k.Reusable || !k.Used {
		t.Errorf("single-use key %+v", k)
	}
	if k := keys[4]; !slices.Equal(k.Tags, []string{"tag:server"}) || !k.Reusable {
		t.Errorf("tagged key %+v", k)
	}
	ak, err := s.GetAPIKeyByPrefix(ctx, fx.apiPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if err := bcrypt.CompareHashAndPassword(ak.Hash, []byte(fx.apiSecret)); err != nil || ak.ID != 1 {
		t.Errorf("API key %d: %v", ak.ID, err)
	}
	text, _, err := s.GetPolicy(ctx)
	wantPolicy, _ := os.ReadFile(filepath.Join(fx.dir, "policy.hujson"))
	if err != nil || strings.TrimSpace(text) != strings.TrimSpace(string(wantPolicy)) {
		t.Errorf("policy %q, %v", text, err)
	}
	if n, err := s.RegisterNode(ctx, store.Node{MachineKey: "mkey:01", NodeKey: "nodekey:01", GivenName: "new"}, 0); err != nil || n.ID != 5 {
		t.Errorf("new node %d, %v; want id 5", n.ID, err)
	}
	return nodes, keys
}

// logValue is how slog's text handler writes a string value.
func logValue(s string) string {
	if strings.ContainsAny(s, " =\"") {
		return strconv.Quote(s)
	}
	return s
}
