package hsimport

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/store"
)

// schema0271 is the SQLite DDL of a Headscale 0.27.1 database (the same
// tables and columns as the fixture's db.dump.sql).
const schema0271 = `
CREATE TABLE migrations (id text, PRIMARY KEY (id));
CREATE TABLE users(id integer PRIMARY KEY AUTOINCREMENT, name text, display_name text, email text,
  provider_identifier text, provider text, profile_pic_url text, created_at datetime, updated_at datetime, deleted_at datetime);
CREATE TABLE pre_auth_keys(id integer PRIMARY KEY AUTOINCREMENT, key text, user_id integer, reusable numeric,
  ephemeral numeric DEFAULT false, used numeric DEFAULT false, tags text, expiration datetime, created_at datetime);
CREATE TABLE api_keys(id integer PRIMARY KEY AUTOINCREMENT, prefix text, hash blob, expiration datetime, last_seen datetime, created_at datetime);
CREATE TABLE nodes(id integer PRIMARY KEY AUTOINCREMENT, machine_key text, node_key text, disco_key text, endpoints text,
  host_info text, ipv4 text, ipv6 text, hostname text, given_name varchar(63), user_id integer, register_method text,
  forced_tags text, auth_key_id integer, last_seen datetime, expiry datetime, approved_routes text, created_at datetime,
  updated_at datetime, deleted_at datetime);
CREATE TABLE policies(id integer PRIMARY KEY AUTOINCREMENT, data text, created_at datetime, updated_at datetime, deleted_at datetime);
CREATE UNIQUE INDEX idx_api_keys_prefix ON api_keys(prefix);
`

var migrations0271 = []string{"202312101416", "202312101430", "202402151347", "2024041121742", "202406021630",
	"202409271400", "202407191627", "202408181235", "202501221827", "202501311657", "202502070949", "202502131714",
	"202502171819", "202505091439", "202505141324", "202507021200", "202510311551", "202511101554-drop-old-idx"}

// hostInfo is host info the size a real client sends (~1.3 KB).
const hostInfo = `{"IPNVersion":"1.98.10","BackendLogID":"%s","OS":"linux","OSVersion":"6.18.44","Container":true,` +
	`"Distro":"debian","DistroVersion":"12.11","DistroCodeName":"bookworm","Desktop":false,"Hostname":"%s",` +
	`"NoLogsNoSupport":true,"Machine":"x86_64","GoArch":"amd64","GoArchVar":"v1","GoVersion":"go1.26.8",` +
	`"Services":[{"Proto":"peerapi4","Port":%d},{"Proto":"peerapi6","Port":%d},{"Proto":"peerapi-dns-proxy","Port":1}],` +
	`"NetInfo":{"MappingVariesByDestIP":false,"WorkingIPv6":false,"OSHasIPv6":true,"WorkingUDP":true,` +
	`"WorkingICMPv4":false,"UPnP":false,"PMP":false,"PCP":false,"PreferredDERP":999,"LinkType":"wired",` +
	`"DERPLatency":{"999-v4":0.000512}},"Userspace":true,"UserspaceRouter":true,"AppConnector":false,` +
	`"StateEncrypted":false%s%s}`

// makeHeadscale10k writes a Headscale 0.27.1 database with 100 users, 300
// pre-auth keys, 10,000 nodes (5 % with approved routes, 10 % with forced
// tags, 3 % requesting a tag), one API key and a policy with tagOwners.
func makeHeadscale10k(tb testing.TB, path string) {
	tb.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=synchronous(0)&_pragma=journal_mode(WAL)")
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	tx, err := db.Begin()
	if err != nil {
		tb.Fatal(err)
	}
	must := func(_ sql.Result, err error) {
		if err != nil {
			tb.Fatal(err)
		}
	}
	must(tx.Exec(schema0271))
	for _, m := range migrations0271 {
		must(tx.Exec(`INSERT INTO migrations VALUES (?)`, m))
	}
	now := time.Date(2026, 12, 6, 18, 0, 0, 123456789, time.UTC)
	ts := func(t time.Time) string { return t.Format("2006-01-02 15:04:05.999999999-07:00") }
	for u := 1; u <= 100; u++ {
		must(tx.Exec(`INSERT INTO users VALUES (?,?,?,?,NULL,'','',?,?,NULL)`, u, fmt.Sprintf("user%d", u), fmt.Sprintf("User %d", u), fmt.Sprintf("user%d@example.test", u), ts(now), ts(now)))
	}
	hex24 := func() string {
		b := make([]byte, 24)
		rand.Read(b)
		return hex.EncodeToString(b)
	}
	for k := 1; k <= 300; k++ {
		tags := "[]"
		if k%10 == 0 {
			tags = `["tag:server"]`
		}
		must(tx.Exec(`INSERT INTO pre_auth_keys VALUES (?,?,?,?,?,0,?,?,?)`, k, hex24(), (k-1)%100+1, k%2, k%7 == 0, tags, ts(now.Add(90*24*time.Hour)), ts(now)))
	}
	must(tx.Exec(`INSERT INTO api_keys VALUES (1,'aBcDeF1',?,?,NULL,?)`, []byte("$2a$10$abcdefghijklmnopqrstuuJ3yq2l8v9J7aF0bJ7x1mTnH3o4s5p6q"), ts(now.Add(90*24*time.Hour)), ts(now)))
	must(tx.Exec(`INSERT INTO policies VALUES (1, ?, ?, ?, NULL)`, `{"tagOwners": {"tag:server": ["user1@"], "tag:web": ["user2@", "user3@"]},
 "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`, ts(now), ts(now)))
	key := func(kind string) string {
		b := make([]byte, 32)
		rand.Read(b)
		return kind + ":" + hex.EncodeToString(b)
	}
	stmt, err := tx.Prepare(`INSERT INTO nodes VALUES (?,?,?,?,?,?,?,?,?,?,?,'authkey',?,?,?,'0001-01-01 00:00:00+00:00',?,?,?,NULL)`)
	if err != nil {
		tb.Fatal(err)
	}
	for n := 1; n <= 10000; n++ {
		name := fmt.Sprintf("node-%05d", n)
		forced, routes, extra := "[]", "NULL", ""
		if n%10 == 0 {
			forced = `["tag:server"]`
		}
		if n%20 == 0 {
			routes = fmt.Sprintf(`["10.%d.%d.0/24"]`, n/256%256, n%256)
			extra = fmt.Sprintf(`,"RoutableIPs":["10.%d.%d.0/24"]`, n/256%256, n%256)
		}
		req := ""
		if n%33 == 0 {
			req = `,"RequestTags":["tag:web"]`
		}
		hi := fmt.Sprintf(hostInfo, hex24()+hex24(), name, 30000+n%30000, 30001+n%30000, extra, req)
		var routeArg any
		if routes != "NULL" {
			routeArg = routes
		}
		ip4 := fmt.Sprintf("100.64.%d.%d", n/256, n%256)
		ip6 := fmt.Sprintf("fd7a:115c:a1e0::%x", n)
		_, err := stmt.Exec(n, key("mkey"), key("nodekey"), key("discokey"), fmt.Sprintf(`["192.0.2.%d:41641"]`, n%250+1), hi,
			ip4, ip6, name, name, (n-1)%100+1, forced, (n-1)%300+1, ts(now.Add(-time.Duration(n)*time.Second)), routeArg, ts(now), ts(now))
		if err != nil {
			tb.Fatal(err)
		}
	}
	stmt.Close()
	if err := tx.Commit(); err != nil {
		tb.Fatal(err)
	}
	if _, err := db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkTakeOver10k takes over a synthetic Headscale 0.27.1 database of
// 10,000 nodes: read and check, verified copy, conversion, the new file
// written in one transaction and verified, swap. The "open-s" metric is
// the time the store then takes to open it and list every node.
// `make import-bench` runs it.
func BenchmarkTakeOver10k(b *testing.B) {
	if testing.Short() {
		b.Skip("10,000-node import: not under -short")
	}
	pristine := filepath.Join(b.TempDir(), "pristine.sqlite")
	makeHeadscale10k(b, pristine)
	orig, err := os.ReadFile(pristine)
	if err != nil {
		b.Fatal(err)
	}
	var openTotal time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := b.TempDir()
		db := filepath.Join(dir, "db.sqlite")
		if err := os.WriteFile(db, orig, 0o600); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		rep, err := TakeOver(b.Context(), TakeOverOptions{Path: db, Convert: fixtureOpts})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if c := rep.Count(KindNodes); c.Converted != 10000 {
			b.Fatalf("nodes %+v\n%s", c, strings.Join(strings.SplitN(rep.Text(), "\n", 20)[:19], "\n"))
		}
		start := time.Now()
		s, err := store.Open(b.Context(), store.Options{Path: db, WAL: true})
		if err != nil {
			b.Fatal(err)
		}
		nodes, err := s.ListNodes(b.Context())
		if err != nil || len(nodes) != 10000 {
			b.Fatalf("%d nodes, %v", len(nodes), err)
		}
		s.Close()
		openTotal += time.Since(start)
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Seconds())/float64(b.N), "s/takeover")
	b.ReportMetric(openTotal.Seconds()/float64(b.N), "open-s")
}
