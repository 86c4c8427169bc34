package config

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// writeConfig writes content to dir/name and returns its path.
func writeConfig(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// loadYAML loads content as a config file with the given environment.
func loadYAML(t *testing.T, content string, env ...string) (cfg *Config, warns []Problem, path string, err error) {
	t.Helper()
	path = writeConfig(t, t.TempDir(), "config.yaml", content)
	cfg, warns, err = Load(LoadOptions{Path: path, Env: env, SearchPaths: []string{}})
	return cfg, warns, path, err
}

// mustLoadYAML loads content and fails the test on any error.
func mustLoadYAML(t *testing.T, content string, env ...string) (*Config, []Problem) {
	t.Helper()
	cfg, warns, _, err := loadYAML(t, content, env...)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return cfg, warns
}

func problemsText(ps []Problem) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, "\n")
}

func TestLoadDefaults(t *testing.T) {
	tests := []struct {
		name     string
		env      []string
		stateDir string
		// sockets: the CLI tries Headscale's socket first only when
		// nothing names the socket or the state directory.
		sockets []string
	}{
		{"no env", nil, "./data", []string{systemUnixSocket, "data/headscale.sock"}},
		{"state dir from env", []string{"HEADSCALE_STATE_DIR=/srv/hs"}, "/srv/hs", []string{"/srv/hs/headscale.sock"}},
		{"unrelated env ignored", []string{"HOME=/root", "HEADSCALE_NOT_A_KEY=1", "HEADSCALE_CLI_UNKNOWN=x"}, "./data",
			[]string{systemUnixSocket, "data/headscale.sock"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			missing := filepath.Join(t.TempDir(), "nope.yaml")
			cfg, warns, err := Load(LoadOptions{Env: tt.env, SearchPaths: []string{missing}})
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if len(warns) != 0 {
				t.Errorf("unexpected warnings:\n%s", problemsText(warns))
			}
			want := &Config{
				ServerURL:         "http://127.0.0.1:8080",
				ListenAddr:        "127.0.0.1:8080",
				GRPCListenAddr:    ":50443",
				MetricsListenAddr: "127.0.0.1:9090",
				TrustedProxies:    []string{"127.0.0.0/8", "::1/128"},
				StateDir:          tt.stateDir,
				Noise:             NoiseConfig{PrivateKeyPath: filepath.Join(tt.stateDir, "noise_private.key"), HTTP2Server: HTTP2Builtin},
				Prefixes: PrefixesConfig{
					V4:         netip.MustParsePrefix("100.64.0.0/10"),
					V6:         netip.MustParsePrefix("fd7a:115c:a1e0::/48"),
					Allocation: "sequential",
				},
				Cluster: ClusterConfig{Debounce: 10 * time.Millisecond, LeaseTTL: 15 * time.Second},
				DERP: DERPConfig{
					Server: DERPServerConfig{
						Enabled:                            true,
						RegionID:                           999,
						RegionCode:                         "headscale",
						RegionName:                         "Headscale Embedded DERP",
						VerifyClients:                      true,
						STUNListenAddr:                     "127.0.0.1:3478",
						PrivateKeyPath:                     filepath.Join(tt.stateDir, "derp_server_private.key"),
						AutomaticallyAddEmbeddedDERPRegion: true,
					},
					URLs:              []string{},
					Paths:             []string{},
					AutoUpdateEnabled: true,
					UpdateFrequency:   3 * time.Hour,
				},
				Database: DatabaseConfig{
					Type: "sqlite",
					SQLite: SQLiteConfig{
						Path:              filepath.Join(tt.stateDir, "db.sqlite"),
						WriteAheadLog:     true,
						WALAutocheckpoint: 1000,
					},
					Postgres: PostgresConfig{
						Port: 5432, SSL: "disable",
						MaxOpenConns: 10, MaxIdleConns: 10, ConnMaxIdleTimeSecs: 3600,
					},
				},
				DNS: DNSConfig{
					MagicDNS:      true,
					BaseDomain:    "tailnet.internal",
					Nameservers:   NameserversConfig{Global: []string{}, Split: map[string][]string{}},
					SearchDomains: []string{},
					ExtraRecords:  []ExtraRecord{},
				},
				Policy:               PolicyConfig{Mode: "file"},
				Log:                  LogConfig{Level: "info", Format: "text"},
				Node:                 NodeConfig{Ephemeral: EphemeralConfig{InactivityTimeout: 120 * time.Second}},
				UnixSocket:           filepath.Join(tt.stateDir, "headscale.sock"),
				UnixSocketPermission: 0o770,
				CLI:                  CLIConfig{Timeout: 5 * time.Second},
				TLS: TLSConfig{LetsEncrypt: LetsEncryptConfig{CacheDir: filepath.Join(tt.stateDir, "cache"),
					ChallengeType: ChallengeHTTP01, Listen: ":http", URL: LetsEncryptURL}},
				OIDC: OIDCConfig{OnlyStartIfAvailable: true, Scope: []string{"openid", "profile", "email"}, EmailVerifiedRequired: true,
					ExtraParams: map[string]string{}, AllowedDomains: []string{}, AllowedUsers: []string{}, AllowedGroups: []string{}, PKCE: PKCEConfig{Method: PKCEMethodS256}},
				API:           APIConfig{CORSAllowedOrigins: []string{}},
				Taildrop:      TaildropConfig{Enabled: true},
				ClientSockets: tt.sockets,
			}
			if !reflect.DeepEqual(cfg, want) {
				t.Errorf("config mismatch\n got: %+v\nwant: %+v", cfg, want)
			}
		})
	}
}

func TestStateDirDerivedPaths(t *testing.T) {
	tests := []struct {
		name     string
		yaml     string
		env      []string
		wantDB   string
		wantSock string
	}{
		{"state_dir in file", "state_dir: /var/lib/hs\n", nil, "/var/lib/hs/db.sqlite", "/var/lib/hs/headscale.sock"},
		{"env state dir beats file", "state_dir: /var/lib/hs\n", []string{"HEADSCALE_STATE_DIR=/env"}, "/env/db.sqlite", "/env/headscale.sock"},
		{"explicit path kept", "state_dir: /var/lib/hs\ndatabase:\n  sqlite:\n    path: /db/x.sqlite\n", nil, "/db/x.sqlite", "/var/lib/hs/headscale.sock"},
		{"null path uses derived", "state_dir: /s\ndatabase:\n  sqlite:\n    path:\n", nil, "/s/db.sqlite", "/s/headscale.sock"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _ := mustLoadYAML(t, tt.yaml, tt.env...)
			if cfg.Database.SQLite.Path != tt.wantDB || cfg.UnixSocket != tt.wantSock {
				t.Errorf("got db %q sock %q, want %q %q", cfg.Database.SQLite.Path, cfg.UnixSocket, tt.wantDB, tt.wantSock)
			}
		})
	}
}

func TestSearchOrder(t *testing.T) {
	tests := []struct {
		name     string
		files    []string // which of first, second, explicit, envfile exist
		path     bool     // set opts.Path to explicit
		envFile  bool     // set HEADSCALE_CONFIG to envfile
		wantFrom string   // "" for defaults
	}{
		{"first search path wins", []string{"first", "second"}, false, false, "first"},
		{"falls through to second", []string{"second"}, false, false, "second"},
		{"nothing found runs on defaults", nil, false, false, ""},
		{"HEADSCALE_CONFIG beats search", []string{"first", "envfile"}, false, true, "envfile"},
		{"explicit path beats HEADSCALE_CONFIG", []string{"first", "envfile", "explicit"}, true, true, "explicit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p := func(n string) string { return filepath.Join(dir, n, "config.yaml") }
			for _, f := range tt.files {
				writeConfig(t, dir, filepath.Join(f, "config.yaml"), "server_url: https://"+f+".example.com\n")
			}
			opts := LoadOptions{SearchPaths: []string{p("first"), p("second")}}
			if tt.path {
				opts.Path = p("explicit")
			}
			if tt.envFile {
				opts.Env = []string{"HEADSCALE_CONFIG=" + p("envfile")}
			}
			cfg, warns, err := Load(opts)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if len(warns) != 0 {
				t.Errorf("unexpected warnings:\n%s", problemsText(warns))
			}
			wantSource, wantURL := "", "http://127.0.0.1:8080"
			if tt.wantFrom != "" {
				wantSource, wantURL = p(tt.wantFrom), "https://"+tt.wantFrom+".example.com"
			}
			if cfg.Source != wantSource || cfg.ServerURL != wantURL {
				t.Errorf("got source %q url %q, want %q %q", cfg.Source, cfg.ServerURL, wantSource, wantURL)
			}
		})
	}
}

func TestExplicitPathMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	tests := []struct {
		name string
		opts LoadOptions
		want string
	}{
		{"flag", LoadOptions{Path: missing}, "--config"},
		{"env", LoadOptions{Env: []string{"HEADSCALE_CONFIG=" + missing}}, "HEADSCALE_CONFIG"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.SearchPaths = []string{}
			_, _, err := Load(tt.opts)
			if !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("want not-exist error, got %v", err)
			}
			var errs Errors
			if errors.As(err, &errs) {
				t.Errorf("I/O failure should not be an Errors value")
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), missing) {
				t.Errorf("error %q should name %q and the path", err, tt.want)
			}
		})
	}
}

func TestEnvOverrides(t *testing.T) {
	const file = `server_url: https://file.example.com
dns:
  base_domain: file.internal
log:
  level: debug
`
	tests := []struct {
		name  string
		env   []string
		check func(t *testing.T, c *Config)
	}{
		{"top level", []string{"HEADSCALE_SERVER_URL=https://env.example.com"}, func(t *testing.T, c *Config) {
			if c.ServerURL != "https://env.example.com" {
				t.Errorf("ServerURL = %q", c.ServerURL)
			}
		}},
		{"nested with underscores", []string{
			"HEADSCALE_DATABASE_SQLITE_PATH=/env/db.sqlite",
			"HEADSCALE_DNS_BASE_DOMAIN=env.internal",
			"HEADSCALE_NODE_EPHEMERAL_INACTIVITY_TIMEOUT=90s",
			"HEADSCALE_DERP_SERVER_REGION_ID=900",
			"HEADSCALE_DERP_SERVER_VERIFY_CLIENTS=false",
		}, func(t *testing.T, c *Config) {
			if c.Database.SQLite.Path != "/env/db.sqlite" || c.DNS.BaseDomain != "env.internal" ||
				c.Node.Ephemeral.InactivityTimeout != 90*time.Second || c.DERP.Server.RegionID != 900 ||
				c.DERP.Server.VerifyClients {
				t.Errorf("got %+v / %+v / %v / %+v", c.Database.SQLite, c.DNS.BaseDomain, c.Node, c.DERP.Server)
			}
		}},
		{"require approval", []string{"HEADSCALE_NODE_REQUIRE_APPROVAL=true"}, func(t *testing.T, c *Config) {
			if !c.Node.RequireApproval {
				t.Error("HEADSCALE_NODE_REQUIRE_APPROVAL=true left node.require_approval off")
			}
		}},
		{"file value kept when env unset", nil, func(t *testing.T, c *Config) {
			if c.ServerURL != "https://file.example.com" || c.Log.Level != "debug" {
				t.Errorf("got %q %q", c.ServerURL, c.Log.Level)
			}
		}},
		{"lists are comma separated", []string{
			"HEADSCALE_DERP_URLS=https://a.example.com/derp.json, https://b.example.com/derp.json",
			"HEADSCALE_DNS_NAMESERVERS_GLOBAL=1.1.1.1,8.8.8.8",
			"HEADSCALE_DNS_SEARCH_DOMAINS=",
		}, func(t *testing.T, c *Config) {
			if !reflect.DeepEqual(c.DERP.URLs, []string{"https://a.example.com/derp.json", "https://b.example.com/derp.json"}) ||
				!reflect.DeepEqual(c.DNS.Nameservers.Global, []string{"1.1.1.1", "8.8.8.8"}) ||
				len(c.DNS.SearchDomains) != 0 {
				t.Errorf("got %q %q %q", c.DERP.URLs, c.DNS.Nameservers.Global, c.DNS.SearchDomains)
			}
		}},
		{"maps and records as YAML", []string{
			"HEADSCALE_DNS_NAMESERVERS_SPLIT={corp.example.com: [10.0.0.53]}",
			"HEADSCALE_DNS_EXTRA_RECORDS=[{name: g.file.internal, type: A, value: 100.64.0.3}]",
		}, func(t *testing.T, c *Config) {
			if !reflect.DeepEqual(c.DNS.Nameservers.Split, map[string][]string{"corp.example.com": {"10.0.0.53"}}) ||
				!reflect.DeepEqual(c.DNS.ExtraRecords, []ExtraRecord{{Name: "g.file.internal", Type: "A", Value: "100.64.0.3"}}) {
				t.Errorf("got %v %v", c.DNS.Nameservers.Split, c.DNS.ExtraRecords)
			}
		}},
		{"cli keys", []string{
			"HEADSCALE_CLI_ADDRESS=remote.example.com:443",
			"HEADSCALE_CLI_API_KEY=secret",
			"HEADSCALE_CLI_TIMEOUT=30s",
			"HEADSCALE_CLI_INSECURE=true",
		}, func(t *testing.T, c *Config) {
			want := CLIConfig{Address: "remote.example.com:443", APIKey: "secret", Timeout: 30 * time.Second, Insecure: true}
			if c.CLI != want {
				t.Errorf("CLI = %+v", c.CLI)
			}
		}},
		{"empty value disables metrics", []string{"HEADSCALE_METRICS_LISTEN_ADDR="}, func(t *testing.T, c *Config) {
			if c.MetricsListenAddr != "" {
				t.Errorf("MetricsListenAddr = %q", c.MetricsListenAddr)
			}
		}},
		{"permission and ssl", []string{
			"HEADSCALE_UNIX_SOCKET_PERMISSION=0700",
			"HEADSCALE_DATABASE_POSTGRES_SSL=true",
		}, func(t *testing.T, c *Config) {
			if c.UnixSocketPermission != 0o700 || c.Database.Postgres.SSL != "require" {
				t.Errorf("got %o %q", c.UnixSocketPermission, c.Database.Postgres.SSL)
			}
		}},
		{"last duplicate wins", []string{"HEADSCALE_LOG_FORMAT=text", "HEADSCALE_LOG_FORMAT=json"}, func(t *testing.T, c *Config) {
			if c.Log.Format != "json" {
				t.Errorf("Format = %q", c.Log.Format)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, warns := mustLoadYAML(t, file, tt.env...)
			if len(warns) != 0 {
				t.Errorf("unexpected warnings:\n%s", problemsText(warns))
			}
			tt.check(t, cfg)
		})
	}
}

func TestEnvProblemsNameTheVariable(t *testing.T) {
	_, _, _, err := loadYAML(t, "log:\n  level: info\n", "HEADSCALE_LOG_LEVEL=loud", "HEADSCALE_CLI_TIMEOUT=soon")
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("want Errors, got %v", err)
	}
	want := []Problem{
		{File: "env HEADSCALE_CLI_TIMEOUT", Key: "cli.timeout"},
		{File: "env HEADSCALE_LOG_LEVEL", Key: "log.level"},
	}
	if len(errs) != len(want) {
		t.Fatalf("got %d problems:\n%s", len(errs), errs)
	}
	for i, w := range want {
		if errs[i].File != w.File || errs[i].Key != w.Key || errs[i].Line != 0 {
			t.Errorf("problem %d = %+v, want file %q key %q", i, errs[i], w.File, w.Key)
		}
	}
}

func TestLegacyKeys(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantKey string
		line    int
		check   func(t *testing.T, c *Config)
	}{
		{"db_type", "server_url: https://h.example.com\ndb_type: sqlite3\n", "db_type", 2, func(t *testing.T, c *Config) {
			if c.Database.Type != "sqlite" {
				t.Errorf("Type = %q", c.Database.Type)
			}
		}},
		{"db_path", "db_path: /old/db.sqlite\n", "db_path", 1, func(t *testing.T, c *Config) {
			if c.Database.SQLite.Path != "/old/db.sqlite" {
				t.Errorf("Path = %q", c.Database.SQLite.Path)
			}
		}},
		{"db_host", "db_host: /var/run/postgresql\n", "db_host", 1, func(t *testing.T, c *Config) {
			if c.Database.Postgres.Host != "/var/run/postgresql" {
				t.Errorf("Host = %q", c.Database.Postgres.Host)
			}
		}},
		{"db_port", "db_port: 6543\n", "db_port", 1, func(t *testing.T, c *Config) {
			if c.Database.Postgres.Port != 6543 {
				t.Errorf("Port = %d", c.Database.Postgres.Port)
			}
		}},
		{"db_name", "db_name: hs\n", "db_name", 1, func(t *testing.T, c *Config) {
			if c.Database.Postgres.Name != "hs" {
				t.Errorf("Name = %q", c.Database.Postgres.Name)
			}
		}},
		{"db_user", "db_user: headscale\n", "db_user", 1, func(t *testing.T, c *Config) {
			if c.Database.Postgres.User != "headscale" {
				t.Errorf("User = %q", c.Database.Postgres.User)
			}
		}},
		{"db_pass keeps its text", "db_pass: 0123\n", "db_pass", 1, func(t *testing.T, c *Config) {
			if c.Database.Postgres.Pass != "0123" {
				t.Errorf("Pass = %q", c.Database.Postgres.Pass)
			}
		}},
		{"db_ssl boolean", "db_ssl: true\n", "db_ssl", 1, func(t *testing.T, c *Config) {
			if c.Database.Postgres.SSL != "require" {
				t.Errorf("SSL = %q", c.Database.Postgres.SSL)
			}
		}},
		{"db_ssl sslmode", "db_ssl: Verify-Full\n", "db_ssl", 1, func(t *testing.T, c *Config) {
			if c.Database.Postgres.SSL != "verify-full" {
				t.Errorf("SSL = %q", c.Database.Postgres.SSL)
			}
		}},
		{"ip_prefixes both families", "ip_prefixes:\n  - fd7a:115c:a1e0::/48\n  - 100.64.0.0/10\n", "ip_prefixes", 1, func(t *testing.T, c *Config) {
			if c.Prefixes.V4 != netip.MustParsePrefix("100.64.0.0/10") || c.Prefixes.V6 != netip.MustParsePrefix("fd7a:115c:a1e0::/48") {
				t.Errorf("Prefixes = %+v", c.Prefixes)
			}
		}},
		{"ip_prefixes v4 only", "ip_prefixes: [100.64.0.0/16]\n", "ip_prefixes", 1, func(t *testing.T, c *Config) {
			if c.Prefixes.V4 != netip.MustParsePrefix("100.64.0.0/16") || c.Prefixes.V6.IsValid() {
				t.Errorf("Prefixes = %+v", c.Prefixes)
			}
		}},
		{"dns_config.magic_dns", "dns_config:\n  magic_dns: false\n", "dns_config.magic_dns", 2, func(t *testing.T, c *Config) {
			if c.DNS.MagicDNS {
				t.Error("MagicDNS still true")
			}
		}},
		{"dns_config.base_domain", "dns_config:\n  base_domain: old.internal\n", "dns_config.base_domain", 2, func(t *testing.T, c *Config) {
			if c.DNS.BaseDomain != "old.internal" {
				t.Errorf("BaseDomain = %q", c.DNS.BaseDomain)
			}
		}},
		{"dns_config.nameservers", "dns_config:\n  nameservers:\n    - 9.9.9.9\n", "dns_config.nameservers", 2, func(t *testing.T, c *Config) {
			if !reflect.DeepEqual(c.DNS.Nameservers.Global, []string{"9.9.9.9"}) {
				t.Errorf("Global = %q", c.DNS.Nameservers.Global)
			}
		}},
		{"dns_config.restricted_nameservers", "dns_config:\n  restricted_nameservers:\n    corp.example.com: [10.0.0.53]\n", "dns_config.restricted_nameservers", 2, func(t *testing.T, c *Config) {
			if !reflect.DeepEqual(c.DNS.Nameservers.Split, map[string][]string{"corp.example.com": {"10.0.0.53"}}) {
				t.Errorf("Split = %v", c.DNS.Nameservers.Split)
			}
		}},
		{"dns_config.domains", "dns_config:\n  domains: [corp.example.com]\n", "dns_config.domains", 2, func(t *testing.T, c *Config) {
			if !reflect.DeepEqual(c.DNS.SearchDomains, []string{"corp.example.com"}) {
				t.Errorf("SearchDomains = %q", c.DNS.SearchDomains)
			}
		}},
		{"dns_config.override_local_dns", "dns:\n  nameservers:\n    global: [1.1.1.1]\ndns_config:\n  override_local_dns: true\n", "dns_config.override_local_dns", 5, func(t *testing.T, c *Config) {
			if !c.DNS.OverrideLocalDNS {
				t.Error("OverrideLocalDNS false")
			}
		}},
		{"dns_config.extra_records", "dns_config:\n  extra_records:\n    - {name: x.tailnet.internal, type: AAAA, value: 'fd7a:115c:a1e0::9'}\n", "dns_config.extra_records", 2, func(t *testing.T, c *Config) {
			want := []ExtraRecord{{Name: "x.tailnet.internal", Type: "AAAA", Value: "fd7a:115c:a1e0::9"}}
			if !reflect.DeepEqual(c.DNS.ExtraRecords, want) {
				t.Errorf("ExtraRecords = %v", c.DNS.ExtraRecords)
			}
		}},
		{"acl_policy_path", "acl_policy_path: /etc/headscale/acl.hujson\n", "acl_policy_path", 1, func(t *testing.T, c *Config) {
			if c.Policy.Path != "/etc/headscale/acl.hujson" {
				t.Errorf("Policy.Path = %q", c.Policy.Path)
			}
		}},
		{"ephemeral_node_inactivity_timeout", "ephemeral_node_inactivity_timeout: 30m\n", "ephemeral_node_inactivity_timeout", 1, func(t *testing.T, c *Config) {
			if c.Node.Ephemeral.InactivityTimeout != 30*time.Minute {
				t.Errorf("InactivityTimeout = %v", c.Node.Ephemeral.InactivityTimeout)
			}
		}},
		{"log_level", "log_level: error\n", "log_level", 1, func(t *testing.T, c *Config) {
			if c.Log.Level != "error" {
				t.Errorf("Level = %q", c.Log.Level)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, warns, path, err := loadYAML(t, tt.yaml)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if len(warns) != 1 {
				t.Fatalf("want exactly one warning, got %d:\n%s", len(warns), problemsText(warns))
			}
			w := warns[0]
			if w.File != path || w.Line != tt.line || w.Key != tt.wantKey {
				t.Errorf("warning = %+v, want %s:%d key %s", w, path, tt.line, tt.wantKey)
			}
			spec := newKeyIndex().byKey[tt.wantKey]
			for _, r := range spec.replacedBy {
				if !strings.Contains(w.Reason, r) {
					t.Errorf("warning %q does not name replacement %s", w.Reason, r)
				}
			}
			tt.check(t, cfg)
		})
	}
}

func TestLegacyAndNewKeyConflict(t *testing.T) {
	tests := []struct {
		name       string
		yaml       string
		oldKey     string
		oldLine    int
		newKey     string
		newLine    int
		wantErrors int
	}{
		{"db_type", "db_type: sqlite\ndatabase:\n  type: sqlite3\n", "db_type", 1, "database.type", 3, 1},
		{"log_level", "log:\n  level: info\nlog_level: debug\n", "log_level", 3, "log.level", 2, 1},
		{"db_pass", "database:\n  postgres:\n    pass: a\ndb_pass: b\n", "db_pass", 4, "database.postgres.pass", 3, 1},
		{"ip_prefixes", "prefixes:\n  v6: fd7a:115c:a1e0::/48\nip_prefixes: [100.64.0.0/10]\n", "ip_prefixes", 3, "prefixes.v6", 2, 1},
		{"dns_config.base_domain", "dns:\n  base_domain: a.internal\ndns_config:\n  base_domain: b.internal\n", "dns_config.base_domain", 4, "dns.base_domain", 2, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, warns, path, err := loadYAML(t, tt.yaml)
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("want Errors, got %v", err)
			}
			if len(errs) != tt.wantErrors {
				t.Fatalf("got %d errors:\n%s", len(errs), errs)
			}
			p := errs[0]
			if p.File != path || p.Line != tt.oldLine || p.Key != tt.oldKey {
				t.Errorf("problem = %+v", p)
			}
			for _, s := range []string{tt.oldKey, tt.newKey, "line " + strconv.Itoa(tt.oldLine), "line " + strconv.Itoa(tt.newLine)} {
				if !strings.Contains(p.Reason, s) {
					t.Errorf("reason %q does not mention %q", p.Reason, s)
				}
			}
			if len(warns) != 0 {
				t.Errorf("conflicting key should not also warn:\n%s", problemsText(warns))
			}
		})
	}
}

func TestUnknownKeys(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []Problem // File filled in by the test
	}{
		{"top level", "server_url: https://h.example.com\nfrobnicate: true\n",
			[]Problem{{Line: 2, Key: "frobnicate", Reason: "unknown key, ignored"}}},
		{"nested", "dns:\n  magic_dns: true\n  magic_dsn: false\nderp:\n  server:\n    enabeld: true\n",
			[]Problem{
				{Line: 3, Key: "dns.magic_dsn", Reason: "unknown key, ignored"},
				{Line: 6, Key: "derp.server.enabeld", Reason: "unknown key, ignored"},
			}},
		{"unknown legacy sibling", "dns_config:\n  base_domain: x.internal\n  bogus: 1\n",
			[]Problem{
				{Line: 2, Key: "dns_config.base_domain", Reason: "deprecated key, use dns.base_domain instead"},
				{Line: 3, Key: "dns_config.bogus", Reason: "unknown key, ignored"},
			}},
		{"headscale keys not implemented: silent unless a set value would be ignored", `server_url: https://h.example.com
tls_letsencrypt_cache_dir: /var/lib/headscale/cache
tls_letsencrypt_challenge_type: HTTP-01
tls_letsencrypt_listen: ":http"
acme_url: https://acme-v02.api.letsencrypt.org/directory
acme_email: ""
trusted_proxies: [10.0.0.1]
disable_check_updates: true
randomize_client_port: false
logtail:
  enabled: false
taildrop:
  enabled: true
auto_update:
  enabled: false
database:
  debug: false
  gorm:
    slow_threshold: 1000
node:
  routes:
    ha:
      probe_interval: 10s
preauth_keys:
  expiry: 1h
tuning:
  batch_change_delay: 800ms
dns:
  extra_records_path: /var/lib/headscale/extra-records.json
`, []Problem{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, warns, path, err := loadYAML(t, tt.yaml)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			for i := range tt.want {
				tt.want[i].File = path
			}
			if len(warns) == 0 && len(tt.want) == 0 {
				return
			}
			if !reflect.DeepEqual(warns, tt.want) {
				t.Errorf("warnings:\n%s\nwant:\n%s", problemsText(warns), problemsText(tt.want))
			}
		})
	}
}

func TestManyInvalidValuesReportedTogether(t *testing.T) {
	const file = `server_url: ftp://headscale.example.com
listen_addr: localhost
metrics_listen_addr: ""
prefixes:
  v4: 100.64.0.1/10
  v6: not-a-prefix
  allocation: clever
derp:
  server:
    region_id: 0
    private_key_path: /k/noise.key
  update_frequency: 0
database:
  type: mysql
dns:
  magic_dns: true
  base_domain: ""
  override_local_dns: true
  nameservers:
    global:
      - 1.1.1.1
      - http://dns.example.com/query
  extra_records:
    - name: a.example.com
      type: A
      value: "fd7a::1"
    - name: b.example.com
      type: MX
      value: 1.2.3.4
noise:
  private_key_path: /k/noise.key
policy:
  mode: git
log:
  level: loud
  format: xml
node:
  expiry: -1d
  ephemeral:
    inactivity_timeout: 10ms
unix_socket_permission: "0999"
tls_cert_path: /some/cert.pem
cli:
  timeout: 0s
`
	_, warns, path, err := loadYAML(t, file, "HEADSCALE_SERVER_URL_TYPO=ignored")
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("want Errors, got %v", err)
	}
	want := []struct {
		line int
		key  string
	}{
		{1, "server_url"},
		{2, "listen_addr"},
		{5, "prefixes.v4"},
		{6, "prefixes.v6"},
		{7, "prefixes.allocation"},
		{10, "derp.server.region_id"},
		{11, "derp.server.private_key_path"},
		{12, "derp.update_frequency"},
		{14, "database.type"},
		{17, "dns.base_domain"},
		{22, "dns.nameservers.global"},
		{24, "dns.extra_records"},
		{27, "dns.extra_records"},
		{33, "policy.mode"},
		{35, "log.level"},
		{36, "log.format"},
		{38, "node.expiry"},
		{40, "node.ephemeral.inactivity_timeout"},
		{41, "unix_socket_permission"},
		{42, "tls_cert_path"},
		{44, "cli.timeout"},
	}
	if len(errs) != len(want) {
		t.Errorf("got %d problems, want %d:\n%s", len(errs), len(want), errs)
	}
	for i := 0; i < len(want) && i < len(errs); i++ {
		if errs[i].File != path || errs[i].Line != want[i].line || errs[i].Key != want[i].key {
			t.Errorf("problem %d = %s; want line %d key %s", i, errs[i], want[i].line, want[i].key)
		}
	}
	if len(warns) != 0 {
		t.Errorf("unexpected warnings:\n%s", problemsText(warns))
	}
}

func TestValidation(t *testing.T) {
	dir := t.TempDir()
	cert := writeConfig(t, dir, "cert.pem", "x")
	key := writeConfig(t, dir, "key.pem", "x")
	tests := []struct {
		name      string
		yaml      string
		wantErr   []string // substrings, one per expected error, in order
		wantWarn  []string
		wantLines []int // lines of the errors, when checked
	}{
		{name: "valid minimal", yaml: "server_url: https://hs.example.com\n"},
		{name: "http2 server x/net", yaml: "noise:\n  http2_server: x/net\n"},
		{name: "http2 server unknown", yaml: "noise:\n  http2_server: nghttp2\n", wantErr: []string{`noise.http2_server: "nghttp2" must be builtin or x/net`}, wantLines: []int{2}},
		{name: "no prefixes", yaml: "prefixes:\n  v4: \"\"\n  v6: \"\"\n", wantErr: []string{"at least one"}, wantLines: []int{2}},
		{name: "v6 only is fine", yaml: "prefixes:\n  v4: \"\"\n"},
		{name: "outside tailscale range warns", yaml: "prefixes:\n  v4: 10.0.0.0/8\n  v6: fd00::/64\n",
			wantWarn: []string{"outside the Tailscale range", "outside the Tailscale range"}},
		{name: "no DERP region", yaml: "derp:\n  server:\n    enabled: false\n", wantErr: []string{"no DERP region configured"}, wantLines: []int{3}},
		{name: "embedded not added", yaml: "derp:\n  server:\n    automatically_add_embedded_derp_region: false\n", wantErr: []string{"no DERP region configured"}, wantLines: []int{3}},
		{name: "derp off with urls", yaml: "derp:\n  server:\n    enabled: false\n  urls: [https://controlplane.tailscale.com/derpmap/default]\n"},
		{name: "derp off with paths", yaml: "derp:\n  server:\n    enabled: false\n  paths: [/etc/headscale/derp.yaml]\n"},
		{name: "derp url must be http", yaml: "derp:\n  urls:\n    - https://ok.example.com/map\n    - derp.example.com\n", wantErr: []string{"http://"}, wantLines: []int{4}},
		{name: "stun empty", yaml: "derp:\n  server:\n    stun_listen_addr: \"\"\n", wantErr: []string{"stun_listen_addr"}},
		{name: "update frequency ignored when auto update off", yaml: "derp:\n  auto_update_enabled: false\n  update_frequency: 0\n"},
		{name: "derp ipv4 family", yaml: "derp:\n  server:\n    ipv4: \"::1\"\n", wantErr: []string{"not an IPv4 address"}},
		{name: "postgresql accepted", yaml: "database:\n  type: postgresql\n  postgres:\n    host: db\n    name: hs\n    ssl: verify-full\n"},
		{name: "postgres needs host", yaml: "database:\n  type: postgres\n  postgres:\n    name: hs\n", wantErr: []string{"host"}},
		{name: "postgres bad sslmode", yaml: "database:\n  type: postgres\n  postgres:\n    host: db\n    name: hs\n    ssl: maybe\n", wantErr: []string{"sslmode"}, wantLines: []int{6}},
		{name: "postgres socket directory", yaml: "database:\n  type: postgres\n  postgres:\n    host: /var/run/postgresql\n    name: hs\n"},
		{name: "postgres socket file", yaml: "database:\n  type: postgres\n  postgres:\n    host: /var/run/postgresql/.s.PGSQL.5433\n    name: hs\n",
			wantErr: []string{"give the directory that holds it, /var/run/postgresql (and port 5433)"}, wantLines: []int{4}},
		{name: "postgres pass and pass_file", yaml: "database:\n  type: postgres\n  postgres:\n    host: db\n    name: hs\n    pass: x\n    pass_file: /etc/hs/pgpass\n",
			wantErr: []string{"pass_file: database.postgres.pass is set too (line 6)"}, wantLines: []int{7}},
		{name: "postgres db_pass and pass_file", yaml: "db_pass: x\ndatabase:\n  type: postgres\n  postgres:\n    host: db\n    name: hs\n    pass_file: /etc/hs/pgpass\n",
			wantErr: []string{"(as db_pass on line 1)"}, wantWarn: []string{"deprecated"}, wantLines: []int{7}},
		{name: "postgres relative pass_file", yaml: "database:\n  type: postgres\n  postgres:\n    host: db\n    name: hs\n    pass_file: pgpass\n",
			wantErr: []string{`"pgpass" must be an absolute path, or $CREDENTIALS_DIRECTORY/NAME`}, wantLines: []int{6}},
		{name: "postgres pass_file credential without the variable", yaml: "database:\n  type: postgres\n  postgres:\n    host: db\n    name: hs\n    pass_file: $CREDENTIALS_DIRECTORY/pgpass\n",
			wantWarn: []string{"$CREDENTIALS_DIRECTORY is not set here, so $CREDENTIALS_DIRECTORY/pgpass cannot be read"}},
		{name: "pass_file unchecked for sqlite", yaml: "database:\n  postgres:\n    pass: x\n    pass_file: pgpass\n"},
		{name: "sqlite path empty", yaml: "database:\n  sqlite:\n    path: \"\"\n", wantErr: []string{"must be set"}, wantLines: []int{3}},
		{name: "magic dns needs base domain", yaml: "dns:\n  base_domain: \"\"\n", wantErr: []string{"must be set when dns.magic_dns"}},
		{name: "no magic dns no base domain", yaml: "dns:\n  magic_dns: false\n  base_domain: \"\"\n"},
		{name: "base domain equals host", yaml: "server_url: https://hs.example.com\ndns:\n  base_domain: hs.example.com\n", wantErr: []string{"parent domain"}, wantLines: []int{3}},
		{name: "base domain sibling ok", yaml: "server_url: https://hs.example.com\ndns:\n  base_domain: ts.example.com\n"},
		{name: "base domain suffix not parent", yaml: "server_url: https://myexample.com\ndns:\n  base_domain: example.com\n"},
		{name: "override needs nameserver", yaml: "dns:\n  override_local_dns: true\n", wantErr: []string{"requires at least one"}, wantLines: []int{2}},
		{name: "doh nameserver ok", yaml: "dns:\n  nameservers:\n    global: [https://dns.nextdns.io/abc]\n"},
		{name: "split nameserver bad", yaml: "dns:\n  nameservers:\n    split:\n      corp.example.com: [nope]\n", wantErr: []string{"corp.example.com"}, wantLines: []int{4}},
		{name: "log level aliases warn", yaml: "log:\n  level: warning\n", wantWarn: []string{`"warning" is treated as "warn"`}},
		{name: "short inactivity warns", yaml: "node:\n  ephemeral:\n    inactivity_timeout: 5s\n", wantWarn: []string{"lose connectivity briefly"}},
		{name: "tls both present", yaml: "tls_cert_path: " + cert + "\ntls_key_path: " + key + "\n"},
		{name: "tls missing file", yaml: "tls_cert_path: " + cert + "\ntls_key_path: " + key + ".gone\n", wantErr: []string{"does not exist"}, wantLines: []int{2}},
		{name: "tls key alone", yaml: "\ntls_key_path: " + key + "\n", wantErr: []string{"tls_key_path: is set but tls_cert_path is not"}, wantLines: []int{2}},
		{name: "letsencrypt http-01", yaml: "server_url: https://hs.example.com\ntls_letsencrypt_hostname: HS.example.com\nacme_email: ops@example.com\n"},
		{name: "letsencrypt tls-alpn-01 spelled loosely", yaml: "server_url: https://hs.example.com\ntls_letsencrypt_hostname: hs.example.com\ntls_letsencrypt_challenge_type: tls-alpn-01\ntls_letsencrypt_listen: nonsense\n"},
		{name: "letsencrypt off: nothing checked", yaml: "tls_letsencrypt_challenge_type: DNS-01\nacme_url: ftp://x\nacme_email: nope\n"},
		{name: "letsencrypt bad challenge", yaml: "server_url: https://hs.example.com\ntls_letsencrypt_hostname: hs.example.com\ntls_letsencrypt_challenge_type: DNS-01\n",
			wantErr: []string{`tls_letsencrypt_challenge_type: "DNS-01" must be HTTP-01 or TLS-ALPN-01`}, wantLines: []int{3}},
		{name: "letsencrypt hostname an address", yaml: "server_url: https://hs.example.com\ntls_letsencrypt_hostname: 192.0.2.1\n",
			wantErr: []string{"is an IP address"}, wantLines: []int{2}},
		{name: "letsencrypt hostname one label", yaml: "server_url: https://hs.example.com\ntls_letsencrypt_hostname: headscale\n",
			wantErr: []string{"not a fully qualified DNS name"}, wantLines: []int{2}},
		{name: "letsencrypt hostname with port", yaml: "server_url: https://hs.example.com\ntls_letsencrypt_hostname: hs.example.com:443\n",
			wantErr: []string{`label "com:443"`}, wantLines: []int{2}},
		{name: "letsencrypt listen bad", yaml: "server_url: https://hs.example.com\ntls_letsencrypt_hostname: hs.example.com\ntls_letsencrypt_listen: \"80\"\n",
			wantErr: []string{`tls_letsencrypt_listen: "80" is not host:port`}, wantLines: []int{3}},
		{name: "letsencrypt listen unknown service", yaml: "server_url: https://hs.example.com\ntls_letsencrypt_hostname: hs.example.com\ntls_letsencrypt_listen: \":nosuchservice\"\n",
			wantErr: []string{`unknown port "nosuchservice"`}, wantLines: []int{3}},
		{name: "letsencrypt listen on listen_addr", yaml: "server_url: https://hs.example.com\nlisten_addr: 0.0.0.0:443\ntls_letsencrypt_hostname: hs.example.com\ntls_letsencrypt_listen: :443\n",
			wantErr: []string{"takes the port of listen_addr"}, wantLines: []int{4}},
		{name: "letsencrypt acme_url not https", yaml: "server_url: https://hs.example.com\ntls_letsencrypt_hostname: hs.example.com\nacme_url: http://ca.example.com/dir\n",
			wantErr: []string{"must be an https:// URL"}, wantLines: []int{3}},
		{name: "letsencrypt bad email", yaml: "server_url: https://hs.example.com\ntls_letsencrypt_hostname: hs.example.com\nacme_email: ops at example\n",
			wantErr: []string{"is not an e-mail address"}, wantLines: []int{3}},
		{name: "letsencrypt empty cache dir", yaml: "server_url: https://hs.example.com\ntls_letsencrypt_hostname: hs.example.com\ntls_letsencrypt_cache_dir: \"\"\n",
			wantErr: []string{"must not be empty"}, wantLines: []int{3}},
		{name: "letsencrypt with http server_url", yaml: "tls_letsencrypt_hostname: hs.example.com\n", wantWarn: []string{"is not https://"}},
		{name: "letsencrypt for another name", yaml: "server_url: https://vpn.example.com\ntls_letsencrypt_hostname: hs.example.com\n", wantWarn: []string{`is not server_url's host "vpn.example.com"`}},
		{name: "letsencrypt wins over files", yaml: "server_url: https://hs.example.com\ntls_cert_path: " + cert + "\ntls_key_path: " + key + "\ntls_letsencrypt_hostname: hs.example.com\n",
			wantWarn: []string{"ignored: tls_letsencrypt_hostname is set"}},
		{name: "bad type for bool", yaml: "dns:\n  magic_dns: [1]\n", wantErr: []string{"true or false"}, wantLines: []int{2}},
		{name: "section must be mapping", yaml: "dns: yes\n", wantErr: []string{"mapping"}, wantLines: []int{1}},
		{name: "duplicate key", yaml: "log:\n  level: info\n  level: debug\n", wantErr: []string{"first on line 2"}, wantLines: []int{3}},
		{name: "duration without unit", yaml: "derp:\n  update_frequency: 60\n", wantErr: []string{"needs a unit"}},
		{name: "bad ip_prefixes entry", yaml: "ip_prefixes:\n  - 100.64.0.0/10\n  - bogus\n", wantErr: []string{"bogus"}, wantWarn: []string{"deprecated"}, wantLines: []int{3}},
		{name: "metrics disabled", yaml: "metrics_listen_addr: \"\"\n"},
		{name: "listen port zero allowed", yaml: "listen_addr: 127.0.0.1:0\n"},
		{name: "grpc insecure", yaml: "grpc_allow_insecure: true\ngrpc_listen_addr: 127.0.0.1:50443\n"},
		{name: "grpc off", yaml: "grpc_listen_addr: \"\"\n"},
		{name: "grpc bad address", yaml: "grpc_listen_addr: 50443\n", wantErr: []string{`grpc_listen_addr: "50443" is not host:port`}, wantLines: []int{1}},
		{name: "grpc on listen_addr's port", yaml: "listen_addr: 0.0.0.0:8080\ngrpc_allow_insecure: true\ngrpc_listen_addr: 127.0.0.1:8080\n",
			wantErr: []string{"takes the port of listen_addr"}, wantLines: []int{3}},
		{name: "grpc on metrics' port", yaml: "tls_cert_path: " + cert + "\ntls_key_path: " + key + "\ngrpc_listen_addr: :9090\n",
			wantErr: []string{"takes the port of metrics_listen_addr"}, wantLines: []int{3}},
		{name: "grpc port clash while off", yaml: "listen_addr: 0.0.0.0:50443\n"},
		{name: "oidc complete", yaml: "oidc:\n  issuer: https://sso.example.com/\n  client_id: hs\n  client_secret: s3cret\n  pkce:\n    enabled: true\n    method: s256\n  allowed_domains: [\"@Example.com\"]\n"},
		{name: "oidc without client id", yaml: "oidc:\n  issuer: https://sso.example.com\n  client_secret: x\n", wantErr: []string{"oidc.client_id: must be set when oidc.issuer is"}},
		{name: "oidc without secret", yaml: "oidc:\n  issuer: https://sso.example.com\n  client_id: hs\n", wantErr: []string{"oidc.client_secret: must be set"}},
		{name: "oidc secret twice", yaml: "oidc:\n  issuer: https://sso.example.com\n  client_id: hs\n  client_secret: x\n  client_secret_path: /etc/hs/oidc\n",
			wantErr: []string{"client_secret_path: oidc.client_secret is set too (line 4)"}, wantLines: []int{5}},
		{name: "oidc relative secret path", yaml: "oidc:\n  issuer: https://sso.example.com\n  client_id: hs\n  client_secret_path: oidc-secret\n",
			wantErr: []string{"must be an absolute path"}, wantLines: []int{4}},
		{name: "oidc issuer not a url", yaml: "oidc:\n  issuer: sso.example.com\n  client_id: hs\n  client_secret: x\n", wantErr: []string{"must be an http or https URL"}, wantLines: []int{2}},
		{name: "oidc scope without openid", yaml: "oidc:\n  issuer: https://sso.example.com\n  client_id: hs\n  client_secret: x\n  scope: [email]\n", wantErr: []string{"must include openid"}, wantLines: []int{5}},
		{name: "oidc bad pkce method", yaml: "oidc:\n  issuer: https://sso.example.com\n  client_id: hs\n  client_secret: x\n  pkce:\n    method: S512\n", wantErr: []string{`"S512" must be S256 or plain`}, wantLines: []int{6}},
		{name: "oidc bad allowed user", yaml: "oidc:\n  issuer: https://sso.example.com\n  client_id: hs\n  client_secret: x\n  allowed_users: [alice]\n", wantErr: []string{`"alice" is not an email address`}},
		{name: "oidc off: nothing checked", yaml: "oidc:\n  client_secret: x\n  client_secret_path: rel\n  pkce:\n    method: nope\n"},
		{name: "oidc.expiry is node.expiry", yaml: "oidc:\n  expiry: 180d\n", wantWarn: []string{"deprecated key, use node.expiry instead"}},
		{name: "oidc.strip_email_domain removed", yaml: "oidc:\n  strip_email_domain: true\n", wantWarn: []string{"removed in Headscale 0.26 and ignored"}},
		{name: "trusted proxies", yaml: "trusted_proxies: [10.0.0.5, 172.16.0.0/12, \"fd00::/64\"]\n"},
		{name: "trusted proxies none", yaml: "trusted_proxies: []\n"},
		{name: "trusted proxies bad entries", yaml: "trusted_proxies:\n  - 10.0.0.5\n  - proxy.example.com\n  - 10.0.0.0/40\n",
			wantErr: []string{`trusted_proxies: "proxy.example.com" is not an IP address or prefix`, `trusted_proxies: "10.0.0.0/40" is not a prefix`}, wantLines: []int{3, 4}},
		{name: "grpc same port other host", yaml: "listen_addr: 127.0.0.1:8080\ngrpc_allow_insecure: true\ngrpc_listen_addr: 127.0.0.2:8080\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, warns, _, err := loadYAML(t, tt.yaml)
			var errs Errors
			if err != nil && !errors.As(err, &errs) {
				t.Fatalf("want Errors, got %v", err)
			}
			if len(errs) != len(tt.wantErr) {
				t.Fatalf("got %d errors, want %d:\n%s", len(errs), len(tt.wantErr), errs)
			}
			for i, s := range tt.wantErr {
				if !strings.Contains(errs[i].String(), s) {
					t.Errorf("error %d %q does not contain %q", i, errs[i], s)
				}
				if i < len(tt.wantLines) && errs[i].Line != tt.wantLines[i] {
					t.Errorf("error %d at line %d, want %d", i, errs[i].Line, tt.wantLines[i])
				}
			}
			if len(warns) != len(tt.wantWarn) {
				t.Fatalf("got %d warnings, want %d:\n%s", len(warns), len(tt.wantWarn), problemsText(warns))
			}
			for i, s := range tt.wantWarn {
				if !strings.Contains(warns[i].Reason, s) {
					t.Errorf("warning %d %q does not contain %q", i, warns[i], s)
				}
			}
		})
	}
}

func TestValueForms(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		check func(t *testing.T, c *Config)
	}{
		{"permission unquoted octal", "unix_socket_permission: 0770\n", func(t *testing.T, c *Config) {
			if c.UnixSocketPermission != 0o770 {
				t.Errorf("got %o", c.UnixSocketPermission)
			}
		}},
		{"permission without leading zero", "unix_socket_permission: 660\n", func(t *testing.T, c *Config) {
			if c.UnixSocketPermission != 0o660 {
				t.Errorf("got %o", c.UnixSocketPermission)
			}
		}},
		{"permission 0o form", "unix_socket_permission: 0o700\n", func(t *testing.T, c *Config) {
			if c.UnixSocketPermission != 0o700 {
				t.Errorf("got %o", c.UnixSocketPermission)
			}
		}},
		{"ssl false", "database:\n  postgres:\n    ssl: false\n", func(t *testing.T, c *Config) {
			if c.Database.Postgres.SSL != "disable" {
				t.Errorf("got %q", c.Database.Postgres.SSL)
			}
		}},
		{"ssl true", "database:\n  postgres:\n    ssl: true\n", func(t *testing.T, c *Config) {
			if c.Database.Postgres.SSL != "require" {
				t.Errorf("got %q", c.Database.Postgres.SSL)
			}
		}},
		{"numeric password keeps its text", "database:\n  postgres:\n    pass: 0123\n", func(t *testing.T, c *Config) {
			if c.Database.Postgres.Pass != "0123" {
				t.Errorf("got %q", c.Database.Postgres.Pass)
			}
		}},
		{"expiry in days", "node:\n  expiry: 180d\n", func(t *testing.T, c *Config) {
			if c.Node.Expiry != 180*24*time.Hour {
				t.Errorf("got %v", c.Node.Expiry)
			}
		}},
		{"server_url trailing slash trimmed", "server_url: https://hs.example.com/\n", func(t *testing.T, c *Config) {
			if c.ServerURL != "https://hs.example.com" {
				t.Errorf("got %q", c.ServerURL)
			}
		}},
		{"record type normalised", "dns:\n  extra_records:\n    - {name: a.tailnet.internal, type: a, value: 100.64.0.1}\n", func(t *testing.T, c *Config) {
			if c.DNS.ExtraRecords[0].Type != "A" {
				t.Errorf("got %q", c.DNS.ExtraRecords[0].Type)
			}
		}},
		{"anchors and merge keys", "x: &pg\n  host: db\n  name: hs\ndatabase:\n  type: postgres\n  postgres:\n    <<: *pg\n    port: 6543\n", func(t *testing.T, c *Config) {
			if c.Database.Postgres.Host != "db" || c.Database.Postgres.Port != 6543 {
				t.Errorf("got %+v", c.Database.Postgres)
			}
		}},
		{"empty file", "", func(t *testing.T, c *Config) {
			if c.ServerURL != "http://127.0.0.1:8080" {
				t.Errorf("got %q", c.ServerURL)
			}
		}},
		{"empty section", "dns:\n", func(t *testing.T, c *Config) {
			if c.DNS.BaseDomain != "tailnet.internal" || !c.DNS.MagicDNS {
				t.Errorf("got %+v", c.DNS)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, warns, _, err := loadYAML(t, tt.yaml)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			for _, w := range warns {
				if w.Key != "x" {
					t.Errorf("unexpected warning %s", w)
				}
			}
			tt.check(t, cfg)
		})
	}
}

func TestYAMLSyntaxError(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		line int
	}{
		// The yaml library reports where the enclosing block started.
		{"bad indentation", "server_url: https://h.example.com\ndns:\n  magic_dns: true\n base_domain: x\n", 3},
		{"unclosed flow", "listen_addr: 0.0.0.0:8080\nderp:\n  urls: [a, b\n", 2},
		{"bad mapping value", "server_url: a: b\n", 1},
		{"tab indentation", "dns:\n\tmagic_dns: true\n", 2},
		{"top level list", "- a\n- b\n", 1},
		// Nested aliases ("billion laughs"): refused at the alias whose
		// expansion passes the bound (10 + 110 + 1,110 + 11,110 values).
		{"alias expansion", "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n" +
			"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n" +
			"e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n" +
			"g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]\n" +
			"i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]\n", 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, path, err := loadYAML(t, tt.yaml)
			var errs Errors
			if !errors.As(err, &errs) || len(errs) != 1 {
				t.Fatalf("want one problem, got %v", err)
			}
			if errs[0].File != path || errs[0].Line != tt.line {
				t.Errorf("problem = %+v, want %s:%d", errs[0], path, tt.line)
			}
		})
	}
}

func TestProblemString(t *testing.T) {
	tests := []struct {
		p    Problem
		want string
	}{
		{Problem{File: "/etc/headscale/config.yaml", Line: 7, Key: "dns.base_domain", Reason: "bad"}, "/etc/headscale/config.yaml:7: dns.base_domain: bad"},
		{Problem{File: "env HEADSCALE_LOG_LEVEL", Key: "log.level", Reason: "bad"}, "env HEADSCALE_LOG_LEVEL: log.level: bad"},
		{Problem{Key: "prefixes.v4", Reason: "bad"}, "prefixes.v4: bad"},
		{Problem{File: "c.yaml", Line: 3, Reason: "invalid YAML"}, "c.yaml:3: invalid YAML"},
		{Problem{Reason: "r"}, "r"},
	}
	for _, tt := range tests {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
	errs := Errors{tests[0].p, tests[2].p}
	if got, want := errs.Error(), tests[0].want+"\n"+tests[2].want; got != want {
		t.Errorf("Errors.Error() = %q, want %q", got, want)
	}
}

func TestKeyTable(t *testing.T) {
	idx := newKeyIndex()
	envs := map[string]string{}
	for _, s := range idx.all {
		if _, dup := idx.byKey[s.key]; !dup {
			t.Errorf("key %s missing from index", s.key)
		}
		if s.status == statusActive {
			if prev, ok := envs[s.envName()]; ok {
				t.Errorf("%s and %s share env name %s", prev, s.key, s.envName())
			}
			envs[s.envName()] = s.key
			if s.def == nil && s.derived == "" {
				t.Errorf("active key %s has no default", s.key)
			}
		}
		if s.status == statusLegacy {
			for _, r := range s.replacedBy {
				if idx.byKey[r].status != statusActive {
					t.Errorf("legacy %s replaced by non-active %s", s.key, r)
				}
			}
		}
	}
	if len(idx.byKey) != len(idx.all) {
		t.Errorf("duplicate keys in table")
	}
	if envs["HEADSCALE_STATE_DIR"] != "state_dir" || envs["HEADSCALE_CLI_API_KEY"] != "cli.api_key" {
		t.Errorf("env mapping wrong: %v", envs)
	}
}

// TestOverrideLocalDNSDefault: dns.override_local_dns left unset is true
// when there are global nameservers (Headscale's default, which Headscale
// refuses without them) and false when there are none; set, from the file
// or the environment, it is what it says.
func TestOverrideLocalDNSDefault(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		env  []string
		want bool
	}{
		{"unset, no nameservers", "dns:\n  magic_dns: true\n", nil, false},
		{"unset, global nameservers", "dns:\n  nameservers:\n    global: [1.1.1.1]\n", nil, true},
		{"unset, split only", "dns:\n  nameservers:\n    split:\n      corp.example: [10.0.0.53]\n", nil, false},
		{"false with nameservers", "dns:\n  override_local_dns: false\n  nameservers:\n    global: [1.1.1.1]\n", nil, false},
		{"true with nameservers", "dns:\n  override_local_dns: true\n  nameservers:\n    global: [1.1.1.1]\n", nil, true},
		{"false from the environment", "dns:\n  nameservers:\n    global: [1.1.1.1]\n", []string{"HEADSCALE_DNS_OVERRIDE_LOCAL_DNS=false"}, false},
		{"nameservers from the environment", "log:\n  level: info\n", []string{"HEADSCALE_DNS_NAMESERVERS_GLOBAL=9.9.9.9"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := mustLoadYAML(t, tc.yaml, tc.env...)
			if cfg.DNS.OverrideLocalDNS != tc.want {
				t.Errorf("OverrideLocalDNS = %v, want %v (global %v)", cfg.DNS.OverrideLocalDNS, tc.want, cfg.DNS.Nameservers.Global)
			}
		})
	}
}
