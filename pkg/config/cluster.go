package config

import (
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"
)

// This file holds the keys for several tailnets on one PostgreSQL
// database, cluster_id and database.postgres.url with their bare
// environment names (CLUSTER_ID, PG_DSN), and the cluster.* keys for
// several servers serving one tailnet (issue 17).

// ClusterIDPattern is what a cluster_id must match: letters, digits, "_"
// and "-", at most 40, starting with a letter or a digit. Case matters:
// "A" and "a" are two tailnets.
const ClusterIDPattern = `^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$`

// SchemaPrefix starts the PostgreSQL schema of every cluster_id's tailnet.
const SchemaPrefix = "headscale_"

// ClusterConfig configures several servers serving one tailnet (cluster).
type ClusterConfig struct {
	// Enabled lets several servers with the same PostgreSQL database and
	// cluster_id serve one tailnet: each follows the others' changes
	// through the database's change log (pkg/cluster).
	Enabled bool `koanf:"enabled"`
	// ServerName names this server among them; default its host name.
	// Two live servers may not share one.
	ServerName string `koanf:"server_name"`
	// Debounce is how long a server waits after a first change before it
	// reads (or writes) the batch, so that a burst costs one round trip.
	Debounce time.Duration `koanf:"debounce"`
	// LeaseTTL is how long a server that stopped renewing counts as
	// alive: after it, the others take its clients offline (unless they
	// reconnected elsewhere) and another server takes over its jobs.
	LeaseTTL time.Duration `koanf:"lease_ttl"`
	// HeartbeatInterval is how often a server renews; 0 means a third of
	// LeaseTTL.
	HeartbeatInterval time.Duration `koanf:"heartbeat_interval"`
}

// Minimums for the cluster's timings.
const (
	minLeaseTTL = time.Second
	maxDebounce = time.Second
)

// Heartbeat is HeartbeatInterval, or a third of LeaseTTL when unset.
func (c ClusterConfig) Heartbeat() time.Duration {
	if c.HeartbeatInterval > 0 {
		return c.HeartbeatInterval
	}
	return c.LeaseTTL / 3
}

// Name is ServerName, or the host name when unset.
func (c ClusterConfig) Name() string {
	if c.ServerName != "" {
		return c.ServerName
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "headscale"
}

// Schema is the PostgreSQL schema holding this server's tailnet:
// headscale_<cluster_id>, or "" (the database's default schema) without a
// cluster_id.
func (c *Config) Schema() string {
	if c.ClusterID == "" {
		return ""
	}
	return SchemaPrefix + c.ClusterID
}

// envAlias is an environment variable read as well as a key's HEADSCALE_
// name.
type envAlias struct {
	name, key string
	// secret: the value is not quoted in messages.
	secret bool
}

// bareEnvAliases are the environment names the seed's deployments use
// (`CLUSTER_ID=a PG_DSN=postgres://... headscale serve`). They are read
// below the HEADSCALE_ names and above the file; an empty one is ignored.
func bareEnvAliases() []envAlias {
	return []envAlias{
		{name: "CLUSTER_ID", key: "cluster_id"},
		{name: "PG_DSN", key: "database.postgres.url", secret: true},
	}
}

// loadAliases merges the bare environment names over the file. An alias
// and the key's HEADSCALE_ name both set to different values is an error
// naming both (the HEADSCALE_ value is then the one loadEnv keeps, for
// the other checks).
func (l *loader) loadAliases() error {
	for _, a := range bareEnvAliases() {
		v := l.env[a.name]
		if v == "" {
			continue
		}
		from := origin{file: "env " + a.name, key: a.key}
		full := l.idx.byKey[a.key].envName()
		if other, set := l.env[full]; set && other != v {
			reason := fmt.Sprintf("%s and %s are both set, to different values; set only one of them", a.name, full)
			if !a.secret {
				reason = fmt.Sprintf("%s=%q and %s=%q are both set, to different values; set only one of them", a.name, v, full, other)
			}
			l.errs = append(l.errs, l.problemFrom(from, "", reason))
			continue
		}
		if err := l.set(a.key, v); err != nil {
			return err
		}
		l.origins[a.key] = from
	}
	return nil
}

// validateCluster checks cluster_id and cluster.enabled; it runs after
// validateDatabase has settled database.type.
func (l *loader) validateCluster(c *Config) {
	if l.ok("cluster.enabled") && c.Cluster.Enabled {
		l.validateClusterServers(c)
	}
	if !l.ok("cluster_id") || c.ClusterID == "" {
		return
	}
	if !regexp.MustCompile(ClusterIDPattern).MatchString(c.ClusterID) {
		l.errorf("cluster_id", "%q must match %s (letters, digits, _ and -, at most 40, starting with a letter or digit): "+
			"it names the PostgreSQL schema %s<cluster_id>", c.ClusterID, ClusterIDPattern, SchemaPrefix)
		return
	}
	if regexp.MustCompile(`^v?[0-9]+_[0-9]+_[0-9]+`).MatchString(c.ClusterID) {
		// Taking over a Headscale database on PostgreSQL keeps its tables
		// in headscale_<version> (headscale_v0_27_1).
		l.errorf("cluster_id", "%q looks like a Headscale version: %s%s may be the copy of Headscale's tables a takeover "+
			"keeps in the database; choose another cluster_id", c.ClusterID, SchemaPrefix, c.ClusterID)
		return
	}
	if l.ok("database.type") && c.Database.Type == "sqlite" {
		l.errorf("cluster_id", "cluster_id needs database.type postgres: it names a tailnet's schema in a PostgreSQL "+
			"database that several tailnets share, and a SQLite file holds one tailnet; database.type is sqlite (%s)",
			l.describeOrigin("database.type"))
	}
}

// validatePostgresURL checks database.postgres.url when it is set: a
// postgres:// URL that is the whole connection, so none of the fields it
// replaces may be set as well. Its full parse is the store's
// (store.ParsePostgresURL, run by the server's pre-flight checks). No
// message quotes the URL, which may hold a password.
func (l *loader) validatePostgresURL(pg *PostgresConfig) {
	if !l.ok("database.postgres.url") {
		return
	}
	if !strings.HasPrefix(pg.URL, "postgres://") && !strings.HasPrefix(pg.URL, "postgresql://") {
		l.errorf("database.postgres.url", "must be a postgres:// or postgresql:// URL (postgres://user:password@host:port/database?sslmode=verify-full)")
		return
	}
	var also []string
	for _, f := range []struct {
		key string
		set bool
	}{
		{"database.postgres.host", pg.Host != ""},
		{"database.postgres.port", pg.Port != 5432},
		{"database.postgres.name", pg.Name != ""},
		{"database.postgres.user", pg.User != ""},
		{"database.postgres.pass", pg.Pass != ""},
		{"database.postgres.pass_file", pg.PassFile != ""},
		{"database.postgres.ssl", pg.SSL != "disable"},
	} {
		if f.set && l.ok(f.key) {
			also = append(also, fmt.Sprintf("%s (%s)", f.key, l.describeOrigin(f.key)))
		}
	}
	if len(also) > 0 {
		l.errorf("database.postgres.url", "the URL is the whole connection, but %s %s set too: put them in the URL "+
			"(sslmode=... as a parameter) and leave the fields empty, or leave out the URL",
			strings.Join(also, ", "), map[bool]string{true: "is", false: "are"}[len(also) == 1])
	}
}

// redactURL is a postgres:// URL without its password (in the user part
// or as a password parameter), for messages.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "postgres://(a URL that does not parse; not shown)"
	}
	if u.User != nil {
		u.User = url.User(u.User.Username())
	}
	if q := u.Query(); q.Has("password") {
		q.Del("password")
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// validateClusterServers checks the settings of several servers serving
// one tailnet (cluster.enabled).
func (l *loader) validateClusterServers(c *Config) {
	cl := c.Cluster
	if l.ok("database.type") && c.Database.Type != "postgres" {
		l.errorf("cluster.enabled", "several servers serving one tailnet need database.type postgres: they share its "+
			"database and follow each other through it; database.type is %s (%s)", c.Database.Type, l.describeOrigin("database.type"))
	}
	if l.ok("cluster.server_name") && cl.ServerName != "" && !regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`).MatchString(cl.ServerName) {
		l.errorf("cluster.server_name", "%q: use letters, digits, '.', '_' and '-' (at most 63), e.g. the host name", cl.ServerName)
	}
	if l.ok("cluster.lease_ttl") && cl.LeaseTTL < minLeaseTTL {
		l.errorf("cluster.lease_ttl", "%v is too short: at least %v (a server that misses its renewals this long is taken for dead)", cl.LeaseTTL, minLeaseTTL)
	}
	if l.ok("cluster.debounce") && (cl.Debounce < 0 || cl.Debounce > maxDebounce) {
		l.errorf("cluster.debounce", "%v: between 0 and %v (it delays every change between servers)", cl.Debounce, maxDebounce)
	}
	if l.ok("cluster.heartbeat_interval", "cluster.lease_ttl") && (cl.HeartbeatInterval < 0 || cl.HeartbeatInterval > 0 && cl.HeartbeatInterval*2 > cl.LeaseTTL) {
		l.errorf("cluster.heartbeat_interval", "%v: between 0 (a third of cluster.lease_ttl) and half of cluster.lease_ttl (%v), so that one missed renewal is not fatal", cl.HeartbeatInterval, cl.LeaseTTL)
	}
	if l.ok("derp.server.enabled", "derp.server.automatically_add_embedded_derp_region") && c.DERP.Server.Enabled && c.DERP.Server.AutomaticallyAddEmbeddedDERPRegion {
		l.errorf("derp.server.automatically_add_embedded_derp_region", "with cluster.enabled every server would add its own DERP relay "+
			"as one region reached through server_url, so two clients relaying through different servers could not reach each other; "+
			"set it to false and list each server's relay as a region of its own in a derp.paths file every server shares "+
			"(docs/runbook.md, \"Several servers\"), or use external DERP servers")
	}
}
