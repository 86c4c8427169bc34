package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPolicyCommands(t *testing.T) {
	dir := t.TempDir()
	cfg := writeConfig(t, "state_dir: "+dir+"\nunix_socket: "+dir+"/hs.sock\nlisten_addr: 127.0.0.1:0\nmetrics_listen_addr: \"\"\n"+
		"derp:\n  server:\n    stun_listen_addr: 127.0.0.1:0\npolicy:\n  mode: database\n")
	good := filepath.Join(dir, "good.hujson")
	os.WriteFile(good, []byte(`{
  // alice may reach bob
  "acls": [{"action": "accept", "src": ["alice@"], "dst": ["bob@:*"]}],
}
`), 0o600)
	bad := filepath.Join(dir, "bad.hujson")
	os.WriteFile(bad, []byte("{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"group:x\"], \"dst\": [\"*:22\"]},\n  ],\n}\n"), 0o600)
	failing := filepath.Join(dir, "failing.hujson")
	os.WriteFile(failing, []byte(`{
  "acls": [{"action": "accept", "src": ["alice@"], "dst": ["bob@:*"]}],
  "tests": [{"src": "bob@", "accept": ["alice@:22"]}],
}`), 0o600)

	// Without a server, check validates the file alone and says so.
	if code, out, stderr := run(t, "-c", cfg, "policy", "check", "-f", good); code != 0 || !strings.Contains(out, "syntax OK") {
		t.Fatalf("offline check: %d %q %q", code, out, stderr)
	}
	if code, _, stderr := run(t, "-c", cfg, "policy", "check", "-f", bad); code != 1 || !strings.Contains(stderr, bad+":3:") {
		t.Fatalf("offline check of a bad file: %d %q", code, stderr)
	}

	runServer(t, cfg)
	run(t, "-c", cfg, "users", "create", "alice")
	run(t, "-c", cfg, "users", "create", "bob")
	if code, out, _ := run(t, "-c", cfg, "policy", "get"); code != 0 || !strings.Contains(out, "no policy") {
		t.Fatalf("get before set: %d %q", code, out)
	}
	if code, out, stderr := run(t, "-c", cfg, "policy", "check", "-f", good); code != 0 || !strings.Contains(out, "policy OK") {
		t.Fatalf("check: %d %q %q", code, out, stderr)
	}
	if code, _, stderr := run(t, "-c", cfg, "policy", "check", "-f", failing); code != 1 || !strings.Contains(stderr, "tests failed") {
		t.Fatalf("check of a policy whose tests fail: %d %q", code, stderr)
	}
	if code, _, stderr := run(t, "-c", cfg, "policy", "set", "-f", good); code != 0 {
		t.Fatalf("set: %q", stderr)
	}
	if code, _, stderr := run(t, "-c", cfg, "policy", "set", "-f", bad); code != 1 || !strings.Contains(stderr, bad+":3:34: acls[0].src[0]") {
		t.Fatalf("set of a broken file: %d %q", code, stderr)
	}
	if code, _, stderr := run(t, "-c", cfg, "policy", "set", "-f", failing); code != 1 || !strings.Contains(stderr, "tests failed") {
		t.Fatalf("set of a policy whose tests fail: %d %q", code, stderr)
	}
	// The refused ones left the good policy in force.
	if code, out, _ := run(t, "-c", cfg, "policy", "get"); code != 0 || !strings.Contains(out, "alice may reach bob") {
		t.Fatalf("get after refused sets: %d %q", code, out)
	}
}

func TestPolicySetRefusedInFileMode(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.hujson")
	os.WriteFile(pol, []byte(`{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`), 0o600)
	cfg := writeConfig(t, "state_dir: "+dir+"\nunix_socket: "+dir+"/hs.sock\nlisten_addr: 127.0.0.1:0\nmetrics_listen_addr: \"\"\n"+
		"derp:\n  server:\n    stun_listen_addr: 127.0.0.1:0\npolicy:\n  mode: file\n  path: "+pol+"\n")
	if code, out, stderr := run(t, "-c", cfg, "configtest"); code != 0 {
		t.Fatalf("configtest: %q %q", out, stderr)
	}
	runServer(t, cfg)
	if code, _, stderr := run(t, "-c", cfg, "policy", "set", "-f", pol); code != 1 || !strings.Contains(stderr, "policy.mode is \"file\"") {
		t.Fatalf("set in file mode: %d %q", code, stderr)
	}
	if code, out, _ := run(t, "-c", cfg, "policy", "get"); code != 0 || !strings.Contains(out, `"dst": ["*:*"]`) {
		t.Fatalf("get in file mode: %d %q", code, out)
	}
	// configtest reports a broken policy file with its line.
	os.WriteFile(pol, []byte("{\n  \"acls\": [\n    {\"action\": \"drop\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}\n  ]\n}\n"), 0o600)
	if code, _, stderr := run(t, "-c", cfg, "configtest"); code != 1 || !strings.Contains(stderr, pol+":3:") {
		t.Fatalf("configtest with a broken policy: %d %q", code, stderr)
	}
}
