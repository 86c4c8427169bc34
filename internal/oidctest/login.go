package oidctest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"html/template"
	"log/slog"
	"net/http"

	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

const (
	// loginPath is the login page; the library redirects the browser there
	// with the auth request's ID (opClient.LoginURL).
	loginPath        = "/login"
	authRequestParam = "authRequestID"
	browserCookie    = "oidctest_browser"
	sessionCookie    = "oidctest_session"
)

// loginHandler is the provider's login UI: a form for username and
// password, bound to one auth request and to the browser's cookie.
//
// CSRF: the first visit gives the browser a random cookie; each form's
// hidden csrf field is an HMAC of that cookie and the auth request's ID,
// so a post without the cookie (or from another browser) is refused,
// while two tabs of one browser, each with its own login, both work.
type loginHandler struct {
	p *Provider
}

// csrfToken binds a form to the browser's cookie and an auth request.
func (h *loginHandler) csrfToken(browserID, authReqID string) string {
	mac := hmac.New(sha256.New, h.p.csrfKey[:])
	mac.Write([]byte(browserID))
	mac.Write([]byte{0})
	mac.Write([]byte(authReqID))
	return hex.EncodeToString(mac.Sum(nil))
}

var loginPage = template.Must(template.New("login").Parse(`<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Sign in - oidctest</title></head>
<body>
<h1>Sign in</h1>
{{if .Error}}<p role="alert">{{.Error}}</p>{{end}}
<form method="post" action="{{.Action}}">
<input type="hidden" name="{{.IDParam}}" value="{{.ID}}">
<input type="hidden" name="csrf" value="{{.CSRF}}">
<label>Username <input type="text" name="username" value="{{.Username}}" autocomplete="username" required></label>
<label>Password <input type="password" name="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button>
</form>
</body>
</html>
`))

type loginData struct {
	Action, IDParam, ID, CSRF, Username, Error string
}

func (h *loginHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		h.show(w, r)
	case http.MethodPost:
		h.submit(w, r)
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// show answers the library's redirect to the login page: complete the
// request at once from an SSO session, refuse prompt=none, or show the
// form.
func (h *loginHandler) show(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get(authRequestParam)
	req, ok := h.p.store.authRequestSnapshot(id)
	if !ok {
		http.Error(w, errUnknownAuthRequest.Error(), http.StatusBadRequest)
		return
	}
	if req.done {
		http.Error(w, errAuthRequestDone.Error(), http.StatusBadRequest)
		return
	}
	if h.p.store.sso && !req.forcesLogin() {
		if c, err := r.Cookie(sessionCookie); err == nil {
			done, err := h.p.store.completeBySession(id, c.Value)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			if done {
				http.Redirect(w, r, h.p.authCallbackURL(r.Context(), id), http.StatusFound)
				return
			}
		}
	}
	if req.promptNone() {
		// Back to the relying party with login_required, as the spec says.
		op.AuthRequestError(w, r, &req, oidc.ErrLoginRequired(), h.p.op)
		return
	}
	browserID := ""
	if c, err := r.Cookie(browserCookie); err == nil && c.Value != "" {
		browserID = c.Value
	} else {
		browserID = randomID()
		http.SetCookie(w, &http.Cookie{
			Name: browserCookie, Value: browserID, Path: loginPath,
			HttpOnly: true, SameSite: http.SameSiteLaxMode,
		})
	}
	h.render(w, http.StatusOK, loginData{ID: id, CSRF: h.csrfToken(browserID, id), Username: req.loginHint})
}

// submit checks the posted form: the CSRF cookie, then the password.
func (h *loginHandler) submit(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "cannot parse the login form: "+err.Error(), http.StatusBadRequest)
		return
	}
	id := r.PostForm.Get(authRequestParam)
	cookie, err := r.Cookie(browserCookie)
	if err != nil || cookie.Value == "" || !hmac.Equal([]byte(h.csrfToken(cookie.Value, id)), []byte(r.PostForm.Get("csrf"))) {
		http.Error(w, "the login form's cookie is missing or does not match: enable cookies and load the form again", http.StatusForbidden)
		return
	}
	username := r.PostForm.Get("username")
	subject, err := h.p.store.checkPassword(id, username, r.PostForm.Get("password"))
	switch {
	case errors.Is(err, errBadCredentials):
		slog.Info("oidctest: login refused", "user", username)
		h.render(w, http.StatusUnauthorized, loginData{ID: id, CSRF: r.PostForm.Get("csrf"), Username: username, Error: "Invalid username or password."})
		return
	case err != nil:
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if h.p.store.sso {
		http.SetCookie(w, &http.Cookie{
			Name: sessionCookie, Value: h.p.store.newSession(subject), Path: "/",
			HttpOnly: true, SameSite: http.SameSiteLaxMode,
		})
	}
	http.Redirect(w, r, h.p.authCallbackURL(r.Context(), id), http.StatusFound)
}

func (h *loginHandler) render(w http.ResponseWriter, status int, d loginData) {
	d.Action = loginPath
	d.IDParam = authRequestParam
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if err := loginPage.Execute(w, d); err != nil {
		slog.Error("oidctest: rendering the login page", "err", err)
	}
}
