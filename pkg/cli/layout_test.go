package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsctl/headscale/internal/servertest"
)

// runRoot runs the CLI with a directory standing in for / in Headscale's
// default paths.
func runRoot(t *testing.T, root string, environ []string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Execute(Env{Version: "test", Stdout: &out, Stderr: &errb, Environ: environ, SystemRoot: root}, args)
	return code, out.String(), errb.String()
}

// TestCLIFindsHeadscaleSocket: a server started from a config file that,
// like Headscale's, sets neither state_dir nor unix_socket keeps its state
// in /var/lib/headscale and its socket at /var/run/headscale/headscale.sock
// (under a temporary root here); the CLI, given only that file and run
// from another directory, reaches it.
func TestCLIFindsHeadscaleSocket(t *testing.T) {
	root := t.TempDir()
	ts := servertest.Start(t, servertest.Options{SystemRoot: root})
	if want := filepath.Join(root, "var/run/headscale/headscale.sock"); ts.Config.UnixSocket != want {
		t.Fatalf("server socket %s, want %s", ts.Config.UnixSocket, want)
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/headscale/db.sqlite")); err != nil {
		t.Fatalf("database not in /var/lib/headscale: %v", err)
	}
	ts.CreateUser(t, "alice")

	t.Chdir(t.TempDir())
	for _, tt := range []struct {
		name    string
		environ []string
		args    []string
	}{
		{"--config", []string{}, []string{"-c", ts.ConfigPath}},
		{"HEADSCALE_CONFIG", []string{"HEADSCALE_CONFIG=" + ts.ConfigPath}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, out, stderr := runRoot(t, root, tt.environ, append(tt.args, "users", "list", "-o", "json")...)
			if code != 0 || !strings.Contains(out, `"alice"`) {
				t.Fatalf("users list: %d %q %q", code, out, stderr)
			}
		})
	}
}

// TestCLINoConfigSocketOrder: with no config file, the CLI uses
// Headscale's socket when a server answers there, else ./data's, and says
// it tried both when neither answers.
func TestCLINoConfigSocketOrder(t *testing.T) {
	if _, err := os.Stat("/etc/headscale/config.yaml"); err == nil {
		t.Skip("/etc/headscale/config.yaml exists: the CLI would load it")
	}
	root, cwd := t.TempDir(), t.TempDir()
	t.Chdir(cwd)
	list := func() (int, string, string) { return runRoot(t, root, []string{}, "users", "list", "-o", "json") }

	code, _, stderr := list()
	for _, want := range []string{"not running", filepath.Join(root, "var/run/headscale/headscale.sock"), "data/headscale.sock"} {
		if code != 1 || !strings.Contains(stderr, want) {
			t.Errorf("no server: code %d, stderr %q lacks %q", code, stderr, want)
		}
	}

	// A server on ./data's socket, as `headscale serve` with no file
	// started here would be.
	local := servertest.Start(t, servertest.Options{ExtraYAML: "unix_socket: " + filepath.Join(cwd, "data/headscale.sock") + "\n"})
	local.CreateUser(t, "in-data")
	if code, out, stderr := list(); code != 0 || !strings.Contains(out, `"in-data"`) {
		t.Fatalf("only ./data's server: %d %q %q", code, out, stderr)
	}

	system := servertest.Start(t, servertest.Options{SystemRoot: root})
	system.CreateUser(t, "in-headscale")
	if code, out, stderr := list(); code != 0 || !strings.Contains(out, `"in-headscale"`) || strings.Contains(out, `"in-data"`) {
		t.Fatalf("both servers, Headscale's first: %d %q %q", code, out, stderr)
	}
}
