package hsimport_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/keyfile"
	"tailscale.com/tailcfg"
)

// TestServerTakesOverFixture starts a real server on a copy of the
// Headscale 0.27.1 deployment (database and key files where the config
// names them): it converts the database, keeps the key files as they are,
// serves Headscale's Noise key, and lists the nodes Headscale had.
func TestServerTakesOverFixture(t *testing.T) {
	fix := tstest.Shared(t, "fixtures/headscale-db/0.27.1-sqlite")
	dir := t.TempDir()
	for _, f := range []string{"db.sqlite", "noise_private.key", "derp_server_private.key"} {
		b, err := os.ReadFile(filepath.Join(fix, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	noiseBefore, _ := os.ReadFile(filepath.Join(dir, "noise_private.key"))
	noiseInfo, _ := os.Stat(filepath.Join(dir, "noise_private.key"))
	ts := servertest.Start(t, servertest.Options{Dir: dir, ExtraYAML: `
policy: {mode: database}
prefixes: {v4: 100.64.0.0/10, v6: "fd7a:115c:a1e0::/48"}
dns: {magic_dns: true, base_domain: example.test}
`})

	for _, kind := range []string{"users", "nodes", "pre-auth keys", "API keys", "policies", "routes"} {
		if !strings.Contains(ts.Logs(), " kind="+textValue(kind)+" read=") {
			t.Errorf("no import log line for %s", kind)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "db.sqlite.headscale-v0.27.1")); err != nil {
		t.Errorf("no copy of the original: %v", err)
	}

	// The Noise key: Headscale's, read as it is, the file not rewritten.
	noise, err := keyfile.MachineKey(filepath.Join(fix, "noise_private.key"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(ts.URL + "/key?v=88")
	if err != nil {
		t.Fatal(err)
	}
	var kr tailcfg.OverTLSPublicKeyResponse
	err = json.NewDecoder(resp.Body).Decode(&kr)
	resp.Body.Close()
	if err != nil || kr.PublicKey != noise.Public() {
		t.Errorf("/key = %v (%v), want the fixture's %v", kr.PublicKey, err, noise.Public())
	}
	noiseAfter, _ := os.ReadFile(filepath.Join(dir, "noise_private.key"))
	info, _ := os.Stat(filepath.Join(dir, "noise_private.key"))
	if !bytes.Equal(noiseAfter, noiseBefore) || !info.ModTime().Equal(noiseInfo.ModTime()) {
		t.Error("noise_private.key was rewritten")
	}

	// nodes list through the API.
	var list struct {
		Nodes []struct {
			ID          string   `json:"id"`
			GivenName   string   `json:"givenName"`
			IPAddresses []string `json:"ipAddresses"`
			Tags        []string `json:"tags"`
			User        *struct {
				Name string `json:"name"`
			} `json:"user"`
			ApprovedRoutes []string `json:"approvedRoutes"`
		} `json:"nodes"`
	}
	if err := json.Unmarshal(ts.MustAPI(t, "GET", "/api/v1/node", ""), &list); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range list.Nodes {
		user := ""
		if n.User != nil {
			user = n.User.Name
		}
		got = append(got, strings.Join([]string{n.ID, n.GivenName, strings.Join(n.IPAddresses, ","), user, strings.Join(n.Tags, ","), strings.Join(n.ApprovedRoutes, ",")}, " "))
	}
	want := []string{
		"1 alice-laptop 100.64.0.1,fd7a:115c:a1e0::1 alice  ",
		"2 alice-pixel 100.64.0.2,fd7a:115c:a1e0::2 alice  ",
		"3 bob-server 100.64.0.3,fd7a:115c:a1e0::3 tagged-devices tag:server 0.0.0.0/0,10.33.0.0/24,::/0",
		"4 bob-laptop 100.64.0.4,fd7a:115c:a1e0::4 bob  ",
	}
	if !slices.Equal(got, want) {
		t.Errorf("nodes list:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// The policy is in force from the database.
	if body := string(ts.MustAPI(t, "GET", "/api/v1/policy", "")); !strings.Contains(body, "tag:server") {
		t.Errorf("policy: %s", body)
	}

	// Keys Headscale handed out: the operator's API key authenticates, the
	// reusable legacy pre-auth key registers a new node (ID 5: Headscale
	// had used 1-4).
	ts.NoteSecret("fND2Ksx.-F2_-Ebss_BplKFE8ByMRSZ6JDNEep3n")
	ts.NoteSecret("2b196a5ee1110735e7f9c274eef6850790ebc08ba9d5f15d")
	req, _ := http.NewRequest("GET", ts.URL+"/api/v1/user", nil)
	req.Header.Set("Authorization", "Bearer fND2Ksx.-F2_-Ebss_BplKFE8ByMRSZ6JDNEep3n")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the fixture's API key: %s", resp.Status)
	}
	if n := ts.RegisterNode(t, "2b196a5ee1110735e7f9c274eef6850790ebc08ba9d5f15d", "newcomer"); n.ID != "5" {
		t.Errorf("new node %s, want 5", n.ID)
	}

	// A restart finds this server's own database: nothing more happens.
	if err := ts.Stop(); err != nil {
		t.Fatal(err)
	}
	ts2 := servertest.Start(t, servertest.Options{Dir: dir, ExtraYAML: `policy: {mode: database}`})
	if strings.Contains(ts2.Logs(), "headscale import") {
		t.Error("the restart imported again")
	}
	if entries, _ := filepath.Glob(filepath.Join(dir, "db.sqlite.headscale-*")); len(entries) != 2 {
		t.Errorf("files %v, want the copy and its report", entries)
	}
}

// textValue is how slog's text handler writes a string value.
func textValue(s string) string {
	if strings.ContainsAny(s, " =\"") {
		return strconv.Quote(s)
	}
	return s
}
