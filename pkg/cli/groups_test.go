package cli

import (
	"bytes"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/hsctl/headscale/pkg/api"
	"github.com/hsctl/headscale/pkg/server"
	"github.com/hsctl/headscale/pkg/store"
)

// TestUsersListShowsProviderGroups: groups stored with a user (as an OIDC
// login stores them) are shown by `users list`, in the table (a last
// column, only when some user has groups) and in -o json (provider_groups,
// beside Headscale's fields), and by the REST API (providerGroups).
func TestUsersListShowsProviderGroups(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir, "")
	cli := func(args ...string) string {
		t.Helper()
		code, out, stderr := run(t, append([]string{"-c", ts.ConfigPath}, args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, stderr)
		}
		return out
	}
	cli("users", "create", "alice", "-e", "alice@example.com")
	cli("users", "create", "bob")
	if header, _, _ := strings.Cut(cli("users", "list"), "\n"); strings.Contains(header, "Groups") {
		t.Errorf("no user has groups, yet the table has a Groups column: %q", header)
	}

	// Store alice's groups the way a login does, while the server is
	// down, and start it again on the same database.
	if err := ts.Stop(); err != nil {
		t.Fatal(err)
	}
	opts, err := server.StoreOptions(ts.Config)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	alice, err := st.GetUserByName(t.Context(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.SetUserGroups(t.Context(), alice.ID, []string{"/vpn-admins", "eng"}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	ts = startServer(t, dir, "")

	table := cli("users", "list")
	lines := strings.Split(strings.TrimSpace(table), "\n")
	cols := func(l string) []string { return regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(l), -1) }
	if got := cols(lines[0]); !slices.Equal(got, []string{"ID", "Name", "Username", "Email", "Created", "Groups"}) {
		t.Errorf("columns %q", got)
	}
	if len(lines) != 3 || !strings.HasSuffix(lines[1], "/vpn-admins,eng") || !strings.Contains(lines[1], "alice") {
		t.Errorf("table:\n%s", table)
	}

	var users []map[string]any
	if err := json.Unmarshal([]byte(cli("users", "list", "-o", "json")), &users); err != nil {
		t.Fatal(err)
	}
	if len(users) != 2 || !reflectEqualJSON(users[0]["provider_groups"], []any{"/vpn-admins", "eng"}) || users[0]["name"] != "alice" || users[0]["email"] != "alice@example.com" {
		t.Errorf("users list -o json: %v", users)
	}
	if _, ok := users[1]["provider_groups"]; ok {
		t.Errorf("a user without groups has provider_groups: %v", users[1])
	}

	var rest struct {
		Users []api.User `json:"users"`
	}
	if err := json.Unmarshal(ts.MustAPI(t, "GET", "/api/v1/user?name=alice", ""), &rest); err != nil {
		t.Fatal(err)
	}
	if len(rest.Users) != 1 || !slices.Equal(rest.Users[0].ProviderGroups, []string{"/vpn-admins", "eng"}) {
		t.Errorf("REST user: %+v", rest.Users)
	}
	body := ts.MustAPI(t, "GET", "/api/v1/user?name=bob", "")
	if !bytes.Contains(body, []byte(`"providerGroups":[]`)) {
		t.Errorf("REST user without groups: %s", body)
	}
}

func reflectEqualJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}
