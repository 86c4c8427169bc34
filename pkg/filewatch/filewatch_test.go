package filewatch

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
)

// TestChanged: every way a file gets replaced is reported once, and a
// file left alone is not.
func TestChanged(t *testing.T) {
	old := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	write := func(t *testing.T, p, content string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// setTime gives p the start time, so that only what a case changes
	// tells the two apart (not the clock's granularity).
	setTime := func(t *testing.T, p string) {
		t.Helper()
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name   string
		absent bool // no file at the path before New
		link   bool // the path is a symbolic link to data1
		change func(t *testing.T, dir, p string)
		want   bool
	}{
		{name: "left alone", change: func(*testing.T, string, string) {}},
		{name: "read only", change: func(t *testing.T, _, p string) { os.ReadFile(p) }},
		{name: "written in place, other size", want: true, change: func(t *testing.T, _, p string) {
			write(t, p, `[{"name": "b"}]`)
			setTime(t, p)
		}},
		{name: "written in place, same size, new time", want: true, change: func(t *testing.T, _, p string) {
			write(t, p, `[{"name": "b"}]`[:10])
			os.Chtimes(p, old, old.Add(time.Millisecond))
		}},
		{name: "replaced by rename, same size and time", want: true, change: func(t *testing.T, dir, p string) {
			tmp := filepath.Join(dir, "records.json.tmp")
			write(t, tmp, "[{\"name\": \"b\"}]"[:10])
			setTime(t, tmp)
			if err := os.Rename(tmp, p); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "mode changed", want: true, change: func(t *testing.T, _, p string) { os.Chmod(p, 0o644) }},
		{name: "deleted", want: true, change: func(t *testing.T, _, p string) { os.Remove(p) }},
		{name: "created", absent: true, want: true, change: func(t *testing.T, _, p string) { write(t, p, "[]") }},
		{name: "still absent", absent: true, change: func(*testing.T, string, string) {}},
		{name: "symbolic link pointed elsewhere", link: true, want: true, change: func(t *testing.T, dir, p string) {
			// p is a link to data1; it now points to data2 (same size and
			// time), as a ConfigMap update or certbot renew does.
			other := filepath.Join(dir, "data2")
			write(t, other, "[{\"name\": \"b\"}]"[:10])
			setTime(t, other)
			tmp := filepath.Join(dir, "link.tmp")
			if err := os.Symlink(other, tmp); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, p); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "records.json")
			if !tc.absent {
				target := p
				if tc.link {
					target = filepath.Join(dir, "data1")
					if err := os.Symlink(target, p); err != nil {
						t.Fatal(err)
					}
				}
				write(t, target, "[{\"name\": \"a\"}]"[:10])
				setTime(t, target)
			}
			w := New(p)
			tc.change(t, dir, p)
			if got := w.Changed(); got != tc.want {
				t.Fatalf("Changed() = %v, want %v", got, tc.want)
			}
			if w.Changed() {
				t.Fatal("the same change reported twice")
			}
		})
	}
}

// TestRun: Run calls back for a change within a few intervals and stops
// when its context ends.
func TestRun(t *testing.T) {
	p := filepath.Join(t.TempDir(), "records.json")
	os.WriteFile(p, []byte("[]"), 0o600)
	w := New(p)
	ctx, cancel := context.WithCancel(context.Background())
	calls := make(chan struct{}, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx, 10*time.Millisecond, func() { calls <- struct{}{} })
	}()
	os.WriteFile(p, []byte(`[{"name": "a.example", "type": "A", "value": "100.64.0.1"}]`), 0o600)
	tstest.Within(t, 5*time.Second, "a call after the change", func() error { <-calls; return nil })
	cancel()
	tstest.Within(t, 5*time.Second, "Run returning once its context ended", func() error { <-done; return nil })
}
