package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsctl/headscale/internal/servertest"
)

func TestPolicyCommands(t *testing.T) {
	opts := servertest.Options{ExtraYAML: "policy:\n  mode: database\n"}
	cfg := servertest.WriteConfig(t, &opts) // the server starts after the offline checks
	dir := opts.Dir
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
	if code, out, stderr := run(t, "-c", cfg, "policy", "check", "-f", good); code != 0 || !strings.Contains(out, "Policy is valid as a file") {
		t.Fatalf("offline check: %d %q %q", code, out, stderr)
	}
	if code, _, stderr := run(t, "-c", cfg, "policy", "check", "-f", bad); code != 1 || !strings.Contains(stderr, bad+":3:") {
		t.Fatalf("offline check of a bad file: %d %q", code, stderr)
	}

	servertest.Start(t, opts)
	run(t, "-c", cfg, "users", "create", "alice")
	run(t, "-c", cfg, "users", "create", "bob")
	if code, out, _ := run(t, "-c", cfg, "policy", "get"); code != 0 || !strings.Contains(out, "no policy") {
		t.Fatalf("get before set: %d %q", code, out)
	}
	if code, out, stderr := run(t, "-c", cfg, "policy", "check", "-f", good); code != 0 || out != "Policy is valid\n" {
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
	opts := servertest.Options{Dir: dir, ExtraYAML: "policy:\n  mode: file\n  path: " + pol + "\n"}
	cfg := servertest.WriteConfig(t, &opts) // the server starts after configtest
	if code, out, stderr := run(t, "-c", cfg, "configtest"); code != 0 {
		t.Fatalf("configtest: %q %q", out, stderr)
	}
	servertest.Start(t, opts)
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

// TestPolicyBypass: Headscale's --bypass-grpc-and-access-database-directly
// works on the database of a stopped server (get, set compiled against its
// users and nodes, check with the tests) and is refused while one runs.
func TestPolicyBypass(t *testing.T) {
	opts := servertest.Options{ExtraYAML: "policy:\n  mode: database\n"}
	cfg := servertest.WriteConfig(t, &opts)
	good := filepath.Join(opts.Dir, "good.hujson")
	os.WriteFile(good, []byte(`{"acls": [{"action": "accept", "src": ["alice@"], "dst": ["bob@:*"]}]} // bypassed
`), 0o600)
	failing := filepath.Join(opts.Dir, "failing.hujson")
	os.WriteFile(failing, []byte(`{
  "acls": [{"action": "accept", "src": ["alice@"], "dst": ["bob@:*"]}],
  "tests": [{"src": "bob@", "accept": ["alice@:22"]}],
}`), 0o600)
	unknown := filepath.Join(opts.Dir, "unknown.hujson")
	os.WriteFile(unknown, []byte(`{"acls": [{"action": "accept", "src": ["group:nobody"], "dst": ["bob@:*"]}]}`), 0o600)
	const bypass = "--bypass-grpc-and-access-database-directly"

	ts := servertest.Start(t, opts)
	run(t, "-c", cfg, "users", "create", "alice")
	run(t, "-c", cfg, "users", "create", "bob")
	if code, _, stderr := run(t, "-c", cfg, "policy", "set", "-f", good, bypass); code != 1 || !strings.Contains(stderr, "headscale is running") {
		t.Fatalf("set with the bypass while the server runs: %d %q", code, stderr)
	}
	if err := ts.Stop(); err != nil {
		t.Fatal(err)
	}

	if code, out, _ := run(t, "-c", cfg, "policy", "get", bypass); code != 0 || !strings.Contains(out, "no policy") {
		t.Fatalf("get before set: %d %q", code, out)
	}
	if code, _, stderr := run(t, "-c", cfg, "policy", "check", "-f", failing, bypass); code != 1 || !strings.Contains(stderr, "tests failed") {
		t.Fatalf("check of a policy whose tests fail: %d %q", code, stderr)
	}
	if code, _, stderr := run(t, "-c", cfg, "policy", "set", "-f", unknown, bypass); code != 1 || !strings.Contains(stderr, "group:nobody") {
		t.Fatalf("set of a policy naming an undefined group: %d %q", code, stderr)
	}
	if code, out, stderr := run(t, "-c", cfg, "policy", "check", "-f", good, bypass); code != 0 || out != "Policy is valid\n" {
		t.Fatalf("check: %d %q %q", code, out, stderr)
	}
	if code, out, stderr := run(t, "-c", cfg, "policy", "set", "-f", good, bypass); code != 0 || out != "Policy updated.\n" {
		t.Fatalf("set: %d %q %q", code, out, stderr)
	}
	if code, out, _ := run(t, "-c", cfg, "policy", "get", bypass); code != 0 || !strings.Contains(out, "bypassed") {
		t.Fatalf("get after set: %d %q", code, out)
	}

	// The server starts with it in force.
	servertest.Start(t, opts)
	if code, out, _ := run(t, "-c", cfg, "policy", "get"); code != 0 || !strings.Contains(out, "bypassed") {
		t.Fatalf("get from the restarted server: %d %q", code, out)
	}
}
