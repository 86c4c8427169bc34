package unixsock

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestAnswers(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "live.sock")
	ln, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	stale := filepath.Join(dir, "stale.sock")
	sl, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	sl.(*net.UnixListener).SetUnlinkOnClose(false)
	sl.Close()
	if _, err := os.Stat(stale); err != nil {
		t.Fatalf("stale socket file: %v", err)
	}
	for _, tc := range []struct {
		path string
		want bool
	}{
		{live, true},
		{stale, false},
		{filepath.Join(dir, "missing.sock"), false},
		{"", false},
	} {
		if got := Answers(tc.path); got != tc.want {
			t.Errorf("Answers(%q) = %v, want %v", filepath.Base(tc.path), got, tc.want)
		}
	}
}
