//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// secretAudit keeps the run's server logs and CLI output in one directory
// and every secret the run created (pre-auth keys, API keys, the servers'
// private keys), so that at the end of the run TestMain can check that no
// log line at any level and no CLI output carries one of them. Tests add
// secrets as they create them; a secret that leaked before it was added is
// still found, since the check runs last.
type secretAudit struct {
	dir string // server logs and cli.log

	mu      sync.Mutex
	secrets map[string]string // secret text -> what it is
	n       int               // log files handed out
}

// newSecretAudit makes the run's log directory.
func newSecretAudit() (*secretAudit, error) {
	dir, err := os.MkdirTemp("", "headscale-e2e-logs-")
	if err != nil {
		return nil, err
	}
	return &secretAudit{dir: dir, secrets: map[string]string{}}, nil
}

// add records a secret; what describes it in a report (never the secret).
// Secrets shorter than 16 characters are refused: they would match by
// chance.
func (a *secretAudit) add(t testing.TB, what, secret string) {
	t.Helper()
	secret = strings.TrimSpace(secret)
	if len(secret) < 16 {
		t.Fatalf("secret audit: %s is too short to look for (%d characters)", what, len(secret))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.secrets[secret]; !ok {
		a.secrets[secret] = what
	}
}

// addKey records a hskey-<kind>-<prefix>-<secret> key in full and its
// secret part alone (a log line might carry either).
func (a *secretAudit) addKey(t testing.TB, what, full string) {
	t.Helper()
	a.add(t, what, full)
	if i := strings.LastIndexByte(full, '-'); i >= 0 {
		a.add(t, what+" (secret part)", full[i+1:])
	}
}

// addKeyFile records a private key file written by a server ("privkey:"
// and hex) and its hex part.
func (a *secretAudit) addKeyFile(t testing.TB, what, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("secret audit: %v", err)
	}
	text := strings.TrimSpace(string(b))
	a.add(t, what, text)
	if _, hex, ok := strings.Cut(text, ":"); ok {
		a.add(t, what+" (hex)", hex)
	}
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// logPath returns a new file name in the audit directory for a log of
// what, started by test t.
func (a *secretAudit) logPath(t testing.TB, what string) string {
	a.mu.Lock()
	a.n++
	n := a.n
	a.mu.Unlock()
	return filepath.Join(a.dir, fmt.Sprintf("%03d-%s-%s.log", n, unsafeName.ReplaceAllString(t.Name(), "_"), what))
}

// recordCLI appends one CLI run's output to cli.log. Output that is a
// freshly created secret by design (preauthkeys create, apikeys create)
// is left out; stderr is always kept.
func (a *secretAudit) recordCLI(args []string, stdout, stderr string) {
	createsSecret := len(args) >= 2 && args[1] == "create" && (strings.HasPrefix(args[0], "preauthkey") || strings.HasPrefix(args[0], "api"))
	a.mu.Lock()
	defer a.mu.Unlock()
	f, err := os.OpenFile(filepath.Join(a.dir, "cli.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "=== headscale %s\n", strings.Join(args, " "))
	if !createsSecret {
		io.WriteString(f, stdout)
	}
	io.WriteString(f, stderr)
}

// leak is one secret found in one line of one file.
type leak struct {
	file string
	line int
	what string
}

func (l leak) String() string { return fmt.Sprintf("%s:%d: %s", l.file, l.line, l.what) }

// scan looks for every recorded secret in the given files (all files in
// the audit directory when none are given).
func (a *secretAudit) scan(files ...string) ([]leak, error) {
	if len(files) == 0 {
		ents, err := os.ReadDir(a.dir)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			files = append(files, filepath.Join(a.dir, e.Name()))
		}
	}
	a.mu.Lock()
	secrets := make(map[string]string, len(a.secrets))
	for s, w := range a.secrets {
		secrets[s] = w
	}
	a.mu.Unlock()
	var leaks []leak
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			return leaks, err
		}
		var hits []string
		for s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				hits = append(hits, s)
			}
		}
		if len(hits) == 0 {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(nil, 16<<20)
		for ln := 1; sc.Scan(); ln++ {
			for _, s := range hits {
				if strings.Contains(sc.Text(), s) {
					leaks = append(leaks, leak{file: p, line: ln, what: secrets[s]})
				}
			}
		}
	}
	sort.Slice(leaks, func(i, j int) bool { return leaks[i].String() < leaks[j].String() })
	return leaks, nil
}

// finish checks the whole run's logs, reports to w and returns false when a
// secret was found. The directory is removed when the check passes and
// kept for inspection when it does not.
func (a *secretAudit) finish(w io.Writer) bool {
	start := time.Now()
	leaks, err := a.scan()
	if err != nil {
		fmt.Fprintf(w, "e2e: secret audit: %v (logs kept in %s)\n", err, a.dir)
		return false
	}
	if len(leaks) > 0 {
		fmt.Fprintf(w, "e2e: secret audit FAILED: %d log lines carry a secret the run created (logs kept in %s):\n", len(leaks), a.dir)
		for _, l := range leaks {
			fmt.Fprintf(w, "e2e:   %s\n", l)
		}
		return false
	}
	a.mu.Lock()
	n := len(a.secrets)
	a.mu.Unlock()
	if n > 0 {
		ents, _ := os.ReadDir(a.dir)
		var size int64
		for _, e := range ents {
			if fi, err := e.Info(); err == nil {
				size += fi.Size()
			}
		}
		fmt.Fprintf(w, "e2e: secret audit: %d secrets, none in %d server and CLI logs (%.1f MB, checked in %v)\n",
			n, len(ents), float64(size)/1e6, time.Since(start).Round(time.Millisecond))
	}
	os.RemoveAll(a.dir)
	return true
}

// TestSecretAuditFinds checks the audit itself: a secret in a log line is
// reported with its file and line, and a redacted form is not.
func TestSecretAuditFinds(t *testing.T) {
	a := &secretAudit{dir: t.TempDir(), secrets: map[string]string{}}
	full := "hskey-auth-0123456789ab-" + strings.Repeat("5e", 32)
	a.addKey(t, "pre-auth key", full)
	clean := filepath.Join(a.dir, "clean.log")
	os.WriteFile(clean, []byte("level=INFO msg=\"pre-auth key created\" key=hskey-auth-0123456789ab-***\n"), 0o600)
	dirty := filepath.Join(a.dir, "dirty.log")
	os.WriteFile(dirty, []byte("one\nlevel=DEBUG msg=x secret="+strings.Repeat("5e", 32)+"\nthree "+full+"\n"), 0o600)
	leaks, err := a.scan()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range leaks {
		got = append(got, filepath.Base(l.file)+":"+fmt.Sprint(l.line)+": "+l.what)
	}
	want := []string{"dirty.log:2: pre-auth key (secret part)", "dirty.log:3: pre-auth key", "dirty.log:3: pre-auth key (secret part)"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("leaks:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var out strings.Builder
	if a.finish(&out) || !strings.Contains(out.String(), "dirty.log:3") {
		t.Errorf("finish passed or did not name the line:\n%s", out.String())
	}
	if _, err := os.Stat(dirty); err != nil {
		t.Errorf("logs removed after a failed audit: %v", err)
	}
}
