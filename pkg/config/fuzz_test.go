package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/fuzzseed"
)

// Inputs larger than maxFuzzInput are skipped: a config file or an
// extra-records file is a few KiB, and the bound keeps every input cheap.
const maxFuzzInput = 64 << 10

// maxFuzzAlloc bounds what one input may allocate. A YAML alias chain
// ("billion laughs") must be refused, not expanded.
const maxFuzzAlloc = 64 << 20

// allocated returns the bytes allocated so far by the process.
func allocated() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

// yamlSeeds are the config files in this package's tests and the shipped
// example config.
func yamlSeeds(f *testing.F) []string {
	seeds, err := fuzzseed.Literals(func(s string) bool { return strings.Contains(s, ":") && strings.Contains(s, "\n") }, "*_test.go")
	if err != nil {
		f.Fatal(err)
	}
	shipped, err := os.ReadFile("../../etc/headscale/config.yaml")
	if err != nil {
		f.Fatal(err)
	}
	return append(seeds, string(shipped))
}

// FuzzLoad feeds config files to Load, the parse-and-validate path
// `headscale configtest` and `headscale serve` take. No input may panic or
// allocate without bound, and every error must say where: the file, and
// the line or the key.
func FuzzLoad(f *testing.F) {
	for _, s := range yamlSeeds(f) {
		f.Add([]byte(s))
	}
	// Aliases nested ten deep: 10^9 leaves if expanded.
	f.Add([]byte(`a: &a ["x","x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h,*h]
`))
	f.Add([]byte("server_url: http://127.0.0.1:8080\nprefixes:\n  v4: 100.64.0.0/99\n  v6: fd7a::/200\ndatabase:\n  sqlite:\n    write_ahead_log: 99999999999999999999999\n"))
	path := filepath.Join(f.TempDir(), "config.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxFuzzInput {
			t.Skip("input over the size bound")
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		before := allocated()
		// A hang fails the worker with the input, rather than stalling the
		// fuzzer silently.
		hung := time.AfterFunc(20*time.Second, func() { panic(fmt.Sprintf("Load still running after 20s on %q", data)) })
		cfg, warns, err := Load(LoadOptions{Path: path, SearchPaths: []string{}})
		hung.Stop()
		if got := allocated() - before; got > maxFuzzAlloc {
			t.Fatalf("Load of %d bytes allocated %d MiB", len(data), got>>20)
		}
		for _, w := range warns {
			if w.File != path || w.Reason == "" {
				t.Errorf("warning %q does not name the file or has no reason", w)
			}
		}
		if err == nil {
			if cfg == nil {
				t.Fatal("Load returned neither a config nor an error")
			}
			return
		}
		var probs Errors
		if !errors.As(err, &probs) {
			t.Fatalf("Load returned a bare error for a readable file: %v", err)
		}
		if len(probs) == 0 {
			t.Fatal("Load returned an empty error list")
		}
		for _, p := range probs {
			// A problem is at a line of the file, or about a key (one the
			// file sets, or one it leaves at its default: File "").
			located := (p.File == path && (p.Line > 0 || p.Key != "")) || (p.File == "" && p.Key != "")
			if !located || p.Reason == "" {
				t.Errorf("problem %q names neither a line of the file nor a key", p)
			}
			if p.File != "" && !strings.HasPrefix(p.String(), path+":") {
				t.Errorf("problem %q does not start with the file name", p)
			}
		}
	})
}

// FuzzLoadExtraRecords feeds dns.extra_records_path files to
// LoadExtraRecords: no panic, bounded allocation, errors that start with
// the file name, and every record returned is one checkRecord accepts.
func FuzzLoadExtraRecords(f *testing.F) {
	seeds, err := fuzzseed.Literals(func(s string) bool { return strings.Contains(s, "[") || strings.Contains(s, "{") }, "extrarecords_test.go")
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Add([]byte(`[{"name": "grafana.example.com", "type": "A", "value": "100.64.0.3"}, {"name": "x.example.com", "type": "AAAA", "value": "fd7a:115c:a1e0::3"}]`))
	f.Add([]byte("[{\"name\": \"a\",\n \"type\": \"MX\", \"value\": 1}]"))
	path := filepath.Join(f.TempDir(), "records.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxFuzzInput {
			t.Skip("input over the size bound")
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		before := allocated()
		recs, err := LoadExtraRecords(path)
		if got := allocated() - before; got > maxFuzzAlloc {
			t.Fatalf("LoadExtraRecords of %d bytes allocated %d MiB", len(data), got>>20)
		}
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, path+":") {
					t.Errorf("error line %q does not start with the file name", line)
				}
			}
			return
		}
		for _, r := range recs {
			if err := checkRecord(r); err != nil {
				t.Errorf("accepted record %+v fails its own check: %v", r, err)
			}
		}
	})
}
