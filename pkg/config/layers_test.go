package config

import (
	"errors"
	"io/fs"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// configKeys returns the koanf key of every leaf field of Config, with its
// Go type, following the koanf tags the way unmarshal does.
func configKeys(t reflect.Type, prefix string, out map[string]reflect.Type) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("koanf")
		if tag == "" || tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		key := name
		if prefix != "" && name != "" {
			key = prefix + "." + name
		} else if name == "" {
			key = prefix
		}
		section := f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[netip.Prefix]()
		switch {
		case opts == "squash":
			configKeys(f.Type, prefix, out)
		case section:
			configKeys(f.Type, key, out)
		default:
			out[key] = f.Type
		}
	}
}

// TestKeyTableMatchesConfig guards the two halves of the schema: every
// active key in the table fills a Config field, every tagged field has a
// key, a key kept as literal text fills a string or file mode, and no key
// is a section of others.
func TestKeyTableMatchesConfig(t *testing.T) {
	fields := map[string]reflect.Type{}
	configKeys(reflect.TypeFor[Config](), "", fields)
	idx := newKeyIndex()
	for _, s := range idx.all {
		// The file layer is a map by key that koanf nests at the dots.
		if idx.parents[s.key] {
			t.Errorf("key %s is also a section holding other keys", s.key)
		}
		if s.status != statusActive {
			continue
		}
		typ, ok := fields[s.key]
		if !ok {
			t.Errorf("active key %s has no Config field with that koanf tag", s.key)
			continue
		}
		if s.text && typ != reflect.TypeFor[string]() && typ != reflect.TypeFor[fs.FileMode]() {
			t.Errorf("key %s is read as text but its field is %s", s.key, typ)
		}
		delete(fields, s.key)
	}
	for key := range fields {
		t.Errorf("Config field tagged %s is not an active key in the table", key)
	}
}

// TestEnvNames pins how HEADSCALE_* variables map to keys: the prefix, then
// the key upper-cased with dots as underscores; only active keys, exact
// case, no old names.
func TestEnvNames(t *testing.T) {
	tests := []struct {
		name  string
		env   []string
		check func(c *Config) bool
	}{
		{"nested key", []string{"HEADSCALE_DERP_SERVER_STUN_LISTEN_ADDR=0.0.0.0:3479"},
			func(c *Config) bool { return c.DERP.Server.STUNListenAddr == "0.0.0.0:3479" }},
		{"squashed tls keys", []string{"HEADSCALE_TLS_CERT_PATH=", "HEADSCALE_TLS_KEY_PATH="},
			func(c *Config) bool { return c.TLS.CertPath == "" && c.TLS.KeyPath == "" && !c.TLS.Enabled() }},
		{"lower case name ignored", []string{"headscale_server_url=https://x.example.com"},
			func(c *Config) bool { return c.ServerURL == "http://127.0.0.1:8080" }},
		{"old key name ignored", []string{"HEADSCALE_DB_PATH=/x.sqlite", "HEADSCALE_LOG_LEVEL_X=debug"},
			func(c *Config) bool { return c.Database.SQLite.Path == "data/db.sqlite" && c.Log.Level == "info" }},
		{"reserved key ignored", []string{"HEADSCALE_DISABLE_CHECK_UPDATES=true"},
			func(c *Config) bool { return c.ServerURL == "http://127.0.0.1:8080" }},
		{"dotted name ignored", []string{"HEADSCALE_DNS.BASE_DOMAIN=x.internal"},
			func(c *Config) bool { return c.DNS.BaseDomain == "tailnet.internal" }},
		{"value normalised like the file's", []string{"HEADSCALE_LOG_FORMAT= JSON ", "HEADSCALE_SERVER_URL=https://h.example.com/"},
			func(c *Config) bool { return c.Log.Format == "json" && c.ServerURL == "https://h.example.com" }},
		{"duration suffixes", []string{"HEADSCALE_NODE_EXPIRY=1w"},
			func(c *Config) bool { return c.Node.Expiry == 7*24*time.Hour }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, warns, err := Load(LoadOptions{Env: tt.env, SearchPaths: []string{}})
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if len(warns) != 0 {
				t.Errorf("unexpected warnings:\n%s", problemsText(warns))
			}
			if !tt.check(cfg) {
				t.Errorf("config = %+v", cfg)
			}
		})
	}
}

// TestLayerOrder checks which layer wins for one key: defaults, then the
// file (an old key name standing for the new one), then the environment,
// and that an empty value in the file leaves the key unset.
func TestLayerOrder(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		env  []string
		want string
	}{
		{"default", "server_url: https://h.example.com\n", nil, "info"},
		{"file", "log:\n  level: debug\n", nil, "debug"},
		{"old name in file", "log_level: error\n", nil, "error"},
		{"env over file", "log:\n  level: debug\n", []string{"HEADSCALE_LOG_LEVEL=warn"}, "warn"},
		{"env over old name", "log_level: error\n", []string{"HEADSCALE_LOG_LEVEL=warn"}, "warn"},
		{"empty value is unset", "log:\n  level:\n", nil, "info"},
		{"empty section is unset", "log:\n", []string{"HEADSCALE_LOG_LEVEL=debug"}, "debug"},
		{"key written with dots", "log.level: error\n", nil, "error"},
		{"env over key written with dots", "log.level: error\n", []string{"HEADSCALE_LOG_LEVEL=warn"}, "warn"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, _, err := loadYAML(t, tt.yaml, tt.env...)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if cfg.Log.Level != tt.want {
				t.Errorf("log.level = %q, want %q", cfg.Log.Level, tt.want)
			}
		})
	}
}

// TestMergedKeyOverridden: a key written in a mapping overrides the same
// key merged in with "<<", for values kept as text too, and a problem with
// it names the line where it is written.
func TestMergedKeyOverridden(t *testing.T) {
	const file = `x: &pg
  host: db
  port: 1
  user: [admin]
database:
  type: postgres
  postgres:
    <<: *pg
    host: other
    name: hs
    port: 2
    user: 1234
`
	cfg, _, _, err := loadYAML(t, file)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if pg := cfg.Database.Postgres; pg.Host != "other" || pg.Port != 2 || pg.User != "1234" {
		t.Errorf("postgres = %+v", pg)
	}
	_, _, _, err = loadYAML(t, strings.Replace(file, "host: other", "host: [other]", 1))
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 1 || errs[0].Line != 9 || errs[0].Key != "database.postgres.host" {
		t.Errorf("want one problem at line 9 about database.postgres.host, got %v", err)
	}
}

// TestValueErrors pins the reasons of values that do not convert, as the
// file and the environment give them.
func TestValueErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		env  []string
		want string
	}{
		{"ssl number", "database:\n  postgres:\n    ssl: 1\n", nil, "database.postgres.ssl: must be true, false or a PostgreSQL sslmode, got 1"},
		{"ssl list", "database:\n  postgres:\n    ssl: [a]\n", nil, "database.postgres.ssl: must be true, false or a PostgreSQL sslmode, got [a]"},
		{"string given a list", "log:\n  level: [debug]\n", nil, "log.level: must be a single value, not a list"},
		{"int out of range", "database:\n  postgres:\n    port: 99999999999999999999\n", nil, "database.postgres.port: must be a whole number, got 1e+20"},
		{"record with a stray field", "dns:\n  extra_records:\n    - {name: a.example.com, type: A, value: 100.64.0.1, ttl: 5}\n", nil,
			`dns.extra_records: record 1: unknown field "ttl" (want name, type, value)`},
		{"env bool", "", []string{"HEADSCALE_CLI_INSECURE=sometimes"}, `env HEADSCALE_CLI_INSECURE: cli.insecure: must be true or false, got "sometimes"`},
		{"env split map", "", []string{"HEADSCALE_DNS_NAMESERVERS_SPLIT=[a]"}, "env HEADSCALE_DNS_NAMESERVERS_SPLIT: dns.nameservers.split: must be a mapping such as {example.com: [10.0.0.53]}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, _, err := loadYAML(t, tt.yaml, tt.env...)
			var errs Errors
			if !errors.As(err, &errs) || len(errs) != 1 {
				t.Fatalf("want one problem, got %v", err)
			}
			if !strings.Contains(errs[0].String(), tt.want) {
				t.Errorf("problem %q does not contain %q", errs[0], tt.want)
			}
		})
	}
}
