package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// DialFunc opens a new connection of its own to the database, outside any
// pool: LISTEN belongs to the session, and waiting for a notification
// blocks the connection.
type DialFunc func(ctx context.Context) (*pgx.Conn, error)

// Listener signals C when a notification arrives on its channel, and once
// after each (re)connection, since notifications sent while it was not
// listening are lost. Signals are coalesced: C holds at most one, so a
// burst of notifications wakes the reader once.
type Listener struct {
	// C receives a value when the log may have grown.
	C <-chan struct{}

	c       chan struct{}
	dial    DialFunc
	channel string
	log     *slog.Logger
	// retry bounds the back-off between reconnection attempts.
	retryMin, retryMax time.Duration
	done               chan struct{}
}

// NewListener returns a listener of channel over connections from dial.
// Start it with Run.
func NewListener(dial DialFunc, channel string, log *slog.Logger) *Listener {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := make(chan struct{}, 1)
	return &Listener{C: c, c: c, dial: dial, channel: channel, log: log,
		retryMin: 100 * time.Millisecond, retryMax: 5 * time.Second, done: make(chan struct{})}
}

// signal wakes the reader unless a wake-up is already pending.
func (l *Listener) signal() {
	select {
	case l.c <- struct{}{}:
	default:
	}
}

// Run listens until ctx ends, reconnecting with back-off when the
// connection fails. It returns when ctx ends.
func (l *Listener) Run(ctx context.Context) {
	defer close(l.done)
	wait := l.retryMin
	failing := false
	for ctx.Err() == nil {
		err := l.session(ctx, func() {
			wait = l.retryMin
			if failing {
				failing = false
				l.log.Info("listening for other servers' changes again", "channel", l.channel)
			}
		})
		if ctx.Err() != nil {
			return
		}
		if !failing {
			failing = true
			l.log.Warn("listening for other servers' changes failed; reading the change log by polling until it works again", "channel", l.channel, "retry_in", wait, "err", err)
		} else {
			l.log.Debug("listening for other servers' changes failed again", "channel", l.channel, "retry_in", wait, "err", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, l.retryMax)
	}
}

// Done is closed when Run has returned.
func (l *Listener) Done() <-chan struct{} { return l.done }

// session is one connection's life: connect, LISTEN, signal once (the
// log may have grown while nobody listened), then signal each
// notification until the connection fails or ctx ends. up runs once the
// LISTEN took effect.
func (l *Listener) session(ctx context.Context, up func()) error {
	conn, err := l.dial(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{l.channel}.Sanitize()); err != nil {
		return fmt.Errorf("LISTEN %s: %w", l.channel, err)
	}
	up()
	l.signal()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return fmt.Errorf("waiting for a notification: %w", err)
		}
		l.signal()
	}
}
