package oidctest

import (
	"bytes"
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
// client is used as a browser: its cookie jar carries the provider's and
// the relying party's cookies (give it one: a client without a jar gets a
// fresh jar for this call only, and the relying party's cookies are then
// lost for its callback); its CheckRedirect is not used. A refused login or any other page is a
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

// htmlForm is a parsed HTML form.
type htmlForm struct {
	action, method string
	// hidden are the hidden inputs' values.
	hidden url.Values
	// defaults are what a browser submits untouched: hidden inputs, text
	// inputs' values, checked boxes, selects' first or selected options
	// and textareas, and the first named submit button.
	defaults url.Values
	// userField and passwordField are the names of the first text (or
	// email) input and the first password input.
	userField     string
	passwordField string
	submitSeen    bool
}

// submit builds the browser's submission of the form with values.
func (f *htmlForm) submit(ctx context.Context, page *url.URL, values url.Values) (*http.Request, error) {
	action, err := page.Parse(f.action)
	if err != nil {
		return nil, fmt.Errorf("oidctest: the form's action %q: %w", f.action, err)
	}
	if strings.EqualFold(f.method, http.MethodPost) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, action.String(), strings.NewReader(values.Encode()))
		if err != nil {
			return nil, fmt.Errorf("oidctest: %w", err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		return req, nil
	}
	action.RawQuery = values.Encode()
	return http.NewRequestWithContext(ctx, http.MethodGet, action.String(), nil)
}

// request builds the browser's submission of a login form: its hidden
// fields, username and password.
func (f *htmlForm) request(ctx context.Context, page *url.URL, username, password string) (*http.Request, error) {
	values := url.Values{}
	for k, v := range f.hidden {
		values[k] = append([]string(nil), v...)
	}
	if f.userField != "" {
		values.Set(f.userField, username)
	}
	values.Set(f.passwordField, password)
	return f.submit(ctx, page, values)
}

// findLoginForm returns the first form of the page with a password field
// (nil if none), and the text of the page's role="alert" elements.
func findLoginForm(body []byte) (*htmlForm, string) {
	forms, alert := parseForms(body)
	for _, f := range forms {
		if f.passwordField != "" {
			return f, alert
		}
	}
	return nil, alert
}

// parseForms returns the page's forms in document order, and the text of
// its role="alert" elements.
func parseForms(body []byte) ([]*htmlForm, string) {
	doc, err := html.Parse(bytes.NewReader(body))
	if err != nil {
		return nil, ""
	}
	var forms []*htmlForm
	var alerts []string
	var walk func(n *html.Node, current *htmlForm)
	walk = func(n *html.Node, current *htmlForm) {
		if n.Type == html.ElementNode {
			if attr(n, "role") == "alert" {
				alerts = append(alerts, strings.Join(strings.Fields(text(n)), " "))
			}
			if n.DataAtom == atom.Form {
				current = &htmlForm{action: attr(n, "action"), method: attr(n, "method"), hidden: url.Values{}, defaults: url.Values{}}
				forms = append(forms, current)
			} else if current != nil {
				current.addField(n)
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c, current)
		}
	}
	walk(doc, nil)
	return forms, strings.Join(alerts, "; ")
}

// addField records a form control.
func (f *htmlForm) addField(n *html.Node) {
	name := attr(n, "name")
	_, disabled := attrOK(n, "disabled")
	if disabled {
		return
	}
	switch n.DataAtom {
	case atom.Input:
		switch typ := strings.ToLower(attr(n, "type")); typ {
		case "hidden":
			if name != "" {
				f.hidden.Add(name, attr(n, "value"))
				f.defaults.Add(name, attr(n, "value"))
			}
		case "password":
			if f.passwordField == "" {
				f.passwordField = name
			}
		case "checkbox", "radio":
			if _, checked := attrOK(n, "checked"); checked && name != "" {
				v, ok := attrOK(n, "value")
				if !ok {
					v = "on"
				}
				f.defaults.Add(name, v)
			}
		case "submit", "image":
			f.addSubmit(name, attr(n, "value"))
		case "button", "reset", "file":
		default: // text, email and the other text-like types
			if f.userField == "" && (typ == "" || typ == "text" || typ == "email") {
				f.userField = name
			}
			if name != "" {
				f.defaults.Add(name, attr(n, "value"))
			}
		}
	case atom.Button:
		if t := strings.ToLower(attr(n, "type")); t == "" || t == "submit" {
			f.addSubmit(name, attr(n, "value"))
		}
	case atom.Textarea:
		if name != "" {
			f.defaults.Add(name, text(n))
		}
	case atom.Select:
		if name == "" {
			return
		}
		var first, selected string
		var haveFirst, haveSelected bool
		for o := range n.Descendants() {
			if o.Type != html.ElementNode || o.DataAtom != atom.Option {
				continue
			}
			v, ok := attrOK(o, "value")
			if !ok {
				v = strings.TrimSpace(text(o))
			}
			if !haveFirst {
				first, haveFirst = v, true
			}
			if _, sel := attrOK(o, "selected"); sel && !haveSelected {
				selected, haveSelected = v, true
			}
		}
		switch {
		case haveSelected:
			f.defaults.Add(name, selected)
		case haveFirst:
			f.defaults.Add(name, first)
		}
	}
}

// addSubmit records the first submit button: a browser sends its name and
// value when it is the one clicked.
func (f *htmlForm) addSubmit(name, value string) {
	if f.submitSeen {
		return
	}
	f.submitSeen = true
	if name != "" {
		f.defaults.Add(name, value)
	}
}

// SubmitForm submits a form of an HTML page as a browser would when its
// first submit button is clicked: page is the body the caller read from
// pageURL; the form is the first whose action path ends with actionSuffix
// ("" takes the first form). Every field keeps the value the page gave it
// (hidden fields such as a CSRF token, checked boxes, selected options)
// unless set replaces it. The answer is returned without following
// redirects (FollowRedirect follows one); the caller closes its body. Use
// it for a relying party's own pages, such as a confirmation form after
// the login.
func SubmitForm(ctx context.Context, client *http.Client, pageURL *url.URL, page []byte, actionSuffix string, set url.Values) (*http.Response, error) {
	forms, _ := parseForms(page)
	var form *htmlForm
	for _, f := range forms {
		action, err := pageURL.Parse(f.action)
		if err == nil && strings.HasSuffix(action.Path, actionSuffix) {
			form = f
			break
		}
	}
	if form == nil {
		return nil, fmt.Errorf("oidctest: no form with an action ending in %q on %s: %s", actionSuffix, pageURL, snippet(page))
	}
	values := url.Values{}
	for k, v := range form.defaults {
		values[k] = append([]string(nil), v...)
	}
	for k, v := range set {
		values[k] = append([]string(nil), v...)
	}
	req, err := form.submit(ctx, pageURL, values)
	if err != nil {
		return nil, err
	}
	browser := *client
	browser.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return browser.Do(req)
}

func attrOK(n *html.Node, key string) (string, bool) {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val, true
		}
	}
	return "", false
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

// CompleteLogin is a person at a browser (client, with a cookie jar)
// following authURL as username all the way: through the provider's form
// (Login), back to the relying party (FollowRedirect), and, when the
// relying party answers 200 with a form (a device confirmation), through
// that form too (SubmitForm). It returns the relying party's last status
// and page.
func (p *Provider) CompleteLogin(ctx context.Context, client *http.Client, authURL, username, password string) (int, string, error) {
	redirect, err := p.Login(ctx, client, authURL, username, password)
	if err != nil {
		return 0, "", fmt.Errorf("login at the provider as %s: %w", username, err)
	}
	resp, err := FollowRedirect(ctx, client, redirect)
	if err != nil {
		return 0, "", fmt.Errorf("back at the relying party: %w", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, "", fmt.Errorf("reading the relying party's page: %w", err)
	}
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("<form")) {
		return resp.StatusCode, string(body), nil
	}
	done, err := SubmitForm(ctx, client, resp.Request.URL, body, "", nil)
	if err != nil {
		return 0, "", fmt.Errorf("submitting the relying party's form: %w", err)
	}
	defer done.Body.Close()
	out, err := io.ReadAll(done.Body)
	if err != nil {
		return 0, "", fmt.Errorf("reading the relying party's answer: %w", err)
	}
	return done.StatusCode, string(out), nil
}
