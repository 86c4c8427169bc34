package config

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/hsctl/headscale/internal/tstest"
)

// paths is every path a config resolves to, for comparing layouts.
type paths struct {
	StateDir, DB, Noise, DERP, Socket string
	ClientSockets                     []string
}

func pathsOf(c *Config) paths {
	return paths{c.StateDir, c.Database.SQLite.Path, c.Noise.PrivateKeyPath, c.DERP.Server.PrivateKeyPath,
		c.UnixSocket, c.ClientSockets}
}

// TestLayoutDefaults pins where state and the socket go: a config file
// that leaves state_dir unset gets Headscale's locations (under the
// injected root here), a file or environment naming state_dir keeps every
// path inside it, and explicit paths always win.
func TestLayoutDefaults(t *testing.T) {
	root := t.TempDir()
	lib := filepath.Join(root, "var/lib/headscale")
	sock := filepath.Join(root, "var/run/headscale/headscale.sock")
	in := func(dir string) paths {
		return paths{dir, dir + "/db.sqlite", dir + "/noise_private.key", dir + "/derp_server_private.key",
			dir + "/headscale.sock", []string{dir + "/headscale.sock"}}
	}
	headscale := func() paths {
		p := in(lib)
		p.Socket, p.ClientSockets = sock, []string{sock}
		return p
	}
	with := func(p paths, f func(*paths)) paths { f(&p); return p }
	const noFile = "(no file)"

	tests := []struct {
		name string
		yaml string // noFile: no file is found
		env  []string
		want paths
	}{
		{"file without state_dir", "server_url: http://127.0.0.1:8080\n", nil, headscale()},
		{"empty file", "", nil, headscale()},
		{"state_dir left empty", "state_dir:\n", nil, headscale()},
		{"state_dir in file", "state_dir: /srv/hs\n", nil, in("/srv/hs")},
		{"state_dir from env", "server_url: http://127.0.0.1:8080\n", []string{"HEADSCALE_STATE_DIR=/env"}, in("/env")},
		{"env state_dir beats file", "state_dir: /srv/hs\n", []string{"HEADSCALE_STATE_DIR=/env"}, in("/env")},
		{"socket set in file", "unix_socket: /run/hs.sock\n", nil,
			with(headscale(), func(p *paths) { p.Socket, p.ClientSockets = "/run/hs.sock", []string{"/run/hs.sock"} })},
		{"socket from env", "server_url: http://127.0.0.1:8080\n", []string{"HEADSCALE_UNIX_SOCKET=/env.sock"},
			with(headscale(), func(p *paths) { p.Socket, p.ClientSockets = "/env.sock", []string{"/env.sock"} })},
		{"database set in file", "database:\n  sqlite:\n    path: /db/x.sqlite\n", nil,
			with(headscale(), func(p *paths) { p.DB = "/db/x.sqlite" })},
		{"old db_path name", "db_path: /db/old.sqlite\n", nil,
			with(headscale(), func(p *paths) { p.DB = "/db/old.sqlite" })},
		{"keys set in file", "noise:\n  private_key_path: /k/n.key\nderp:\n  server:\n    private_key_path: /k/d.key\n", nil,
			with(headscale(), func(p *paths) { p.Noise, p.DERP = "/k/n.key", "/k/d.key" })},
		{"state_dir and socket set", "state_dir: /srv/hs\nunix_socket: /run/hs.sock\n", nil,
			with(in("/srv/hs"), func(p *paths) { p.Socket, p.ClientSockets = "/run/hs.sock", []string{"/run/hs.sock"} })},

		// No file: everything in ./data; the CLI tries Headscale's socket
		// first unless something names the socket or the state directory.
		{"no file", noFile, nil, with(in("data"), func(p *paths) {
			p.StateDir, p.ClientSockets = "./data", []string{sock, "data/headscale.sock"}
		})},
		{"no file, state_dir from env", noFile, []string{"HEADSCALE_STATE_DIR=/env"}, in("/env")},
		{"no file, socket from env", noFile, []string{"HEADSCALE_UNIX_SOCKET=/env.sock"}, with(in("data"), func(p *paths) {
			p.StateDir, p.Socket, p.ClientSockets = "./data", "/env.sock", []string{"/env.sock"}
		})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := LoadOptions{Env: tt.env, SearchPaths: []string{}, SystemRoot: root}
			if tt.yaml != noFile {
				opts.Path = writeConfig(t, t.TempDir(), "config.yaml", tt.yaml)
			}
			cfg, _, err := Load(opts)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := pathsOf(cfg); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("paths\n got: %+v\nwant: %+v", got, tt.want)
			}
		})
	}
}

// TestLayoutSystemPaths pins Headscale's real locations (nothing is opened).
func TestLayoutSystemPaths(t *testing.T) {
	cfg, _ := mustLoadYAML(t, "server_url: http://127.0.0.1:8080\n")
	want := paths{"/var/lib/headscale", "/var/lib/headscale/db.sqlite", "/var/lib/headscale/noise_private.key",
		"/var/lib/headscale/derp_server_private.key", "/var/run/headscale/headscale.sock",
		[]string{"/var/run/headscale/headscale.sock"}}
	if got := pathsOf(cfg); !reflect.DeepEqual(got, want) {
		t.Errorf("paths\n got: %+v\nwant: %+v", got, want)
	}
	cfg, _, err := Load(LoadOptions{Env: []string{}, SearchPaths: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/var/run/headscale/headscale.sock", "data/headscale.sock"}; !reflect.DeepEqual(cfg.ClientSockets, want) {
		t.Errorf("no-config client sockets %q, want %q", cfg.ClientSockets, want)
	}
}

// fixtureConfig returns the path of a file in Headscale's fixtures,
// skipping the test when they are not on this machine.
func fixtureConfig(t *testing.T, rel string) string {
	t.Helper()
	return tstest.Shared(t, "fixtures/headscale-db/"+rel)
}

// TestHeadscaleFixtureConfigLayout loads the config Headscale 0.27.1 ran
// with: its explicit paths are kept, and without its unix_socket line the
// socket is Headscale's default, so the CLI finds the server from any
// directory with nothing but that file.
func TestHeadscaleFixtureConfigLayout(t *testing.T) {
	data, err := os.ReadFile(fixtureConfig(t, "0.27.1-sqlite/config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// derp.server.ipv6 "none" is issue 13 point 6 and tested with it; this
	// test is about paths.
	text := regexp.MustCompile(`(?m)^\s*ipv6: "none"\n`).ReplaceAllString(string(data), "")
	noSocket := regexp.MustCompile(`(?m)^unix_socket:.*\n`).ReplaceAllString(text, "")
	if noSocket == text {
		t.Fatal("the fixture config has no unix_socket line to remove")
	}
	root := t.TempDir()
	sock := filepath.Join(root, "var/run/headscale/headscale.sock")
	given := paths{filepath.Join(root, "var/lib/headscale"), "/var/lib/headscale/db.sqlite",
		"/var/lib/headscale/noise_private.key", "/var/lib/headscale/derp_server_private.key",
		"/var/run/headscale/headscale.sock", []string{"/var/run/headscale/headscale.sock"}}
	tests := []struct {
		name, yaml string
		want       paths
	}{
		{"as Headscale ran it", text, given},
		{"without unix_socket", noSocket, paths{given.StateDir, given.DB, given.Noise, given.DERP, sock, []string{sock}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, t.TempDir(), "config.yaml", tt.yaml)
			cfg, _, err := Load(LoadOptions{Path: path, Env: []string{}, SystemRoot: root})
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := pathsOf(cfg); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("paths\n got: %+v\nwant: %+v", got, tt.want)
			}
		})
	}
}

// TestLayoutWarnsOfOldState: the first start with a file that used to keep
// its state in ./data (no state_dir) says where that state is and how to
// keep using it; later starts, and configs that name state_dir or the
// database, say nothing.
func TestLayoutWarnsOfOldState(t *testing.T) {
	root := t.TempDir()
	t.Chdir(t.TempDir())
	writeConfig(t, ".", "data/db.sqlite", "old")
	oldStateWarning := func(yaml string, env ...string) bool {
		t.Helper()
		opts := LoadOptions{Env: env, SearchPaths: []string{}, SystemRoot: root}
		if yaml != "" {
			opts.Path = writeConfig(t, t.TempDir(), "config.yaml", yaml)
		}
		_, warns, err := Load(opts)
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		for _, w := range warns {
			if w.Key == "state_dir" && strings.Contains(w.Reason, "data/db.sqlite") && strings.Contains(w.Reason, "state_dir: ./data") {
				return true
			}
		}
		return false
	}
	tests := []struct {
		name string
		yaml string // "" loads no file
		env  []string
		want bool
	}{
		{"file without state_dir", "server_url: http://127.0.0.1:8080\n", nil, true},
		{"state_dir in file", "state_dir: ./data\n", nil, false},
		{"state_dir from env", "server_url: http://127.0.0.1:8080\n", []string{"HEADSCALE_STATE_DIR=./data"}, false},
		{"database named", "database:\n  sqlite:\n    path: ./data/db.sqlite\n", nil, false},
		{"no file", "", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := oldStateWarning(tt.yaml, tt.env...); got != tt.want {
				t.Errorf("old-state warning %v, want %v", got, tt.want)
			}
		})
	}
	// Once the new database exists, the move is done: no warning.
	writeConfig(t, root, "var/lib/headscale/db.sqlite", "new")
	if oldStateWarning("server_url: http://127.0.0.1:8080\n") {
		t.Error("warning after the database was created in /var/lib/headscale")
	}
}
