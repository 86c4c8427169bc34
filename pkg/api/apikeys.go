package api

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/hsctl/headscale/pkg/authkey"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/store"
)

// apiKeyJSON is an API key as listed: never the secret.
func apiKeyJSON(k store.APIKey) map[string]any {
	return map[string]any{
		"id": k.ID.String(),
		// The key's leading text: UIs find their own key in the list by
		// checking that it starts with this.
		"prefix":     listedAPIPrefix(k.Prefix),
		"expiration": ts(k.Expiration),
		"createdAt":  ts(k.CreatedAt),
		"lastSeen":   ts(k.LastSeen),
	}
}

// listedAPIPrefix is the text a key starts with: "hskey-api-<prefix>", or
// for a legacy Headscale key ("<7 characters>.<secret>") the bare prefix.
func listedAPIPrefix(prefix string) string {
	if authkey.LegacyAPIPrefix(prefix) {
		return prefix
	}
	return "hskey-api-" + prefix
}

func (a *API) listAPIKeys(r *http.Request) (any, error) {
	keys, err := a.opts.Store.ListAPIKeys(r.Context())
	if err != nil {
		return nil, err
	}
	out := make([]map[string]any, 0, len(keys))
	for _, k := range keys {
		out = append(out, apiKeyJSON(k))
	}
	return map[string]any{"apiKeys": out}, nil
}

// DefaultAPIKeyLifetime is Headscale's default for `apikeys create`.
const DefaultAPIKeyLifetime = 90 * 24 * time.Hour

func (a *API) createAPIKey(r *http.Request) (any, error) {
	var req struct {
		Expiration string `json:"expiration"`
	}
	if r.ContentLength != 0 {
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
	}
	exp, err := a.expiration(req.Expiration, DefaultAPIKeyLifetime)
	if err != nil {
		return nil, err
	}
	gen, err := authkey.New(authkey.KindAPI)
	if err != nil {
		return nil, err
	}
	k, err := a.opts.Store.CreateAPIKey(r.Context(), store.APIKey{Prefix: gen.Prefix, Hash: gen.Hash, Expiration: exp})
	if err != nil {
		return nil, err
	}
	a.log.Info("API key created", "key", authkey.Redacted(authkey.KindAPI, k.Prefix), "expiration", exp)
	return map[string]any{"apiKey": gen.Full}, nil
}

// findAPIKey resolves {prefix} or {id} (either may be given).
func (a *API) findAPIKey(ctx context.Context, prefix, id string) (store.APIKey, error) {
	switch {
	case id != "" && id != "0":
		n, err := strconv.ParseUint(id, 10, 64)
		if err != nil {
			return store.APIKey{}, bad("id must be a number, got %q", id)
		}
		return a.opts.Store.GetAPIKey(ctx, ids.APIKeyID(n))
	case prefix != "":
		// Accept a full key or a listed form too: hskey-api-<12>-*** (ours,
		// Headscale 0.28+), <7>*** (a legacy key as Headscale 0.29 lists it).
		prefix = authkey.ListedPrefix(authkey.KindAPI, prefix)
		return a.opts.Store.GetAPIKeyByPrefix(ctx, prefix)
	}
	return store.APIKey{}, bad("give the key's prefix or id")
}

func (a *API) expireAPIKey(r *http.Request) (any, error) {
	var req struct {
		Prefix string `json:"prefix"`
		ID     flexID `json:"id"`
	}
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	k, err := a.findAPIKey(r.Context(), req.Prefix, string(req.ID))
	if err != nil {
		return nil, err
	}
	if err := a.opts.Store.ExpireAPIKey(r.Context(), k.ID, a.opts.Now()); err != nil {
		return nil, err
	}
	a.log.Info("API key expired", "key", authkey.Redacted(authkey.KindAPI, k.Prefix))
	return map[string]any{}, nil
}

func (a *API) deleteAPIKey(r *http.Request) (any, error) {
	k, err := a.findAPIKey(r.Context(), r.PathValue("prefix"), r.URL.Query().Get("id"))
	if err != nil {
		return nil, err
	}
	if err := a.opts.Store.DeleteAPIKey(r.Context(), k.ID); err != nil {
		return nil, err
	}
	a.log.Info("API key deleted", "key", authkey.Redacted(authkey.KindAPI, k.Prefix))
	return map[string]any{}, nil
}

// Authenticate wraps the API for the public listener: every request must
// carry `Authorization: Bearer <API key>` of a key that exists and has not
// expired; anything else gets 401 and no data. A client that keeps failing
// with a wrong key (KeyFailureBurst) is slowed: answered 429 with Retry-After, its key not
// even looked at, until its budget refills. The unix socket does not use
// it (local trust).
func (a *API) Authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		client := a.clientAddr(r)
		if wait, blocked := a.failures.Blocked(client); blocked {
			a.tooManyFailures(w, r, client, wait)
			return
		}
		if err := a.checkBearer(r); err != nil {
			// Only a key that was presented and is wrong counts: it cost a
			// database look-up and may be a guess.
			if r.Header.Get("Authorization") != "" {
				if wait, blocked := a.failures.Fail(client); blocked {
					a.tooManyFailures(w, r, client, wait)
					return
				}
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="headscale"`)
			problem(w, http.StatusUnauthorized, err.Error())
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (a *API) tooManyFailures(w http.ResponseWriter, r *http.Request, client netip.Addr, wait time.Duration) {
	secs := max(1, int(math.Ceil(wait.Seconds())))
	a.limits.Hit("api_key_failures", "API request refused: too many failed API key attempts from this client, answered 429",
		"remote", client.String(), "retry_after_s", secs)
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	problem(w, http.StatusTooManyRequests, fmt.Sprintf("too many requests with a missing or wrong API key from this address: retry in %d s with a valid key", secs))
}

// clientAddr is who made the request, for slowing repeated failures: the
// connection's address, or the client a trusted proxy names
// (trusted_proxies, pkg/clientaddr). A request not over TCP (the gRPC
// API's in-process calls without a peer) is one shared client.
func (a *API) clientAddr(r *http.Request) netip.Addr {
	if addr := a.opts.ClientAddr.Addr(r); addr.IsValid() {
		return addr
	}
	return netip.IPv6Unspecified()
}

func (a *API) checkBearer(r *http.Request) error {
	h := r.Header.Get("Authorization")
	if h == "" {
		return errors.New("missing Authorization header: send Authorization: Bearer <API key> (headscale apikeys create)")
	}
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		//lint:ignore ST1005 the message starts with the header's name, as clients see it
		return errors.New("Authorization header must be Bearer <API key>")
	}
	prefix, secret, err := authkey.Parse(authkey.KindAPI, tok)
	if err != nil {
		return errors.New("invalid API key")
	}
	k, err := a.opts.Store.GetAPIKeyByPrefix(r.Context(), prefix)
	if err != nil || !authkey.Verify(k.Hash, secret) {
		return errors.New("invalid API key")
	}
	if authkey.NeedsRehash(k.Hash) {
		// Imported from Headscale with a bcrypt hash: from now on the
		// cheap check, so bcrypt runs once for this key.
		if err := a.opts.Store.RehashAPIKey(context.WithoutCancel(r.Context()), k.ID, k.Hash, authkey.Hash(secret)); err != nil {
			a.log.Warn("replacing an imported API key's bcrypt hash", "key", authkey.Redacted(authkey.KindAPI, k.Prefix), "err", err)
		} else {
			a.log.Info("imported API key's bcrypt hash replaced by SHA-256 on first use", "key", authkey.Redacted(authkey.KindAPI, k.Prefix))
		}
	}
	now := a.opts.Now()
	if !k.Expiration.IsZero() && !now.Before(k.Expiration) {
		return errors.New("API key expired")
	}
	// last-seen is informational: at most one write a minute per key.
	if now.Sub(k.LastSeen) > time.Minute {
		if err := a.opts.Store.TouchAPIKey(context.WithoutCancel(r.Context()), k.ID, now); err != nil {
			a.log.Warn("recording API key use", "err", err)
		}
	}
	return nil
}
