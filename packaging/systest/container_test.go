package systest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ensureTools installs what the test needs from Debian when it is missing.
func ensureTools(t *testing.T) {
	t.Helper()
	var missing []string
	for bin, pkg := range map[string]string{"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container", "nsenter": "util-linux"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, pkg)
		}
	}
	if len(missing) == 0 {
		return
	}
	t.Logf("installing %v", missing)
	cmd := exec.Command("apt-get", append([]string{"install", "-y", "--no-install-recommends"}, missing...)...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if _, err := cmd.CombinedOutput(); err != nil {
		// The package lists may be missing on a fresh machine.
		if out2, err2 := exec.Command("apt-get", "update").CombinedOutput(); err2 != nil {
			t.Fatalf("apt-get update: %v\n%s", err2, out2)
		}
		cmd = exec.Command(cmd.Args[0], cmd.Args[1:]...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("apt-get install %v: %v\n%s", missing, err, out)
		}
	}
}

// debianMirror reads the mirror the host itself uses, so the tree comes
// from wherever this machine is allowed to fetch packages.
func debianMirror() (string, error) {
	if b, err := os.ReadFile("/etc/apt/sources.list.d/debian.sources"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "URIs:"); ok {
				for _, u := range strings.Fields(v) {
					if !strings.Contains(u, "security") {
						return u, nil
					}
				}
			}
		}
	}
	if b, err := os.ReadFile("/etc/apt/sources.list"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 3 && f[0] == "deb" && !strings.Contains(f[1], "security") {
				return f[1], nil
			}
		}
	}
	return "", errors.New("no Debian mirror found in /etc/apt")
}

// rootTree returns a minimal Debian tree with systemd, made once with
// debootstrap and cached under dir; containers boot it with --ephemeral so
// it stays pristine. A flavour names a tree that also has the Debian
// packages extra (e.g. "postgresql"), cached beside the plain one.
func rootTree(t *testing.T, cacheDir, flavour string, extra ...string) string {
	t.Helper()
	suite := "bookworm"
	name := suite
	if flavour != "" {
		name += "-" + flavour
	}
	tree := filepath.Join(cacheDir, name+"-v1")
	if _, err := os.Stat(filepath.Join(tree, ".complete")); err == nil {
		return tree
	}
	mirror, err := debianMirror()
	if err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(tree)
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := tree + ".tmp"
	os.RemoveAll(tmp)
	start := time.Now()
	t.Logf("debootstrap %s from %s into %s (cached for later runs)", suite, mirror, tree)
	include := append([]string{"systemd", "systemd-sysv", "dbus", "adduser", "procps"}, extra...)
	cmd := exec.Command("debootstrap", "--variant=minbase", "--include="+strings.Join(include, ","), suite, tmp, mirror)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(tmp)
		t.Fatalf("debootstrap: %v\n%s", err, lastLines(out, 30))
	}
	// The tree must not remember the mirror (or anything else of this
	// host) beyond what debootstrap wrote; nothing here is committed.
	os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644)
	if err := os.Rename(tmp, tree); err != nil {
		t.Fatal(err)
	}
	t.Logf("debootstrap took %v", time.Since(start).Round(time.Second))
	return tree
}

// container is a booted systemd in an nspawn container with only a
// loopback network.
type container struct {
	t      *testing.T
	nspawn *exec.Cmd
	leader int
	log    *bytes.Buffer
	done   chan error
}

// boot starts systemd as PID 1 of a throw-away copy of tree; binds are
// "host:container" read-only bind mounts.
func boot(t *testing.T, tree string, binds ...string) *container {
	t.Helper()
	args := []string{"-D", tree, "--ephemeral", "--private-network", "--register=no", "--keep-unit", "--console=pipe",
		"--machine=hs-systest-" + strconv.Itoa(os.Getpid())}
	for _, b := range binds {
		args = append(args, "--bind-ro="+b)
	}
	args = append(args, "-b")
	cmd := exec.Command("systemd-nspawn", args...)
	c := &container{t: t, nspawn: cmd, log: new(bytes.Buffer), done: make(chan error, 1)}
	cmd.Stdout = c.log
	cmd.Stderr = c.log
	cmd.Stdin = nil
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.done <- cmd.Wait() }()
	t.Cleanup(c.stop)

	deadline := time.Now().Add(60 * time.Second)
	for c.leader == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("container did not start:\n%s", c.log)
		}
		select {
		case err := <-c.done:
			c.done <- err // for stop, at cleanup: nspawn is gone
			t.Fatalf("systemd-nspawn exited: %v\n%s", err, c.log)
		case <-time.After(100 * time.Millisecond):
		}
		c.leader = childOf(cmd.Process.Pid)
	}
	// Right after PID 1 starts its bus may not answer yet; retry until it
	// reports a settled state.
	var out string
	for {
		out, _ = c.run(90*time.Second, "systemctl", "is-system-running", "--wait")
		if s := strings.TrimSpace(out); s == "running" || s == "degraded" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container systemd state %q\n%s", strings.TrimSpace(out), c.log)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if s := strings.TrimSpace(out); s == "degraded" {
		failed, _ := c.run(10*time.Second, "systemctl", "--failed", "--no-legend")
		t.Logf("container booted degraded; failed units:\n%s", failed)
	}
	return c
}

// childOf finds the container's PID 1: the child of the nspawn process
// that runs systemd (nspawn forks helpers first, which exit).
func childOf(ppid int) int {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the command name: state ppid ...
		s := string(b)
		rest := s[strings.LastIndexByte(s, ')')+2:]
		f := strings.Fields(rest)
		comm, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if len(f) > 1 && f[1] == strconv.Itoa(ppid) && strings.TrimSpace(string(comm)) == "systemd" {
			return pid
		}
	}
	return 0
}

// run executes a command inside the container and returns its combined
// output.
func (c *container) run(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append([]string{"-t", strconv.Itoa(c.leader), "-a", "--", "/usr/bin/env", "-i",
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive", "HOME=/root"}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", full...).CombinedOutput()
	if ctx.Err() != nil {
		return string(out), fmt.Errorf("%v timed out after %v", args, timeout)
	}
	return string(out), err
}

// with returns the container for the subtest t: its failures stop t.
func (c *container) with(t *testing.T) *container {
	sub := *c
	sub.t = t
	return &sub
}

// sh runs a shell script inside the container.
func (c *container) sh(script string) (string, error) {
	return c.run(3*time.Minute, "/bin/sh", "-c", script)
}

// must runs a shell script and fails the test on a non-zero exit.
func (c *container) must(script string) string {
	c.t.Helper()
	out, err := c.sh(script)
	if err != nil {
		c.diagnose()
		c.t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return out
}

// diagnose logs the end of the journal for a failed step.
func (c *container) diagnose() {
	out, _ := c.run(30*time.Second, "journalctl", "--no-pager", "-n", "80", "-o", "short-monotonic")
	c.t.Logf("container journal (last 80 lines):\n%s", out)
}

// waitFor polls a shell condition (exit 0) until the deadline.
func (c *container) waitFor(what string, d time.Duration, script string) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		out, err := c.sh(script)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.diagnose()
			c.t.Fatalf("waiting %v for %s: %v\n%s", d, what, err, out)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// stop powers the container off and waits for nspawn to exit. It may be
// called again: nspawn's exit status is put back for the next call.
func (c *container) stop() {
	select {
	case err := <-c.done:
		c.done <- err
		return
	default:
	}
	c.run(30*time.Second, "systemctl", "poweroff")
	select {
	case err := <-c.done:
		c.done <- err
	case <-time.After(60 * time.Second):
		c.nspawn.Process.Kill()
		c.done <- <-c.done
	}
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
