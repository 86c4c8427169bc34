package systest

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"
)

// postgresPackages are the Debian packages of the tree the PostgreSQL stage
// boots: Debian's postgresql, whose main cluster starts under systemd.
var postgresPackages = []string{"postgresql"}

// localPostgreSQL is the runbook's "PostgreSQL on this machine" on a fresh
// machine with Debian's postgresql: the package installed (it starts on
// SQLite), a role and database named headscale for peer authentication
// over /var/run/postgresql, the configuration switched to postgres with no
// password, configtest, a restart. Then the packaged unit is active and
// READY, serves the CLI and a real client from PostgreSQL, rides out
// `systemctl restart postgresql` without being restarted itself, and the
// daily backup job writes a backup of the PostgreSQL database that holds
// its rows. deb is the package's path inside c (booted from the
// postgresPackages tree).
func localPostgreSQL(t *testing.T, c *container, deb string) {
	start := time.Now()
	c.waitFor("PostgreSQL's cluster", 60*time.Second, "runuser -u postgres -- psql -Atc 'select 1' >/dev/null")
	t.Logf("PostgreSQL: %s", strings.TrimSpace(c.must("runuser -u postgres -- psql -Atc 'select version()'")))

	c.must(`mkdir -p /etc/systemd/system/headscale.service.d && cat > /etc/systemd/system/headscale.service.d/systest.conf <<'EOF'
[Service]
Environment=HEADSCALE_SERVER_URL=http://127.0.0.1:8080
EOF`)
	c.must("dpkg -i " + deb + " 2>&1")
	c.must("systemctl is-active headscale")

	// The runbook's steps: a role for the service user, a database it
	// owns, and the configuration naming the socket's directory, with no
	// password anywhere.
	c.must(`runuser -u postgres -- psql -v ON_ERROR_STOP=1 -c 'CREATE ROLE headscale LOGIN' -c 'CREATE DATABASE headscale OWNER headscale'`)
	c.must(`runuser -u headscale -- psql "host=/var/run/postgresql dbname=headscale" -Atc 'select current_user' | grep -qx headscale`)
	c.must(`sed -i -e 's/^  type: sqlite$/  type: postgres/' -e 's|^    host: ""$|    host: /var/run/postgresql|' \
-e 's/^    name: ""$/    name: headscale/' -e 's/^    user: ""$/    user: headscale/' /etc/headscale/config.yaml &&
grep -q '^  type: postgres$' /etc/headscale/config.yaml && grep -q '^    host: /var/run/postgresql$' /etc/headscale/config.yaml &&
grep -q '^    pass: ""$' /etc/headscale/config.yaml && grep -q '^    pass_file: ""$' /etc/headscale/config.yaml`)
	c.must("headscale configtest")
	c.must("systemctl restart headscale && systemctl is-active headscale")
	if got := c.must("systemctl show -p StatusText --value headscale"); !strings.Contains(got, "serving 0 nodes") {
		t.Errorf("status text %q", got)
	}
	if warn := c.must("journalctl -u headscale -p warning -q --no-pager -o cat"); strings.TrimSpace(warn) != "" {
		t.Errorf("journalctl -p warning shows lines on a healthy start on PostgreSQL:\n%s", warn)
	}
	// The server made its schema in PostgreSQL.
	c.must(`runuser -u postgres -- psql -d headscale -Atc "select count(*) from information_schema.tables where table_schema = 'public' and table_name = 'nodes'" | grep -qx 1`)

	// It serves: the CLI writes through it, a real client registers, and
	// both land in PostgreSQL.
	c.must("headscale health")
	c.must("headscale users create alice")
	var k struct {
		Key string `json:"key"`
	}
	if err := json.Unmarshal([]byte(c.must("headscale preauthkeys create --user alice --reusable -o json")), &k); err != nil || k.Key == "" {
		t.Fatalf("preauthkeys create: %v %+v", err, k)
	}
	c.must("systemd-run --unit=ts1 -E TS_ASSUME_NETWORK_UP_FOR_TEST=1 -E TS_DISABLE_PORTMAPPER=1 -E TS_DEBUG_USE_DERP_HTTP=1 -E TS_PANIC_IF_HIT_MAIN_CONTROL=1 " +
		"/mnt/ts/tailscaled --tun=userspace-networking --no-logs-no-support --statedir=/var/lib/ts1 --socket=/run/ts1.sock --port=20001")
	c.waitFor("tailscaled socket", 30*time.Second, "test -S /run/ts1.sock")
	if out, err := c.sh("/mnt/ts/tailscale --socket=/run/ts1.sock up --login-server=http://127.0.0.1:8080 --auth-key=" + k.Key + " --hostname=c1 --timeout=60s"); err != nil {
		c.diagnose()
		t.Fatalf("tailscale up: %v\n%s", err, out) // the key stays out of the log
	}
	nodeOnline := `headscale nodes list -o json-line | grep -q '"given_name":"c1","online":true'`
	c.waitFor("c1 online", 30*time.Second, nodeOnline)
	c.must(`test "$(runuser -u postgres -- psql -d headscale -Atc "select u.name, n.given_name from nodes n join users u on u.id = n.user_id")" = 'alice|c1'`)

	// PostgreSQL restarts under the running server: the server is neither
	// stopped nor restarted by systemd (same process, same activation, no
	// restart counted), and writes work again once PostgreSQL is back.
	show := func() string {
		return strings.TrimSpace(c.must("systemctl show -p MainPID -p NRestarts -p ActiveEnterTimestamp -p ActiveState headscale"))
	}
	before := show()
	c.must("systemctl restart postgresql")
	c.waitFor("PostgreSQL back", 60*time.Second, "runuser -u postgres -- psql -Atc 'select 1' >/dev/null")
	c.waitFor("a write after PostgreSQL's restart", 60*time.Second,
		`headscale users create bob >/dev/null 2>&1; headscale users list -o json | grep -q '"bob"'`)
	c.waitFor("health after PostgreSQL's restart", 30*time.Second, "headscale health")
	c.waitFor("c1 online after PostgreSQL's restart", 30*time.Second, nodeOnline)
	if after := show(); after != before {
		t.Errorf("the server was restarted or stopped when PostgreSQL restarted:\nbefore %s\nafter  %s", before, after)
	}
	c.must(`runuser -u postgres -- psql -d headscale -Atc "select name from users where name = 'bob'" | grep -qx bob`)
	t.Logf("the server's warnings around PostgreSQL's restart:\n%s", c.must("journalctl -u headscale -p warning --no-pager -o cat"))

	// headscale backup on PostgreSQL: a consistent snapshot written as a
	// SQLite file, as the daily job takes it.
	c.must("runuser -u headscale -- /usr/libexec/headscale/headscale-backup")
	c.must(`f=$(ls /var/lib/headscale/backups/headscale-*.sqlite) && test "$(stat -c '%U %a' $f)" = 'headscale 600'`)
	// It holds PostgreSQL's rows: copied into a new SQLite file, verified.
	out := c.must(`runuser -u headscale -- headscale db migrate --from "$(ls /var/lib/headscale/backups/headscale-*.sqlite)" --to /var/lib/headscale/check.sqlite`)
	for _, want := range []string{`(?m)^users\s+2 rows`, `(?m)^nodes\s+1 rows`, `(?m)^migrated \d+ rows in \d+ tables from .* \(verified\)$`} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("the backup copied into SQLite: no line matching %s in\n%s", want, out)
		}
	}
	t.Logf("local PostgreSQL stage: %v", time.Since(start).Round(100*time.Millisecond))
}
