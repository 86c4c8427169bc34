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
