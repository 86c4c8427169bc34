package config

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hsctl/headscale/internal/tstest"
)

// headscaleFixtures returns the directory of the real Headscale fixtures,
// or skips the test when they are not on this machine.
func headscaleFixtures(t *testing.T) string {
	t.Helper()
	return tstest.Shared(t, "fixtures/headscale-db")
}

// TestHeadscaleFixtureConfig: the config.yaml a real Headscale 0.27.1
// ran with loads as it is, with its DERP ipv6 "none" passed on, and warns
// only about keys this server really treats differently.
func TestHeadscaleFixtureConfig(t *testing.T) {
	root := headscaleFixtures(t)
	paths, _ := filepath.Glob(filepath.Join(root, "*", "config.yaml"))
	if len(paths) == 0 {
		t.Skipf("no fixture config.yaml under %s", root)
	}
	// Warnings a Headscale config may draw, each about a real difference.
	allowed := []string{"ephemeral_node_inactivity_timeout"}
	for _, path := range paths {
		t.Run(filepath.Base(filepath.Dir(path)), func(t *testing.T) {
			cfg, warns, err := Load(LoadOptions{Path: path, SearchPaths: []string{}})
			if err != nil {
				t.Fatalf("does not load:\n%v", err)
			}
			for _, w := range warns {
				if !slices.Contains(allowed, w.Key) {
					t.Errorf("unexpected warning: %s", w)
				}
			}
			s := cfg.DERP.Server
			if s.IPv4 != "127.0.0.1" || s.IPv6 != DERPFamilyOff {
				t.Errorf("derp.server ipv4 %q ipv6 %q, want 127.0.0.1 and none", s.IPv4, s.IPv6)
			}
			if !cfg.Taildrop.Enabled || cfg.RandomizeClientPort {
				t.Errorf("taildrop %v randomize_client_port %v, want Headscale's defaults true and false", cfg.Taildrop.Enabled, cfg.RandomizeClientPort)
			}
		})
	}
}

// TestDERPFamilyOff: derp.server.ipv4/ipv6 take an address of their
// family, or "none" (any case, passed on as "none") to switch the family
// off for the embedded relay.
func TestDERPFamilyOff(t *testing.T) {
	tests := []struct {
		name       string
		ipv4, ipv6 string
		want4      string
		want6      string
		wantErr    string
		wantWarn   string
	}{
		{name: "addresses", ipv4: "192.0.2.1", ipv6: "2001:db8::1", want4: "192.0.2.1", want6: "2001:db8::1"},
		{name: "ipv6 none", ipv4: "192.0.2.1", ipv6: "none", want4: "192.0.2.1", want6: "none"},
		{name: "ipv4 none, upper case", ipv4: "NONE", want4: "none"},
		{name: "both none warns", ipv4: "none", ipv6: "None", want4: "none", want6: "none", wantWarn: "clients cannot reach the embedded DERP server"},
		{name: "other words refused", ipv6: "off", wantErr: `derp.server.ipv6: "off" is not an IPv6 address or "none"`},
		{name: "wrong family refused", ipv4: "2001:db8::1", wantErr: `derp.server.ipv4: "2001:db8::1" is not an IPv4 address or "none"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			yaml := "derp:\n  server:\n    ipv4: \"" + tt.ipv4 + "\"\n    ipv6: \"" + tt.ipv6 + "\"\n"
			cfg, warns, _, err := loadYAML(t, yaml)
			if tt.wantErr != "" {
				var errs Errors
				if !errors.As(err, &errs) || len(errs) != 1 || !strings.Contains(errs[0].String(), tt.wantErr) {
					t.Fatalf("got %v, want one error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if s := cfg.DERP.Server; s.IPv4 != tt.want4 || s.IPv6 != tt.want6 {
				t.Errorf("ipv4 %q ipv6 %q, want %q %q", s.IPv4, s.IPv6, tt.want4, tt.want6)
			}
			got := problemsText(warns)
			if (tt.wantWarn == "") != (got == "") || !strings.Contains(got, tt.wantWarn) {
				t.Errorf("warnings %q, want %q", got, tt.wantWarn)
			}
		})
	}
}

// TestNodeCapabilityKeys: taildrop.enabled, auto_update.enabled and
// randomize_client_port are read (file and environment), with Headscale's
// defaults.
func TestNodeCapabilityKeys(t *testing.T) {
	tests := []struct {
		name                        string
		yaml                        string
		env                         []string
		taildrop, update, randomize bool
	}{
		{name: "defaults", yaml: "", taildrop: true},
		{name: "file", yaml: "taildrop:\n  enabled: false\nauto_update:\n  enabled: true\nrandomize_client_port: true\n", update: true, randomize: true},
		{name: "environment", env: []string{"HEADSCALE_TAILDROP_ENABLED=false", "HEADSCALE_AUTO_UPDATE_ENABLED=true", "HEADSCALE_RANDOMIZE_CLIENT_PORT=true"}, update: true, randomize: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, warns := mustLoadYAML(t, tt.yaml, tt.env...)
			if len(warns) != 0 {
				t.Errorf("warnings:\n%s", problemsText(warns))
			}
			if cfg.Taildrop.Enabled != tt.taildrop || cfg.AutoUpdate.Enabled != tt.update || cfg.RandomizeClientPort != tt.randomize {
				t.Errorf("taildrop %v auto_update %v randomize %v, want %v %v %v",
					cfg.Taildrop.Enabled, cfg.AutoUpdate.Enabled, cfg.RandomizeClientPort, tt.taildrop, tt.update, tt.randomize)
			}
		})
	}
}

// TestChecksPlaced: a problem a LoadOptions.Check returns is placed at the
// line of its key, like Load's own; a key no file sets has no line.
func TestChecksPlaced(t *testing.T) {
	path := writeConfig(t, t.TempDir(), "config.yaml", "tls_cert_path: \"\"\nderp:\n  paths:\n    - /a.yaml\n")
	check := func(*Config) []Problem {
		return []Problem{
			{Key: "database.type", Reason: "not here"},
			{Key: "derp.paths", Reason: "/a.yaml is broken"},
		}
	}
	_, _, err := Load(LoadOptions{Path: path, SearchPaths: []string{}, Checks: []Check{check}})
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("want Errors, got %v", err)
	}
	want := []string{
		path + ":3: derp.paths: /a.yaml is broken",
		"database.type: not here",
	}
	got := strings.Split(errs.Error(), "\n")
	if !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Checks do not run on a configuration that is already invalid.
	bad := writeConfig(t, t.TempDir(), "config.yaml", "listen_addr: nope\n")
	_, _, err = Load(LoadOptions{Path: bad, SearchPaths: []string{}, Checks: []Check{check}})
	if !errors.As(err, &errs) || len(errs) != 1 || errs[0].Key != "listen_addr" {
		t.Errorf("invalid config: got %v, want only the listen_addr problem", err)
	}
}
