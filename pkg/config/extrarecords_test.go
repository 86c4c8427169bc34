package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadExtraRecords(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, body string
		want       int    // records loaded
		err        string // substring of the error
	}{
		{"empty", `[]`, 0, ""},
		{"empty file", "", 0, "the file is empty"},
		{"white space only", " \n\t", 0, "the file is empty"},
		{"both families", `[{"name":"a.x","type":"a","value":"100.64.0.1"},{"name":"b.x","type":"AAAA","value":"fd7a::1"}]`, 2, ""},
		{"syntax", "[\n  {\"name\": \"a.x\" \"type\": \"A\"}\n]", 0, ":2:18:"},
		{"not an array", `{"name":"a"}`, 0, ":1:1: expected a JSON array"},
		{"unknown field", `[{"name":"a.x","type":"A","value":"1.2.3.4","ttl":5}]`, 0, "unknown field"},
		{"wrong family", `[{"name":"a.x","type":"A","value":"fd7a::1"}]`, 0, "record 1 (a.x): value \"fd7a::1\" is not an IPv4 address"},
		{"type left out: by the address", `[{"name":"a.x","value":"100.64.0.1"},{"name":"b.x","value":"fd7a::1"}]`, 2, ""},
		{"type left out, not an address", `[{"name":"a.x","value":"b.x"}]`, 0, `record 1 (a.x): type "" must be A or AAAA`},
		{"no name", `[{"type":"A","value":"1.2.3.4"}]`, 0, "record 1 has no name"},
		{"bad type", `[{"name":"a.x","type":"CNAME","value":"b.x"}]`, 0, "must be A or AAAA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".json")
			os.WriteFile(p, []byte(tc.body), 0o600)
			got, err := LoadExtraRecords(p)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), p) {
					t.Fatalf("err = %v, want one naming %s and containing %q", err, p, tc.err)
				}
				if empty := strings.TrimSpace(tc.body) == ""; errors.Is(err, ErrEmptyRecordsFile) != empty {
					t.Fatalf("errors.Is(%v, ErrEmptyRecordsFile) = %v, want %v", err, !empty, empty)
				}
				return
			}
			if err != nil || len(got) != tc.want {
				t.Fatalf("got %v, %v", got, err)
			}
		})
	}
	// A type left out is filled in, in the file and in the config.
	p := filepath.Join(dir, "untyped.json")
	os.WriteFile(p, []byte(`[{"name":"a.x","value":"100.64.0.1"},{"name":"b.x","value":"fd7a::1"}]`), 0o600)
	got, err := LoadExtraRecords(p)
	if err != nil || len(got) != 2 || got[0].Type != "A" || got[1].Type != "AAAA" {
		t.Fatalf("records without a type: %+v, %v; want types A and AAAA", got, err)
	}
	cfg, _, _, err := loadYAML(t, "dns:\n  extra_records:\n    - {name: c.x, value: 100.64.0.2}\n")
	if err != nil || cfg.DNS.ExtraRecords[0].Type != "A" {
		t.Fatalf("config record without a type: %+v, %v; want type A", cfg, err)
	}
	if _, err := LoadExtraRecords(filepath.Join(dir, "missing.json")); err == nil {
		t.Fatal("missing file accepted")
	}
}
