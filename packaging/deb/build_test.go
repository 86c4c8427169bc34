package deb

import (
	"archive/tar"
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testEpoch is the SOURCE_DATE_EPOCH the test builds with.
const testEpoch = 1767225600 // 2026-01-01T00:00:00Z

// testVersion is the VERSION given to make.
const testVersion = "0.1.0"

// arches are the packages `make deb` builds.
var arches = []string{"amd64", "arm64"}

// ensureTool finds cmd, installing Debian package pkg with apt-get when cmd
// is missing and the test runs as root; otherwise the test is skipped.
func ensureTool(t *testing.T, cmd, pkg string) string {
	t.Helper()
	if p, err := exec.LookPath(cmd); err == nil {
		return p
	}
	if os.Geteuid() != 0 {
		t.Skipf("%s is not installed, and installing it (apt-get install %s) needs root", cmd, pkg)
	}
	start := time.Now()
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "--no-install-recommends", pkg}} {
		c := exec.Command("apt-get", args...)
		c.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("apt-get %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	t.Logf("installed %s with apt-get in %v", pkg, time.Since(start).Round(time.Second))
	p, err := exec.LookPath(cmd)
	if err != nil {
		t.Fatalf("%s still missing after apt-get install %s", cmd, pkg)
	}
	return p
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	var stderr bytes.Buffer
	c := exec.Command(name, args...)
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out
}

// listing is one line of `dpkg-deb -c`.
type listing struct {
	mode, owner, path string
	size              int64
}

func contents(t *testing.T, deb string) map[string]listing {
	out := run(t, "dpkg-deb", "-c", deb)
	m := map[string]listing{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 6 {
			t.Fatalf("dpkg-deb -c line %q", sc.Text())
		}
		size, _ := strconv.ParseInt(f[2], 10, 64)
		p := "/" + strings.TrimSuffix(strings.TrimPrefix(f[5], "./"), "/")
		m[p] = listing{mode: f[0], owner: f[1], size: size, path: p}
	}
	return m
}

// controlFields parses `dpkg-deb -f`.
func controlFields(t *testing.T, deb string) map[string]string {
	out := run(t, "dpkg-deb", "-f", deb)
	m := map[string]string{}
	var last string
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		if strings.HasPrefix(line, " ") {
			m[last] += "\n" + line
			continue
		}
		k, v, _ := strings.Cut(line, ":")
		last = k
		m[k] = strings.TrimSpace(v)
	}
	return m
}

// tarFile returns the named member of the tar stream produced by
// `dpkg-deb --fsys-tarfile` or `--ctrl-tarfile`.
func tarFile(t *testing.T, deb, which, name string) []byte {
	tr := tar.NewReader(bytes.NewReader(run(t, "dpkg-deb", which, deb)))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			t.Fatalf("%s: no %s in %s", deb, name, which)
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimPrefix(h.Name, "./") == name {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}

// TestMakeDeb runs `make deb` the way a release does (into a temporary
// DIST), then checks both packages with dpkg-deb and lintian.
func TestMakeDeb(t *testing.T) {
	if testing.Short() {
		t.Skip("builds headscale for amd64 and arm64 and the two packages")
	}
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb not found: not a Debian system")
	}
	makeBin := ensureTool(t, "make", "make")
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}

	dist := t.TempDir()
	start := time.Now()
	c := exec.Command(makeBin, "-C", repoRoot, "deb", "VERSION="+testVersion, "DIST="+dist, "GO="+goBin)
	c.Env = append(os.Environ(), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", testEpoch))
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	t.Logf("make deb VERSION=%s (%v):\n%s", testVersion, time.Since(start).Round(time.Second), out)

	date := time.Unix(testEpoch, 0).UTC()
	generated, err := GenerateAssets(t.TempDir(), testVersion, date)
	if err != nil {
		t.Fatal(err)
	}
	debs := map[string]string{}
	for _, arch := range arches {
		name, err := FileName(testVersion, arch)
		if err != nil {
			t.Fatal(err)
		}
		debs[arch] = filepath.Join(dist, name)
	}

	for _, arch := range arches {
		t.Run("contents/"+arch, func(t *testing.T) {
			checkPackage(t, debs[arch], arch, generated, date)
		})
	}

	t.Run("reproducible", func(t *testing.T) {
		// mkdeb through the library, with the binary make built: the same bytes.
		again, err := Build(Options{Root: repoRoot, Version: testVersion, Arch: "amd64",
			Binary: filepath.Join(dist, "amd64", "headscale"), OutDir: t.TempDir(), Date: date})
		if err != nil {
			t.Fatal(err)
		}
		a, _ := os.ReadFile(debs["amd64"])
		b, _ := os.ReadFile(again)
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("packaging the same binary twice gave different bytes (%d, %d)", len(a), len(b))
		}
	})

	t.Run("binary", func(t *testing.T) {
		// The packaged amd64 binary runs here and reports VERSION.
		if bin := filepath.Join(dist, "amd64", "headscale"); fileExists(bin) {
			got, _, _ := strings.Cut(string(run(t, bin, "version")), "\n")
			if got != "headscale version "+testVersion {
				t.Errorf("headscale version = %q, want %q (-X main.version)", got, testVersion)
			}
		}
	})

	t.Run("lintian", func(t *testing.T) {
		lintian(t, debs["amd64"], debs["arm64"])
	})
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func checkPackage(t *testing.T, deb, arch string, generated []Entry, date time.Time) {
	st, err := os.Stat(deb)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d bytes", filepath.Base(deb), st.Size())

	// Control fields.
	f := controlFields(t, deb)
	debVersion, _ := DebianVersion(testVersion)
	for k, want := range map[string]string{
		"Package":      PackageName,
		"Version":      debVersion,
		"Architecture": arch,
		"Maintainer":   Maintainer,
		"Section":      Section,
		"Priority":     Priority,
		"Homepage":     Homepage,
		"Depends":      strings.Join(Depends, ", "),
		"Recommends":   strings.Join(Recommends, ", "),
		"Suggests":     "postgresql",
	} {
		if f[k] != want {
			t.Errorf("%s: %q, want %q", k, f[k], want)
		}
	}
	if f["Depends"] != "adduser, procps, init-system-helpers (>= 1.54)" {
		t.Errorf("Depends: %q", f["Depends"])
	}
	if strings.Contains(f["Depends"], "sqlite3") {
		t.Errorf("Depends on sqlite3: no script uses it")
	}
	if !strings.HasPrefix(f["Description"], Synopsis+"\n ") {
		t.Errorf("Description: %q", f["Description"])
	}

	// Files: exactly the list, with modes and owners.
	type want struct {
		mode string
	}
	files := map[string]want{BinaryDst: {"-rwxr-xr-x"}}
	for _, e := range append(Entries(), generated...) {
		files[e.Dst] = want{e.Mode.String()}
	}
	dirs := map[string]bool{}
	for p := range files {
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	got := contents(t, deb)
	for p, w := range files {
		g, ok := got[p]
		switch {
		case !ok:
			t.Errorf("missing %s", p)
		case g.mode != w.mode || g.owner != "root/root":
			t.Errorf("%s: %s %s, want %s root/root", p, g.mode, g.owner, w.mode)
		}
	}
	for p, g := range got {
		if _, ok := files[p]; ok {
			continue
		}
		if !dirs[p] {
			t.Errorf("unexpected %s (%s)", p, g.mode)
		} else if g.mode != "drwxr-xr-x" || g.owner != "root/root" {
			t.Errorf("directory %s: %s %s", p, g.mode, g.owner)
		}
	}
	if g := got["/etc/headscale/config.yaml"]; g.mode != "-rw-r-----" {
		t.Errorf("config.yaml: %s, want -rw-r----- root/root", g.mode)
	}

	// Conffiles.
	conf := strings.Fields(string(tarFile(t, deb, "--ctrl-tarfile", "conffiles")))
	sort.Strings(conf)
	if strings.Join(conf, " ") != "/etc/cron.d/headscale /etc/headscale/config.yaml" {
		t.Errorf("conffiles: %q", conf)
	}

	// Maintainer scripts: the repository's, byte for byte.
	for name, src := range map[string]string{"preinst": PreinstPath, "postinst": PostinstPath, "prerm": PrermPath, "postrm": PostrmPath} {
		want, err := os.ReadFile(filepath.Join(repoRoot, src))
		if err != nil {
			t.Fatal(err)
		}
		if got := tarFile(t, deb, "--ctrl-tarfile", name); !bytes.Equal(got, want) {
			t.Errorf("%s in the package differs from %s", name, src)
		}
	}

	// Files copied from the repository are unchanged; the example config
	// is the conffile.
	for _, e := range Entries() {
		want, err := os.ReadFile(filepath.Join(repoRoot, e.Src))
		if err != nil {
			t.Fatal(err)
		}
		if got := tarFile(t, deb, "--fsys-tarfile", strings.TrimPrefix(e.Dst, "/")); !bytes.Equal(got, want) {
			t.Errorf("%s differs from %s", e.Dst, e.Src)
		}
	}

	// File times are SOURCE_DATE_EPOCH.
	tr := tar.NewReader(bytes.NewReader(run(t, "dpkg-deb", "--fsys-tarfile", deb)))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(date) {
			t.Errorf("%s: mtime %v, want %v", h.Name, h.ModTime.UTC(), date)
			break
		}
	}

	// The binary: stripped, static, for arch.
	bin := filepath.Join(t.TempDir(), "headscale")
	if err := os.WriteFile(bin, tarFile(t, deb, "--fsys-tarfile", "usr/bin/headscale"), 0o755); err != nil {
		t.Fatal(err)
	}
	ef, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	if ef.Section(".symtab") != nil {
		t.Error("usr/bin/headscale has a .symtab: not stripped (-s -w)")
	}
	if ef.Section(".debug_info") != nil || ef.Section(".zdebug_info") != nil {
		t.Error("usr/bin/headscale has DWARF: not built with -w")
	}
	if ef.Section(".interp") != nil {
		t.Error("usr/bin/headscale is dynamically linked (CGO_ENABLED=0 expected)")
	}
	if want := elfMachines[arch]; ef.Machine != want {
		t.Errorf("usr/bin/headscale is %v, want %v", ef.Machine, want)
	}
	if err := CheckBinary(bin, arch); err != nil {
		t.Error(err)
	}
}

// lintianOverrides returns the tags overridden in packaging/deb/lintian-overrides
// and checks that each override has a comment above it giving the reason.
func lintianOverrides(t *testing.T) []string {
	b, err := os.ReadFile(filepath.Join(repoRoot, "packaging/deb/lintian-overrides"))
	if err != nil {
		t.Fatal(err)
	}
	var tags []string
	commented := false
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "":
			commented = false
		case strings.HasPrefix(line, "#"):
			commented = len(strings.TrimSpace(strings.TrimPrefix(line, "#"))) > 0
		default:
			if !commented {
				t.Errorf("lintian-overrides:%d: override without a comment giving the reason: %s", i+1, line)
			}
			f := strings.Fields(strings.TrimPrefix(line, PackageName+":"))
			if len(f) == 0 {
				t.Errorf("lintian-overrides:%d: %q", i+1, line)
				continue
			}
			tags = append(tags, f[0])
		}
	}
	return tags
}

func TestLintianOverridesFile(t *testing.T) {
	if tags := lintianOverrides(t); len(tags) == 0 {
		t.Error("no overrides parsed")
	}
}

var lintianLine = regexp.MustCompile(`^([EWIPXNO]): [^:]+: (\S+)`)

// lintian runs lintian on the packages: it must exit 0 with --fail-on error,
// report no E: or W: line (overridden tags are not reported), and use every
// override.
func lintian(t *testing.T, debs ...string) {
	bin := ensureTool(t, "lintian", "lintian")
	args := append([]string{"--fail-on", "error", "-I", "--tag-display-limit", "0"}, debs...)
	var stderr bytes.Buffer
	c := exec.Command(bin, args...)
	c.Stderr = &stderr
	start := time.Now()
	out, err := c.Output()
	t.Logf("lintian %s (%v):\n%s%s", strings.Join(args, " "), time.Since(start).Round(100*time.Millisecond), out, stderr.Bytes())
	if err != nil {
		t.Errorf("lintian --fail-on error: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		m := lintianLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		switch {
		case m[1] == "E":
			t.Errorf("lintian error: %s", line)
		case m[1] == "W":
			t.Errorf("lintian warning not covered by packaging/deb/lintian-overrides: %s", line)
		case m[2] == "unused-override" || m[2] == "mismatched-override":
			t.Errorf("lintian: %s (remove or fix the override)", line)
		}
	}

	// The overrides, with their reasons, as lintian applies them.
	c = exec.Command(bin, append([]string{"--show-overrides", "--tag-display-limit", "0"}, debs...)...)
	shown, _ := c.Output()
	t.Logf("lintian --show-overrides:\n%s", shown)
	for _, tag := range lintianOverrides(t) {
		if n := strings.Count(string(shown), ": "+tag+" "); n < len(debs) {
			t.Errorf("override %s applied %d times, want once per package (%d)", tag, n, len(debs))
		}
	}
}
