package config

import "strings"

// kind says how the raw value of a key (as YAML or an environment variable
// delivers it) is turned into a typed value.
type kind int

const (
	kindString     kind = iota // any scalar, kept as its literal text
	kindBool                   // true/false (also yes/no/on/off from env)
	kindInt                    // integer
	kindDuration               // Go duration plus d/w/y suffixes (ParseDuration)
	kindStringList             // YAML list, or comma-separated string
	kindListMap                // map of string to list (split DNS)
	kindRecords                // list of {name, type, value} mappings
	kindPrefix                 // CIDR prefix, "" for none
	kindFileMode               // octal permission bits such as "0770"
	kindSSL                    // bool or PostgreSQL sslmode string
	kindSubtree                // a whole subtree accepted without inspection
)

// status says what the loader does with a key it finds in a file.
type status int

const (
	statusActive   status = iota // read and used
	statusLegacy                 // old Headscale name, mapped onto replacedBy with a warning
	statusUnused                 // accepted, ignored with a warning
	statusReserved               // Headscale key we do not implement yet; silently accepted
)

// keySpec describes one configuration key. The table returned by knownKeys is
// the single source of truth for defaults, environment variable names and
// unknown-key detection.
type keySpec struct {
	key    string
	kind   kind
	status status
	// def is the default in the raw form YAML would produce; nil means the
	// key has no default (or, with derived set, a computed one).
	def any
	// derived names a file inside state_dir used as the default when the key
	// is left unset; it is resolved after file and environment are applied.
	derived string
	// replacedBy lists the current keys a legacy key maps onto.
	replacedBy []string
	// note is the warning reason for statusUnused keys.
	note string
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
	defaultStateDir   = "./data"
	defaultV4Prefix   = "100.64.0.0/10"
	defaultV6Prefix   = "fd7a:115c:a1e0::/48"
	grpcIgnoredReason = "ignored: gRPC is not served; the REST API and unix socket replace it"
)

// knownKeys returns a fresh copy of the key table; it is a function rather
// than a variable so the package holds no mutable state.
func knownKeys() []keySpec {
	active := func(key string, k kind, def any) keySpec {
		return keySpec{key: key, kind: k, def: def}
	}
	derived := func(key, file string) keySpec {
		return keySpec{key: key, kind: kindString, derived: file}
	}
	legacy := func(key string, k kind, replacedBy ...string) keySpec {
		return keySpec{key: key, kind: k, status: statusLegacy, replacedBy: replacedBy}
	}
	reserved := func(key string) keySpec {
		return keySpec{key: key, kind: kindString, status: statusReserved}
	}
	subtree := func(key string) keySpec {
		return keySpec{key: key, kind: kindSubtree, status: statusReserved}
	}
	emptyList := func() any { return []any{} }

	return []keySpec{
		active("server_url", kindString, "http://127.0.0.1:8080"),
		active("listen_addr", kindString, "127.0.0.1:8080"),
		active("metrics_listen_addr", kindString, "127.0.0.1:9090"),
		active("state_dir", kindString, defaultStateDir),
		derived("noise.private_key_path", "noise_private.key"),
		active("noise.http2_server", kindString, HTTP2Builtin),

		active("prefixes.v4", kindPrefix, defaultV4Prefix),
		active("prefixes.v6", kindPrefix, defaultV6Prefix),
		active("prefixes.allocation", kindString, "sequential"),

		active("derp.server.enabled", kindBool, true),
		active("derp.server.region_id", kindInt, 999),
		active("derp.server.region_code", kindString, "headscale"),
		active("derp.server.region_name", kindString, "Headscale Embedded DERP"),
		active("derp.server.verify_clients", kindBool, true),
		active("derp.server.stun_listen_addr", kindString, "127.0.0.1:3478"),
		derived("derp.server.private_key_path", "derp_server_private.key"),
		active("derp.server.automatically_add_embedded_derp_region", kindBool, true),
		active("derp.server.ipv4", kindString, ""),
		active("derp.server.ipv6", kindString, ""),
		active("derp.urls", kindStringList, emptyList()),
		active("derp.paths", kindStringList, emptyList()),
		active("derp.auto_update_enabled", kindBool, true),
		active("derp.update_frequency", kindDuration, "3h"),

		active("database.type", kindString, "sqlite"),
		derived("database.sqlite.path", "db.sqlite"),
		active("database.sqlite.write_ahead_log", kindBool, true),
		active("database.sqlite.wal_autocheckpoint", kindInt, 1000),
		active("database.postgres.host", kindString, ""),
		active("database.postgres.port", kindInt, 5432),
		active("database.postgres.name", kindString, ""),
		active("database.postgres.user", kindString, ""),
		active("database.postgres.pass", kindString, ""),
		active("database.postgres.ssl", kindSSL, "disable"),
		active("database.postgres.max_open_conns", kindInt, 10),
		active("database.postgres.max_idle_conns", kindInt, 10),
		active("database.postgres.conn_max_idle_time_secs", kindInt, 3600),

		active("dns.magic_dns", kindBool, true),
		active("dns.base_domain", kindString, "tailnet.internal"),
		active("dns.override_local_dns", kindBool, false),
		active("dns.nameservers.global", kindStringList, emptyList()),
		active("dns.nameservers.split", kindListMap, map[string]any{}),
		active("dns.search_domains", kindStringList, emptyList()),
		active("api.cors_allowed_origins", kindStringList, emptyList()),
		active("dns.extra_records", kindRecords, emptyList()),
		active("dns.extra_records_path", kindString, ""),

		active("policy.mode", kindString, "file"),
		active("policy.path", kindString, ""),
		active("log.level", kindString, "info"),
		active("log.format", kindString, "text"),
		active("node.expiry", kindDuration, "0"),
		active("node.ephemeral.inactivity_timeout", kindDuration, "120s"),

		derived("unix_socket", "headscale.sock"),
		active("unix_socket_permission", kindFileMode, "0770"),
		active("tls_cert_path", kindString, ""),
		active("tls_key_path", kindString, ""),

		active("cli.address", kindString, ""),
		active("cli.api_key", kindString, ""),
		active("cli.timeout", kindDuration, "5s"),
		active("cli.insecure", kindBool, false),

		// Names used by older Headscale releases.
		legacy("db_type", kindString, "database.type"),
		legacy("db_path", kindString, "database.sqlite.path"),
		legacy("ip_prefixes", kindStringList, "prefixes.v4", "prefixes.v6"),
		legacy("dns_config.magic_dns", kindBool, "dns.magic_dns"),
		legacy("dns_config.base_domain", kindString, "dns.base_domain"),
		legacy("dns_config.nameservers", kindStringList, "dns.nameservers.global"),
		legacy("dns_config.restricted_nameservers", kindListMap, "dns.nameservers.split"),
		legacy("dns_config.domains", kindStringList, "dns.search_domains"),
		legacy("dns_config.override_local_dns", kindBool, "dns.override_local_dns"),
		legacy("dns_config.extra_records", kindRecords, "dns.extra_records"),
		legacy("acl_policy_path", kindString, "policy.path"),
		legacy("ephemeral_node_inactivity_timeout", kindDuration, "node.ephemeral.inactivity_timeout"),
		legacy("log_level", kindString, "log.level"),

		{key: "grpc_listen_addr", kind: kindString, status: statusUnused, note: grpcIgnoredReason},
		{key: "grpc_allow_insecure", kind: kindBool, status: statusUnused, note: grpcIgnoredReason},

		// Headscale keys we accept but do not implement yet.
		reserved("tls_letsencrypt_hostname"),
		reserved("tls_letsencrypt_cache_dir"),
		reserved("tls_letsencrypt_challenge_type"),
		reserved("tls_letsencrypt_listen"),
		reserved("acme_url"),
		reserved("acme_email"),
		reserved("trusted_proxies"),
		reserved("disable_check_updates"),
		reserved("randomize_client_port"),
		reserved("database.debug"),
		subtree("oidc"),
		subtree("logtail"),
		subtree("taildrop"),
		subtree("auto_update"),
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
		if s.status == statusActive {
			idx.byEnv[s.envName()] = s
		}
		if s.kind == kindSubtree {
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
