package config

import (
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
)

// OIDCConfig is the oidc section: login through an OpenID Connect
// provider, with Headscale's keys. It is off while Issuer is empty.
type OIDCConfig struct {
	// OnlyStartIfAvailable makes start-up fail when the provider cannot
	// be reached (only_start_if_oidc_is_available, default true); false
	// starts anyway, with web login by admin approval until the provider
	// answers.
	OnlyStartIfAvailable bool `koanf:"only_start_if_oidc_is_available"`
	// Issuer is the provider's issuer URL; OIDC is on when it is set.
	Issuer string `koanf:"issuer"`
	// ClientID and ClientSecret identify this server to the provider.
	ClientID     string `koanf:"client_id"`
	ClientSecret string `koanf:"client_secret"`
	// ClientSecretPath names a file holding the client secret instead
	// (client_secret_path): an absolute path, or
	// $CREDENTIALS_DIRECTORY/NAME for a systemd credential. Not both.
	ClientSecretPath string `koanf:"client_secret_path"`
	// UseExpiryFromToken sets a node's key expiry to the ID token's
	// expiry instead of node.expiry (use_expiry_from_token).
	UseExpiryFromToken bool `koanf:"use_expiry_from_token"`
	// Scope lists the scopes asked for (default openid, profile, email);
	// it must include openid.
	Scope []string `koanf:"scope"`
	// EmailVerifiedRequired refuses an unverified email address where
	// allowed_domains or allowed_users judge by it (default true).
	EmailVerifiedRequired bool `koanf:"email_verified_required"`
	// ExtraParams are added to the provider's authorization URL.
	ExtraParams map[string]string `koanf:"extra_params"`
	// AllowedDomains, AllowedUsers and AllowedGroups restrict who may log
	// in: an email domain, an email address, a group from the provider's
	// groups claim. Each list that is not empty must be satisfied.
	AllowedDomains []string `koanf:"allowed_domains"`
	AllowedUsers   []string `koanf:"allowed_users"`
	AllowedGroups  []string `koanf:"allowed_groups"`
	// PKCE configures Proof Key for Code Exchange.
	PKCE PKCEConfig `koanf:"pkce"`
	// MapLegacyUsers lets the first login of a person take over the user
	// of the same name created with the CLI, nodes and all
	// (map_legacy_users, as Headscale 0.24 and 0.25 read it; default
	// false: such a login is refused, so nobody takes over a local user
	// by choosing its name at the provider).
	MapLegacyUsers bool `koanf:"map_legacy_users"`
}

// PKCEConfig is oidc.pkce.
type PKCEConfig struct {
	// Enabled sends a code challenge with every login (default false).
	Enabled bool `koanf:"enabled"`
	// Method is S256 (default) or plain.
	Method string `koanf:"method"`
}

// PKCE methods.
const (
	PKCEMethodS256  = "S256"
	PKCEMethodPlain = "plain"
)

// Enabled reports whether OIDC login is configured.
func (o OIDCConfig) Enabled() bool { return o.Issuer != "" }

// Secret returns the client secret: ClientSecret, or the first line of
// ClientSecretPath. Its errors name the file and never carry its content.
func (o OIDCConfig) Secret() (string, error) {
	if o.ClientSecretPath == "" {
		return o.ClientSecret, nil
	}
	return readSecretFile("client secret", o.ClientSecretPath)
}

// String describes the configuration for logs without the secret.
func (o OIDCConfig) String() string {
	if !o.Enabled() {
		return "oidc off"
	}
	return fmt.Sprintf("issuer=%s client_id=%s scope=%s pkce=%v", o.Issuer, o.ClientID, strings.Join(o.Scope, ","), o.PKCE.Enabled)
}

// GoString is String, so that %#v does not print the secret.
func (o OIDCConfig) GoString() string { return "config.OIDCConfig{" + o.String() + "}" }

// LogValue is String, so that slog does not log the secret.
func (o OIDCConfig) LogValue() slog.Value { return slog.StringValue(o.String()) }

// MarshalText is String, so that JSON output does not show the secret.
func (o OIDCConfig) MarshalText() ([]byte, error) { return []byte(o.String()), nil }

// validateOIDC checks the oidc section when an issuer is set.
func (l *loader) validateOIDC(c *Config) {
	o := &c.OIDC
	if !l.ok("oidc.issuer") || o.Issuer == "" {
		return
	}
	o.Issuer = strings.TrimRight(strings.TrimSpace(o.Issuer), "/")
	if u, err := url.Parse(o.Issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		l.errorf("oidc.issuer", "%q must be an http or https URL (the provider's issuer, as its /.well-known/openid-configuration says)", o.Issuer)
	}
	if l.ok("oidc.client_id") && strings.TrimSpace(o.ClientID) == "" {
		l.errorf("oidc.client_id", "must be set when oidc.issuer is")
	}
	l.validateSecretFile("oidc.client_secret_path", "oidc.client_secret", &o.ClientSecretPath, o.ClientSecret)
	if l.ok("oidc.client_secret", "oidc.client_secret_path") && o.ClientSecret == "" && o.ClientSecretPath == "" {
		l.errorf("oidc.client_secret", "must be set when oidc.issuer is (or oidc.client_secret_path)")
	}
	if l.ok("oidc.scope") && !slices.Contains(o.Scope, "openid") {
		l.errorf("oidc.scope", "%v must include openid", o.Scope)
	}
	if l.ok("oidc.pkce.method") {
		switch {
		case strings.EqualFold(o.PKCE.Method, PKCEMethodS256):
			o.PKCE.Method = PKCEMethodS256
		case strings.EqualFold(o.PKCE.Method, PKCEMethodPlain):
			o.PKCE.Method = PKCEMethodPlain
		default:
			l.errorf("oidc.pkce.method", "%q must be S256 or plain", o.PKCE.Method)
		}
	}
	if l.ok("oidc.allowed_domains") {
		for i, d := range o.AllowedDomains {
			d = strings.ToLower(strings.TrimPrefix(strings.TrimSpace(d), "@"))
			if d == "" || strings.ContainsAny(d, "@/ ") {
				l.errorf("oidc.allowed_domains", "%q is not a domain (write example.com)", o.AllowedDomains[i])
			}
			o.AllowedDomains[i] = d
		}
	}
	if l.ok("oidc.allowed_users") {
		for i, u := range o.AllowedUsers {
			u = strings.TrimSpace(u)
			if !strings.Contains(u, "@") {
				l.errorf("oidc.allowed_users", "%q is not an email address", o.AllowedUsers[i])
			}
			o.AllowedUsers[i] = strings.ToLower(u)
		}
	}
}
