package server_test

// Web UI compatibility: the requests Headplane, headscale-ui and
// headscale-admin make against /api/v1, replayed over real HTTP with a
// Bearer API key, checking the JSON fields each UI reads have the types
// it expects.
//
// # What the UIs do (read from their public source, described here in our words)
//
// Sources: tale/headplane HEAD 990e1e9f (2026-07-01, the 0.7 line:
// app/server/headscale/api/{index,transport,capabilities,server-version}.ts,
// api/resources/*.ts, app/types/*.ts, app/routes/**) and tag v0.6.3
// (2026-05-14, the newest stable: api/endpoints/*.ts, api/version.ts);
// gurucomputing/headscale-ui HEAD ce7569c8 (2026-03-16:
// src/lib/common/apiFunctions.svelte, classes.ts, DeviceRouteAPI.svelte,
// settings/ServerSettings/*); GoodiesHQ/headscale-admin main c8db9b9f
// (2025-03-31) and branch 0.26 d9ba7b0f (2025-05-30: src/lib/common/api/*.ts,
// types.ts, States.svelte.ts, cards/node/NodeTags.svelte).
//
// All three send "Authorization: Bearer <key>" and "Accept:
// application/json". Headplane runs server-side (Node/undici) and sends
// "Content-Type: application/json" with a body; the two others run in the
// browser and send a JSON string body with no Content-Type (so the browser
// labels it text/plain), which needs CORS unless served from the same origin.
//
// Headplane (0.7 / HEAD; v0.6.3 differences marked "0.6")
//
//	GET  /version (no key)     reads .version (string). See "version" below.
//	GET  /health  (no key)     only the status code (200 = healthy).
//	GET  /api/v1/apikey        login and every page load: apiKeys[].prefix (string),
//	                           .expiration (string, must be non-null and in the future).
//	                           Finds the caller's key by key.startsWith(prefix with every
//	                           "*" removed); none found => "API key was not found".
//	                           A 401/403 here => "API key is invalid", session dropped.
//	GET  /api/v1/user[?id=|?name=|?email=]  users[]: id, name, createdAt (strings),
//	                           displayName, email, provider, providerId ("oidc" +
//	                           ".../<subject>" for OIDC linking), profilePicUrl.
//	                           [u] = list({id}) must give the one user.
//	POST /api/v1/user {name, email?, displayName?, pictureUrl?}  reads .user.
//	POST /api/v1/user/{id}/rename/{name}   (no body)
//	DELETE /api/v1/user/{id}
//	GET  /api/v1/node          nodes[]: id, machineKey, nodeKey (hostinfo map key),
//	                           discoKey, ipAddresses []string ([0] used for SSH), name,
//	                           givenName, user (object, may be null for tagged nodes),
//	                           lastSeen (new Date(...)), expiry (null or Go zero time =
//	                           "never"; anything else goes through new Date),
//	                           createdAt, registerMethod (REGISTER_METHOD_* enum),
//	                           tags []string, online bool, approvedRoutes,
//	                           availableRoutes, subnetRoutes []string (exit routes
//	                           0.0.0.0/0 and ::/0; waiting = available - approved),
//	                           preAuthKey?.ephemeral (agent prunes offline ephemerals).
//	GET  /api/v1/node/{id}     .node, same fields.
//	POST /api/v1/node/{id}/rename/{name}   (no body)
//	POST /api/v1/node/{id}/expire          (no body)
//	POST /api/v1/node/{id}/tags {tags}     on 400 shows the body's .message.
//	POST /api/v1/node/{id}/approve_routes {routes}  full approved set.
//	POST /api/v1/node/{id}/user {user}     only if version < 0.28.
//	POST /api/v1/node/register?user=&key=  body {user,key} too; reads .node.
//	DELETE /api/v1/node/{id}
//	Every successful call's body is parsed as JSON, DELETE included: a 204
//	or an empty body would be an error.
//	GET  /api/v1/policy        .policy (string), .updatedAt (null => read-only editor);
//	                           a 500 is taken as "database mode, no policy yet".
//	PUT  /api/v1/policy {policy}  .policy, .updatedAt; on error shows .message
//	                           (special-cases "parsing HuJSON:" and "update is disabled").
//	GET  /api/v1/preauthkey[?user=<id>]  (no filter only if version >= 0.28)
//	                           preAuthKeys[]: id, key, user (object or null),
//	                           reusable, ephemeral, used (bool), expiration, createdAt,
//	                           aclTags []string.
//	POST /api/v1/preauthkey {user?: "<id>", reusable, ephemeral, expiration (ISO),
//	                           aclTags?}: tag-only keys (agent: aclTags ["tag:<host>"],
//	                           no user), SSH keys (ephemeral). Reads .preAuthKey.key.
//	POST /api/v1/preauthkey/expire {id}         when version >= 0.28
//	                           {user: "<id>", key: "<key as listed>"}  otherwise, and
//	                           always in 0.6.
//
// headscale-ui (browser)
//
//	GET  /api/v1/user          users[]: id, name, email, createdAt.
//	POST /api/v1/user {name}   (lower-cased); rename POST .../{id}/rename/{name}; DELETE .../{id}.
//	GET  /api/v1/node          nodes[]: id, name, givenName, lastSeen (new Date), online,
//	                           ipAddresses, tags, approvedRoutes, availableRoutes,
//	                           subnetRoutes, user.id, user.name (no null check: the
//	                           device card's owner selector reads device.user.id).
//	POST /api/v1/node/{id}/rename/{name}, /tags {tags}, /approve_routes {routes},
//	     /user {user: <number>}; DELETE /api/v1/node/{id};
//	POST /api/v1/node/register?user=<name>&key=<key>  (no body).
//	GET  /api/v1/preauthkey?user=<id>  preAuthKeys[]: id, key, expiration, reusable,
//	                           ephemeral, used.
//	POST /api/v1/preauthkey {user: "<id>", expiration, reusable, ephemeral}
//	POST /api/v1/preauthkey/expire {user: "<id>", key: "<key as listed>"}
//	GET  /api/v1/apikey        apiKeys[].prefix: the current key is the one where
//	                           storedKey.includes(prefix); .expiration for "days left".
//	POST /api/v1/apikey {expiration}  reads .apiKey; key rollover then calls
//	POST /api/v1/apikey/expire {prefix: <listed prefix of the old key>} with the NEW key.
//	Errors: every failure is shown as JSON.parse(body).message.
//
// headscale-admin (browser; main targets Headscale 0.25, branch 0.26 newer)
//
//	GET  /api/v1/user[?id=|?name=|?email=], POST {name} (reads .user),
//	POST /api/v1/user/{id}/rename/{new} body {} (reads .user), DELETE.
//	GET  /api/v1/node          nodes[]: id, name, givenName, createdAt, user (object: .name,
//	                           .id), online, lastSeen, expiry, ipAddresses, registerMethod,
//	                           approvedRoutes/availableRoutes/subnetRoutes, and
//	                           forcedTags/validTags/invalidTags (.map() on each, no guard).
//	POST /api/v1/node/{id}/rename/{new} {} | /user {user:"<id>"} | /expire {} |
//	     /tags {tags} | /approve_routes {routes}: each reads .node (.user.name,
//	     .approvedRoutes); DELETE /api/v1/node/{id}; POST /api/v1/node/register?user=&key= {}.
//	GET  /api/v1/preauthkey?user=<name> (main) | <id> (0.26)
//	POST /api/v1/preauthkey {user: <name> (main) | "<id>" (0.26), reusable, ephemeral,
//	                           expiration}; reads .preAuthKey.
//	POST /api/v1/preauthkey/expire {user: <the listed user OBJECT> (main) |
//	                           "<id>" (0.26), key: "<key as listed>"}
//	GET/PUT /api/v1/policy {policy}   (ACL builder).
//	GET  /api/v1/apikey        the current key is the one where key.startsWith(prefix)
//	                           (no "*" stripping); reads .expiration.
//	Key rotation: POST /api/v1/apikey {expiration +90d}, then with the OLD key
//	POST /api/v1/apikey/expire {prefix: <the whole old key>} (it only cuts at ".",
//	which splits the older "<prefix>.<secret>" keys, not hskey-api-... ones).
//	Errors: a body with .code is an error with .message; the exact body text
//	"Unauthorized" means an expired or wrong key; anything else is shown
//	as "Unspecified Error: <body>".
//	main still calls /api/v1/routes (removed in Headscale 0.26); 0.26 does not.
//
// # What /version must return for Headplane
//
// Headplane 0.7 gets GET /version without a key, takes the "version" string
// field, trims it and matches ^v?MAJOR.MINOR.PATCH(-pre)?(+build)?$. The
// prerelease part is ignored when comparing. It sets three capabilities
// when the version is >= 0.28.0: flat node "tags" (otherwise it builds
// tags from forcedTags+validTags), pre-auth keys with stable IDs (list
// without ?user=, expire with {id}, tag-only keys), and node owner
// immutable (hides "change owner"). A string that does not match (like
// "dev") counts as "newest", with a warning in the log. A 404 means "older
// than 0.27, unsupported". The minimum Headplane supports is 0.27.0. So
// {"version": "v0.28.0"} or newer (build metadata allowed:
// "0.28.0+hsctl.0.1.0") is right. Our own release number ("0.1.0", the
// Makefile's default VERSION) parses as 0.1.0 < 0.28 and puts Headplane
// in legacy mode. Headplane 0.6 does not call /version: it fetches
// /swagger/v1/openapiv2.json without a key and falls back to "newest
// known (0.28)" on any non-200, which our 404 gives.
//
// # The API key prefix
//
// The three UIs find the key in use from GET /api/v1/apikey in three
// different ways:
//
//	Headplane        fullKey.startsWith(prefix.replaceAll("*", ""))
//	headscale-ui     fullKey.includes(prefix)
//	headscale-admin  fullKey.startsWith(prefix)
//
// "hskey-api-<prefix>" (or with a "-" at the end) satisfies all three.
// Upstream's "hskey-api-<prefix>-***" only works for Headplane, and the
// bare 12-character prefix only for headscale-ui. Expire and delete must
// accept whatever the UIs send back: the listed prefix (headscale-ui) and
// the whole key (headscale-admin).
//
// This file contains no UI code: the requests are written down from what
// the UIs send, in the tables below.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/api"
	"github.com/hsctl/headscale/pkg/server"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/control/tsp"
	"tailscale.com/tailcfg"
)

// uicPolicy is what Headplane's ACL editor would save: HuJSON, with the
// tags the UIs assign defined in tagOwners.
const uicPolicy = `{
  // written by the ACL editor
  "tagOwners": {"tag:web": [], "tag:agent": []},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}`

// uicStep is one request a UI makes, or (do != nil) an action outside the
// API that later steps need (registering a node, opening its map stream).
type uicStep struct {
	ui   string // headplane, headplane-0.6, headscale-ui, headscale-admin, headscale-admin-0.26
	name string

	method, path, body string // {var} is replaced by a value captured earlier
	ctype              string // "json", "text" (a browser fetch with a string body) or none
	auth               string // variable holding the API key; "" is "key", "none" sends none
	status             int    // wanted status; 0 is 200

	// fields: "path: type" the UI reads. Path segments are separated by
	// ".", "x[]" means every element of array x (there must be one),
	// "x[k=v]" the element whose field k is v. Types: string, id (decimal
	// string), time (RFC 3339 string), bool, number, object, null, []string,
	// [] (any array); "a|b" allows either.
	fields []string
	// want: "path = v" (arrays compare as v1,v2), "path != v", "path has v"
	// (an array contains v), "path contains s" (a substring), "path count n",
	// "path past", "path future" (a time before / after now).
	want []string
	// capture: variable name -> path of a single value in the response.
	capture map[string]string
	check   func(st *uicState, r uicResp) []string
	do      func(t *testing.T, st *uicState)
}

type uicState struct {
	parent *testing.T // owns clients and map streams that outlive one step
	ts     *testServer
	vars   map[string]string
}

type uicResp struct {
	status int
	header http.Header
	raw    []byte
	json   any
}

var uicPlaceholder = regexp.MustCompile(`\{([a-zA-Z][a-zA-Z0-9]*)\}`)

// expand replaces {var}; missing lists variables no earlier step captured.
func (st *uicState) expand(s string) (out string, missing []string) {
	out = uicPlaceholder.ReplaceAllStringFunc(s, func(m string) string {
		name := m[1 : len(m)-1]
		if v, ok := st.vars[name]; ok {
			return v
		}
		missing = append(missing, name)
		return m
	})
	return out, missing
}

func uicHTTP(t *testing.T, method, url, auth, ctype, body string, hdr map[string]string) uicResp {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/json")
	switch ctype {
	case "json":
		req.Header.Set("Content-Type", "application/json")
	case "text":
		req.Header.Set("Content-Type", "text/plain;charset=UTF-8")
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := uicResp{status: resp.StatusCode, header: resp.Header, raw: b}
	if json.Unmarshal(b, &r.json) != nil {
		r.json = nil
	}
	return r
}

// --- JSON paths

type uicHit struct {
	path string
	val  any
}

// uicSplitPath splits at dots outside brackets.
func uicSplitPath(p string) []string {
	var out []string
	depth, start := 0, 0
	for i, c := range p {
		switch c {
		case '[':
			depth++
		case ']':
			depth--
		case '.':
			if depth == 0 {
				out = append(out, p[start:i])
				start = i + 1
			}
		}
	}
	return append(out, p[start:])
}

// uicJSONAt resolves path in v (see uicStep.fields).
func uicJSONAt(v any, path string) ([]uicHit, error) {
	hits := []uicHit{{"", v}}
	for _, seg := range uicSplitPath(path) {
		name, sel, hasSel := strings.Cut(seg, "[")
		sel = strings.TrimSuffix(sel, "]")
		var next []uicHit
		for _, h := range hits {
			at := strings.TrimPrefix(h.path+"."+name, ".")
			val := h.val
			if name != "" {
				obj, ok := h.val.(map[string]any)
				if !ok {
					return nil, fmt.Errorf("%s: parent is %s, not an object", at, uicDescribe(h.val))
				}
				if val, ok = obj[name]; !ok {
					return nil, fmt.Errorf("%s: missing", at)
				}
			}
			if !hasSel {
				next = append(next, uicHit{at, val})
				continue
			}
			arr, ok := val.([]any)
			if !ok {
				return nil, fmt.Errorf("%s: is %s, want an array", at, uicDescribe(val))
			}
			if sel == "" {
				if len(arr) == 0 {
					return nil, fmt.Errorf("%s: empty array, want at least one element", at)
				}
				for i, e := range arr {
					next = append(next, uicHit{fmt.Sprintf("%s[%d]", at, i), e})
				}
				continue
			}
			k, want, _ := strings.Cut(sel, "=")
			found := false
			for i, e := range arr {
				if m, ok := e.(map[string]any); ok && uicScalar(m[k]) == want {
					next = append(next, uicHit{fmt.Sprintf("%s[%d]", at, i), e})
					found = true
					break
				}
			}
			if !found {
				return nil, fmt.Errorf("%s: no element with %s", at, sel)
			}
		}
		hits = next
	}
	return hits, nil
}

func uicDescribe(v any) string {
	b, _ := json.Marshal(v)
	s := string(b)
	if len(s) > 100 {
		s = s[:100] + "..."
	}
	kind := "null"
	switch v.(type) {
	case string:
		kind = "string"
	case bool:
		kind = "bool"
	case float64:
		kind = "number"
	case []any:
		kind = "array"
	case map[string]any:
		kind = "object"
	}
	if kind == "null" {
		return "null"
	}
	return s + " (" + kind + ")"
}

func uicScalar(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case nil:
		return "null"
	case bool:
		return strconv.FormatBool(x)
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case []any:
		var parts []string
		for _, e := range x {
			parts = append(parts, uicScalar(e))
		}
		return strings.Join(parts, ",")
	}
	b, _ := json.Marshal(v)
	return string(b)
}

var uicDecimalID = regexp.MustCompile(`^[0-9]+$`)

func uicParseTime(s string) (time.Time, bool) {
	t, err := time.Parse(time.RFC3339Nano, s)
	return t, err == nil
}

func uicIs(v any, typ string) bool {
	for _, alt := range strings.Split(typ, "|") {
		ok := false
		switch alt {
		case "string":
			_, ok = v.(string)
		case "id":
			s, isStr := v.(string)
			ok = isStr && uicDecimalID.MatchString(s)
		case "time":
			s, isStr := v.(string)
			_, parses := uicParseTime(s)
			ok = isStr && parses
		case "bool":
			_, ok = v.(bool)
		case "number":
			_, ok = v.(float64)
		case "object":
			_, ok = v.(map[string]any)
		case "null":
			ok = v == nil
		case "[]":
			_, ok = v.([]any)
		case "regmethod":
			s, _ := v.(string)
			ok = slices.Contains([]string{"REGISTER_METHOD_UNSPECIFIED", "REGISTER_METHOD_AUTH_KEY", "REGISTER_METHOD_CLI", "REGISTER_METHOD_OIDC"}, s)
		case "[]string":
			arr, isArr := v.([]any)
			ok = isArr
			for _, e := range arr {
				if _, s := e.(string); !s {
					ok = false
				}
			}
		default:
			panic("unknown JSON type " + alt)
		}
		if ok {
			return true
		}
	}
	return false
}

// uicCheckFields checks "path: type" lines against v.
func uicCheckFields(v any, fields []string) []string {
	var errs []string
	for _, f := range fields {
		path, typ, ok := strings.Cut(f, ": ")
		if !ok {
			panic("field spec without ': ': " + f)
		}
		hits, err := uicJSONAt(v, path)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s (want %s)", err, typ))
			continue
		}
		for _, h := range hits {
			if !uicIs(h.val, typ) {
				errs = append(errs, fmt.Sprintf("%s: is %s, want %s", h.path, uicDescribe(h.val), typ))
			}
		}
	}
	return errs
}

// uicCheckWants checks "path op value" lines against v.
func uicCheckWants(v any, wants []string) []string {
	var errs []string
	for _, w := range wants {
		var path, op, arg string
		for _, o := range []string{" != ", " = ", " has ", " count ", " contains "} {
			if p, a, ok := strings.Cut(w, o); ok {
				path, op, arg = p, strings.TrimSpace(o), a
				break
			}
		}
		if op == "" {
			for _, o := range []string{" past", " future"} {
				if p, ok := strings.CutSuffix(w, o); ok {
					path, op = p, strings.TrimSpace(o)
				}
			}
		}
		if op == "" {
			panic("want without an operator: " + w)
		}
		hits, err := uicJSONAt(v, path)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s (want %s %s)", err, op, arg))
			continue
		}
		for _, h := range hits {
			got := uicScalar(h.val)
			bad := false
			switch op {
			case "=":
				bad = got != arg
			case "!=":
				bad = got == arg
			case "has":
				arr, _ := h.val.([]any)
				bad = !slices.ContainsFunc(arr, func(e any) bool { return uicScalar(e) == arg })
			case "contains":
				bad = !strings.Contains(got, arg)
			case "count":
				arr, isArr := h.val.([]any)
				bad = !isArr || strconv.Itoa(len(arr)) != arg
			case "past", "future":
				s, _ := h.val.(string)
				at, ok := uicParseTime(s)
				now := time.Now()
				bad = !ok || (op == "past" && at.After(now.Add(2*time.Second))) || (op == "future" && !at.After(now))
			}
			if bad {
				errs = append(errs, fmt.Sprintf("%s: is %s, want %s %s", h.path, uicDescribe(h.val), op, arg))
			}
		}
	}
	return errs
}

// uicISO formats t as JavaScript's Date.toISOString does.
func uicISO(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

// --- the run

func (st *uicState) run(t *testing.T, s uicStep) {
	t.Helper()
	if s.do != nil {
		s.do(t, st)
		return
	}
	path, miss1 := st.expand(s.path)
	body, miss2 := st.expand(s.body)
	var fields, wants []string
	var miss3 []string
	for _, f := range s.fields {
		e, m := st.expand(f)
		fields, miss3 = append(fields, e), append(miss3, m...)
	}
	for _, w := range s.want {
		e, m := st.expand(w)
		wants, miss3 = append(wants, e), append(miss3, m...)
	}
	if miss := slices.Concat(miss1, miss2, miss3); len(miss) > 0 {
		t.Errorf("not run: needs %v, which an earlier step did not provide", slices.Compact(miss))
		return
	}
	auth := ""
	if s.auth != "none" {
		kv := s.auth
		if kv == "" {
			kv = "key"
		}
		k, ok := st.vars[kv]
		if !ok {
			t.Errorf("not run: no API key %s from an earlier step", kv)
			return
		}
		auth = "Bearer " + k
	}
	r := uicHTTP(t, s.method, st.ts.URL+path, auth, s.ctype, body, nil)
	want := s.status
	if want == 0 {
		want = http.StatusOK
	}
	var errs []string
	if r.status != want {
		errs = append(errs, fmt.Sprintf("status %d, want %d", r.status, want))
	}
	if r.json == nil {
		// Headplane parses every response body as JSON, DELETE included;
		// the browser UIs parse error bodies as JSON too.
		errs = append(errs, fmt.Sprintf("body is not JSON: %q", uicTrunc(r.raw)))
	}
	if r.status == want || r.json != nil {
		errs = append(errs, uicCheckFields(r.json, fields)...)
		if r.status == want {
			errs = append(errs, uicCheckWants(r.json, wants)...)
		}
	}
	if r.status == want {
		for name, p := range s.capture {
			p, _ = st.expand(p)
			hits, err := uicJSONAt(r.json, p)
			if err != nil || len(hits) != 1 {
				errs = append(errs, fmt.Sprintf("capturing %s from %s: %v", name, p, err))
				continue
			}
			st.vars[name] = uicScalar(hits[0].val)
		}
		if s.check != nil {
			errs = append(errs, s.check(st, r)...)
		}
	}
	for _, e := range errs {
		t.Errorf("%s %s: %s", s.method, path, e)
	}
	if len(errs) > 0 {
		t.Logf("response %d: %s", r.status, uicTrunc(r.raw))
	}
}

func uicTrunc(b []byte) string {
	if len(b) > 2000 {
		return string(b[:2000]) + "..."
	}
	return string(b)
}

// uicAPIKey creates an API key over the unix-socket routes (local
// trust, as `headscale apikeys create` does).
func uicAPIKey(t *testing.T, ts *testServer, exp time.Time) string {
	t.Helper()
	out := doAPI(t, ts.SocketHandler(), "POST", "/api/v1/apikey", fmt.Sprintf(`{"expiration":%q}`, exp.UTC().Format(time.RFC3339)))
	var r struct {
		APIKey string `json:"apiKey"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || !strings.HasPrefix(r.APIKey, "hskey-api-") {
		t.Fatalf("creating an API key over the socket: %s (%v)", out, err)
	}
	return r.APIKey
}

// uicListedKey returns the GET /api/v1/apikey entry for full, found the way
// the given UI finds it.
func uicListedKey(r uicResp, full, ui string) (map[string]any, bool) {
	obj, _ := r.json.(map[string]any)
	keys, _ := obj["apiKeys"].([]any)
	for _, e := range keys {
		m, _ := e.(map[string]any)
		p, _ := m["prefix"].(string)
		if p == "" {
			continue
		}
		var match bool
		switch ui {
		case "headplane":
			match = strings.HasPrefix(full, strings.ReplaceAll(p, "*", ""))
		case "headscale-ui":
			match = strings.Contains(full, p)
		case "headscale-admin":
			match = strings.HasPrefix(full, p)
		}
		if match {
			return m, true
		}
	}
	return nil, false
}

// uicFindsOwnKey is the check each UI makes on GET /api/v1/apikey: the key in
// use must be found, with an expiration in the future.
func uicFindsOwnKey(ui, keyVar, prefixVar string) func(st *uicState, r uicResp) []string {
	return func(st *uicState, r uicResp) []string {
		m, ok := uicListedKey(r, st.vars[keyVar], ui)
		if !ok {
			return []string{fmt.Sprintf("%s cannot find the key in use among apiKeys[].prefix (it matches %s); key %s...",
				ui, map[string]string{
					"headplane":       `key.startsWith(prefix with "*" removed)`,
					"headscale-ui":    "key.includes(prefix)",
					"headscale-admin": "key.startsWith(prefix)",
				}[ui], st.vars[keyVar][:22])}
		}
		if prefixVar != "" {
			st.vars[prefixVar] = m["prefix"].(string)
		}
		exp, _ := m["expiration"].(string)
		if at, ok := uicParseTime(exp); !ok || !at.After(time.Now()) {
			return []string{fmt.Sprintf("own key's expiration %s: want a time in the future", uicDescribe(m["expiration"]))}
		}
		return nil
	}
}

// uicHeadplaneVersion applies Headplane's /version rules.
var uicHeadplaneSemver = regexp.MustCompile(`^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+([0-9A-Za-z.-]+))?$`)

func uicHeadplaneVersion(v string) (caps string, ok bool) {
	m := uicHeadplaneSemver.FindStringSubmatch(strings.TrimSpace(v))
	if m == nil {
		return "unparsed: Headplane assumes the newest capabilities (and logs a warning)", true
	}
	maj, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	if maj > 0 || minor >= 28 {
		return fmt.Sprintf("%d.%d: flat tags, stable pre-auth key IDs", maj, minor), true
	}
	return fmt.Sprintf("%d.%d < 0.28: Headplane builds tags from forcedTags/validTags (which we do not send, so every node shows no tags), "+
		"expires pre-auth keys with {user,key}, lists them only per user (tag-only keys disappear) and offers owner changes", maj, minor), false
}

func uicHeadplaneVersionCheck(st *uicState, r uicResp) []string {
	obj, _ := r.json.(map[string]any)
	v, _ := obj["version"].(string)
	if caps, ok := uicHeadplaneVersion(v); !ok {
		return []string{fmt.Sprintf("version %q: %s", v, caps)}
	}
	return nil
}

// uicNode registers a node with the pre-auth key in keyVar and stores its
// ID under name; with stream it opens a map stream advertising routes, as
// a running tailscaled does, and waits until the node is online.
func uicNode(name, keyVar string, stream bool, routes ...string) func(t *testing.T, st *uicState) {
	return func(t *testing.T, st *uicState) {
		authKey, ok := st.vars[keyVar]
		if !ok {
			t.Errorf("not run: no pre-auth key %s from an earlier step", keyVar)
			return
		}
		c := newClient(st.parent, st.ts.URL)
		nk, msg := register(t, c, authKey, name)
		if msg != "" {
			t.Errorf("registering %s with %s: %s", name, keyVar, msg)
			return
		}
		n, ok := st.ts.State().NodeByNodeKey(nk.Public())
		if !ok {
			t.Errorf("registered %s but the state does not know its node key", name)
			return
		}
		st.vars[name] = n.ID.String()
		if !stream {
			return
		}
		var prefixes []netip.Prefix
		for _, r := range routes {
			prefixes = append(prefixes, netip.MustParsePrefix(r))
		}
		ctx, cancel := context.WithCancel(context.Background())
		st.parent.Cleanup(cancel)
		sess, err := c.Map(ctx, tsp.MapOpts{NodeKey: nk, Stream: true, Hostinfo: &tailcfg.Hostinfo{Hostname: name, RoutableIPs: prefixes}})
		if err != nil {
			t.Errorf("map stream for %s: %v", name, err)
			return
		}
		st.parent.Cleanup(func() { sess.Close() })
		if _, err := sess.Next(); err != nil {
			t.Errorf("first map for %s: %v", name, err)
			return
		}
		go func() { // keep reading, as a client does
			for {
				if _, err := sess.Next(); err != nil {
					return
				}
			}
		}()
		err = tstest.Poll(5*time.Second, func() error {
			if n, ok := st.ts.State().Node(n.ID); !ok || !n.Online {
				return errors.New("offline")
			}
			return nil
		})
		if err != nil {
			t.Errorf("%s not online 5s after its map stream opened", name)
		}
	}
}

// uicAPIKeys creates API keys over the socket and stores them in vars.
func uicAPIKeys(names ...string) func(t *testing.T, st *uicState) {
	return func(t *testing.T, st *uicState) {
		for _, n := range names {
			st.vars[n] = uicAPIKey(t, st.ts, time.Now().Add(90*24*time.Hour))
		}
	}
}

// uicFullPreAuthKey checks a freshly created key is returned in full.
func uicFullPreAuthKey(st *uicState, r uicResp) []string {
	hits, err := uicJSONAt(r.json, "preAuthKey.key")
	if err != nil {
		return nil // reported by fields
	}
	k, _ := hits[0].val.(string)
	if !strings.HasPrefix(k, "hskey-auth-") || strings.Contains(k, "*") {
		return []string{fmt.Sprintf("preAuthKey.key %q: want the full secret key (the UIs show it once to copy)", k)}
	}
	return nil
}

func uicJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func uicSteps() []uicStep {
	day := uicISO(time.Now().Add(24 * time.Hour))
	days90 := uicISO(time.Now().Add(90 * 24 * time.Hour))
	prefixed := func(p string, fs ...string) []string {
		var out []string
		for _, f := range fs {
			out = append(out, p+"."+f)
		}
		return out
	}
	userFields := func(p string) []string {
		return prefixed(p, "id: id", "name: string", "createdAt: time", "displayName: string", "email: string",
			"providerId: string", "provider: string", "profilePicUrl: string")
	}
	keyFields := func(p string) []string {
		return prefixed(p, "id: id", "key: string", "user: object|null", "reusable: bool", "ephemeral: bool",
			"used: bool", "expiration: time", "createdAt: time", "aclTags: []string")
	}
	apiKeyFields := prefixed("apiKeys[]", "id: id", "prefix: string", "expiration: time", "createdAt: time", "lastSeen: time|null")
	// Headplane's Machine: user may be null (tagged), expiry null or a
	// time, preAuthKey read by its agent.
	hpNode := func(p string) []string {
		return prefixed(p, "id: id", "machineKey: string", "nodeKey: string", "discoKey: string", "ipAddresses: []string",
			"name: string", "givenName: string", "user: object|null", "lastSeen: time|null", "expiry: time|null",
			"createdAt: time", "registerMethod: regmethod", "tags: []string", "online: bool", "approvedRoutes: []string",
			"availableRoutes: []string", "subnetRoutes: []string", "preAuthKey: object|null")
	}
	hpPolicy := uicJSON(map[string]string{"policy": uicPolicy})
	adminPolicy := uicJSON(map[string]string{"policy": "{\n    \"tagOwners\": {\n        \"tag:web\": [],\n        \"tag:agent\": []\n    },\n    \"acls\": [\n        {\n            \"action\": \"accept\",\n            \"src\": [\"*\"],\n            \"dst\": [\"*:*\"]\n        }\n    ]\n}"})

	const (
		hp     = "headplane"
		hp06   = "headplane-0.6"
		ui     = "headscale-ui"
		adm    = "headscale-admin"
		adm026 = "headscale-admin-0.26"
	)
	return []uicStep{
		// --- start-up and login
		{ui: hp, name: "version probe", method: "GET", path: "/version", auth: "none",
			fields: []string{"version: string"}, check: uicHeadplaneVersionCheck},
		{ui: hp, name: "health", method: "GET", path: "/health", auth: "none"},
		{ui: hp, name: "login: find own API key", method: "GET", path: "/api/v1/apikey",
			fields: apiKeyFields, check: uicFindsOwnKey(hp, "key", "")},
		{ui: ui, name: "settings: own API key and days left", method: "GET", path: "/api/v1/apikey",
			fields: apiKeyFields, check: uicFindsOwnKey(ui, "key", "")},
		{ui: adm, name: "own API key expiry", method: "GET", path: "/api/v1/apikey",
			fields: apiKeyFields, check: uicFindsOwnKey(adm, "key", "")},

		// --- policy (Headplane ACL editor, headscale-admin ACL builder)
		{ui: hp, name: "ACL editor, no policy yet", method: "GET", path: "/api/v1/policy", fields: []string{"policy: string"}},
		{ui: hp, name: "ACL editor save", method: "PUT", path: "/api/v1/policy", body: hpPolicy, ctype: "json",
			fields: []string{"policy: string", "updatedAt: time"}},
		{ui: hp, name: "ACL editor load", method: "GET", path: "/api/v1/policy",
			fields: []string{"policy: string", "updatedAt: time"},
			check: func(st *uicState, r uicResp) []string {
				if p, _ := r.json.(map[string]any)["policy"].(string); p != uicPolicy {
					return []string{fmt.Sprintf("policy = %q, want the text as saved (comments and all)", p)}
				}
				return nil
			}},
		// Headplane shows a save error inline only when .message contains
		// "parsing HuJSON:" (syntax) or "parsing policy from bytes:"
		// (structure), the text after it being the error; any other
		// message goes to its generic error page.
		{ui: hp, name: "ACL editor save with a syntax error shows .message inline", method: "PUT", path: "/api/v1/policy",
			body: `{"policy":"{\"acls\": ["}`, ctype: "json", status: 400, fields: []string{"message: string"},
			want: []string{"message contains parsing HuJSON:"}},
		{ui: adm, name: "ACL builder load", method: "GET", path: "/api/v1/policy", fields: []string{"policy: string"}},
		{ui: adm, name: "ACL builder save", method: "PUT", path: "/api/v1/policy", body: adminPolicy, ctype: "text"},
		{ui: hp, name: "policy check", method: "POST", path: "/api/v1/policy/check", body: hpPolicy, ctype: "json"},

		// --- users
		{ui: hp, name: "create user", method: "POST", path: "/api/v1/user", ctype: "json",
			body:   `{"name":"alice","email":"alice@example.com","displayName":"Alice"}`,
			fields: userFields("user"), want: []string{"user.name = alice", "user.email = alice@example.com"},
			capture: map[string]string{"alice": "user.id"}},
		{ui: hp, name: "list users", method: "GET", path: "/api/v1/user", fields: userFields("users[]")},
		{ui: hp, name: "user by id", method: "GET", path: "/api/v1/user?id={alice}", want: []string{"users count 1", "users[].name = alice"}},
		{ui: hp, name: "user by email", method: "GET", path: "/api/v1/user?email=alice@example.com", want: []string{"users count 1", "users[].id = {alice}"}},
		{ui: hp, name: "create user dave", method: "POST", path: "/api/v1/user", body: `{"name":"dave"}`, ctype: "json",
			capture: map[string]string{"dave": "user.id"}},
		{ui: hp, name: "rename user", method: "POST", path: "/api/v1/user/{dave}/rename/dave2"},
		{ui: ui, name: "create user", method: "POST", path: "/api/v1/user", body: `{"name":"bob"}`, ctype: "text",
			capture: map[string]string{"bob": "user.id"}},
		{ui: ui, name: "list users", method: "GET", path: "/api/v1/user",
			fields: prefixed("users[]", "id: id", "name: string", "email: string", "createdAt: time")},
		{ui: ui, name: "rename user", method: "POST", path: "/api/v1/user/{bob}/rename/bobby"},
		{ui: ui, name: "duplicate user shows .message", method: "POST", path: "/api/v1/user", body: `{"name":"bobby"}`, ctype: "text",
			status: 409, fields: []string{"message: string"}},
		{ui: adm, name: "create user", method: "POST", path: "/api/v1/user", body: `{"name":"carol"}`, ctype: "text",
			fields: userFields("user"), capture: map[string]string{"carol": "user.id"}},
		{ui: adm, name: "rename user reads .user", method: "POST", path: "/api/v1/user/{carol}/rename/carla", body: `{}`, ctype: "text",
			fields: userFields("user"), want: []string{"user.name = carla"}},
		{ui: adm, name: "user by name", method: "GET", path: "/api/v1/user?name=carla", want: []string{"users count 1", "users[].id = {carol}"}},

		// --- pre-auth keys
		{ui: hp, name: "create key for a user", method: "POST", path: "/api/v1/preauthkey", ctype: "json",
			body:    `{"ephemeral":false,"reusable":true,"expiration":"` + day + `","user":"{alice}"}`,
			fields:  append(keyFields("preAuthKey"), "preAuthKey.user.id: id", "preAuthKey.user.name: string"),
			want:    []string{"preAuthKey.user.id = {alice}", "preAuthKey.reusable = true", "preAuthKey.used = false"},
			capture: map[string]string{"aliceKey": "preAuthKey.key"}, check: uicFullPreAuthKey},
		{ui: hp, name: "agent: tag-only key without a user", method: "POST", path: "/api/v1/preauthkey", ctype: "json",
			body:   `{"ephemeral":false,"reusable":false,"expiration":"` + day + `","aclTags":["tag:web"]}`,
			fields: keyFields("preAuthKey"), want: []string{"preAuthKey.user = null", "preAuthKey.aclTags = tag:web"},
			capture: map[string]string{"tagKey": "preAuthKey.key", "tagKeyID": "preAuthKey.id"}, check: uicFullPreAuthKey},
		{ui: hp, name: "SSH: ephemeral key", method: "POST", path: "/api/v1/preauthkey", ctype: "json",
			body:   `{"ephemeral":true,"reusable":false,"expiration":"` + day + `","user":"{alice}"}`,
			fields: keyFields("preAuthKey"), want: []string{"preAuthKey.ephemeral = true"},
			capture: map[string]string{"sshKeyID": "preAuthKey.id"}},
		{ui: hp, name: "list all keys (no user filter)", method: "GET", path: "/api/v1/preauthkey",
			fields: keyFields("preAuthKeys[]"), want: []string{"preAuthKeys[id={tagKeyID}].user = null", "preAuthKeys[id={sshKeyID}].user.id = {alice}"}},
		{ui: hp, name: "list keys of a user", method: "GET", path: "/api/v1/preauthkey?user={alice}",
			fields: keyFields("preAuthKeys[]"), want: []string{"preAuthKeys[].user.id = {alice}", "preAuthKeys count 2"}},
		{ui: hp, name: "expire key by id", method: "POST", path: "/api/v1/preauthkey/expire", body: `{"id":"{sshKeyID}"}`, ctype: "json"},
		{ui: hp, name: "expired key shows as expired", method: "GET", path: "/api/v1/preauthkey?user={alice}",
			want: []string{"preAuthKeys[id={sshKeyID}].expiration past"}},
		{ui: hp06, name: "create key", method: "POST", path: "/api/v1/preauthkey", ctype: "json",
			body:    `{"ephemeral":false,"reusable":false,"expiration":"` + day + `","user":"{alice}"}`,
			capture: map[string]string{"hp06KeyID": "preAuthKey.id"}},
		{ui: hp06, name: "list keys of a user", method: "GET", path: "/api/v1/preauthkey?user={alice}",
			capture: map[string]string{"hp06Listed": "preAuthKeys[id={hp06KeyID}].key"}},
		{ui: hp06, name: "expire key by {user id, listed key}", method: "POST", path: "/api/v1/preauthkey/expire",
			body: `{"user":"{alice}","key":"{hp06Listed}"}`, ctype: "json"},
		{ui: hp06, name: "expired key shows as expired", method: "GET", path: "/api/v1/preauthkey?user={alice}",
			want: []string{"preAuthKeys[id={hp06KeyID}].expiration past"}},
		{ui: ui, name: "create key", method: "POST", path: "/api/v1/preauthkey", ctype: "text",
			body: `{"user":"{bob}","expiration":"` + day + `","reusable":false,"ephemeral":false}`},
		{ui: ui, name: "list keys of a user", method: "GET", path: "/api/v1/preauthkey?user={bob}",
			fields:  prefixed("preAuthKeys[]", "id: id", "key: string", "expiration: time", "createdAt: time", "reusable: bool", "ephemeral: bool", "used: bool"),
			want:    []string{"preAuthKeys count 1"},
			capture: map[string]string{"bobKeyID": "preAuthKeys[].id", "bobListed": "preAuthKeys[].key"}},
		{ui: ui, name: "expire key by {user id, listed key}", method: "POST", path: "/api/v1/preauthkey/expire",
			body: `{"user":"{bob}","key":"{bobListed}"}`, ctype: "text"},
		{ui: ui, name: "expired key shows as expired", method: "GET", path: "/api/v1/preauthkey?user={bob}",
			want: []string{"preAuthKeys[id={bobKeyID}].expiration past"}},
		{ui: adm026, name: "create key (user by id)", method: "POST", path: "/api/v1/preauthkey", ctype: "text",
			body:   `{"user":"{carol}","reusable":true,"ephemeral":false,"expiration":"` + day + `"}`,
			fields: keyFields("preAuthKey"), want: []string{"preAuthKey.user.id = {carol}"},
			capture: map[string]string{"carolKey": "preAuthKey.key"}, check: uicFullPreAuthKey},
		{ui: adm, name: "create key (user by name)", method: "POST", path: "/api/v1/preauthkey", ctype: "text",
			body:   `{"user":"carla","reusable":false,"ephemeral":false,"expiration":"` + day + `"}`,
			fields: keyFields("preAuthKey"), want: []string{"preAuthKey.user.id = {carol}"},
			capture: map[string]string{"carol2KeyID": "preAuthKey.id"}},
		{ui: adm026, name: "create another key", method: "POST", path: "/api/v1/preauthkey", ctype: "text",
			body:    `{"user":"{carol}","reusable":false,"ephemeral":false,"expiration":"` + day + `"}`,
			capture: map[string]string{"carol3KeyID": "preAuthKey.id"}},
		{ui: adm026, name: "list keys (user by id)", method: "GET", path: "/api/v1/preauthkey?user={carol}",
			fields:  append(keyFields("preAuthKeys[]"), "preAuthKeys[].user.id: id", "preAuthKeys[].user.name: string"),
			capture: map[string]string{"carol3Listed": "preAuthKeys[id={carol3KeyID}].key"}},
		{ui: adm, name: "list keys (user by name)", method: "GET", path: "/api/v1/preauthkey?user=carla",
			fields: keyFields("preAuthKeys[]"), want: []string{"preAuthKeys count 3"},
			capture: map[string]string{"carol2User": "preAuthKeys[id={carol2KeyID}].user", "carol2Listed": "preAuthKeys[id={carol2KeyID}].key"}},
		{ui: adm, name: "expire key by {user OBJECT, listed key}", method: "POST", path: "/api/v1/preauthkey/expire",
			body: `{"user":{carol2User},"key":"{carol2Listed}"}`, ctype: "text"},
		{ui: adm026, name: "expire key by {user id, listed key}", method: "POST", path: "/api/v1/preauthkey/expire",
			body: `{"user":"{carol}","key":"{carol3Listed}"}`, ctype: "text"},
		{ui: adm, name: "expired keys show as expired", method: "GET", path: "/api/v1/preauthkey?user={carol}",
			want: []string{"preAuthKeys[id={carol2KeyID}].expiration past", "preAuthKeys[id={carol3KeyID}].expiration past"}},

		// --- nodes (registered by tailscale clients, not the UIs)
		{name: "tailscaled web1 (alice) online, advertising 10.20.0.0/24", do: uicNode("web1", "aliceKey", true, "10.20.0.0/24")},
		{name: "tailscaled agent1 (tag-only key)", do: uicNode("agent1", "tagKey", false)},
		{name: "tailscaled lab1 (carol)", do: uicNode("lab1", "carolKey", false)},
		{name: "tailscaled dev1 (alice)", do: uicNode("dev1", "aliceKey", false)},
		{ui: hp, name: "machines list", method: "GET", path: "/api/v1/node", fields: hpNode("nodes[]"),
			want: []string{"nodes[id={web1}].online = true", "nodes[id={web1}].user.name = alice",
				"nodes[id={web1}].availableRoutes has 10.20.0.0/24", "nodes[id={agent1}].tags = tag:web",
				"nodes[id={dev1}].online = false"}},
		{ui: hp, name: "machine page", method: "GET", path: "/api/v1/node/{web1}", fields: hpNode("node"),
			want: []string{"node.id = {web1}", "node.ipAddresses[] != "}},
		{ui: hp, name: "rename machine", method: "POST", path: "/api/v1/node/{web1}/rename/web-one"},
		{ui: hp, name: "renamed", method: "GET", path: "/api/v1/node/{web1}", want: []string{"node.givenName = web-one"}},
		{ui: hp, name: "approve route", method: "POST", path: "/api/v1/node/{web1}/approve_routes",
			body: `{"routes":["10.20.0.0/24"]}`, ctype: "json"},
		{ui: hp, name: "route approved and served", method: "GET", path: "/api/v1/node",
			want: []string{"nodes[id={web1}].approvedRoutes = 10.20.0.0/24", "nodes[id={web1}].availableRoutes has 10.20.0.0/24",
				"nodes[id={web1}].subnetRoutes has 10.20.0.0/24"}},
		{ui: hp, name: "set tags", method: "POST", path: "/api/v1/node/{agent1}/tags", body: `{"tags":["tag:web","tag:agent"]}`, ctype: "json"},
		{ui: hp, name: "tags set", method: "GET", path: "/api/v1/node/{agent1}", want: []string{"node.tags has tag:web", "node.tags has tag:agent", "node.tags count 2"}},
		{ui: hp, name: "undefined tag shows .message", method: "POST", path: "/api/v1/node/{agent1}/tags",
			body: `{"tags":["tag:undefined"]}`, ctype: "json", status: 400, fields: []string{"message: string"}},
		{ui: hp, name: "register machine (web login) explains the refusal", method: "POST",
			path: "/api/v1/node/register?user=alice&key=abcdefghijklmnopqrstuvwx", body: `{"user":"alice","key":"abcdefghijklmnopqrstuvwx"}`,
			ctype: "json", status: 404, fields: []string{"message: string"}},
		{ui: hp, name: "expire machine", method: "POST", path: "/api/v1/node/{dev1}/expire"},
		{ui: hp, name: "machine expired", method: "GET", path: "/api/v1/node/{dev1}", fields: []string{"node.expiry: time"}, want: []string{"node.expiry past"}},
		{ui: ui, name: "devices list", method: "GET", path: "/api/v1/node",
			fields: prefixed("nodes[]", "id: id", "name: string", "givenName: string", "lastSeen: time|null", "online: bool",
				"ipAddresses: []string", "tags: []string", "approvedRoutes: []string", "availableRoutes: []string",
				"subnetRoutes: []string", "user.id: id", "user.name: string")},
		{ui: ui, name: "rename device", method: "POST", path: "/api/v1/node/{web1}/rename/web-uno"},
		{ui: ui, name: "move device (user as a number)", method: "POST", path: "/api/v1/node/{dev1}/user", body: `{"user":{bob}}`, ctype: "text"},
		{ui: ui, name: "renamed and moved", method: "GET", path: "/api/v1/node",
			want: []string{"nodes[id={web1}].givenName = web-uno", "nodes[id={dev1}].user.id = {bob}"}},
		{ui: ui, name: "set tags", method: "POST", path: "/api/v1/node/{agent1}/tags", body: `{"tags":["tag:web"]}`, ctype: "text"},
		{ui: ui, name: "unapprove route", method: "POST", path: "/api/v1/node/{web1}/approve_routes", body: `{"routes":[]}`, ctype: "text"},
		{ui: ui, name: "route unapproved", method: "GET", path: "/api/v1/node", want: []string{"nodes[id={web1}].approvedRoutes count 0"}},
		{ui: ui, name: "approve route", method: "POST", path: "/api/v1/node/{web1}/approve_routes", body: `{"routes":["10.20.0.0/24"]}`, ctype: "text"},
		{ui: ui, name: "register device explains the refusal", method: "POST", path: "/api/v1/node/register?user=bobby&key=abcdefghijklmnopqrstuvwx",
			status: 404, fields: []string{"message: string"}},
		{ui: adm, name: "nodes list", method: "GET", path: "/api/v1/node",
			fields: prefixed("nodes[]", "id: id", "name: string", "givenName: string", "createdAt: time", "user.id: id", "user.name: string",
				"online: bool", "lastSeen: time|null", "expiry: time|null", "ipAddresses: []string", "registerMethod: regmethod",
				"approvedRoutes: []string", "availableRoutes: []string", "subnetRoutes: []string",
				"forcedTags: []string", "validTags: []string", "invalidTags: []string")},
		{ui: adm, name: "rename node reads .node", method: "POST", path: "/api/v1/node/{lab1}/rename/lab-one", body: `{}`, ctype: "text",
			want: []string{"node.givenName = lab-one"}},
		{ui: adm, name: "change owner reads .node.user.name", method: "POST", path: "/api/v1/node/{lab1}/user", body: `{"user":"{alice}"}`, ctype: "text",
			fields: []string{"node.user.name: string"}, want: []string{"node.user.id = {alice}"}},
		{ui: adm, name: "expire node reads .node", method: "POST", path: "/api/v1/node/{lab1}/expire", body: `{}`, ctype: "text",
			fields: []string{"node.expiry: time"}, want: []string{"node.expiry past"}},
		{ui: adm, name: "set tags reads .node", method: "POST", path: "/api/v1/node/{agent1}/tags", body: `{"tags":["tag:web","tag:agent"]}`, ctype: "text",
			fields: []string{"node.tags: []string"}, want: []string{"node.tags count 2"}},
		{ui: adm026, name: "approve routes reads .node", method: "POST", path: "/api/v1/node/{web1}/approve_routes",
			body: `{"routes":["10.20.0.0/24"]}`, ctype: "text",
			fields: []string{"node.approvedRoutes: []string", "node.online: bool"}, want: []string{"node.approvedRoutes has 10.20.0.0/24"}},
		{ui: adm, name: "register node explains the refusal", method: "POST", path: "/api/v1/node/register?user=carla&key=abcdefghijklmnopqrstuvwx",
			body: `{}`, ctype: "text", status: 404, fields: []string{"message: string"}},
		{ui: ui, name: "delete device", method: "DELETE", path: "/api/v1/node/{dev1}"},
		{ui: hp, name: "delete machine", method: "DELETE", path: "/api/v1/node/{agent1}"},
		{ui: adm, name: "delete node", method: "DELETE", path: "/api/v1/node/{lab1}"},
		{ui: hp, name: "delete machine", method: "DELETE", path: "/api/v1/node/{web1}"},
		{ui: hp, name: "no machines left", method: "GET", path: "/api/v1/node", want: []string{"nodes count 0"}},
		{ui: hp, name: "delete user", method: "DELETE", path: "/api/v1/user/{dave}"},
		{ui: ui, name: "delete user with an expired key", method: "DELETE", path: "/api/v1/user/{bob}"},
		{ui: adm, name: "delete user with keys", method: "DELETE", path: "/api/v1/user/{carol}"},
		{ui: ui, name: "only alice left", method: "GET", path: "/api/v1/user", want: []string{"users count 1", "users[].name = alice"}},
		{ui: ui, name: "unknown user shows .message", method: "POST", path: "/api/v1/user/999999/rename/x", status: 404, fields: []string{"message: string"}},

		// --- API key rotation
		{name: "API keys for the rotations", do: uicAPIKeys("uiOld", "adminOld")},
		{ui: ui, name: "rollover: find own key", method: "GET", path: "/api/v1/apikey", auth: "uiOld",
			check: uicFindsOwnKey(ui, "uiOld", "uiOldPrefix")},
		{ui: ui, name: "rollover: new key", method: "POST", path: "/api/v1/apikey", auth: "uiOld",
			body: `{"expiration":"` + days90 + `"}`, ctype: "text", fields: []string{"apiKey: string"}, capture: map[string]string{"uiNew": "apiKey"}},
		{ui: ui, name: "rollover: expire old key by listed prefix, with the new key", method: "POST", path: "/api/v1/apikey/expire", auth: "uiNew",
			body: `{"prefix":"{uiOldPrefix}"}`, ctype: "text"},
		{ui: ui, name: "rollover: old key refused", method: "GET", path: "/api/v1/user", auth: "uiOld", status: 401},
		{ui: ui, name: "rollover: new key works", method: "GET", path: "/api/v1/apikey", auth: "uiNew", check: uicFindsOwnKey(ui, "uiNew", "")},
		{ui: adm, name: "rotation: new key", method: "POST", path: "/api/v1/apikey", auth: "adminOld",
			body: `{"expiration":"` + days90 + `"}`, ctype: "text", fields: []string{"apiKey: string"}, capture: map[string]string{"adminNew": "apiKey"}},
		{ui: adm, name: "rotation: expire old key by the whole key, with the old key", method: "POST", path: "/api/v1/apikey/expire", auth: "adminOld",
			body: `{"prefix":"{adminOld}"}`, ctype: "text"},
		{ui: adm, name: "rotation: old key refused", method: "GET", path: "/api/v1/user", auth: "adminOld", status: 401},
		{ui: adm, name: "rotation: new key works", method: "GET", path: "/api/v1/apikey", auth: "adminNew", check: uicFindsOwnKey(adm, "adminNew", "")},
	}
}

// TestUICompat replays what each web UI does against a real server over
// HTTP with an API key. Each step is a subtest named after the UI, so a
// failure says which UI breaks and on which field.
func TestUICompat(t *testing.T) {
	ts := startServerWith(t, t.TempDir(), "policy:\n  mode: database\n", nil)
	st := &uicState{parent: t, ts: ts, vars: map[string]string{
		"key": uicAPIKey(t, ts, time.Now().Add(time.Hour)),
	}}
	for i, s := range uicSteps() {
		ui := s.ui
		if ui == "" {
			ui = "setup"
		}
		t.Run(fmt.Sprintf("%02d %s: %s", i, ui, s.name), func(t *testing.T) { st.run(t, s) })
	}
}

// TestUICompatReleaseVersion: what a release build (the Makefile's
// default VERSION) answers on /version must put Headplane in the mode
// that matches this API (>= 0.28: flat tags, pre-auth key IDs).
func TestUICompatReleaseVersion(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Skip("no Makefile:", err)
	}
	m := regexp.MustCompile(`(?m)^VERSION \?= (\S+)`).FindSubmatch(mk)
	if m == nil {
		t.Skip("Makefile sets no default VERSION")
	}
	release := string(m[1])
	ts := &testServer{servertest.Start(t, engine(t, servertest.Options{Version: release}))}
	r := uicHTTP(t, "GET", ts.URL+"/version", "", "", "", nil)
	if r.status != 200 {
		t.Fatalf("/version: %d %s", r.status, r.raw)
	}
	for _, e := range uicCheckFields(r.json, []string{"version: string"}) {
		t.Error(e)
	}
	for _, e := range uicHeadplaneVersionCheck(nil, r) {
		t.Errorf("release build %s: /version answers %s; %s", release, r.raw, e)
	}
}

// uicWant401 checks a refusal: 401, an RFC 7807 body, and nothing from the
// tailnet in it.
func uicWant401(t *testing.T, what string, r uicResp, secrets []string) {
	t.Helper()
	if r.status != http.StatusUnauthorized {
		t.Errorf("%s: status %d, want 401; body %s", what, r.status, uicTrunc(r.raw))
		return
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/problem+json") {
		t.Errorf("%s: Content-Type %q, want application/problem+json", what, ct)
	}
	obj, ok := r.json.(map[string]any)
	if !ok {
		t.Errorf("%s: body is not a JSON object: %q", what, r.raw)
		return
	}
	if s, _ := obj["status"].(float64); s != 401 {
		t.Errorf("%s: problem status %v, want 401", what, obj["status"])
	}
	for _, k := range []string{"users", "user", "nodes", "node", "preAuthKeys", "apiKeys", "policy"} {
		if _, ok := obj[k]; ok {
			t.Errorf("%s: 401 body carries %q: %s", what, k, r.raw)
		}
	}
	for _, s := range secrets {
		if strings.Contains(string(r.raw), s) {
			t.Errorf("%s: 401 body leaks %q: %s", what, s, r.raw)
		}
	}
}

// uicListedPrefix returns the prefix GET /api/v1/apikey lists for full.
func uicListedPrefix(t *testing.T, ts *testServer, auth, full string) string {
	t.Helper()
	r := uicHTTP(t, "GET", ts.URL+"/api/v1/apikey", "Bearer "+auth, "", "", nil)
	rest := strings.TrimPrefix(full, "hskey-api-")
	raw, _, _ := strings.Cut(rest, "-")
	obj, _ := r.json.(map[string]any)
	keys, _ := obj["apiKeys"].([]any)
	for _, e := range keys {
		m, _ := e.(map[string]any)
		if p, _ := m["prefix"].(string); p != "" && strings.Contains(p, raw) {
			return p
		}
	}
	t.Fatalf("GET /api/v1/apikey does not list %s...: %d %s", raw, r.status, uicTrunc(r.raw))
	return ""
}

// TestUICompatAPIAuth: on the main listener every /api/v1 call needs a
// valid, unexpired, undeleted API key; without one the answer is 401 with
// a problem body and no data, and writes do not happen. /health, /version
// and the OpenAPI document stay public; the unix socket needs no key.
func TestUICompatAPIAuth(t *testing.T) {
	// Over a hundred refused calls from one address: more than the
	// failures allowed before 429 (TestAPIKeyFailuresSlowed tests that).
	ts := startServerWith(t, t.TempDir(), "", func(s *server.Server) {
		s.SetAPIOptions(func(o *api.Options) { o.KeyFailureBurst = 1000 })
	})
	good := uicAPIKey(t, ts, time.Now().Add(time.Hour))
	toExpire := uicAPIKey(t, ts, time.Now().Add(time.Hour))
	toDelete := uicAPIKey(t, ts, time.Now().Add(time.Hour))

	ctx := context.Background()
	u, err := ts.State().CreateUser(ctx, store.User{Name: "secretuser-zeta"})
	if err != nil {
		t.Fatal(err)
	}
	authKey := ts.makeKey(t, u.ID, true, time.Now().Add(time.Hour))
	if _, msg := register(t, newClient(t, ts.URL), authKey, "secretnode-omega"); msg != "" {
		t.Fatalf("registering: %s", msg)
	}
	nodeID := ts.State().Nodes()[0].ID
	secrets := []string{"secretuser-zeta", "secretnode-omega", "alice"}

	// With the good key: the listing works (and would leak, if sent on a 401).
	r := uicHTTP(t, "GET", ts.URL+"/api/v1/node", "Bearer "+good, "", "", nil)
	if r.status != 200 || !strings.Contains(string(r.raw), "secretnode-omega") {
		t.Fatalf("good key: %d %s", r.status, uicTrunc(r.raw))
	}
	r = uicHTTP(t, "POST", ts.URL+"/api/v1/apikey/expire", "Bearer "+good, "json",
		fmt.Sprintf(`{"prefix":%q}`, uicListedPrefix(t, ts, good, toExpire)), nil)
	if r.status != 200 {
		t.Errorf("expiring a key by its listed prefix: %d %s", r.status, uicTrunc(r.raw))
	}
	r = uicHTTP(t, "DELETE", ts.URL+"/api/v1/apikey/"+url.PathEscape(uicListedPrefix(t, ts, good, toDelete)), "Bearer "+good, "", "", nil)
	if r.status != 200 {
		t.Errorf("deleting a key by its listed prefix: %d %s", r.status, uicTrunc(r.raw))
	}
	if r := uicHTTP(t, "GET", ts.URL+"/api/v1/apikey", "Bearer "+good, "", "", nil); strings.Contains(string(r.raw), strings.Split(toDelete, "-")[2]) {
		t.Errorf("deleted key still listed: %s", r.raw)
	}

	_, goodSecret, _ := strings.Cut(strings.TrimPrefix(good, "hskey-api-"), "-")
	goodPrefix := strings.TrimSuffix(strings.TrimPrefix(good, "hskey-api-"), "-"+goodSecret)
	zeros := strings.Repeat("0", 64)
	refused := []struct{ name, auth string }{
		{"no Authorization header", ""},
		{"Basic credentials", "Basic YWRtaW46YWRtaW4="},
		{"Bearer and no key", "Bearer"},
		{"Bearer and a space", "Bearer "},
		{"the key without Bearer", good},
		{"not an API key", "Bearer not-a-key"},
		{"a pre-auth key", "Bearer " + authKey},
		{"wrong secret for an existing prefix", "Bearer hskey-api-" + goodPrefix + "-" + zeros},
		{"unknown prefix", "Bearer hskey-api-000000000000-" + zeros},
		{"truncated key", "Bearer " + good[:len(good)-1]},
		{"expired key", "Bearer " + toExpire},
		{"deleted key", "Bearer " + toDelete},
	}
	calls := []struct{ method, path, body string }{
		{"GET", "/api/v1/user", ""},
		{"GET", "/api/v1/node", ""},
		{"GET", fmt.Sprintf("/api/v1/node/%d", nodeID), ""},
		{"GET", "/api/v1/preauthkey", ""},
		{"GET", "/api/v1/apikey", ""},
		{"GET", "/api/v1/policy", ""},
		{"POST", "/api/v1/user", `{"name":"intruder"}`},
		{"POST", "/api/v1/apikey", `{}`},
		{"DELETE", fmt.Sprintf("/api/v1/node/%d", nodeID), ""},
		{"GET", "/api/v1/no-such-route", ""},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			for _, call := range calls {
				r := uicHTTP(t, call.method, ts.URL+call.path, c.auth, "json", call.body, nil)
				uicWant401(t, call.method+" "+call.path, r, secrets)
			}
		})
	}
	// Nothing the refused calls asked for happened.
	if out := doAPI(t, ts.SocketHandler(), "GET", "/api/v1/user?name=intruder", ""); strings.Contains(out, "intruder") {
		t.Errorf("a refused POST created a user: %s", out)
	}
	if _, ok := ts.State().Node(nodeID); !ok {
		t.Errorf("a refused DELETE deleted the node")
	}
	if out := doAPI(t, ts.SocketHandler(), "GET", "/api/v1/apikey", ""); strings.Count(out, `"prefix"`) != 2 {
		t.Errorf("want the good and the expired key only after refused creations: %s", out)
	}

	// Public routes, with no key or with a bad one (Headplane 0.6 sends
	// its key to /health).
	for _, path := range []string{"/health", "/version", "/api/v1/openapi.yaml"} {
		for _, auth := range []string{"", "Bearer " + toExpire, "Bearer junk"} {
			if r := uicHTTP(t, "GET", ts.URL+path, auth, "", "", nil); r.status != 200 {
				t.Errorf("GET %s with Authorization %q: %d, want 200 (public)", path, auth, r.status)
			}
		}
	}
	// The unix socket: local trust, no key.
	if out := doAPI(t, ts.SocketHandler(), "GET", "/api/v1/user", ""); !strings.Contains(out, "secretuser-zeta") {
		t.Errorf("socket without a key: %s", out)
	}
}

func uicPreflight(t *testing.T, target, origin, method, headers string) http.Header {
	t.Helper()
	req, _ := http.NewRequest("OPTIONS", target, nil)
	req.Header.Set("Origin", origin)
	req.Header.Set("Access-Control-Request-Method", method)
	if headers != "" {
		req.Header.Set("Access-Control-Request-Headers", headers)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 && resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("uicPreflight %s %s from %s: status %d with CORS headers; browsers need 2xx", method, target, origin, resp.StatusCode)
	}
	return resp.Header
}

// uicHeaderHas reports whether the comma-separated header lists token. A "*"
// counts, except for Authorization, which browsers never let a wildcard
// cover.
func uicHeaderHas(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, p := range strings.Split(v, ",") {
			p = strings.TrimSpace(p)
			if strings.EqualFold(p, token) || (p == "*" && !strings.EqualFold(token, "authorization")) {
				return true
			}
		}
	}
	return false
}

// TestUICompatCORS: browser UIs (headscale-ui, headscale-admin) served
// from another origin can call the API when that origin is configured,
// and only then.
func TestUICompatCORS(t *testing.T) {
	const origin, other = "https://ui.example", "https://evil.example"
	ts := startServerWith(t, t.TempDir(), "api:\n  cors_allowed_origins: [\""+origin+"\"]\n", nil)
	key := uicAPIKey(t, ts, time.Now().Add(time.Hour))

	for _, c := range []struct{ method, path, headers string }{
		{"GET", "/api/v1/node", "authorization"},
		{"POST", "/api/v1/user", "authorization"},
		{"POST", "/api/v1/node/1/tags", "authorization,content-type"},
		{"PUT", "/api/v1/policy", "authorization"},
		{"DELETE", "/api/v1/node/1", "authorization"},
	} {
		h := uicPreflight(t, ts.URL+c.path, origin, c.method, c.headers)
		if got := h.Get("Access-Control-Allow-Origin"); got != origin {
			t.Errorf("uicPreflight %s %s from %s: Access-Control-Allow-Origin %q", c.method, c.path, origin, got)
			continue
		}
		for _, hd := range strings.Split(c.headers, ",") {
			if !uicHeaderHas(h, "Access-Control-Allow-Headers", hd) {
				t.Errorf("uicPreflight %s %s: Access-Control-Allow-Headers %q lacks %s", c.method, c.path, h.Get("Access-Control-Allow-Headers"), hd)
			}
		}
		if c.method != "GET" && c.method != "POST" && !uicHeaderHas(h, "Access-Control-Allow-Methods", c.method) {
			t.Errorf("uicPreflight %s %s: Access-Control-Allow-Methods %q lacks %s", c.method, c.path, h.Get("Access-Control-Allow-Methods"), c.method)
		}
		if h.Get("Access-Control-Allow-Credentials") == "true" {
			t.Errorf("uicPreflight allows credentials (cookies); the UIs send a bearer key and need none")
		}

		h = uicPreflight(t, ts.URL+c.path, other, c.method, c.headers)
		if got := h.Get("Access-Control-Allow-Origin"); got != "" {
			t.Errorf("uicPreflight from %s: Access-Control-Allow-Origin %q, want none", other, got)
		}
	}
	// The real requests need the header too, or the browser hides the
	// answer from the page; so does a 401, or the UI cannot tell "bad
	// key" from "network down".
	hdr := map[string]string{"Origin": origin}
	r := uicHTTP(t, "GET", ts.URL+"/api/v1/user", "Bearer "+key, "", "", hdr)
	if r.status != 200 || r.header.Get("Access-Control-Allow-Origin") != origin {
		t.Errorf("GET from %s: %d, Access-Control-Allow-Origin %q", origin, r.status, r.header.Get("Access-Control-Allow-Origin"))
	}
	if !uicHeaderHas(r.header, "Vary", "Origin") {
		t.Errorf("GET from %s: Vary %q lacks Origin (caches would serve one origin's answer to another)", origin, r.header.Values("Vary"))
	}
	r = uicHTTP(t, "GET", ts.URL+"/api/v1/user", "", "", "", hdr)
	if r.status != 401 || r.header.Get("Access-Control-Allow-Origin") != origin {
		t.Errorf("GET without a key from %s: %d, Access-Control-Allow-Origin %q; want 401 readable by the page", origin, r.status, r.header.Get("Access-Control-Allow-Origin"))
	}
	r = uicHTTP(t, "GET", ts.URL+"/api/v1/user", "Bearer "+key, "", "", map[string]string{"Origin": other})
	if got := r.header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("GET from %s: Access-Control-Allow-Origin %q, want none", other, got)
	}

	// No origins configured: no CORS headers at all.
	plain := startServer(t)
	pkey := uicAPIKey(t, plain, time.Now().Add(time.Hour))
	h := uicPreflight(t, plain.URL+"/api/v1/node", origin, "GET", "authorization")
	if got := h.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("no origins configured: uicPreflight gets Access-Control-Allow-Origin %q", got)
	}
	r = uicHTTP(t, "GET", plain.URL+"/api/v1/user", "Bearer "+pkey, "", "", hdr)
	if got := r.header.Get("Access-Control-Allow-Origin"); got != "" || r.status != 200 {
		t.Errorf("no origins configured: GET from %s: %d, Access-Control-Allow-Origin %q", origin, r.status, got)
	}
}
