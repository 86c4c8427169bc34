package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Execute(Env{Version: "test", Stdout: &out, Stderr: &errb, Environ: []string{}}, args)
	return code, out.String(), errb.String()
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNotRunningSaysSoInOneLine(t *testing.T) {
	dir := t.TempDir()
	cfg := writeConfig(t, "state_dir: "+dir+"\nunix_socket: "+dir+"/none.sock\n")
	for _, args := range [][]string{{"users", "list"}, {"nodes", "list"}, {"health"}} {
		code, _, stderr := run(t, append([]string{"-c", cfg}, args...)...)
		if code != 1 || !strings.Contains(stderr, "not running") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("%v: code %d, stderr %q", args, code, stderr)
		}
	}
}

func TestConfigtest(t *testing.T) {
	good := writeConfig(t, "server_url: http://127.0.0.1:8080\n")
	if code, out, stderr := run(t, "-c", good, "configtest"); code != 0 || !strings.Contains(out, "configuration OK") {
		t.Fatalf("good config: %d %q %q", code, out, stderr)
	}
	bad := writeConfig(t, "server_url: ftp://x\nlisten_addr: nope\nprefixes:\n  allocation: sideways\n")
	code, _, stderr := run(t, "-c", bad, "configtest")
	if code != 1 {
		t.Fatalf("bad config exit %d", code)
	}
	for _, want := range []string{bad + ":1: server_url", bad + ":2: listen_addr", bad + ":4: prefixes.allocation"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	// A certificate that exists but does not load fails here, not at start.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "cert.pem"), []byte("not a certificate"), 0o600)
	os.WriteFile(filepath.Join(dir, "key.pem"), []byte("not a key"), 0o600)
	tlsCfg := writeConfig(t, "tls_cert_path: "+dir+"/cert.pem\ntls_key_path: "+dir+"/key.pem\n")
	if code, _, stderr := run(t, "-c", tlsCfg, "configtest"); code != 1 || !strings.Contains(stderr, "tls_cert_path: loading the certificate") {
		t.Fatalf("unloadable TLS certificate: %d %q", code, stderr)
	}
	// Let's Encrypt: accepted without contacting the CA (nothing connects
	// to the acme_url's listener).
	ca, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	var contacted atomic.Int32
	go func() {
		for {
			c, err := ca.Accept()
			if err != nil {
				return
			}
			contacted.Add(1)
			c.Close()
		}
	}()
	acmeCfg := writeConfig(t, "server_url: https://hs.example.com\ntls_letsencrypt_hostname: hs.example.com\n"+
		"tls_letsencrypt_challenge_type: TLS-ALPN-01\nacme_url: https://"+ca.Addr().String()+"/dir\n")
	if code, out, stderr := run(t, "-c", acmeCfg, "configtest"); code != 0 || !strings.Contains(out, "configuration OK") || contacted.Load() != 0 {
		t.Fatalf("ACME config: %d %q %q, CA contacted %d times", code, out, stderr, contacted.Load())
	}
	derp := writeConfig(t, "derp:\n  paths: [/nonexistent/derp.yaml]\n")
	if code, _, stderr := run(t, "-c", derp, "configtest"); code != 1 || !strings.Contains(stderr, "derp.paths") {
		t.Fatalf("missing derp file: %d %q", code, stderr)
	}
}

// TestVersion: `version` prints what Headscale 0.27+ prints (four lines;
// -o json with version, commit, buildTime, go and dirty), so scripts that
// read either keep working.
func TestVersion(t *testing.T) {
	code, out, _ := run(t, "version")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if code != 0 || len(lines) != 4 || lines[0] != "headscale version test" || !strings.HasPrefix(lines[1], "commit: ") ||
		!strings.HasPrefix(lines[2], "build time: ") || !strings.HasPrefix(lines[3], "built with: go") {
		t.Errorf("version: %d %q", code, out)
	}
	code, out, _ = run(t, "version", "-o", "json")
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil {
		t.Fatalf("version -o json: %d %v %q", code, err, out)
	}
	for _, k := range []string{"version", "commit", "buildTime", "go", "dirty"} {
		if _, ok := v[k]; !ok {
			t.Errorf("version -o json lacks %q: %s", k, out)
		}
	}
	if v["version"] != "test" {
		t.Errorf("version -o json: version %v, want test", v["version"])
	}
}

// TestErrorPriorityUnderJournal: when stderr is the journal stream, a
// failing command's error line carries the error priority, so a failed
// start shows in `journalctl -p err`.
func TestErrorPriorityUnderJournal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	env := []string{fmt.Sprintf("JOURNAL_STREAM=%d:%d", st.Dev, st.Ino)}
	cfg := writeConfig(t, "listen_addr: nope\n")
	if code := Execute(Env{Version: "test", Stdout: io.Discard, Stderr: f, Environ: env}, []string{"-c", cfg, "serve"}); code != 1 {
		t.Fatalf("exit %d", code)
	}
	b, _ := os.ReadFile(f.Name())
	if !strings.HasPrefix(string(b), "<3>Error: ") {
		t.Fatalf("stderr = %q", b)
	}
}
