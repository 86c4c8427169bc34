package server

// PostgreSQL that is not there yet at start, or goes away while the server
// runs. SQLite is a file the server opens itself: none of this applies.

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/hsctl/headscale/pkg/store"
)

// Pauses between attempts to connect to PostgreSQL at start: the first,
// doubling up to the longest.
const (
	dbRetryFirst = time.Second
	dbRetryMax   = 30 * time.Second
	// dbExtendMargin is added to the next attempt's worst case when asking
	// systemd to extend its start timeout.
	dbExtendMargin = 15 * time.Second
	// dbWatchInterval is how often a running server on PostgreSQL checks
	// that the database answers (to log an outage and its end once, and
	// to show it in systemd's status line).
	dbWatchInterval = 5 * time.Second
)

// openStore runs takeOver (which converts a Headscale database in place)
// and opens the configured database; errors say which step failed. SQLite
// opens (or fails) at once, as it always did. PostgreSQL is waited for
// while it cannot be reached or refuses the connection (ClassifyConnect):
// attempts back off from dbRetryFirst to dbRetryMax until one succeeds or
// ctx ends, systemd hears what the server waits for (STATUS=) and has its
// start timeout extended, and the unix socket answers /health and the API
// with 503 and the reason, so `headscale health` says it. One line is
// logged when a series of failures starts or its cause changes (host,
// port, database and user, never the password); repeats are logged at
// debug. Any other failure (a database of another program, a failed
// migration) is returned at once.
func (s *Server) openStore(ctx context.Context, opts store.Options, takeOver func(ctx context.Context, ownSocket bool) error) (*store.Store, error) {
	var starting *http.Server
	open := func() (*store.Store, error) {
		// Once this server answers on the socket itself (while it
		// waits), nobody else can: the take-over's check for a running
		// Headscale is made before the first attempt only.
		if err := takeOver(ctx, starting != nil); err != nil {
			return nil, err
		}
		st, err := store.Open(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("opening database: %w", err)
		}
		return st, nil
	}
	if opts.Postgres == nil {
		return open()
	}
	p := *opts.Postgres
	port := p.Port
	if port == 0 {
		port = 5432
	}
	log := s.log.With("component", "database", "host", p.Host, "port", port, "database", p.Name, "user", p.User)
	var (
		series store.FailureClass
		start  = time.Now()
		delay  = dbRetryFirst
	)
	defer func() {
		if starting != nil {
			starting.Close()
		}
	}()
	for attempt := 1; ; attempt++ {
		st, err := open()
		if err == nil {
			if attempt > 1 {
				log.Info("connected to PostgreSQL; starting", "waited", time.Since(start).Round(time.Millisecond), "attempts", attempt)
			}
			return st, nil
		}
		class, why := store.ClassifyConnect(err)
		if class == "" || ctx.Err() != nil {
			return nil, err
		}
		line := fmt.Sprintf("waiting for %s: %s", p, why)
		s.waiting.Store(&line)
		if class != series {
			series = class
			level := slog.LevelWarn // PostgreSQL may simply not be up yet
			switch class {
			case store.FailAuth, store.FailNoDatabase, store.FailNoRole, store.FailTLS:
				level = slog.LevelError // a setting to fix
			}
			log.Log(ctx, level, line, "class", class, "retry_in", delay, "err", err)
		} else {
			log.Debug("still waiting for PostgreSQL", "class", class, "attempt", attempt, "retry_in", delay, "err", err)
		}
		if starting == nil {
			// Bound before systemd hears why: whoever reads the status
			// can ask `headscale health` at once.
			if starting, err = s.serveStarting(); err != nil {
				return nil, err
			}
		}
		s.notify.Waiting(fmt.Sprintf("%s (attempt %d, next in %v)", line, attempt, delay), delay+store.ConnectTimeout+dbExtendMargin)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("stopped while %s: %w", line, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, dbRetryMax)
	}
}

// serveStarting binds the unix socket while the server waits for its
// database and answers every request there with 503 and what it waits
// for: `headscale health` and the other commands print it. It stays bound
// across attempts and is closed when openStore returns, before Listen
// binds the real one.
func (s *Server) serveStarting() (*http.Server, error) {
	ln, err := listenUnix(s.cfg.UnixSocket, s.cfg.UnixSocketPermission)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(s.serveWaiting), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	return srv, nil
}

// serveWaiting is serveStarting's answer: /health's shape on /health, the
// API's problem shape elsewhere.
func (s *Server) serveWaiting(w http.ResponseWriter, r *http.Request) {
	reason := "headscale is starting"
	if line := s.waiting.Load(); line != nil {
		reason += ": " + *line
	}
	if r.URL.Path == "/health" {
		w.Header().Set("Content-Type", "application/health+json")
		w.WriteHeader(http.StatusServiceUnavailable)
		json.NewEncoder(w).Encode(map[string]string{"status": "fail", "reason": reason})
		return
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(http.StatusServiceUnavailable)
	json.NewEncoder(w).Encode(map[string]any{
		"type": "about:blank", "title": http.StatusText(http.StatusServiceUnavailable), "status": http.StatusServiceUnavailable,
		"detail": reason, "message": reason, "code": 14, // gRPC Unavailable
	})
}

// watchDatabase checks every dbWatchInterval, on PostgreSQL, that the
// database answers, until ctx ends. An outage is logged once when it
// starts (with what the server still does) and once when it ends, and
// shows in systemd's status line meanwhile. It changes nothing else: map
// sessions carry on, writes fail with 503 on their own, and the flush of
// node state keeps its batch and retries.
func (s *Server) watchDatabase(ctx context.Context) {
	if s.store.Engine() != "postgres" {
		return
	}
	t := time.NewTicker(dbWatchInterval)
	defer t.Stop()
	var since time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, store.ConnectTimeout)
		err := s.store.Ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil && since.IsZero():
			since = time.Now()
			reason := store.Unavailable(err).Error()
			s.dbDown.Store(&reason)
			s.log.Error("lost the connection to the database; map sessions continue, API writes and registrations fail with 503 until it returns",
				"component", "database", "reason", reason, "err", err)
		case err != nil:
			reason := store.Unavailable(err).Error()
			s.dbDown.Store(&reason)
		case !since.IsZero():
			s.log.Info("the database answers again", "component", "database", "outage", time.Since(since).Round(time.Second))
			since = time.Time{}
			s.dbDown.Store(nil)
		}
	}
}
