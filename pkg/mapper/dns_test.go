package mapper

import (
	"reflect"
	"testing"

	"tailscale.com/tailcfg"
	"tailscale.com/types/dnstype"
)

// TestDNSConfig: what each dns key puts in the DNSConfig clients get, as
// Headscale sends it for the same settings.
func TestDNSConfig(t *testing.T) {
	r := func(addrs ...string) []*dnstype.Resolver {
		var rs []*dnstype.Resolver
		for _, a := range addrs {
			rs = append(rs, &dnstype.Resolver{Addr: a})
		}
		return rs
	}
	rec := []tailcfg.DNSRecord{{Name: "grafana.ts.test", Type: "A", Value: "100.64.0.3"}}
	for _, tc := range []struct {
		name string
		in   DNSSettings
		want *tailcfg.DNSConfig
	}{
		{"nothing", DNSSettings{}, &tailcfg.DNSConfig{}},
		{"magic only: no route for the base domain (clients add their own)",
			DNSSettings{MagicDNS: true, BaseDomain: "ts.test"},
			&tailcfg.DNSConfig{Proxied: true, Domains: []string{"ts.test"}}},
		{"base domain without MagicDNS still leads the search list",
			DNSSettings{BaseDomain: "ts.test", SearchDomains: []string{"corp.example"}},
			&tailcfg.DNSConfig{Domains: []string{"ts.test", "corp.example"}}},
		{"override: global nameservers are the resolvers",
			DNSSettings{MagicDNS: true, BaseDomain: "ts.test", OverrideLocalDNS: true, Global: []string{"1.1.1.1", "https://dns.example/dns-query"}},
			&tailcfg.DNSConfig{Proxied: true, Domains: []string{"ts.test"}, Resolvers: r("1.1.1.1", "https://dns.example/dns-query")}},
		{"no override: global nameservers are fallback resolvers",
			DNSSettings{MagicDNS: true, BaseDomain: "ts.test", Global: []string{"9.9.9.9"}},
			&tailcfg.DNSConfig{Proxied: true, Domains: []string{"ts.test"}, FallbackResolvers: r("9.9.9.9")}},
		{"split DNS: one route per domain",
			DNSSettings{MagicDNS: true, BaseDomain: "ts.test", Split: map[string][]string{"corp.example": {"10.0.0.53", "10.0.1.53"}, "lab.example": {"fd00::53"}}},
			&tailcfg.DNSConfig{Proxied: true, Domains: []string{"ts.test"}, Routes: map[string][]*dnstype.Resolver{
				"corp.example": r("10.0.0.53", "10.0.1.53"), "lab.example": r("fd00::53")}}},
		{"split DNS without MagicDNS",
			DNSSettings{Split: map[string][]string{"corp.example": {"10.0.0.53"}}},
			&tailcfg.DNSConfig{Routes: map[string][]*dnstype.Resolver{"corp.example": r("10.0.0.53")}}},
		{"extra records pass through",
			DNSSettings{MagicDNS: true, BaseDomain: "ts.test", ExtraRecords: rec},
			&tailcfg.DNSConfig{Proxied: true, Domains: []string{"ts.test"}, ExtraRecords: rec}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := DNSConfig(tc.in); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("DNSConfig(%+v)\n got %+v\nwant %+v", tc.in, got, tc.want)
			}
		})
	}
}
