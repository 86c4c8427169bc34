//go:build linux

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// databaseBlock is the database section of a generated config.
var databaseBlock = regexp.MustCompile(`(?m)^database:\n(?:  .*\n)+`)

// setDatabase replaces the database section of the server's config (the
// server must be stopped; start it again afterwards).
func (s *Server) setDatabase(t testing.TB, section string) {
	t.Helper()
	b, err := os.ReadFile(s.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	if !databaseBlock.Match(b) {
		t.Fatalf("%s has no database section:\n%s", s.ConfigPath, b)
	}
	out := databaseBlock.ReplaceAllLiteral(b, []byte(section))
	if err := os.WriteFile(s.ConfigPath, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestMigrateBetweenEnginesWithClients moves a running tailnet from SQLite
// to PostgreSQL and back with `headscale db migrate`: the server is
// stopped, the database copied, the config pointed at the copy and the
// server started on it. The two clients are never registered again: they
// reconnect by themselves with the same node IDs and addresses, the server
// knows no other node, and they reach each other.
func TestMigrateBetweenEnginesWithClients(t *testing.T) {
	srv := StartServer(t, ServerOptions{})
	db := pg.Database(t)
	srv.CreateUser(t, "alice")
	key := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true})
	a, b := startPair(t, srv, key.Key, NodeOptions{})
	mustPing(t, a, b)

	type identity struct {
		id, stable string
		ips        string
	}
	snapshot := func() map[string]identity {
		t.Helper()
		nodes, err := srv.listNodes(t)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]identity{}
		for _, n := range nodes {
			got[n.Name] = identity{id: fmt.Sprint(n.ID), ips: strings.Join(n.IPAddresses, ",")}
		}
		for _, n := range []*Node{a, b} {
			st := n.MustStatus()
			id := got[n.Name]
			id.stable = string(st.Self.ID)
			got[n.Name] = id
		}
		return got
	}
	before := snapshot()
	if len(before) != 2 {
		t.Fatalf("nodes before the migration: %v", before)
	}

	pgURL := fmt.Sprintf("postgres:///%s?host=%s&port=%d&user=%s&sslmode=disable", db.Name, db.Host, db.Port, db.User)
	pgSection := fmt.Sprintf("database:\n  type: postgres\n  postgres:\n    host: %q\n    port: %d\n    name: %s\n    user: %s\n",
		db.Host, db.Port, db.Name, db.User)
	sqlitePath := filepath.Join(srv.Dir, "migrated.sqlite")
	steps := []struct {
		name, to, section string
	}{
		{"sqlite-to-postgres", pgURL, pgSection},
		{"postgres-to-sqlite", sqlitePath, fmt.Sprintf("database:\n  type: sqlite\n  sqlite:\n    path: %q\n", sqlitePath)},
	}
	for _, step := range steps {
		srv.Stop()
		out, err := srv.CLI(t, "db", "migrate", "--from", "config", "--to", step.to)
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if !regexp.MustCompile(`(?m)^migrated \d+ rows in 6 tables from \S+ to \S+ \(verified\)$`).MatchString(out) {
			t.Fatalf("%s: db migrate printed no verified line:\n%s", step.name, out)
		}
		t.Logf("%s:\n%s", step.name, out)
		srv.setDatabase(t, step.section)
		srv.start()

		waitServerOnline(t, srv, a.Name, b.Name)
		a.WaitForPeer(b, peerTimeout)
		b.WaitForPeer(a, peerTimeout)
		mustPing(t, a, b)
		mustPing(t, b, a)
		if after := snapshot(); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("%s: nodes (name: ID, stable ID, addresses) changed:\n before %v\n after  %v", step.name, before, after)
		}
	}
	if out, err := srv.CLI(t, "db", "migrate", "--from", "config", "--to", pgURL); err == nil || !strings.Contains(err.Error(), "running") {
		t.Errorf("db migrate while the server runs: %v\n%s", err, out)
	}
}
