package server

import (
	"errors"
	"os"

	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/derp"
	"github.com/hsctl/headscale/pkg/keyfile"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
	"github.com/hsctl/headscale/pkg/tlscert"
)

// Preflight returns what New would refuse in the configuration, checked
// without opening the database, writing a file or binding a port: each
// file the configuration names
// (the TLS certificate and key, the private keys when they exist, DERP map
// files, the extra DNS records file, the policy file in file mode) that
// cannot be read or does not parse. Each problem names its key.
//
// serve and configtest pass Preflight to config.Load (LoadOptions.Checks),
// which places each problem at its line in the file. New makes the same
// checks as it goes (opening, reading and creating what it needs) and
// refuses in the same words, "key: reason"; configtest's tests hold the two
// together.
func Preflight(cfg *config.Config) []config.Problem {
	var ps []config.Problem
	add := func(key string, err error) {
		ps = append(ps, config.Problem{Key: key, Reason: err.Error()})
	}
	// The certificate files must load (an expired pair is served with a
	// warning, as New does); the ACME CA is never contacted here.
	if cfg.TLS.CertPath != "" && !cfg.TLS.ACME() {
		if _, err := tlscert.LoadPair(cfg.TLS.CertPath, cfg.TLS.KeyPath); err != nil {
			add("tls_cert_path", err)
		}
	}
	if err := keyfile.CheckMachineKey(cfg.Noise.PrivateKeyPath); err != nil {
		add("noise.private_key_path", err)
	}
	if cfg.DERP.Server.Enabled {
		if err := keyfile.CheckNodeKey(cfg.DERP.Server.PrivateKeyPath); err != nil {
			add("derp.server.private_key_path", err)
		}
	}
	for _, p := range cfg.DERP.Paths {
		if _, err := derp.LoadFile(p); err != nil {
			add("derp.paths", err)
		}
	}
	if cd := cfg.DNS.Certificates; cd.Enabled() {
		if _, err := cd.RFC2136.Secret(); err != nil {
			add("dns.certificates.rfc2136.tsig_secret_path", err)
		}
	}
	if cfg.DNS.ExtraRecordsPath != "" {
		// Empty is fine at start: no records until the file is written.
		if _, err := config.LoadExtraRecords(cfg.DNS.ExtraRecordsPath); err != nil && !errors.Is(err, config.ErrEmptyRecordsFile) {
			add("dns.extra_records_path", err)
		}
	}
	// The URL parses as the store parses it (the configuration checks
	// only its form); the error never quotes it.
	if cfg.Database.Type == "postgres" && cfg.Database.Postgres.URL != "" {
		if _, err := store.ParsePostgresURL(cfg.Database.Postgres.URL); err != nil {
			add("database.postgres.url", err)
		}
	}
	if cfg.Policy.Mode == "file" && cfg.Policy.Path != "" {
		if err := checkPolicyFile(cfg.Policy.Path); err != nil {
			add("policy.path", err)
		}
	}
	return ps
}

// checkPolicyFile reads the policy file and checks that it parses, as New
// does (what it compiles to depends on the users and nodes in the
// database).
func checkPolicyFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	_, err = state.ParsePolicy(string(b), path)
	return err
}
