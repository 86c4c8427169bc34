//go:build linux

package e2e

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestSecretsStayOutOfLogs drives the paths where a secret could reach a
// log line, with the server at debug level: a registration with a wrong
// pre-auth key secret, one with the right key, API calls with a good, a
// wrong and a malformed API key, and the CLI working remotely with an API
// key and failing with a wrong one. It then checks this server's log and
// the CLI output for every secret created so far (TestMain checks the
// whole run again at the end), and that the real binary wrote its keys,
// database and backups with mode 0600 and warned about none of them.
func TestSecretsStayOutOfLogs(t *testing.T) {
	srv := StartServer(t, ServerOptions{})
	audit := srv.env.audit
	srv.CreateUser(t, "vault")
	good := srv.CreatePreAuthKey(t, "vault", PreAuthKeyOptions{Reusable: true})
	wrong := good.Key[:strings.LastIndexByte(good.Key, '-')+1] + strings.Repeat("0f", 32)
	audit.addKey(t, "pre-auth key with a wrong secret", wrong)

	// The wrong key on a client of its own: a client refused once keeps
	// retrying its login in the background, and a refusal still in flight
	// could fail a later `tailscale up` with the good key on the same one.
	refused := StartNode(t, srv, "vault0", NodeOptions{})
	if out, err := refused.Up(wrong, "--timeout", "20s"); err == nil {
		t.Fatalf("tailscale up with a wrong key secret succeeded:\n%s", out)
	}
	StartNode(t, srv, "vault1", NodeOptions{}).MustUp(good.Key)

	var created struct{ APIKey string }
	srv.cliJSON(t, &created.APIKey, "apikeys", "create", "-o", "json") // a JSON string, as Headscale prints it
	if !strings.HasPrefix(created.APIKey, "hskey-api-") {
		t.Fatalf("apikeys create: %q", created.APIKey)
	}
	audit.addKey(t, "API key", created.APIKey)
	wrongAPI := created.APIKey[:strings.LastIndexByte(created.APIKey, '-')+1] + strings.Repeat("a0", 32)
	audit.addKey(t, "API key with a wrong secret", wrongAPI)
	malformed := "hskey-api-short-" + strings.Repeat("b1", 20)
	audit.addKey(t, "malformed API key", malformed)
	for _, tc := range []struct {
		key  string
		want int
	}{{created.APIKey, http.StatusOK}, {wrongAPI, http.StatusUnauthorized}, {malformed, http.StatusUnauthorized}} {
		req, _ := http.NewRequest("GET", srv.URL+"/api/v1/user", nil)
		req.Header.Set("Authorization", "Bearer "+tc.key)
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("GET /api/v1/user with %s...: %s, want %d", tc.key[:16], resp.Status, tc.want)
		}
	}
	for _, tc := range []struct {
		key string
		ok  bool
	}{{created.APIKey, true}, {wrongAPI, false}} {
		args := []string{"users", "list", "-o", "json"}
		stdout, stderr, err := runCmdEnv(30*time.Second, []string{"HEADSCALE_CLI_ADDRESS=" + srv.URL, "HEADSCALE_CLI_API_KEY=" + tc.key},
			srv.env.Headscale, append([]string{"-c", srv.ConfigPath}, args...)...)
		audit.recordCLI(append([]string{"(remote)"}, args...), stdout, stderr)
		if (err == nil) != tc.ok || (tc.ok && !strings.Contains(stdout, `"vault"`)) {
			t.Errorf("remote users list with %s...: err %v, stdout %q, stderr %q", tc.key[:16], err, stdout, stderr)
		}
	}
	if _, err := srv.CLI(t, "preauthkeys", "list", "-o", "json"); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.CLI(t, "apikeys", "list", "-o", "json"); err != nil {
		t.Fatal(err)
	}

	// Files written by the real binary under the harness's umask.
	backup := filepath.Join(srv.Dir, "manual-backup.sqlite")
	if _, err := srv.CLI(t, "backup", "--output", backup); err != nil {
		t.Fatal(err)
	}
	out, err := srv.CLI(t, "backup")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`backup written: (\S+) `).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("backup output %q", out)
	}
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{
		{filepath.Join(srv.Dir, "noise.key"), 0o600},
		{filepath.Join(srv.Dir, "derp.key"), 0o600},
		{filepath.Join(srv.Dir, "db.sqlite"), 0o600},
		{filepath.Join(srv.Dir, "db.sqlite-wal"), 0o600},
		{filepath.Join(srv.Dir, "db.sqlite-shm"), 0o600},
		{backup, 0o600},
		{m[1], 0o600},
		{filepath.Dir(m[1]), 0o700},
	} {
		fi, err := os.Stat(f.path)
		if err != nil {
			t.Error(err)
			continue
		}
		if fi.Mode().Perm() != f.mode {
			t.Errorf("%s: mode %04o, want %04o", f.path, fi.Mode().Perm(), f.mode)
		}
	}

	leaks, err := audit.scan(srv.LogPath, filepath.Join(audit.dir, "cli.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leaks {
		t.Errorf("secret in a log: %s", l)
	}
	b, err := os.ReadFile(srv.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte("private file is readable by other users")) {
		t.Error("the server warned about its own fresh files' modes")
	}
	if !bytes.Contains(b, []byte("level=DEBUG")) {
		t.Error("no debug line in the server log: the audit would miss debug-level leaks")
	}
}

// runCmdEnv is runCmd with extra environment variables.
func runCmdEnv(timeout time.Duration, env []string, bin string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	return o.String(), e.String(), err
}
