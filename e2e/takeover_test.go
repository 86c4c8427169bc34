//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/hsctl/headscale/internal/tstest"
	v1 "github.com/hsctl/headscale/pkg/headscalev1"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// takeoverFixture is a Headscale deployment in ../shared whose clients'
// saved state can be started again against a server that took it over.
type takeoverFixture struct {
	dir string // under ../shared
	// dump, when set, is the fixture's pg_dump (in dir): the deployment
	// ran on PostgreSQL, and the server takes over a database loaded from
	// it; else the deployment's database is dir/db.sqlite.
	dump string
	// port is the control URL's port the clients saved.
	port int
	// clients, by hostname, with what Headscale had given them.
	clients []fixtureClient
	// reusable and singleUse are pre-auth keys of the deployment, as
	// Headscale printed them; apiKey is its API key.
	reusable, reusableUser, singleUse, apiKey string
	// importLog are pieces of the lines the takeover must log.
	importLog []string
}

// fixtureClient is one saved tailscaled of a fixture.
type fixtureClient struct {
	host      string
	id        string // the node ID (StableID) Headscale gave it
	ips       []string
	tags      []string
	givenName string
}

// fixtureClients are the four clients both 0.27.1 deployments have, with
// what Headscale gave them.
var fixtureClients = []fixtureClient{
	{host: "alice-laptop", id: "1", givenName: "alice-laptop", ips: []string{"100.64.0.1", "fd7a:115c:a1e0::1"}},
	{host: "alice-phone", id: "2", givenName: "alice-pixel", ips: []string{"100.64.0.2", "fd7a:115c:a1e0::2"}},
	{host: "bob-server", id: "3", givenName: "bob-server", ips: []string{"100.64.0.3", "fd7a:115c:a1e0::3"}, tags: []string{"tag:server"}},
	{host: "bob-laptop", id: "4", givenName: "bob-laptop", ips: []string{"100.64.0.4", "fd7a:115c:a1e0::4"}},
}

// fixtureImportLog are the lines a takeover of either 0.27.1 deployment
// logs.
var fixtureImportLog = []string{
	`msg="headscale import" component=import kind=users read=3 converted=3 changed=0 skipped=0`,
	`msg="headscale import" component=import kind=nodes read=4 converted=4 changed=0 skipped=0`,
	`msg="headscale import" component=import kind="pre-auth keys" read=5 converted=5 changed=0 skipped=0`,
	`msg="headscale import" component=import kind="API keys" read=1 converted=1 changed=0 skipped=0`,
	`msg="headscale import" component=import kind=policies read=1 converted=1 changed=0 skipped=0`,
	`msg="headscale import finished"`,
}

var takeoverFixtures = []takeoverFixture{{
	dir:          "fixtures/headscale-db/0.27.1-sqlite",
	port:         18271,
	clients:      fixtureClients,
	reusable:     "2b196a5ee1110735e7f9c274eef6850790ebc08ba9d5f15d",
	reusableUser: "alice",
	singleUse:    "790f8e0183edad49d0918dbe56a57af54c31ad194b4297e1",
	apiKey:       "fND2Ksx.-F2_-Ebss_BplKFE8ByMRSZ6JDNEep3n",
	importLog:    fixtureImportLog,
}, {
	dir:          "fixtures/headscale-db/0.27.1-postgres",
	dump:         "headscale-0.27.1-postgres.sql",
	port:         18281,
	clients:      fixtureClients,
	reusable:     "c4e92c176825380e9ec6b91426fc7e48391c8ca8ef88ff20",
	reusableUser: "alice",
	singleUse:    "7fa67c94b8957a0ea2e8e39deeb577c1324453ff51ff29b1",
	apiKey:       "Q9AGSFF.ENGMho0BVUrGQQefqvKwaaTCSSrWx8zv",
	importLog:    fixtureImportLog,
}}

// TestHeadscaleTakeover starts the server on a copy of a real Headscale
// deployment (its database and key files, as Headscale left them) and then
// the deployment's own clients from their saved state, without `tailscale
// up`: they must come back Running with their node IDs, addresses and
// names, see each other, pass traffic under the imported policy, and the
// deployment's keys must keep working (its API key over REST and gRPC).
func TestHeadscaleTakeover(t *testing.T) {
	for _, fx := range takeoverFixtures {
		t.Run(filepath.Base(fx.dir), func(t *testing.T) { testTakeover(t, fx) })
	}
}

func testTakeover(t *testing.T, fx takeoverFixture) {
	src := tstest.Shared(t, fx.dir)
	env := requireEnv(t)
	for _, k := range []string{fx.reusable, fx.singleUse, fx.apiKey} {
		env.audit.add(t, "a Headscale fixture key", k)
	}
	var origDB []byte
	var pgdb *pgtest.Database
	if fx.dump != "" {
		db := pg.Database(t)
		pg.LoadSQL(t, db, filepath.Join(src, fx.dump))
		pgdb = &db
	} else {
		b, err := os.ReadFile(filepath.Join(src, "db.sqlite"))
		if err != nil {
			t.Fatal(err)
		}
		origDB = b
	}
	origNoise, err := os.ReadFile(filepath.Join(src, "noise_private.key"))
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr := fmt.Sprintf("127.0.0.1:%d", env.FreePort(t))
	srv := StartServer(t, ServerOptions{
		Port:        fx.port,
		BaseDomain:  "example.test",
		ExtraConfig: fmt.Sprintf("policy:\n  mode: database\ngrpc_listen_addr: %s\ngrpc_allow_insecure: true\n", grpcAddr),
		Postgres:    pgdb,
		Prepare: func(dir string) {
			files := map[string]string{
				"noise_private.key":       "noise.key",
				"derp_server_private.key": "derp.key",
			}
			if pgdb == nil {
				files["db.sqlite"] = "db.sqlite"
			}
			for from, to := range files {
				b, err := os.ReadFile(filepath.Join(src, from))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, to), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
		},
	})

	// The original is kept beside the converted database, unchanged (on
	// PostgreSQL: Headscale's tables in a schema of their own), and the
	// server said what it converted.
	if pgdb != nil {
		checkKeptSchema(t, *pgdb, "headscale_v0_27_1", map[string]int{"users": 3, "nodes": 4, "pre_auth_keys": 5, "api_keys": 1, "policies": 1})
	} else {
		copies, _ := filepath.Glob(filepath.Join(srv.Dir, "db.sqlite.headscale-v*"))
		var kept bool
		for _, c := range copies {
			if b, err := os.ReadFile(c); err == nil && bytes.Equal(b, origDB) {
				kept = true
				t.Logf("original kept as %s", filepath.Base(c))
			}
		}
		if !kept {
			t.Errorf("no byte-for-byte copy of the Headscale database beside it (found %v)", copies)
		}
	}
	for _, line := range fx.importLog {
		if err := srv.logContains(line); err != nil {
			t.Errorf("import log: %v", err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(srv.Dir, "noise.key")); err != nil || !bytes.Equal(b, origNoise) {
		t.Errorf("the Noise key file changed (err %v)", err)
	}

	// The saved clients come back by themselves.
	nodes := map[string]*Node{}
	var all []*Node
	for _, c := range fx.clients {
		state, err := os.ReadFile(filepath.Join(src, "clients", c.host, "tailscaled.state"))
		if err != nil {
			t.Fatal(err)
		}
		n := StartNode(t, srv, c.host, NodeOptions{State: state})
		nodes[c.host] = n
		all = append(all, n)
	}
	for _, c := range fx.clients {
		n := nodes[c.host]
		tstest.WaitFor(t, 60*time.Second, c.host+" Running from its saved state", func() error {
			st, err := n.Status()
			if err != nil {
				return err
			}
			if st.BackendState != "Running" {
				return fmt.Errorf("backend state %q", st.BackendState)
			}
			return nil
		})
		st := n.MustStatus()
		if got := string(st.Self.ID); got != c.id {
			t.Errorf("%s: node ID %s, Headscale had %s", c.host, got, c.id)
		}
		var ips []string
		for _, ip := range st.Self.TailscaleIPs {
			ips = append(ips, ip.String())
		}
		if !slices.Equal(ips, c.ips) {
			t.Errorf("%s: addresses %v, Headscale had %v", c.host, ips, c.ips)
		}
		if want := c.givenName + ".example.test."; st.Self.DNSName != want {
			t.Errorf("%s: DNS name %q, want %q", c.host, st.Self.DNSName, want)
		}
		var tags []string
		if st.Self.Tags != nil {
			tags = st.Self.Tags.AsSlice()
		}
		if !slices.Equal(tags, c.tags) {
			t.Errorf("%s: tags %v, want %v", c.host, tags, c.tags)
		}
	}
	for _, a := range all {
		for _, b := range all {
			if a != b {
				a.WaitForPeer(b, peerTimeout)
			}
		}
	}

	// Traffic, and the imported policy: alice is an admin and reaches
	// everything; bob is staff and reaches only tag:server and the office
	// LAN.
	mustPing(t, nodes["alice-laptop"], nodes["bob-server"])
	mustPing(t, nodes["bob-laptop"], nodes["bob-server"])
	allowed(t, nodes["alice-laptop"], nodes["bob-laptop"], nodes["bob-laptop"].ListenPort)
	allowed(t, nodes["bob-laptop"], nodes["bob-server"], 22)
	denied(t, nodes["bob-laptop"], nodes["alice-laptop"], nodes["alice-laptop"].ListenPort)

	// The server lists the same nodes as Headscale did.
	var listed []struct {
		NodeInfo
		MachineKey     string   `json:"machine_key"`
		NodeKey        string   `json:"node_key"`
		Tags           []string `json:"tags"`
		ApprovedRoutes []string `json:"approved_routes"`
	}
	srv.cliJSON(t, &listed, "nodes", "list", "-o", "json")
	var theirs []struct {
		ID             json.Number `json:"id"`
		MachineKey     string      `json:"machine_key"`
		NodeKey        string      `json:"node_key"`
		Name           string      `json:"name"`
		GivenName      string      `json:"given_name"`
		IPAddresses    []string    `json:"ip_addresses"`
		User           User        `json:"user"`
		ValidTags      []string    `json:"valid_tags"`
		ApprovedRoutes []string    `json:"approved_routes"`
	}
	b, err := os.ReadFile(filepath.Join(src, "cli", "nodes.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &theirs); err != nil {
		t.Fatal(err)
	}
	if len(listed) != len(theirs) {
		t.Fatalf("nodes list: %d nodes, Headscale listed %d", len(listed), len(theirs))
	}
	for i, h := range theirs {
		o := listed[i]
		if string(o.ID) != h.ID.String() || o.Name != h.Name || o.GivenName != h.GivenName ||
			o.MachineKey != h.MachineKey || o.NodeKey != h.NodeKey ||
			!slices.Equal(o.IPAddresses, h.IPAddresses) || !slices.Equal(o.Tags, h.ValidTags) ||
			!slices.Equal(o.ApprovedRoutes, h.ApprovedRoutes) {
			t.Errorf("nodes list: node %d is %+v, Headscale listed %+v", i, o, h)
		}
		// Tagged nodes belong to no user here, as in Headscale 0.29.
		if len(h.ValidTags) == 0 && o.User.Name != h.User.Name {
			t.Errorf("nodes list: %s belongs to %q, Headscale said %q", h.Name, o.User.Name, h.User.Name)
		}
	}

	// The deployment's API key keeps authenticating.
	req, _ := http.NewRequest("GET", srv.URL+"/api/v1/user", nil)
	req.Header.Set("Authorization", "Bearer "+fx.apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /api/v1/user with the deployment's API key: %s", resp.Status)
	}

	// ... and over gRPC, for a program built on Headscale's client.
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+fx.apiKey), 10*time.Second)
	defer cancel()
	if lr, err := v1.NewHeadscaleServiceClient(conn).ListNodes(ctx, &v1.ListNodesRequest{}); err != nil {
		t.Errorf("gRPC ListNodes with the deployment's API key: %v", err)
	} else if len(lr.GetNodes()) != len(fx.clients) || lr.GetNodes()[1].GetGivenName() != fx.clients[1].givenName {
		t.Errorf("gRPC ListNodes: %d nodes, want the deployment's %d", len(lr.GetNodes()), len(fx.clients))
	}

	// Its reusable key registers a new client; its used single-use key
	// does not.
	fresh := StartNode(t, srv, "after-takeover", NodeOptions{})
	fresh.MustUp(fx.reusable)
	info, err := srv.findNode(t, fresh.Name)
	if err != nil {
		t.Fatal(err)
	}
	if info.User.Name != fx.reusableUser {
		t.Errorf("a node registered with the imported reusable key belongs to %q, want %q", info.User.Name, fx.reusableUser)
	}
	refused := StartNode(t, srv, "used-key", NodeOptions{})
	if out, err := refused.Up(fx.singleUse, "--timeout", "15s"); err == nil {
		t.Errorf("the imported single-use key, already used, registered a node:\n%s", out)
	} else {
		t.Logf("the used single-use key is refused: %s", strings.TrimSpace(out))
	}
}

// checkKeptSchema checks that schema in db holds Headscale's tables with
// the given row counts.
func checkKeptSchema(t *testing.T, db pgtest.Database, schema string, counts map[string]int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, db.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for table, want := range counts {
		var n int
		if err := conn.QueryRow(ctx, `SELECT COUNT(*) FROM `+pgx.Identifier{schema, table}.Sanitize()).Scan(&n); err != nil || n != want {
			t.Errorf("Headscale's %s.%s: %d rows (%v), want %d", schema, table, n, err, want)
		}
	}
}
