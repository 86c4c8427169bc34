package deb

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPreinstEngines runs preinst's upgrade path with its paths moved into
// a temporary directory and runuser, getent and the old headscale binary
// replaced by fakes: on SQLite without a database file nothing is backed
// up; on PostgreSQL the old binary's backup runs although there is no
// file, and its refusal of PostgreSQL (an old build) warns without
// stopping the upgrade, while any other failure stops it.
func TestPreinstEngines(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	b, err := os.ReadFile(filepath.Join(repoRoot, PreinstPath))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, config, backup string // backup: the fake binary's backup command (shell)
		wantCode             int
		want, notWant        string
	}{
		{name: "sqlite without a database", config: "database:\n  type: sqlite\n", backup: "exit 9",
			want: "no database at", notWant: "backing up"},
		{name: "postgres backed up", config: "database:\n  type: postgres\n  postgres:\n    host: /run/postgresql\n",
			backup: `echo "backup written: $4 (100 bytes, integrity ok)"`, want: "pre-upgrade backup saved as"},
		{name: "postgres refused by an old binary", config: "database:\n  type: \"postgres\"\n",
			backup: `echo "Error: backup supports database.type sqlite; for postgres use its own tools (pg_dump)" >&2; exit 1`,
			want:   "NO pre-upgrade backup was taken"},
		{name: "postgres backup fails", config: "database:\n  type: postgres\n",
			backup: `echo "Error: open store: connection refused" >&2; exit 1`, wantCode: 1,
			want: "the database is still the PostgreSQL database named in"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			bin := filepath.Join(dir, "bin")
			if err := os.Mkdir(bin, 0o755); err != nil {
				t.Fatal(err)
			}
			write := func(p, body string, mode os.FileMode) {
				t.Helper()
				if err := os.WriteFile(p, []byte(body), mode); err != nil {
					t.Fatal(err)
				}
			}
			write(filepath.Join(bin, "runuser"), "#!/bin/sh\nshift 3\nexec \"$@\"\n", 0o755)
			write(filepath.Join(bin, "getent"), "#!/bin/sh\nexit 0\n", 0o755)
			write(filepath.Join(dir, "headscale"), "#!/bin/sh\ncase \"$1 $2\" in\n'backup --help') exit 0 ;;\nbackup*) "+tc.backup+" ;;\n*) exit 0 ;;\nesac\n", 0o755)
			write(filepath.Join(dir, "config.yaml"), tc.config, 0o644)
			script := string(b)
			for from, to := range map[string]string{
				"DB=/var/lib/headscale/db.sqlite":       "DB=" + filepath.Join(dir, "db.sqlite"),
				"BACKUP_DIR=/var/lib/headscale/backups": "BACKUP_DIR=" + filepath.Join(dir, "backups"),
				"CONFIG=/etc/headscale/config.yaml":     "CONFIG=" + filepath.Join(dir, "config.yaml"),
				"BIN=/usr/bin/headscale":                "BIN=" + filepath.Join(dir, "headscale"),
			} {
				if !strings.Contains(script, from+"\n") {
					t.Fatalf("preinst no longer sets %s", from)
				}
				script = strings.Replace(script, from+"\n", to+"\n", 1)
			}
			write(filepath.Join(dir, "preinst"), script, 0o755)
			cmd := exec.Command("sh", filepath.Join(dir, "preinst"), "upgrade", "0.9.0")
			cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "HEADSCALE_SKIP_PREUPGRADE_BACKUP=")
			out, err := cmd.CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode || !strings.Contains(string(out), tc.want) || (tc.notWant != "" && strings.Contains(string(out), tc.notWant)) {
				t.Errorf("preinst upgrade: exit %d, want %d, output containing %q:\n%s", code, tc.wantCode, tc.want, out)
			}
		})
	}
}
