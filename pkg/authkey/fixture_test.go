package authkey

import (
	"database/sql"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/hsctl/headscale/internal/tstest"

	_ "modernc.org/sqlite"
)

// TestHeadscaleFixtureKeys checks the keys a real Headscale 0.27.1 handed
// out against what its database holds: the API key the manifest records
// verifies against the bcrypt hash in api_keys, and every plaintext
// pre-auth key, stored the way the importer stores it (LegacyAuth), is
// accepted when its holder presents it. The fixture is opened read-only
// and left unchanged.
func TestHeadscaleFixtureKeys(t *testing.T) {
	dir := tstest.Shared(t, "fixtures/headscale-db/0.27.1-sqlite")
	manifest, err := os.ReadFile(filepath.Join(dir, "MANIFEST.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("Plaintext key printed by `apikeys create`: `([^`]+)`").FindSubmatch(manifest)
	if m == nil {
		t.Fatal("MANIFEST.md records no API key plaintext")
	}
	apiKey := string(m[1])

	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "db.sqlite")+"?mode=ro&immutable=1")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	prefix, secret, err := Parse(KindAPI, apiKey)
	if err != nil {
		t.Fatalf("the fixture's API key %q does not parse: %v", apiKey, err)
	}
	var hash []byte
	if err := db.QueryRow(`SELECT hash FROM api_keys WHERE prefix = ?`, prefix).Scan(&hash); err != nil {
		t.Fatalf("api_keys row for prefix %q: %v", prefix, err)
	}
	if !IsBcrypt(hash) || !Verify(hash, secret) {
		t.Fatalf("the fixture's API key does not verify against its stored hash %.7q...", hash)
	}
	if Verify(hash, secret[1:]+"A") {
		t.Fatal("a wrong secret verified against the fixture's hash")
	}
	if got := Redacted(KindAPI, prefix); got != "fND2Ksx***" {
		t.Errorf("listed as %q, Headscale 0.29 lists it as fND2Ksx***", got)
	}

	rows, err := db.Query(`SELECT key FROM pre_auth_keys ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var plain string
		if err := rows.Scan(&plain); err != nil {
			t.Fatal(err)
		}
		storedPrefix, storedHash, err := LegacyAuth(plain)
		if err != nil {
			t.Fatalf("pre-auth key %d: %v", n+1, err)
		}
		p, s, err := Parse(KindAuth, plain)
		if err != nil || p != storedPrefix || !Verify(storedHash, s) {
			t.Fatalf("pre-auth key %d as its holder presents it is not accepted (%v)", n+1, err)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 5 {
		t.Fatalf("read %d pre-auth keys, the manifest lists 5", n)
	}
}
