// Package logging builds the server's slog logger. On a terminal or in a
// file it writes ordinary text or JSON lines; when stderr is connected to
// the systemd journal it drops the timestamp (journald records its own)
// and prefixes each line with its syslog priority (<3> error, <4> warning,
// <6> info, <7> debug), so `journalctl -p warning` shows exactly the
// problems.
package logging

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Options say how to log.
type Options struct {
	// Level is the minimum level: debug, info, warn or error.
	Level string
	// Format is "text" or "json".
	Format string
	// Journal switches to the journald form (priority prefix, no time).
	Journal bool
}

// New returns a logger writing to w.
func New(w io.Writer, opts Options) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(opts.Level))
	hopts := &slog.HandlerOptions{Level: level}
	if !opts.Journal {
		if opts.Format == "json" {
			return slog.New(slog.NewJSONHandler(w, hopts))
		}
		return slog.New(slog.NewTextHandler(w, hopts))
	}
	hopts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	sh := &shared{out: w}
	var inner slog.Handler
	if opts.Format == "json" {
		inner = slog.NewJSONHandler(&sh.buf, hopts)
	} else {
		inner = slog.NewTextHandler(&sh.buf, hopts)
	}
	return slog.New(&journalHandler{inner: inner, sh: sh})
}

// shared is the one buffer and output all derived handlers use, so a line
// and its prefix are written together.
type shared struct {
	mu  sync.Mutex
	buf bytes.Buffer
	out io.Writer
}

// journalHandler formats with an inner handler into the shared buffer and
// writes the line with its priority prefix in one write.
type journalHandler struct {
	inner slog.Handler
	sh    *shared
}

func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.sh.mu.Lock()
	defer h.sh.mu.Unlock()
	h.sh.buf.Reset()
	h.sh.buf.WriteString(Priority(r.Level))
	if err := h.inner.Handle(ctx, r); err != nil {
		return err
	}
	_, err := h.sh.out.Write(h.sh.buf.Bytes())
	return err
}

func (h *journalHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &journalHandler{inner: h.inner.WithAttrs(attrs), sh: h.sh}
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{inner: h.inner.WithGroup(name), sh: h.sh}
}

// Priority is the sd-daemon prefix for a level.
func Priority(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "<3>"
	case l >= slog.LevelWarn:
		return "<4>"
	case l >= slog.LevelInfo:
		return "<6>"
	default:
		return "<7>"
	}
}

// IsJournal reports whether f is the stream systemd connected to the
// journal: JOURNAL_STREAM (device:inode) names it. A process whose stderr
// was redirected elsewhere keeps the variable, so the comparison matters.
func IsJournal(f *os.File, journalStream string) bool {
	dev, ino, ok := strings.Cut(journalStream, ":")
	if !ok {
		return false
	}
	d, err1 := strconv.ParseUint(dev, 10, 64)
	i, err2 := strconv.ParseUint(ino, 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return uint64(st.Dev) == d && st.Ino == i
}
