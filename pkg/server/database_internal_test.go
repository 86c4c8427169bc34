package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsctl/headscale/pkg/config"
)

// TestStoreOptionsTenant: the store gets the tailnet's schema from
// cluster_id, and the connection from database.postgres.url or the
// fields, whichever names set them; a URL the store cannot parse is
// refused by the pre-flight checks at its key, without its password.
func TestStoreOptionsTenant(t *testing.T) {
	const secret = "s3cret-Pw-0c7e"
	const url = "postgres://hs:" + secret + "@db.example.com:6543/tailnets?sslmode=verify-full"
	dir := t.TempDir()
	base := "server_url: http://127.0.0.1:8080\nstate_dir: " + dir + "\n"
	fields := base + "database:\n  type: postgres\n  postgres:\n    host: /run/postgresql\n    name: hs\n    max_open_conns: 3\n"
	tests := []struct {
		name string
		yaml string
		env  []string
		// host, name, pass, url, schema of the store's options.
		want     [5]string
		maxOpen  int
		preflErr string // a pre-flight problem on database.postgres.url
	}{
		{name: "seed form", yaml: base, env: []string{"CLUSTER_ID=a", "PG_DSN=" + url},
			want: [5]string{"db.example.com", "tailnets", secret, url, "headscale_a"}, maxOpen: 10},
		{name: "HEADSCALE_ names, case kept", yaml: base + "database:\n  postgres:\n    max_open_conns: 4\n",
			env:  []string{"HEADSCALE_CLUSTER_ID=Blue", "HEADSCALE_DATABASE_POSTGRES_URL=" + url},
			want: [5]string{"db.example.com", "tailnets", secret, url, "headscale_Blue"}, maxOpen: 4},
		{name: "fields and a cluster_id", yaml: fields + "cluster_id: t-1\n",
			want: [5]string{"/run/postgresql", "hs", "", "", "headscale_t-1"}, maxOpen: 3},
		{name: "fields without a cluster_id: the default schema", yaml: fields,
			want: [5]string{"/run/postgresql", "hs", "", "", ""}, maxOpen: 3},
		{name: "URL without a database", yaml: base, env: []string{"PG_DSN=postgres://hs:" + secret + "@db.example.com/"},
			preflErr: "names no database"},
		{name: "URL that does not parse", yaml: base, env: []string{"PG_DSN=postgres://hs:" + secret + "@db.example.com:port/hs"},
			preflErr: "invalid PostgreSQL URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, _, err := config.Load(config.LoadOptions{Path: path, Env: tt.env, SearchPaths: []string{}})
			if err != nil {
				t.Fatal(err)
			}
			ps := Preflight(cfg)
			if tt.preflErr != "" {
				if len(ps) != 1 || ps[0].Key != "database.postgres.url" || !strings.Contains(ps[0].Reason, tt.preflErr) {
					t.Fatalf("Preflight = %v, want one problem on database.postgres.url containing %q", ps, tt.preflErr)
				}
				_, err := storeOptions(cfg)
				for _, s := range []string{ps[0].String(), errString(err)} {
					if strings.Contains(s, secret) {
						t.Errorf("the message carries the password: %s", s)
					}
				}
				if err == nil || !strings.HasPrefix(err.Error(), "database.postgres.url: ") {
					t.Errorf("storeOptions: %v, want an error on database.postgres.url", err)
				}
				return
			}
			if len(ps) != 0 {
				t.Fatalf("Preflight: %v", ps)
			}
			opts, err := storeOptions(cfg)
			if err != nil {
				t.Fatal(err)
			}
			o := opts.Postgres
			if o == nil {
				t.Fatal("not PostgreSQL")
			}
			if got := [5]string{o.Host, o.Name, o.Pass, o.URL, o.Schema}; got != tt.want {
				t.Errorf("host, name, pass, url, schema = %q\nwant %q", got, tt.want)
			}
			if o.MaxOpenConns != tt.maxOpen {
				t.Errorf("MaxOpenConns = %d, want %d", o.MaxOpenConns, tt.maxOpen)
			}
			if strings.Contains(o.String(), secret) || strings.Contains(o.Display(), secret) {
				t.Errorf("the options' description carries the password: %s / %s", o, o.Display())
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
