package pendingreg

import (
	"html/template"
	"net/http"
	"time"
)

// PageOptions configures the register page.
type PageOptions struct {
	// Login, when set, handles a pending registration's page instead of
	// the admin instructions: with OIDC configured it redirects the
	// browser to the identity provider (and later calls Approve). It gets
	// the registration the URL names, already checked to be pending.
	Login func(w http.ResponseWriter, r *http.Request, reg Registration)
}

// Page returns the handler of GET /register/{id}, the AuthURL a client
// without a pre-auth key prints: plain HTML (no JavaScript, no external
// resources, no links, so it works behind any reverse proxy and under
// any server_url) telling the admin which command completes the
// registration. An unknown, expired or finished auth ID gets a 404 page
// saying why.
func (g *Registry) Page(opts PageOptions) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		h := w.Header()
		h.Set("Cache-Control", "no-store")
		h.Set("Referrer-Policy", "no-referrer") // the auth ID is in the URL
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
		var reg Registration
		ok := ValidID(id)
		if ok {
			reg, ok = g.Get(id)
		}
		var reason string
		switch {
		case !ok:
			reason = "This registration link is unknown or has expired (links are valid for " + g.ttl.String() +
				" and a server restart forgets them). Run `tailscale up` again on the machine to get a new link."
		case reg.Status == Completed:
			reason = "This registration was already completed: the machine is registered. A link works once."
		case reg.Status == Rejected:
			reason = "This registration was rejected by an administrator."
		case reg.Status == Expired:
			reason = "This registration link has expired (links are valid for " + g.ttl.String() +
				"). The machine asks for a new link by itself; see the output of `tailscale up`."
		}
		if reason != "" {
			h.Set("Content-Type", "text/html; charset=utf-8")
			w.WriteHeader(http.StatusNotFound)
			errorPage.Execute(w, reason)
			return
		}
		if opts.Login != nil {
			opts.Login(w, r, reg)
			return
		}
		h.Set("Content-Type", "text/html; charset=utf-8")
		registerPage.Execute(w, pageData{
			ID:       reg.ID,
			Hostname: reg.Hostname(),
			Machine:  reg.Machine.ShortString(),
			NodeKey:  reg.NodeKey.ShortString(),
			Tags:     reg.Tags,
			Expires:  reg.Expires.UTC().Format(time.RFC3339),
		})
	})
}

type pageData struct {
	ID, Hostname, Machine, NodeKey, Expires string
	Tags                                    []string
}

const pageStyle = `<style>
body{font-family:system-ui,sans-serif;max-width:48em;margin:2em auto;padding:0 1em;line-height:1.5;color:#222}
pre{background:#f4f4f4;padding:.75em;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
code{background:#f4f4f4}
dt{font-weight:bold}
</style>`

var registerPage = template.Must(template.New("register").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>Machine registration</title>` + pageStyle + `</head>
<body>
<h1>Machine registration</h1>
<p>A machine asks to join this network. To register it, an administrator runs one of these commands on the
headscale server, with the name of the user the machine will belong to:</p>
<pre>headscale nodes register --user USERNAME --key {{.ID}}</pre>
<p>or, with the commands of Headscale 0.29 and later:</p>
<pre>headscale auth register --auth-id {{.ID}} --user USERNAME</pre>
<p>To refuse it: <code>headscale auth reject --auth-id {{.ID}}</code></p>
<dl>
<dt>Host name</dt><dd>{{if .Hostname}}{{.Hostname}}{{else}}(not reported){{end}}</dd>
<dt>Machine key</dt><dd><code>{{.Machine}}</code></dd>
<dt>Node key</dt><dd><code>{{.NodeKey}}</code></dd>
{{if .Tags}}<dt>Advertised tags</dt><dd>{{range $i, $t := .Tags}}{{if $i}}, {{end}}<code>{{$t}}</code>{{end}} (allowed only if the user owns them under the policy's tagOwners)</dd>{{end}}
<dt>Link valid until</dt><dd>{{.Expires}}</dd>
</dl>
<p>The machine finishes logging in by itself within a second of the registration.</p>
</body></html>
`))

var errorPage = template.Must(template.New("error").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>Registration not found</title>` + pageStyle + `</head>
<body>
<h1>Registration not found</h1>
<p>{{.}}</p>
</body></html>
`))
