package config

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/netip"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	yamlv3 "go.yaml.in/yaml/v3"
)

// raw returns the merged raw value of key, falling back to the table default
// when it is unset or null.
func (l *loader) raw(key string) any {
	if v := l.k.Get(key); v != nil {
		return v
	}
	return l.idx.byKey[key].def
}

// fail records a decode error for key and marks it bad.
func (l *loader) fail(key string, err error) {
	l.bad[key] = true
	l.errorf(key, "%s", err.Error())
}

func (l *loader) str(key string) string {
	v, err := toString(l.raw(key))
	if err != nil {
		l.fail(key, err)
	}
	return v
}

func (l *loader) boolean(key string) bool {
	v, err := toBool(l.raw(key))
	if err != nil {
		l.fail(key, err)
	}
	return v
}

func (l *loader) integer(key string) int {
	v, err := toInt(l.raw(key))
	if err != nil {
		l.fail(key, err)
	}
	return v
}

func (l *loader) duration(key string) time.Duration {
	v, err := toDuration(l.raw(key))
	if err != nil {
		l.fail(key, err)
	}
	return v
}

func (l *loader) list(key string) []string {
	v, err := toStringList(l.raw(key))
	if err != nil {
		l.fail(key, err)
	}
	return v
}

func (l *loader) prefix(key string) netip.Prefix {
	s, err := toString(l.raw(key))
	if err != nil {
		l.fail(key, err)
		return netip.Prefix{}
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Prefix{}
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		l.fail(key, fmt.Errorf("%q is not a CIDR prefix", s))
		return netip.Prefix{}
	}
	if p.Masked() != p {
		l.fail(key, fmt.Errorf("%s has host bits set; did you mean %s?", s, p.Masked()))
		return netip.Prefix{}
	}
	return p
}

func (l *loader) fileMode(key string) fs.FileMode {
	var mode uint64
	var err error
	switch v := l.raw(key).(type) {
	case string:
		s := strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(v), "0o"), "0O")
		mode, err = strconv.ParseUint(s, 8, 32)
	case int:
		// Only reachable programmatically: file values keep their text.
		if v < 0 {
			err = errors.New("negative")
		}
		mode = uint64(v)
	default:
		err = errors.New("not a string")
	}
	if err != nil || mode > 0o777 {
		l.fail(key, fmt.Errorf("must be octal permission bits such as \"0770\", got %v", l.raw(key)))
		return 0
	}
	return fs.FileMode(mode)
}

func (l *loader) sslMode(key string) string {
	switch v := l.raw(key).(type) {
	case bool:
		return sslFromBool(v)
	case string:
		if b, err := strconv.ParseBool(v); err == nil {
			return sslFromBool(b)
		}
		return strings.ToLower(strings.TrimSpace(v))
	default:
		l.fail(key, fmt.Errorf("must be true, false or a PostgreSQL sslmode, got %v", v))
		return ""
	}
}

func sslFromBool(b bool) string {
	if b {
		return "require"
	}
	return "disable"
}

func (l *loader) listMap(key string) map[string][]string {
	v, err := toListMap(l.raw(key))
	if err != nil {
		l.fail(key, err)
	}
	return v
}

func (l *loader) records(key string) []ExtraRecord {
	v, err := toRecords(l.raw(key))
	if err != nil {
		l.fail(key, err)
	}
	return v
}

// derivedPath returns key's value, or its file inside stateDir when unset.
func (l *loader) derivedPath(key, stateDir string) string {
	if l.k.Get(key) == nil {
		return filepath.Join(stateDir, l.idx.byKey[key].derived)
	}
	return l.str(key)
}

// decode builds a Config from the merged values; decode failures are
// recorded as problems and leave the field at its zero value.
func (l *loader) decode() *Config {
	c := &Config{}
	c.ServerURL = strings.TrimRight(l.str("server_url"), "/")
	c.ListenAddr = l.str("listen_addr")
	c.MetricsListenAddr = l.str("metrics_listen_addr")
	c.StateDir = l.str("state_dir")
	c.Noise.PrivateKeyPath = l.derivedPath("noise.private_key_path", c.StateDir)
	c.Noise.HTTP2Server = strings.ToLower(strings.TrimSpace(l.str("noise.http2_server")))

	c.Prefixes.V4 = l.prefix("prefixes.v4")
	c.Prefixes.V6 = l.prefix("prefixes.v6")
	c.Prefixes.Allocation = strings.ToLower(l.str("prefixes.allocation"))

	d := &c.DERP
	d.Server.Enabled = l.boolean("derp.server.enabled")
	d.Server.RegionID = l.integer("derp.server.region_id")
	d.Server.RegionCode = l.str("derp.server.region_code")
	d.Server.RegionName = l.str("derp.server.region_name")
	d.Server.VerifyClients = l.boolean("derp.server.verify_clients")
	d.Server.STUNListenAddr = l.str("derp.server.stun_listen_addr")
	d.Server.PrivateKeyPath = l.derivedPath("derp.server.private_key_path", c.StateDir)
	d.Server.AutomaticallyAddEmbeddedDERPRegion = l.boolean("derp.server.automatically_add_embedded_derp_region")
	d.Server.IPv4 = l.str("derp.server.ipv4")
	d.Server.IPv6 = l.str("derp.server.ipv6")
	d.URLs = l.list("derp.urls")
	d.Paths = l.list("derp.paths")
	d.AutoUpdateEnabled = l.boolean("derp.auto_update_enabled")
	d.UpdateFrequency = l.duration("derp.update_frequency")

	db := &c.Database
	db.Type = l.str("database.type")
	db.SQLite.Path = l.derivedPath("database.sqlite.path", c.StateDir)
	db.SQLite.WriteAheadLog = l.boolean("database.sqlite.write_ahead_log")
	db.SQLite.WALAutocheckpoint = l.integer("database.sqlite.wal_autocheckpoint")
	pg := &db.Postgres
	pg.Host = l.str("database.postgres.host")
	pg.Port = l.integer("database.postgres.port")
	pg.Name = l.str("database.postgres.name")
	pg.User = l.str("database.postgres.user")
	pg.Pass = l.str("database.postgres.pass")
	pg.SSL = l.sslMode("database.postgres.ssl")
	pg.MaxOpenConns = l.integer("database.postgres.max_open_conns")
	pg.MaxIdleConns = l.integer("database.postgres.max_idle_conns")
	pg.ConnMaxIdleTimeSecs = l.integer("database.postgres.conn_max_idle_time_secs")

	dns := &c.DNS
	dns.MagicDNS = l.boolean("dns.magic_dns")
	dns.BaseDomain = strings.TrimSuffix(strings.TrimSpace(l.str("dns.base_domain")), ".")
	dns.OverrideLocalDNS = l.boolean("dns.override_local_dns")
	dns.Nameservers.Global = l.list("dns.nameservers.global")
	dns.Nameservers.Split = l.listMap("dns.nameservers.split")
	dns.SearchDomains = l.list("dns.search_domains")
	c.API.CORSAllowedOrigins = l.list("api.cors_allowed_origins")
	dns.ExtraRecords = l.records("dns.extra_records")
	dns.ExtraRecordsPath = l.str("dns.extra_records_path")

	c.Policy.Mode = strings.ToLower(l.str("policy.mode"))
	c.Policy.Path = l.str("policy.path")
	c.Log.Level = strings.ToLower(strings.TrimSpace(l.str("log.level")))
	c.Log.Format = strings.ToLower(strings.TrimSpace(l.str("log.format")))
	c.Node.Expiry = l.duration("node.expiry")
	c.Node.Ephemeral.InactivityTimeout = l.duration("node.ephemeral.inactivity_timeout")

	c.UnixSocket = l.derivedPath("unix_socket", c.StateDir)
	c.UnixSocketPermission = l.fileMode("unix_socket_permission")
	c.TLS.CertPath = l.str("tls_cert_path")
	c.TLS.KeyPath = l.str("tls_key_path")

	c.CLI.Address = l.str("cli.address")
	c.CLI.APIKey = l.str("cli.api_key")
	c.CLI.Timeout = l.duration("cli.timeout")
	c.CLI.Insecure = l.boolean("cli.insecure")
	return c
}

// toString accepts any scalar. Numbers normally arrive as their literal
// text already (see loadFile); this handles values set by other layers.
func toString(v any) (string, error) {
	switch v := v.(type) {
	case nil:
		return "", nil
	case string:
		return v, nil
	case bool, int, int64, uint64, float64:
		return fmt.Sprint(v), nil
	default:
		return "", fmt.Errorf("must be a single value, not %s", describe(v))
	}
}

func toBool(v any) (bool, error) {
	switch v := v.(type) {
	case bool:
		return v, nil
	case string:
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "true", "yes", "on", "1":
			return true, nil
		case "false", "no", "off", "0":
			return false, nil
		}
		return false, fmt.Errorf("must be true or false, got %q", v)
	default:
		return false, fmt.Errorf("must be true or false, not %s", describe(v))
	}
}

func toInt(v any) (int, error) {
	switch v := v.(type) {
	case int:
		return v, nil
	case int64:
		if v < math.MinInt || v > math.MaxInt {
			return 0, fmt.Errorf("%d is out of range", v)
		}
		return int(v), nil
	case uint64:
		if v > math.MaxInt {
			return 0, fmt.Errorf("%d is out of range", v)
		}
		return int(v), nil
	case float64:
		if v != math.Trunc(v) || v < math.MinInt || v > math.MaxInt {
			return 0, fmt.Errorf("must be a whole number, got %v", v)
		}
		return int(v), nil
	case string:
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return 0, fmt.Errorf("must be a whole number, got %q", v)
		}
		return n, nil
	default:
		return 0, fmt.Errorf("must be a whole number, not %s", describe(v))
	}
}

func toDuration(v any) (time.Duration, error) {
	switch v := v.(type) {
	case string:
		d, err := ParseDuration(v)
		if err != nil {
			return 0, err
		}
		return d, nil
	case int, int64, uint64, float64:
		if fmt.Sprint(v) == "0" {
			return 0, nil
		}
		return 0, fmt.Errorf("duration %v needs a unit, e.g. \"%vs\"", v, v)
	default:
		return 0, fmt.Errorf("must be a duration such as \"30s\" or \"90d\", not %s", describe(v))
	}
}

// toStringList accepts a YAML list of scalars, a YAML flow list given as a
// string ("[a, b]"), or a comma-separated string (the environment form).
func toStringList(v any) ([]string, error) {
	switch v := v.(type) {
	case nil:
		return []string{}, nil
	case []any:
		out := make([]string, 0, len(v))
		for i, item := range v {
			s, err := toString(item)
			if err != nil {
				return nil, fmt.Errorf("item %d: %w", i+1, err)
			}
			out = append(out, strings.TrimSpace(s))
		}
		return out, nil
	case []string:
		return append([]string{}, v...), nil
	case string:
		s := strings.TrimSpace(v)
		if strings.HasPrefix(s, "[") {
			var items []any
			if err := yamlv3.Unmarshal([]byte(s), &items); err != nil {
				return nil, fmt.Errorf("list %q does not parse: %w", s, err)
			}
			return toStringList(items)
		}
		out := []string{}
		for _, part := range strings.Split(s, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
		return out, nil
	default:
		return nil, fmt.Errorf("must be a list, not %s", describe(v))
	}
}

// toListMap accepts a mapping of names to lists, or the same as YAML text
// (the environment form, e.g. `{example.com: [10.0.0.53]}`).
func toListMap(v any) (map[string][]string, error) {
	switch v := v.(type) {
	case nil:
		return map[string][]string{}, nil
	case map[string]any:
		out := make(map[string][]string, len(v))
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			items, err := toStringList(v[k])
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			out[k] = items
		}
		return out, nil
	case string:
		if strings.TrimSpace(v) == "" {
			return map[string][]string{}, nil
		}
		var m map[string]any
		if err := yamlv3.Unmarshal([]byte(v), &m); err != nil {
			return nil, fmt.Errorf("must be a mapping such as {example.com: [10.0.0.53]}: %w", err)
		}
		return toListMap(m)
	default:
		return nil, fmt.Errorf("must be a mapping of domain to nameservers, not %s", describe(v))
	}
}

// toRecords accepts a list of {name, type, value} mappings, or the same as
// YAML text (the environment form).
func toRecords(v any) ([]ExtraRecord, error) {
	switch v := v.(type) {
	case nil:
		return []ExtraRecord{}, nil
	case []any:
		out := make([]ExtraRecord, 0, len(v))
		for i, item := range v {
			m, ok := item.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("record %d must be a mapping with name, type and value", i+1)
			}
			var r ExtraRecord
			for field, val := range m {
				s, err := toString(val)
				if err != nil {
					return nil, fmt.Errorf("record %d: %s: %w", i+1, field, err)
				}
				switch field {
				case "name":
					r.Name = s
				case "type":
					r.Type = s
				case "value":
					r.Value = s
				default:
					return nil, fmt.Errorf("record %d: unknown field %q (want name, type, value)", i+1, field)
				}
			}
			out = append(out, r)
		}
		return out, nil
	case string:
		if strings.TrimSpace(v) == "" {
			return []ExtraRecord{}, nil
		}
		var items []any
		if err := yamlv3.Unmarshal([]byte(v), &items); err != nil {
			return nil, fmt.Errorf("must be a list such as [{name: a.example.com, type: A, value: 100.64.0.9}]: %w", err)
		}
		return toRecords(items)
	default:
		return nil, fmt.Errorf("must be a list of records, not %s", describe(v))
	}
}

func describe(v any) string {
	switch v.(type) {
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	case nil:
		return "empty"
	default:
		return fmt.Sprintf("%T", v)
	}
}
