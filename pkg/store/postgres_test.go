package store

// PostgreSQL-only tests: its connection, the password, its settings, and
// databases that belong to something else.

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/jackc/pgx/v5/pgconn"
)

// pgOptions returns the options for a fresh database of the test cluster.
func pgOptions(t *testing.T) (Options, pgtest.Database) {
	t.Helper()
	db := pg.Database(t)
	return Options{Postgres: &PostgresOptions{Host: db.Host, Port: db.Port, Name: db.Name, User: db.User}}, db
}

func TestConnString(t *testing.T) {
	for _, tc := range []struct {
		in   PostgresOptions
		want string
	}{
		{PostgresOptions{Host: "db.example.com", Name: "headscale"}, `host='db.example.com' port='5432' dbname='headscale' connect_timeout='5'`},
		{PostgresOptions{Host: "/run/postgresql", Port: 5433, Name: "hs", User: "headscale", SSLMode: "disable"},
			`host='/run/postgresql' port='5433' dbname='hs' user='headscale' sslmode='disable' connect_timeout='5'`},
		{PostgresOptions{Host: "h", Name: "n", User: "u", Pass: `it's a \ secret`, SSLMode: "verify-full"},
			`host='h' port='5432' dbname='n' user='u' password='it\'s a \\ secret' sslmode='verify-full' connect_timeout='5'`},
	} {
		if got := tc.in.connString(); got != tc.want {
			t.Errorf("connString(%+v) =\n%s\nwant\n%s", tc.in, got, tc.want)
		}
	}
}

// TestPostgresPassword: a password with quotes and spaces logs in; a wrong
// one fails with an error naming host, port, database and user, and
// neither the error nor any log line carries a password.
func TestPostgresPassword(t *testing.T) {
	opts, db := pgOptions(t)
	var logs bytes.Buffer
	opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts.Postgres.User = pgtest.PasswordUser

	for _, pass := range []string{"wrong password 'quoted'", ""} {
		o := opts
		p := *opts.Postgres
		p.Pass = pass
		o.Postgres = &p
		_, err := Open(t.Context(), o)
		if err == nil {
			t.Fatalf("Open with password %q succeeded", pass)
		}
		for _, want := range []string{db.Host, "5432", db.Name, pgtest.PasswordUser} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not name %q", err, want)
			}
		}
		if pass != "" && strings.Contains(err.Error(), pass) {
			t.Errorf("error carries the password: %v", err)
		}
	}
	opts.Postgres.Pass = pgtest.PasswordUserPass
	s, err := Open(t.Context(), opts)
	if err != nil {
		t.Fatalf("Open with the right password: %v", err)
	}
	if _, err := s.CreateUser(t.Context(), User{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), pgtest.PasswordUserPass) || strings.Contains(logs.String(), "wrong password") {
		t.Errorf("a log line carries a password:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "store opened") {
		t.Errorf("no \"store opened\" line in the logs:\n%s", logs.String())
	}
}

// TestPostgresRedact: should a driver error ever quote the password, it
// is masked.
func TestPostgresRedact(t *testing.T) {
	o := PostgresOptions{Pass: "s3cret"}
	if got := o.redact(errors.New("cannot use password=s3cret here")).Error(); strings.Contains(got, "s3cret") {
		t.Errorf("redact left the password: %q", got)
	}
	if got := (PostgresOptions{}).redact(errors.New("x")).Error(); got != "x" {
		t.Errorf("redact without a password changed the error: %q", got)
	}
}

// TestPostgresUnreachable: no server at the address is a clear error, not
// a hang.
func TestPostgresUnreachable(t *testing.T) {
	_, err := Open(t.Context(), Options{Postgres: &PostgresOptions{Host: t.TempDir(), Name: "headscale", User: "headscale"}})
	if err == nil || !strings.Contains(err.Error(), "connect") || !strings.Contains(err.Error(), `PostgreSQL database "headscale"`) {
		t.Fatalf("Open with no server = %v, want a connect error naming the database", err)
	}
	if _, err := Open(t.Context(), Options{Postgres: &PostgresOptions{Name: "x"}}); err == nil {
		t.Fatal("Open without a host succeeded")
	}
}

// TestPostgresDurableCommits: a database set to synchronous_commit = off
// still gets durable commits from the store's connections.
func TestPostgresDurableCommits(t *testing.T) {
	opts, db := pgOptions(t)
	if err := pg.Exec(t.Context(), "", "ALTER DATABASE "+db.Name+" SET synchronous_commit = off"); err != nil {
		t.Fatal(err)
	}
	s, err := Open(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var mode string
	if err := s.write.QueryRowContext(t.Context(), `SELECT current_setting('synchronous_commit')`).Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if mode != "on" {
		t.Errorf("synchronous_commit = %q on the store's connection, want on", mode)
	}
}

// TestPostgresPool: the pool is sized from the options (and Headscale's
// defaults), and is reported as one pool.
func TestPostgresPool(t *testing.T) {
	opts, _ := pgOptions(t)
	for _, tc := range []struct {
		open, idle int
		wantOpen   int
	}{{0, 0, DefaultPostgresMaxOpenConns}, {3, 2, 3}} {
		o := opts
		p := *opts.Postgres
		p.MaxOpenConns, p.MaxIdleConns, p.ConnMaxIdleTime = tc.open, tc.idle, time.Minute
		// Over a unix socket sslmode is not used (as libpq does), so even
		// "require" connects.
		p.SSLMode = "require"
		o.Postgres = &p
		s, err := Open(t.Context(), o)
		if err != nil {
			t.Fatal(err)
		}
		pools := s.Pools()
		if len(pools) != 1 || pools["postgres"] == nil {
			t.Errorf("Pools() = %v, want one named postgres", pools)
		} else if got := pools["postgres"].Stats().MaxOpenConnections; got != tc.wantOpen {
			t.Errorf("MaxOpenConnections = %d, want %d", got, tc.wantOpen)
		}
		if s.Engine() != "postgres" {
			t.Errorf("Engine() = %q", s.Engine())
		}
		if err := s.Checkpoint(t.Context()); err != nil {
			t.Errorf("Checkpoint on PostgreSQL: %v, want nothing to do", err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOpenRefusesForeignPostgres: a database holding another program's
// tables, or Headscale's, is refused and left as it was.
func TestOpenRefusesForeignPostgres(t *testing.T) {
	for _, tc := range []struct {
		name, schema string
		want         error
		wantMsg      string
	}{
		{"other program", `CREATE TABLE accounts (id int)`, nil, "database has tables (accounts) but no schema_migrations table"},
		{"headscale", `CREATE TABLE users (id bigserial primary key, name text);
CREATE TABLE nodes (id bigserial primary key);
CREATE TABLE pre_auth_keys (id bigserial primary key)`, ErrHeadscaleDatabase, "give this server a new, empty database"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts, db := pgOptions(t)
			if err := pg.Exec(t.Context(), db.Name, tc.schema); err != nil {
				t.Fatal(err)
			}
			s, err := Open(t.Context(), opts)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if (tc.want != nil && !errors.Is(err, tc.want)) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("Open = %v, want %v mentioning %q", err, tc.want, tc.wantMsg)
			}
			if err := pg.Exec(t.Context(), db.Name, `SELECT 1 FROM schema_migrations`); err == nil {
				t.Error("the refused database was changed (schema_migrations created)")
			}
		})
	}
}

// TestPostgresText pins a difference between the engines: PostgreSQL's
// text refuses a NUL byte and invalid UTF-8, which SQLite stores as given;
// the refusal says so. (Client-reported text such as host names reaches the
// store unfiltered; cleaning it before it is stored is left to the layers
// above.)
func TestPostgresText(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		s := e.open(t)
		for i, h := range []string{"a\x00b", "\xff"} {
			n := testNode(string(rune('a'+i)), nil)
			n.Hostname = h
			_, err := s.RegisterNode(t.Context(), n, 0)
			switch {
			case e.name == "sqlite" && err != nil:
				t.Errorf("SQLite refused host name %q: %v", h, err)
			case e.name == "postgres" && (err == nil || !strings.Contains(err.Error(), "PostgreSQL cannot store")):
				t.Errorf("PostgreSQL: host name %q: %v, want a refusal saying why", h, err)
			}
		}
	})
}

// TestClassifyConnect: each way PostgreSQL refuses or cannot be reached is
// told apart, against the real server where the test cluster can show it,
// and other errors are not taken for an unavailable database.
func TestClassifyConnect(t *testing.T) {
	opts, _ := pgOptions(t)
	cases := []struct {
		name string
		edit func(*PostgresOptions)
		want FailureClass
	}{
		{"wrong password", func(o *PostgresOptions) { o.User, o.Pass = pgtest.PasswordUser, "wrong" }, FailAuth},
		{"unknown database", func(o *PostgresOptions) { o.Name = "no_such_db" }, FailNoDatabase},
		{"unknown role", func(o *PostgresOptions) { o.User = "no_such_role" }, FailNoRole},
		{"no socket", func(o *PostgresOptions) { o.Host = t.TempDir() }, FailUnreachable},
		{"connection refused", func(o *PostgresOptions) { o.Host, o.Port = "127.0.0.1", 1 }, FailUnreachable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := *opts.Postgres
			tc.edit(&p)
			o := opts
			o.Postgres = &p
			_, err := Open(t.Context(), o)
			if err == nil {
				t.Fatal("Open succeeded")
			}
			class, why := ClassifyConnect(err)
			if class != tc.want || why == "" {
				t.Fatalf("ClassifyConnect(%v) = %q, %q; want class %q", err, class, why, tc.want)
			}
			if !IsUnavailable(err) || !errors.Is(Unavailable(err), ErrUnavailable) {
				t.Fatalf("IsUnavailable(%v) = false", err)
			}
		})
	}
	// Errors the test cluster cannot produce, as the drivers report them.
	for _, tc := range []struct {
		err  error
		want FailureClass
	}{
		{&pgconn.PgError{Code: "28000", Message: `no pg_hba.conf entry for host "192.0.2.1", user "hs", database "hs", no encryption`}, FailTLS},
		{&pgconn.PgError{Code: "28000", Message: `no pg_hba.conf entry for host "192.0.2.1", user "hs", database "hs", SSL encryption`}, FailAuth},
		{&pgconn.PgError{Code: "57P03", Message: "the database system is starting up"}, FailStarting},
		{&pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}, FailStarting},
		{fmt.Errorf("connect: %w", x509.UnknownAuthorityError{}), FailTLS},
		{fmt.Errorf("connect: %w", &net.DNSError{Err: "no such host", Name: "db.invalid", IsNotFound: true}), FailDNS},
		{fmt.Errorf("connect: %w", context.DeadlineExceeded), FailTimeout},
		{fmt.Errorf("query: %w", io.ErrUnexpectedEOF), FailUnreachable},
	} {
		if class, why := ClassifyConnect(tc.err); class != tc.want || why == "" {
			t.Errorf("ClassifyConnect(%v) = %q, %q; want %q", tc.err, class, why, tc.want)
		}
	}
	for _, err := range []error{ErrNotFound, ErrConflict, errors.New("syntax error"),
		&pgconn.PgError{Code: "23505", Message: "duplicate key value violates unique constraint"}} {
		if class, _ := ClassifyConnect(err); class != "" || IsUnavailable(err) {
			t.Errorf("ClassifyConnect(%v) = %q, want none", err, class)
		}
	}
}
