package crashtest

import (
	"strings"
	"testing"
	"time"
)

func TestHistoryAllowed(t *testing.T) {
	w := func(v string, o Outcome) write { return write{v, o} }
	tests := []struct {
		name    string
		writes  []write
		settled bool
		ok      []string
		bad     []string
	}{
		{"nothing acked: anything", []write{w("a", Unknown)}, false, []string{"a", "zz"}, nil},
		{"last acked", []write{w("a", Acked), w("b", Acked)}, false, []string{"b"}, []string{"a", "c"}},
		{"later unknown may land", []write{w("a", Acked), w("b", Unknown)}, false, []string{"a", "b"}, []string{"c"}},
		{"refused never lands", []write{w("a", Acked), w("b", Refused)}, false, []string{"a"}, []string{"b"}},
		{"unknown before an acked write is overwritten", []write{w("a", Unknown), w("b", Acked)}, false, []string{"b"}, []string{"a"}},
		{"settled base counts as acked", []write{w("base", Acked), w("x", Refused)}, true, []string{"base"}, []string{"x"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := history{writes: tc.writes, settled: tc.settled}
			for _, v := range tc.ok {
				if !h.allowed(v) {
					t.Errorf("%q not allowed, want allowed (%s)", v, h.want())
				}
			}
			for _, v := range tc.bad {
				if h.allowed(v) {
					t.Errorf("%q allowed, want refused (%s)", v, h.want())
				}
			}
		})
	}
}

func TestExistenceMust(t *testing.T) {
	tests := []struct {
		e    existence
		want int
	}{
		{existence{created: Acked}, 1},
		{existence{created: Unknown}, 0},
		{existence{created: Acked, delTry: true, deleted: Acked}, -1},
		{existence{created: Acked, delTry: true, deleted: Unknown}, 0},
	}
	for _, tc := range tests {
		if got := tc.e.must(); got != tc.want {
			t.Errorf("%+v: must %d, want %d", tc.e, got, tc.want)
		}
	}
}

// TestVerify checks that the ledger reports what a crash could do wrong
// (an acknowledged registration, edit or delete not reflected) and
// accepts what it may do (an unanswered write applied or not).
func TestVerify(t *testing.T) {
	l := newLedger()
	l.registered("mkey:a", "a", 0, true, Acked)
	l.registered("mkey:b", "b", 0, false, Acked)
	l.registered("mkey:c", "c", 0, false, Unknown)
	l.registered("mkey:d", "d", 0, false, Acked)
	l.nodes["mkey:a"].name.record("n1", Acked)
	l.nodes["mkey:a"].name.record("n2", Unknown)
	l.nodes["mkey:d"].exist.delTry, l.nodes["mkey:d"].exist.deleted = true, Acked
	l.users["u1"] = &userRec{created: "u1", id: 7, exist: existence{created: Acked}}
	l.users["u1"].name.record("u1", Acked)
	l.users["u1"].name.record("u1b", Acked)
	l.keys[3] = &keyRec{id: 3, exist: existence{created: Acked}, expTry: true, expired: Acked}
	now := time.Now()

	good := observed{
		nodes: map[string]obsNode{"mkey:a": {id: 1, name: "n2"}, "mkey:b": {id: 2, name: "b"}, "mkey:c": {id: 3, name: "c"}},
		users: map[uint64]string{7: "u1b"},
		keys:  map[uint64]time.Time{3: now.Add(-time.Second)},
		now:   now,
	}
	if probs, _, landed, _ := l.verify(good); len(probs) != 0 || landed != 1 {
		t.Fatalf("problems %v, landed %d; want none, 1", probs, landed)
	}
	// Settled: the next check starts from what the server showed.
	l.nodes["mkey:a"].name.record("n3", Acked)
	l.nodes["mkey:b"].exist.delTry, l.nodes["mkey:b"].exist.deleted = true, Acked
	l.users["u1"].name.record("u1c", Acked)
	l.keys[4] = &keyRec{id: 4, exist: existence{created: Acked}}
	bad := observed{
		nodes: map[string]obsNode{"mkey:a": {id: 1, name: "n2"}, "mkey:b": {id: 2, name: "b"}},
		users: map[uint64]string{7: "u1b"},
		keys:  map[uint64]time.Time{3: now.Add(-time.Second)},
		now:   now,
	}
	probs, _, _, _ := l.verify(bad)
	want := []string{"node 1 a: name", "node b", "mkey:c", "user 7: name", "pre-auth key 4"}
	if len(probs) != len(want) {
		t.Fatalf("problems %q, want %d", probs, len(want))
	}
	for _, w := range want {
		found := false
		for _, p := range probs {
			found = found || strings.Contains(p, w)
		}
		if !found {
			t.Errorf("no problem mentions %q in %q", w, probs)
		}
	}
}
