// Package config loads, merges and validates the control server's
// configuration.
//
// Configuration comes from koanf layers, later ones winning: built-in
// defaults, one YAML file (Headscale-compatible, including its older key
// names), the bare CLUSTER_ID and PG_DSN environment variables (for
// cluster_id and database.postgres.url; cluster.go), and HEADSCALE_*
// environment variables; paths left unset then
// default to files inside state_dir. With no file, state_dir is ./data;
// a file that leaves state_dir unset is taken as a Headscale config and
// gets Headscale's locations: state in /var/lib/headscale, the socket at
// /var/run/headscale/headscale.sock. As in Headscale, a relative path in
// the key files, the SQLite database, the policy file or the TLS files
// (from the file or the environment) is taken from the config file's
// directory; other relative paths, state_dir included, from the working
// directory. The file is the first of --config, HEADSCALE_CONFIG and
// DefaultSearchPaths that is given or exists. The merged values are
// unmarshalled into Config by the fields' koanf tags. The file is parsed
// once, into a YAML node tree that gives both the file layer and the line
// of every key.
// Load reports every problem it finds at once, each tied to the file and
// line (or environment variable) it came from, so an operator can fix a
// broken file in one pass.
//
// The key table in keys.go lists every key: its default, its environment
// variable, old names and keys accepted but not implemented. Adding a key
// means a row there, a tagged field in Config, a check in validate.go if
// it needs one, and a line in etc/headscale/config.yaml.
package config

import (
	"fmt"
	"io/fs"
	"net/netip"
	"path/filepath"
	"strings"
	"time"
)

// Config is the fully resolved, validated configuration shared by the server
// and the CLI.
type Config struct {
	// ServerURL is the public URL clients use to reach the server (server_url).
	ServerURL string `koanf:"server_url"`
	// ListenAddr is the host:port the HTTP server binds (listen_addr).
	ListenAddr string `koanf:"listen_addr"`
	// GRPCListenAddr is the host:port of Headscale's gRPC API
	// (grpc_listen_addr, default ":50443" as in Headscale); it is served
	// only with TLS (tls_cert_path) or GRPCAllowInsecure, and "" turns it
	// off.
	GRPCListenAddr string `koanf:"grpc_listen_addr"`
	// GRPCAllowInsecure serves the gRPC API without TLS when no
	// certificate is configured (grpc_allow_insecure).
	GRPCAllowInsecure bool `koanf:"grpc_allow_insecure"`
	// MetricsListenAddr is the host:port of the metrics/debug server
	// (metrics_listen_addr); "" disables it.
	MetricsListenAddr string `koanf:"metrics_listen_addr"`
	// TrustedProxies are the addresses and prefixes of reverse proxies
	// whose X-Forwarded-For and X-Real-IP headers name the client
	// (trusted_proxies; pkg/clientaddr). Unset: loopback (127.0.0.0/8,
	// ::1); an empty list trusts none.
	TrustedProxies []string `koanf:"trusted_proxies"`
	// StateDir holds keys and the database unless configured otherwise
	// (state_dir, env HEADSCALE_STATE_DIR). Its default is ./data with no
	// config file and /var/lib/headscale when a file is loaded, as in
	// Headscale. When it is set, or no file is loaded, the socket is
	// inside it too.
	StateDir string `koanf:"state_dir"`
	// Noise configures the server's Noise protocol key.
	Noise NoiseConfig `koanf:"noise"`
	// Prefixes are the address ranges nodes get their IPs from.
	Prefixes PrefixesConfig `koanf:"prefixes"`
	// DERP configures relay servers: the embedded one and external maps.
	DERP DERPConfig `koanf:"derp"`
	// ClusterID names this server's tailnet on a PostgreSQL database that
	// several tailnets share (cluster_id, env HEADSCALE_CLUSTER_ID or
	// CLUSTER_ID): its tables live in the schema headscale_<ClusterID>
	// (Schema). "" keeps the database's default schema, as before the key
	// existed. It matches ClusterIDPattern, and needs database.type
	// postgres.
	ClusterID string `koanf:"cluster_id"`
	// Cluster configures several servers serving one tailnet (cluster.*).
	Cluster ClusterConfig `koanf:"cluster"`
	// Database selects and configures the storage backend.
	Database DatabaseConfig `koanf:"database"`
	// DNS is the DNS configuration pushed to clients.
	DNS DNSConfig `koanf:"dns"`
	// Policy says where the access-control policy is stored.
	Policy PolicyConfig `koanf:"policy"`
	// Log configures the server's log output.
	Log LogConfig `koanf:"log"`
	// Node holds defaults applied to registered nodes.
	Node NodeConfig `koanf:"node"`
	// UnixSocket is the path of the local admin socket (unix_socket). Left
	// unset, it is Headscale's /var/run/headscale/headscale.sock when a
	// config file is loaded that leaves state_dir unset, else
	// headscale.sock inside StateDir.
	UnixSocket string `koanf:"unix_socket"`
	// UnixSocketPermission is the file mode applied to UnixSocket
	// (unix_socket_permission, octal in YAML such as "0770").
	UnixSocketPermission fs.FileMode `koanf:"unix_socket_permission"`
	// TLS holds the certificate the server terminates TLS with, if any
	// (its keys are top-level: tls_cert_path, tls_key_path).
	TLS TLSConfig `koanf:",squash"`
	// Taildrop switches file sharing between nodes on or off (taildrop).
	Taildrop TaildropConfig `koanf:"taildrop"`
	// AutoUpdate is the tailnet's default for client auto-updates
	// (auto_update).
	AutoUpdate AutoUpdateConfig `koanf:"auto_update"`
	// RandomizeClientPort makes every node's WireGuard port random instead
	// of 41641 (randomize_client_port, as Headscale 0.28 and older read
	// it; the policy's randomizeClientPort does the same).
	RandomizeClientPort bool `koanf:"randomize_client_port"`
	// OIDC configures login through an OpenID Connect provider.
	OIDC OIDCConfig `koanf:"oidc"`
	// CLI configures how the command-line client reaches a server.
	CLI CLIConfig `koanf:"cli"`
	// API configures the REST API on the main listener.
	API APIConfig `koanf:"api"`
	// Source is the path of the file that was loaded, "" when running on
	// embedded defaults (plus environment).
	Source string `koanf:"-"`
	// ClientSockets are the sockets a local client (the CLI) tries in
	// order, using the first that answers: UnixSocket alone, except with
	// no config file and neither unix_socket nor state_dir set, where
	// Headscale's /var/run/headscale/headscale.sock comes before
	// ./data/headscale.sock, so a server started with a config file is
	// found from any directory.
	ClientSockets []string `koanf:"-"`
}

// NoiseConfig configures the Noise (ts2021) control protocol.
type NoiseConfig struct {
	// PrivateKeyPath is where the Noise private key is stored, generated on
	// first start if missing.
	PrivateKeyPath string `koanf:"private_key_path"`
	// HTTP2Server is the HTTP/2 server inside Noise connections:
	// HTTP2Builtin (pkg/h2serve, the default) or HTTP2XNet
	// (noise.http2_server).
	HTTP2Server string `koanf:"http2_server"`
}

// PrefixesConfig describes the tailnet address ranges.
type PrefixesConfig struct {
	// V4 and V6 are the ranges per address family; a zero Prefix means the
	// family is not configured. At least one is always set.
	V4 netip.Prefix `koanf:"v4"`
	V6 netip.Prefix `koanf:"v6"`
	// Allocation is the address allocation strategy: "sequential" or "random".
	Allocation string `koanf:"allocation"`
}

// DERPConfig configures the relay map handed to clients.
type DERPConfig struct {
	// Server configures the embedded DERP relay.
	Server DERPServerConfig `koanf:"server"`
	// URLs are DERP maps fetched over HTTP(S).
	URLs []string `koanf:"urls"`
	// Paths are DERP maps read from local YAML/JSON files.
	Paths []string `koanf:"paths"`
	// AutoUpdateEnabled re-fetches URLs every UpdateFrequency.
	AutoUpdateEnabled bool `koanf:"auto_update_enabled"`
	// UpdateFrequency is the interval between DERP map refreshes.
	UpdateFrequency time.Duration `koanf:"update_frequency"`
}

// DERPServerConfig configures the relay embedded in the control server.
type DERPServerConfig struct {
	// Enabled runs the embedded DERP relay.
	Enabled bool `koanf:"enabled"`
	// RegionID is the DERP region number of the embedded relay.
	RegionID int `koanf:"region_id"`
	// RegionCode and RegionName label the embedded region in clients.
	RegionCode string `koanf:"region_code"`
	RegionName string `koanf:"region_name"`
	// VerifyClients only relays for nodes known to this server.
	VerifyClients bool `koanf:"verify_clients"`
	// STUNListenAddr is the UDP host:port of the embedded STUN server.
	STUNListenAddr string `koanf:"stun_listen_addr"`
	// PrivateKeyPath is the embedded relay's key file; it must differ from
	// the Noise key.
	PrivateKeyPath string `koanf:"private_key_path"`
	// AutomaticallyAddEmbeddedDERPRegion adds the embedded region to the
	// DERP map sent to clients.
	AutomaticallyAddEmbeddedDERPRegion bool `koanf:"automatically_add_embedded_derp_region"`
	// IPv4 and IPv6 are the relay's public addresses advertised to clients;
	// "" lets clients resolve the server_url host instead.
	IPv4 string `koanf:"ipv4"`
	IPv6 string `koanf:"ipv6"`
}

// DatabaseConfig selects the storage backend.
type DatabaseConfig struct {
	// Type is "sqlite" or "postgres" (normalised from "sqlite3" and
	// "postgresql").
	Type string `koanf:"type"`
	// SQLite is used when Type is "sqlite".
	SQLite SQLiteConfig `koanf:"sqlite"`
	// Postgres is used when Type is "postgres".
	Postgres PostgresConfig `koanf:"postgres"`
}

// SQLiteConfig configures the SQLite backend.
type SQLiteConfig struct {
	// Path is the database file.
	Path string `koanf:"path"`
	// WriteAheadLog enables WAL journal mode.
	WriteAheadLog bool `koanf:"write_ahead_log"`
	// WALAutocheckpoint is SQLite's wal_autocheckpoint in pages; the
	// server checkpoints in the background instead unless it is negative
	// (store.Options.WALAutocheckpoint).
	WALAutocheckpoint int `koanf:"wal_autocheckpoint"`
}

// PostgresConfig configures the PostgreSQL backend (database.postgres,
// with Headscale's keys and defaults). Its String, GoString, MarshalText
// and LogValue leave the password out, so printing, logging or encoding
// the configuration does not reveal it; ConnString (postgres.go) is the
// one place it is put into a connection string.
type PostgresConfig struct {
	// Host is a host name, an IP address or, starting with "/", the
	// directory holding the server's unix socket (Debian's is
	// /var/run/postgresql); Port is the TCP port, or the number in the
	// socket's name (.s.PGSQL.5432), default 5432.
	Host string `koanf:"host"`
	Port int    `koanf:"port"`
	// Name, User and Pass are the database name and credentials. An empty
	// User is the name of the operating-system user the server runs as;
	// an empty Pass sends no password (peer authentication over the unix
	// socket needs none).
	Name string `koanf:"name"`
	User string `koanf:"user"`
	Pass string `koanf:"pass"`
	// PassFile (pass_file, ours, not Headscale's) names a file holding
	// the password instead, read when the password is needed (Password),
	// so the secret need not sit in the configuration: an absolute path,
	// or $CREDENTIALS_DIRECTORY/NAME for a systemd credential
	// (LoadCredential=NAME:...), expanded by Load from its environment.
	// Pass and PassFile are not both set.
	PassFile string `koanf:"pass_file"`
	// SSL is a libpq sslmode ("disable", "allow", "prefer", "require",
	// "verify-ca", "verify-full"); YAML booleans map to "require" (true)
	// and "disable" (false), as Headscale documents them. Over a unix
	// socket it is ignored.
	SSL string `koanf:"ssl"`
	// URL (url, ours; env HEADSCALE_DATABASE_POSTGRES_URL or PG_DSN) is
	// the connection as a libpq URL, postgres://user:pass@host:port/name
	// ?sslmode=..., used instead of Host, Port, Name, User, Pass,
	// PassFile and SSL, which stay at their defaults when it is set. It
	// may hold a password: String and the other printing methods show it
	// without.
	URL string `koanf:"url"`
	// MaxOpenConns, MaxIdleConns and ConnMaxIdleTimeSecs tune the pool:
	// at most MaxOpenConns connections, at most MaxIdleConns of them kept
	// idle, an idle one closed after ConnMaxIdleTimeSecs (0: kept).
	MaxOpenConns        int `koanf:"max_open_conns"`
	MaxIdleConns        int `koanf:"max_idle_conns"`
	ConnMaxIdleTimeSecs int `koanf:"conn_max_idle_time_secs"`
}

// DNSConfig is the DNS configuration pushed to clients.
type DNSConfig struct {
	// MagicDNS gives every node a name under BaseDomain.
	MagicDNS bool `koanf:"magic_dns"`
	// BaseDomain is the MagicDNS suffix; it must not contain the server's
	// own host name.
	BaseDomain string `koanf:"base_domain"`
	// OverrideLocalDNS makes clients use Nameservers.Global instead of their
	// own resolvers (without it Global are only fallback resolvers). Left
	// unset it is true when Global is not empty, as in Headscale.
	OverrideLocalDNS bool `koanf:"override_local_dns"`
	// Nameservers are the resolvers handed to clients.
	Nameservers NameserversConfig `koanf:"nameservers"`
	// SearchDomains are appended to the clients' search list.
	SearchDomains []string `koanf:"search_domains"`
	// ExtraRecords are additional A/AAAA records served by MagicDNS.
	ExtraRecords []ExtraRecord `koanf:"extra_records"`
	// ExtraRecordsPath is a JSON file of more records, re-read when it
	// changes and on reload (SIGHUP); its records are served after
	// ExtraRecords.
	ExtraRecordsPath string `koanf:"extra_records_path"`
	// Certificates is where nodes' `tailscale cert` challenge records are
	// set (ours); off by default.
	Certificates CertDNSConfig `koanf:"certificates"`
}

// NameserversConfig lists resolvers for clients.
type NameserversConfig struct {
	// Global resolvers: IP addresses or DNS-over-HTTPS URLs.
	Global []string `koanf:"global"`
	// Split maps a domain to the resolvers used only for it.
	Split map[string][]string `koanf:"split"`
}

// ExtraRecord is one additional DNS record served to clients.
type ExtraRecord struct {
	// Name is the fully qualified record name, Type "A" or "AAAA", and Value
	// an address of the matching family.
	Name, Type, Value string
}

// PolicyConfig says where the access-control policy lives.
type PolicyConfig struct {
	// Mode is "file" (read Path) or "database" (managed through the API).
	Mode string `koanf:"mode"`
	// Path is the policy file used in file mode; "" means no policy file.
	Path string `koanf:"path"`
}

// LogConfig configures the server's logging.
type LogConfig struct {
	// Level is "debug", "info", "warn" or "error".
	Level string `koanf:"level"`
	// Format is "text" or "json".
	Format string `koanf:"format"`
}

// NodeConfig holds defaults for nodes.
type NodeConfig struct {
	// Expiry is the default key expiry for new nodes; 0 means never.
	Expiry time.Duration `koanf:"expiry"`
	// Ephemeral configures ephemeral nodes.
	Ephemeral EphemeralConfig `koanf:"ephemeral"`
	// RequireApproval (this server's extension; Headscale has no such
	// key): nodes registered from now on wait for an admin's approval
	// (`headscale nodes approve`) before they get peers, except those
	// registered with a tagged pre-auth key.
	RequireApproval bool `koanf:"require_approval"`
}

// EphemeralConfig configures ephemeral node clean-up.
type EphemeralConfig struct {
	// InactivityTimeout is how long an ephemeral node may stay disconnected
	// before it is deleted.
	InactivityTimeout time.Duration `koanf:"inactivity_timeout"`
}

// GRPCOn tells whether the gRPC API is served: grpc_listen_addr is set and
// there is a TLS certificate (files or Let's Encrypt) or
// grpc_allow_insecure, as in Headscale.
func (c *Config) GRPCOn() bool {
	return c.GRPCListenAddr != "" && (c.TLS.Enabled() || c.GRPCAllowInsecure)
}

// TLSConfig says how the server terminates TLS itself, if it does: with a
// certificate and key file pair, or with a certificate from an ACME CA
// (LetsEncrypt.Hostname set; it wins over the files, as in Headscale).
type TLSConfig struct {
	// CertPath and KeyPath are PEM files; both set or both empty.
	CertPath string `koanf:"tls_cert_path"`
	KeyPath  string `koanf:"tls_key_path"`
	// LetsEncrypt is the built-in ACME client (Headscale's
	// tls_letsencrypt_* keys and acme_url, acme_email).
	LetsEncrypt LetsEncryptConfig `koanf:",squash"`
}

// Enabled tells whether the server serves TLS on listen_addr.
func (t TLSConfig) Enabled() bool { return t.CertPath != "" || t.ACME() }

// ACME tells whether the certificate comes from an ACME CA.
func (t TLSConfig) ACME() bool { return t.LetsEncrypt.Hostname != "" }

// LetsEncryptConfig configures the built-in ACME client, with Headscale's
// keys.
type LetsEncryptConfig struct {
	// Hostname is the name the certificate is for; empty turns the
	// ACME client off.
	Hostname string `koanf:"tls_letsencrypt_hostname"`
	// CacheDir keeps the ACME account key and the certificates (default:
	// "cache" in state_dir, Headscale's /var/lib/headscale/cache).
	CacheDir string `koanf:"tls_letsencrypt_cache_dir"`
	// ChallengeType is ChallengeHTTP01 or ChallengeTLSALPN01.
	ChallengeType string `koanf:"tls_letsencrypt_challenge_type"`
	// Listen is where HTTP-01 challenges are answered (":http", port
	// 80, as in Headscale); unused with TLS-ALPN-01.
	Listen string `koanf:"tls_letsencrypt_listen"`
	// URL is the CA's ACME directory (acme_url; Let's Encrypt's
	// production CA by default).
	URL string `koanf:"acme_url"`
	// Email is the contact address given to the CA (acme_email).
	Email string `koanf:"acme_email"`
}

// Values of tls_letsencrypt_challenge_type, as Headscale spells them.
const (
	ChallengeHTTP01    = "HTTP-01"
	ChallengeTLSALPN01 = "TLS-ALPN-01"
)

// LetsEncryptURL is acme_url's default: Let's Encrypt's production CA.
const LetsEncryptURL = "https://acme-v02.api.letsencrypt.org/directory"

// TaildropConfig configures Taildrop, Tailscale's file sharing.
type TaildropConfig struct {
	// Enabled gives every node the file-sharing capability; false
	// withholds it, so clients offer no file sending.
	Enabled bool `koanf:"enabled"`
}

// AutoUpdateConfig sets the default auto-update setting clients get.
type AutoUpdateConfig struct {
	// Enabled is the value of the default-auto-update attribute every node
	// gets: clients that have not chosen for themselves update
	// automatically when it is true. A client keeps the first value it
	// stores.
	Enabled bool `koanf:"enabled"`
}

// APIConfig configures the REST API on the main listener.
type APIConfig struct {
	// CORSAllowedOrigins are the browser origins (e.g.
	// "https://ui.example.com", or "*") allowed to call /api/v1 from a
	// web page; empty sends no CORS headers.
	CORSAllowedOrigins []string `koanf:"cors_allowed_origins"`
}

// CLIConfig tells the command-line client how to reach a remote server.
type CLIConfig struct {
	// Address of a remote server; "" means use the local unix socket.
	Address string `koanf:"address"`
	// APIKey authenticates against a remote server.
	APIKey string `koanf:"api_key"`
	// Timeout bounds each CLI request.
	Timeout time.Duration `koanf:"timeout"`
	// Insecure skips TLS verification for Address.
	Insecure bool `koanf:"insecure"`
}

// Problem is one configuration issue and where it came from, so it can be
// shown to an operator next to the offending line.
type Problem struct {
	// File is the config file path, "env HEADSCALE_FOO" for an environment
	// override, or "" for defaults.
	File string
	// Line is the 1-based line in File, 0 when unknown.
	Line int
	// Key is the dotted key, e.g. "database.sqlite.path"; "" for problems
	// not about a single key (such as YAML syntax errors).
	Key string
	// Reason explains the problem.
	Reason string
}

// String formats the problem as "file:line: key: reason", dropping the parts
// that are unknown ("file: key: reason", "key: reason").
func (p Problem) String() string {
	var b strings.Builder
	switch {
	case p.File != "" && p.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", p.File, p.Line)
	case p.File != "":
		fmt.Fprintf(&b, "%s: ", p.File)
	}
	if p.Key != "" {
		b.WriteString(p.Key)
		b.WriteString(": ")
	}
	b.WriteString(p.Reason)
	return b.String()
}

// Errors is every fatal problem found by Load. It is an error so callers can
// return it directly, while still being able to inspect each Problem.
type Errors []Problem

// Error joins the problems, one per line.
func (e Errors) Error() string {
	if len(e) == 0 {
		return "no configuration errors"
	}
	lines := make([]string, len(e))
	for i, p := range e {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// LoadOptions tells Load where to look for configuration.
type LoadOptions struct {
	// Path is an explicit -c/--config path; it must exist when set.
	Path string
	// Env is the environment in os.Environ() form. Load never reads the
	// process environment itself, so tests can pass their own.
	Env []string
	// SearchPaths are tried in order when neither Path nor HEADSCALE_CONFIG
	// is set; nil means DefaultSearchPaths with HOME from Env.
	SearchPaths []string
	// Checks run once the configuration is otherwise valid: serve and
	// configtest pass the server's pre-flight checks (the files the
	// configuration names, what this build cannot run), so both refuse the
	// same things with the same words. Each problem names a key and a
	// reason; Load places it at the line the key's value came from, as it
	// does its own.
	Checks []Check
	// SystemRoot is prefixed to Headscale's default paths
	// (/var/lib/headscale, /var/run/headscale/headscale.sock) so tests can
	// stand a directory in for /; "" in production.
	SystemRoot string
}

// Check is one of LoadOptions.Checks.
type Check func(*Config) []Problem

// DefaultSearchPaths returns the files Load tries, in order, when no path is
// given explicitly: Headscale's directories /etc/headscale, $HOME/.headscale
// (left out when home is "") and the working directory, each for
// config.yaml and then config.yml, as Headscale finds them.
func DefaultSearchPaths(home string) []string {
	dirs := []string{"/etc/headscale"}
	if home != "" {
		dirs = append(dirs, filepath.Join(home, ".headscale"))
	}
	dirs = append(dirs, ".")
	var paths []string
	for _, d := range dirs {
		for _, name := range []string{"config.yaml", "config.yml"} {
			p := filepath.Join(d, name)
			if d == "." {
				p = "./" + name
			}
			paths = append(paths, p)
		}
	}
	return paths
}

// Load finds, reads, merges and validates the configuration. It returns the
// config and the warnings, or an Errors value listing every fatal problem
// (the warnings are still returned alongside it), or another error for I/O
// failures such as an explicit config path that does not exist.
func Load(opts LoadOptions) (*Config, []Problem, error) {
	env := parseEnviron(opts.Env)
	path, err := findConfigFile(opts, env)
	if err != nil {
		return nil, nil, err
	}
	var data []byte
	if path != "" {
		data, err = readFile(path)
		if err != nil {
			return nil, nil, err
		}
	}

	l, err := newLoader(path)
	if err != nil {
		return nil, nil, err
	}
	l.env = env
	if path != "" {
		if ok, err := l.loadFile(data); err != nil {
			return nil, nil, err
		} else if !ok {
			return nil, l.sortedWarnings(), Errors(l.sortedErrors())
		}
		l.applyLegacy()
		if err := l.mergeFile(); err != nil {
			return nil, nil, err
		}
	}
	if err := l.loadAliases(); err != nil {
		return nil, nil, err
	}
	if err := l.loadEnv(opts.Env); err != nil {
		return nil, nil, err
	}
	if err := l.resolveRelative(); err != nil {
		return nil, nil, err
	}
	if err := l.loadSystem(opts.SystemRoot); err != nil {
		return nil, nil, err
	}
	if err := l.loadDerived(); err != nil {
		return nil, nil, err
	}
	if err := l.prepare(); err != nil {
		return nil, nil, err
	}
	cfg, err := l.unmarshal()
	if err != nil {
		return nil, nil, err
	}
	cfg.Source = path
	cfg.ClientSockets = l.clientSockets(cfg, opts.SystemRoot)
	l.validate(cfg)
	l.warnOldState(cfg)
	l.warnRelative()
	if len(l.errs) == 0 {
		for _, check := range opts.Checks {
			for _, p := range check(cfg) {
				l.keyError(p)
			}
		}
	}

	if len(l.errs) > 0 {
		return nil, l.sortedWarnings(), Errors(l.sortedErrors())
	}
	return cfg, l.sortedWarnings(), nil
}
