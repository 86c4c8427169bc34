package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/internal/tstest"
)

// TestImportHeadscale: `db import-headscale` on the real Headscale 0.27.1
// database: --dry-run prints the report and writes nothing; without it the
// configured (missing) database is written and the server then lists the
// nodes; a database that holds rows is refused, and so is a running
// server's.
func TestImportHeadscale(t *testing.T) {
	src := tstest.Shared(t, "fixtures/headscale-db/0.27.1-sqlite/db.sqlite")
	dir := t.TempDir()
	cfg := writeConfig(t, "state_dir: "+dir+"\nunix_socket: "+dir+"/hs.sock\npolicy: {mode: database}\n")
	db := filepath.Join(dir, "db.sqlite")

	code, out, stderr := run(t, "-c", cfg, "db", "import-headscale", "--from", src, "--dry-run")
	if code != 0 || !strings.Contains(out, "a Headscale 0.27.1 database") || !strings.Contains(out, "nodes          4     4          0        0") || !strings.Contains(out, "dry run: nothing was written") {
		t.Fatalf("--dry-run: %d %q %q", code, out, stderr)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("--dry-run wrote %v", entries)
	}
	code, out, stderr = run(t, "-c", cfg, "-o", "json", "db", "import-headscale", "--from", src, "--dry-run")
	var rep struct {
		Version string
		Counts  []struct {
			Kind      string
			Read      int
			Converted int
		}
	}
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil || rep.Version != "v0.27.1" || len(rep.Counts) != 6 || rep.Counts[1].Converted != 4 {
		t.Fatalf("--dry-run -o json: %d %v %q %q", code, err, out, stderr)
	}

	code, out, stderr = run(t, "-c", cfg, "db", "import-headscale", "--from", src)
	if code != 0 || !strings.Contains(out, "converted into: "+db) {
		t.Fatalf("import: %d %q %q", code, out, stderr)
	}
	if _, err := os.Stat(db + ".headscale-v0.27.1.report.txt"); err != nil {
		t.Errorf("no report file: %v", err)
	}
	code, _, stderr = run(t, "-c", cfg, "db", "import-headscale", "--from", src)
	if code != 1 || !strings.Contains(stderr, "is not empty") {
		t.Errorf("import into a database with rows: %d %q", code, stderr)
	}

	ts := servertest.Start(t, servertest.Options{Dir: dir, ExtraYAML: "policy: {mode: database}\n"})
	code, out, stderr = run(t, "-c", ts.ConfigPath, "nodes", "list")
	if code != 0 || !strings.Contains(out, "alice-pixel") || !strings.Contains(out, "bob-server") {
		t.Errorf("nodes list after the import: %d %q %q", code, out, stderr)
	}
	code, _, stderr = run(t, "-c", ts.ConfigPath, "db", "import-headscale", "--from", src)
	if code != 1 || !strings.Contains(stderr, "is running") {
		t.Errorf("import while the server runs: %d %q", code, stderr)
	}
}

// TestImportHeadscaleInPlace: --from naming the configured database takes
// it over in place, as the server does at start: the copy is kept beside
// it.
func TestImportHeadscaleInPlace(t *testing.T) {
	src := tstest.Shared(t, "fixtures/headscale-db/0.27.1-sqlite/db.sqlite")
	dir := t.TempDir()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "db.sqlite")
	if err := os.WriteFile(db, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, "state_dir: "+dir+"\nunix_socket: "+dir+"/hs.sock\npolicy: {mode: database}\n")
	code, out, stderr := run(t, "-c", cfg, "-o", "json", "db", "import-headscale", "--from", db)
	var rep struct{ Copy, Database string }
	if err := json.Unmarshal([]byte(out), &rep); code != 0 || err != nil || rep.Copy != db+".headscale-v0.27.1" || rep.Database != db {
		t.Fatalf("in place: %d %v %q %q", code, err, out, stderr)
	}
	if cp, err := os.ReadFile(rep.Copy); err != nil || string(cp) != string(b) {
		t.Errorf("the copy is not the original (%v)", err)
	}
	code, _, stderr = run(t, "-c", cfg, "db", "import-headscale", "--from", db)
	if code != 1 || !strings.Contains(stderr, "not a Headscale database") {
		t.Errorf("again: %d %q", code, stderr)
	}
}
