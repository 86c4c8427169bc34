package oidclogin

import (
	"context"
	"crypto/subtle"
	"errors"
	"html/template"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Device describes the machine a pending registration is for, as the
// confirmation page shows it.
type Device struct {
	// Hostname is what the client reported.
	Hostname string
	// Machine is the machine key's short fingerprint.
	Machine string
}

// Registrations is what the login pages need of the pending
// registrations (the server adapts its registry to it).
type Registrations interface {
	// Device describes the pending registration authID; false when it is
	// unknown, expired or no longer pending.
	Device(authID string) (Device, bool)
	// Approve completes the registration authID for the person id
	// (creating or updating their user), and returns the name of the user
	// the node now belongs to and whether it waits for an administrator's
	// approval (node.require_approval). Errors are shown to the person;
	// wrap a *Refused for one that is their own (such as a tag they may
	// not use).
	Approve(ctx context.Context, authID string, id Identity) (user string, waiting bool, err error)
}

// SSHChecks is what the login pages need of the pending SSH "check"
// approvals (the server adapts its sshcheck registry to it).
type SSHChecks interface {
	// Approve approves the pending check checkID if the person id owns
	// its source node, and returns a description of the connection for
	// the page. Wrap a *Refused for a person who may not approve it.
	Approve(ctx context.Context, checkID string, id Identity) (string, error)
}

// Keys given to Client.Start say what a login is for.
const (
	keyRegister = "register:"
	keySSH      = "ssh:"
)

// confirmTimeout is how long the confirmation page stays valid.
const confirmTimeout = 10 * time.Minute

// confirmCookie carries the confirmation token, which the form repeats:
// a request from another site can send the cookie but cannot know the
// token.
const confirmCookie = "hs_oidc_confirm"

// Pages serves the browser's side of an OIDC registration: the redirect
// to the provider, the callback, and the confirmation form. Create it with
// NewPages.
type Pages struct {
	c    *Client
	regs Registrations
	ssh  SSHChecks // nil: SSH checks are not approved by logging in
	// confirmPath is the path prefix the form posts to, ending in "/"
	// (the auth ID follows).
	confirmPath string

	mu       sync.Mutex
	confirms map[string]*confirmation // by token
}

// confirmation is a login verified by the provider waiting for the person
// to confirm the device.
type confirmation struct {
	authID  string
	id      Identity
	created time.Time
}

// NewPages returns the pages for logins through c completing regs, and
// approving ssh's checks when ssh is not nil. The confirmation form posts
// to confirmPath + auth ID (the server routes POST <confirmPath>{id} to
// Confirm).
func NewPages(c *Client, regs Registrations, ssh SSHChecks, confirmPath string) *Pages {
	return &Pages{c: c, regs: regs, ssh: ssh, confirmPath: confirmPath, confirms: map[string]*confirmation{}}
}

// Login sends the browser that opened the registration link of authID to
// the provider.
func (p *Pages) Login(w http.ResponseWriter, r *http.Request, authID string) {
	p.login(w, r, keyRegister+authID)
}

// SSHLogin sends the browser that opened the link of SSH check checkID to
// the provider; back from it, the check is approved if the person owns
// the connection's source node.
func (p *Pages) SSHLogin(w http.ResponseWriter, r *http.Request, checkID string) {
	if p.ssh == nil {
		page(w, http.StatusNotFound, "Not available", "SSH checks are approved by an administrator on this server.")
		return
	}
	p.login(w, r, keySSH+checkID)
}

func (p *Pages) login(w http.ResponseWriter, r *http.Request, key string) {
	u, err := p.c.Start(r.Context(), w, key)
	if err != nil {
		p.c.log.Warn("cannot start an OIDC login", "err", err)
		page(w, http.StatusServiceUnavailable, "The identity provider cannot be reached",
			"This server could not reach its identity provider. Try again in a minute; if it persists, tell the administrator.")
		return
	}
	setPageHeaders(w)
	http.Redirect(w, r, u, http.StatusFound)
}

// Callback handles GET /oidc/callback: it finishes the login and shows the
// confirmation form for the device.
func (p *Pages) Callback(w http.ResponseWriter, r *http.Request) {
	key, id, err := p.c.Finish(r.Context(), w, r)
	var bad *BadRequest
	var refused *Refused
	switch {
	case errors.As(err, &bad):
		page(w, http.StatusBadRequest, "This login cannot be completed", bad.Reason)
		return
	case errors.As(err, &refused):
		p.c.log.Info("OIDC login refused", "issuer", id.Issuer, "reason", refused.Reason)
		page(w, http.StatusForbidden, "You may not log in to this server", refused.Reason)
		return
	case err != nil:
		p.c.log.Warn("OIDC login failed", "err", err)
		page(w, http.StatusBadGateway, "The identity provider failed",
			"The login could not be checked with the identity provider. Start again from the link your client printed.")
		return
	}
	if checkID, ok := strings.CutPrefix(key, keySSH); ok && p.ssh != nil {
		what, err := p.ssh.Approve(r.Context(), checkID, id)
		var refused *Refused
		switch {
		case errors.As(err, &refused):
			page(w, http.StatusForbidden, "You may not approve this connection", refused.Reason)
		case err != nil:
			page(w, http.StatusNotFound, "This SSH check is over", "The connection was decided or has expired meanwhile ("+truncate(err.Error(), 200)+"). Try the SSH connection again.")
		default:
			page(w, http.StatusOK, "SSH connection approved", "Approved: "+what+". The connection proceeds within moments; you can close this window.")
		}
		return
	}
	authID, ok := strings.CutPrefix(key, keyRegister)
	if !ok {
		page(w, http.StatusBadRequest, "This login cannot be completed", "The login is for nothing this server knows.")
		return
	}
	dev, ok := p.regs.Device(authID)
	if !ok {
		page(w, http.StatusNotFound, "This registration is over",
			"The registration this login was for has expired or was completed meanwhile. Run `tailscale up` again on the machine.")
		return
	}
	token := randomString()
	if err := p.addConfirm(r.Context(), token, &confirmation{authID: authID, id: id, created: p.c.now()}); err != nil {
		if !errors.Is(err, errTooManyConfirms) {
			p.c.log.Warn("keeping an OIDC login for confirmation failed", "err", err)
		}
		page(w, http.StatusServiceUnavailable, "Too many logins", "Too many logins are waiting to be confirmed, or the server cannot keep this one. Try again in a few minutes.")
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: confirmCookie, Value: token, Path: p.confirmPath, MaxAge: int(confirmTimeout / time.Second),
		HttpOnly: true, Secure: r.TLS != nil || isHTTPS(p.c.cfg.RedirectURL), SameSite: http.SameSiteStrictMode,
	})
	setPageHeaders(w)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	confirmPage.Execute(w, confirmData{
		Action:   p.confirmPath + authID,
		Token:    token,
		Hostname: dev.Hostname,
		Machine:  dev.Machine,
		Who:      describe(id),
	})
}

// Confirm handles POST <confirmPath>{id}: the person confirmed the
// device, so the node is registered for them.
func (p *Pages) Confirm(w http.ResponseWriter, r *http.Request) {
	authID := r.PathValue("id")
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if err := r.ParseForm(); err != nil {
		page(w, http.StatusBadRequest, "Bad confirmation", "The confirmation form could not be read.")
		return
	}
	form := r.PostForm.Get("token")
	ck, err := r.Cookie(confirmCookie)
	if err != nil || form == "" || subtle.ConstantTimeCompare([]byte(ck.Value), []byte(form)) != 1 {
		page(w, http.StatusForbidden, "Confirmation refused",
			"This confirmation did not come from the page this server showed you (its token is missing or does not match). Start again from the link your client printed.")
		return
	}
	cf, err := p.takeConfirm(r.Context(), form)
	if err != nil {
		p.c.log.Warn("reading an OIDC login waiting for confirmation failed", "err", err)
		page(w, http.StatusServiceUnavailable, "Confirmation failed", "The server could not read this confirmation. Start again from the link your client printed.")
		return
	}
	if cf == nil || cf.authID != authID || p.c.now().Sub(cf.created) > confirmTimeout {
		page(w, http.StatusBadRequest, "Confirmation expired",
			"This confirmation is unknown, was used already or has expired. Start again from the link your client printed.")
		return
	}
	http.SetCookie(w, &http.Cookie{Name: confirmCookie, Path: p.confirmPath, MaxAge: -1, HttpOnly: true})
	user, waiting, err := p.regs.Approve(r.Context(), authID, cf.id)
	var refused *Refused
	switch {
	case errors.As(err, &refused):
		page(w, http.StatusForbidden, "The device cannot be registered", refused.Reason)
		return
	case err != nil:
		p.c.log.Warn("completing an OIDC registration failed", "err", err)
		page(w, http.StatusConflict, "The device was not registered",
			"The registration could not be completed ("+truncate(err.Error(), 200)+"). Run `tailscale up` again on the machine.")
		return
	}
	if waiting {
		page(w, http.StatusOK, "Device registered, waiting for approval",
			"The machine is registered as "+user+"'s. An administrator must approve it before it can reach other devices. You can close this window.")
		return
	}
	page(w, http.StatusOK, "Device registered",
		"The machine is registered as "+user+"'s and connects within moments. You can close this window.")
}

// describe names the person for the confirmation page.
func describe(id Identity) string {
	switch {
	case id.Name != "" && id.Email != "":
		return id.Name + " (" + id.Email + ")"
	case id.Email != "":
		return id.Email
	case id.Username != "":
		return id.Username
	}
	return id.Subject
}

func isHTTPS(u string) bool { return len(u) > 8 && u[:8] == "https://" }

// setPageHeaders keeps the pages out of caches, frames and referrers (the
// URLs carry auth IDs and codes).
func setPageHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
}

// page writes a message page with status.
func page(w http.ResponseWriter, status int, title, text string) {
	setPageHeaders(w)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	messagePage.Execute(w, struct{ Title, Text string }{title, text})
}

type confirmData struct {
	Action, Token, Hostname, Machine, Who string
}

const style = `<style>
body{font-family:system-ui,sans-serif;max-width:40em;margin:2em auto;padding:0 1em;line-height:1.5;color:#222}
code{background:#f4f4f4;padding:.1em .3em}
button{font-size:1em;padding:.4em 1.2em}
</style>`

var (
	messagePage = template.Must(template.New("message").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{{.Title}}</title>` + style + `</head>
<body><h1>{{.Title}}</h1><p>{{.Text}}</p></body></html>
`))
	confirmPage = template.Must(template.New("confirm").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Register this device?</title>` + style + `</head>
<body><h1>Register this device?</h1>
<p>You are logged in as <strong>{{.Who}}</strong>.</p>
<p>A machine asks to join this tailnet as yours:</p>
<ul><li>Host name: <code>{{if .Hostname}}{{.Hostname}}{{else}}(none reported){{end}}</code></li>
<li>Machine key: <code>{{.Machine}}</code></li></ul>
<p>Register it only if you just ran <code>tailscale up</code> (or logged in from the app) on that machine.</p>
<form method="post" action="{{.Action}}">
<input type="hidden" name="token" value="{{.Token}}">
<button type="submit">Register the device</button>
</form></body></html>
`))
)
