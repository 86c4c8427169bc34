package deb

import (
	"bytes"
	"compress/gzip"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// repoRoot is the repository root as seen from this package's directory.
const repoRoot = "../.."

func TestDebianVersion(t *testing.T) {
	for in, want := range map[string]string{
		"0.1.0":           "0.1.0",
		"v0.1.0":          "0.1.0",
		"0.2.0-rc.1":      "0.2.0~rc.1",
		"0.1.1-next":      "0.1.1~next",
		"1.0.0+git.abc12": "1.0.0+git.abc12",
		"10.20.30":        "10.20.30",
	} {
		got, err := DebianVersion(in)
		if err != nil || got != want {
			t.Errorf("DebianVersion(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "dev", "latest", "0.1 beta", "1:0.1.0-1"} {
		if got, err := DebianVersion(in); err == nil {
			t.Errorf("DebianVersion(%q) = %q, want an error", in, got)
		}
	}
	if name, err := FileName("0.2.0-rc.1", "arm64"); err != nil || name != "headscale_0.2.0~rc.1_arm64.deb" {
		t.Errorf("FileName = %q, %v", name, err)
	}
}

func TestDateFromEnv(t *testing.T) {
	env := func(v string) func(string) string { return func(string) string { return v } }
	if d, err := DateFromEnv(env("")); err != nil || !d.Equal(DefaultDate) {
		t.Errorf("unset: %v, %v", d, err)
	}
	if d, err := DateFromEnv(env("1767225600")); err != nil || !d.Equal(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("1767225600: %v, %v", d, err)
	}
	for _, bad := range []string{"x", "12abc", "-5", "1.5"} {
		if _, err := DateFromEnv(env(bad)); err == nil {
			t.Errorf("SOURCE_DATE_EPOCH=%q accepted", bad)
		}
	}
}

// TestSourcesPresent requires every file the package takes from the
// repository, including the ones maintained elsewhere (packaging/systemd,
// scripts/backup, docs).
func TestSourcesPresent(t *testing.T) {
	if missing := MissingSources(repoRoot); len(missing) > 0 {
		t.Fatalf("missing package sources: %s", strings.Join(missing, ", "))
	}
	for _, e := range Entries() {
		st, err := os.Stat(filepath.Join(repoRoot, e.Src))
		if err != nil {
			continue
		}
		if !st.Mode().IsRegular() {
			t.Errorf("%s is not a regular file", e.Src)
		}
		if e.Mode&0o111 != 0 && st.Mode()&0o111 == 0 {
			t.Errorf("%s is installed 0755 but is not executable in the repository", e.Src)
		}
	}
}

func TestMaintainerScripts(t *testing.T) {
	for _, s := range []string{PreinstPath, PostinstPath, PrermPath, PostrmPath} {
		p := filepath.Join(repoRoot, s)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(b, []byte("#!/bin/sh\n")) {
			t.Errorf("%s: does not start with #!/bin/sh", s)
		}
		if !regexp.MustCompile(`(?m)^set -e$`).Match(b) {
			t.Errorf("%s: no `set -e` line", s)
		}
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 == 0 {
			t.Errorf("%s: not executable", s)
		}
		if out, err := exec.Command("sh", "-n", p).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v\n%s", s, err, out)
		}
		// The service is started and restarted through deb-systemd-invoke,
		// never by systemctl directly (lintian: maintainer-script-calls-systemctl).
		for i, line := range strings.Split(string(b), "\n") {
			l := strings.TrimSpace(line)
			if strings.HasPrefix(l, "#") {
				continue
			}
			if regexp.MustCompile(`(^|;|&&|\|\|)\s*systemctl\b`).MatchString(l) && !strings.Contains(l, "daemon-reload") {
				t.Errorf("%s:%d: calls systemctl directly: %s", s, i+1, l)
			}
		}
	}

	read := func(s string) string {
		b, err := os.ReadFile(filepath.Join(repoRoot, s))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// The contracts in the scripts' headers, checked for their key lines.
	pre := read(PreinstPath)
	for _, want := range []string{"HEADSCALE_SKIP_PREUPGRADE_BACKUP", "umask 077", "runuser -u headscale --", "backup --config", "-preupgrade-", "date -u +%Y%m%dT%H%M%SZ", "exit 1",
		// Over Headscale's own package: detected, no backup, the copy named.
		`*'unknown command "backup"'*) return 0 ;;`, "$DB.headscale-v<release>"} {
		if !strings.Contains(pre, want) {
			t.Errorf("preinst lacks %q", want)
		}
	}
	post := read(PostinstPath)
	abort := regexp.MustCompile(`(?s)abort-upgrade \| abort-remove \| abort-deconfigure\)\s*exit 0\s*;;`)
	if !abort.MatchString(post) {
		t.Errorf("postinst: abort-upgrade/abort-remove/abort-deconfigure must exit 0 at once")
	}
	for _, want := range []string{"configtest --config", "deb-systemd-helper enable", "deb-systemd-invoke start", "deb-systemd-invoke restart", "dpkg --configure -a", "chmod 0640", "chmod 0750",
		// Files in the state directory another user owns go to headscale.
		"give_state_files_to_headscale\n\tchown headscale:headscale \"$STATE\"", `chown -h headscale:headscale "$f"`} {
		if !strings.Contains(post, want) {
			t.Errorf("postinst lacks %q", want)
		}
	}
	prerm := read(PrermPath)
	if strings.Contains(prerm, "disable") {
		t.Errorf("prerm must not disable the service (it must stay enabled across upgrades)")
	}
	postrm := read(PostrmPath)
	if !strings.Contains(postrm, `"headscale: purged $removed and the user headscale"`) || !strings.Contains(postrm, `removed="/var/lib/headscale (database, keys, backups)"`) {
		t.Errorf("postrm: purge message changed")
	}
}

func TestGenerateAssets(t *testing.T) {
	dir := t.TempDir()
	date := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	// A stale page from an earlier run must disappear.
	os.MkdirAll(filepath.Join(dir, "man"), 0o755)
	os.WriteFile(filepath.Join(dir, "man", "headscale-gone.1.gz"), nil, 0o644)
	entries, err := GenerateAssets(dir, "0.2.0-rc.1", date)
	if err != nil {
		t.Fatal(err)
	}
	dsts := map[string]Entry{}
	for _, e := range entries {
		dsts[e.Dst] = e
		if !e.Generated || e.Mode != 0o644 {
			t.Errorf("%s: %+v", e.Dst, e)
		}
		if _, err := os.Stat(filepath.Join(dir, e.Src)); err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "man", "headscale-gone.1.gz")); err == nil {
		t.Error("stale man page kept")
	}
	for _, want := range []string{
		"/usr/share/doc/headscale/changelog.gz",
		"/usr/share/man/man1/headscale.1.gz",
		"/usr/share/man/man1/headscale-serve.1.gz",
		"/usr/share/man/man1/headscale-configtest.1.gz",
		"/usr/share/man/man1/headscale-users-create.1.gz",
		"/usr/share/bash-completion/completions/headscale",
		"/usr/share/zsh/vendor-completions/_headscale",
		"/usr/share/fish/vendor_completions.d/headscale.fish",
	} {
		if _, ok := dsts[want]; !ok {
			t.Errorf("no %s among %d generated files", want, len(entries))
		}
	}

	gunzip := func(rel string) string {
		b, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		// gzip -n -9: no time stamp, no name, XFL=2 (maximum compression).
		if len(b) < 10 || b[4]|b[5]|b[6]|b[7] != 0 || b[3]&0x08 != 0 || b[8] != 2 {
			t.Errorf("%s: gzip header %x is not that of gzip -n -9", rel, b[:10])
		}
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if _, err := out.ReadFrom(zr); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	cl := gunzip("changelog.gz")
	wantCL := "headscale (0.2.0~rc.1) unstable; urgency=medium\n\n  * Release 0.2.0~rc.1, built from https://github.com/hsctl/headscale.\n\n" +
		" -- hsctl headscale maintainers <headscale@hsctl.invalid>  Wed, 04 Mar 2026 05:06:07 +0000\n"
	if cl != wantCL {
		t.Errorf("changelog:\n%s\nwant:\n%s", cl, wantCL)
	}
	man := gunzip("man/headscale-users-create.1.gz")
	if !strings.Contains(man, `.TH "HEADSCALE-USERS-CREATE" "1" "Mar 2026" "headscale 0.2.0-rc.1" "headscale manual"`) {
		t.Errorf("man page header:\n%s", man[:min(len(man), 300)])
	}
	if strings.Contains(man, "Auto generated by spf13/cobra") {
		t.Error("man page has cobra's HISTORY section")
	}

	// Same inputs, same bytes.
	dir2 := t.TempDir()
	if _, err := GenerateAssets(dir2, "0.2.0-rc.1", date); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		a, _ := os.ReadFile(filepath.Join(dir, e.Src))
		b, _ := os.ReadFile(filepath.Join(dir2, e.Src))
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between two runs", e.Src)
		}
	}
}

// goreleaserConfig is the part of .goreleaser.yaml the sync test reads.
type goreleaserConfig struct {
	Version int    `yaml:"version"`
	Dist    string `yaml:"dist"`
	Before  struct {
		Hooks []string `yaml:"hooks"`
	} `yaml:"before"`
	Builds []struct {
		ID      string   `yaml:"id"`
		Main    string   `yaml:"main"`
		Binary  string   `yaml:"binary"`
		Env     []string `yaml:"env"`
		Goos    []string `yaml:"goos"`
		Goarch  []string `yaml:"goarch"`
		Flags   []string `yaml:"flags"`
		Ldflags []string `yaml:"ldflags"`
	} `yaml:"builds"`
	Nfpms []struct {
		PackageName  string   `yaml:"package_name"`
		IDs          []string `yaml:"ids"`
		Formats      []string `yaml:"formats"`
		Maintainer   string   `yaml:"maintainer"`
		Homepage     string   `yaml:"homepage"`
		License      string   `yaml:"license"`
		Section      string   `yaml:"section"`
		Priority     string   `yaml:"priority"`
		Description  string   `yaml:"description"`
		Bindir       string   `yaml:"bindir"`
		Dependencies []string `yaml:"dependencies"`
		Recommends   []string `yaml:"recommends"`
		Suggests     []string `yaml:"suggests"`
		Scripts      struct {
			Preinstall  string `yaml:"preinstall"`
			Postinstall string `yaml:"postinstall"`
			Preremove   string `yaml:"preremove"`
			Postremove  string `yaml:"postremove"`
		} `yaml:"scripts"`
		Contents []struct {
			Src      string `yaml:"src"`
			Dst      string `yaml:"dst"`
			Type     string `yaml:"type"`
			FileInfo struct {
				Mode  int    `yaml:"mode"`
				Owner string `yaml:"owner"`
				Group string `yaml:"group"`
			} `yaml:"file_info"`
		} `yaml:"contents"`
	} `yaml:"nfpms"`
}

// makeVar returns the value of `NAME ?= value` or `NAME := value` in the
// Makefile.
func makeVar(t *testing.T, makefile, name string) string {
	m := regexp.MustCompile(`(?m)^` + name + `\s*[?:]?=\s*(.*)$`).FindStringSubmatch(makefile)
	if m == nil {
		t.Fatalf("Makefile: no %s", name)
	}
	return strings.TrimSpace(m[1])
}

// TestGoreleaserInSync compares .goreleaser.yaml with the Makefile and with
// what mkdeb packages: builds, control fields, scripts and the file list.
func TestGoreleaserInSync(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repoRoot, ".goreleaser.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg goreleaserConfig
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	mk, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	makefile := string(mk)

	if cfg.Version != 2 {
		t.Errorf("version: %d, want 2", cfg.Version)
	}
	if len(cfg.Builds) != 1 {
		t.Fatalf("want exactly one build, have %d", len(cfg.Builds))
	}
	b := cfg.Builds[0]
	if b.Main != "./cmd/headscale" || b.Binary != "headscale" {
		t.Errorf("build main/binary: %q %q", b.Main, b.Binary)
	}
	if !reflect.DeepEqual(b.Env, []string{"CGO_ENABLED=0"}) || !reflect.DeepEqual(b.Goos, []string{"linux"}) {
		t.Errorf("build env/goos: %q %q", b.Env, b.Goos)
	}
	if got, want := strings.Join(b.Goarch, " "), makeVar(t, makefile, "ARCHES"); got != want {
		t.Errorf("goarch %q, Makefile ARCHES %q", got, want)
	}
	if !reflect.DeepEqual(b.Flags, []string{"-trimpath"}) || !strings.Contains(makefile, "build -trimpath -ldflags") {
		t.Errorf("build flags %q (Makefile must use -trimpath too)", b.Flags)
	}
	wantLD := strings.ReplaceAll(makeVar(t, makefile, "LDFLAGS"), "$(VERSION)", "{{ .Version }}")
	if len(b.Ldflags) != 1 || b.Ldflags[0] != wantLD {
		t.Errorf("ldflags %q, want %q (from the Makefile)", b.Ldflags, wantLD)
	}
	if !strings.Contains(makefile, "CGO_ENABLED=0 GOOS=linux GOARCH=$$arch") {
		t.Error("Makefile: binaries not built with CGO_ENABLED=0 GOOS=linux")
	}

	const assetsPrefix = "dist/goreleaser-assets/"
	if len(cfg.Before.Hooks) != 1 || !strings.Contains(cfg.Before.Hooks[0], "./packaging/deb/mkdeb -assets "+strings.TrimSuffix(assetsPrefix, "/")+" -version {{ .Version }}") {
		t.Errorf("before hook does not generate the assets with mkdeb: %q", cfg.Before.Hooks)
	}
	if !strings.HasPrefix(assetsPrefix, "dist/") || cfg.Dist == "" || strings.HasPrefix(assetsPrefix, cfg.Dist+"/") {
		t.Errorf("dist %q: the assets directory must be outside goreleaser's dist (it wants it empty)", cfg.Dist)
	}

	if len(cfg.Nfpms) != 1 {
		t.Fatalf("want exactly one nfpms entry, have %d", len(cfg.Nfpms))
	}
	n := cfg.Nfpms[0]
	fields := []struct{ name, got, want string }{
		{"package_name", n.PackageName, PackageName},
		{"maintainer", n.Maintainer, Maintainer},
		{"homepage", n.Homepage, Homepage},
		{"license", n.License, License},
		{"section", n.Section, Section},
		{"priority", n.Priority, Priority},
		{"description", strings.TrimSpace(n.Description), Synopsis + "\n" + LongDescription},
		{"bindir", n.Bindir, path.Dir(BinaryDst)},
		{"preinstall", n.Scripts.Preinstall, PreinstPath},
		{"postinstall", n.Scripts.Postinstall, PostinstPath},
		{"preremove", n.Scripts.Preremove, PrermPath},
		{"postremove", n.Scripts.Postremove, PostrmPath},
	}
	for _, f := range fields {
		if f.got != f.want {
			t.Errorf("nfpms %s: %q, mkdeb has %q", f.name, f.got, f.want)
		}
	}
	if !reflect.DeepEqual(n.IDs, []string{b.ID}) || !reflect.DeepEqual(n.Formats, []string{"deb"}) {
		t.Errorf("nfpms ids/formats: %q %q", n.IDs, n.Formats)
	}
	for _, l := range []struct {
		name      string
		got, want []string
	}{{"dependencies", n.Dependencies, Depends}, {"recommends", n.Recommends, Recommends}, {"suggests", n.Suggests, Suggests}} {
		if strings.Join(l.got, ", ") != strings.Join(l.want, ", ") {
			t.Errorf("nfpms %s: %q, mkdeb has %q", l.name, l.got, l.want)
		}
	}

	// The file lists: mkdeb's entries plus the generated ones (expanded from
	// goreleaser's globs against a generated set).
	assets := t.TempDir()
	generated, err := GenerateAssets(assets, "0.1.0", DefaultDate)
	if err != nil {
		t.Fatal(err)
	}
	type file struct {
		src, dst string
		mode     os.FileMode
		conf     bool
	}
	var want, got []file
	for _, e := range append(Entries(), generated...) {
		src := e.Src
		if e.Generated {
			src = assetsPrefix + src
		}
		want = append(want, file{src, e.Dst, e.Mode, e.Conffile})
	}
	for _, c := range n.Contents {
		if c.Type != "" && c.Type != "config|noreplace" {
			t.Errorf("%s: type %q", c.Dst, c.Type)
		}
		if c.FileInfo.Owner != "" || c.FileInfo.Group != "" {
			t.Errorf("%s: owner/group set; mkdeb ships everything root:root", c.Dst)
		}
		f := file{c.Src, c.Dst, os.FileMode(c.FileInfo.Mode), c.Type == "config|noreplace"}
		if !strings.ContainsAny(c.Src, "*?[") {
			got = append(got, f)
			continue
		}
		if !strings.HasPrefix(c.Src, assetsPrefix) || !strings.HasSuffix(c.Dst, "/") {
			t.Errorf("glob %s -> %s: only generated assets may be globbed, into a directory", c.Src, c.Dst)
			continue
		}
		matches, err := filepath.Glob(filepath.Join(assets, strings.TrimPrefix(c.Src, assetsPrefix)))
		if err != nil || len(matches) == 0 {
			t.Errorf("glob %s matches nothing that mkdeb generates (%v)", c.Src, err)
		}
		for _, m := range matches {
			rel, _ := filepath.Rel(assets, m)
			got = append(got, file{assetsPrefix + filepath.ToSlash(rel), c.Dst + filepath.Base(m), f.mode, f.conf})
		}
	}
	key := func(fs []file) func(i, j int) bool {
		return func(i, j int) bool { return fs[i].dst < fs[j].dst }
	}
	sort.Slice(want, key(want))
	sort.Slice(got, key(got))
	if !reflect.DeepEqual(got, want) {
		gm := map[string]file{}
		for _, f := range got {
			gm[f.dst] = f
		}
		wm := map[string]file{}
		for _, f := range want {
			wm[f.dst] = f
			if g, ok := gm[f.dst]; !ok {
				t.Errorf("goreleaser lacks %s (mkdeb: %+v)", f.dst, f)
			} else if g != f {
				t.Errorf("%s: goreleaser %+v, mkdeb %+v", f.dst, g, f)
			}
		}
		for _, f := range got {
			if _, ok := wm[f.dst]; !ok {
				t.Errorf("goreleaser has %s, mkdeb does not", f.dst)
			}
		}
	}
}
