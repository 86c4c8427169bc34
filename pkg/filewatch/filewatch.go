// Package filewatch tells when a file may have changed, by polling its
// metadata.
//
// Polling os.Stat (which follows symbolic links) every second or two is
// chosen over inotify: it notices every way a file gets replaced (written
// in place, an editor's write-then-rename, a file deleted and created
// again, a symbolic link pointed elsewhere as Kubernetes does with a
// ConfigMap or certbot with its live/ directory) with no watch to re-arm
// after a rename, works on file systems where inotify sees nothing (NFS,
// some container mounts), and needs no dependency. It costs one stat per
// interval. Changed is a hint: callers compare content themselves, since a
// write can land between a poll and the read that follows it (the next
// poll reports that write again).
package filewatch

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"time"
)

// Watcher polls one path. It is not safe for concurrent use; Run uses it
// from one goroutine.
type Watcher struct {
	path string
	last string // Sig at the previous poll
}

// New returns a Watcher for path. The file as it is now counts as seen:
// take the Watcher before reading the file, so that a change made between
// the two is reported.
func New(path string) *Watcher {
	return &Watcher{path: path, last: Sig(path)}
}

// Sig describes what is at each path now, links followed: which file
// (device and inode), its size, modification time and mode; or that it is
// missing, or why it cannot be stat'ed. Equal Sigs mean the files are, as
// far as their metadata tells, unchanged; comparing Sigs is how a change
// is told.
func Sig(paths ...string) string {
	var b strings.Builder
	for _, p := range paths {
		fi, err := os.Stat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			b.WriteString("missing|")
		case err != nil:
			fmt.Fprintf(&b, "error %v|", errors.Unwrap(err))
		default:
			fmt.Fprintf(&b, "%d %d %v", fi.Size(), fi.ModTime().UnixNano(), fi.Mode())
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				fmt.Fprintf(&b, " %d %d", st.Dev, st.Ino)
			}
			b.WriteString("|")
		}
	}
	return b.String()
}

// Changed polls the file and reports whether it differs from the previous
// poll (or New): another file at the path, another size, modification
// time or mode, or the file gone, back, or no longer readable.
func (w *Watcher) Changed() bool {
	now := Sig(w.path)
	changed := now != w.last
	w.last = now
	return changed
}

// Run polls every interval until ctx ends, calling changed after each poll
// that reports a change.
func (w *Watcher) Run(ctx context.Context, interval time.Duration, changed func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if w.Changed() {
				changed()
			}
		}
	}
}
