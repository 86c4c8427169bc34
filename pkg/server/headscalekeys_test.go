package server_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/pkg/authkey"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/store"
	"golang.org/x/crypto/bcrypt"
)

// TestHeadscaleKeysKeepWorking puts key rows into the database the way the
// Headscale importer writes them (a bcrypt-hashed legacy and 0.28+ API key,
// a plain 48-hex pre-auth key, a bcrypt-hashed 0.28+ pre-auth key) and
// uses the keys their holders have: the API keys authenticate the REST
// API, the pre-auth keys register nodes, each bcrypt hash is replaced by
// the server's SHA-256 after its first success, and listings show the keys
// as Headscale 0.29 does (the legacy pre-auth key by its first 12
// characters, since its plaintext is not kept).
func TestHeadscaleKeysKeepWorking(t *testing.T) {
	ts := servertest.Start(t, engine(t, servertest.Options{}))
	ctx := t.Context()
	st := ts.Store()
	uid := ts.CreateUser(t, "alice")
	var owner ids.UserID
	if err := json.Unmarshal([]byte(uid), &owner); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	bcryptOf := func(secret string) []byte {
		h, err := bcrypt.GenerateFromPassword([]byte(secret), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}

	// API keys: Headscale ≤0.27's "<7>.<32>" and 0.28+'s hskey-api- with
	// "-" and "_" inside prefix and secret (early in the secret, so what
	// the harness keeps out of the log, the text after a key's last "-",
	// is long).
	legacyAPI := struct{ prefix, secret string }{"fN-2K_x", "-F2_-Ebss_BplKFE8ByMRSZ6JDNEep3n"}
	newAPI := struct{ prefix, secret string }{"Ab-_cD-_eF-_", "x-Y_" + strings.Repeat("k0Zq", 15)}
	// In creation order: the listing below expects the legacy key first.
	apiKeys := []struct{ full, prefix, secret string }{
		{legacyAPI.prefix + "." + legacyAPI.secret, legacyAPI.prefix, legacyAPI.secret},
		{"hskey-api-" + newAPI.prefix + "-" + newAPI.secret, newAPI.prefix, newAPI.secret},
	}
	for _, k := range apiKeys {
		ts.NoteSecret(k.full)
		ts.NoteSecret(k.secret)
		if _, err := st.CreateAPIKey(ctx, store.APIKey{Prefix: k.prefix, Hash: bcryptOf(k.secret), Expiration: later}); err != nil {
			t.Fatal(err)
		}
	}

	// Pre-auth keys: a plain 48-hex one (reusable) stored as the importer
	// does, and a 0.28+ single-use one with its bcrypt hash.
	plain := "2b196a5ee1110735e7f9c274eef6850790ebc08ba9d5f15d"
	ts.NoteSecret(plain)
	lp, lh, err := authkey.LegacyAuth(plain)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreatePreAuthKey(ctx, store.PreAuthKey{Prefix: lp, Hash: lh, Legacy: true, UserID: &owner, Reusable: true, Expiration: later}); err != nil {
		t.Fatal(err)
	}
	newAuthPrefix, newAuthSecret := "q_-Rs_-Tu_-V", "_a-B"+strings.Repeat("r7Wm", 15)
	newAuth := "hskey-auth-" + newAuthPrefix + "-" + newAuthSecret
	ts.NoteSecret(newAuth)
	ts.NoteSecret(newAuthSecret)
	na, err := st.CreatePreAuthKey(ctx, store.PreAuthKey{Prefix: newAuthPrefix, Hash: bcryptOf(newAuthSecret), UserID: &owner, Expiration: later})
	if err != nil {
		t.Fatal(err)
	}

	call := func(method, path, bearer string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, ts.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+bearer)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	apiHash := func(prefix string) []byte {
		t.Helper()
		k, err := st.GetAPIKeyByPrefix(ctx, prefix)
		if err != nil {
			t.Fatal(err)
		}
		return k.Hash
	}

	// A wrong secret for a known prefix is refused (and counted as a
	// failure, as for our keys), and leaves the hash alone.
	if code, _ := call("GET", "/api/v1/user", legacyAPI.prefix+"."+strings.Repeat("A", 32)); code != http.StatusUnauthorized {
		t.Fatalf("wrong legacy API secret: %d, want 401", code)
	}
	if !authkey.IsBcrypt(apiHash(legacyAPI.prefix)) {
		t.Fatal("a failed attempt changed the stored hash")
	}
	for _, k := range apiKeys {
		for round := range 2 { // the second time against the rehashed form
			if code, body := call("GET", "/api/v1/user", k.full); code != http.StatusOK || !bytes.Contains(body, []byte("alice")) {
				t.Fatalf("API key %s (round %d): %d %s", authkey.Redacted(authkey.KindAPI, k.prefix), round, code, body)
			}
			if got := apiHash(k.prefix); !bytes.Equal(got, authkey.Hash(k.secret)) {
				t.Fatalf("API key %s: stored hash %q after use, want the SHA-256 of its secret", authkey.Redacted(authkey.KindAPI, k.prefix), got)
			}
		}
	}

	for _, tc := range []struct{ name, key string }{
		{"legacy-plain", plain},
		{"legacy-plain-again", " " + plain + "\n"},
		{"headscale-new", newAuth},
	} {
		ts.RegisterNode(t, tc.key, tc.name)
	}
	k, err := st.GetPreAuthKey(ctx, na.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !k.Used || !bytes.Equal(k.Hash, authkey.Hash(newAuthSecret)) {
		t.Fatalf("single-use bcrypt key after registering: used=%v hash %q; want used and the SHA-256 of its secret", k.Used, k.Hash)
	}
	if _, err := ts.State().ValidateAuthKey(ctx, newAuth); err == nil {
		t.Fatal("the used single-use key validates again")
	}

	var keys struct {
		PreAuthKeys []struct {
			Key string `json:"key"`
		} `json:"preAuthKeys"`
	}
	if err := json.Unmarshal(ts.MustAPI(t, "GET", "/api/v1/preauthkey", ""), &keys); err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, k := range keys.PreAuthKeys {
		listed = append(listed, k.Key)
	}
	if strings.Join(listed, " ") != plain[:12]+"*** hskey-auth-"+newAuthPrefix+"-***" {
		t.Errorf("pre-auth keys listed as %q", listed)
	}
	var api struct {
		APIKeys []struct {
			Prefix string `json:"prefix"`
		} `json:"apiKeys"`
	}
	if err := json.Unmarshal(ts.MustAPI(t, "GET", "/api/v1/apikey", ""), &api); err != nil {
		t.Fatal(err)
	}
	// Listed as the text each key starts with (what the web UIs match).
	if len(api.APIKeys) != 2 || api.APIKeys[0].Prefix != legacyAPI.prefix || api.APIKeys[1].Prefix != "hskey-api-"+newAPI.prefix {
		t.Errorf("API keys listed as %+v", api.APIKeys)
	}
}
