package server

import (
	"fmt"

	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/store"
)

// storeOptions is the store's view of the configured database: the SQLite
// file and its settings, or the PostgreSQL connection and pool. The
// password (database.postgres.pass or pass_file) is read here, so a
// password file that cannot be read is refused before anything opens; the
// error names the key and never carries the password.
//
// On PostgreSQL the connection is database.postgres.url when it is set,
// else the fields; with a cluster_id the store keeps its tables in that
// tailnet's schema (config.Config.Schema, headscale_<cluster_id>; the
// store adds the tenant to its connections' application_name, e.g.
// headscale/a), so every command that opens the database
// from the configuration (serve, db migrate, backup, the CLI's
// --bypass-grpc-and-access-database-directly) works on the same tailnet.
func storeOptions(cfg *config.Config) (store.Options, error) {
	db := cfg.Database
	switch db.Type {
	case "sqlite":
		return store.Options{
			Path:              db.SQLite.Path,
			WAL:               db.SQLite.WriteAheadLog,
			WALAutocheckpoint: db.SQLite.WALAutocheckpoint,
		}, nil
	case "postgres":
		p := db.Postgres
		var o store.PostgresOptions
		if p.URL != "" {
			var err error
			if o, err = store.ParsePostgresURL(p.URL); err != nil {
				return store.Options{}, fmt.Errorf("database.postgres.url: %w", err)
			}
		} else {
			pw, err := p.Password()
			if err != nil {
				return store.Options{}, fmt.Errorf("database.postgres.pass_file: %w", err)
			}
			o = store.PostgresOptions{Host: p.Host, Port: p.Port, Name: p.Name, User: p.User, Pass: pw, SSLMode: p.SSL}
		}
		o.MaxOpenConns = p.MaxOpenConns
		o.MaxIdleConns = p.MaxIdleConns
		o.ConnMaxIdleTime = p.ConnMaxIdleTime()
		o.Schema = cfg.Schema()
		return store.Options{Postgres: &o}, nil
	}
	return store.Options{}, fmt.Errorf("database.type: %q is not a database this server knows; use sqlite or postgres", db.Type)
}
