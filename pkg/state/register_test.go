package state

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/authkey"
	"github.com/hsctl/headscale/pkg/store"
	"golang.org/x/crypto/bcrypt"
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
