package cli

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/server"
)

// TestConfigtestRefusesWhatServeRefuses: for each setting the server
// refuses at start, configtest fails with the server's own message, placed
// at the file and line of the key, and serve refuses with the same line
// before it opens anything.
func TestConfigtestRefusesWhatServeRefuses(t *testing.T) {
	// Each case writes its files into dir and returns the lines to append
	// to a config that otherwise starts; the refusal names key and is
	// placed at the line holding at.
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string) string
		key, at string
	}{
		{name: "TLS pair that does not load", key: "tls_cert_path", at: "tls_cert_path:", setup: func(t *testing.T, dir string) string {
			write(t, dir, "cert.pem", "not a certificate")
			write(t, dir, "key.pem", "not a key")
			return "tls_cert_path: " + dir + "/cert.pem\ntls_key_path: " + dir + "/key.pem\n"
		}},
		{name: "noise key that does not parse", key: "noise.private_key_path", at: "noise.key", setup: func(t *testing.T, dir string) string {
			write(t, dir, "noise.key", "privkey:nothex")
			return "noise:\n  private_key_path: " + dir + "/noise.key\n"
		}},
		{name: "DERP key that does not parse", key: "derp.server.private_key_path", at: "derp.key", setup: func(t *testing.T, dir string) string {
			write(t, dir, "derp.key", "mkey:0000")
			return "derp:\n  server:\n    private_key_path: " + dir + "/derp.key\n"
		}},
		{name: "DERP map file missing", key: "derp.paths", at: "paths:", setup: func(t *testing.T, dir string) string {
			return "derp:\n  paths:\n    - " + dir + "/gone.yaml\n"
		}},
		{name: "extra records file that does not parse", key: "dns.extra_records_path", at: "extra_records_path:", setup: func(t *testing.T, dir string) string {
			write(t, dir, "records.json", "[{")
			return "dns:\n  extra_records_path: " + dir + "/records.json\n"
		}},
		{name: "extra records file missing", key: "dns.extra_records_path", at: "extra_records_path:", setup: func(t *testing.T, dir string) string {
			return "dns:\n  extra_records_path: " + dir + "/gone.json\n"
		}},
		{name: "policy file missing", key: "policy.path", at: "gone.hujson", setup: func(t *testing.T, dir string) string {
			return "policy:\n  path: " + dir + "/gone.hujson\n"
		}},
		{name: "policy file that does not parse", key: "policy.path", at: "policy.hujson", setup: func(t *testing.T, dir string) string {
			write(t, dir, "policy.hujson", `{"acls": [{"action": "drop"}]}`)
			return "policy:\n  path: " + dir + "/policy.hujson\n"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			body := "listen_addr: 127.0.0.1:0\nmetrics_listen_addr: \"\"\nstate_dir: " + dir + "\nunix_socket: " + dir + "/hs.sock\n" + tt.setup(t, dir)
			line := 0
			for i, l := range strings.Split(body, "\n") {
				if strings.Contains(l, tt.at) {
					line = i + 1
					break
				}
			}
			path := filepath.Join(dir, "config.yaml")
			write(t, dir, "config.yaml", body)

			// configtest, then serve, which loads the configuration with the
			// same checks and so refuses before it opens anything.
			testCode, _, testErr := run(t, "-c", path, "configtest")
			if testCode != 1 {
				// serve would start and run: stop here.
				t.Fatalf("configtest accepted the configuration:\n%s", body)
			}
			serveCode, _, serveErr := run(t, "-c", path, "serve")
			if _, err := os.Stat(filepath.Join(dir, "db.sqlite")); err == nil {
				t.Error("serve created the database before refusing")
			}

			// What the server itself refuses, started from the
			// configuration loaded without the checks.
			cfg, _, err := config.Load(config.LoadOptions{Path: path, Env: []string{}, SearchPaths: []string{}})
			if err != nil {
				t.Fatalf("the configuration itself is invalid: %v", err)
			}
			srv, err := server.New(context.Background(), cfg, slog.New(slog.DiscardHandler), "test")
			if err == nil {
				srv.Close()
				t.Fatalf("server.New accepted the configuration:\n%s", body)
			}
			refusal := err.Error()
			if !strings.HasPrefix(refusal, tt.key+": ") || strings.Contains(refusal, "\n") {
				t.Fatalf("server.New refused with %q, want one line about %s", refusal, tt.key)
			}
			want := fmt.Sprintf("%s:%d: %s", path, line, refusal)
			if !strings.Contains(testErr, want+"\n") {
				t.Errorf("configtest stderr:\n%s\nwant the line\n%s", testErr, want)
			}
			if serveCode != 1 || !strings.Contains(serveErr, want) {
				t.Errorf("serve: exit %d, stderr:\n%s\nwant\n%s", serveCode, serveErr, want)
			}
		})
	}
}

func write(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestConfigtestHidesDatabasePassword: whichever way the PostgreSQL
// password is set (pass, the old db_pass, the environment, pass_file, a
// systemd credential), configtest's report (warnings and problems) and
// serve's refusal name the connection's keys but never the password.
func TestConfigtestHidesDatabasePassword(t *testing.T) {
	const secret = "pw-c0nfigtest-9d2e"
	dir := t.TempDir()
	write(t, dir, "pgpass", secret+"\n")
	creds := filepath.Join(dir, "creds")
	if err := os.Mkdir(creds, 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, creds, "pgpass", secret+"\n")
	base := "listen_addr: 127.0.0.1:0\nmetrics_listen_addr: \"\"\nstate_dir: " + dir + "\nunix_socket: " + dir + "/hs.sock\n"
	// pg is the database section with the password lines; warnings come
	// from an unknown key and, in some cases, an old key name.
	pg := func(dbType, lines string) string {
		return "database:\n  type: " + dbType + "\n  postgres:\n    host: /var/run/postgresql\n    name: headscale\n    password_typo: x\n" + lines
	}
	tests := []struct {
		name     string
		body     string
		env      []string
		wantCode int
		want     []string // in stderr
	}{
		{"pass, postgres", pg("postgres", "    pass: "+secret+"\n"), nil, 0, []string{"password_typo: unknown key"}},
		{"pass, sqlite", pg("sqlite", "    pass: "+secret+"\n"), nil, 0, []string{"password_typo: unknown key"}},
		{"db_pass", "db_pass: " + secret + "\ndb_user: headscale\n" + pg("postgres", ""), nil, 0,
			[]string{"db_pass: deprecated key, use database.postgres.pass instead", "db_user: deprecated key"}},
		{"db_pass and pass", "db_pass: " + secret + "\n" + pg("postgres", "    pass: "+secret+"\n"), nil, 1,
			[]string{"old key db_pass (line 5) and its replacement database.postgres.pass"}},
		{"environment", pg("postgres", ""), []string{"HEADSCALE_DATABASE_POSTGRES_PASS=" + secret}, 0,
			[]string{"password_typo: unknown key"}},
		{"environment and pass_file", pg("postgres", "    pass_file: "+dir+"/pgpass\n"), []string{"HEADSCALE_DATABASE_POSTGRES_PASS=" + secret}, 1,
			[]string{"pass_file: database.postgres.pass is set too (env HEADSCALE_DATABASE_POSTGRES_PASS)"}},
		{"pass_file", pg("postgres", "    pass_file: "+dir+"/pgpass\n"), nil, 0, []string{"password_typo: unknown key"}},
		{"credential", pg("postgres", "    pass_file: $CREDENTIALS_DIRECTORY/pgpass\n"), []string{"CREDENTIALS_DIRECTORY=" + creds}, 0,
			[]string{"password_typo: unknown key"}},
		{"credential outside the service", pg("postgres", "    pass_file: $CREDENTIALS_DIRECTORY/pgpass\n"), nil, 0,
			[]string{"$CREDENTIALS_DIRECTORY is not set here"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(path, []byte(base+tt.body), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, cmd := range []string{"configtest", "serve"} {
				if cmd == "serve" && tt.wantCode == 0 {
					continue // it would start
				}
				var out, errb bytes.Buffer
				code := Execute(Env{Version: "test", Stdout: &out, Stderr: &errb, Environ: tt.env}, []string{"-c", path, cmd})
				if code != tt.wantCode {
					t.Errorf("%s: exit %d, want %d; stderr:\n%s", cmd, code, tt.wantCode, errb.String())
				}
				if all := out.String() + errb.String(); strings.Contains(all, secret) {
					t.Errorf("%s prints the password:\n%s", cmd, all)
				}
				if cmd == "configtest" {
					for _, w := range tt.want {
						if !strings.Contains(errb.String(), w) {
							t.Errorf("configtest stderr lacks %q:\n%s", w, errb.String())
						}
					}
				}
			}
		})
	}
}
