package logging

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestJournalFormat(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		var buf bytes.Buffer
		log := New(&buf, Options{Level: "debug", Format: format, Journal: true}).With("component", "store")
		log.Debug("d")
		log.Info("i", "node", 7)
		log.Warn("w")
		log.WithGroup("g").Error("e", "err", "boom")
		lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
		if len(lines) != 4 {
			t.Fatalf("%s: %d lines: %q", format, len(lines), buf.String())
		}
		for i, want := range []string{"<7>", "<6>", "<4>", "<3>"} {
			if !strings.HasPrefix(lines[i], want) {
				t.Errorf("%s: line %d = %q, want prefix %s", format, i, lines[i], want)
			}
			if strings.Contains(lines[i], "time") {
				t.Errorf("%s: line %d carries a timestamp: %q", format, i, lines[i])
			}
			if !strings.Contains(lines[i], "component") {
				t.Errorf("%s: line %d lost the logger's attributes: %q", format, i, lines[i])
			}
		}
	}
}

func TestPlainFormatKeepsTime(t *testing.T) {
	var buf bytes.Buffer
	New(&buf, Options{Level: "info"}).Info("hello")
	if !strings.HasPrefix(buf.String(), "time=") {
		t.Fatalf("plain line = %q", buf.String())
	}
	buf.Reset()
	New(&buf, Options{Level: "warn"}).Info("hidden")
	if buf.Len() != 0 {
		t.Fatalf("level not applied: %q", buf.String())
	}
}

func TestIsJournal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	match := fmt.Sprintf("%d:%d", st.Dev, st.Ino)
	for _, tc := range []struct {
		env  string
		want bool
	}{
		{match, true},
		{"", false},
		{fmt.Sprintf("%d:%d", st.Dev, st.Ino+1), false},
		{"garbage", false},
		{"1:x", false},
	} {
		if got := IsJournal(f, tc.env); got != tc.want {
			t.Errorf("IsJournal(%q) = %v, want %v", tc.env, got, tc.want)
		}
	}
}
