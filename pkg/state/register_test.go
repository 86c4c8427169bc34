package state

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/authkey"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/store"
	"golang.org/x/crypto/bcrypt"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// TestValidateImportedAuthKeys: pre-auth keys stored the way the Headscale
// importer stores them follow the same rules as ours (expiry, single use),
// and only a bcrypt-hashed one asks for its hash to be replaced.
func TestValidateImportedAuthKeys(t *testing.T) {
	ctx := t.Context()
	s := newTestState(t)
	u, err := s.CreateUser(ctx, store.User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	past, future := time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
	bcryptOf := func(secret string) []byte {
		h, err := bcrypt.GenerateFromPassword([]byte(secret), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	n := 0
	legacy := func(used, reusable bool, exp time.Time) string {
		n++
		plain := fmt.Sprintf("%012x", n) + strings.Repeat("ab", 18)
		p, h, err := authkey.LegacyAuth(plain)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.st.CreatePreAuthKey(ctx, store.PreAuthKey{Prefix: p, Hash: h, Legacy: true, UserID: &u.ID, Used: used, Reusable: reusable, Expiration: exp}); err != nil {
			t.Fatal(err)
		}
		return plain
	}
	hsNew := func(used, reusable bool, exp time.Time) string {
		n++
		prefix, secret := fmt.Sprintf("A-_%09d", n), "_-"+strings.Repeat("Zz9", 20)+"xy"
		if _, err := s.st.CreatePreAuthKey(ctx, store.PreAuthKey{Prefix: prefix, Hash: bcryptOf(secret), UserID: &u.ID, Used: used, Reusable: reusable, Expiration: exp}); err != nil {
			t.Fatal(err)
		}
		return "hskey-auth-" + prefix + "-" + secret
	}
	for _, tc := range []struct {
		name   string
		key    string
		want   error
		rehash bool
	}{
		{"legacy, valid", legacy(false, false, future), nil, false},
		{"legacy, reusable and used", legacy(true, true, future), nil, false},
		{"legacy, expired", legacy(false, true, past), ErrAuthKeyExpired, false},
		{"legacy, single-use and used", legacy(true, false, future), ErrAuthKeyUsed, false},
		{"legacy, never expires", legacy(false, true, time.Time{}), nil, false},
		{"legacy, wrong secret", legacy(false, true, future)[:47] + "0", ErrAuthKeyInvalid, false},
		{"headscale 0.28, valid", hsNew(false, false, future), nil, true},
		{"headscale 0.28, expired", hsNew(false, true, past), ErrAuthKeyExpired, false},
		{"headscale 0.28, used", hsNew(true, false, future), ErrAuthKeyUsed, false},
		{"headscale 0.28, wrong secret", hsNew(false, true, future)[:87] + "q", ErrAuthKeyInvalid, false},
		{"unknown legacy prefix", strings.Repeat("f", 48), ErrAuthKeyInvalid, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := s.ValidateAuthKey(ctx, tc.key)
			if !errors.Is(err, tc.want) {
				t.Fatalf("ValidateAuthKey = %v, want %v", err, tc.want)
			}
			if err != nil {
				return
			}
			if got := k.Rehash.Key != 0; got != tc.rehash {
				t.Fatalf("rehash asked: %v, want %v", got, tc.rehash)
			}
			if tc.rehash {
				_, secret, _ := authkey.Parse(authkey.KindAuth, tc.key)
				if k.Rehash.Key != k.ID || !bytes.Equal(k.Rehash.From, k.Hash) || !bytes.Equal(k.Rehash.To, authkey.Hash(secret)) {
					t.Fatalf("rehash %+v does not replace key %d's bcrypt hash by the SHA-256 of its secret", k.Rehash, k.ID)
				}
			}
		})
	}
}

// TestRegisterInteractive: a registration without a pre-auth key creates
// the node for the approving user ("cli" or "oidc"); re-login as the same
// user keeps the node (ID, addresses, approved routes) with the new node
// key; another user gets a new node and the machine's old one goes; an
// unknown user is refused and changes nothing.
func TestRegisterInteractive(t *testing.T) {
	ctx := t.Context()
	s := newTestState(t)
	alice, err := s.CreateUser(ctx, store.User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	bob, err := s.CreateUser(ctx, store.User{Name: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	mk := key.NewMachine().Public()
	params := func(user ids.UserID, method string) InteractiveParams {
		return InteractiveParams{Machine: mk, NodeKey: key.NewNode().Public(), Hostinfo: &tailcfg.Hostinfo{Hostname: "laptop"}, Cap: 130, User: user, Method: method}
	}

	if _, err := s.RegisterInteractive(ctx, params(999, "")); !errors.Is(err, ErrUnknownUser) {
		t.Fatalf("unknown user: %v", err)
	}
	if _, ok := s.NodeByMachineKey(mk); ok {
		t.Fatal("a node was created for an unknown user")
	}

	p := params(alice.ID, "")
	p.Expiry = time.Now().Add(time.Hour).Truncate(time.Second)
	first, err := s.RegisterInteractive(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if first.UserID != alice.ID || first.RegisterMethod != "cli" || first.AuthKeyID != 0 || !first.Expiry.Equal(p.Expiry) || first.GivenName != "laptop" {
		t.Fatalf("registered: %+v", first)
	}
	route := netip.MustParsePrefix("10.1.0.0/24")
	if _, err := s.SetApprovedRoutes(ctx, first.ID, []netip.Prefix{route}); err != nil {
		t.Fatal(err)
	}

	p = params(alice.ID, "oidc")
	again, err := s.RegisterInteractive(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if again.ID != first.ID || again.IPv4 != first.IPv4 || again.IPv6 != first.IPv6 || again.NodeKey != p.NodeKey ||
		again.RegisterMethod != "oidc" || len(again.ApprovedRoutes) != 1 || again.ApprovedRoutes[0] != route {
		t.Fatalf("same-user re-login: %+v, was %+v", again, first)
	}
	if n, ok := s.NodeByNodeKey(p.NodeKey); !ok || n.ID != first.ID {
		t.Fatal("the new node key does not find the node")
	}

	bobs, err := s.RegisterInteractive(ctx, params(bob.ID, ""))
	if err != nil {
		t.Fatal(err)
	}
	if bobs.ID == first.ID || bobs.UserID != bob.ID || len(bobs.ApprovedRoutes) != 0 {
		t.Fatalf("another user's re-login: %+v", bobs)
	}
	if _, ok := s.Node(first.ID); ok {
		t.Error("the machine's old node is still there")
	}
	if n, ok := s.NodeByMachineKey(mk); !ok || n.ID != bobs.ID {
		t.Errorf("machine's node: %+v", n)
	}
}
