package config

import (
	"path/filepath"
	"testing"
)

// shippedConfig is the example installed to /etc/headscale/config.yaml.
const shippedConfig = "../../etc/headscale/config.yaml"

func TestShippedConfigIsClean(t *testing.T) {
	cfg, warns, err := Load(LoadOptions{Path: shippedConfig, SearchPaths: []string{}})
	if err != nil {
		t.Fatalf("shipped config does not load:\n%v", err)
	}
	if len(warns) != 0 {
		t.Fatalf("shipped config has warnings:\n%s", problemsText(warns))
	}
	checks := []struct {
		name      string
		got, want string
	}{
		{"server_url", cfg.ServerURL, "https://headscale.example.com"},
		{"listen_addr", cfg.ListenAddr, "0.0.0.0:8080"},
		{"metrics", cfg.MetricsListenAddr, "127.0.0.1:9090"},
		{"state_dir", cfg.StateDir, "/var/lib/headscale"},
		{"noise key", cfg.Noise.PrivateKeyPath, "/var/lib/headscale/noise_private.key"},
		{"derp key", cfg.DERP.Server.PrivateKeyPath, "/var/lib/headscale/derp_server_private.key"},
		{"sqlite", cfg.Database.SQLite.Path, "/var/lib/headscale/db.sqlite"},
		{"socket", cfg.UnixSocket, "/run/headscale/headscale.sock"},
		{"stun", cfg.DERP.Server.STUNListenAddr, "0.0.0.0:3478"},
		{"source", cfg.Source, shippedConfig},
		// One tailnet in the database's default schema, as before.
		{"cluster_id", cfg.ClusterID, ""},
		{"postgres url", cfg.Database.Postgres.URL, ""},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if !cfg.DERP.Server.Enabled {
		t.Error("embedded DERP should be enabled")
	}
	if cfg.Cluster.Enabled {
		t.Error("cluster.enabled should be false")
	}
}

// TestShippedConfigDocumentsEveryKey keeps the example complete: every key
// the server reads must appear in it.
func TestShippedConfigDocumentsEveryKey(t *testing.T) {
	data, err := readFile(filepath.FromSlash(shippedConfig))
	if err != nil {
		t.Fatal(err)
	}
	l, err := newLoader(shippedConfig)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := l.loadFile(data); err != nil || !ok {
		t.Fatalf("loadFile: ok=%v err=%v errs=%v", ok, err, l.errs)
	}
	for _, s := range l.idx.all {
		if s.status == statusActive && !l.present(s.key) {
			t.Errorf("%s is not in the shipped config", s.key)
		}
	}
}
