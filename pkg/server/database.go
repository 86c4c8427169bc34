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
		pw, err := db.Postgres.Password()
		if err != nil {
			return store.Options{}, fmt.Errorf("database.postgres.pass_file: %w", err)
		}
		p := db.Postgres
		return store.Options{Postgres: &store.PostgresOptions{
			Host:            p.Host,
			Port:            p.Port,
			Name:            p.Name,
			User:            p.User,
			Pass:            pw,
			SSLMode:         p.SSL,
			MaxOpenConns:    p.MaxOpenConns,
			MaxIdleConns:    p.MaxIdleConns,
			ConnMaxIdleTime: p.ConnMaxIdleTime(),
		}}, nil
	}
	return store.Options{}, fmt.Errorf("database.type: %q is not a database this server knows; use sqlite or postgres", db.Type)
}
