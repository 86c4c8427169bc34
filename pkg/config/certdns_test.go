package config

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// TestCertDNS: dns.certificates is checked when a provider is set (each
// mistake named with its line), defaults the zone and algorithm, reads the
// secret from a file, and never shows the secret.
func TestCertDNS(t *testing.T) {
	dir := t.TempDir()
	writeConfig(t, dir, "tsig", "c2VjcmV0LXRzaWcta2V5LWZvci10ZXN0cw==\n")
	head := "dns:\n  magic_dns: true\n  base_domain: ts.example.com\n  certificates:\n    provider: rfc2136\n"
	good := "    rfc2136:\n      server: 127.0.0.1:53\n      tsig_key_name: headscale\n      tsig_secret: c2VjcmV0LXRzaWcta2V5LWZvci10ZXN0cw==\n"
	bad := []struct {
		name, yaml, want string
	}{
		{"unknown provider", strings.Replace(head, "rfc2136", "route53", 1) + good, `config.yaml:5: dns.certificates.provider: "route53" is not a provider`},
		{"no server", head + "    rfc2136:\n      tsig_key_name: k\n      tsig_secret: c2VjcmV0\n", "dns.certificates.rfc2136.server: \"\" must be host:port"},
		{"server without port", head + strings.Replace(good, "127.0.0.1:53", "ns1.example.com", 1), "must be host:port"},
		{"no key name", head + "    rfc2136:\n      server: 127.0.0.1:53\n      tsig_secret: c2VjcmV0\n", "tsig_key_name: must be set"},
		{"no secret", head + "    rfc2136:\n      server: 127.0.0.1:53\n      tsig_key_name: k\n", "tsig_secret: must be set"},
		{"secret not base64", head + strings.Replace(good, "c2VjcmV0LXRzaWcta2V5LWZvci10ZXN0cw==", "not base64!", 1), "is not base64"},
		{"bad algorithm", head + good + "      tsig_algorithm: md5\n", `"md5" must be one of`},
		{"zone not containing base_domain", head + "    zone: other.org\n" + good, `"other.org" does not contain dns.base_domain`},
		{"magic dns off", strings.Replace(head, "magic_dns: true", "magic_dns: false", 1) + good, "needs dns.magic_dns"},
		{"secret twice", head + good + "      tsig_secret_path: " + filepath.Join(dir, "tsig") + "\n", "set only one of them"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, err := loadYAML(t, tc.yaml)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}

	cfg, _ := mustLoadYAML(t, head+"    zone: Example.COM.\n"+strings.Replace(good, "      tsig_secret: c2VjcmV0LXRzaWcta2V5LWZvci10ZXN0cw==\n",
		"      tsig_secret_path: "+filepath.Join(dir, "tsig")+"\n", 1))
	cd := cfg.DNS.Certificates
	if !cd.Enabled() || cd.Zone != "example.com" || cd.RFC2136.TSIGAlgorithm != "hmac-sha256" {
		t.Errorf("loaded %+v: want enabled, zone example.com, hmac-sha256", cd.RFC2136)
	}
	secret, err := cd.RFC2136.Secret()
	if err != nil || secret != "c2VjcmV0LXRzaWcta2V5LWZvci10ZXN0cw==" {
		t.Fatalf("Secret() = %q, %v", secret, err)
	}
	js, _ := json.Marshal(cfg)
	for _, shown := range []string{cd.String(), fmt.Sprintf("%#v %v %+v", cd, cd, cd), string(js)} {
		if strings.Contains(shown, secret) {
			t.Errorf("the secret is shown: %s", shown)
		}
	}
	cfg, _ = mustLoadYAML(t, head+good)
	if cfg.DNS.Certificates.Zone != "ts.example.com" {
		t.Errorf("zone defaults to %q, want base_domain", cfg.DNS.Certificates.Zone)
	}
	cfg, _ = mustLoadYAML(t, "dns:\n  magic_dns: false\n")
	if cfg.DNS.Certificates.Enabled() {
		t.Error("certificates on without a provider")
	}
}
