package store

// PostgreSQL's connection: building it from the configuration, the pool,
// and refusing a database that belongs to something else.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hsctl/headscale/pkg/hsdb"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// Defaults of the PostgreSQL pool (Headscale's) for zero PostgresOptions
// fields.
const (
	DefaultPostgresMaxOpenConns = 10
	DefaultPostgresMaxIdleConns = 10
)

// PostgresOptions locate a PostgreSQL database and size the pool; they
// mirror the database.postgres section of the configuration (Pass is what
// config.PostgresConfig.Password returns, SSLMode its SSL). The password is
// sent to the server only: it appears in no message, log line or error of
// this package.
type PostgresOptions struct {
	// Host is a host name, an IP address, or the directory of the server's
	// unix socket (a path starting with "/").
	Host string
	// Port is the TCP port, or the number in the socket's file name; 0
	// means 5432.
	Port int
	// Name is the database; User and Pass the credentials (Pass may be
	// empty for peer or trust authentication over the unix socket).
	Name, User, Pass string
	// SSLMode is a libpq sslmode ("disable", "require", "verify-full",
	// ...); "" leaves libpq's default (prefer).
	SSLMode string
	// MaxOpenConns and MaxIdleConns size the pool; 0 means the Default
	// values above. ConnMaxIdleTime closes a connection idle that long; 0
	// keeps idle connections (as database.postgres.conn_max_idle_time_secs
	// 0 does).
	MaxOpenConns    int
	MaxIdleConns    int
	ConnMaxIdleTime time.Duration
	// ApplicationName is sent as the connections' application_name; ""
	// means ServerApplicationName. With a Schema, "/" and the tenant (the
	// cluster_id of headscale_<cluster_id>) are appended by the store:
	// "headscale/a". Commands that must not run beside a server (OpenIdle)
	// look for the server's sessions of the same tenant.
	ApplicationName string
	// URL, when set, is a libpq connection URL (postgres:// or
	// postgresql://) used instead of the fields above, which
	// ParsePostgresURL fills from it for messages. pgx reads the password
	// from the URL, PGPASSWORD or the passfile, as libpq does.
	URL string
	// Schema, when set, is the schema the store's tables live in: a
	// tenant's (headscale_<cluster_id>) when several tailnets share the
	// database. Open creates it when missing and requires every
	// connection's search_path to be exactly this schema (see tenant.go);
	// "" keeps the database's default search_path (public), as a single
	// server always did. Taking over a Headscale database builds the
	// converted one in a schema of its own first.
	Schema string
}

// application_name values of this server's PostgreSQL connections.
const (
	// ServerApplicationName marks a running server's connections.
	ServerApplicationName = "headscale"
	// AdminApplicationName marks an admin command's connections (db
	// migrate, backup, restore).
	AdminApplicationName = "headscale-admin"
)

// ParsePostgresURL checks a postgres:// or postgresql:// URL and returns
// options that open it, with Host, Port, Name, User and Pass filled in
// from it (and from the environment and passfile, as libpq does). The
// error never quotes the URL, which may hold a password.
func ParsePostgresURL(u string) (PostgresOptions, error) {
	if !strings.HasPrefix(u, "postgres://") && !strings.HasPrefix(u, "postgresql://") {
		return PostgresOptions{}, errors.New("not a postgres:// or postgresql:// URL")
	}
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		return PostgresOptions{}, errors.New("invalid PostgreSQL URL (check its host, port, database, user and parameters)")
	}
	if cfg.Database == "" {
		return PostgresOptions{}, errors.New("the PostgreSQL URL names no database (postgres://user@host:port/DATABASE)")
	}
	return PostgresOptions{Host: cfg.Host, Port: int(cfg.Port), Name: cfg.Database, User: cfg.User, Pass: cfg.Password, URL: u}, nil
}

// Display is the database as a libpq URL without the password, for
// output: postgres://user@host:port/name, or for a unix-socket directory
// postgres:///name?host=/dir&port=N&user=user.
func (o PostgresOptions) Display() string {
	if strings.HasPrefix(o.Host, "/") {
		// A slash needs no escaping in a query value; keeping it makes
		// the directory readable.
		q := "host=" + strings.ReplaceAll(url.QueryEscape(o.Host), "%2F", "/") + "&port=" + strconv.Itoa(o.port())
		if o.User != "" {
			q += "&user=" + url.QueryEscape(o.User)
		}
		return "postgres:///" + url.PathEscape(o.Name) + "?" + q
	}
	u := url.URL{Scheme: "postgres", Host: net.JoinHostPort(o.Host, strconv.Itoa(o.port())), Path: "/" + o.Name}
	if o.User != "" {
		u.User = url.User(o.User)
	}
	return u.String()
}

// String names the database for messages: host, port, database, user and
// schema (when set), never the password.
func (o PostgresOptions) String() string {
	s := fmt.Sprintf("PostgreSQL database %q on %s port %d as user %q", o.Name, o.Host, o.port(), o.User)
	if o.Schema != "" {
		s += fmt.Sprintf(", schema %q", o.Schema)
	}
	return s
}

func (o PostgresOptions) port() int {
	if o.Port == 0 {
		return 5432
	}
	return o.Port
}

// connString is the libpq keyword/value form of o, with every value quoted.
func (o PostgresOptions) connString() string {
	kv := []string{"host", o.Host, "port", strconv.Itoa(o.port()), "dbname", o.Name}
	if o.User != "" {
		kv = append(kv, "user", o.User)
	}
	if o.Pass != "" {
		kv = append(kv, "password", o.Pass)
	}
	if o.SSLMode != "" {
		kv = append(kv, "sslmode", o.SSLMode)
	}
	// A host that does not answer fails a connection attempt after this
	// long, not after the operating system's TCP timeout (minutes): API
	// writes and registrations fail fast while the database is away.
	kv = append(kv, "connect_timeout", strconv.Itoa(int(ConnectTimeout/time.Second)))
	var b strings.Builder
	for i := 0; i < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(kv[i] + "='")
		b.WriteString(strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(kv[i+1]))
		b.WriteByte('\'')
	}
	return b.String()
}

// ConnectTimeout bounds one attempt to connect to PostgreSQL.
const ConnectTimeout = 5 * time.Second

// deadPeerTimeout is how long a TCP connection to PostgreSQL may go without
// an answer (keepalive probes on an idle one, acknowledgements of sent
// data on a busy one) before it is given up as dead.
const deadPeerTimeout = 20 * time.Second

// dialer connects to PostgreSQL over TCP or a unix socket: within
// ConnectTimeout, and with keepalives and (on Linux) TCP_USER_TIMEOUT so
// that a connection to a vanished host fails in about deadPeerTimeout.
func dialer() *net.Dialer {
	return &net.Dialer{
		Timeout: ConnectTimeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 10 * time.Second, Interval: 5 * time.Second,
			Count: int((deadPeerTimeout - 10*time.Second) / (5 * time.Second))},
		Control: setUserTimeout,
	}
}

// redact removes the password from an error's text, in case a driver ever
// quotes its connection settings; errors.Is and errors.As still see the
// original.
func (o PostgresOptions) redact(err error) error {
	if err == nil || o.Pass == "" || !strings.Contains(err.Error(), o.Pass) {
		return err
	}
	return &redacted{msg: strings.ReplaceAll(err.Error(), o.Pass, "********"), err: err}
}

// redacted is an error whose text had the password removed.
type redacted struct {
	msg string
	err error
}

func (e *redacted) Error() string { return e.msg }
func (e *redacted) Unwrap() error { return e.err }

// pgxConfig is the driver's configuration for o: the URL, or else the
// fields, with ConnectTimeout and the dialer as defaults, the
// application_name, and, with a Schema, search_path set to it (quoted: a
// tenant's name keeps its case) as a startup parameter on either form.
func (o PostgresOptions) pgxConfig() (*pgx.ConnConfig, error) {
	conn := o.connString()
	if o.URL != "" {
		conn = o.URL
	}
	cfg, err := pgx.ParseConfig(conn)
	if err != nil {
		// pgx's error quotes the settings; say only which is wrong.
		return nil, errors.New("invalid connection settings (host, port, database, user or sslmode)")
	}
	if cfg.ConnectTimeout == 0 { // a URL without connect_timeout
		cfg.ConnectTimeout = ConnectTimeout
	}
	d := dialer()
	d.Timeout = cfg.ConnectTimeout
	cfg.DialFunc = d.DialContext
	app := o.ApplicationName
	if app == "" {
		app = ServerApplicationName
	}
	cfg.RuntimeParams["application_name"] = sessionName(app, o.Schema)
	if o.Schema != "" {
		cfg.RuntimeParams["search_path"] = quoteIdent(o.Schema)
	}
	return cfg, nil
}

// openPostgres is Open for opts.Postgres.
func openPostgres(ctx context.Context, opts Options) (*Store, error) {
	o := *opts.Postgres
	desc := o.String()
	fail := func(err error) (*Store, error) {
		return nil, fmt.Errorf("open store (%s): %w", desc, o.redact(err))
	}
	if o.Host == "" || o.Name == "" {
		return fail(errors.New("host and database name must be set"))
	}
	cfg, err := o.pgxConfig()
	if err != nil {
		return fail(err)
	}
	cfg.Tracer = opts.tracer
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var guard *tenantGuard
	if o.Schema != "" {
		guard = &tenantGuard{schema: o.Schema}
	}
	db := stdlib.OpenDB(*cfg, stdlib.OptionAfterConnect(afterConnect(guard)))
	db.SetMaxOpenConns(orDefault(o.MaxOpenConns, DefaultPostgresMaxOpenConns))
	db.SetMaxIdleConns(orDefault(o.MaxIdleConns, DefaultPostgresMaxIdleConns))
	db.SetConnMaxIdleTime(o.ConnMaxIdleTime)

	s := &Store{d: postgresDialect, write: db, read: db, log: log, desc: desc, obs: opts.Observe,
		clog: opts.ChangeLog.clone(), channel: changeChannel(o.Schema), pgcfg: cfg.Copy()}
	s.pgcfg.Tracer = nil
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return fail(fmt.Errorf("connect: %w", err))
	}
	if guard != nil {
		if err := ensureSchema(ctx, db, guard, o, !opts.NoMigrate); err != nil {
			db.Close()
			return fail(err)
		}
	}
	if err := checkForeignPostgres(ctx, db); err != nil {
		db.Close()
		return fail(err)
	}
	if err := s.migrateOrCheck(ctx, opts); err != nil {
		db.Close()
		return fail(err)
	}
	s.stop = func() {} // no background work on PostgreSQL
	log.Info("store opened", "engine", "postgres", "host", o.Host, "port", o.port(), "database", o.Name, "user", o.User, "schema", o.Schema)
	return s, nil
}

func orDefault(n, def int) int {
	if n == 0 {
		return def
	}
	return n
}

// afterConnect runs on every new connection. A COMMIT must not return
// before the transaction is on disk (a registration is acknowledged only
// once it is durable), so a server or database set to synchronous_commit =
// off is overridden for this connection; stronger settings (remote_write,
// remote_apply for standbys) are kept. With a tenant's schema (guard not
// nil), the connection's search_path must be that schema alone.
func afterConnect(guard *tenantGuard) func(ctx context.Context, conn *pgx.Conn) error {
	return func(ctx context.Context, conn *pgx.Conn) error {
		var mode, path string
		var schemas []string
		if err := conn.QueryRow(ctx, `SELECT current_setting('synchronous_commit'), current_setting('search_path'), current_schemas(false)`).Scan(&mode, &path, &schemas); err != nil {
			return fmt.Errorf("read synchronous_commit and search_path: %w", err)
		}
		if guard != nil {
			if err := guard.check(path, schemas); err != nil {
				return err
			}
		}
		if mode == "off" {
			if _, err := conn.Exec(ctx, `SET synchronous_commit = on`); err != nil {
				return fmt.Errorf("set synchronous_commit: %w", err)
			}
		}
		return nil
	}
}

// qPgTables lists the tables of the schema the store uses.
const qPgTables = `SELECT table_name FROM information_schema.tables
WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name`

// checkForeignPostgres refuses a database that has tables but no
// schema_migrations table, as checkForeignDatabase does for SQLite; it
// only reads.
func checkForeignPostgres(ctx context.Context, db *sql.DB) error {
	rows, err := db.QueryContext(ctx, qPgTables)
	if err != nil {
		return fmt.Errorf("list tables: %w", err)
	}
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return fmt.Errorf("list tables: %w", err)
		}
		tables = append(tables, name)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list tables: %w", err)
	}
	if len(tables) == 0 || slices.Contains(tables, "schema_migrations") {
		return nil
	}
	hs, err := hsdb.Recognise(ctx, db, tables)
	if err != nil {
		return err
	}
	if hs != nil {
		return fmt.Errorf("%w: this is %s; it was left unchanged: give this server a new, empty database", ErrHeadscaleDatabase, hs)
	}
	return fmt.Errorf("database has tables (%s) but no schema_migrations table: it was not created by this headscale", strings.Join(tables, ", "))
}

// DialListener opens a connection of its own, outside the pool, with the
// pool's settings (for LISTEN, which belongs to a session and blocks its
// connection while it waits). The caller closes it.
func (s *Store) DialListener(ctx context.Context) (*pgx.Conn, error) {
	if s.pgcfg == nil {
		return nil, ErrClusterNeedsPostgres
	}
	c, err := pgx.ConnectConfig(ctx, s.pgcfg.Copy())
	if err != nil {
		return nil, fmt.Errorf("connect: %w", mapErr(err))
	}
	return c, nil
}
