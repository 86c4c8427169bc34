package server

import (
	"context"
	"fmt"

	"github.com/hsctl/headscale/pkg/certdns"
	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/mapper"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/libdns/rfc2136"
)

// `tailscale cert`: with dns.certificates configured, each node's map
// offers it a certificate for its MagicDNS name (mapper's CertDomains),
// and /machine/set-dns (pkg/control) sets its ACME DNS-01 challenge record
// through pkg/certdns on the zone's DNS server.

// newCertDNS builds the challenge record setter from dns.certificates; nil
// when it is off. Its secret is read here, once.
func newCertDNS(cfg config.CertDNSConfig, s *Server) (*certdns.Setter, error) {
	if !cfg.Enabled() {
		return nil, nil
	}
	secret, err := cfg.RFC2136.Secret()
	if err != nil {
		return nil, fmt.Errorf("dns.certificates.rfc2136: %w", err)
	}
	p := &rfc2136.Provider{Server: cfg.RFC2136.Server, KeyName: cfg.RFC2136.TSIGKeyName, KeyAlg: cfg.RFC2136.TSIGAlgorithm, Key: secret}
	return certdns.New(certdns.Options{Provider: p, Zone: cfg.Zone, Logger: s.log.With("component", "certdns")}), nil
}

// certDNS is control.CertDNS over the mapper's names and the setter.
type certDNS struct {
	m      *mapper.Mapper
	setter *certdns.Setter
}

func (c certDNS) CertDomain(n *state.Node) string { return c.m.CertDomain(n) }

func (c certDNS) SetTXT(ctx context.Context, name, value string) error {
	return c.setter.SetTXT(ctx, name, value)
}
