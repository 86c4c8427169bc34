package mapper

import (
	"tailscale.com/tailcfg"
	"tailscale.com/types/dnstype"
)

// DNSSettings is what the configuration's dns section says clients get.
type DNSSettings struct {
	// MagicDNS (dns.magic_dns) lets clients' own resolver (100.100.100.100)
	// answer for the tailnet's names: tailcfg.DNSConfig.Proxied.
	MagicDNS bool
	// BaseDomain (dns.base_domain) is the suffix of every node's name and
	// the first search domain, whether or not MagicDNS is on (as Headscale).
	BaseDomain string
	// OverrideLocalDNS (dns.override_local_dns) makes Global the resolvers
	// for every name split DNS and MagicDNS do not cover; otherwise clients
	// keep their own resolvers and get Global only as fallback resolvers
	// (used while an exit node without a DNS proxy is in use).
	OverrideLocalDNS bool
	// Global (dns.nameservers.global): IP addresses or DoH URLs.
	Global []string
	// Split (dns.nameservers.split) maps a domain to the resolvers used
	// for names under it only.
	Split map[string][]string
	// SearchDomains (dns.search_domains) follow BaseDomain in the search
	// list.
	SearchDomains []string
	// ExtraRecords are dns.extra_records followed by the records of
	// dns.extra_records_path.
	ExtraRecords []tailcfg.DNSRecord
}

// DNSConfig builds the DNS configuration nodes receive. It sends what
// Headscale sends for the same settings: Proxied for MagicDNS, the global
// nameservers as Resolvers with override_local_dns and as
// FallbackResolvers without, one route per split domain (none for the
// base domain: clients route their own MagicDNS suffix), and the base
// domain followed by the search domains as Domains.
func DNSConfig(s DNSSettings) *tailcfg.DNSConfig {
	cfg := &tailcfg.DNSConfig{Proxied: s.MagicDNS, ExtraRecords: s.ExtraRecords}
	if s.OverrideLocalDNS {
		cfg.Resolvers = resolvers(s.Global)
	} else {
		cfg.FallbackResolvers = resolvers(s.Global)
	}
	if len(s.Split) > 0 {
		cfg.Routes = make(map[string][]*dnstype.Resolver, len(s.Split))
		for dom, nss := range s.Split {
			cfg.Routes[dom] = resolvers(nss)
		}
	}
	if s.BaseDomain != "" {
		cfg.Domains = append(cfg.Domains, s.BaseDomain)
	}
	cfg.Domains = append(cfg.Domains, s.SearchDomains...)
	return cfg
}

// resolvers turns nameserver addresses (IPs or DoH URLs, checked by the
// config loader) into resolvers; nil for none.
func resolvers(addrs []string) []*dnstype.Resolver {
	var rs []*dnstype.Resolver
	for _, a := range addrs {
		rs = append(rs, &dnstype.Resolver{Addr: a})
	}
	return rs
}
