package certdns

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/knottest"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/libdns/rfc2136"
)

// TestRFC2136WithKnot: against a real Knot server, a record set appears
// in the zone beside others at the same name, goes away after Keep, the
// rest at Close; a name outside the zone and a wrong key are refused.
func TestRFC2136WithKnot(t *testing.T) {
	if testing.Short() {
		t.Skip("starts knotd")
	}
	knot := knottest.Start(t, "tailnet.test", knottest.Options{})
	provider := &rfc2136.Provider{Server: knot.Addr, KeyName: knot.KeyName, KeyAlg: knot.Algorithm, Key: knot.Secret}
	s := New(Options{Provider: provider, Zone: "tailnet.test.", Keep: 2 * time.Second})
	ctx := context.Background()
	name := "_acme-challenge.node1.tailnet.test"
	txt := func(name string) []string {
		got, err := knot.TXT(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		return got
	}
	if err := s.SetTXT(ctx, name, "first-token"); err != nil {
		t.Fatal(err)
	}
	if got := txt(name); !slices.Equal(got, []string{"first-token"}) {
		t.Fatalf("after SetTXT: %v", got)
	}
	if err := s.SetTXT(ctx, name+".", "second-token"); err != nil {
		t.Fatal(err)
	}
	if got := txt(name); !slices.Equal(got, []string{"first-token", "second-token"}) {
		t.Fatalf("after a second SetTXT: %v, want both", got)
	}
	tstest.WaitFor(t, 15*time.Second, "records removed after Keep", func() error {
		if got := txt(name); len(got) != 0 || s.Pending() != 0 {
			return errors.New("still there")
		}
		return nil
	})

	if err := s.SetTXT(ctx, "_acme-challenge.node1.other.test", "x"); !errors.Is(err, ErrNotInZone) {
		t.Errorf("outside the zone: %v", err)
	}
	if err := s.SetTXT(ctx, "tailnet.test", "x"); !errors.Is(err, ErrNotInZone) {
		t.Errorf("the zone's apex: %v", err)
	}
	wrong := New(Options{Provider: &rfc2136.Provider{Server: knot.Addr, KeyName: knot.KeyName, KeyAlg: knot.Algorithm,
		Key: "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktMQ=="}, Zone: "tailnet.test"})
	if err := wrong.SetTXT(ctx, name, "forged"); err == nil {
		t.Error("an update with the wrong TSIG secret succeeded")
	}
	wrong.Close()

	long := New(Options{Provider: provider, Zone: "tailnet.test"})
	if err := long.SetTXT(ctx, "_acme-challenge.node2.tailnet.test", "kept-until-close"); err != nil {
		t.Fatal(err)
	}
	long.Close()
	if got := txt("_acme-challenge.node2.tailnet.test"); len(got) != 0 {
		t.Errorf("after Close: %v still set", got)
	}
	if err := long.SetTXT(ctx, "_acme-challenge.node2.tailnet.test", "late"); !errors.Is(err, ErrClosed) {
		t.Errorf("SetTXT after Close: %v", err)
	}
	s.Close()
}
