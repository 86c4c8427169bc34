package config

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// clusterSecret is the password of every URL in these tests: no message,
// warning or printed form may carry it.
const clusterSecret = "hunter2-Secret"

const (
	pgURL      = "postgres://hs:" + clusterSecret + "@db.example.com:5432/headscale?sslmode=verify-full"
	otherPgURL = "postgres://hs:" + clusterSecret + "@db2.example.com/headscale"
	// baseYAML is a file that leaves the database to the environment.
	baseYAML = "server_url: http://127.0.0.1:8080\n"
)

// TestClusterConfig covers cluster_id, database.postgres.url, their bare
// environment names and what they refuse.
func TestClusterConfig(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		env  []string
		// On success:
		clusterID, dbType, url, schema string
		// On failure, every problem (file:line: key: reason) in order,
		// each given by substrings it must contain.
		errs [][]string
	}{
		{name: "nothing set: as before", yaml: baseYAML, dbType: "sqlite"},
		{
			name: "seed form: CLUSTER_ID and PG_DSN", yaml: baseYAML, env: []string{"CLUSTER_ID=A", "PG_DSN=" + pgURL},
			clusterID: "A", dbType: "postgres", url: pgURL, schema: "headscale_A",
		},
		{
			name: "HEADSCALE_ names", yaml: baseYAML,
			env:       []string{"HEADSCALE_CLUSTER_ID=t1", "HEADSCALE_DATABASE_POSTGRES_URL=" + pgURL},
			clusterID: "t1", dbType: "postgres", url: pgURL, schema: "headscale_t1",
		},
		{
			name: "keys in the file", yaml: baseYAML + "cluster_id: tenant-1_x\ndatabase:\n  postgres:\n    url: " + pgURL + "\n",
			clusterID: "tenant-1_x", dbType: "postgres", url: pgURL, schema: "headscale_tenant-1_x",
		},
		{
			name: "alias over the file", yaml: baseYAML + "cluster_id: file\ndatabase:\n  type: postgres\n  postgres:\n    url: " + otherPgURL + "\n",
			env: []string{"CLUSTER_ID=env", "PG_DSN=" + pgURL}, clusterID: "env", dbType: "postgres", url: pgURL, schema: "headscale_env",
		},
		{
			name: "HEADSCALE_ over the file, alias equal", yaml: baseYAML + "cluster_id: file\n",
			env:       []string{"CLUSTER_ID=same", "HEADSCALE_CLUSTER_ID=same", "PG_DSN=" + pgURL},
			clusterID: "same", dbType: "postgres", url: pgURL, schema: "headscale_same",
		},
		{
			name: "empty alias ignored", yaml: baseYAML + "cluster_id: file\ndatabase:\n  postgres:\n    url: " + pgURL + "\n",
			env: []string{"CLUSTER_ID=", "PG_DSN="}, clusterID: "file", dbType: "postgres", url: pgURL, schema: "headscale_file",
		},
		{
			name: "URL with the shipped config's empty fields and type postgres",
			yaml: baseYAML + "database:\n  type: postgres\n  postgres:\n    host: \"\"\n    port: 5432\n    name: \"\"\n    user: \"\"\n    pass: \"\"\n    pass_file: \"\"\n    ssl: false\n    max_open_conns: 4\n",
			env:  []string{"PG_DSN=" + pgURL}, dbType: "postgres", url: pgURL,
		},
		{
			name: "file says sqlite, the environment postgres", yaml: baseYAML + "database:\n  type: sqlite\n",
			env:       []string{"HEADSCALE_DATABASE_TYPE=postgres", "CLUSTER_ID=a", "PG_DSN=" + pgURL},
			clusterID: "a", dbType: "postgres", url: pgURL, schema: "headscale_a",
		},
		{
			name: "longest id", yaml: baseYAML, env: []string{"CLUSTER_ID=" + strings.Repeat("x", 40), "PG_DSN=" + pgURL},
			clusterID: strings.Repeat("x", 40), dbType: "postgres", url: pgURL, schema: "headscale_" + strings.Repeat("x", 40),
		},

		// Conflicts between the two names of one key.
		{
			name: "CLUSTER_ID and HEADSCALE_CLUSTER_ID differ", yaml: baseYAML,
			env:  []string{"CLUSTER_ID=a", "HEADSCALE_CLUSTER_ID=b", "PG_DSN=" + pgURL},
			errs: [][]string{{`env CLUSTER_ID: cluster_id: CLUSTER_ID="a" and HEADSCALE_CLUSTER_ID="b" are both set, to different values`}},
		},
		{
			name: "PG_DSN and HEADSCALE_DATABASE_POSTGRES_URL differ", yaml: baseYAML,
			env:  []string{"PG_DSN=" + pgURL, "HEADSCALE_DATABASE_POSTGRES_URL=" + otherPgURL},
			errs: [][]string{{"env PG_DSN: database.postgres.url: PG_DSN and HEADSCALE_DATABASE_POSTGRES_URL are both set, to different values"}},
		},

		// SQLite.
		{
			name: "CLUSTER_ID on the default SQLite", yaml: baseYAML, env: []string{"CLUSTER_ID=a"},
			errs: [][]string{{"env CLUSTER_ID: cluster_id: cluster_id needs database.type postgres", "database.type is sqlite (by default)"}},
		},
		{
			name: "cluster_id with type sqlite in the file", yaml: baseYAML + "cluster_id: a\ndatabase:\n  type: sqlite\n",
			errs: [][]string{{"config.yaml:2: cluster_id: cluster_id needs database.type postgres", "database.type is sqlite (line 4)"}},
		},
		{
			name: "cluster_id with HEADSCALE_DATABASE_TYPE=sqlite", yaml: baseYAML + "cluster_id: a\n", env: []string{"HEADSCALE_DATABASE_TYPE=sqlite3"},
			errs: [][]string{{"config.yaml:2: cluster_id: cluster_id needs database.type postgres", "(env HEADSCALE_DATABASE_TYPE)"}},
		},
		{
			name: "PG_DSN with type sqlite in the file", yaml: baseYAML + "database:\n  type: sqlite\n", env: []string{"PG_DSN=" + pgURL},
			errs: [][]string{{"env PG_DSN: database.postgres.url: is a PostgreSQL database, but database.type is sqlite (line 3)"}},
		},
		{
			name: "URL in the file with HEADSCALE_DATABASE_TYPE=sqlite", yaml: baseYAML + "database:\n  postgres:\n    url: " + pgURL + "\n",
			env:  []string{"HEADSCALE_DATABASE_TYPE=sqlite"},
			errs: [][]string{{"config.yaml:4: database.postgres.url: is a PostgreSQL database, but database.type is sqlite (env HEADSCALE_DATABASE_TYPE)"}},
		},

		// Bad values.
		{
			name: "bad id: punctuation", yaml: baseYAML, env: []string{"CLUSTER_ID=a.b", "PG_DSN=" + pgURL},
			errs: [][]string{{`env CLUSTER_ID: cluster_id: "a.b" must match ` + ClusterIDPattern, "headscale_<cluster_id>"}},
		},
		{
			name: "bad id: leading hyphen", yaml: baseYAML + "cluster_id: -a\n", env: []string{"PG_DSN=" + pgURL},
			errs: [][]string{{`config.yaml:2: cluster_id: "-a" must match`}},
		},
		{
			name: "bad id: too long", yaml: baseYAML, env: []string{"CLUSTER_ID=" + strings.Repeat("x", 41), "PG_DSN=" + pgURL},
			errs: [][]string{{"must match " + ClusterIDPattern}},
		},
		{
			name: "bad id: space", yaml: baseYAML, env: []string{"HEADSCALE_CLUSTER_ID=a b", "PG_DSN=" + pgURL},
			errs: [][]string{{`env HEADSCALE_CLUSTER_ID: cluster_id: "a b" must match`}},
		},
		{
			name: "bad id: not ASCII", yaml: baseYAML, env: []string{"CLUSTER_ID=héllo", "PG_DSN=" + pgURL},
			errs: [][]string{{`"héllo" must match`}},
		},
		{
			name: "bad id: a kept Headscale copy's name", yaml: baseYAML, env: []string{"CLUSTER_ID=v0_27_1", "PG_DSN=" + pgURL},
			errs: [][]string{{`env CLUSTER_ID: cluster_id: "v0_27_1" looks like a Headscale version: headscale_v0_27_1 may be the copy`}},
		},
		{
			name: "id with digits that is no version", yaml: baseYAML, env: []string{"CLUSTER_ID=v2", "PG_DSN=" + pgURL},
			clusterID: "v2", dbType: "postgres", url: pgURL, schema: "headscale_v2",
		},
		{
			name: "URL that is not postgres://", yaml: baseYAML, env: []string{"PG_DSN=mysql://hs:" + clusterSecret + "@db/hs"},
			errs: [][]string{{"env PG_DSN: database.postgres.url: must be a postgres:// or postgresql:// URL"}},
		},
		{
			name: "URL and connection fields",
			yaml: baseYAML + "database:\n  type: postgres\n  postgres:\n    host: db\n    user: hs\n    pass: " + clusterSecret + "\n    ssl: require\n",
			env:  []string{"PG_DSN=" + pgURL},
			errs: [][]string{{"env PG_DSN: database.postgres.url: the URL is the whole connection, but database.postgres.host (line 5), " +
				"database.postgres.user (line 6), database.postgres.pass (line 7), database.postgres.ssl (line 8) are set too"}},
		},
		{
			name: "URL and one field from the environment", yaml: baseYAML,
			env:  []string{"PG_DSN=" + pgURL, "HEADSCALE_DATABASE_POSTGRES_PORT=6543"},
			errs: [][]string{{"database.postgres.port (env HEADSCALE_DATABASE_POSTGRES_PORT) is set too"}},
		},
		{
			name: "cluster.enabled", yaml: baseYAML + "cluster:\n  enabled: true\nderp:\n  urls: [https://derp.example.com/map.json]\n  server:\n    enabled: false\n",
			env:       []string{"CLUSTER_ID=a", "PG_DSN=" + pgURL},
			clusterID: "a", dbType: "postgres", url: pgURL, schema: "headscale_a",
		},
		{
			name: "cluster.enabled with the embedded DERP region added", yaml: baseYAML + "cluster:\n  enabled: true\n",
			env: []string{"CLUSTER_ID=a", "PG_DSN=" + pgURL},
			errs: [][]string{{"derp.server.automatically_add_embedded_derp_region: with cluster.enabled every server would add its own DERP relay",
				"list each server's relay as a region of its own in a derp.paths file"}},
		},
		{
			name: "cluster.enabled on SQLite", yaml: baseYAML + "derp:\n  urls: [https://derp.example.com/map.json]\n  server:\n    enabled: false\n", env: []string{"HEADSCALE_CLUSTER_ENABLED=true"},
			errs: [][]string{{"env HEADSCALE_CLUSTER_ENABLED: cluster.enabled: several servers serving one tailnet need database.type postgres"}},
		},
		{
			name: "cluster timings",
			yaml: baseYAML + "cluster:\n  enabled: true\n  lease_ttl: 500ms\n  debounce: 2s\n  heartbeat_interval: 1m\n  server_name: a b\nderp:\n  urls: [https://derp.example.com/map.json]\n  server:\n    enabled: false\n",
			env:  []string{"PG_DSN=" + pgURL},
			errs: [][]string{
				{"cluster.lease_ttl: 500ms is too short: at least 1s"},
				{"cluster.debounce: 2s: between 0 and 1s"},
				{"cluster.heartbeat_interval: 1m0s: between 0 (a third of cluster.lease_ttl) and half of cluster.lease_ttl"},
				{`cluster.server_name: "a b": use letters`},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, warns, _, err := loadYAML(t, tt.yaml, tt.env...)
			for _, w := range warns {
				if strings.Contains(w.String(), clusterSecret) {
					t.Errorf("a warning carries the password: %s", w)
				}
			}
			if len(tt.errs) > 0 {
				errs, ok := err.(Errors)
				if !ok {
					t.Fatalf("Load = %v, want configuration errors", err)
				}
				if strings.Contains(err.Error(), clusterSecret) {
					t.Errorf("the errors carry the password:\n%v", err)
				}
				if len(errs) != len(tt.errs) {
					t.Fatalf("got %d problems, want %d:\n%v", len(errs), len(tt.errs), err)
				}
				for i, want := range tt.errs {
					for _, w := range want {
						if !strings.Contains(errs[i].String(), w) {
							t.Errorf("problem %d = %s\nwant it to contain %s", i, errs[i], w)
						}
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if cfg.ClusterID != tt.clusterID || cfg.Database.Type != tt.dbType || cfg.Database.Postgres.URL != tt.url || cfg.Schema() != tt.schema {
				t.Errorf("cluster_id %q, type %q, url %q, schema %q; want %q, %q, %q, %q", cfg.ClusterID, cfg.Database.Type,
					cfg.Database.Postgres.URL, cfg.Schema(), tt.clusterID, tt.dbType, tt.url, tt.schema)
			}
		})
	}
}

// TestPostgresURLNotPrinted checks that every printed form of a
// configuration with a URL leaves its password out.
func TestPostgresURLNotPrinted(t *testing.T) {
	for _, u := range []string{
		pgURL,
		"postgresql://hs@db/headscale?password=" + clusterSecret + "&sslmode=require",
		"postgres://hs:" + clusterSecret + "@h1:5432,h2:5433/headscale",
		"postgres://hs:" + clusterSecret + "@db/%zz",
	} {
		cfg, _ := mustLoadYAML(t, baseYAML, "PG_DSN="+u)
		pg := cfg.Database.Postgres
		js, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		var logged strings.Builder
		slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "postgres", pg)
		for name, s := range map[string]string{
			"String": pg.String(), "%v": fmt.Sprintf("%v", pg), "%+v": fmt.Sprintf("%+v", cfg.Database), "%#v": fmt.Sprintf("%#v", pg),
			"JSON": string(js), "slog": logged.String(),
		} {
			if strings.Contains(s, clusterSecret) {
				t.Errorf("%s of %s carries the password: %s", name, redactURL(u), s)
			}
		}
		if got, _ := pg.ConnString(); got != u {
			t.Errorf("ConnString() is not the URL")
		}
	}
	if got, want := redactURL(pgURL), "postgres://hs@db.example.com:5432/headscale?sslmode=verify-full"; got != want {
		t.Errorf("redactURL = %s, want %s", got, want)
	}
}
