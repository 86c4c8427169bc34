package api

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
)

// The user handlers: /api/v1/user.

func (a *API) listUsers(r *http.Request) (any, error) {
	q := r.URL.Query()
	users := []*User{}
	for _, u := range a.opts.State.Users() {
		if v := q.Get("id"); v != "" && v != u.ID.String() {
			continue
		}
		if v := q.Get("name"); v != "" && v != u.Name {
			continue
		}
		if v := q.Get("email"); v != "" && v != u.Email {
			continue
		}
		users = append(users, userJSON(u))
	}
	return map[string]any{"users": users}, nil
}

func (a *API) createUser(r *http.Request) (any, error) {
	var req struct {
		Name        string `json:"name"`
		DisplayName string `json:"displayName"`
		Email       string `json:"email"`
		PictureURL  string `json:"pictureUrl"`
	}
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	if strings.TrimSpace(req.Name) == "" {
		return nil, bad("name is required")
	}
	u, err := a.opts.State.CreateUser(r.Context(), store.User{Name: req.Name, DisplayName: req.DisplayName, Email: req.Email, ProfilePicURL: req.PictureURL})
	if err != nil {
		return nil, err
	}
	a.log.Info("user created", "user", u.ID, "name", u.Name)
	return map[string]any{"user": userJSON(u)}, nil
}

func (a *API) renameUser(r *http.Request) (any, error) {
	uid, err := pathID[ids.UserID](r, "id")
	if err != nil {
		return nil, err
	}
	u, err := a.opts.State.RenameUser(r.Context(), uid, r.PathValue("name"))
	if err != nil {
		return nil, err
	}
	return map[string]any{"user": userJSON(u)}, nil
}

func (a *API) deleteUser(r *http.Request) (any, error) {
	uid, err := pathID[ids.UserID](r, "id")
	if err != nil {
		return nil, err
	}
	if err := a.opts.State.DeleteUser(r.Context(), uid); err != nil {
		return nil, err
	}
	a.log.Info("user deleted", "user", uid)
	return struct{}{}, nil
}

// resolveUser finds a user by ID or, failing that, by name.
func (a *API) resolveUser(ref string) (*state.User, error) {
	if n, err := strconv.ParseUint(ref, 10, 64); err == nil {
		if u, ok := a.opts.State.User(ids.UserID(n)); ok {
			return u, nil
		}
	}
	for _, u := range a.opts.State.Users() {
		if u.Name == ref {
			return u, nil
		}
	}
	return nil, &Error{Status: http.StatusNotFound, Msg: fmt.Sprintf("user %q not found", ref)}
}

// userFilter reads the optional ?user= (a name or an ID) of a list
// request: the user's ID, or 0 when the request names none.
func (a *API) userFilter(r *http.Request) (ids.UserID, error) {
	ref := r.URL.Query().Get("user")
	if ref == "" {
		return 0, nil
	}
	u, err := a.resolveUser(ref)
	if err != nil {
		return 0, err
	}
	return u.ID, nil
}
