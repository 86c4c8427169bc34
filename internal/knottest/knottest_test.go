package knottest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestUpdates: the server answers for its zone, takes an update signed
// with its key, and refuses one signed with another key.
func TestUpdates(t *testing.T) {
	if testing.Short() {
		t.Skip("starts knotd")
	}
	s := Start(t, "zone.test", Options{})
	ctx := context.Background()
	update := func(secret string) error {
		m := new(dns.Msg)
		m.SetUpdate("zone.test.")
		rr, _ := dns.NewRR(`_acme-challenge.a.zone.test. 60 IN TXT "v1"`)
		m.Insert([]dns.RR{rr})
		m.SetTsig(s.KeyName+".", dns.HmacSHA256, 300, time.Now().Unix())
		c := &dns.Client{Net: "tcp", TsigSecret: map[string]string{s.KeyName + ".": secret}}
		r, _, err := c.ExchangeContext(ctx, m, s.Addr)
		if err != nil {
			return err
		}
		if r.Rcode != dns.RcodeSuccess {
			return &rcodeError{r.Rcode}
		}
		return nil
	}
	if err := update("d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktMQ=="); err == nil {
		t.Fatal("an update signed with another key was accepted")
	}
	if err := update(s.Secret); err != nil {
		t.Fatalf("signed update: %v", err)
	}
	got, err := s.TXT(ctx, "_acme-challenge.a.zone.test")
	if err != nil || !slices.Equal(got, []string{"v1"}) {
		t.Fatalf("TXT after update = %v, %v", got, err)
	}
}

type rcodeError struct{ rcode int }

func (e *rcodeError) Error() string { return dns.RcodeToString[e.rcode] }
