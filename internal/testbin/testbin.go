// Package testbin builds the binaries the end-to-end and system tests run:
// the official Tailscale client from the tailscale.com version in go.mod
// (cached under GOCACHE, so it is built once per version) and this
// repository's headscale.
package testbin

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Go runs the go command in dir and returns its trimmed stdout.
func Go(dir string, extraEnv []string, args ...string) (string, error) {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), extraEnv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return strings.TrimSpace(stdout.String()), nil
}

// RepoRoot is the directory of the module's go.mod.
func RepoRoot() (string, error) {
	gomod, err := Go("", nil, "env", "GOMOD")
	if err != nil {
		return "", err
	}
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	return filepath.Dir(gomod), nil
}

// Tailscale makes sure the official tailscaled and tailscale, built from
// the tailscale.com version in go.mod, exist in a cache directory under
// GOCACHE, building them if needed; progress goes to log. It returns the
// directory and the version stamp (without "v").
func Tailscale(root string, log io.Writer) (dir, version string, err error) {
	v, err := Go(root, nil, "list", "-m", "-f", "{{.Version}}", "tailscale.com")
	if err != nil {
		return "", "", err
	}
	gocache, err := Go(root, nil, "env", "GOCACHE")
	if err != nil {
		return "", "", err
	}
	if gocache == "" || gocache == "off" {
		return "", "", errors.New("GOCACHE is off; need it to cache the tailscale client build")
	}
	version = strings.TrimPrefix(v, "v")
	dir = filepath.Join(gocache, "headscale-e2e", "tailscale-"+v)
	if haveTailscale(dir) {
		return dir, version, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", "", err
	}
	// Concurrent runs build into private directories; the first rename wins.
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".build-")
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(tmp)
	fmt.Fprintf(log, "building tailscale %s into %s (cached for later runs)\n", version, dir)
	start := time.Now()
	ldflags := fmt.Sprintf("-X tailscale.com/version.longStamp=%s -X tailscale.com/version.shortStamp=%s", version, version)
	if _, err := Go(root, []string{"CGO_ENABLED=0"}, "build", "-o", tmp, "-ldflags", ldflags,
		"tailscale.com/cmd/tailscaled", "tailscale.com/cmd/tailscale"); err != nil {
		return "", "", fmt.Errorf("building the tailscale client: %w", err)
	}
	if !haveTailscale(tmp) {
		return "", "", fmt.Errorf("building the tailscale client: binaries missing in %s", tmp)
	}
	if err := os.Rename(tmp, dir); err != nil && !haveTailscale(dir) {
		return "", "", err
	}
	fmt.Fprintf(log, "built tailscale in %v\n", time.Since(start).Round(time.Second))
	return dir, version, nil
}

func haveTailscale(dir string) bool {
	for _, name := range []string{"tailscaled", "tailscale"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}
