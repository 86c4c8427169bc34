package oidclogin

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

func TestClaimsDecode(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want claims
	}{
		{"standard", `{"email":"a@x.test","email_verified":true,"preferred_username":"alice","name":"Alice","picture":"https://x.test/a.png","groups":["dev","ops"]}`,
			claims{Email: "a@x.test", EmailVerified: true, PreferredUsername: "alice", Name: "Alice", Picture: "https://x.test/a.png", Groups: flexGroup{"dev", "ops"}}},
		{"verified as a string", `{"email_verified":"true"}`, claims{EmailVerified: true}},
		{"unverified as a string", `{"email_verified":"false"}`, claims{}},
		{"one group as a string", `{"groups":"dev"}`, claims{Groups: flexGroup{"dev"}}},
		{"groups with non-strings dropped", `{"groups":["dev",7,null,""]}`, claims{Groups: flexGroup{"dev"}}},
		{"groups as an object: none", `{"groups":{"dev":true}}`, claims{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got claims
			if err := json.Unmarshal([]byte(tc.in), &got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestClaimsMerge(t *testing.T) {
	c := claims{Email: "old@x.test", Name: "From token", Groups: flexGroup{"a"}}
	c.merge(claims{Email: "new@x.test", EmailVerified: true, Picture: "p"})
	want := claims{Email: "new@x.test", EmailVerified: true, Name: "From token", Picture: "p", Groups: flexGroup{"a"}}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got %+v, want %+v", c, want)
	}
}

func TestAllowed(t *testing.T) {
	alice := Identity{Email: "Alice@Example.com", EmailVerified: true, Groups: []string{"staff", "vpn"}}
	unverified := alice
	unverified.EmailVerified = false
	noEmail := Identity{Groups: []string{"vpn"}}
	tests := []struct {
		name string
		cfg  Config
		id   Identity
		ok   bool
	}{
		{"no lists", Config{}, noEmail, true},
		{"domain", Config{AllowedDomains: []string{"example.com"}}, alice, true},
		{"other domain", Config{AllowedDomains: []string{"example.org"}}, alice, false},
		{"user", Config{AllowedUsers: []string{"alice@example.com"}}, alice, true},
		{"other user", Config{AllowedUsers: []string{"bob@example.com"}}, alice, false},
		{"group", Config{AllowedGroups: []string{"vpn"}}, alice, true},
		{"other group", Config{AllowedGroups: []string{"admins"}}, alice, false},
		{"all three", Config{AllowedDomains: []string{"example.com"}, AllowedUsers: []string{"alice@example.com"}, AllowedGroups: []string{"staff"}}, alice, true},
		{"unverified, required", Config{AllowedDomains: []string{"example.com"}, EmailVerifiedRequired: true}, unverified, false},
		{"unverified, not required", Config{AllowedDomains: []string{"example.com"}}, unverified, true},
		{"unverified, groups only", Config{AllowedGroups: []string{"vpn"}, EmailVerifiedRequired: true}, unverified, true},
		{"no email, by domain", Config{AllowedDomains: []string{"example.com"}}, noEmail, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := New(tc.cfg).allowed(tc.id)
			var refused *Refused
			if tc.ok != (err == nil) || (err != nil && !errors.As(err, &refused)) {
				t.Errorf("allowed = %v; want ok=%v (or *Refused)", err, tc.ok)
			}
		})
	}
}

func TestCallbackPath(t *testing.T) {
	for in, want := range map[string]string{
		"https://hs.example.com/oidc/callback":        "/oidc/callback",
		"http://127.0.0.1:8080/oidc/callback?x=1":     "/oidc/callback",
		"https://hs.example.com/prefix/oidc/callback": "/prefix/oidc/callback",
		"https://hs.example.com":                      "/",
		"not a url":                                   "/",
	} {
		if got := callbackPath(in); got != want {
			t.Errorf("callbackPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestProviderID(t *testing.T) {
	for _, tc := range []struct{ iss, sub, want string }{
		{"https://sso.example.com", "1234", "https://sso.example.com/1234"},
		{"https://sso.example.com/", "1234", "https://sso.example.com/1234"},
		{"https://sso.example.com/realms/x/", "/abc", "https://sso.example.com/realms/x/abc"},
		{"http://127.0.0.1:5556/dex", "Cg0wLTM4NS0yODA4OS0wEgRtb2Nr", "http://127.0.0.1:5556/dex/Cg0wLTM4NS0yODA4OS0wEgRtb2Nr"},
		{"oidc", "sub", "oidc/sub"},
		{"", "sub", "sub"},
		{"https://sso.example.com", "", "https://sso.example.com"},
	} {
		if got := (Identity{Issuer: tc.iss, Subject: tc.sub}).ProviderID(); got != tc.want {
			t.Errorf("ProviderID(%q, %q) = %q, want %q", tc.iss, tc.sub, got, tc.want)
		}
	}
}
