//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/knottest"
	"github.com/hsctl/headscale/internal/tstest"
	"tailscale.com/cmd/tailscale/cli/jsonoutput"
)

// Addresses of the test's Knot servers, on the namespace's loopback (all
// of 127.0.0.0/8 is there), apart from anything else a test binds.
const (
	splitNS  = "127.0.53.1" // authoritative for corp.e2e.test: the split-DNS route
	globalNS = "127.0.53.2" // authoritative for outside.e2e.test: the global nameserver
)

// TestDNSSettings checks the dns section on real clients, each key as
// `tailscale dns status` shows it and as the client's own resolver
// (`tailscale dns query`, which asks 100.100.100.100 inside tailscaled)
// answers: a MagicDNS name, an extra record, a name under the split
// domain answered by the Knot server of its route, a name outside every
// route answered by the global nameserver (override_local_dns), the
// search domains. Then the extra records file changes under the running
// server, without SIGHUP: a new record answers on both clients within a
// deadline; a broken file is refused in the server log (file, line,
// reason), by the watcher and by a SIGHUP, and a deleted one is logged,
// the records in force answering meanwhile.
func TestDNSSettings(t *testing.T) {
	env := requireEnv(t)
	if !env.NetNS {
		t.Skip("binds port 53 on 127.0.53.x: needs the e2e network namespace")
	}
	// Knot DNS (internal/knottest) on port 53: a nameserver in the config
	// is an address, port 53 implied.
	knottest.Start(t, "corp.e2e.test", knottest.Options{Host: splitNS, Port: 53, Records: []string{"db A 10.1.2.3"}})
	knottest.Start(t, "outside.e2e.test", knottest.Options{Host: globalNS, Port: 53, Records: []string{"www A 10.9.9.9"}})
	records := filepath.Join(t.TempDir(), "records.json")
	writeRecords(t, records, `[{"name": "grafana.tailnet.test", "type": "A", "value": "100.64.0.77"}]`)

	srv := StartServer(t, ServerOptions{DNSExtra: fmt.Sprintf(`  override_local_dns: true
  nameservers:
    global: [%s]
    split:
      corp.e2e.test: [%s]
  search_domains: [corp.e2e.test, lab.e2e.test]
  extra_records_path: %s
`, globalNS, splitNS, records)})
	srv.CreateUser(t, "alice")
	key := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true})
	a, b := startPair(t, srv, key.Key, NodeOptions{})

	// What the client shows is what the config says.
	st := dnsStatus(t, a)
	want := &jsonoutput.DNSStatusResult{
		TailscaleDNS: true,
		CurrentTailnet: &jsonoutput.DNSTailnetInfo{
			MagicDNSEnabled: true, MagicDNSSuffix: "tailnet.test", SelfDNSName: "node-a.tailnet.test.",
		},
		Resolvers:      []jsonoutput.DNSResolverInfo{{Addr: globalNS}},
		SplitDNSRoutes: map[string][]jsonoutput.DNSResolverInfo{"corp.e2e.test": {{Addr: splitNS}}},
		SearchDomains:  []string{"corp.e2e.test", "lab.e2e.test", "tailnet.test"},
		ExtraRecords:   []jsonoutput.DNSExtraRecord{{Name: "grafana.tailnet.test", Type: "A", Value: "100.64.0.77"}},
	}
	checkDNSStatus(t, st, want)
	text, err := a.CLI(30*time.Second, "dns", "status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"MagicDNS: enabled tailnet-wide (suffix = tailnet.test)",
		"  - " + globalNS + "\n",
		fmt.Sprintf("  - %-30s -> %s\n", "corp.e2e.test", splitNS),
		"  - lab.e2e.test\n",
	} {
		if !strings.Contains(text, line) {
			t.Errorf("tailscale dns status lacks %q:\n%s", line, text)
		}
	}

	// The client's resolver answers: MagicDNS names and the extra record
	// itself, the split domain through its route's server, the rest
	// through the global nameserver.
	for _, q := range []struct {
		name, want string
		via        []string // the resolvers the query went to; nil: answered inside the client (the CLI then lists the default route's)
	}{
		{"node-b.tailnet.test", b.IPv4().String(), nil},
		{"node-a.tailnet.test", a.IPv4().String(), nil},
		{"grafana.tailnet.test", "100.64.0.77", nil},
		{"db.corp.e2e.test", "10.1.2.3", []string{splitNS}},
		{"www.outside.e2e.test", "10.9.9.9", []string{globalNS}},
	} {
		res, err := dnsQuery(a, q.name)
		if err != nil {
			t.Fatal(err)
		}
		if got := answersA(res); !slices.Equal(got, []string{q.want}) {
			t.Errorf("dns query %s: answers %v (%s), want [%s]", q.name, got, res.ResponseCode, q.want)
		}
		var via []string
		for _, r := range res.Resolvers {
			via = append(via, r.Addr)
		}
		if q.via != nil && !slices.Equal(via, q.via) {
			t.Errorf("dns query %s: went to %v, want %v", q.name, via, q.via)
		}
	}

	// A record added to the file reaches both clients without SIGHUP.
	start := time.Now()
	writeRecords(t, records, `[{"name": "grafana.tailnet.test", "type": "A", "value": "100.64.0.77"},
 {"name": "prometheus.tailnet.test", "type": "A", "value": "100.64.0.78"}]`)
	for _, n := range []*Node{a, b} {
		waitAnswer(t, n, "prometheus.tailnet.test", "100.64.0.78", 20*time.Second)
	}
	t.Logf("a record added to the file answered on both clients %v after the write", time.Since(start).Round(time.Millisecond))

	// A broken file is refused, named in the log with its line; the
	// records in force still answer.
	writeRecords(t, records, "[\n  {\"name\": \"x.tailnet.test\", \"type\": \"A\" \"value\": \"100.64.0.79\"}\n]")
	tstest.WaitFor(t, 20*time.Second, "the broken records file refused in the server log", func() error {
		return srv.logContains(`extra DNS records file refused, the records in force stay" file=` + records + ` err="` + records + ":2:")
	})
	// SIGHUP reads it too, and says so.
	srv.Reload(t)
	tstest.WaitFor(t, 20*time.Second, "the broken records file refused by the reload", func() error {
		return srv.logContains(`reload failed; the running configuration stays in force" err="extra DNS records not reloaded, the ones in force stay: ` + records + ":2:")
	})
	// Deleted: logged, the records stay.
	if err := os.Remove(records); err != nil {
		t.Fatal(err)
	}
	tstest.WaitFor(t, 20*time.Second, "the deleted records file in the server log", func() error {
		return srv.logContains(`the extra DNS records file is gone; the records in force stay until it is back" file=` + records)
	})
	for _, n := range []*Node{a, b} {
		waitAnswer(t, n, "prometheus.tailnet.test", "100.64.0.78", 5*time.Second)
		waitAnswer(t, n, "grafana.tailnet.test", "100.64.0.77", 5*time.Second)
	}
	if st := dnsStatus(t, b); len(st.ExtraRecords) != 2 {
		t.Errorf("records on node-b after a broken and a deleted file: %+v, want the 2 in force", st.ExtraRecords)
	}
}

// TestDNSWithoutOverride: without override_local_dns the global
// nameservers reach clients as fallback resolvers only, and without
// MagicDNS nodes keep their names under base_domain (the first search
// domain), as with Headscale; `tailscale dns status` says so.
func TestDNSWithoutOverride(t *testing.T) {
	srv := StartServer(t, ServerOptions{DNSExtra: `  magic_dns: false
  override_local_dns: false
  nameservers:
    global: [9.9.9.9, "https://dns.example.test/dns-query"]
  search_domains: [lab.e2e.test]
`})
	srv.CreateUser(t, "alice")
	key := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{})
	n := StartNode(t, srv, "node-c", NodeOptions{})
	n.MustUp(key.Key)
	checkDNSStatus(t, dnsStatus(t, n), &jsonoutput.DNSStatusResult{
		TailscaleDNS: true,
		CurrentTailnet: &jsonoutput.DNSTailnetInfo{
			MagicDNSEnabled: false, MagicDNSSuffix: "tailnet.test", SelfDNSName: "node-c.tailnet.test.",
		},
		FallbackResolvers: []jsonoutput.DNSResolverInfo{{Addr: "9.9.9.9"}, {Addr: "https://dns.example.test/dns-query"}},
		SearchDomains:     []string{"lab.e2e.test", "tailnet.test"},
	})
	text, err := n.CLI(30*time.Second, "dns", "status", "--all")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"MagicDNS: disabled tailnet-wide.",
		"(no resolvers configured, system default will be used",
		"(no routes configured: split DNS disabled)",
		"  0: 9.9.9.9\n",
		"  1: https://dns.example.test/dns-query\n",
	} {
		if !strings.Contains(text, line) {
			t.Errorf("tailscale dns status --all lacks %q:\n%s", line, text)
		}
	}
}

// checkDNSStatus compares the parts of `tailscale dns status --json` the
// dns section decides: not the host's own DNS configuration, nor the
// certificate domains (`tailscale cert`).
func checkDNSStatus(t *testing.T, got, want *jsonoutput.DNSStatusResult) {
	t.Helper()
	got.SystemDNS, got.SystemDNSError, got.CertDomains = nil, "", nil
	if len(got.SplitDNSRoutes) == 0 {
		got.SplitDNSRoutes = nil // the CLI always makes the map
	}
	if !reflect.DeepEqual(got, want) {
		g, _ := json.MarshalIndent(got, "", "  ")
		w, _ := json.MarshalIndent(want, "", "  ")
		t.Errorf("tailscale dns status --json:\n%s\nwant:\n%s", g, w)
	}
}

// dnsStatus runs `tailscale dns status --json` on n.
func dnsStatus(t *testing.T, n *Node) *jsonoutput.DNSStatusResult {
	t.Helper()
	out, stderr, err := runCmd(30*time.Second, n.env.Tailscale, "--socket", n.Socket, "dns", "status", "--json")
	if err != nil {
		t.Fatalf("%s: tailscale dns status --json: %v: %s", n.Name, err, stderr)
	}
	st := new(jsonoutput.DNSStatusResult)
	if err := json.Unmarshal([]byte(out), st); err != nil {
		t.Fatalf("%s: decoding dns status: %v\n%s", n.Name, err, out)
	}
	return st
}

// dnsQuery asks n's own resolver for name's A records (`tailscale dns
// query --json`).
func dnsQuery(n *Node, name string) (*jsonoutput.DNSQueryResult, error) {
	out, stderr, err := runCmd(30*time.Second, n.env.Tailscale, "--socket", n.Socket, "dns", "query", "--json", name, "A")
	if err != nil {
		return nil, fmt.Errorf("%s: tailscale dns query %s: %v: %s", n.Name, name, err, strings.TrimSpace(out+stderr))
	}
	res := new(jsonoutput.DNSQueryResult)
	if err := json.Unmarshal([]byte(out), res); err != nil {
		return nil, fmt.Errorf("%s: decoding dns query: %v\n%s", n.Name, err, out)
	}
	return res, nil
}

// answersA lists the A answers' addresses.
func answersA(res *jsonoutput.DNSQueryResult) []string {
	var got []string
	for _, a := range res.Answers {
		if a.Type == "TypeA" {
			got = append(got, a.Body)
		}
	}
	return got
}

// waitAnswer waits until n's resolver answers name with exactly addr.
func waitAnswer(t *testing.T, n *Node, name, addr string, within time.Duration) {
	t.Helper()
	tstest.WaitFor(t, within, fmt.Sprintf("%s to answer %s with %s", n.Name, name, addr), func() error {
		res, err := dnsQuery(n, name)
		if err != nil {
			return err
		}
		if got := answersA(res); !slices.Equal(got, []string{addr}) {
			return fmt.Errorf("answers %v (%s)", got, res.ResponseCode)
		}
		return nil
	})
}

// writeRecords replaces the records file as an editor does: a new file
// renamed over the old one.
func writeRecords(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
