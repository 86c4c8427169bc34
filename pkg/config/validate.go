package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/mail"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hsctl/headscale/pkg/clientaddr"
)

// minInactivity is the shortest ephemeral inactivity timeout accepted
// (short values are handy in tests); below warnInactivity a warning is given.
const (
	minInactivity  = time.Second
	warnInactivity = 65 * time.Second
)

// validate checks the decoded config, recording every problem. Keys whose
// value failed to decode are skipped so one mistake yields one problem.
func (l *loader) validate(c *Config) {
	serverHost := l.validateServer(c)
	l.validatePrefixes(c)
	l.validateDERP(c)
	l.validateDatabase(c)
	l.validateCluster(c)
	l.validateDNS(c, serverHost)
	l.validateMisc(c)
	l.validateOIDC(c)
	l.validateCertDNS(c)
}

// ok reports whether none of keys failed to decode.
func (l *loader) ok(keys ...string) bool {
	for _, k := range keys {
		if l.bad[k] {
			return false
		}
	}
	return true
}

// validateServer checks addresses and returns the server_url host ("" when
// server_url is invalid).
func (l *loader) validateServer(c *Config) string {
	host := ""
	if l.ok("server_url") {
		if h, err := checkHTTPURL(c.ServerURL); err != nil {
			l.errorf("server_url", "%v", err)
		} else {
			host = h
		}
	}
	l.checkHostPort("listen_addr", c.ListenAddr, false)
	l.checkHostPort("metrics_listen_addr", c.MetricsListenAddr, true)
	l.checkHostPort("grpc_listen_addr", c.GRPCListenAddr, true)
	if l.ok("trusted_proxies") {
		for i, e := range c.TrustedProxies {
			if _, err := clientaddr.ParsePrefix(e); err != nil {
				l.itemErrorf("trusted_proxies", strconv.Itoa(i), "%v", err)
			}
		}
	}
	if c.GRPCOn() && l.ok("grpc_listen_addr", "listen_addr", "metrics_listen_addr") {
		for _, other := range []struct{ key, addr string }{{"listen_addr", c.ListenAddr}, {"metrics_listen_addr", c.MetricsListenAddr}} {
			if sameListener(c.GRPCListenAddr, other.addr) {
				l.errorf("grpc_listen_addr", "%q takes the port of %s %q; give the gRPC API a port of its own (Headscale's default is :50443)", c.GRPCListenAddr, other.key, other.addr)
			}
		}
	}
	if l.ok("state_dir") && strings.TrimSpace(c.StateDir) == "" {
		l.errorf("state_dir", "must not be empty")
	}
	if l.ok("noise.private_key_path") && c.Noise.PrivateKeyPath == "" {
		l.errorf("noise.private_key_path", "must not be empty")
	}
	if h := c.Noise.HTTP2Server; l.ok("noise.http2_server") && h != HTTP2Builtin && h != HTTP2XNet {
		l.errorf("noise.http2_server", "%q must be %s or %s", h, HTTP2Builtin, HTTP2XNet)
	}
	return host
}

// sameListener tells whether binding both host:port addresses would
// collide: the same port (not 0) on the same host, or on any host where
// either is the wildcard.
func sameListener(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb || pa == "0" {
		return false
	}
	wild := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return ha == hb || wild(ha) || wild(hb)
}

// checkHTTPURL requires an http(s) URL with a host and returns the host.
func checkHTTPURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("%q is not a URL: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("%q must start with http:// or https://", raw)
	}
	if u.Hostname() == "" {
		return "", fmt.Errorf("%q has no host", raw)
	}
	return strings.ToLower(u.Hostname()), nil
}

func (l *loader) checkHostPort(key, addr string, emptyOK bool) {
	if !l.ok(key) {
		return
	}
	if addr == "" {
		if !emptyOK {
			l.errorf(key, "must be set as host:port")
		}
		return
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		l.errorf(key, "%q is not host:port", addr)
		return
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n > 65535 {
		l.errorf(key, "%q has an invalid port (want a number 0-65535)", addr)
	}
}

func (l *loader) validatePrefixes(c *Config) {
	// The ranges Tailscale clients treat as the tailnet's own address space.
	tailscaleV4 := netip.MustParsePrefix(defaultV4Prefix)
	tailscaleV6 := netip.MustParsePrefix(defaultV6Prefix)
	p := c.Prefixes
	if l.ok("prefixes.v4", "prefixes.v6") && !p.V4.IsValid() && !p.V6.IsValid() {
		l.errorf("prefixes.v4", "at least one of prefixes.v4 and prefixes.v6 must be set")
	}
	if p.V4.IsValid() {
		if !p.V4.Addr().Is4() {
			l.errorf("prefixes.v4", "%s is not an IPv4 prefix", p.V4)
		} else if !tailscaleV4.Contains(p.V4.Addr()) || p.V4.Bits() < tailscaleV4.Bits() {
			l.warnf("prefixes.v4", "%s is outside the Tailscale range %s; clients may misbehave", p.V4, tailscaleV4)
		}
	}
	if p.V6.IsValid() {
		if !p.V6.Addr().Is6() {
			l.errorf("prefixes.v6", "%s is not an IPv6 prefix", p.V6)
		} else if !tailscaleV6.Contains(p.V6.Addr()) || p.V6.Bits() < tailscaleV6.Bits() {
			l.warnf("prefixes.v6", "%s is outside the Tailscale range %s; clients may misbehave", p.V6, tailscaleV6)
		}
	}
	if l.ok("prefixes.allocation") && p.Allocation != "sequential" && p.Allocation != "random" {
		l.errorf("prefixes.allocation", "%q must be sequential or random", p.Allocation)
	}
}

func (l *loader) validateDERP(c *Config) {
	d := c.DERP
	s := d.Server
	if s.Enabled {
		if l.ok("derp.server.region_id") && s.RegionID <= 0 {
			l.errorf("derp.server.region_id", "must be greater than 0 when the embedded DERP server is enabled")
		}
		if l.ok("derp.server.stun_listen_addr") && s.STUNListenAddr == "" {
			l.errorf("derp.server.stun_listen_addr", "must be set when the embedded DERP server is enabled")
		} else {
			l.checkHostPort("derp.server.stun_listen_addr", s.STUNListenAddr, false)
		}
		if l.ok("derp.server.private_key_path") {
			switch {
			case s.PrivateKeyPath == "":
				l.errorf("derp.server.private_key_path", "must be set when the embedded DERP server is enabled")
			case filepath.Clean(s.PrivateKeyPath) == filepath.Clean(c.Noise.PrivateKeyPath):
				l.errorf("derp.server.private_key_path", "must differ from noise.private_key_path (%s)", c.Noise.PrivateKeyPath)
			}
		}
		c.DERP.Server.IPv4 = l.checkIP("derp.server.ipv4", s.IPv4, true)
		c.DERP.Server.IPv6 = l.checkIP("derp.server.ipv6", s.IPv6, false)
		if l.ok("derp.server.ipv4", "derp.server.ipv6") && c.DERP.Server.IPv4 == DERPFamilyOff && c.DERP.Server.IPv6 == DERPFamilyOff {
			l.warnf("derp.server.ipv6", "derp.server.ipv4 and derp.server.ipv6 are both %q: clients cannot reach the embedded DERP server", DERPFamilyOff)
		}
	}
	if l.ok("derp.server.enabled", "derp.server.automatically_add_embedded_derp_region", "derp.urls", "derp.paths") &&
		(!s.Enabled || !s.AutomaticallyAddEmbeddedDERPRegion) && len(d.URLs) == 0 && len(d.Paths) == 0 {
		key := "derp.server.enabled"
		if s.Enabled {
			key = "derp.server.automatically_add_embedded_derp_region"
		}
		l.errorf(key, "no DERP region configured: enable the embedded DERP server or set derp.urls or derp.paths")
	}
	for i, u := range d.URLs {
		if _, err := checkHTTPURL(u); err != nil {
			l.itemErrorf("derp.urls", strconv.Itoa(i), "%v", err)
		}
	}
	for i, p := range d.Paths {
		if strings.TrimSpace(p) == "" {
			l.itemErrorf("derp.paths", strconv.Itoa(i), "item %d is empty", i+1)
		}
	}
	if l.ok("derp.auto_update_enabled", "derp.update_frequency") && d.AutoUpdateEnabled && d.UpdateFrequency <= 0 {
		l.errorf("derp.update_frequency", "must be greater than 0 when derp.auto_update_enabled is true")
	}
}

// DERPFamilyOff is the value of derp.server.ipv4 or ipv6 that switches the
// embedded relay's address family off: clients neither use nor look up an
// address of that family for it (tailcfg.DERPNode's convention, passed on
// as it is).
const DERPFamilyOff = "none"

// checkIP checks a derp.server.ipv4/ipv6 value, an address of the family
// or DERPFamilyOff (any case), and returns it tidied.
func (l *loader) checkIP(key, value string, want4 bool) string {
	if !l.ok(key) || value == "" {
		return value
	}
	if strings.EqualFold(strings.TrimSpace(value), DERPFamilyOff) {
		return DERPFamilyOff
	}
	a, err := netip.ParseAddr(value)
	family := "IPv6"
	if want4 {
		family = "IPv4"
	}
	if err != nil || (want4 && !a.Is4()) || (!want4 && !a.Is6()) {
		l.errorf(key, "%q is not an %s address or %q", value, family, DERPFamilyOff)
	}
	return value
}

// postgresSSLModes are the sslmode values libpq understands.
func postgresSSLModes() []string {
	return []string{"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
}

func (l *loader) validateDatabase(c *Config) {
	db := &c.Database
	if !l.ok("database.type") {
		return
	}
	urlSet := l.ok("database.postgres.url") && db.Postgres.URL != ""
	if urlSet && !l.explicit("database.type") {
		// A URL is a PostgreSQL database: it selects the engine when the
		// type is left at its default.
		db.Type = "postgres"
	}
	switch strings.ToLower(strings.TrimSpace(db.Type)) {
	case "sqlite", "sqlite3":
		db.Type = "sqlite"
	case "postgres", "postgresql":
		db.Type = "postgres"
	default:
		l.errorf("database.type", "%q must be sqlite or postgres", db.Type)
		return
	}
	if db.Type == "sqlite" {
		if urlSet {
			l.errorf("database.postgres.url", "is a PostgreSQL database, but database.type is sqlite (%s): "+
				"set database.type: postgres (or leave it out), or leave out the URL", l.describeOrigin("database.type"))
		}
		if l.ok("database.sqlite.path") && strings.TrimSpace(db.SQLite.Path) == "" {
			l.errorf("database.sqlite.path", "must be set when database.type is sqlite")
		}
		return
	}
	pg := &db.Postgres
	if urlSet {
		l.validatePostgresURL(pg)
	} else {
		l.validatePostgresFields(pg)
	}
	for _, f := range []struct {
		key string
		n   int
	}{
		{"database.postgres.max_open_conns", pg.MaxOpenConns},
		{"database.postgres.max_idle_conns", pg.MaxIdleConns},
		{"database.postgres.conn_max_idle_time_secs", pg.ConnMaxIdleTimeSecs},
	} {
		if l.ok(f.key) && f.n < 0 {
			l.errorf(f.key, "must not be negative")
		}
	}
	if l.ok("database.postgres.ssl") {
		modes := postgresSSLModes()
		if !contains(modes, pg.SSL) {
			l.errorf("database.postgres.ssl", "%q must be true, false or one of %s", pg.SSL, strings.Join(modes, ", "))
		}
	}
}

// validatePostgresFields checks the connection given field by field
// (host, name, port, pass_file) rather than as a URL.
func (l *loader) validatePostgresFields(pg *PostgresConfig) {
	if l.ok("database.postgres.host") {
		switch {
		case pg.Host == "":
			l.errorf("database.postgres.host", "must be set when database.type is postgres (or set database.postgres.url)")
		case strings.HasPrefix(pg.Host, "/") && strings.HasPrefix(filepath.Base(pg.Host), ".s.PGSQL."):
			l.errorf("database.postgres.host", "%s is the socket itself; give the directory that holds it, %s (and port %s)",
				pg.Host, filepath.Dir(pg.Host), strings.TrimPrefix(filepath.Base(pg.Host), ".s.PGSQL."))
		}
	}
	l.validatePassFile(pg)
	if l.ok("database.postgres.name") && pg.Name == "" {
		l.errorf("database.postgres.name", "must be set when database.type is postgres")
	}
	if l.ok("database.postgres.port") && (pg.Port < 1 || pg.Port > 65535) {
		l.errorf("database.postgres.port", "%d is not a valid port", pg.Port)
	}
}

// validatePassFile checks database.postgres.pass_file and expands
// $CREDENTIALS_DIRECTORY in it. The file itself is read only when the
// password is needed (PostgresConfig.Password): commands that only reach
// the server over its socket load this configuration too, as users who
// may not read the file.
func (l *loader) validatePassFile(pg *PostgresConfig) {
	l.validateSecretFile("database.postgres.pass_file", "database.postgres.pass", &pg.PassFile, pg.Pass)
}

// validateSecretFile checks a key naming a file that holds a secret
// (*path), which excludes the key holding the secret itself (other, set
// to value), and expands $CREDENTIALS_DIRECTORY in it.
func (l *loader) validateSecretFile(key, other string, path *string, value string) {
	if !l.ok(key) || *path == "" {
		return
	}
	if l.ok(other) && value != "" {
		l.errorf(key, "%s is set too (%s); set only one of them", other, l.describeOrigin(other))
		return
	}
	p, named, set := expandCredentials(*path, l.env)
	switch {
	case named && !set:
		l.warnf(key, "$%s is not set here, so %s cannot be read; systemd sets it for the service when LoadCredential= gives it the file",
			credentialsDirVar, *path)
	case !filepath.IsAbs(p):
		l.errorf(key, "%q must be an absolute path, or $%s/NAME for a systemd credential", *path, credentialsDirVar)
	}
	*path = p
}

// describeOrigin says where key's value came from, for messages about two
// keys: "line N", "as OLD_KEY on line N" (an old key name), "env
// HEADSCALE_...", or "by default".
func (l *loader) describeOrigin(key string) string {
	o := l.where(key)
	switch {
	case o.file == l.source && o.file != "" && o.key != key:
		return fmt.Sprintf("as %s on line %d", o.key, o.line)
	case o.file == l.source && o.file != "":
		return fmt.Sprintf("line %d", o.line)
	case o.file != "":
		return o.file
	default:
		return "by default"
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (l *loader) validateDNS(c *Config, serverHost string) {
	// Headscale's default for override_local_dns is true, and it refuses
	// that default without global nameservers. Left unset, it is true
	// here when there are global nameservers (what Headscale sends for
	// the same file) and false when there are none (a file Headscale
	// refuses, accepted here with the clients' own resolvers).
	if !l.explicit("dns.override_local_dns") && l.ok("dns.nameservers.global") && len(c.DNS.Nameservers.Global) > 0 {
		c.DNS.OverrideLocalDNS = true
	}
	dns := c.DNS
	if l.ok("dns.magic_dns", "dns.base_domain") && dns.MagicDNS && dns.BaseDomain == "" {
		l.errorf("dns.base_domain", "must be set when dns.magic_dns is true")
	}
	if base := strings.ToLower(dns.BaseDomain); base != "" && serverHost != "" {
		if serverHost == base || strings.HasSuffix(serverHost, "."+base) {
			l.errorf("dns.base_domain", "%q must not be the server's host or a parent domain of it (%s): clients would resolve the server through MagicDNS",
				dns.BaseDomain, serverHost)
		}
	}
	if l.ok("dns.override_local_dns", "dns.nameservers.global") && dns.OverrideLocalDNS && len(dns.Nameservers.Global) == 0 {
		l.errorf("dns.override_local_dns", "requires at least one nameserver in dns.nameservers.global")
	}
	for i, ns := range dns.Nameservers.Global {
		if err := checkNameserver(ns); err != nil {
			l.itemErrorf("dns.nameservers.global", strconv.Itoa(i), "%v", err)
		}
	}
	domains := make([]string, 0, len(dns.Nameservers.Split))
	for d := range dns.Nameservers.Split {
		domains = append(domains, d)
	}
	sort.Strings(domains)
	for _, d := range domains {
		if strings.TrimSpace(d) == "" {
			l.errorf("dns.nameservers.split", "has an empty domain")
		}
		if len(dns.Nameservers.Split[d]) == 0 {
			l.itemErrorf("dns.nameservers.split", d, "domain %s has no nameservers", d)
		}
		for _, ns := range dns.Nameservers.Split[d] {
			if err := checkNameserver(ns); err != nil {
				l.itemErrorf("dns.nameservers.split", d, "domain %s: %v", d, err)
			}
		}
	}
	for i, d := range dns.SearchDomains {
		if strings.TrimSpace(d) == "" {
			l.itemErrorf("dns.search_domains", strconv.Itoa(i), "item %d is empty", i+1)
		}
	}
	for i := range c.DNS.ExtraRecords {
		r := &c.DNS.ExtraRecords[i]
		r.Type = recordType(r.Type, r.Value)
		if err := checkRecord(*r); err != nil {
			l.itemErrorf("dns.extra_records", strconv.Itoa(i), "record %d%s", i+1, err)
		}
	}
}

// recordType is an extra record's type upper-cased; left out, it is A or
// AAAA by the value's address family, as Tailscale clients infer it (and
// Headscale passes it on empty).
func recordType(typ, value string) string {
	typ = strings.ToUpper(strings.TrimSpace(typ))
	if typ != "" {
		return typ
	}
	if a, err := netip.ParseAddr(strings.TrimSpace(value)); err == nil {
		if a.Is4() {
			return "A"
		}
		if !a.Is4In6() {
			return "AAAA"
		}
	}
	return ""
}

// checkRecord validates one extra DNS record (Type from recordType).
// The error text follows "record N" in messages.
func checkRecord(r ExtraRecord) error {
	if strings.TrimSpace(r.Name) == "" {
		return errors.New(" has no name")
	}
	a, err := netip.ParseAddr(strings.TrimSpace(r.Value))
	switch r.Type {
	case "A":
		if err != nil || !a.Is4() {
			return fmt.Errorf(" (%s): value %q is not an IPv4 address", r.Name, r.Value)
		}
	case "AAAA":
		if err != nil || !a.Is6() || a.Is4In6() {
			return fmt.Errorf(" (%s): value %q is not an IPv6 address", r.Name, r.Value)
		}
	default:
		return fmt.Errorf(" (%s): type %q must be A or AAAA", r.Name, r.Type)
	}
	return nil
}

// checkNameserver accepts an IP address or a DNS-over-HTTPS URL.
func checkNameserver(ns string) error {
	if _, err := netip.ParseAddr(ns); err == nil {
		return nil
	}
	u, err := url.Parse(ns)
	if err == nil && u.Scheme == "https" && u.Host != "" {
		return nil
	}
	return fmt.Errorf("nameserver %q must be an IP address or an https:// URL", ns)
}

func (l *loader) validateMisc(c *Config) {
	if l.ok("policy.mode") && c.Policy.Mode != "file" && c.Policy.Mode != "database" {
		l.errorf("policy.mode", "%q must be file or database", c.Policy.Mode)
	}

	if l.ok("log.level") {
		aliases := map[string]string{"warning": "warn", "trace": "debug", "fatal": "error", "panic": "error"}
		switch lvl := c.Log.Level; lvl {
		case "debug", "info", "warn", "error":
		default:
			if to, ok := aliases[lvl]; ok {
				l.warnf("log.level", "%q is treated as %q", lvl, to)
				c.Log.Level = to
			} else {
				l.errorf("log.level", "%q must be debug, info, warn or error", lvl)
			}
		}
	}
	if l.ok("log.format") && c.Log.Format != "text" && c.Log.Format != "json" {
		l.errorf("log.format", "%q must be text or json", c.Log.Format)
	}

	if l.ok("node.expiry") && c.Node.Expiry < 0 {
		l.errorf("node.expiry", "must not be negative (0 means nodes do not expire)")
	}
	if key, t := "node.ephemeral.inactivity_timeout", c.Node.Ephemeral.InactivityTimeout; l.ok(key) {
		switch {
		case t < minInactivity:
			l.errorf(key, "must be at least %s", minInactivity)
		case t < warnInactivity:
			l.warnf(key, "%s is short: ephemeral nodes that lose connectivity briefly will be deleted", t)
		}
	}

	l.validateTLS(c.TLS)
	l.validateLetsEncrypt(c)
	if l.ok("cli.timeout") && c.CLI.Timeout <= 0 {
		l.errorf("cli.timeout", "must be greater than 0")
	}
}

func (l *loader) validateTLS(t TLSConfig) {
	if !l.ok("tls_cert_path", "tls_key_path") {
		return
	}
	switch {
	case t.CertPath == "" && t.KeyPath == "":
		return
	case t.CertPath == "":
		l.errorf("tls_key_path", "is set but tls_cert_path is not; set both or neither")
		return
	case t.KeyPath == "":
		l.errorf("tls_cert_path", "is set but tls_key_path is not; set both or neither")
		return
	}
	for _, f := range [][2]string{{"tls_cert_path", t.CertPath}, {"tls_key_path", t.KeyPath}} {
		key, path := f[0], f[1]
		info, err := os.Stat(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			l.errorf(key, "file %s does not exist", path)
		case err != nil:
			l.errorf(key, "cannot read %s: %v", path, err)
		case info.IsDir():
			l.errorf(key, "%s is a directory, not a file", path)
		}
	}
}

// validateLetsEncrypt checks the built-in ACME client's keys when
// tls_letsencrypt_hostname turns it on, without contacting the CA.
func (l *loader) validateLetsEncrypt(c *Config) {
	le := c.TLS.LetsEncrypt
	if !l.ok("tls_letsencrypt_hostname") || le.Hostname == "" {
		return
	}
	hostErr := checkACMEHostname(le.Hostname)
	if hostErr != nil {
		l.errorf("tls_letsencrypt_hostname", "%v", hostErr)
	}
	if c.TLS.CertPath != "" {
		l.warnf("tls_cert_path", "ignored: tls_letsencrypt_hostname is set, so the certificate comes from %s (as in Headscale); remove one of them", le.URL)
	}
	if l.ok("tls_letsencrypt_cache_dir") && strings.TrimSpace(le.CacheDir) == "" {
		l.errorf("tls_letsencrypt_cache_dir", "must not be empty while tls_letsencrypt_hostname is set")
	}
	switch le.ChallengeType {
	case ChallengeHTTP01:
		l.checkHostPortOrService("tls_letsencrypt_listen", le.Listen)
		if l.ok("tls_letsencrypt_listen", "listen_addr") && sameListener(le.Listen, c.ListenAddr) {
			l.errorf("tls_letsencrypt_listen", "%q takes the port of listen_addr %q; HTTP-01 needs a plain HTTP listener of its own (Headscale's default is :http)", le.Listen, c.ListenAddr)
		}
	case ChallengeTLSALPN01:
	default:
		if l.ok("tls_letsencrypt_challenge_type") {
			l.errorf("tls_letsencrypt_challenge_type", "%q must be %s or %s", le.ChallengeType, ChallengeHTTP01, ChallengeTLSALPN01)
		}
	}
	if l.ok("acme_url") {
		if u, err := url.Parse(le.URL); err != nil || u.Scheme != "https" || u.Host == "" {
			l.errorf("acme_url", "%q must be an https:// URL of an ACME directory (Let's Encrypt's is %s)", le.URL, LetsEncryptURL)
		}
	}
	if l.ok("acme_email") && le.Email != "" {
		if a, err := mail.ParseAddress(le.Email); err != nil || a.Address != le.Email {
			l.errorf("acme_email", "%q is not an e-mail address", le.Email)
		}
	}
	if l.ok("server_url") && !strings.HasPrefix(c.ServerURL, "https://") {
		l.warnf("tls_letsencrypt_hostname", "server_url %q is not https://, so clients will not use the certificate for %s; set server_url: https://%s", c.ServerURL, le.Hostname, le.Hostname)
	} else if u, err := url.Parse(c.ServerURL); l.ok("server_url") && hostErr == nil && err == nil && !strings.EqualFold(u.Hostname(), strings.TrimSuffix(le.Hostname, ".")) {
		l.warnf("tls_letsencrypt_hostname", "%s is not server_url's host %q: clients connecting to server_url will refuse the certificate", le.Hostname, u.Hostname())
	}
}

// checkACMEHostname accepts a DNS name a public CA can issue for: at least
// two labels of letters, digits and hyphens, no wildcard, port or address.
func checkACMEHostname(h string) error {
	if net.ParseIP(h) != nil {
		return fmt.Errorf("%q is an IP address; ACME certificates are issued for DNS names", h)
	}
	labels := strings.Split(strings.TrimSuffix(h, "."), ".")
	if len(labels) < 2 || len(h) > 253 {
		return fmt.Errorf("%q is not a fully qualified DNS name (such as headscale.example.com)", h)
	}
	for _, lb := range labels {
		ok := lb != "" && len(lb) <= 63 && lb[0] != '-' && lb[len(lb)-1] != '-'
		for _, r := range lb {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				ok = false
			}
		}
		if !ok {
			return fmt.Errorf("%q is not a DNS name: label %q must be letters, digits and inner hyphens", h, lb)
		}
	}
	return nil
}

// checkHostPortOrService is checkHostPort that also takes a service name
// for the port (":http"), as Headscale's tls_letsencrypt_listen does; the
// name is looked up in /etc/services, never on the network.
func (l *loader) checkHostPortOrService(key, addr string) {
	if !l.ok(key) {
		return
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		l.errorf(key, "%q is not host:port (Headscale's default is :http)", addr)
		return
	}
	if n, err := strconv.ParseUint(port, 10, 16); err == nil && n <= 65535 {
		return
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		l.errorf(key, "%q has an unknown port %q (want a number or a service name such as http)", addr, port)
	}
}
