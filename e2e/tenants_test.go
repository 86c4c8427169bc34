//go:build linux

package e2e

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/hsctl/headscale/pkg/store"
	"github.com/jackc/pgx/v5"
)

// TestTenantsOnOnePostgres runs two tailnets on one PostgreSQL database,
// each server started in the form of the seed: no database in the
// config file, `CLUSTER_ID=a PG_DSN=postgres://... headscale serve`, the
// URL carrying a password that must never be printed. Both tailnets get a
// user of the same name and two official clients of the same names: they
// hand out the same addresses and names, each client sees and pings only
// its own tailnet's peer, each server lists only its own nodes, a backup
// made with the tenant's environment holds only its tailnet, and the
// database holds the schemas headscale_a and headscale_b and nothing in
// public.
func TestTenantsOnOnePostgres(t *testing.T) {
	env := requireEnv(t)
	db := pg.Database(t)
	q := url.Values{"host": {db.Host}, "port": {fmt.Sprint(db.Port)}, "sslmode": {"disable"}}
	dsn := (&url.URL{Scheme: "postgres", User: url.UserPassword(pgtest.PasswordUser, pgtest.PasswordUserPass),
		Path: "/" + db.Name, RawQuery: q.Encode()}).String()
	env.audit.add(t, "the password in PG_DSN", pgtest.PasswordUserPass)
	tenantEnv := func(id string) []string { return []string{"CLUSTER_ID=" + id, "PG_DSN=" + dsn} }

	ids := []string{"a", "b"}
	servers := map[string]*Server{}
	for _, id := range ids {
		servers[id] = StartServer(t, ServerOptions{DatabaseFromEnv: true, Env: tenantEnv(id)})
	}
	type tailnet struct {
		n1, n2 *Node
	}
	nets := map[string]tailnet{}
	for _, id := range ids {
		srv := servers[id]
		if u := srv.CreateUser(t, "alice"); u.ID != "1" {
			t.Errorf("tailnet %s: the first user has id %s, want 1 (ids are per tailnet)", id, u.ID)
		}
		srv.CreateUser(t, "only-"+id)
		key := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true})
		n1 := StartNode(t, srv, "node-1", NodeOptions{})
		n2 := StartNode(t, srv, "node-2", NodeOptions{})
		n1.MustUp(key.Key)
		n2.MustUp(key.Key)
		nets[id] = tailnet{n1, n2}
	}

	for _, id := range ids {
		tn := nets[id]
		tn.n1.WaitForPeer(tn.n2, peerTimeout)
		tn.n2.WaitForPeer(tn.n1, peerTimeout)
		// The same first addresses in both tailnets: the IP space is
		// per tailnet.
		for i, n := range []*Node{tn.n1, tn.n2} {
			if got, want := n.IPv4().String(), fmt.Sprintf("100.64.0.%d", i+1); got != want {
				t.Errorf("tailnet %s: %s has %s, want %s", id, n.Name, got, want)
			}
		}
		// Each client's only peer is its own tailnet's other node, by key.
		for _, pair := range [][2]*Node{{tn.n1, tn.n2}, {tn.n2, tn.n1}} {
			st, peer := pair[0].MustStatus(), pair[1].MustStatus()
			if len(st.Peer) != 1 {
				t.Errorf("tailnet %s: %s sees %d peers %v, want only %s", id, pair[0].Name, len(st.Peer), peerNames(st), pair[1].Name)
			}
			if p := findPeer(st, pair[1].Name); p == nil || p.PublicKey != peer.Self.PublicKey {
				t.Errorf("tailnet %s: %s's peer %s is not its own tailnet's node (key %v)", id, pair[0].Name, pair[1].Name, peer.Self.PublicKey)
			}
		}
		mustPing(t, tn.n1, tn.n2)
		mustPing(t, tn.n2, tn.n1)
	}
	if a, b := nets["a"].n1.MustStatus().Self.PublicKey, nets["b"].n1.MustStatus().Self.PublicKey; a == b {
		t.Fatal("the two tailnets' node-1 have the same key: they are one client")
	}

	for _, id := range ids {
		nodes := servers[id].ListNodes(t)
		var names []string
		for _, n := range nodes {
			names = append(names, n.GivenName)
			if n.User.Name != "alice" {
				t.Errorf("tailnet %s: node %s belongs to %q", id, n.GivenName, n.User.Name)
			}
		}
		slices.Sort(names)
		if !slices.Equal(names, []string{"node-1", "node-2"}) {
			t.Errorf("tailnet %s: nodes list shows %v, want [node-1 node-2]", id, names)
		}
	}

	// A backup taken with the tenant's environment holds its tailnet
	// alone.
	for _, id := range ids {
		out := filepath.Join(t.TempDir(), "backup.sqlite")
		tenantCLI(t, servers[id], tenantEnv(id), "backup", "--output", out)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		st, err := store.Open(ctx, store.FileOptions(out))
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		users, err := st.ListUsers(ctx)
		st.Close()
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, u := range users {
			names = append(names, u.Name)
		}
		slices.Sort(names)
		if want := []string{"alice", "only-" + id}; !slices.Equal(names, want) {
			t.Errorf("backup of tailnet %s holds users %v, want %v", id, names, want)
		}
	}

	// The database: one schema per tailnet, nothing in public, and each
	// server's connections named after its tailnet.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, db.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	schemas := queryStrings(t, conn, `SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname LIKE 'headscale%' ORDER BY 1`)
	if !slices.Equal(schemas, []string{"headscale_a", "headscale_b"}) {
		t.Errorf("schemas %v, want [headscale_a headscale_b]", schemas)
	}
	if public := queryStrings(t, conn, `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'`); len(public) != 0 {
		t.Errorf("tables in public: %v, want none", public)
	}
	for _, id := range ids {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM headscale_`+id+`.nodes`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Errorf("headscale_%s.nodes has %d rows, want 2", id, n)
		}
	}
	apps := queryStrings(t, conn, `SELECT DISTINCT application_name FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE 'headscale%' ORDER BY 1`)
	if !slices.Equal(apps, []string{"headscale/a", "headscale/b"}) {
		t.Errorf("the servers' connections are named %v, want [headscale/a headscale/b]", apps)
	}
}

// tenantCLI runs `headscale -c CONFIG args...` with extra environment (a
// tenant's CLUSTER_ID and PG_DSN) and returns its stdout.
func tenantCLI(t *testing.T, s *Server, extraEnv []string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.env.Headscale, append([]string{"-c", s.ConfigPath}, args...)...)
	cmd.Env = append(os.Environ(), extraEnv...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	s.env.audit.recordCLI(args, stdout.String(), stderr.String())
	if err != nil {
		t.Fatalf("headscale %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// queryStrings returns the first column of every row of sql.
func queryStrings(t *testing.T, conn *pgx.Conn, sql string) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), sql)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}
