package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/servertest"
	"tailscale.com/control/tsp"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

func TestGeneratePrivateKey(t *testing.T) {
	code, out, stderr := run(t, "generate", "private-key")
	if code != 0 || !regexp.MustCompile(`^privkey:[0-9a-f]{64}\n$`).MatchString(out) {
		t.Fatalf("plain: %d %q %q", code, out, stderr)
	}
	code, out, stderr = run(t, "gen", "private-key", "-o", "json")
	var v map[string]string
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || !strings.HasPrefix(v["private_key"], "privkey:") || len(v) != 1 {
		t.Fatalf("json: %d %q %q", code, out, stderr)
	}
}

// oneLineError checks a failed command: exit 1 and one line on stderr
// containing want.
func oneLineError(t *testing.T, what string, code int, stderr, want string) {
	t.Helper()
	if code != 1 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, want) {
		t.Errorf("%s: exit %d, stderr %q (want one line with %q)", what, code, stderr, want)
	}
}

// TestRunbookVerbs runs the Headscale verbs runbooks call against a real
// server: register of an unknown auth ID and debug create-node fail with a reason,
// move moves (by user name and by ID) and refuses tagged nodes, and the
// older flag forms of preauthkeys expire and apikeys expire|delete work.
func TestRunbookVerbs(t *testing.T) {
	ts := startServer(t, t.TempDir(), "")
	cfg := ts.ConfigPath
	alice := ts.CreateUser(t, "alice")
	bob := ts.CreateUser(t, "bob")

	t.Run("register without a pending registration, create-node", func(t *testing.T) {
		code, _, stderr := run(t, "-c", cfg, "nodes", "register", "-u", "alice", "-k", "abcdef")
		oneLineError(t, "nodes register", code, stderr, "auth IDs look like hskey-authreq-")
		code, _, stderr = run(t, "-c", cfg, "nodes", "register", "-u", "alice", "-k", "hskey-authreq-0123456789abcdef01234567")
		oneLineError(t, "nodes register of an unknown ID", code, stderr, "no pending registration")
		code, _, stderr = run(t, "-c", cfg, "auth", "register", "-u", "alice", "--auth-id", "hskey-authreq-0123456789abcdef01234567")
		oneLineError(t, "auth register of an unknown ID", code, stderr, "no pending registration")
		code, _, stderr = run(t, "-c", cfg, "nodes", "register", "-u", "alice")
		oneLineError(t, "nodes register without -k", code, stderr, `required flag(s) "key" not set`)
		code, _, stderr = run(t, "-c", cfg, "debug", "create-node", "--name", "x", "-u", "alice", "-k", "abcdef", "-r", "10.0.0.0/8")
		oneLineError(t, "debug create-node", code, stderr, "pre-auth key")
		code, _, stderr = run(t, "-c", cfg, "debug", "create-node", "--name", "x")
		oneLineError(t, "debug create-node without -u -k", code, stderr, "required flag(s)")
	})

	t.Run("register a pending web registration", func(t *testing.T) {
		for _, args := range [][]string{
			{"nodes", "register", "-u", "alice", "-k"},
			{"auth", "register", "--user", "alice", "--auth-id"},
		} {
			c := ts.WebClient(t, key.MachinePrivate{}, "webby")
			id := servertest.AuthID(c.Start(t))
			code, out, stderr := run(t, append(append([]string{"-c", cfg, "-o", "json"}, args...), id)...)
			var node hsNode
			if code != 0 || json.Unmarshal([]byte(out), &node) != nil || node.User == nil || node.User.Name != "alice" ||
				node.RegisterMethod != 2 || !strings.HasPrefix(node.GivenName, "webby") || !strings.Contains(out, "\t\"given_name\": ") {
				t.Errorf("%v: %d %q %q", args, code, out, stderr)
			}
			// Single use.
			code, _, stderr = run(t, append(append([]string{"-c", cfg}, args...), id)...)
			oneLineError(t, "registering twice", code, stderr, "already completed")
		}
		c := ts.WebClient(t, key.MachinePrivate{}, "webby")
		id := servertest.AuthID(c.Start(t))
		code, out, stderr := run(t, "-c", cfg, "nodes", "register", "-u", "alice", "-k", id)
		if code != 0 || !strings.HasPrefix(out, "Node webby") || !strings.HasSuffix(out, " registered\n") {
			t.Errorf("nodes register: %d %q %q", code, out, stderr)
		}
		c = ts.WebClient(t, key.MachinePrivate{}, "webby")
		id = servertest.AuthID(c.Start(t))
		code, _, stderr = run(t, "-c", cfg, "auth", "approve", "--auth-id", id)
		oneLineError(t, "auth approve of a registration", code, stderr, "auth register --auth-id")
		code, out, stderr = run(t, "-c", cfg, "auth", "reject", "--auth-id", id)
		if code != 0 || !strings.Contains(out, "rejected") {
			t.Errorf("auth reject: %d %q %q", code, out, stderr)
		}
	})

	t.Run("move", func(t *testing.T) {
		n := ts.RegisterNode(t, ts.CreatePreAuthKey(t, alice, true, time.Now().Add(time.Hour)), "laptop")
		owner := func(args ...string) (uint64, string) {
			t.Helper()
			code, out, stderr := run(t, append([]string{"-c", cfg, "-o", "json"}, args...)...)
			var node hsNode
			if code != 0 || json.Unmarshal([]byte(out), &node) != nil || node.User == nil {
				t.Fatalf("%v: %d %q %q", args, code, out, stderr)
			}
			if !strings.Contains(out, "\t\"user\": {") {
				t.Errorf("-o json is not Headscale's (tab-indented, snake_case): %s", out)
			}
			return node.User.Id, node.User.Name
		}
		if id, name := owner("nodes", "move", "-i", n.ID, "-u", "bob"); name != "bob" || id != hsID(bob) {
			t.Errorf("move -u bob: owner %d %s", id, name)
		}
		if _, name := owner("nodes", "mv", "--identifier", n.ID, "--user", alice); name != "alice" {
			t.Errorf("mv --user %s: owner %s", alice, name)
		}
		code, out, stderr := run(t, "-c", cfg, "nodes", "move", "-i", n.ID, "-u", "bob")
		if code != 0 || out != "Node moved to another user\n" {
			t.Errorf("table form: %d %q %q", code, out, stderr)
		}
		// YAML keys are the generated Go field names lowercased, as
		// Headscale's yaml.v3 prints its protobuf structs; json-line is one line.
		code, out, stderr = run(t, "-c", cfg, "-o", "yaml", "nodes", "move", "-i", n.ID, "-n", "alice")
		if code != 0 || !strings.Contains(out, "\ngivenname: laptop\n") || !strings.Contains(out, "\n    name: alice\n") {
			t.Errorf("-o yaml with the deprecated -n: %d %q %q", code, out, stderr)
		}
		code, out, _ = run(t, "-c", cfg, "-o", "json-line", "nodes", "mv", "-i", n.ID, "-u", "bob")
		if code != 0 || strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, `{"id":`+n.ID+`,"machine_key":`) {
			t.Errorf("-o json-line: %d %q", code, out)
		}
		code, _, stderr = run(t, "-c", cfg, "nodes", "move", "-i", n.ID)
		oneLineError(t, "move without -u", code, stderr, `required flag(s) "user" not set`)
		code, _, stderr = run(t, "-c", cfg, "nodes", "move", "-i", n.ID, "-u", "nobody")
		oneLineError(t, "move to an unknown user", code, stderr, `user "nobody" not found`)
		if code, _, stderr := run(t, "-c", cfg, "nodes", "tag", "-i", n.ID, "-t", "tag:server"); code != 0 {
			t.Fatal(stderr)
		}
		code, _, stderr = run(t, "-c", cfg, "nodes", "move", "-i", n.ID, "-u", "alice")
		oneLineError(t, "move a tagged node", code, stderr, "is tagged (tag:server)")
	})

	t.Run("preauthkeys expire KEY", func(t *testing.T) {
		key := ts.CreatePreAuthKey(t, alice, true, time.Now().Add(time.Hour))
		code, _, stderr := run(t, "-c", cfg, "preauthkeys", "-u", "bob", "expire", key)
		oneLineError(t, "expire another user's key", code, stderr, "does not belong to user bob")
		for _, args := range [][]string{
			{"preauthkeys", "-u", "alice", "expire", key}, // flag before the verb (persistent, as up to 0.27)
			{"preauthkeys", "expire", key, "-u", alice},   // user by ID, as 0.26–0.27
			{"preauthkeys", "expire", key},                // the key alone
			{"preauthkeys", "-n", "alice", "expire", key}, // -n/--namespace, hidden, as before 0.23
		} {
			if code, out, stderr := run(t, append([]string{"-c", cfg}, args...)...); code != 0 || out != "Key expired\n" {
				t.Errorf("%v: %d %q %q", args, code, out, stderr)
			}
		}
		code, out, _ := run(t, "-c", cfg, "-o", "json", "preauthkeys", "list", "-u", "alice")
		if code != 0 || !strings.Contains(out, `"expiration"`) {
			t.Fatalf("list: %d %s", code, out)
		}
		code, _, stderr = run(t, "-c", cfg, "preauthkeys", "expire", key, "--id", "1")
		oneLineError(t, "KEY and --id", code, stderr, "not both")
	})

	t.Run("apikeys by prefix or id", func(t *testing.T) {
		var listed []hsApiKey
		list := func() {
			code, out, stderr := run(t, "-c", cfg, "-o", "json", "apikeys", "list")
			if code != 0 || json.Unmarshal([]byte(out), &listed) != nil {
				t.Fatalf("list: %d %q %q", code, out, stderr)
			}
		}
		full := ts.CreateAPIKey(t, time.Now().Add(time.Hour))
		ts.CreateAPIKey(t, time.Now().Add(time.Hour))
		list()
		if len(listed) != 2 {
			t.Fatalf("want 2 keys, got %+v", listed)
		}
		bare := strings.TrimSuffix(strings.TrimPrefix(listed[0].Prefix, "hskey-api-"), "-***")
		if !strings.HasPrefix(full, "hskey-api-"+bare+"-") {
			t.Fatalf("listed %+v, created %s…", listed, full[:22])
		}
		for _, args := range [][]string{
			{"apikeys", "expire", "-p", listed[0].Prefix}, // as listed
			{"apikeys", "exp", "--prefix", bare},          // the 12 characters alone
			{"apikeys", "e", "-i", strconv.FormatUint(listed[1].Id, 10)},
		} {
			if code, _, stderr := run(t, append([]string{"-c", cfg}, args...)...); code != 0 {
				t.Errorf("%v: %d %q", args, code, stderr)
			}
		}
		code, _, stderr := run(t, "-c", cfg, "apikeys", "expire", "-p", bare, "-i", strconv.FormatUint(listed[1].Id, 10))
		oneLineError(t, "both -p and -i", code, stderr, "not both")
		if code, _, stderr := run(t, "-c", cfg, "apikeys", "del", "-p", bare+"***"); code != 0 {
			t.Errorf("delete by <prefix>***: %q", stderr)
		}
		if code, _, stderr := run(t, "-c", cfg, "apikeys", "delete", "-i", strconv.FormatUint(listed[1].Id, 10)); code != 0 {
			t.Errorf("delete -i: %q", stderr)
		}
		if list(); len(listed) != 0 {
			t.Errorf("after deleting both: %+v", listed)
		}
	})
}

// TestBackfillIPs: nodes registered while only IPv4 was configured get an
// IPv6 address from `nodes backfillips --force` once prefixes.v6 is set,
// the command prints each change, and a peer's open map session hears of
// the new address. A second run has nothing to do.
func TestBackfillIPs(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir, "prefixes:\n  v6: \"\"\n")
	key := ts.CreatePreAuthKey(t, ts.CreateUser(t, "alice"), true, time.Now().Add(time.Hour))
	watcher := ts.RegisterNode(t, key, "watcher")
	other := ts.RegisterNode(t, key, "other")
	if err := ts.Stop(); err != nil {
		t.Fatal(err)
	}
	ts = startServer(t, dir, "")
	cfg := ts.ConfigPath

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := tsp.NewClient(tsp.ClientOpts{ServerURL: ts.URL, MachineKey: watcher.Machine})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sess, err := c.Map(ctx, tsp.MapOpts{NodeKey: watcher.Key, Stream: true, Hostinfo: &tailcfg.Hostinfo{Hostname: "watcher"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if full, err := sess.Next(); err != nil || len(full.Peers) != 1 || len(full.Peers[0].Addresses) != 1 {
		t.Fatalf("full map before the backfill: %v %+v", err, full)
	}

	code, out, stderr := run(t, "-c", cfg, "nodes", "backfillips", "--force")
	want := regexp.MustCompile(`(?m)^assigned IPv6 "fd7a:115c:a1e0::\d+" to Node\(` + watcher.ID + `\) "watcher"$`)
	if code != 0 || !want.MatchString(out) || !strings.Contains(out, `to Node(`+other.ID+`) "other"`) || !strings.HasSuffix(out, "Node IPs backfilled successfully\n") {
		t.Fatalf("backfill: %d %q %q", code, out, stderr)
	}
	for {
		m, err := sess.Next()
		if err != nil {
			t.Fatalf("waiting for the peer's new address: %v", err)
		}
		if got := peerAddrs(m, other.ID); len(got) == 2 {
			break
		}
	}
	code, out, stderr = run(t, "-c", cfg, "-o", "json", "nodes", "backfillips")
	if code != 0 || out != "{}\n" {
		t.Fatalf("second run: %d %q %q", code, out, stderr)
	}
}

// peerAddrs returns the addresses a map response gives peer id, nil when it
// does not mention it.
func peerAddrs(m *tailcfg.MapResponse, id string) []netip.Prefix {
	for _, p := range append(m.Peers, m.PeersChanged...) {
		if strconv.FormatInt(int64(p.ID), 10) == id {
			return p.Addresses
		}
	}
	return nil
}

// TestRoutesVerbs: `routes list` shows a router's announced prefixes with
// stable IDs and Headscale's columns, enable/disable approve and
// unapprove by ID (an exit route as the pair), the primary shows, -o json
// prints Headscale's Route messages, and delete forgets an ID.
func TestRoutesVerbs(t *testing.T) {
	ts := startServer(t, t.TempDir(), "")
	cfg := ts.ConfigPath
	n := ts.RegisterNode(t, ts.CreatePreAuthKey(t, ts.CreateUser(t, "alice"), true, time.Now().Add(time.Hour)), "router")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hi := &tailcfg.Hostinfo{Hostname: "router", RoutableIPs: []netip.Prefix{netip.MustParsePrefix("10.33.0.0/24"), netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}}
	sess, err := n.Client.Map(ctx, tsp.MapOpts{NodeKey: n.Key, Stream: true, Hostinfo: hi})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if _, err := sess.Next(); err != nil {
		t.Fatal(err)
	}

	routes := func() []hsRoute {
		t.Helper()
		code, out, stderr := run(t, "-c", cfg, "-o", "json", "routes", "list")
		var rs []hsRoute
		if code != 0 || json.Unmarshal([]byte(out), &rs) != nil {
			t.Fatalf("routes list -o json: %d %q %q", code, out, stderr)
		}
		return rs
	}
	ok := func(args ...string) string {
		t.Helper()
		code, out, stderr := run(t, append([]string{"-c", cfg}, args...)...)
		if code != 0 {
			t.Fatalf("%v: %d %q", args, code, stderr)
		}
		return out
	}
	rs := routes()
	if len(rs) != 3 || rs[0].Prefix != "0.0.0.0/0" || rs[1].Prefix != "10.33.0.0/24" || rs[2].Prefix != "::/0" {
		t.Fatalf("routes %+v", rs)
	}
	for _, r := range rs {
		if r.Id == 0 || r.Node == nil || r.Node.GivenName != "router" || !r.Advertised || r.Enabled || r.CreatedAt == nil {
			t.Errorf("route %+v", r)
		}
	}
	exit, subnet := rs[0].Id, rs[1].Id
	ok("routes", "enable", "-r", strconv.FormatUint(subnet, 10))
	ok("r", "enable", "--route", strconv.FormatUint(exit, 10))
	table := ok("routes", "list")
	for _, want := range []string{
		`(?m)^ID\s+Node\s+Prefix\s+Advertised\s+Enabled\s+Primary$`,
		fmt.Sprintf(`(?m)^%d\s+router\s+0\.0\.0\.0/0\s+true\s+true\s+-$`, exit),
		fmt.Sprintf(`(?m)^%d\s+router\s+10\.33\.0\.0/24\s+true\s+true\s+true$`, subnet),
		`(?m)^\d+\s+router\s+::/0\s+true\s+true\s+-$`,
	} {
		if !regexp.MustCompile(want).MatchString(table) {
			t.Errorf("table lacks %s:\n%s", want, table)
		}
	}
	out := ok("-o", "json", "routes", "list", "-i", n.ID)
	if !strings.Contains(out, "\t\t\"is_primary\": true,") || !strings.Contains(out, `"given_name": "router"`) {
		t.Errorf("routes list -i -o json is not Headscale's Route shape:\n%s", out)
	}
	ok("routes", "disable", "-r", strconv.FormatUint(rs[2].Id, 10)) // ::/0 disables both
	for _, r := range routes() {
		if r.Enabled != (r.Id == subnet) {
			t.Errorf("after disabling ::/0: %s enabled=%v", r.Prefix, r.Enabled)
		}
	}
	if out := ok("-o", "json", "routes", "delete", "-r", strconv.FormatUint(subnet, 10)); out != "{}\n" {
		t.Errorf("delete -o json printed %q, want {}", out)
	}
	rs = routes()
	if len(rs) != 3 || rs[1].Id == subnet || rs[1].Enabled {
		t.Errorf("after delete: %+v (still announced: listed again with a new ID)", rs)
	}
	code, _, stderr := run(t, "-c", cfg, "routes", "enable", "-r", strconv.FormatUint(subnet, 10))
	oneLineError(t, "enable a deleted route", code, stderr, "route not found")
	code, _, stderr = run(t, "-c", cfg, "routes", "enable")
	oneLineError(t, "enable without -r", code, stderr, `required flag(s) "route" not set`)
}
