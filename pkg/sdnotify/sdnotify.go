// Package sdnotify tells systemd how the server is doing: READY=1 once it
// can serve, a STATUS= line, RELOADING=1/READY=1 around a reload,
// STOPPING=1 on shutdown, and WATCHDOG=1 pings that are sent only while the
// server's own liveness checks pass, so a wedged process gets restarted.
// Without NOTIFY_SOCKET every call is a no-op.
package sdnotify

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends state changes to the service manager. The zero value is
// not usable; use New.
type Notifier struct {
	log      *slog.Logger
	enabled  bool
	watchdog time.Duration

	mu         sync.Mutex
	lastStatus string
}

// New reads NOTIFY_SOCKET and WATCHDOG_USEC (and WATCHDOG_PID) from the
// process environment, where systemd puts them and go-systemd reads them.
func New(log *slog.Logger) *Notifier {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Notifier{log: log, enabled: os.Getenv("NOTIFY_SOCKET") != ""}
	if n.enabled {
		if d, err := daemon.SdWatchdogEnabled(false); err == nil {
			n.watchdog = d
		} else {
			log.Warn("ignoring malformed watchdog settings from the service manager", "err", err)
		}
	}
	return n
}

// Enabled reports whether a service manager listens.
func (n *Notifier) Enabled() bool { return n.enabled }

// WatchdogInterval is the watchdog timeout the service manager asked for
// (WatchdogSec=), or 0 when there is none.
func (n *Notifier) WatchdogInterval() time.Duration { return n.watchdog }

// send writes one datagram; failures are logged, never fatal: the server
// works without a service manager.
func (n *Notifier) send(state string) {
	if !n.enabled {
		return
	}
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.Warn("cannot notify the service manager", "err", err)
	}
}

// Ready reports that start-up finished (or a reload ended) and the server
// answers, with a status line.
func (n *Notifier) Ready(status string) {
	n.mu.Lock()
	n.lastStatus = status
	n.mu.Unlock()
	n.send(daemon.SdNotifyReady + "\nSTATUS=" + oneLine(status))
}

// Reloading reports that a reload began. systemd needs MONOTONIC_USEC with
// it to match the reload with the READY=1 that ends it.
func (n *Notifier) Reloading() {
	n.send(daemon.SdNotifyReloading + "\n" + strings.TrimSuffix(daemon.SdNotifyMonotonicUsec(), "\n") + "\nSTATUS=reloading")
}

// Stopping reports that shutdown began.
func (n *Notifier) Stopping() {
	n.send(daemon.SdNotifyStopping + "\nSTATUS=stopping: draining map sessions")
}

// Status sets the status line shown by `systemctl status`, sending it only
// when it differs from the last one sent.
func (n *Notifier) Status(status string) {
	n.mu.Lock()
	if status == n.lastStatus {
		n.mu.Unlock()
		return
	}
	n.lastStatus = status
	n.mu.Unlock()
	n.send("STATUS=" + oneLine(status))
}

// Waiting reports that start-up is waiting for something (status says
// what) and asks systemd to extend its start timeout (TimeoutStartSec) so
// that it does not fire within extend from now: systemd then keeps the
// unit "activating" instead of killing it and restarting it in a loop.
func (n *Notifier) Waiting(status string, extend time.Duration) {
	n.mu.Lock()
	n.lastStatus = status
	n.mu.Unlock()
	n.send(fmt.Sprintf("STATUS=%s\nEXTEND_TIMEOUT_USEC=%d", oneLine(status), extend.Microseconds()))
}

// Check is one liveness probe. Fn must return within the context's
// deadline; one that does not counts as failed.
type Check struct {
	// Name identifies the probe in logs.
	Name string
	// Fn returns nil while the probed part is alive.
	Fn func(context.Context) error
}

// RunWatchdog pings the watchdog every interval while every check passes,
// until ctx ends. interval 0 means half the service manager's watchdog
// timeout; with no watchdog configured it returns at once. A failing or
// hanging check suppresses the ping and is logged, so systemd restarts a
// server whose database or change loop is stuck.
func (n *Notifier) RunWatchdog(ctx context.Context, interval time.Duration, checks []Check) {
	if !n.enabled || n.watchdog == 0 {
		return
	}
	if interval <= 0 {
		interval = n.watchdog / 2
	}
	timeout := interval
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := ""
	for {
		err := runChecks(ctx, timeout, checks)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			if failing != "" {
				n.log.Warn("liveness checks pass again; watchdog pings resumed")
				failing = ""
			}
			n.send(daemon.SdNotifyWatchdog)
		} else if failing != err.Error() {
			failing = err.Error()
			n.log.Error("liveness check failed; withholding watchdog pings so systemd restarts the service if it persists", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// runChecks runs every check in parallel under one deadline and names the
// first that failed or the ones still running at the deadline.
func runChecks(ctx context.Context, timeout time.Duration, checks []Check) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type result struct {
		i   int
		err error
	}
	results := make(chan result, len(checks))
	for i, c := range checks {
		go func() { results <- result{i, c.Fn(ctx)} }()
	}
	done := make([]bool, len(checks))
	for range checks {
		select {
		case r := <-results:
			if r.err != nil {
				return fmt.Errorf("%s: %w", checks[r.i].Name, r.err)
			}
			done[r.i] = true
		case <-ctx.Done():
			var hung []string
			for i, d := range done {
				if !d {
					hung = append(hung, checks[i].Name)
				}
			}
			return fmt.Errorf("%s: no answer within %v", strings.Join(hung, ", "), timeout)
		}
	}
	return nil
}

func oneLine(s string) string {
	return strings.ReplaceAll(s, "\n", " ")
}
