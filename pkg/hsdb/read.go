package hsdb

// Reading a whole Headscale database into plain values. Every column is
// read as text (CAST ... AS TEXT) and parsed here, so the forms different
// releases and drivers wrote (times with a space or a T, with or without
// fraction and zone, booleans as 0/1 or true/false, lists as JSON, NULL,
// '' or 'null') are all accepted, and the driver never pre-parses a value
// into something else.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	_ "modernc.org/sqlite" // the database/sql driver "sqlite"
)

// ErrRefused wraps every reason a database cannot be taken over: not a
// supported Headscale release, damaged, or missing what the release must
// have. Nothing was changed.
var ErrRefused = errors.New("refusing the Headscale database")

// Snapshot is everything in a Headscale database that can be carried over,
// as plain values. IDs are Headscale's. Times are UTC; the zero time stands
// for NULL and for Headscale's "never" (the zero time or any date before
// 1900).
type Snapshot struct {
	// Path is the file that was read.
	Path string
	// Database names the release.
	Database Database
	Users    []User
	Nodes    []Node
	// PreAuthKeys carry their tags from the tags column (0.24+) or the
	// pre_auth_key_acl_tags table (0.23).
	PreAuthKeys []PreAuthKey
	APIKeys     []APIKey
	// Policies are every row of the policies table, by id.
	Policies []Policy
	// Routes are the rows of the routes table (Headscale 0.23–0.25 only).
	Routes []Route
	// HasRoutesTable is set when the routes table exists.
	HasRoutesTable bool
	// HasApprovedRoutes is set when nodes.approved_routes exists (0.26+).
	HasApprovedRoutes bool
	// Sequences are sqlite_sequence's values by table name.
	Sequences map[string]int64
	// Counts is the number of rows of each table that was read.
	Counts map[string]int
	// Notes are values that could not be read and were left out (an
	// optional column only: the row itself was kept).
	Notes []string
}

// User is a row of users.
type User struct {
	ID          uint64
	Name        string
	DisplayName string
	Email       string
	// ProviderIdentifier is "" for a local user (NULL in Headscale).
	ProviderIdentifier string
	Provider           string
	ProfilePicURL      string
	CreatedAt          time.Time
	UpdatedAt          time.Time
	// DeletedAt is set on a soft-deleted row, which Headscale ignores.
	DeletedAt time.Time
}

// Node is a row of nodes.
type Node struct {
	ID         uint64
	MachineKey string
	NodeKey    string
	DiscoKey   string
	Endpoints  []string
	// HostInfo is the raw tailcfg.Hostinfo JSON, "" when absent.
	HostInfo string
	IPv4     string
	IPv6     string
	Hostname string
	// GivenName is the MagicDNS name.
	GivenName string
	// UserID is 0 when NULL (0.29 tagged nodes).
	UserID         uint64
	RegisterMethod string
	// Tags is forced_tags (≤0.27) or tags (0.28+).
	Tags []string
	// AuthKeyID is 0 when NULL.
	AuthKeyID uint64
	LastSeen  time.Time
	Expiry    time.Time
	// ApprovedRoutes is the approved_routes column (0.26+).
	ApprovedRoutes []string
	CreatedAt      time.Time
	UpdatedAt      time.Time
	DeletedAt      time.Time
}

// PreAuthKey is a row of pre_auth_keys.
type PreAuthKey struct {
	ID uint64
	// Key is the plaintext key Headscale ≤0.27 stored ("" when absent).
	Key string
	// Prefix and Hash are the 0.28+ form: a 12-character prefix and the
	// bcrypt hash of the secret.
	Prefix string
	Hash   []byte
	// UserID is 0 when NULL.
	UserID     uint64
	Reusable   bool
	Ephemeral  bool
	Used       bool
	Tags       []string
	Expiration time.Time
	CreatedAt  time.Time
}

// APIKey is a row of api_keys.
type APIKey struct {
	ID         uint64
	Prefix     string
	Hash       []byte
	Expiration time.Time
	LastSeen   time.Time
	CreatedAt  time.Time
}

// Policy is a row of policies.
type Policy struct {
	ID        uint64
	Data      string
	CreatedAt time.Time
	UpdatedAt time.Time
	DeletedAt time.Time
}

// Route is a row of the routes table of Headscale 0.23–0.25.
type Route struct {
	ID         uint64
	NodeID     uint64
	Prefix     string
	Advertised bool
	Enabled    bool
	IsPrimary  bool
	CreatedAt  time.Time
	DeletedAt  time.Time
}

// Probe reports whether the SQLite file at path was written by Headscale,
// reading it without changing it. It returns nil and no error for a file
// that is missing, empty, not a SQLite database, or another program's
// database (this server's own included).
func Probe(ctx context.Context, path string) (*Database, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) || (err == nil && fi.Size() == 0) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	db, err := OpenRead(path)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	tables, err := listTables(ctx, db)
	if err != nil {
		return nil, nil // not a database: not ours to judge
	}
	if slices.Contains(tables, "schema_migrations") {
		return nil, nil
	}
	return Recognise(ctx, db, tables)
}

// OpenRead opens the SQLite file at path for reading without changing it
// and without leaving files beside it. Read-only mode is used only when a
// -wal file with content is present (a Headscale that did not stop
// cleanly): read-only connections to a WAL database leave -wal and -shm
// files behind, while a read-write connection that writes nothing removes
// them when it closes and leaves the database file as it was. Its
// connections are query_only either way.
func OpenRead(path string) (*sql.DB, error) {
	q := url.Values{"_pragma": {"busy_timeout(10000)", "query_only(1)"}}
	if fi, err := os.Stat(path + "-wal"); err == nil && fi.Size() > 0 {
		q.Set("mode", "ro")
	}
	u := url.URL{Scheme: "file", Path: path, RawQuery: q.Encode()}
	db, err := sql.Open("sqlite", u.String())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	return db, nil
}

func listTables(ctx context.Context, db *sql.DB) ([]string, error) {
	rows, err := db.QueryContext(ctx, `SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

// Read opens the Headscale database at path read-only, checks it and reads
// everything into a Snapshot. A database that is not from Headscale
// 0.23–0.29, fails PRAGMA integrity_check, lacks a table or column its
// release has, or holds a value that cannot be read in a required column is
// refused with an error wrapping ErrRefused that names what was found.
func Read(ctx context.Context, path string) (*Snapshot, error) {
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("%w %s: %s", ErrRefused, path, fmt.Sprintf(format, args...))
	}
	if _, err := os.Stat(path); err != nil {
		return nil, refuse("%v", err)
	}
	db, err := OpenRead(path)
	if err != nil {
		return nil, refuse("%v", err)
	}
	defer db.Close()
	tables, err := listTables(ctx, db)
	if err != nil {
		return nil, refuse("it cannot be read as a SQLite database: %v", err)
	}
	var check []string
	rows, err := db.QueryContext(ctx, `PRAGMA integrity_check`)
	if err != nil {
		return nil, refuse("integrity_check: %v", err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			rows.Close()
			return nil, refuse("integrity_check: %v", err)
		}
		check = append(check, s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, refuse("integrity_check: %v", err)
	}
	if len(check) != 1 || check[0] != "ok" {
		if len(check) > 5 {
			check = append(check[:5], "…")
		}
		return nil, refuse("it is damaged (integrity_check: %s)", strings.Join(check, "; "))
	}
	d, err := Recognise(ctx, db, tables)
	if err != nil {
		return nil, refuse("%v", err)
	}
	if d == nil {
		return nil, refuse("it is not a Headscale database (tables: %s)", strings.Join(tables, ", "))
	}
	if !d.Supported() {
		return nil, refuse("it is %s; this server takes over Headscale 0.23.0 through 0.29.2 only", d)
	}
	r := &reader{ctx: ctx, db: db, snap: &Snapshot{Path: path, Database: *d, Counts: map[string]int{}, Sequences: map[string]int64{}}}
	if err := r.readAll(tables); err != nil {
		return nil, fmt.Errorf("%w %s (%s): %w", ErrRefused, path, d, err)
	}
	return r.snap, nil
}

// reader holds the state of one Read or ReadPostgres.
type reader struct {
	ctx  context.Context
	db   Queryer
	pg   bool // the database is PostgreSQL: its catalog and sequences
	snap *Snapshot
}

// column is one column a table is read with. Required columns must exist
// and hold a readable value in every row; an optional column that is
// missing reads as NULL.
type column struct {
	name     string
	required bool
	blob     bool
}

func req(name string) column { return column{name: name, required: true} }
func opt(name string) column { return column{name: name} }

// row is one row read as text (nil for NULL), blobs as bytes.
type row struct {
	table string
	rowID string
	vals  map[string]*string
	blobs map[string][]byte
}

func (r *reader) columns(table string) (map[string]bool, error) {
	q := `SELECT name FROM pragma_table_info($1)`
	if r.pg {
		q = qPgColumns
	}
	rows, err := r.db.QueryContext(r.ctx, q, table)
	if err != nil {
		return nil, fmt.Errorf("reading the columns of %s: %w", table, err)
	}
	defer rows.Close()
	have := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, fmt.Errorf("reading the columns of %s: %w", table, err)
		}
		have[strings.ToLower(n)] = true
	}
	return have, rows.Err()
}

// scan reads every row of table with the given columns, in id order.
func (r *reader) scan(table string, cols []column, fn func(row) error) error {
	have, err := r.columns(table)
	if err != nil {
		return err
	}
	var missing, exprs []string
	for _, c := range cols {
		switch {
		case !have[c.name] && c.required:
			missing = append(missing, c.name)
			exprs = append(exprs, "NULL")
		case !have[c.name]:
			exprs = append(exprs, "NULL")
		case c.blob:
			exprs = append(exprs, `"`+c.name+`"`)
		default:
			exprs = append(exprs, `CAST("`+c.name+`" AS TEXT)`)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("table %s lacks the column(s) %s that this release has", table, strings.Join(missing, ", "))
	}
	rows, err := r.db.QueryContext(r.ctx, `SELECT `+strings.Join(exprs, ", ")+` FROM "`+table+`" ORDER BY id`)
	if err != nil {
		return fmt.Errorf("reading %s: %w", table, err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		dest := make([]any, len(cols))
		for i, c := range cols {
			if c.blob {
				dest[i] = new(any)
			} else {
				dest[i] = new(sql.NullString)
			}
		}
		if err := rows.Scan(dest...); err != nil {
			return fmt.Errorf("reading %s: %w", table, err)
		}
		rw := row{table: table, vals: map[string]*string{}, blobs: map[string][]byte{}}
		for i, c := range cols {
			if c.blob {
				switch v := (*dest[i].(*any)).(type) {
				case []byte:
					rw.blobs[c.name] = slices.Clone(v)
				case string:
					rw.blobs[c.name] = []byte(v)
				case nil:
				default:
					return fmt.Errorf("reading %s: column %s holds %T, want bytes", table, c.name, v)
				}
				continue
			}
			if ns := dest[i].(*sql.NullString); ns.Valid {
				s := ns.String
				rw.vals[c.name] = &s
			}
		}
		if v := rw.vals["id"]; v != nil {
			rw.rowID = *v
		}
		if err := fn(rw); err != nil {
			return err
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading %s: %w", table, err)
	}
	r.snap.Counts[table] = n
	return nil
}

// Field parsers: each names the table, row and column in its error.

func (w row) fail(col, format string, args ...any) error {
	return fmt.Errorf("%s row %s, column %s: %s", w.table, w.rowID, col, fmt.Sprintf(format, args...))
}

func (w row) str(col string) string {
	if v := w.vals[col]; v != nil {
		return *v
	}
	return ""
}

// id reads a required positive integer.
func (w row) id(col string) (uint64, error) {
	v := w.vals[col]
	if v == nil {
		return 0, w.fail(col, "is NULL")
	}
	n, err := strconv.ParseUint(strings.TrimSpace(*v), 10, 64)
	if err != nil || n == 0 {
		return 0, w.fail(col, "%q is not an id", *v)
	}
	return n, nil
}

// optID reads an optional id: NULL, empty text and 0 are 0.
func (w row) optID(col string) (uint64, error) {
	v := w.vals[col]
	if v == nil || strings.TrimSpace(*v) == "" || strings.TrimSpace(*v) == "0" {
		return 0, nil
	}
	return w.id(col)
}

// boolean reads 0/1, true/false (NULL is false).
func (w row) boolean(col string) (bool, error) {
	v := w.vals[col]
	if v == nil {
		return false, nil
	}
	switch strings.ToLower(strings.TrimSpace(*v)) {
	case "", "0", "false", "f", "0.0":
		return false, nil
	case "1", "true", "t", "1.0":
		return true, nil
	}
	return false, w.fail(col, "%q is not a boolean", *v)
}

// timeLayouts are the text forms of times the SQLite drivers Headscale used
// wrote (mattn/go-sqlite3 and glebarez/modernc) and PostgreSQL gives for
// timestamptz cast to text, most common first.
var timeLayouts = []string{
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999Z07", // PostgreSQL's timestamptz as text
	"2006-01-02T15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999 -0700 MST",
	"2006-01-02 15:04:05.999999999 -0700 -0700",
	"2006-01-02 15:04:05.999999999-0700",
	"2006-01-02T15:04:05.999999999-0700",
	"2006-01-02 15:04:05.999999999",
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04",
	"2006-01-02",
}

// ParseTime reads a time as Headscale's SQLite databases hold it. "",
// the zero time and any date before 1900 (Headscale's "never") give the
// zero time. A bare integer is unix seconds.
func ParseTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if i := strings.Index(s, " m="); i > 0 { // Go's monotonic clock suffix
		s = s[:i]
	}
	if s == "" || strings.EqualFold(s, "null") {
		return time.Time{}, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n <= 0 {
			return time.Time{}, nil
		}
		return time.Unix(n, 0).UTC(), nil
	}
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			if t.Year() < 1900 {
				return time.Time{}, nil
			}
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time", s)
}

func (w row) time(col string) (time.Time, error) {
	t, err := ParseTime(w.str(col))
	if err != nil {
		return time.Time{}, w.fail(col, "%v", err)
	}
	return t, nil
}

// ParseList reads a string list as Headscale stores it: JSON text, where
// NULL, empty text, 'null' and '[]' are the empty list. Empty strings in the list
// are dropped.
func ParseList(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "null" || s == "[]" {
		return nil, nil
	}
	var l []string
	if err := json.Unmarshal([]byte(s), &l); err != nil {
		return nil, fmt.Errorf("%q is not a JSON list of strings", s)
	}
	out := l[:0]
	for _, v := range l {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

func (w row) list(col string) ([]string, error) {
	l, err := ParseList(w.str(col))
	if err != nil {
		return nil, w.fail(col, "%v", err)
	}
	return l, nil
}

// note records a value of an optional column that could not be read.
func (r *reader) note(err error) { r.snap.Notes = append(r.snap.Notes, err.Error()+" (left out)") }

func (r *reader) readAll(tables []string) error {
	has := func(t string) bool { return slices.Contains(tables, t) }
	for _, t := range []string{"users", "nodes", "pre_auth_keys", "api_keys", "policies"} {
		if !has(t) {
			return fmt.Errorf("the table %s is missing", t)
		}
	}
	if err := r.readUsers(); err != nil {
		return err
	}
	if err := r.readPreAuthKeys(has("pre_auth_key_acl_tags")); err != nil {
		return err
	}
	if err := r.readNodes(); err != nil {
		return err
	}
	if err := r.readAPIKeys(); err != nil {
		return err
	}
	if err := r.readPolicies(); err != nil {
		return err
	}
	if has("routes") {
		r.snap.HasRoutesTable = true
		if err := r.readRoutes(); err != nil {
			return err
		}
	}
	if r.pg {
		return r.readPgSequences()
	}
	if has("sqlite_sequence") {
		rows, err := r.db.QueryContext(r.ctx, `SELECT name, CAST(seq AS TEXT) FROM sqlite_sequence`)
		if err != nil {
			return fmt.Errorf("reading sqlite_sequence: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var name, seq sql.NullString
			if err := rows.Scan(&name, &seq); err != nil {
				return fmt.Errorf("reading sqlite_sequence: %w", err)
			}
			if n, err := strconv.ParseInt(seq.String, 10, 64); err == nil {
				r.snap.Sequences[name.String] = n
			}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("reading sqlite_sequence: %w", err)
		}
	}
	return nil
}

func (r *reader) readUsers() error {
	cols := []column{req("id"), req("name"), opt("display_name"), opt("email"), opt("provider_identifier"),
		opt("provider"), opt("profile_pic_url"), req("created_at"), opt("updated_at"), opt("deleted_at")}
	return r.scan("users", cols, func(w row) error {
		var u User
		var err error
		if u.ID, err = w.id("id"); err != nil {
			return err
		}
		u.Name, u.DisplayName, u.Email = w.str("name"), w.str("display_name"), w.str("email")
		u.ProviderIdentifier, u.Provider, u.ProfilePicURL = w.str("provider_identifier"), w.str("provider"), w.str("profile_pic_url")
		if u.CreatedAt, err = w.time("created_at"); err != nil {
			return err
		}
		if u.UpdatedAt, err = w.time("updated_at"); err != nil {
			return err
		}
		if u.DeletedAt, err = w.time("deleted_at"); err != nil {
			return err
		}
		r.snap.Users = append(r.snap.Users, u)
		return nil
	})
}

func (r *reader) readPreAuthKeys(aclTagsTable bool) error {
	cols := []column{req("id"), opt("key"), opt("prefix"), {name: "hash", blob: true}, req("user_id"), req("reusable"),
		req("ephemeral"), req("used"), opt("tags"), req("expiration"), req("created_at")}
	err := r.scan("pre_auth_keys", cols, func(w row) error {
		var k PreAuthKey
		var err error
		if k.ID, err = w.id("id"); err != nil {
			return err
		}
		k.Key, k.Prefix, k.Hash = strings.TrimSpace(w.str("key")), strings.TrimSpace(w.str("prefix")), w.blobs["hash"]
		if k.Key == "" && (k.Prefix == "" || len(k.Hash) == 0) {
			return w.fail("key", "the row holds neither a key nor a prefix and hash")
		}
		if k.UserID, err = w.optID("user_id"); err != nil {
			return err
		}
		for col, dst := range map[string]*bool{"reusable": &k.Reusable, "ephemeral": &k.Ephemeral, "used": &k.Used} {
			if *dst, err = w.boolean(col); err != nil {
				return err
			}
		}
		if k.Tags, err = w.list("tags"); err != nil {
			return err
		}
		if k.Expiration, err = w.time("expiration"); err != nil {
			return err
		}
		if k.CreatedAt, err = w.time("created_at"); err != nil {
			return err
		}
		r.snap.PreAuthKeys = append(r.snap.PreAuthKeys, k)
		return nil
	})
	if err != nil || !aclTagsTable {
		return err
	}
	// Headscale 0.23 kept a pre-auth key's tags in a table of their own;
	// 0.24 copied them into the tags column, and the table lingered
	// until 0.27.1 dropped it. The column, where present, is the truth.
	if have, err := r.columns("pre_auth_keys"); err != nil || have["tags"] {
		return err
	}
	byID := map[uint64]*PreAuthKey{}
	for i := range r.snap.PreAuthKeys {
		byID[r.snap.PreAuthKeys[i].ID] = &r.snap.PreAuthKeys[i]
	}
	return r.scan("pre_auth_key_acl_tags", []column{req("id"), req("pre_auth_key_id"), req("tag")}, func(w row) error {
		kid, err := w.id("pre_auth_key_id")
		if err != nil {
			return err
		}
		k := byID[kid]
		tag := strings.TrimSpace(w.str("tag"))
		if k == nil {
			r.note(w.fail("pre_auth_key_id", "tag %q of pre-auth key %d, which does not exist", tag, kid))
			return nil
		}
		if tag != "" && !slices.Contains(k.Tags, tag) {
			k.Tags = append(k.Tags, tag)
		}
		return nil
	})
}

func (r *reader) readNodes() error {
	have, err := r.columns("nodes")
	if err != nil {
		return err
	}
	tagsCol := "tags"
	if !have["tags"] {
		tagsCol = "forced_tags"
	}
	r.snap.HasApprovedRoutes = have["approved_routes"]
	cols := []column{req("id"), req("machine_key"), req("node_key"), opt("disco_key"), opt("endpoints"), opt("host_info"),
		req("ipv4"), req("ipv6"), req("hostname"), req("given_name"), req("user_id"), opt("register_method"),
		req(tagsCol), opt("auth_key_id"), opt("last_seen"), opt("expiry"), opt("approved_routes"),
		opt("created_at"), opt("updated_at"), opt("deleted_at")}
	return r.scan("nodes", cols, func(w row) error {
		var n Node
		var err error
		if n.ID, err = w.id("id"); err != nil {
			return err
		}
		n.MachineKey, n.NodeKey, n.DiscoKey = strings.TrimSpace(w.str("machine_key")), strings.TrimSpace(w.str("node_key")), strings.TrimSpace(w.str("disco_key"))
		if n.Endpoints, err = w.list("endpoints"); err != nil {
			r.note(err)
			n.Endpoints = nil
		}
		n.HostInfo = strings.TrimSpace(w.str("host_info"))
		if n.HostInfo == "null" {
			n.HostInfo = ""
		}
		n.IPv4, n.IPv6 = strings.TrimSpace(w.str("ipv4")), strings.TrimSpace(w.str("ipv6"))
		n.Hostname, n.GivenName = w.str("hostname"), w.str("given_name")
		if n.UserID, err = w.optID("user_id"); err != nil {
			return err
		}
		n.RegisterMethod = w.str("register_method")
		if n.Tags, err = w.list(tagsCol); err != nil {
			return err
		}
		if n.AuthKeyID, err = w.optID("auth_key_id"); err != nil {
			return err
		}
		for col, dst := range map[string]*time.Time{"last_seen": &n.LastSeen, "expiry": &n.Expiry,
			"created_at": &n.CreatedAt, "updated_at": &n.UpdatedAt, "deleted_at": &n.DeletedAt} {
			if *dst, err = w.time(col); err != nil {
				return err
			}
		}
		if n.ApprovedRoutes, err = w.list("approved_routes"); err != nil {
			return err
		}
		r.snap.Nodes = append(r.snap.Nodes, n)
		return nil
	})
}

func (r *reader) readAPIKeys() error {
	cols := []column{req("id"), req("prefix"), {name: "hash", blob: true, required: true}, req("expiration"), opt("last_seen"), req("created_at")}
	return r.scan("api_keys", cols, func(w row) error {
		var k APIKey
		var err error
		if k.ID, err = w.id("id"); err != nil {
			return err
		}
		k.Prefix, k.Hash = strings.TrimSpace(w.str("prefix")), w.blobs["hash"]
		if k.Prefix == "" || len(k.Hash) == 0 {
			return w.fail("prefix", "the row has no prefix or no hash")
		}
		for col, dst := range map[string]*time.Time{"expiration": &k.Expiration, "last_seen": &k.LastSeen, "created_at": &k.CreatedAt} {
			if *dst, err = w.time(col); err != nil {
				return err
			}
		}
		r.snap.APIKeys = append(r.snap.APIKeys, k)
		return nil
	})
}

func (r *reader) readPolicies() error {
	cols := []column{req("id"), req("data"), opt("created_at"), opt("updated_at"), opt("deleted_at")}
	return r.scan("policies", cols, func(w row) error {
		var p Policy
		var err error
		if p.ID, err = w.id("id"); err != nil {
			return err
		}
		p.Data = w.str("data")
		for col, dst := range map[string]*time.Time{"created_at": &p.CreatedAt, "updated_at": &p.UpdatedAt, "deleted_at": &p.DeletedAt} {
			if *dst, err = w.time(col); err != nil {
				return err
			}
		}
		r.snap.Policies = append(r.snap.Policies, p)
		return nil
	})
}

func (r *reader) readRoutes() error {
	cols := []column{req("id"), req("node_id"), req("prefix"), opt("advertised"), req("enabled"), opt("is_primary"), opt("created_at"), opt("deleted_at")}
	return r.scan("routes", cols, func(w row) error {
		var rt Route
		var err error
		if rt.ID, err = w.id("id"); err != nil {
			return err
		}
		if rt.NodeID, err = w.optID("node_id"); err != nil {
			return err
		}
		rt.Prefix = strings.Trim(strings.TrimSpace(w.str("prefix")), `"`)
		for col, dst := range map[string]*bool{"advertised": &rt.Advertised, "enabled": &rt.Enabled, "is_primary": &rt.IsPrimary} {
			if *dst, err = w.boolean(col); err != nil {
				return err
			}
		}
		if rt.CreatedAt, err = w.time("created_at"); err != nil {
			return err
		}
		if rt.DeletedAt, err = w.time("deleted_at"); err != nil {
			return err
		}
		r.snap.Routes = append(r.snap.Routes, rt)
		return nil
	})
}
