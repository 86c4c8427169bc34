package config

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unicode"
)

// parseConnString splits a libpq keyword/value connection string the way
// libpq's conninfo_parse does (white space between pairs, values optionally
// in single quotes, a backslash escaping the next character), so the tests
// can check that every value comes back as it went in.
func parseConnString(s string) (map[string]string, error) {
	out := map[string]string{}
	r := []rune(s)
	i := 0
	skip := func() {
		for i < len(r) && unicode.IsSpace(r[i]) {
			i++
		}
	}
	for {
		skip()
		if i == len(r) {
			return out, nil
		}
		start := i
		for i < len(r) && r[i] != '=' && !unicode.IsSpace(r[i]) {
			i++
		}
		key := string(r[start:i])
		skip()
		if i == len(r) || r[i] != '=' {
			return nil, fmt.Errorf("missing = after %q", key)
		}
		i++
		skip()
		var v strings.Builder
		if i < len(r) && r[i] == '\'' {
			i++
			for {
				if i == len(r) {
					return nil, fmt.Errorf("unterminated quote in the value of %q", key)
				}
				if r[i] == '\\' && i+1 < len(r) {
					v.WriteRune(r[i+1])
					i += 2
					continue
				}
				if r[i] == '\'' {
					i++
					break
				}
				v.WriteRune(r[i])
				i++
			}
		} else {
			for i < len(r) && !unicode.IsSpace(r[i]) {
				if r[i] == '\\' && i+1 < len(r) {
					i++
				}
				v.WriteRune(r[i])
				i++
			}
		}
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("%q given twice", key)
		}
		out[key] = v.String()
	}
}

func TestConnString(t *testing.T) {
	dir := t.TempDir()
	passFile := filepath.Join(dir, "pgpass")
	if err := os.WriteFile(passFile, []byte("from file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		pg       PostgresConfig
		want     string // ConnString
		redacted string // String
	}{
		{
			name:     "unix socket, peer authentication",
			pg:       PostgresConfig{Host: "/var/run/postgresql", Port: 5432, Name: "headscale", SSL: "disable"},
			want:     "host=/var/run/postgresql port=5432 dbname=headscale sslmode=disable",
			redacted: "host=/var/run/postgresql port=5432 dbname=headscale sslmode=disable",
		},
		{
			name:     "TCP with password",
			pg:       PostgresConfig{Host: "db.example.com", Port: 6543, Name: "hs", User: "headscale", Pass: "s3cret", SSL: "verify-full"},
			want:     "host=db.example.com port=6543 dbname=hs user=headscale password=s3cret sslmode=verify-full",
			redacted: "host=db.example.com port=6543 dbname=hs user=headscale sslmode=verify-full",
		},
		{
			name:     "IPv6 address",
			pg:       PostgresConfig{Host: "::1", Port: 5432, Name: "hs", User: "hs", SSL: "require"},
			want:     "host=::1 port=5432 dbname=hs user=hs sslmode=require",
			redacted: "host=::1 port=5432 dbname=hs user=hs sslmode=require",
		},
		{
			name:     "values quoted and escaped",
			pg:       PostgresConfig{Host: "/run/my sockets", Port: 5432, Name: "tail net", User: `o'brien`, Pass: `a b'c\d=e`, SSL: "prefer"},
			want:     `host='/run/my sockets' port=5432 dbname='tail net' user='o\'brien' password='a b\'c\\d=e' sslmode=prefer`,
			redacted: `host='/run/my sockets' port=5432 dbname='tail net' user='o\'brien' sslmode=prefer`,
		},
		{
			name:     "password from a file",
			pg:       PostgresConfig{Host: "db", Port: 5432, Name: "hs", User: "hs", PassFile: passFile, SSL: "disable"},
			want:     "host=db port=5432 dbname=hs user=hs password='from file' sslmode=disable",
			redacted: "host=db port=5432 dbname=hs user=hs sslmode=disable",
		},
		{
			name:     "empty name quoted",
			pg:       PostgresConfig{Host: "db", Port: 5432, SSL: "disable"},
			want:     "host=db port=5432 dbname='' sslmode=disable",
			redacted: "host=db port=5432 dbname='' sslmode=disable",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.pg.ConnString()
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("ConnString() = %s\nwant           %s", got, tt.want)
			}
			if s := tt.pg.String(); s != tt.redacted {
				t.Errorf("String() = %s\nwant       %s", s, tt.redacted)
			}
			// Every value comes back from a libpq-style parse as it was.
			kv, err := parseConnString(got)
			if err != nil {
				t.Fatalf("parsing %s: %v", got, err)
			}
			pw, _ := tt.pg.Password()
			want := map[string]string{"host": tt.pg.Host, "port": fmt.Sprint(tt.pg.Port), "dbname": tt.pg.Name, "sslmode": tt.pg.SSL}
			if tt.pg.User != "" {
				want["user"] = tt.pg.User
			}
			if pw != "" {
				want["password"] = pw
			}
			if !reflect.DeepEqual(kv, want) {
				t.Errorf("parsed back %q, want %q", kv, want)
			}
		})
	}
}

func TestPassword(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const secret = "Tr0ub4dor&3"
	tests := []struct {
		name    string
		pg      PostgresConfig
		want    string
		wantErr string
	}{
		{name: "none", pg: PostgresConfig{}, want: ""},
		{name: "pass", pg: PostgresConfig{Pass: secret}, want: secret},
		{name: "file with newline", pg: PostgresConfig{PassFile: file("nl", secret+"\n")}, want: secret},
		{name: "file with CRLF", pg: PostgresConfig{PassFile: file("crlf", secret+"\r\n")}, want: secret},
		{name: "file without newline", pg: PostgresConfig{PassFile: file("bare", secret)}, want: secret},
		{name: "spaces kept", pg: PostgresConfig{PassFile: file("spaces", " "+secret+" \n")}, want: " " + secret + " "},
		{name: "empty file", pg: PostgresConfig{PassFile: file("empty", "\n")}, wantErr: "is empty"},
		{name: "two lines", pg: PostgresConfig{PassFile: file("two", secret+"\nsecond\n")}, wantErr: "more than one line"},
		{name: "too large", pg: PostgresConfig{PassFile: file("large", strings.Repeat(secret, 1000))}, wantErr: "larger than 4096 bytes"},
		{name: "missing", pg: PostgresConfig{PassFile: filepath.Join(dir, "gone")}, wantErr: "no such file"},
		{name: "credential not expanded", pg: PostgresConfig{PassFile: "$CREDENTIALS_DIRECTORY/pgpass"}, wantErr: "$CREDENTIALS_DIRECTORY is not set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.pg.Password()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Password() = %q, %v; want an error containing %q", got, err, tt.wantErr)
				}
				if strings.Contains(err.Error(), secret) {
					t.Errorf("the error carries the password: %v", err)
				}
				if _, err := tt.pg.ConnString(); err == nil {
					t.Error("ConnString succeeded where Password fails")
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Password() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// TestPassFileCredentials: Load expands $CREDENTIALS_DIRECTORY (either
// spelling) from the environment it is given, in the file and in
// HEADSCALE_DATABASE_POSTGRES_PASS_FILE, and the password is then read
// from there.
func TestPassFileCredentials(t *testing.T) {
	creds := t.TempDir()
	if err := os.WriteFile(filepath.Join(creds, "pgpass"), []byte("from credential\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const base = "database:\n  type: postgres\n  postgres:\n    host: db\n    name: hs\n"
	for _, tt := range []struct {
		name string
		yaml string
		env  []string
	}{
		{"file", base + "    pass_file: $CREDENTIALS_DIRECTORY/pgpass\n", nil},
		{"file, braces", base + "    pass_file: ${CREDENTIALS_DIRECTORY}/pgpass\n", nil},
		{"environment", base, []string{"HEADSCALE_DATABASE_POSTGRES_PASS_FILE=$CREDENTIALS_DIRECTORY/pgpass"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, warns := mustLoadYAML(t, tt.yaml, append(tt.env, "CREDENTIALS_DIRECTORY="+creds)...)
			if len(warns) != 0 {
				t.Errorf("warnings:\n%s", problemsText(warns))
			}
			pg := cfg.Database.Postgres
			if want := filepath.Join(creds, "pgpass"); pg.PassFile != want {
				t.Errorf("PassFile = %q, want %q", pg.PassFile, want)
			}
			if pw, err := pg.Password(); err != nil || pw != "from credential" {
				t.Errorf("Password() = %q, %v", pw, err)
			}
		})
	}
}

// TestPostgresConfigNeverPrinted: printing the configuration with fmt, or
// logging it or its database section with slog (text or JSON), shows the
// connection but not the password.
func TestPostgresConfigNeverPrinted(t *testing.T) {
	const secret = "n0t-in-any-output"
	cfg, _ := mustLoadYAML(t, "database:\n  postgres:\n    host: db\n    name: hs\n    user: hs\n    pass: "+secret+"\n")
	if cfg.Database.Postgres.Pass != secret {
		t.Fatalf("Pass = %q", cfg.Database.Postgres.Pass)
	}
	var out bytes.Buffer
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		fmt.Fprintf(&out, verb+"\n", cfg)
		fmt.Fprintf(&out, verb+"\n", *cfg)
		fmt.Fprintf(&out, verb+"\n", cfg.Database)
		fmt.Fprintf(&out, verb+"\n", cfg.Database.Postgres)
	}
	for _, h := range []slog.Handler{slog.NewTextHandler(&out, nil), slog.NewJSONHandler(&out, nil)} {
		slog.New(h).Info("x", "cfg", cfg, "db", cfg.Database, "pg", cfg.Database.Postgres)
	}
	if strings.Contains(out.String(), secret) {
		t.Errorf("the password is printed:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "host=db port=5432 dbname=hs user=hs sslmode=disable") {
		t.Errorf("the connection is not described:\n%s", out.String())
	}
}

// TestPasswordNotInProblems: whichever way the password is set (pass,
// db_pass, the environment, a file), no warning or error Load reports
// carries it, even with every key around it wrong.
func TestPasswordNotInProblems(t *testing.T) {
	const secret = "pw-7f3a9c' \\x"
	dir := t.TempDir()
	passFile := filepath.Join(dir, "pgpass")
	if err := os.WriteFile(passFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	quoted := "'" + strings.ReplaceAll(secret, "'", "''") + "'"
	// Problems around the password: an unknown key, a bad port, a bad
	// sslmode, negative pool sizes, a socket file as host.
	const around = "    port: 70000\n    ssl: maybe\n    max_open_conns: -1\n    passwd: x\n    host: /run/postgresql/.s.PGSQL.5432\n"
	tests := []struct {
		name string
		yaml string
		env  []string
	}{
		{"pass", "database:\n  type: postgres\n  postgres:\n    pass: " + quoted + "\n" + around, nil},
		{"pass with pass_file too", "database:\n  type: postgres\n  postgres:\n    pass: " + quoted + "\n    pass_file: " + passFile + "\n" + around, nil},
		{"pass not text", "database:\n  type: postgres\n  postgres:\n    pass: [" + quoted + "]\n" + around, nil},
		{"db_pass", "db_pass: " + quoted + "\ndb_ssl: maybe\ndatabase:\n  type: postgres\n  postgres:\n" + around, nil},
		{"db_pass and pass", "db_pass: " + quoted + "\ndatabase:\n  type: postgres\n  postgres:\n    pass: " + quoted + "\n" + around, nil},
		{"environment", "database:\n  type: postgres\n  postgres:\n" + around, []string{"HEADSCALE_DATABASE_POSTGRES_PASS=" + secret}},
		{"environment and pass_file", "database:\n  type: postgres\n  postgres:\n    pass_file: " + passFile + "\n" + around, []string{"HEADSCALE_DATABASE_POSTGRES_PASS=" + secret}},
		{"pass_file", "database:\n  type: postgres\n  postgres:\n    pass_file: " + passFile + "\n" + around, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, warns, _, err := loadYAML(t, tt.yaml, tt.env...)
			var errs Errors
			if !errors.As(err, &errs) || len(errs) < 3 {
				t.Fatalf("want several errors, got %v", err)
			}
			text := problemsText(warns) + "\n" + errs.Error()
			if strings.Contains(text, secret) || strings.Contains(text, "pw-7f3a9c") {
				t.Errorf("a problem carries the password:\n%s", text)
			}
		})
	}
}
