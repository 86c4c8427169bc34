package api_test

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/fuzzseed"
	"github.com/hsctl/headscale/internal/servertest"
)

// fuzzRoutes are the API calls that read a request body. {node} and
// {user} are the node and user startFuzzServer sets up.
var fuzzRoutes = []struct{ method, path string }{
	{"POST", "/api/v1/user"},
	{"POST", "/api/v1/user/{user}/rename/renamed"},
	{"POST", "/api/v1/preauthkey"},
	{"POST", "/api/v1/preauthkey/expire"},
	{"POST", "/api/v1/node/{node}/expire"},
	{"POST", "/api/v1/node/{node}/tags"},
	{"POST", "/api/v1/node/{node}/approve_routes"},
	{"POST", "/api/v1/node/{node}/user"},
	{"POST", "/api/v1/node/{node}/rename/renamed"},
	{"POST", "/api/v1/node/register?user=fuzz&key=abcdefghijklmnopqrstuvwx"},
	{"POST", "/api/v1/auth/register"},
	{"POST", "/api/v1/auth/approve"},
	{"POST", "/api/v1/auth/reject"},
	{"POST", "/api/v1/apikey"},
	{"POST", "/api/v1/apikey/expire"},
	{"PUT", "/api/v1/policy"},
	{"POST", "/api/v1/policy/check"},
	{"POST", "/api/v1/debug/node"},
}

// FuzzAPIBody sends arbitrary bodies to every API call that reads one,
// through the real server: a client mistake must get a 4xx with an RFC 7807
// body saying what was wrong, never a 5xx, a dropped connection (a
// handler panic) or an unbounded allocation. Seeds are the request bodies
// of the API tests and the web UI compatibility tests.
func FuzzAPIBody(f *testing.F) {
	seeds, err := fuzzseed.Literals(func(s string) bool { return strings.HasPrefix(strings.TrimSpace(s), "{") },
		"*_test.go", "../server/uicompat_test.go", "../server/server_test.go")
	if err != nil {
		f.Fatal(err)
	}
	for i, s := range seeds {
		f.Add(uint8(i%len(fuzzRoutes)), []byte(s))
	}
	for i := range fuzzRoutes {
		f.Add(uint8(i), []byte(`{}`))
		f.Add(uint8(i), []byte(``))
		f.Add(uint8(i), []byte(`{"user":"1","id":"1","tags":["tag:a"],"routes":["10.0.0.0/8"],"policy":"{}","expiration":"2999-01-01T00:00:00Z","authId":"x","prefix":"abc"}`))
	}
	ts, ids := startFuzzServer(f)
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		rt := fuzzRoutes[int(route)%len(fuzzRoutes)]
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.TotalAlloc
		// A request that hangs fails the worker with its input, rather than
		// stalling the fuzzer silently.
		hung := time.AfterFunc(20*time.Second, func() { panic(fmt.Sprintf("%s %s still running after 20s on %q", rt.method, rt.path, body)) })
		resp, out, err := ts.API(rt.method, ids.Replace(rt.path), body)
		hung.Stop()
		if err != nil {
			t.Fatalf("%s %s: %v (did the handler panic?)", rt.method, rt.path, err)
		}
		runtime.ReadMemStats(&ms)
		if got := ms.TotalAlloc - before; got > 64<<20 {
			t.Fatalf("%s %s with %d bytes allocated %d MiB", rt.method, rt.path, len(body), got>>20)
		}
		switch {
		case resp.StatusCode >= 500:
			t.Fatalf("%s %s %q: %d %s", rt.method, rt.path, body, resp.StatusCode, out)
		case resp.StatusCode >= 400:
			var p struct {
				Detail string `json:"detail"`
				Status int    `json:"status"`
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
				t.Fatalf("%s %s: %d with Content-Type %q", rt.method, rt.path, resp.StatusCode, ct)
			}
			if err := json.Unmarshal(out, &p); err != nil || p.Detail == "" || p.Status != resp.StatusCode {
				t.Fatalf("%s %s: %d without a reason: %s", rt.method, rt.path, resp.StatusCode, out)
			}
		default:
			if !json.Valid(out) {
				t.Fatalf("%s %s: %d with a body that is not JSON: %q", rt.method, rt.path, resp.StatusCode, out)
			}
		}
	})
}

// startFuzzServer starts the server a fuzz process reuses for every input,
// with policy.mode database so the policy API is live, a user and a node
// registered with the user's reusable key. The replacer puts their IDs
// for {user} and {node} in a path.
func startFuzzServer(f *testing.F) (*servertest.Server, *strings.Replacer) {
	f.Helper()
	ts := servertest.Start(f, servertest.Options{ExtraYAML: "policy:\n  mode: database\n", DiscardLogs: true})
	user := ts.CreateUser(f, "fuzz")
	node := ts.RegisterNode(f, ts.CreatePreAuthKey(f, user, true, time.Now().Add(24*time.Hour)), "fuzz-node")
	return ts, strings.NewReplacer("{node}", node.ID, "{user}", user)
}
