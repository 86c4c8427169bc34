package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/oidctest"
	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/server"
	"tailscale.com/types/key"
)

// oidcYAML configures OIDC against idp.
func oidcYAML(idp *oidctest.Provider, onlyIfAvailable bool) string {
	return fmt.Sprintf("oidc:\n  issuer: %s\n  client_id: hs\n  client_secret: oidcTestClientSecret0123\n  only_start_if_oidc_is_available: %v\n",
		idp.Issuer(), onlyIfAvailable)
}

// TestOIDCProviderDownAtStart: with only_start_if_oidc_is_available the
// server refuses to start while its provider cannot be reached, and says
// which key to change; without it the server starts (start-up does not
// wait for the provider), the login page says the provider cannot be
// reached, and logins go to the provider once it answers.
func TestOIDCProviderDownAtStart(t *testing.T) {
	idp := oidctest.New(t, oidctest.Options{
		Clients: []oidctest.Client{{ID: "hs", Secret: "oidcTestClientSecret0123", RedirectURIGlobs: []string{"http://127.0.0.1:*/oidc/callback"}}},
	})

	t.Run("only_start_if_oidc_is_available: true", func(t *testing.T) {
		opts := servertest.Options{ExtraYAML: oidcYAML(idp, true)}
		path := servertest.WriteConfig(t, &opts)
		cfg, _, err := config.Load(config.LoadOptions{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		s, err := server.New(ctx, cfg, slog.New(slog.DiscardHandler), "test")
		if err == nil {
			s.Close()
			t.Fatal("the server started without its identity provider")
		}
		if !strings.Contains(err.Error(), "only_start_if_oidc_is_available") || !strings.Contains(err.Error(), "cannot be reached") {
			t.Errorf("error %q; want it to say the provider cannot be reached and name the key", err)
		}
	})

	t.Run("only_start_if_oidc_is_available: false", func(t *testing.T) {
		ts := servertest.Start(t, servertest.Options{ExtraYAML: oidcYAML(idp, false)})
		c := ts.WebClient(t, key.NewMachine(), "laptop")
		authURL := c.Start(t)
		page := ts.URL + "/register/" + servertest.AuthID(authURL)
		noRedirect := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		get := func() (int, string, string) {
			resp, err := noRedirect.Get(page)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, resp.Header.Get("Location"), string(b)
		}
		if code, _, body := get(); code != http.StatusServiceUnavailable || !strings.Contains(body, "cannot be reached") {
			t.Errorf("login page with the provider down: %d %s", code, body)
		}
		tstest.WaitFor(t, 30*time.Second, "the log to say the provider cannot be reached", func() error {
			if !strings.Contains(ts.Logs(), "the identity provider cannot be reached") {
				return fmt.Errorf("not logged yet")
			}
			return nil
		})
		if err := idp.Serve(); err != nil {
			t.Fatal(err)
		}
		code, loc, body := get()
		if code != http.StatusFound || !strings.HasPrefix(loc, idp.Issuer()+"/") {
			t.Fatalf("login page with the provider back: %d to %q %s", code, loc, body)
		}
		for _, want := range []string{"nonce=", "state=", "client_id=hs"} {
			if !strings.Contains(loc, want) {
				t.Errorf("the redirect to the provider lacks %s: %s", want, loc)
			}
		}
	})
}
