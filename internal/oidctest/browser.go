package oidctest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// maxLoginSteps bounds the requests of one Login (redirects and the form).
const maxLoginSteps = 20

// LoginError is Login's error when the provider (or a page on the way)
// answered something other than a redirect or the login form: a refused
// password, a redirect URI the client may not use, a server error.
type LoginError struct {
	// URL is the page that answered.
	URL string
	// Status is its HTTP status.
	Status int
	// Message is the page's error text: the login form's alert, or the
	// start of the body.
	Message string
}

// Error says which page answered what.
func (e *LoginError) Error() string {
	return fmt.Sprintf("oidctest login: %s answered %d: %s", e.URL, e.Status, e.Message)
}

// Login does what a browser does from authURL until the provider sends it
// back to the relying party: it follows redirects (from wherever authURL
// is, for example a control server's registration page, to the provider),
// fills the provider's login form (found by parsing the HTML: the form with
// a password field; its hidden fields are kept) with username and
// password, posts it, and follows the provider's redirects. It returns the
// first redirect that leaves the provider (the relying party's callback,
// with code and state, or an error such as login_required) without
// following it; its body is closed, and its Location is absolute. With an
// SSO session (Options.SSO) the form may not be shown at all.
//
// client is used as a browser: its cookie jar carries the provider's
// cookies (a fresh jar is used for this call if it has none), its
// CheckRedirect is not used. A refused login or any other page is a
// *LoginError.
func (p *Provider) Login(ctx context.Context, client *http.Client, authURL, username, password string) (*http.Response, error) {
	origin, err := url.Parse(p.issuer)
	if err != nil {
		return nil, err
	}
	browser := *client
	if browser.Jar == nil {
		jar, err := cookiejar.New(nil)
		if err != nil {
			return nil, err
		}
		browser.Jar = jar
	}
	browser.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	onProvider := func(u *url.URL) bool { return u.Scheme == origin.Scheme && u.Host == origin.Host }

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, authURL, nil)
	if err != nil {
		return nil, fmt.Errorf("oidctest login: %w", err)
	}
	seenProvider, submitted := false, false
	for range maxLoginSteps {
		resp, err := browser.Do(req)
		if err != nil {
			return nil, fmt.Errorf("oidctest login: %w", err)
		}
		here := req.URL
		if onProvider(here) {
			seenProvider = true
		}
		if isRedirect(resp.StatusCode) {
			drain(resp)
			next, err := here.Parse(resp.Header.Get("Location"))
			if err != nil || resp.Header.Get("Location") == "" {
				return nil, fmt.Errorf("oidctest login: %s redirected to %q: bad location", here, resp.Header.Get("Location"))
			}
			if seenProvider && !onProvider(next) {
				resp.Header.Set("Location", next.String())
				return resp, nil
			}
			if req, err = http.NewRequestWithContext(ctx, http.MethodGet, next.String(), nil); err != nil {
				return nil, fmt.Errorf("oidctest login: %w", err)
			}
			continue
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		drain(resp)
		if err != nil {
			return nil, fmt.Errorf("oidctest login: reading %s: %w", here, err)
		}
		form, alert := findLoginForm(body)
		if resp.StatusCode == http.StatusOK && form != nil && !submitted {
			if req, err = form.request(ctx, here, username, password); err != nil {
				return nil, err
			}
			submitted = true
			continue
		}
		msg := alert
		if msg == "" {
			msg = snippet(body)
		}
		return nil, &LoginError{URL: here.String(), Status: resp.StatusCode, Message: msg}
	}
	return nil, fmt.Errorf("oidctest login: more than %d steps from %s", maxLoginSteps, authURL)
}

func isRedirect(status int) bool {
	switch status {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
}

func snippet(body []byte) string {
	s := strings.Join(strings.Fields(string(body)), " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// htmlForm is a parsed login form.
type htmlForm struct {
	action, method string
	hidden         url.Values
	userField      string
	passwordField  string
}

// request builds the browser's submission of the form.
func (f *htmlForm) request(ctx context.Context, page *url.URL, username, password string) (*http.Request, error) {
	action, err := page.Parse(f.action)
	if err != nil {
		return nil, fmt.Errorf("oidctest login: the form's action %q: %w", f.action, err)
	}
	values := url.Values{}
	for k, v := range f.hidden {
		values[k] = append([]string(nil), v...)
	}
	if f.userField != "" {
		values.Set(f.userField, username)
	}
	values.Set(f.passwordField, password)
	if strings.EqualFold(f.method, http.MethodGet) {
		action.RawQuery = values.Encode()
		return http.NewRequestWithContext(ctx, http.MethodGet, action.String(), nil)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, action.String(), strings.NewReader(values.Encode()))
	if err != nil {
		return nil, fmt.Errorf("oidctest login: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return req, nil
}

// findLoginForm returns the first form of the page with a password field
// (nil if none), and the text of the page's role="alert" elements.
func findLoginForm(body []byte) (*htmlForm, string) {
	doc, err := html.Parse(strings.NewReader(string(body)))
	if err != nil {
		return nil, ""
	}
	var form *htmlForm
	var alerts []string
	var walk func(n *html.Node, current *htmlForm)
	walk = func(n *html.Node, current *htmlForm) {
		if n.Type == html.ElementNode {
			if attr(n, "role") == "alert" {
				alerts = append(alerts, strings.Join(strings.Fields(text(n)), " "))
			}
			switch n.DataAtom {
			case atom.Form:
				current = &htmlForm{action: attr(n, "action"), method: attr(n, "method"), hidden: url.Values{}}
				defer func(f *htmlForm) {
					if form == nil && f.passwordField != "" {
						form = f
					}
				}(current)
			case atom.Input:
				if current != nil {
					name := attr(n, "name")
					switch strings.ToLower(attr(n, "type")) {
					case "hidden":
						if name != "" {
							current.hidden.Add(name, attr(n, "value"))
						}
					case "password":
						if current.passwordField == "" {
							current.passwordField = name
						}
					case "", "text", "email":
						if current.userField == "" {
							current.userField = name
						}
					}
				}
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c, current)
		}
	}
	walk(doc, nil)
	if form != nil && form.passwordField == "" {
		form = nil
	}
	return form, strings.Join(alerts, "; ")
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func text(n *html.Node) string {
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return b.String()
}

// errNotRedirect is FollowRedirect's error for a response that is not a
// redirect.
var errNotRedirect = errors.New("oidctest: not a redirect")

// FollowRedirect follows one redirect with client, as a browser would (its
// cookie jar sends and keeps cookies), and returns the answer without
// following further redirects; the caller closes its body. Given what
// Login returned, it is the relying party's answer to its callback (a
// confirmation page, or a redirect onwards).
func FollowRedirect(ctx context.Context, client *http.Client, redirect *http.Response) (*http.Response, error) {
	loc := redirect.Header.Get("Location")
	if !isRedirect(redirect.StatusCode) || loc == "" {
		return nil, errNotRedirect
	}
	browser := *client
	browser.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc, nil)
	if err != nil {
		return nil, fmt.Errorf("oidctest: following %s: %w", loc, err)
	}
	return browser.Do(req)
}
