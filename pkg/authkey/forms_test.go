package authkey

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// Keys in Headscale's forms, made up for the tests (same shapes as the
// real ones: base64url prefix and secret with "-" and "_" inside).
const (
	hsPrefix     = "a-b_c-D_e-F_"                                                     // 12
	hsSecret     = "-_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWX-_" // 64
	legacyAuth   = "0123456789abcdef0123456789abcdef0123456789abcdef"                 // 48 hex
	legacyPrefix = "fND2Ksx"
	legacySecret = "-F2_-Ebss_BplKFE8ByMRSZ6JDNEep3n"
)

func TestParseForms(t *testing.T) {
	if len(hsPrefix) != prefixLen || len(hsSecret) != secretLen || len(legacyAuth) != legacyAuthLen ||
		len(legacyPrefix) != legacyAPIPrefixLen || len(legacySecret) != legacyAPISecretLen {
		t.Fatal("test constants have the wrong lengths")
	}
	ours, err := New(KindAuth)
	if err != nil {
		t.Fatal(err)
	}
	oursAPI, err := New(KindAPI)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, kind, in       string
		wantPrefix, wantSecr string
		wantErr              bool
	}{
		{"ours, auth", KindAuth, ours.Full, ours.Prefix, ours.Full[len(ours.Full)-secretLen:], false},
		{"ours, api", KindAPI, oursAPI.Full, oursAPI.Prefix, oursAPI.Full[len(oursAPI.Full)-secretLen:], false},
		{"ours with surrounding space", KindAuth, " " + ours.Full + "\n", ours.Prefix, ours.Full[len(ours.Full)-secretLen:], false},
		{"headscale 0.28 auth, - and _ inside", KindAuth, "hskey-auth-" + hsPrefix + "-" + hsSecret, hsPrefix, hsSecret, false},
		{"headscale 0.28 api, - and _ inside", KindAPI, "hskey-api-" + hsPrefix + "-" + hsSecret, hsPrefix, hsSecret, false},
		{"prefix ending in -", KindAuth, "hskey-auth-abcdefghijk--" + hsSecret, "abcdefghijk-", hsSecret, false},
		{"legacy auth 48 hex", KindAuth, legacyAuth, legacyAuth[:12], legacyAuth[12:], false},
		{"legacy api 7.32", KindAPI, legacyPrefix + "." + legacySecret, legacyPrefix, legacySecret, false},

		{"empty", KindAuth, "", "", "", true},
		{"tailscale key", KindAuth, "tskey-auth-abc", "", "", true},
		{"api key where auth expected", KindAuth, oursAPI.Full, "", "", true},
		{"auth key where api expected", KindAPI, ours.Full, "", "", true},
		{"hskey prefix only", KindAuth, "hskey-auth-" + strings.Repeat("a", 12), "", "", true},
		{"hskey secret one short", KindAuth, "hskey-auth-" + hsPrefix + "-" + hsSecret[1:], "", "", true},
		{"hskey secret one long", KindAuth, "hskey-auth-" + hsPrefix + "-" + hsSecret + "a", "", "", true},
		{"hskey no separator at 12", KindAuth, "hskey-auth-" + hsPrefix + "x" + hsSecret, "", "", true},
		{"hskey prefix 11", KindAuth, "hskey-auth-" + hsPrefix[:11] + "-" + hsSecret, "", "", true},
		{"hskey character outside base64url", KindAuth, "hskey-auth-" + hsPrefix + "-" + hsSecret[:63] + ".", "", "", true},
		{"hskey space inside", KindAPI, "hskey-api-" + hsPrefix + "-" + hsSecret[:63] + " " + "", "", "", true},
		{"legacy auth 47 hex", KindAuth, legacyAuth[:47], "", "", true},
		{"legacy auth 49 hex", KindAuth, legacyAuth + "0", "", "", true},
		{"legacy auth uppercase hex", KindAuth, strings.ToUpper(legacyAuth), "", "", true},
		{"legacy auth not hex", KindAuth, legacyAuth[:47] + "g", "", "", true},
		{"legacy auth form as api key", KindAPI, legacyAuth, "", "", true},
		{"legacy api as auth key", KindAuth, legacyPrefix + "." + legacySecret, "", "", true},
		{"legacy api prefix 6", KindAPI, legacyPrefix[:6] + "." + legacySecret, "", "", true},
		{"legacy api prefix 8", KindAPI, legacyPrefix + "x." + legacySecret, "", "", true},
		{"legacy api secret 31", KindAPI, legacyPrefix + "." + legacySecret[1:], "", "", true},
		{"legacy api secret 33", KindAPI, legacyPrefix + "." + legacySecret + "x", "", "", true},
		{"legacy api two dots", KindAPI, legacyPrefix + "." + legacySecret[:31] + ".", "", "", true},
		{"legacy api no dot", KindAPI, legacyPrefix + legacySecret, "", "", true},
		{"legacy api bad character", KindAPI, legacyPrefix[:6] + "+." + legacySecret, "", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, s, err := Parse(tc.kind, tc.in)
			if tc.wantErr {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("Parse(%q) = %q, %q, %v; want ErrMalformed", tc.in, p, s, err)
				}
				return
			}
			if err != nil || p != tc.wantPrefix || s != tc.wantSecr {
				t.Fatalf("Parse(%q) = %q, %q, %v; want %q, %q", tc.in, p, s, err, tc.wantPrefix, tc.wantSecr)
			}
		})
	}
}

// TestLegacyAuth: the stored form of a Headscale ≤0.27 pre-auth key is
// what Parse and Verify of the holder's key need.
func TestLegacyAuth(t *testing.T) {
	prefix, hash, err := LegacyAuth(legacyAuth)
	if err != nil {
		t.Fatal(err)
	}
	p, s, err := Parse(KindAuth, legacyAuth)
	if err != nil || p != prefix || !Verify(hash, s) || NeedsRehash(hash) {
		t.Fatalf("legacy key does not verify against its stored form: %q %q %v", p, prefix, err)
	}
	if Verify(hash, legacyAuth) {
		t.Fatal("the whole key verified as the secret")
	}
	for _, bad := range []string{"", legacyAuth[:47], strings.ToUpper(legacyAuth), "hskey-auth-" + hsPrefix + "-" + hsSecret} {
		if _, _, err := LegacyAuth(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("LegacyAuth(%q) = %v, want ErrMalformed", bad, err)
		}
	}
}

// TestVerifyBcrypt: hashes as Headscale stores them (bcrypt of the
// secret part) verify, and only for the right secret; the server's own
// form replaces them after one success.
func TestVerifyBcrypt(t *testing.T) {
	hashOf := func(secret string) []byte {
		h, err := bcrypt.GenerateFromPassword([]byte(secret), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	newHash, legacyHash := hashOf(hsSecret), hashOf(legacySecret)
	for _, tc := range []struct {
		name   string
		hash   []byte
		secret string
		want   bool
	}{
		{"headscale 0.28 key", newHash, hsSecret, true},
		{"legacy api key", legacyHash, legacySecret, true},
		{"other secret", newHash, legacySecret, false},
		{"last character changed", newHash, hsSecret[:63] + "A", false},
		{"whole key instead of the secret", legacyHash, legacyPrefix + "." + legacySecret, false},
		{"empty secret", newHash, "", false},
		{"truncated bcrypt hash", newHash[:len(newHash)-1], hsSecret, false},
		{"bcrypt marker only", []byte("$2a$10$"), hsSecret, false},
		{"the hash as the secret", newHash, string(newHash), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Verify(tc.hash, tc.secret); got != tc.want {
				t.Fatalf("Verify = %v, want %v", got, tc.want)
			}
		})
	}
	if !IsBcrypt(newHash) || !NeedsRehash(newHash) {
		t.Fatal("a bcrypt hash is not recognised")
	}
	// The rehash: the same secret verifies against the new form, which
	// needs no further rehash and is the form New makes.
	re := Hash(hsSecret)
	if !Verify(re, hsSecret) || NeedsRehash(re) || IsBcrypt(re) {
		t.Fatal("the rehashed form does not verify or asks for another rehash")
	}
}

func TestRedacted(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{Redacted(KindAuth, "0123456789ab"), "hskey-auth-0123456789ab-***"},
		{Redacted(KindAPI, hsPrefix), "hskey-api-" + hsPrefix + "-***"},
		{Redacted(KindAPI, legacyPrefix), legacyPrefix + "***"},
		{RedactedLegacyAuth(legacyAuth[:12]), legacyAuth[:12] + "***"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestListedPrefix(t *testing.T) {
	for _, tc := range []struct{ kind, in, want string }{
		{KindAPI, "hskey-api-" + hsPrefix + "-" + hsSecret, hsPrefix},
		{KindAPI, "hskey-api-" + hsPrefix + "-***", hsPrefix},
		{KindAPI, "hskey-api-abcdefghijk--***", "abcdefghijk-"},
		{KindAPI, "hskey-api-" + hsPrefix, hsPrefix},
		{KindAPI, hsPrefix, hsPrefix},
		{KindAPI, legacyPrefix + "." + legacySecret, legacyPrefix},
		{KindAPI, legacyPrefix + "***", legacyPrefix},
		{KindAPI, "abcdef-***", "abcdef-"},
		{KindAPI, legacyPrefix, legacyPrefix},
		{KindAuth, legacyAuth, legacyAuth[:12]},
		{KindAuth, legacyAuth[:12] + "***", legacyAuth[:12]},
		{KindAuth, "hskey-auth-0123456789ab-***", "0123456789ab"},
	} {
		if got := ListedPrefix(tc.kind, tc.in); got != tc.want {
			t.Errorf("ListedPrefix(%s, %q) = %q, want %q", tc.kind, tc.in, got, tc.want)
		}
	}
}
