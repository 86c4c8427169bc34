package hsdb

import (
	"bytes"
	"crypto/sha256"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
)

// buildDB writes the SQL script testdata/<name>.sql into a new SQLite file
// and returns its path.
func buildDB(t testing.TB, name string) string {
	t.Helper()
	script, err := os.ReadFile(filepath.Join("testdata", name+".sql"))
	if err != nil {
		t.Fatal(err)
	}
	return buildFromSQL(t, string(script))
}

func buildFromSQL(t testing.TB, script string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "db.sqlite")
	db, err := sql.Open("sqlite", "file:"+p+"?_pragma=synchronous(0)&_pragma=journal_mode(memory)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(script); err != nil {
		t.Fatalf("building the test database: %v", err)
	}
	return p
}

func fileSum(t testing.TB, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestReadEras reads the synthetic database of each era and checks the
// forms that era stored.
func TestReadEras(t *testing.T) {
	tests := []struct {
		name, release, version                  string
		users, nodes, keys, apiKeys, pols, rtes int
		check                                   func(t *testing.T, s *Snapshot)
	}{
		{"v0.23.0", "0.23.0", "v0.23.0", 3, 7, 2, 1, 2, 5, func(t *testing.T, s *Snapshot) {
			if k := s.PreAuthKeys[1]; !slices.Equal(k.Tags, []string{"tag:ci"}) || !k.Reusable || !k.Ephemeral || k.Used || !k.Expiration.IsZero() {
				t.Errorf("pre-auth key 2 (tags from pre_auth_key_acl_tags, booleans as text) %+v", k)
			}
			if u := s.Users[0]; !u.CreatedAt.Equal(time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)) {
				t.Errorf("user 1 created %v", u.CreatedAt)
			}
			if n := s.Nodes[0]; !n.Expiry.IsZero() || n.LastSeen.IsZero() || !slices.Equal(n.Endpoints, []string{"192.0.2.1:41641"}) {
				t.Errorf("node 1 %+v", n)
			}
			if n := s.Nodes[1]; n.Endpoints != nil || !slices.Equal(n.Tags, []string{"tag:ci"}) || n.AuthKeyID != 2 {
				t.Errorf("node 2 %+v", n)
			}
			if n := s.Nodes[2]; n.LastSeen.Nanosecond() != 123456789 || n.Tags != nil || s.HasApprovedRoutes || !s.HasRoutesTable {
				t.Errorf("node 3 %+v", n)
			}
			if n := s.Nodes[3]; n.DeletedAt.IsZero() {
				t.Errorf("node 4 not deleted: %+v", n)
			}
			if r := s.Routes[4]; r.DeletedAt.IsZero() || !r.Enabled || r.Prefix != "172.16.0.0/16" {
				t.Errorf("route 5 %+v", r)
			}
			if s.Sequences["nodes"] != 9 {
				t.Errorf("sequences %v", s.Sequences)
			}
		}},
		{"v0.25.1", "0.24.3–0.25.1", "v0.25.1", 2, 4, 1, 0, 0, 2, func(t *testing.T, s *Snapshot) {
			if u := s.Users[1]; u.ProviderIdentifier != "https://sso.example.com/alice" || u.Provider != "oidc" || u.ProfilePicURL == "" {
				t.Errorf("user 2 %+v", u)
			}
			if u := s.Users[0]; u.ProviderIdentifier != "" {
				t.Errorf("user 1 %+v", u)
			}
			if k := s.PreAuthKeys[0]; !slices.Equal(k.Tags, []string{"tag:web", "bogus"}) || !k.Used {
				t.Errorf("pre-auth key 1 %+v", k)
			}
		}},
		{"v0.26.1", "0.26.0–0.26.1", "v0.26.1", 1, 2, 0, 0, 0, 0, func(t *testing.T, s *Snapshot) {
			if !s.HasApprovedRoutes || s.HasRoutesTable {
				t.Error("0.26 has approved_routes and no routes table")
			}
			if n := s.Nodes[0]; n.ID != 10 || !slices.Equal(n.ApprovedRoutes, []string{"10.9.0.0/16", "10.9.0.0/16"}) || n.Tags != nil || n.IPv6 != "" {
				t.Errorf("node 10 %+v", n)
			}
			if n := s.Nodes[1]; n.ApprovedRoutes != nil || n.Endpoints != nil || n.Tags != nil || !n.Expiry.IsZero() {
				t.Errorf("node 11 %+v", n)
			}
		}},
		{"v0.28.0", "0.28.0", "v0.28.0", 1, 2, 2, 1, 1, 0, func(t *testing.T, s *Snapshot) {
			if k := s.PreAuthKeys[0]; k.Prefix != "Ab-cD_ef0123" || !bytes.HasPrefix(k.Hash, []byte("$2a$04$")) || k.Key != "" || k.UserID != 0 {
				t.Errorf("pre-auth key 1 %+v", k)
			}
			if k := s.PreAuthKeys[1]; len(k.Key) != 48 || k.Prefix != "" {
				t.Errorf("pre-auth key 2 %+v", k)
			}
			if n := s.Nodes[0]; !slices.Equal(n.Tags, []string{"tag:db"}) || n.UserID != 1 {
				t.Errorf("node 1 (tags column) %+v", n)
			}
		}},
		{"v0.29.2", "0.29.1–0.29.2", "v0.29.2", 1, 3, 1, 1, 1, 0, func(t *testing.T, s *Snapshot) {
			if s.Database.Version != "v0.29.2" {
				t.Errorf("version %q", s.Database.Version)
			}
			if n := s.Nodes[0]; n.UserID != 0 || !slices.Equal(n.Tags, []string{"tag:a"}) || !n.Expiry.IsZero() {
				t.Errorf("node 1 %+v", n)
			}
			if k := s.APIKeys[0]; !k.Expiration.IsZero() || k.LastSeen.IsZero() {
				t.Errorf("API key %+v", k)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := buildDB(t, tt.name)
			before := fileSum(t, path)
			s, err := Read(t.Context(), path)
			if err != nil {
				t.Fatal(err)
			}
			if s.Database.Release != tt.release || s.Database.VersionName() != tt.version {
				t.Errorf("release %q (%s), want %q (%s)", s.Database.Release, s.Database.VersionName(), tt.release, tt.version)
			}
			if len(s.Users) != tt.users || len(s.Nodes) != tt.nodes || len(s.PreAuthKeys) != tt.keys || len(s.APIKeys) != tt.apiKeys || len(s.Policies) != tt.pols || len(s.Routes) != tt.rtes {
				t.Errorf("read users %d nodes %d keys %d api keys %d policies %d routes %d", len(s.Users), len(s.Nodes), len(s.PreAuthKeys), len(s.APIKeys), len(s.Policies), len(s.Routes))
			}
			tt.check(t, s)
			if fileSum(t, path) != before {
				t.Error("Read changed the file")
			}
			if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
				t.Errorf("Read left files beside the database: %v", entries)
			}
		})
	}
}

// TestReadFixture reads the database a real Headscale 0.27.1 wrote.
func TestReadFixture(t *testing.T) {
	src := tstest.Shared(t, "fixtures/headscale-db/0.27.1-sqlite/db.sqlite")
	s, err := Read(t.Context(), src)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Users) != 3 || len(s.Nodes) != 4 || len(s.PreAuthKeys) != 5 || len(s.APIKeys) != 1 || len(s.Policies) != 1 || s.HasRoutesTable || !s.HasApprovedRoutes {
		t.Errorf("counts %v", s.Counts)
	}
	if n := s.Nodes[2]; !slices.Equal(n.Tags, []string{"tag:server"}) || !slices.Equal(n.ApprovedRoutes, []string{"0.0.0.0/0", "10.33.0.0/24", "::/0"}) || !n.Expiry.IsZero() || n.UserID != 2 {
		t.Errorf("bob-server %+v", n)
	}
	if n := s.Nodes[0]; n.ApprovedRoutes != nil || n.LastSeen.Nanosecond() != 260455291 {
		t.Errorf("alice-laptop %+v", n)
	}
	if k := s.APIKeys[0]; k.Prefix != "fND2Ksx" || !bytes.HasPrefix(k.Hash, []byte("$2a$10$")) {
		t.Errorf("API key %+v", k)
	}
}

// TestReadRefuses: what cannot be taken over is refused with a message
// naming what was found, and the file is left as it was.
func TestReadRefuses(t *testing.T) {
	v027 := func(t *testing.T) string {
		return "CREATE TABLE migrations(id text PRIMARY KEY);" + migrationInserts(idsUpTo("0.27.1", ""))
	}
	tests := []struct {
		name  string
		build func(t *testing.T) string
		want  string
	}{
		{"truncated", func(t *testing.T) string {
			p := buildDB(t, "v0.26.1")
			b, _ := os.ReadFile(p)
			os.WriteFile(p, b[:len(b)/2+100], 0o600)
			return p
		}, ""},
		{"damaged page", func(t *testing.T) string {
			p := buildDB(t, "v0.23.0")
			b, _ := os.ReadFile(p)
			for page := 4096; page+8 < len(b); page += 4096 { // every page header but the first
				copy(b[page:page+8], []byte{0x0d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
			}
			os.WriteFile(p, b, 0o600)
			return p
		}, ""},
		{"newer than 0.29", func(t *testing.T) string {
			s, _ := os.ReadFile("testdata/v0.29.2.sql")
			return buildFromSQL(t, string(s)+"INSERT INTO migrations VALUES('202701010000-from-the-future');")
		}, "202701010000-from-the-future"},
		{"older than 0.23", func(t *testing.T) string {
			return buildFromSQL(t, "CREATE TABLE machines(id integer primary key); CREATE TABLE namespaces(id integer primary key); CREATE TABLE pre_auth_keys(id integer primary key);")
		}, "older than 0.23"},
		{"missing column", func(t *testing.T) string {
			s, _ := os.ReadFile("testdata/v0.26.1.sql")
			return buildFromSQL(t, string(s)+"ALTER TABLE nodes DROP COLUMN machine_key;")
		}, "lacks the column(s) machine_key"},
		{"missing table", func(t *testing.T) string {
			return buildFromSQL(t, v027(t)+"CREATE TABLE users(id integer primary key, name text, created_at datetime); CREATE TABLE nodes(id integer primary key);")
		}, "table pre_auth_keys is missing"},
		{"unreadable time", func(t *testing.T) string {
			s, _ := os.ReadFile("testdata/v0.26.1.sql")
			return buildFromSQL(t, strings.Replace(string(s), "'2025-06-01 10:00:00+00:00','2025-06-01 10:00:00+00:00',NULL,'dana'", "'yesterday','2025-06-01 10:00:00+00:00',NULL,'dana'", 1))
		}, `users row 4, column created_at: "yesterday" is not a time`},
		{"unreadable tags", func(t *testing.T) string {
			s, _ := os.ReadFile("testdata/v0.26.1.sql")
			return buildFromSQL(t, strings.Replace(string(s), "'cli','null'", "'cli','tag:a,tag:b'", 1))
		}, "nodes row 10, column forced_tags"},
		{"not Headscale", func(t *testing.T) string {
			return buildFromSQL(t, "CREATE TABLE things(id integer primary key);")
		}, "not a Headscale database"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.build(t)
			before := fileSum(t, path)
			_, err := Read(t.Context(), path)
			if err == nil || !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Read = %v, want a refusal naming %q", err, tt.want)
			}
			t.Log(err)
			if fileSum(t, path) != before {
				t.Error("the refused file changed")
			}
		})
	}
}

func migrationInserts(ids []string) string {
	var b strings.Builder
	for _, id := range ids {
		b.WriteString("INSERT INTO migrations VALUES('" + id + "');")
	}
	return b.String()
}

// TestParseTime: the time forms the SQLite drivers Headscale used wrote.
func TestParseTime(t *testing.T) {
	want := time.Date(2026, 12, 6, 18, 9, 59, 260455291, time.UTC)
	for _, s := range []string{
		"2026-12-06 18:09:59.260455291+00:00",
		"2026-12-06T18:09:59.260455291Z",
		"2026-12-06 20:09:59.260455291+02:00",
		"2026-12-06 18:09:59.260455291 +0000 UTC",
		"2026-12-06 18:09:59.260455291 +0000 UTC m=+0.000000001",
		"2026-12-06 18:09:59.260455291",
	} {
		got, err := ParseTime(s)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseTime(%q) = %v, %v", s, got, err)
		}
	}
	for _, s := range []string{"", "null", "0001-01-01 00:00:00+00:00", "0001-01-01T00:00:00Z", "1899-12-31 00:00:00+00:00", "0"} {
		if got, err := ParseTime(s); err != nil || !got.IsZero() {
			t.Errorf("ParseTime(%q) = %v, %v; want the zero time", s, got, err)
		}
	}
	if _, err := ParseTime("soon"); err == nil {
		t.Error("ParseTime(soon) succeeded")
	}
}

// TestParseList: every form of an empty list, and a real one.
func TestParseList(t *testing.T) {
	for _, s := range []string{"", "null", "[]", " [ ] ", `[""]`} {
		if l, err := ParseList(s); err != nil || l != nil {
			t.Errorf("ParseList(%q) = %v, %v", s, l, err)
		}
	}
	if l, err := ParseList(`["tag:a", "tag:b"]`); err != nil || !slices.Equal(l, []string{"tag:a", "tag:b"}) {
		t.Errorf("ParseList = %v, %v", l, err)
	}
	if _, err := ParseList("tag:a"); err == nil {
		t.Error("ParseList(tag:a) succeeded")
	}
}
