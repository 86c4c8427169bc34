package authkey

import (
	"errors"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	k, err := New(KindAuth)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(k.Full, "hskey-auth-") {
		t.Fatalf("key %q lacks prefix", k.Full)
	}
	p, s, err := Parse(KindAuth, k.Full)
	if err != nil {
		t.Fatal(err)
	}
	if p != k.Prefix || !Verify(k.Hash, s) {
		t.Fatalf("parse/verify failed")
	}
	if Verify(k.Hash, strings.Repeat("0", secretLen)) {
		t.Fatal("wrong secret verified")
	}
}

func TestParseErrors(t *testing.T) {
	api, _ := New(KindAPI)
	for _, in := range []string{"", "tskey-auth-abc", "hskey-auth-short-x", api.Full, "hskey-auth-" + strings.Repeat("a", 12)} {
		if _, _, err := Parse(KindAuth, in); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%q) = %v, want ErrMalformed", in, err)
		}
	}
}

// TestVerify is a table of what must and must not match. Verify compares
// with crypto/subtle.ConstantTimeCompare, so the time it takes does not
// depend on how many leading bytes of a guess's hash are right; the table
// cannot see timing, so keep that call when changing Verify (and never
// compare secrets or hashes with ==, bytes.Equal or in SQL).
func TestVerify(t *testing.T) {
	k, err := New(KindAPI)
	if err != nil {
		t.Fatal(err)
	}
	_, secret, err := Parse(KindAPI, k.Full)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte {
		h := append([]byte(nil), k.Hash...)
		h[i] ^= 1
		return h
	}
	other := strings.Repeat("0", secretLen)
	for _, tc := range []struct {
		name   string
		hash   []byte
		secret string
		want   bool
	}{
		{"right secret", k.Hash, secret, true},
		{"first hash byte differs", flip(0), secret, false},
		{"last hash byte differs", flip(len(k.Hash) - 1), secret, false},
		{"truncated stored hash", k.Hash[:len(k.Hash)-1], secret, false},
		{"stored hash longer", append(append([]byte(nil), k.Hash...), 0), secret, false},
		{"empty stored hash", []byte{}, secret, false},
		{"no stored hash", nil, secret, false},
		{"no stored hash, empty secret", nil, "", false},
		{"other secret", k.Hash, other, false},
		{"secret with a changed last character", k.Hash, secret[:secretLen-1] + string("0123456789abcdef"[(strings.IndexByte("0123456789abcdef", secret[secretLen-1])+1)%16]), false},
		{"secret with whitespace", k.Hash, secret + " ", false},
		{"the stored hash presented as the secret", k.Hash, string(k.Hash), false},
		{"full key instead of the secret part", k.Hash, k.Full, false},
	} {
		if got := Verify(tc.hash, tc.secret); got != tc.want {
			t.Errorf("%s: Verify = %v, want %v", tc.name, got, tc.want)
		}
	}
}
