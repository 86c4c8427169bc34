package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestRelativePathsFromConfigDir pins Headscale's rule for relative paths:
// the keys Headscale resolves (key files, SQLite database, policy file, TLS
// files) are taken relative to the config file's directory, whether the
// file or the environment sets them; absolute paths are kept; the other
// paths (derp.paths, dns.extra_records_path, unix_socket) and state_dir,
// with the paths derived from it, stay relative to the working directory.
func TestRelativePathsFromConfigDir(t *testing.T) {
	t.Chdir(t.TempDir())
	tests := []struct {
		name  string
		yaml  string
		env   []string
		files []string // created inside the config file's directory first
		get   func(*Config) string
		// want is the expected value; "DIR/" at its start stands for the
		// config file's directory.
		want string
	}{
		{"noise key", "noise:\n  private_key_path: keys/noise.key\n", nil, nil,
			func(c *Config) string { return c.Noise.PrivateKeyPath }, "DIR/keys/noise.key"},
		{"derp key", "derp:\n  server:\n    private_key_path: ./derp.key\n", nil, nil,
			func(c *Config) string { return c.DERP.Server.PrivateKeyPath }, "DIR/derp.key"},
		{"sqlite database", "database:\n  sqlite:\n    path: db.sqlite\n", nil, nil,
			func(c *Config) string { return c.Database.SQLite.Path }, "DIR/db.sqlite"},
		{"database up a level", "database:\n  sqlite:\n    path: ../state/db.sqlite\n", nil, nil,
			func(c *Config) string { return c.Database.SQLite.Path }, "DIR/../state/db.sqlite"},
		{"old db_path", "db_path: old.sqlite\n", nil, nil,
			func(c *Config) string { return c.Database.SQLite.Path }, "DIR/old.sqlite"},
		{"policy", "policy:\n  path: acl.hujson\n", nil, nil,
			func(c *Config) string { return c.Policy.Path }, "DIR/acl.hujson"},
		{"old acl_policy_path", "acl_policy_path: acl.hujson\n", nil, nil,
			func(c *Config) string { return c.Policy.Path }, "DIR/acl.hujson"},
		{"tls cert", "tls_cert_path: tls/cert.pem\ntls_key_path: tls/key.pem\n", nil, []string{"tls/cert.pem", "tls/key.pem"},
			func(c *Config) string { return c.TLS.CertPath }, "DIR/tls/cert.pem"},
		{"tls key", "tls_cert_path: tls/cert.pem\ntls_key_path: tls/key.pem\n", nil, []string{"tls/cert.pem", "tls/key.pem"},
			func(c *Config) string { return c.TLS.KeyPath }, "DIR/tls/key.pem"},
		{"absolute kept", "noise:\n  private_key_path: /srv/hs/noise.key\n", nil, nil,
			func(c *Config) string { return c.Noise.PrivateKeyPath }, "/srv/hs/noise.key"},
		{"from env", "server_url: http://127.0.0.1:8080\n", []string{"HEADSCALE_DATABASE_SQLITE_PATH=env.sqlite"}, nil,
			func(c *Config) string { return c.Database.SQLite.Path }, "DIR/env.sqlite"},
		{"absolute from env kept", "server_url: http://127.0.0.1:8080\n", []string{"HEADSCALE_NOISE_PRIVATE_KEY_PATH=/srv/n.key"}, nil,
			func(c *Config) string { return c.Noise.PrivateKeyPath }, "/srv/n.key"},
		{"empty policy stays empty", "policy:\n  path: \"\"\n", nil, nil,
			func(c *Config) string { return c.Policy.Path }, ""},
		{"derp.paths from working directory", "derp:\n  paths:\n    - derp.yaml\n", nil, nil,
			func(c *Config) string { return strings.Join(c.DERP.Paths, ",") }, "derp.yaml"},
		{"extra_records_path from working directory", "dns:\n  extra_records_path: records.json\n", nil, nil,
			func(c *Config) string { return c.DNS.ExtraRecordsPath }, "records.json"},
		{"unix_socket from working directory", "unix_socket: run/hs.sock\n", nil, nil,
			func(c *Config) string { return c.UnixSocket }, "run/hs.sock"},
		{"state_dir from working directory", "state_dir: state\n", nil, nil,
			func(c *Config) string { return c.StateDir }, "state"},
		{"derived from state_dir", "state_dir: state\n", nil, nil,
			func(c *Config) string { return c.Database.SQLite.Path }, "state/db.sqlite"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tt.files {
				writeConfig(t, dir, f, "x")
			}
			path := writeConfig(t, dir, "config.yaml", tt.yaml)
			cfg, _, err := Load(LoadOptions{Path: path, Env: tt.env, SearchPaths: []string{}})
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := tt.want
			if rest, ok := strings.CutPrefix(want, "DIR/"); ok {
				want = filepath.Join(dir, rest)
			}
			if got := tt.get(cfg); got != want {
				t.Errorf("got %q, want %q", got, want)
			}
		})
	}
}

// TestRelativePathsRelativeConfig: a config file named by a relative path
// resolves against its directory made absolute; with no file, relative
// paths stay relative to the working directory.
func TestRelativePathsRelativeConfig(t *testing.T) {
	wd := t.TempDir()
	t.Chdir(wd)
	writeConfig(t, wd, "etc/config.yaml", "database:\n  sqlite:\n    path: db.sqlite\n")
	tests := []struct {
		name string
		opts LoadOptions
		want string
	}{
		{"--config relative", LoadOptions{Path: "etc/config.yaml"}, filepath.Join(wd, "etc/db.sqlite")},
		{"HEADSCALE_CONFIG relative", LoadOptions{Env: []string{"HEADSCALE_CONFIG=etc/config.yaml"}}, filepath.Join(wd, "etc/db.sqlite")},
		{"search path relative", LoadOptions{SearchPaths: []string{"./etc/config.yaml"}}, filepath.Join(wd, "etc/db.sqlite")},
		{"no file", LoadOptions{Env: []string{"HEADSCALE_DATABASE_SQLITE_PATH=db.sqlite"}}, "db.sqlite"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.opts.SearchPaths == nil {
				tt.opts.SearchPaths = []string{}
			}
			cfg, _, err := Load(tt.opts)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if cfg.Database.SQLite.Path != tt.want {
				t.Errorf("database.sqlite.path = %q, want %q", cfg.Database.SQLite.Path, tt.want)
			}
		})
	}
}

// TestRelativePathMovedWarns: a relative key file that exists only where
// it was looked for before (the working directory) gets a warning naming
// both places, so a new key is not generated silently; once the file is
// next to the config, or the path is absolute, there is none.
func TestRelativePathMovedWarns(t *testing.T) {
	wd := t.TempDir()
	t.Chdir(wd)
	writeConfig(t, wd, "noise.key", "old")
	dir := t.TempDir()
	path := writeConfig(t, dir, "config.yaml", "noise:\n  private_key_path: noise.key\n")
	moved := func() []Problem {
		t.Helper()
		_, warns, err := Load(LoadOptions{Path: path, SearchPaths: []string{}})
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		var out []Problem
		for _, w := range warns {
			if w.Key == "noise.private_key_path" {
				out = append(out, w)
			}
		}
		return out
	}
	w := moved()
	if len(w) != 1 {
		t.Fatalf("warnings about noise.private_key_path: %v, want one", w)
	}
	if w[0].File != path || w[0].Line != 2 ||
		!strings.Contains(w[0].Reason, filepath.Join(dir, "noise.key")+" does not exist") ||
		!strings.Contains(w[0].Reason, "but noise.key (relative to the working directory") {
		t.Errorf("warning = %q", w[0].String())
	}
	writeConfig(t, dir, "noise.key", "new")
	if w := moved(); len(w) != 0 {
		t.Errorf("warning once the file is next to the config: %v", w)
	}
}

// TestDefaultSearchPaths pins Headscale's search order: /etc/headscale,
// then $HOME/.headscale, then the working directory, config.yaml before
// config.yml in each.
func TestDefaultSearchPaths(t *testing.T) {
	tests := []struct {
		home string
		want []string
	}{
		{"/home/u", []string{"/etc/headscale/config.yaml", "/etc/headscale/config.yml",
			"/home/u/.headscale/config.yaml", "/home/u/.headscale/config.yml", "./config.yaml", "./config.yml"}},
		{"", []string{"/etc/headscale/config.yaml", "/etc/headscale/config.yml", "./config.yaml", "./config.yml"}},
	}
	for _, tt := range tests {
		if got := DefaultSearchPaths(tt.home); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("DefaultSearchPaths(%q) = %q, want %q", tt.home, got, tt.want)
		}
	}
}

// TestSearchHomeBeforeWorkingDir loads through the default search with a
// fake HOME from LoadOptions.Env (never the real one): $HOME/.headscale
// (config.yaml or config.yml) wins over ./config.yaml, which is used when
// HOME has none.
func TestSearchHomeBeforeWorkingDir(t *testing.T) {
	if _, err := os.Stat("/etc/headscale/config.yaml"); err == nil {
		t.Skip("/etc/headscale/config.yaml exists on this machine and comes first")
	}
	wd := t.TempDir()
	t.Chdir(wd)
	writeConfig(t, wd, "config.yaml", "server_url: https://wd.example.com\n")
	home := t.TempDir()
	homeCfg := writeConfig(t, home, ".headscale/config.yaml", "server_url: https://home.example.com\ndatabase:\n  sqlite:\n    path: db.sqlite\n")
	ymlHome := t.TempDir()
	writeConfig(t, ymlHome, ".headscale/config.yml", "server_url: https://yml.example.com\n")
	tests := []struct {
		name, home, wantSource, wantURL string
	}{
		{"home first", home, homeCfg, "https://home.example.com"},
		{"home without config", t.TempDir(), "./config.yaml", "https://wd.example.com"},
		{"no HOME", "", "./config.yaml", "https://wd.example.com"},
		{"config.yml in home", ymlHome, filepath.Join(ymlHome, ".headscale/config.yml"), "https://yml.example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var env []string
			if tt.home != "" {
				env = []string{"HOME=" + tt.home}
			}
			cfg, _, err := Load(LoadOptions{Env: env})
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if cfg.Source != tt.wantSource || cfg.ServerURL != tt.wantURL {
				t.Errorf("loaded %s (%s), want %s (%s)", cfg.Source, cfg.ServerURL, tt.wantSource, tt.wantURL)
			}
			if tt.wantSource == homeCfg && cfg.Database.SQLite.Path != filepath.Join(home, ".headscale/db.sqlite") {
				t.Errorf("database.sqlite.path = %s, want it in %s/.headscale", cfg.Database.SQLite.Path, home)
			}
		})
	}
}
