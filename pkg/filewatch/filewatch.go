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
	"io/fs"
	"os"
	"time"
)

// Watcher polls one path. It is not safe for concurrent use; Run uses it
// from one goroutine.
type Watcher struct {
	path string
	last stamp
}

// stamp is what one poll saw: the file's metadata, or why there was none.
type stamp struct {
	info    fs.FileInfo // nil when stat failed
	missing bool        // the path does not exist
	err     string      // another stat error
}

// New returns a Watcher for path. The file as it is now counts as seen:
// take the Watcher before reading the file, so that a change made between
// the two is reported.
func New(path string) *Watcher {
	w := &Watcher{path: path}
	w.last = w.stat()
	return w
}

func (w *Watcher) stat() stamp {
	fi, err := os.Stat(w.path)
	switch {
	case err == nil:
		return stamp{info: fi}
	case errors.Is(err, fs.ErrNotExist):
		return stamp{missing: true}
	default:
		return stamp{err: err.Error()}
	}
}

// Changed polls the file and reports whether it differs from the previous
// poll (or New): another file at the path, another size, modification
// time or mode, or the file gone, back, or no longer readable.
func (w *Watcher) Changed() bool {
	now := w.stat()
	prev := w.last
	w.last = now
	switch {
	case now.info == nil || prev.info == nil:
		return now != prev
	default:
		a, b := prev.info, now.info
		return !os.SameFile(a, b) || a.Size() != b.Size() || !a.ModTime().Equal(b.ModTime()) || a.Mode() != b.Mode()
	}
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
