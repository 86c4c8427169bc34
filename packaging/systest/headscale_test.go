package systest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/files"
	"github.com/hsctl/headscale/internal/tstest"

	_ "github.com/goreleaser/nfpm/v2/deb" // registers the "deb" packager
)

// headscaleVersion is the Headscale release the switch starts from: the
// stand-in package's version and the release of the fixture's database.
const headscaleVersion = "0.27.1"

// headscaleFixture is a real Headscale 0.27.1 deployment (config, database,
// key files) in ../shared; it is read from there, never copied into the
// repository.
const headscaleFixture = "fixtures/headscale-db/0.27.1-sqlite"

// Files of the stand-in for Headscale's own package. The binary is a shell
// script, not Headscale: it answers what this package's maintainer scripts
// may call on the binary they replace the way Headscale's CLI does (cobra's
// unknown-command error and exit 1 for `backup`), and `serve` only waits,
// so that headscale.service is running when the upgrade replaces it.
const (
	standInBinary = `#!/bin/sh
# Stand-in for Headscale ` + headscaleVersion + `'s /usr/bin/headscale (packaging/systest).
case "${1:-}" in
version) echo "headscale version v` + headscaleVersion + `" ;;
configtest) exit 0 ;;
serve) exec sleep infinity ;;
*)
	echo "Error: unknown command \"${1:-}\" for \"headscale\"" >&2
	echo "Run 'headscale --help' for usage." >&2
	exit 1
	;;
esac
`
	// The unit runs as the user headscale with a state directory, as
	// Headscale's does.
	standInUnit = `[Unit]
Description=stand-in for Headscale's headscale.service (packaging/systest)

[Service]
Type=simple
User=headscale
Group=headscale
ExecStart=/usr/bin/headscale serve
Restart=always
StateDirectory=headscale
StateDirectoryMode=0750
RuntimeDirectory=headscale
RuntimeDirectoryMode=0750

[Install]
WantedBy=multi-user.target
`
	standInConfig = `# Example configuration of the stand-in for Headscale's package.
server_url: http://127.0.0.1:8080
listen_addr: 127.0.0.1:8080
`
	// Like Headscale's postinst: a system group and user headscale (home
	// /var/lib/headscale), the service enabled and (re)started.
	standInPostinst = `#!/bin/sh
set -e
if [ "$1" = configure ]; then
	groupadd --force --system headscale
	if ! id -u headscale >/dev/null 2>&1; then
		useradd --system --gid headscale --home-dir /var/lib/headscale --shell /usr/sbin/nologin headscale
	fi
	deb-systemd-helper enable headscale.service >/dev/null || true
	if [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		deb-systemd-invoke restart headscale.service >/dev/null || true
	fi
fi
exit 0
`
)

// buildStandIn writes the stand-in for Headscale's own package (name
// headscale, version headscaleVersion) into dir and returns its path. Like
// Headscale's package it ships /etc/headscale/config.yaml as a root-owned
// 0644 conffile and /var/lib/headscale as a directory, and has no prerm.
func buildStandIn(t *testing.T, dir string) string {
	t.Helper()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(src, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	file := func(src, dst string, typ string, mode os.FileMode) *files.Content {
		return &files.Content{Source: src, Destination: dst, Type: typ,
			FileInfo: &files.ContentFileInfo{Owner: "root", Group: "root", Mode: mode}}
	}
	info := nfpm.WithDefaults(&nfpm.Info{
		Name:        "headscale",
		Arch:        "amd64",
		Platform:    "linux",
		Version:     headscaleVersion,
		Section:     "net",
		Priority:    "optional",
		Maintainer:  "packaging/systest <systest@hsctl.invalid>",
		Description: "stand-in for Headscale's own package (system test only)",
		Overridables: nfpm.Overridables{
			Contents: files.Contents{
				file(write("headscale", standInBinary, 0o755), "/usr/bin/headscale", files.TypeFile, 0o755),
				file(write("headscale.service", standInUnit, 0o644), "/usr/lib/systemd/system/headscale.service", files.TypeFile, 0o644),
				file(write("config.yaml", standInConfig, 0o644), "/etc/headscale/config.yaml", files.TypeConfigNoReplace, 0o644),
				{Destination: "/var/lib/headscale", Type: files.TypeDir, FileInfo: &files.ContentFileInfo{Owner: "root", Group: "root", Mode: 0o755}},
			},
			Scripts: nfpm.Scripts{PostInstall: write("postinst", standInPostinst, 0o755)},
		},
	})
	if err := nfpm.Validate(info); err != nil {
		t.Fatal(err)
	}
	pkgr, err := nfpm.Get("deb")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, pkgr.ConventionalFileName(info))
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := pkgr.Package(info, f); err != nil {
		f.Close()
		t.Fatalf("nfpm: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}

// switchFromHeadscale installs the stand-in for Headscale's own package on
// a machine without headscale, puts a real Headscale 0.27.1 deployment in
// place as Headscale leaves it, and installs this package's version
// ourVersion over it with the running Headscale service enabled, as a user
// would: dpkg -i, keeping their configuration. dist is the host directory
// mounted at /mnt/debs (ourVersion's package is in its ourVersion/).
func switchFromHeadscale(t *testing.T, c *container, dist, ourVersion string) {
	ourDeb := "/mnt/debs/" + ourVersion + "/headscale_" + ourVersion + "_amd64.deb"
	fx := tstest.Shared(t, headscaleFixture)
	start := time.Now()
	host := filepath.Join(dist, "headscale-"+headscaleVersion)
	mnt := "/mnt/debs/headscale-" + headscaleVersion
	standIn := mnt + "/" + filepath.Base(buildStandIn(t, host))
	// The fixture's files go to the mounted temporary directory only.
	fixtureFiles := []string{"config.yaml", "db.sqlite", "noise_private.key", "derp_server_private.key"}
	if err := os.MkdirAll(filepath.Join(host, "fixture"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range fixtureFiles {
		b, err := os.ReadFile(filepath.Join(fx, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(host, "fixture", name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fixture := mnt + "/fixture/"

	// A machine that never had this package: the earlier stages' drop-in
	// and client go too.
	c.must("rm -rf /etc/systemd/system/headscale.service.d && systemctl daemon-reload && { systemctl stop ts1 || true; }")
	out := c.must("dpkg -i " + standIn + " 2>&1")
	t.Logf("dpkg -i %s (the stand-in for Headscale's package):\n%s", filepath.Base(standIn), out)
	c.must("systemctl is-active headscale && systemctl is-enabled headscale && id headscale")
	if v := strings.TrimSpace(c.must("headscale version")); v != "headscale version v"+headscaleVersion {
		t.Fatalf("stand-in version = %q", v)
	}
	// Headscale's files as it leaves them: the edited conffile (root:root
	// 0644) and the noise key written by the service user; the database
	// and the DERP key as an admin who copied them in as root leaves them,
	// which the service could neither write nor read without postinst.
	// Headscale then runs on them.
	c.must(fmt.Sprintf(`cp %[1]sconfig.yaml /etc/headscale/config.yaml &&
install -o headscale -g headscale -m 0600 %[1]snoise_private.key /var/lib/headscale/ &&
install -o root -g root -m 0644 %[1]sdb.sqlite /var/lib/headscale/ &&
install -o root -g root -m 0600 %[1]sderp_server_private.key /var/lib/headscale/ &&
systemctl restart headscale && systemctl is-active headscale`, fixture))
	c.must(`test "$(stat -c '%U %G %a' /etc/headscale/config.yaml)" = 'root root 644'`)
	pid := strings.TrimSpace(c.must("systemctl show -p MainPID --value headscale"))

	// The switch: Headscale is still running, its service enabled.
	out, err := c.sh("dpkg -i --force-confold " + ourDeb + " 2>&1")
	t.Logf("dpkg -i --force-confold %s over Headscale %s:\n%s", filepath.Base(ourDeb), headscaleVersion, out)
	if err != nil {
		c.diagnose()
		t.Fatalf("the upgrade from Headscale's package failed: %v", err)
	}
	for _, want := range []string{
		"replacing Headscale " + headscaleVersion + " (its binary has no backup command)",
		"/var/lib/headscale/db.sqlite.headscale-v<release>",
		"to the user headscale (and took away access for others): db.sqlite derp_server_private.key",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dpkg output lacks %q", want)
		}
	}
	if strings.Contains(out, "FAILED") {
		t.Errorf("dpkg output reports a failure")
	}
	if st := c.must("dpkg-query -W -f='${Status} ${Version}' headscale"); st != "install ok installed "+ourVersion {
		t.Errorf("package status %q", st)
	}

	// Headscale's process is gone, this server serves in its place.
	c.must("systemctl is-active headscale && systemctl is-enabled headscale")
	if got := strings.TrimSpace(c.must("systemctl show -p MainPID --value headscale")); got == pid {
		t.Errorf("Headscale's process %s was not replaced", pid)
	}
	c.must("! pgrep -u headscale -x sleep")
	if v := strings.TrimSpace(c.must("headscale version | head -n1")); v != "headscale version "+ourVersion {
		t.Errorf("version after the switch = %q", v)
	}

	// The takeover: one log line per kind, the 4 nodes served, the copy
	// byte for byte the Headscale database, the keys and config as they were.
	c.waitFor("the takeover's log lines", 10*time.Second,
		`journalctl -u headscale --no-pager -o cat | grep 'headscale import' | grep 'kind=nodes' | grep -q 'converted=4'`)
	t.Logf("takeover log:\n%s", c.must("journalctl -u headscale --no-pager -o cat | grep 'headscale import' || true"))
	var nodes []struct {
		GivenName string `json:"given_name"`
	}
	if err := json.Unmarshal([]byte(c.must("headscale nodes list -o json")), &nodes); err != nil {
		t.Fatalf("nodes list -o json: %v", err)
	}
	var names []string
	for _, n := range nodes {
		names = append(names, n.GivenName)
	}
	slices.Sort(names)
	if want := []string{"alice-laptop", "alice-pixel", "bob-laptop", "bob-server"}; !slices.Equal(names, want) {
		t.Errorf("nodes after the switch: %q, want %q", names, want)
	}
	c.must("cmp /var/lib/headscale/db.sqlite.headscale-v" + headscaleVersion + " " + fixture + "db.sqlite")
	c.must("cmp /var/lib/headscale/noise_private.key " + fixture + "noise_private.key")
	c.must("cmp /var/lib/headscale/derp_server_private.key " + fixture + "derp_server_private.key")
	c.must("cmp /etc/headscale/config.yaml " + fixture + "config.yaml")
	c.must(`test "$(stat -c '%U %G %a' /etc/headscale/config.yaml)" = 'root headscale 640'`)
	c.must(`cd /var/lib/headscale && test "$(stat -c '%U %a' derp_server_private.key noise_private.key db.sqlite db.sqlite.headscale-v` + headscaleVersion + ` | sort -u)" = 'headscale 600'`)
	t.Logf("switch from Headscale's package: %v", time.Since(start).Round(100*time.Millisecond))
}
