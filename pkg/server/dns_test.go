package server_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
	"tailscale.com/tailcfg"
)

// TestExtraRecordsFileWatch: the extra records file is picked up when it
// changes, without SIGHUP, and reaches a connected node; a broken, empty
// or deleted file is logged (file and reason) and the records in force
// stay; a file put back by rename is read again; "[]" removes the file's
// records (the config's stay). The server starts with the file empty.
func TestExtraRecordsFileWatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "records.json")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ts := startServerWith(t, dir, "dns:\n  extra_records:\n    - {name: cfg.example.internal, type: A, value: 100.64.0.1}\n  extra_records_path: "+path+"\n", nil)

	c := newClient(t, ts.URL)
	nk, _ := register(t, c, ts.key(t, false, time.Now().Add(time.Hour)), "alpha")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sess, full := openMap(t, ctx, c, nk, "alpha")
	pushed := make(chan []tailcfg.DNSRecord, 16)
	go func() {
		for {
			r, err := sess.Next()
			if err != nil {
				return
			}
			if r.DNSConfig != nil {
				pushed <- r.DNSConfig.ExtraRecords
			}
		}
	}()

	rec := func(name, typ, value string) tailcfg.DNSRecord {
		return tailcfg.DNSRecord{Name: name, Type: typ, Value: value}
	}
	cfgRec := rec("cfg.example.internal", "A", "100.64.0.1")
	if got := full.DNSConfig.ExtraRecords; !reflect.DeepEqual(got, []tailcfg.DNSRecord{cfgRec}) {
		t.Fatalf("records at start (file empty) = %+v", got)
	}
	write := func(content string) func(t *testing.T) {
		return func(t *testing.T) {
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	twoRecords := `[{"name": "a.example.internal", "type": "A", "value": "100.64.0.10"},
 {"name": "b.example.internal", "type": "AAAA", "value": "fd7a:115c:a1e0::7"}]`
	inForce := []tailcfg.DNSRecord{cfgRec, rec("a.example.internal", "A", "100.64.0.10"), rec("b.example.internal", "AAAA", "fd7a:115c:a1e0::7")}
	for _, step := range []struct {
		name   string
		change func(t *testing.T)
		want   []tailcfg.DNSRecord // pushed to the node; nil: nothing pushed, a log line instead
		log    []string            // in a new log line
	}{
		{"records written", write(twoRecords), inForce, []string{"DNS configuration changed and sent to every node", "trigger=\"file changed\"", "extra_records=3"}},
		{"broken file", write("[\n  {\"name\": \"c.example.internal\" \"type\": \"A\"}\n]"), nil,
			[]string{"extra DNS records file refused, the records in force stay", "file=" + path, path + ":2:"}},
		{"empty file (a writer between two writes)", write(""), nil, []string{"the extra DNS records file is empty; the records in force stay", "extra_records=2"}},
		{"file deleted", func(t *testing.T) { os.Remove(path) }, nil, []string{"the extra DNS records file is gone; the records in force stay until it is back", "file=" + path}},
		{"file back by rename", func(t *testing.T) {
			tmp := path + ".tmp"
			if err := os.WriteFile(tmp, []byte(`[{"name": "d.example.internal", "type": "A", "value": "100.64.0.11"}]`), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}, []tailcfg.DNSRecord{cfgRec, rec("d.example.internal", "A", "100.64.0.11")}, []string{"the extra DNS records file is back"}},
		{"all records removed", write("[]"), []tailcfg.DNSRecord{cfgRec}, []string{"extra_records=1"}},
	} {
		t.Run(step.name, func(t *testing.T) {
			before := strings.Count(ts.Logs(), "\n")
			wasInForce := ts.DNSConfig().ExtraRecords
			step.change(t)
			tstest.WaitFor(t, 10*time.Second, "a log line with "+strings.Join(step.log, ", "), func() error {
				for _, line := range strings.Split(ts.Logs(), "\n")[before:] {
					if containsAll(line, step.log) {
						return nil
					}
				}
				return errors.New("not logged yet")
			})
			if step.want == nil {
				if got := ts.DNSConfig().ExtraRecords; !reflect.DeepEqual(got, wasInForce) {
					t.Fatalf("records in force changed to %+v, want %+v kept", got, wasInForce)
				}
				select {
				case got := <-pushed:
					t.Fatalf("records pushed after a refused change: %+v", got)
				default:
				}
				return
			}
			tstest.Within(t, 10*time.Second, "the new records pushed to the node", func() error {
				if got := <-pushed; !reflect.DeepEqual(got, step.want) {
					t.Errorf("pushed %+v, want %+v", got, step.want)
				}
				return nil
			})
			if got := ts.DNSConfig().ExtraRecords; !reflect.DeepEqual(got, step.want) {
				t.Fatalf("records in force %+v, want %+v", got, step.want)
			}
		})
	}
}

// containsAll reports whether s contains every one of subs.
func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
