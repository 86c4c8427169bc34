package server_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/store"
)

// TestEveryRouteOverHTTP calls every /api/v1 operation the API declares,
// over real HTTP on the main listener: without a key each answers 401
// problem+json; with a key each answers 2xx or a 4xx problem+json, never
// a 5xx, for plausible and for junk input.
func TestEveryRouteOverHTTP(t *testing.T) {
	ts := startServerWith(t, t.TempDir(), "policy:\n  mode: database\n", nil)
	ctx := t.Context()
	u, err := ts.State().CreateUser(ctx, store.User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	register(t, newClient(t, ts.URL), ts.makeKey(t, u.ID, true, time.Now().Add(time.Hour)), "one")
	var created struct {
		APIKey string `json:"apiKey"`
	}
	json.Unmarshal([]byte(doAPI(t, ts.SocketHandler(), "POST", "/api/v1/apikey", `{}`)), &created)
	if !strings.HasPrefix(created.APIKey, "hskey-api-") {
		t.Fatalf("no API key: %+v", created)
	}
	prefix := strings.Split(created.APIKey, "-")[2]

	call := func(method, path, body, key string) (int, string, string) {
		req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
	}
	fill := func(pattern, id, prefixVal string) (string, string) {
		method, path, _ := strings.Cut(pattern, " ")
		r := strings.NewReplacer("{id}", id, "{name}", "renamed", "{prefix}", prefixVal)
		return method, r.Replace(path)
	}
	for _, pattern := range ts.APIRoutes() {
		if strings.HasPrefix(pattern, "DELETE /api/v1/apikey/") {
			continue // would delete the key the test uses; covered in TestUICompatAPIAuth
		}
		method, path := fill(pattern, "1", prefix)
		if code, ctype, body := call(method, path, `{}`, ""); code != http.StatusUnauthorized || ctype != "application/problem+json" || strings.Contains(body, "alice") {
			t.Errorf("%s without a key: %d %s %s", pattern, code, ctype, body)
		}
		for _, tc := range []struct{ id, body string }{{"1", `{}`}, {"999", `{"junk": [1,2,3]}`}, {"x", `not json`}} {
			method, path := fill(pattern, tc.id, prefix)
			code, ctype, body := call(method, path, tc.body, created.APIKey)
			switch {
			case code >= 500:
				t.Errorf("%s (id %s, body %s): %d %s", pattern, tc.id, tc.body, code, body)
			case code >= 400 && ctype != "application/problem+json":
				t.Errorf("%s (id %s): %d without problem+json: %s %s", pattern, tc.id, code, ctype, body)
			case code < 300 && !json.Valid([]byte(body)) && !strings.HasSuffix(pattern, "openapi.yaml"):
				t.Errorf("%s (id %s): %d with a body that is not JSON: %s", pattern, tc.id, code, body)
			}
		}
	}
}
