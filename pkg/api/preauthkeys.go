package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/hsctl/headscale/pkg/authkey"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
)

// The pre-auth key handlers: /api/v1/preauthkey.

func (a *API) listKeys(r *http.Request) (any, error) {
	keys, err := a.opts.Store.ListPreAuthKeys(r.Context())
	if err != nil {
		return nil, err
	}
	filter, err := a.userFilter(r)
	if err != nil {
		return nil, err
	}
	out := []PreAuthKey{}
	for _, k := range keys {
		var u *state.User
		if k.UserID != nil {
			if filter != 0 && *k.UserID != filter {
				continue
			}
			u, _ = a.opts.State.User(*k.UserID)
		} else if filter != 0 {
			continue
		}
		out = append(out, keyJSON(k, u, ""))
	}
	return map[string]any{"preAuthKeys": out}, nil
}

func (a *API) createKey(r *http.Request) (any, error) {
	var req struct {
		User       flexID   `json:"user"`
		Reusable   bool     `json:"reusable"`
		Ephemeral  bool     `json:"ephemeral"`
		Expiration string   `json:"expiration"`
		ACLTags    []string `json:"aclTags"`
	}
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	k := store.PreAuthKey{Reusable: req.Reusable, Ephemeral: req.Ephemeral}
	var u *state.User
	if req.User != "" && req.User != "0" {
		var err error
		if u, err = a.resolveUser(string(req.User)); err != nil {
			return nil, err
		}
		uid := u.ID
		k.UserID = &uid
	}
	if err := state.ValidateTags(req.ACLTags); err != nil {
		return nil, err
	}
	k.Tags = slices.Compact(slices.Sorted(slices.Values(req.ACLTags)))
	if k.UserID == nil && len(k.Tags) == 0 {
		return nil, bad("a pre-auth key needs a user or at least one tag")
	}
	exp, err := a.expiration(req.Expiration, time.Hour)
	if err != nil {
		return nil, err
	}
	k.Expiration = exp
	gen, err := authkey.New(authkey.KindAuth)
	if err != nil {
		return nil, err
	}
	k.Prefix, k.Hash = gen.Prefix, gen.Hash
	created, err := a.opts.Store.CreatePreAuthKey(r.Context(), k)
	if err != nil {
		return nil, err
	}
	a.log.Info("pre-auth key created", "key", created.ID, "reusable", k.Reusable, "ephemeral", k.Ephemeral, "tags", k.Tags)
	return map[string]any{"preAuthKey": keyJSON(created, u, gen.Full)}, nil
}

func (a *API) keyID(r *http.Request, body bool) (ids.PreAuthKeyID, error) {
	raw := r.URL.Query().Get("id")
	if body {
		var req struct {
			ID flexID `json:"id"`
			// Older clients (headscale-ui, headscale-admin) name the key by
			// its text and user (an ID or a whole user object) instead of
			// its ID; the key text is enough.
			User json.RawMessage `json:"user"`
			Key  string          `json:"key"`
		}
		if err := decodeBody(r, &req); err != nil {
			return 0, err
		}
		raw = string(req.ID)
		if raw == "" && req.Key != "" {
			prefix := authkey.ListedPrefix(authkey.KindAuth, req.Key)
			k, err := a.opts.Store.GetPreAuthKeyByPrefix(r.Context(), prefix)
			if err != nil {
				return 0, err
			}
			// Headscale up to 0.27 looked the key up within the user
			// named beside it: a key of another user is not found.
			var owner flexID
			if len(req.User) > 0 && json.Unmarshal(req.User, &owner) == nil && owner != "" {
				u, err := a.resolveUser(string(owner))
				if err != nil {
					return 0, err
				}
				if k.UserID == nil || *k.UserID != u.ID {
					return 0, &Error{Status: http.StatusNotFound, Msg: fmt.Sprintf("pre-auth key %s does not belong to user %s", redactedKey(k), u.Name)}
				}
			}
			return k.ID, nil
		}
	}
	v, err := strconv.ParseUint(raw, 10, 64)
	if err != nil || v == 0 {
		return 0, bad("id must be a positive number, got %q", raw)
	}
	return ids.PreAuthKeyID(v), nil
}

func (a *API) expireKey(r *http.Request) (any, error) {
	kid, err := a.keyID(r, true)
	if err != nil {
		return nil, err
	}
	if err := a.opts.Store.ExpirePreAuthKey(r.Context(), kid, a.opts.Now()); err != nil {
		return nil, err
	}
	a.log.Info("pre-auth key expired", "key", kid)
	return struct{}{}, nil
}

func (a *API) deleteKey(r *http.Request) (any, error) {
	kid, err := a.keyID(r, false)
	if err != nil {
		return nil, err
	}
	if err := a.opts.State.DeletePreAuthKey(r.Context(), kid); err != nil {
		return nil, err
	}
	a.log.Info("pre-auth key deleted", "key", kid)
	return struct{}{}, nil
}
