// Package deb builds the headscale Debian package with nfpm's deb packager.
//
// The file list (Entries plus the generated documentation from
// GenerateAssets), the control fields and the maintainer scripts defined
// here are what packaging/deb/mkdeb packages for `make deb`; the tests keep
// the nfpms section of .goreleaser.yaml in sync with them.
package deb

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/files"
	"github.com/hsctl/headscale/pkg/cli"
	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	_ "github.com/goreleaser/nfpm/v2/deb" // registers the "deb" packager
)

// Control fields of the package.
const (
	PackageName = "headscale"
	Maintainer  = "hsctl headscale maintainers <headscale@hsctl.invalid>"
	Homepage    = "https://github.com/hsctl/headscale"
	Section     = "net"
	Priority    = "optional"
	License     = "BSD-3-Clause"
	// Synopsis is the first line of the Description field.
	Synopsis = "self-hosted control server for Tailscale clients"
	// LongDescription is the extended Description; blank lines become " .".
	LongDescription = `headscale is a control server that the official Tailscale clients join
with "tailscale up --login-server URL". It is compatible with Headscale's
configuration file, command line and REST API: registration with pre-auth
keys, MagicDNS, an embedded DERP relay and STUN server, and Prometheus
metrics, in one statically linked binary with an embedded SQLite database.

The package runs the server as the systemd service headscale.service under
the system user headscale, keeps its state in /var/lib/headscale, backs the
database up daily (from /etc/cron.d/headscale, or headscale-backup.timer
when enabled) and takes a backup before every upgrade.`
)

// Depends lists what the maintainer scripts and the shipped units call that
// is not Essential: adduser (postinst adds the system user), procps
// (ExecReload=/usr/bin/kill) and init-system-helpers (deb-systemd-helper and
// deb-systemd-invoke; Essential on bookworm, versioned so that lintian
// accepts it and later releases that drop Essential keep it installed).
var Depends = []string{"adduser", "procps", "init-system-helpers (>= 1.54)"}

// Recommends: a cron daemon runs the daily backup and the health check in
// /etc/cron.d/headscale (the package does not enable headscale-backup.timer).
// Suggests: postgresql, for database.type: postgres with the database on
// this machine (headscale.service orders itself after postgresql.service
// without requiring it); SQLite, the default, is built in. sqlite3 is not
// suggested: backups go through `headscale backup`.
var (
	Recommends = []string{"cron | cron-daemon"}
	Suggests   = []string{"postgresql"}
)

// Maintainer scripts, relative to the repository root.
const (
	PreinstPath  = "packaging/deb/preinst"
	PostinstPath = "packaging/deb/postinst"
	PrermPath    = "packaging/deb/prerm"
	PostrmPath   = "packaging/deb/postrm"
)

// BinaryDst is where the headscale binary is installed.
const BinaryDst = "/usr/bin/headscale"

// Entry is one file of the package.
type Entry struct {
	// Src is relative to the repository root, or to the generated-assets
	// directory when Generated is set.
	Src string
	// Dst is the absolute path in the installed system.
	Dst string
	// Mode is the file mode in the archive (owner and group are root).
	Mode fs.FileMode
	// Conffile marks a dpkg conffile (nfpm type config|noreplace).
	Conffile bool
	// Generated is set for files written by GenerateAssets.
	Generated bool
}

// Entries returns the files taken from the repository, in package order.
// The binary (BinaryDst) and the generated documentation are not included.
func Entries() []Entry {
	return []Entry{
		{Src: "packaging/systemd/headscale.service", Dst: "/usr/lib/systemd/system/headscale.service", Mode: 0o644},
		{Src: "packaging/systemd/headscale-backup.service", Dst: "/usr/lib/systemd/system/headscale-backup.service", Mode: 0o644},
		{Src: "packaging/systemd/headscale-backup.timer", Dst: "/usr/lib/systemd/system/headscale-backup.timer", Mode: 0o644},
		{Src: "etc/headscale/config.yaml", Dst: "/etc/headscale/config.yaml", Mode: 0o640, Conffile: true},
		{Src: "packaging/systemd/headscale.cron.d", Dst: "/etc/cron.d/headscale", Mode: 0o644, Conffile: true},
		{Src: "scripts/backup/headscale-backup", Dst: "/usr/libexec/headscale/headscale-backup", Mode: 0o755},
		{Src: "scripts/backup/headscale-healthcheck", Dst: "/usr/libexec/headscale/headscale-healthcheck", Mode: 0o755},
		{Src: "packaging/deb/copyright", Dst: "/usr/share/doc/headscale/copyright", Mode: 0o644},
		{Src: "README.md", Dst: "/usr/share/doc/headscale/README.md", Mode: 0o644},
		{Src: "docs/runbook.md", Dst: "/usr/share/doc/headscale/runbook.md", Mode: 0o644},
		{Src: "etc/headscale/config.yaml", Dst: "/usr/share/doc/headscale/examples/config.yaml", Mode: 0o644},
		{Src: "packaging/systemd/low-ports.conf", Dst: "/usr/share/doc/headscale/examples/low-ports.conf", Mode: 0o644},
		// Reverse proxy configurations, tested by e2e/proxy_test.go.
		{Src: "packaging/examples/nginx.conf", Dst: "/usr/share/doc/headscale/examples/nginx.conf", Mode: 0o644},
		{Src: "packaging/examples/haproxy.cfg", Dst: "/usr/share/doc/headscale/examples/haproxy.cfg", Mode: 0o644},
		{Src: "packaging/examples/Caddyfile", Dst: "/usr/share/doc/headscale/examples/Caddyfile", Mode: 0o644},
		// Several servers behind one load balancer, tested by e2e/cluster_test.go.
		{Src: "packaging/examples/haproxy-cluster.cfg", Dst: "/usr/share/doc/headscale/examples/haproxy-cluster.cfg", Mode: 0o644},
		{Src: "packaging/examples/nginx-cluster.conf", Dst: "/usr/share/doc/headscale/examples/nginx-cluster.conf", Mode: 0o644},
		{Src: "packaging/deb/lintian-overrides", Dst: "/usr/share/lintian/overrides/headscale", Mode: 0o644},
	}
}

// Generated-asset layout, relative to the assets directory.
const (
	AssetChangelog       = "changelog.gz"
	AssetManDir          = "man"
	AssetBashCompletion  = "completions/headscale.bash"
	AssetZshCompletion   = "completions/_headscale"
	AssetFishCompletion  = "completions/headscale.fish"
	manSection           = "1"
	defaultChangelogDist = "unstable"
)

// DefaultDate is the timestamp used when SOURCE_DATE_EPOCH is not set:
// file times, the changelog entry and the man page headers all use one fixed
// date so that the same inputs give the same package bytes.
var DefaultDate = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// DateFromEnv returns SOURCE_DATE_EPOCH as a UTC time, or DefaultDate when
// it is unset.
func DateFromEnv(getenv func(string) string) (time.Time, error) {
	s := getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return DefaultDate, nil
	}
	var sec int64
	if _, err := fmt.Sscanf(s, "%d", &sec); err != nil || fmt.Sprint(sec) != s || sec < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a number of seconds", s)
	}
	return time.Unix(sec, 0).UTC(), nil
}

var debVersionRE = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`)

// DebianVersion returns the Debian version nfpm gives a package built from
// version (as passed to `make deb VERSION=...` or goreleaser's .Version):
// a semver "1.2.3-rc.1+meta" becomes "1.2.3~rc.1+meta", so pre-releases sort
// before the release. The result must be a native Debian version (no epoch,
// no revision); anything else is an error.
func DebianVersion(version string) (string, error) {
	if version == "" {
		return "", errors.New("empty version")
	}
	info := nfpm.WithDefaults(&nfpm.Info{Name: PackageName, Version: version})
	v := info.Version
	if info.Prerelease != "" {
		v += "~" + info.Prerelease
	}
	if info.VersionMetadata != "" {
		v += "+" + info.VersionMetadata
	}
	if !debVersionRE.MatchString(v) {
		return "", fmt.Errorf("version %q gives Debian version %q: want digits first, then only [A-Za-z0-9.+~] (e.g. 0.1.0, 0.2.0-rc.1)", version, v)
	}
	return v, nil
}

// Changelog returns the Debian changelog (one entry for version) for a
// native package, as lintian checks it in /usr/share/doc/headscale/changelog.gz.
func Changelog(debVersion string, date time.Time) string {
	return fmt.Sprintf(`%s (%s) %s; urgency=medium

  * Release %s, built from %s.

 -- %s  %s
`, PackageName, debVersion, defaultChangelogDist, debVersion, Homepage, Maintainer, date.UTC().Format(time.RFC1123Z))
}

// gzipBytes compresses b like `gzip -n -9`: best compression, no name and
// no time stamp in the header.
func gzipBytes(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	zw.OS = 3 // Unix, as gzip(1) writes it
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// cliRoot returns the headscale command tree as the binary builds it at run
// time, including cobra's default completion command.
func cliRoot(version string) *cobra.Command {
	root := cli.NewRoot(cli.Env{Version: version, Stdout: io.Discard, Stderr: io.Discard})
	root.InitDefaultCompletionCmd()
	root.InitDefaultHelpCmd()
	var visit func(c *cobra.Command)
	visit = func(c *cobra.Command) {
		c.DisableAutoGenTag = true
		for _, s := range c.Commands() {
			visit(s)
		}
	}
	visit(root)
	return root
}

// ManPages renders a man page for every available command (as cobra's
// doc.GenManTree does), keyed by file name (headscale-users-create.1),
// with a fixed date and "headscale <version>" as the source.
func ManPages(version string, date time.Time) (map[string][]byte, error) {
	out := map[string][]byte{}
	var walk func(c *cobra.Command) error
	walk = func(c *cobra.Command) error {
		for _, s := range c.Commands() {
			if !s.IsAvailableCommand() || s.IsAdditionalHelpTopicCommand() {
				continue
			}
			if err := walk(s); err != nil {
				return err
			}
		}
		d := date.UTC()
		hdr := &doc.GenManHeader{
			Section: manSection,
			Date:    &d,
			Source:  PackageName + " " + version,
			Manual:  "headscale manual",
		}
		var buf bytes.Buffer
		if err := doc.GenMan(c, hdr, &buf); err != nil {
			return fmt.Errorf("man page for %q: %w", c.CommandPath(), err)
		}
		out[strings.ReplaceAll(c.CommandPath(), " ", "-")+"."+manSection] = buf.Bytes()
		return nil
	}
	if err := walk(cliRoot(version)); err != nil {
		return nil, err
	}
	return out, nil
}

// Completions returns the bash, zsh and fish completion scripts, keyed by
// their asset paths (AssetBashCompletion, ...).
func Completions(version string) (map[string][]byte, error) {
	root := cliRoot(version)
	var bash, zsh, fish bytes.Buffer
	if err := root.GenBashCompletionV2(&bash, true); err != nil {
		return nil, err
	}
	if err := root.GenZshCompletion(&zsh); err != nil {
		return nil, err
	}
	if err := root.GenFishCompletion(&fish, true); err != nil {
		return nil, err
	}
	return map[string][]byte{
		AssetBashCompletion: bash.Bytes(),
		AssetZshCompletion:  zsh.Bytes(),
		AssetFishCompletion: fish.Bytes(),
	}, nil
}

// GenerateAssets writes the generated documentation for version into dir
// (changelog.gz, man/*.1.gz, completions/*, replacing what was there) and
// returns their entries,
// sorted by destination. version is the version as built into the binary;
// the changelog carries its Debian form.
func GenerateAssets(dir, version string, date time.Time) ([]Entry, error) {
	debVersion, err := DebianVersion(version)
	if err != nil {
		return nil, err
	}
	// Start from nothing, so that a page of a command that is gone does not
	// linger in a reused directory.
	for _, rel := range []string{AssetChangelog, AssetManDir, path.Dir(AssetBashCompletion)} {
		if err := os.RemoveAll(filepath.Join(dir, filepath.FromSlash(rel))); err != nil {
			return nil, err
		}
	}
	var entries []Entry
	write := func(rel string, data []byte, dst string) error {
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
		if err := os.Chtimes(p, date, date); err != nil {
			return err
		}
		entries = append(entries, Entry{Src: rel, Dst: dst, Mode: 0o644, Generated: true})
		return nil
	}

	cl, err := gzipBytes([]byte(Changelog(debVersion, date)))
	if err != nil {
		return nil, err
	}
	if err := write(AssetChangelog, cl, "/usr/share/doc/headscale/changelog.gz"); err != nil {
		return nil, err
	}

	pages, err := ManPages(version, date)
	if err != nil {
		return nil, err
	}
	for name, page := range pages {
		gz, err := gzipBytes(page)
		if err != nil {
			return nil, err
		}
		if err := write(path.Join(AssetManDir, name+".gz"), gz, "/usr/share/man/man1/"+name+".gz"); err != nil {
			return nil, err
		}
	}

	comps, err := Completions(version)
	if err != nil {
		return nil, err
	}
	compDst := map[string]string{
		AssetBashCompletion: "/usr/share/bash-completion/completions/headscale",
		AssetZshCompletion:  "/usr/share/zsh/vendor-completions/_headscale",
		AssetFishCompletion: "/usr/share/fish/vendor_completions.d/headscale.fish",
	}
	for rel, data := range comps {
		if err := write(rel, data, compDst[rel]); err != nil {
			return nil, err
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Dst < entries[j].Dst })
	return entries, nil
}

// Options says what to build.
type Options struct {
	// Root is the repository root (sources of Entries and the scripts).
	Root string
	// Version is the version as built into the binary (main.version).
	Version string
	// Arch is the Debian/Go architecture: amd64 or arm64.
	Arch string
	// Binary is the headscale binary built for Arch with -s -w.
	Binary string
	// OutDir receives the package, named headscale_<debversion>_<arch>.deb.
	OutDir string
	// Date is the time stamp of every file, the changelog entry and the man
	// pages.
	Date time.Time
}

// elfMachines maps the supported architectures to their ELF machine.
var elfMachines = map[string]elf.Machine{
	"amd64": elf.EM_X86_64,
	"arm64": elf.EM_AARCH64,
}

// CheckBinary verifies that the file at p is a stripped static Linux ELF
// executable for arch.
func CheckBinary(p, arch string) error {
	want, ok := elfMachines[arch]
	if !ok {
		return fmt.Errorf("unsupported architecture %q (want amd64 or arm64)", arch)
	}
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("binary %s: %w", p, err)
	}
	defer f.Close()
	if f.Machine != want {
		return fmt.Errorf("binary %s is for %v, not %s", p, f.Machine, arch)
	}
	if f.Section(".symtab") != nil {
		return fmt.Errorf("binary %s is not stripped (.symtab present): build it with -ldflags \"-s -w\"", p)
	}
	if f.Section(".interp") != nil {
		return fmt.Errorf("binary %s is dynamically linked: build it with CGO_ENABLED=0", p)
	}
	return nil
}

// MissingSources returns the Entries sources (and maintainer scripts) that
// do not exist under root.
func MissingSources(root string) []string {
	var missing []string
	srcs := []string{PreinstPath, PostinstPath, PrermPath, PostrmPath}
	for _, e := range Entries() {
		srcs = append(srcs, e.Src)
	}
	for _, s := range srcs {
		if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(s))); err != nil {
			missing = append(missing, s)
		}
	}
	return missing
}

// Info returns the nfpm package description for opts, with the generated
// entries (from GenerateAssets into assetsDir).
func Info(opts Options, assetsDir string, generated []Entry) (*nfpm.Info, error) {
	root, err := filepath.Abs(opts.Root)
	if err != nil {
		return nil, err
	}
	binary, err := filepath.Abs(opts.Binary)
	if err != nil {
		return nil, err
	}
	content := func(src, dst string, mode fs.FileMode, conf bool) *files.Content {
		typ := files.TypeFile
		if conf {
			typ = files.TypeConfigNoReplace
		}
		return &files.Content{
			Source:      src,
			Destination: dst,
			Type:        typ,
			FileInfo:    &files.ContentFileInfo{Owner: "root", Group: "root", Mode: mode, MTime: opts.Date},
		}
	}
	contents := files.Contents{content(binary, BinaryDst, 0o755, false)}
	for _, e := range Entries() {
		contents = append(contents, content(filepath.Join(root, filepath.FromSlash(e.Src)), e.Dst, e.Mode, e.Conffile))
	}
	for _, e := range generated {
		contents = append(contents, content(filepath.Join(assetsDir, filepath.FromSlash(e.Src)), e.Dst, e.Mode, e.Conffile))
	}
	script := func(rel string) string { return filepath.Join(root, filepath.FromSlash(rel)) }
	info := &nfpm.Info{
		Name:            PackageName,
		Arch:            opts.Arch,
		Platform:        "linux",
		Version:         opts.Version,
		Section:         Section,
		Priority:        Priority,
		Maintainer:      Maintainer,
		Description:     Synopsis + "\n" + LongDescription,
		Homepage:        Homepage,
		License:         License,
		DisableGlobbing: true,
		MTime:           opts.Date,
		Overridables: nfpm.Overridables{
			Depends:    Depends,
			Recommends: Recommends,
			Suggests:   Suggests,
			Contents:   contents,
			Scripts: nfpm.Scripts{
				PreInstall:  script(PreinstPath),
				PostInstall: script(PostinstPath),
				PreRemove:   script(PrermPath),
				PostRemove:  script(PostrmPath),
			},
		},
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.Validate(info); err != nil {
		return nil, err
	}
	return info, nil
}

// FileName returns the package file name for version and arch:
// headscale_<debversion>_<arch>.deb.
func FileName(version, arch string) (string, error) {
	v, err := DebianVersion(version)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s_%s_%s.deb", PackageName, v, arch), nil
}

// Build writes the package for opts into opts.OutDir and returns its path.
func Build(opts Options) (string, error) {
	if opts.Date.IsZero() {
		opts.Date = DefaultDate
	}
	name, err := FileName(opts.Version, opts.Arch)
	if err != nil {
		return "", err
	}
	if missing := MissingSources(opts.Root); len(missing) > 0 {
		return "", fmt.Errorf("missing package sources under %s: %s", opts.Root, strings.Join(missing, ", "))
	}
	if err := CheckBinary(opts.Binary, opts.Arch); err != nil {
		return "", err
	}
	assets, err := os.MkdirTemp("", "mkdeb-assets-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(assets)
	generated, err := GenerateAssets(assets, opts.Version, opts.Date)
	if err != nil {
		return "", err
	}
	info, err := Info(opts, assets, generated)
	if err != nil {
		return "", err
	}
	pkgr, err := nfpm.Get("deb")
	if err != nil {
		return "", err
	}
	if got := pkgr.ConventionalFileName(info); got != name {
		return "", fmt.Errorf("nfpm names the package %s, expected %s", got, name)
	}
	if err := os.MkdirAll(opts.OutDir, 0o755); err != nil {
		return "", err
	}
	out := filepath.Join(opts.OutDir, name)
	tmp, err := os.CreateTemp(opts.OutDir, "."+name+".*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if err := pkgr.Package(info, tmp); err != nil {
		tmp.Close()
		return "", fmt.Errorf("nfpm: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", err
	}
	return out, nil
}
