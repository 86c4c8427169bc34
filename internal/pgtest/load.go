package pgtest

import (
	"context"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// LoadSQL runs the SQL script at path (a pg_dump plain-text dump, say) in
// db with psql, stopping at the first error; it fails tb when psql fails
// and skips it when psql is not installed (it comes with Debian's
// postgresql-client, which the postgresql package depends on).
func (c *Cluster) LoadSQL(tb testing.TB, db Database, path string) {
	tb.Helper()
	psql, err := exec.LookPath("psql")
	if err != nil {
		if bin, ferr := findBinaries(); ferr == nil && isExec(filepath.Join(bin, "psql")) {
			psql, err = filepath.Join(bin, "psql"), nil
		}
	}
	if err != nil {
		tb.Skipf("pgtest: psql is not installed, so %s cannot be loaded", path)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, psql, "-X", "-q", "-v", "ON_ERROR_STOP=1",
		"-h", db.Host, "-p", strconv.Itoa(db.Port), "-U", db.User, "-d", db.Name, "-f", path)
	cmd.Env = []string{"PGCONNECT_TIMEOUT=10"}
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("pgtest: loading %s: %v\n%s", path, err, out)
	}
}
