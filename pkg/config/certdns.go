package config

import (
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
)

// CertDNSConfig is dns.certificates (ours; Headscale has no `tailscale
// cert`): the DNS server where nodes' ACME DNS-01 challenge records are
// set when a node runs `tailscale cert`. Nodes are offered certificates
// for their MagicDNS names only while Provider is set.
type CertDNSConfig struct {
	// Provider is how records are set: "rfc2136" (dynamic updates, RFC
	// 2136, signed with TSIG), or "" (off, the default).
	Provider string `koanf:"provider"`
	// Zone is the DNS zone the records are set in; default base_domain.
	Zone string `koanf:"zone"`
	// RFC2136 configures the rfc2136 provider.
	RFC2136 RFC2136Config `koanf:"rfc2136"`
}

// RFC2136Config is dns.certificates.rfc2136: the primary server of the
// zone and the TSIG key it accepts updates signed with.
type RFC2136Config struct {
	// Server is host:port of the zone's primary server.
	Server string `koanf:"server"`
	// TSIGKeyName and TSIGAlgorithm name the key (algorithm hmac-sha256 by
	// default; also hmac-sha1, hmac-sha224, hmac-sha384, hmac-sha512).
	TSIGKeyName   string `koanf:"tsig_key_name"`
	TSIGAlgorithm string `koanf:"tsig_algorithm"`
	// TSIGSecret is the key's secret, base64 as the DNS server's
	// configuration writes it; TSIGSecretPath names a file holding it
	// instead (an absolute path, or $CREDENTIALS_DIRECTORY/NAME). Not both.
	TSIGSecret     string `koanf:"tsig_secret"`
	TSIGSecretPath string `koanf:"tsig_secret_path"`
}

// CertDNSProviderRFC2136 is the RFC 2136 provider's name.
const CertDNSProviderRFC2136 = "rfc2136"

// Enabled reports whether nodes can get certificates.
func (c CertDNSConfig) Enabled() bool { return c.Provider != "" }

// Secret returns the TSIG secret: TSIGSecret, or the first line of
// TSIGSecretPath. Its errors name the file and never carry its content.
func (r RFC2136Config) Secret() (string, error) {
	if r.TSIGSecretPath == "" {
		return r.TSIGSecret, nil
	}
	s, err := readSecretFile("TSIG secret", r.TSIGSecretPath)
	if err != nil {
		return "", err
	}
	if _, err := base64.StdEncoding.DecodeString(s); err != nil {
		return "", fmt.Errorf("the TSIG secret in %s is not base64", r.TSIGSecretPath)
	}
	return s, nil
}

// String describes the configuration for logs without the secret.
func (c CertDNSConfig) String() string {
	if !c.Enabled() {
		return "certificates off"
	}
	return fmt.Sprintf("provider=%s zone=%s server=%s tsig_key_name=%s tsig_algorithm=%s",
		c.Provider, c.Zone, c.RFC2136.Server, c.RFC2136.TSIGKeyName, c.RFC2136.TSIGAlgorithm)
}

// GoString is String, so that %#v does not print the secret.
func (c CertDNSConfig) GoString() string { return "config.CertDNSConfig{" + c.String() + "}" }

// LogValue is String, so that slog does not log the secret.
func (c CertDNSConfig) LogValue() slog.Value { return slog.StringValue(c.String()) }

// MarshalText is String, so that JSON output does not show the secret.
func (c CertDNSConfig) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// tsigAlgorithms are the TSIG algorithms the rfc2136 provider signs with.
var tsigAlgorithms = []string{"hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512"}

// validateCertDNS checks dns.certificates when a provider is set.
func (l *loader) validateCertDNS(c *Config) {
	cd := &c.DNS.Certificates
	const p = "dns.certificates."
	if !l.ok(p+"provider") || cd.Provider == "" {
		return
	}
	cd.Provider = strings.ToLower(strings.TrimSpace(cd.Provider))
	if cd.Provider != CertDNSProviderRFC2136 {
		l.errorf(p+"provider", "%q is not a provider this server has: rfc2136 (or leave it empty to offer no certificates)", cd.Provider)
		return
	}
	if !c.DNS.MagicDNS || c.DNS.BaseDomain == "" {
		l.errorf(p+"provider", "needs dns.magic_dns with a dns.base_domain: certificates are for nodes' MagicDNS names")
	}
	if l.ok(p + "zone") {
		cd.Zone = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(cd.Zone), "."))
		if cd.Zone == "" {
			cd.Zone = strings.ToLower(c.DNS.BaseDomain)
		}
		if base := strings.ToLower(c.DNS.BaseDomain); base != cd.Zone && !strings.HasSuffix(base, "."+cd.Zone) {
			l.errorf(p+"zone", "%q does not contain dns.base_domain %q, under which the nodes' names are", cd.Zone, c.DNS.BaseDomain)
		}
	}
	r := &cd.RFC2136
	if l.ok(p + "rfc2136.server") {
		host, port, err := net.SplitHostPort(r.Server)
		if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
			l.errorf(p+"rfc2136.server", "%q must be host:port of the zone's primary DNS server (port 53 usually)", r.Server)
		}
	}
	if l.ok(p+"rfc2136.tsig_key_name") && strings.TrimSpace(r.TSIGKeyName) == "" {
		l.errorf(p+"rfc2136.tsig_key_name", "must be set: updates are signed with a TSIG key")
	}
	if l.ok(p + "rfc2136.tsig_algorithm") {
		r.TSIGAlgorithm = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(r.TSIGAlgorithm), "."))
		if r.TSIGAlgorithm == "" {
			r.TSIGAlgorithm = "hmac-sha256"
		}
		ok := false
		for _, a := range tsigAlgorithms {
			ok = ok || a == r.TSIGAlgorithm
		}
		if !ok {
			l.errorf(p+"rfc2136.tsig_algorithm", "%q must be one of %s", r.TSIGAlgorithm, strings.Join(tsigAlgorithms, ", "))
		}
	}
	l.validateSecretFile(p+"rfc2136.tsig_secret_path", p+"rfc2136.tsig_secret", &r.TSIGSecretPath, r.TSIGSecret)
	if l.ok(p+"rfc2136.tsig_secret", p+"rfc2136.tsig_secret_path") {
		switch {
		case r.TSIGSecret == "" && r.TSIGSecretPath == "":
			l.errorf(p+"rfc2136.tsig_secret", "must be set (or tsig_secret_path): updates are signed with a TSIG key")
		case r.TSIGSecret != "":
			if _, err := base64.StdEncoding.DecodeString(r.TSIGSecret); err != nil {
				l.errorf(p+"rfc2136.tsig_secret", "is not base64 (write it as the DNS server's key configuration does)")
			}
		}
	}
}
