package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/ipalloc"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
	"github.com/hsctl/headscale/pkg/unixsock"
)

// Offline is the state of a server that is not running, opened straight
// from its database for the CLI's --bypass-grpc-and-access-database-directly
// (Headscale's flag for fixing a policy without a running server). Close
// it when done.
type Offline struct {
	// State holds the users and nodes, loaded as serve loads them.
	State *state.State
	st    *store.Store
	mode  string
}

// Mode is the configured policy.mode ("file" or "database").
func (o *Offline) Mode() string { return o.mode }

// OpenOffline opens the configured database and loads its state. It refuses
// while a server answers on the configured unix socket: two writers on one
// database would each hold a different view of it.
func OpenOffline(ctx context.Context, cfg *config.Config) (*Offline, error) {
	if unixsock.Answers(cfg.UnixSocket) {
		return nil, fmt.Errorf("headscale is running (it answers on %s): leave out --bypass-grpc-and-access-database-directly, or stop it first", cfg.UnixSocket)
	}
	opts, err := storeOptions(cfg)
	if err != nil {
		return nil, err
	}
	opts.CheckpointInterval = -1
	st, err := store.Open(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("opening database: %w", err)
	}
	s, err := state.New(ctx, state.Options{
		Store:            st,
		Alloc:            ipalloc.New(cfg.Prefixes.V4, cfg.Prefixes.V6, ipalloc.Strategy(cfg.Prefixes.Allocation)),
		NodeExpiry:       cfg.Node.Expiry,
		EphemeralTimeout: cfg.Node.Ephemeral.InactivityTimeout,
		RequireApproval:  cfg.Node.RequireApproval,
		ServerURL:        noiseURL(cfg.ServerURL),
	})
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("loading state: %w", err)
	}
	return &Offline{State: s, st: st, mode: cfg.Policy.Mode}, nil
}

// Policy returns the policy stored in the database ("" for none).
func (o *Offline) Policy(ctx context.Context) (string, error) {
	text, _, err := o.st.GetPolicy(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return "", nil
	}
	return text, err
}

// Close closes the database.
func (o *Offline) Close() error { return o.st.Close() }

// StoreOptions are the store options for the configured database (the
// SQLite file or the PostgreSQL connection, password read from pass or
// pass_file), for admin commands that open it themselves: backup, restore
// and db migrate.
func StoreOptions(cfg *config.Config) (store.Options, error) { return storeOptions(cfg) }
