package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func runEnv(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Execute(Env{Version: "test", Stdout: &out, Stderr: &errb, Environ: env}, args)
	return code, out.String(), errb.String()
}

// TestRemoteCLIWithAPIKey: the same CLI works locally over the socket
// without a key and remotely over HTTP with one; no key, a wrong key and
// an expired key are refused.
func TestRemoteCLIWithAPIKey(t *testing.T) {
	addr := freePort(t)
	cfg := startServer(t, t.TempDir(), "listen_addr: "+addr+"\n").ConfigPath
	if code, _, stderr := run(t, "-c", cfg, "users", "create", "alice"); code != 0 {
		t.Fatal(stderr)
	}
	code, key, stderr := run(t, "-c", cfg, "apikeys", "create", "--expiration", "1h")
	key = strings.TrimSpace(key)
	if code != 0 || !strings.HasPrefix(key, "hskey-api-") {
		t.Fatalf("apikeys create: %d %q %q", code, key, stderr)
	}
	prefix := strings.Split(key, "-")[2]
	_, out, _ := run(t, "-c", cfg, "apikeys", "list", "-o", "json")
	var keys []hsApiKey
	if json.Unmarshal([]byte(out), &keys) != nil || len(keys) != 1 || keys[0].Prefix != "hskey-api-"+prefix || strings.Contains(out, key) {
		t.Fatalf("apikeys list: %s", out)
	}

	remote := func(k string) []string {
		return []string{"HEADSCALE_CLI_ADDRESS=http://" + addr, "HEADSCALE_CLI_API_KEY=" + k}
	}
	code, out, stderr = runEnv(t, remote(key), "-c", cfg, "users", "list", "-o", "json")
	if code != 0 || !strings.Contains(out, `"alice"`) {
		t.Fatalf("remote users list: %d %q %q", code, out, stderr)
	}
	if code, _, stderr := runEnv(t, []string{"HEADSCALE_CLI_ADDRESS=http://" + addr}, "-c", cfg, "users", "list"); code != 1 || !strings.Contains(stderr, "no API key") {
		t.Fatalf("remote without a key: %d %q", code, stderr)
	}
	wrong := "hskey-api-" + prefix + "-" + strings.Repeat("0", 64)
	if code, out, stderr := runEnv(t, remote(wrong), "-c", cfg, "users", "list"); code != 1 || !strings.Contains(stderr, "invalid API key") || strings.Contains(out+stderr, "alice") {
		t.Fatalf("remote with a wrong key: %d %q %q", code, out, stderr)
	}
	if code, _, stderr := run(t, "-c", cfg, "apikeys", "expire", "--prefix", prefix); code != 0 {
		t.Fatal(stderr)
	}
	if code, out, stderr := runEnv(t, remote(key), "-c", cfg, "users", "list"); code != 1 || !strings.Contains(stderr, "expired") || strings.Contains(out+stderr, "alice") {
		t.Fatalf("remote with an expired key: %d %q %q", code, out, stderr)
	}
	if code, _, stderr := run(t, "-c", cfg, "apikeys", "delete", "--prefix", prefix); code != 0 {
		t.Fatal(stderr)
	}
	if code, out, stderr := runEnv(t, remote(key), "-c", cfg, "users", "list"); code != 1 || !strings.Contains(stderr, "invalid API key") {
		t.Fatalf("remote with a deleted key: %d %q %q", code, out, stderr)
	}
	// Locally, over the socket, no key is needed.
	if code, out, _ := run(t, "-c", cfg, "users", "list", "-o", "json"); code != 0 || !strings.Contains(out, `"alice"`) {
		t.Fatalf("local users list: %d %q", code, out)
	}
}
