package config

import "strings"

// status says what the loader does with a key it finds in a file.
type status int

const (
	statusActive   status = iota // read and used
	statusLegacy                 // old Headscale name, mapped onto replacedBy with a warning
	statusUnused                 // accepted, ignored with a warning
	statusReserved               // Headscale key we do not implement yet; silently accepted
)

// keySpec describes one configuration key. The table returned by knownKeys is
// the single source of truth for defaults, environment variable names,
// old names and unknown-key detection; the Go type a value is converted to
// is the type of the Config field whose koanf tag names the key.
type keySpec struct {
	key    string
	status status
	// def is the default in the raw form YAML would produce; nil means the
	// key has no default (or, with derived set, a computed one).
	def any
	// derived names a file inside state_dir used as the default when the key
	// is left unset; it is resolved after file and environment are applied.
	derived string
	// system is Headscale's default for the key, used instead of def and
	// derived when a config file is loaded that sets neither the key nor
	// state_dir (a Headscale config); see loadSystem.
	system string
	// replacedBy lists the current keys a legacy key maps onto.
	replacedBy []string
	// note is the warning reason for statusUnused keys.
	note string
	// text keeps the literal text of a YAML scalar: YAML would turn 0770
	// into 504 and a password like 0123 into 83. A legacy key is read as
	// its replacement is.
	text bool
	// prepare, when set, rewrites the merged value of an active key before
	// it is unmarshalled: spellings normalised, an sslmode from a boolean.
	prepare func(any) (any, error)
	// subtree marks a whole subtree accepted without inspection.
	subtree bool
	// fileRelative marks a path Headscale resolves against the directory
	// of the config file when it is relative (see resolveRelative).
	fileRelative bool
}

// envName is the environment variable that overrides the key.
func (s keySpec) envName() string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(s.key, ".", "_"))
}

const (
	envPrefix     = "HEADSCALE_"
	envConfigPath = "HEADSCALE_CONFIG"
)

// Values of noise.http2_server.
const (
	// HTTP2Builtin serves HTTP/2 inside Noise with pkg/h2serve.
	HTTP2Builtin = "builtin"
	// HTTP2XNet serves it with golang.org/x/net/http2's server, to tell
	// whether a problem is in pkg/h2serve.
	HTTP2XNet = "x/net"
)

// Default values that other code (and tests) refer to.
const (
	defaultStateDir  = "./data"
	systemStateDir   = "/var/lib/headscale"
	systemUnixSocket = "/var/run/headscale/headscale.sock"
	defaultV4Prefix  = "100.64.0.0/10"
	defaultV6Prefix  = "fd7a:115c:a1e0::/48"
)

// knownKeys returns a fresh copy of the key table; it is a function rather
// than a variable so the package holds no mutable state.
func knownKeys() []keySpec {
	// text: a key read as a string (or file mode), from its literal text.
	text := func(key, def string) keySpec {
		return keySpec{key: key, def: def, text: true}
	}
	// value: a key read from the value YAML gives it (bool, number, list,
	// mapping, or a string such as a duration or prefix).
	value := func(key string, def any) keySpec {
		return keySpec{key: key, def: def}
	}
	derived := func(key, file string) keySpec {
		return keySpec{key: key, text: true, derived: file}
	}
	// system: a key whose default differs when a Headscale config file
	// (one that leaves state_dir unset) is loaded.
	system := func(s keySpec, path string) keySpec {
		s.system = path
		return s
	}
	tidy := func(s keySpec, f func(string) string) keySpec {
		s.prepare = tidyString(f)
		return s
	}
	legacy := func(key string, replacedBy ...string) keySpec {
		return keySpec{key: key, status: statusLegacy, replacedBy: replacedBy}
	}
	reserved := func(key string) keySpec {
		return keySpec{key: key, status: statusReserved, text: true}
	}
	unused := func(key, note string) keySpec {
		return keySpec{key: key, status: statusUnused, note: note, text: true}
	}
	subtree := func(key string) keySpec {
		return keySpec{key: key, status: statusReserved, subtree: true}
	}
	// fromFileDir: a path key whose relative value, from the file or the
	// environment, is relative to the config file's directory.
	fromFileDir := func(s keySpec) keySpec {
		s.fileRelative = true
		return s
	}
	emptyList := func() any { return []any{} }
	lowerTrim := func(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

	return []keySpec{
		tidy(text("server_url", "http://127.0.0.1:8080"), func(s string) string { return strings.TrimRight(s, "/") }),
		text("listen_addr", "127.0.0.1:8080"),
		text("metrics_listen_addr", "127.0.0.1:9090"),
		// Unset: a proxy on the same machine (what the server believed
		// before the key existed); [] trusts none, as Headscale's default.
		value("trusted_proxies", []any{"127.0.0.0/8", "::1/128"}),
		system(text("state_dir", defaultStateDir), systemStateDir),
		fromFileDir(derived("noise.private_key_path", "noise_private.key")),
		tidy(text("noise.http2_server", HTTP2Builtin), lowerTrim),

		value("prefixes.v4", defaultV4Prefix),
		value("prefixes.v6", defaultV6Prefix),
		tidy(text("prefixes.allocation", "sequential"), strings.ToLower),

		value("derp.server.enabled", true),
		value("derp.server.region_id", 999),
		text("derp.server.region_code", "headscale"),
		text("derp.server.region_name", "Headscale Embedded DERP"),
		value("derp.server.verify_clients", true),
		text("derp.server.stun_listen_addr", "127.0.0.1:3478"),
		fromFileDir(derived("derp.server.private_key_path", "derp_server_private.key")),
		value("derp.server.automatically_add_embedded_derp_region", true),
		text("derp.server.ipv4", ""),
		text("derp.server.ipv6", ""),
		value("derp.urls", emptyList()),
		value("derp.paths", emptyList()),
		value("derp.auto_update_enabled", true),
		value("derp.update_frequency", "3h"),

		// Ours: the tailnet's own schema in a shared PostgreSQL (cluster.go).
		text("cluster_id", ""),
		value("cluster.enabled", false),
		text("cluster.server_name", ""),
		value("cluster.debounce", "10ms"),
		value("cluster.lease_ttl", "15s"),
		value("cluster.heartbeat_interval", "0s"),

		text("database.type", "sqlite"),
		fromFileDir(derived("database.sqlite.path", "db.sqlite")),
		value("database.sqlite.write_ahead_log", true),
		value("database.sqlite.wal_autocheckpoint", 1000),
		text("database.postgres.host", ""),
		value("database.postgres.port", 5432),
		text("database.postgres.name", ""),
		text("database.postgres.user", ""),
		text("database.postgres.pass", ""),
		// Ours, not Headscale's: a file holding the password (see
		// PostgresConfig.PassFile).
		text("database.postgres.pass_file", ""),
		{key: "database.postgres.ssl", def: "disable", prepare: sslMode},
		// Ours: the connection as one libpq URL, instead of the fields
		// above (cluster.go).
		text("database.postgres.url", ""),
		value("database.postgres.max_open_conns", 10),
		value("database.postgres.max_idle_conns", 10),
		value("database.postgres.conn_max_idle_time_secs", 3600),

		value("dns.magic_dns", true),
		tidy(text("dns.base_domain", "tailnet.internal"), func(s string) string { return strings.TrimSuffix(strings.TrimSpace(s), ".") }),
		value("dns.override_local_dns", false),
		value("dns.nameservers.global", emptyList()),
		value("dns.nameservers.split", map[string]any{}),
		value("dns.search_domains", emptyList()),
		value("api.cors_allowed_origins", emptyList()),
		value("dns.extra_records", emptyList()),
		text("dns.extra_records_path", ""),
		// Ours: where `tailscale cert` challenge records are set.
		text("dns.certificates.provider", ""),
		text("dns.certificates.zone", ""),
		text("dns.certificates.rfc2136.server", ""),
		text("dns.certificates.rfc2136.tsig_key_name", ""),
		text("dns.certificates.rfc2136.tsig_algorithm", ""),
		text("dns.certificates.rfc2136.tsig_secret", ""),
		text("dns.certificates.rfc2136.tsig_secret_path", ""),

		tidy(text("policy.mode", "file"), strings.ToLower),
		fromFileDir(text("policy.path", "")),
		tidy(text("log.level", "info"), lowerTrim),
		tidy(text("log.format", "text"), lowerTrim),
		value("node.expiry", "0"),
		value("node.ephemeral.inactivity_timeout", "120s"),
		value("node.require_approval", false),

		system(derived("unix_socket", "headscale.sock"), systemUnixSocket),
		text("unix_socket_permission", "0770"),
		fromFileDir(text("tls_cert_path", "")),
		fromFileDir(text("tls_key_path", "")),
		// Let's Encrypt built in (Headscale's keys and defaults).
		tidy(text("tls_letsencrypt_hostname", ""), lowerTrim),
		derived("tls_letsencrypt_cache_dir", "cache"),
		tidy(text("tls_letsencrypt_challenge_type", ChallengeHTTP01), func(s string) string { return strings.ToUpper(strings.TrimSpace(s)) }),
		text("tls_letsencrypt_listen", ":http"),
		tidy(text("acme_url", LetsEncryptURL), strings.TrimSpace),
		tidy(text("acme_email", ""), strings.TrimSpace),
		// Headscale's gRPC API: served with TLS (the tls_* pair) or, with
		// grpc_allow_insecure, in plain text; otherwise off.
		text("grpc_listen_addr", ":50443"),
		value("grpc_allow_insecure", false),

		// Capabilities every node gets (as Headscale sends them).
		value("taildrop.enabled", true),
		value("auto_update.enabled", false),
		value("randomize_client_port", false),

		value("oidc.only_start_if_oidc_is_available", true),
		text("oidc.issuer", ""),
		text("oidc.client_id", ""),
		text("oidc.client_secret", ""),
		text("oidc.client_secret_path", ""),
		value("oidc.use_expiry_from_token", false),
		value("oidc.scope", []any{"openid", "profile", "email"}),
		value("oidc.email_verified_required", true),
		value("oidc.extra_params", map[string]any{}),
		value("oidc.allowed_domains", emptyList()),
		value("oidc.allowed_users", emptyList()),
		value("oidc.allowed_groups", emptyList()),
		value("oidc.pkce.enabled", false),
		text("oidc.pkce.method", PKCEMethodS256),
		value("oidc.map_legacy_users", false),

		text("cli.address", ""),
		text("cli.api_key", ""),
		value("cli.timeout", "5s"),
		value("cli.insecure", false),

		// Names used by older Headscale releases.
		legacy("db_type", "database.type"),
		legacy("db_path", "database.sqlite.path"),
		legacy("db_host", "database.postgres.host"),
		legacy("db_port", "database.postgres.port"),
		legacy("db_name", "database.postgres.name"),
		legacy("db_user", "database.postgres.user"),
		legacy("db_pass", "database.postgres.pass"),
		legacy("db_ssl", "database.postgres.ssl"),
		legacy("ip_prefixes", "prefixes.v4", "prefixes.v6"),
		legacy("dns_config.magic_dns", "dns.magic_dns"),
		legacy("dns_config.base_domain", "dns.base_domain"),
		legacy("dns_config.nameservers", "dns.nameservers.global"),
		legacy("dns_config.restricted_nameservers", "dns.nameservers.split"),
		legacy("dns_config.domains", "dns.search_domains"),
		legacy("dns_config.override_local_dns", "dns.override_local_dns"),
		legacy("dns_config.extra_records", "dns.extra_records"),
		legacy("acl_policy_path", "policy.path"),
		legacy("ephemeral_node_inactivity_timeout", "node.ephemeral.inactivity_timeout"),
		legacy("log_level", "log.level"),
		legacy("oidc.expiry", "node.expiry"),
		unused("oidc.strip_email_domain", "removed in Headscale 0.26 and ignored: users from the provider are named by their preferred_username or email"),

		// Headscale keys we accept but do not implement yet.
		reserved("disable_check_updates"),
		reserved("database.debug"),
		subtree("logtail"),
		subtree("database.gorm"),
		subtree("node.routes"),
		subtree("preauth_keys"),
		subtree("tuning"),
	}
}

// keyIndex is the key table indexed the ways the loader needs it.
type keyIndex struct {
	all      []keySpec
	byKey    map[string]keySpec
	byEnv    map[string]keySpec // active keys only
	parents  map[string]bool    // every proper prefix path of a table key
	subtrees []string
}

func newKeyIndex() keyIndex {
	idx := keyIndex{
		all:     knownKeys(),
		byKey:   map[string]keySpec{},
		byEnv:   map[string]keySpec{},
		parents: map[string]bool{},
	}
	for _, s := range idx.all {
		idx.byKey[s.key] = s
	}
	for i, s := range idx.all {
		if s.status == statusLegacy {
			// A legacy key is read the way its replacement is.
			s.text = idx.byKey[s.replacedBy[0]].text
			idx.all[i], idx.byKey[s.key] = s, s
		}
		if s.status == statusActive {
			idx.byEnv[s.envName()] = s
		}
		if s.subtree {
			idx.subtrees = append(idx.subtrees, s.key)
		}
		parts := strings.Split(s.key, ".")
		for i := 1; i < len(parts); i++ {
			idx.parents[strings.Join(parts[:i], ".")] = true
		}
	}
	return idx
}

// inSubtree reports whether path lies strictly inside an accepted subtree.
func (idx keyIndex) inSubtree(path string) bool {
	for _, t := range idx.subtrees {
		if strings.HasPrefix(path, t+".") {
			return true
		}
	}
	return false
}

// defaults returns the default of every active key that has one, by key:
// the lowest configuration layer.
func (idx keyIndex) defaults() map[string]any {
	out := map[string]any{}
	for _, s := range idx.all {
		if s.status == statusActive && s.def != nil {
			out[s.key] = s.def
		}
	}
	return out
}
