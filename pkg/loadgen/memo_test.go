package loadgen

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"tailscale.com/util/zstdframe"
)

func z(s string) []byte { return zstdframe.AppendEncode(nil, []byte(s), zstdframe.FastestCompression) }

// TestMemoRuns: a full map sent as a compressed head, shared compressed
// runs of peers and a tail decodes to the same peers as the message
// decoded in one piece, and the second node receiving the same runs takes
// them from the cache.
func TestMemoRuns(t *testing.T) {
	codec := newEPCodec()
	peer := func(id int, seq int32) string {
		return fmt.Sprintf(`{"ID":%d,"Endpoints":["%s"]}`, id, codec.endpoint(int32(id), seq))
	}
	run := func(first bool, ids ...int) string {
		var parts []string
		for _, id := range ids {
			parts = append(parts, peer(id, 3))
		}
		s := strings.Join(parts, ",")
		if !first {
			s = "," + s
		}
		return s
	}
	head := `{"Node":{"ID":1},"Peers":[`
	msg := slices.Concat(z(head), z(run(true, 2, 3)), z(run(false, 4, 5, 6)), z("]}"))
	m := newMemo()
	var f, whole frameInfo
	var scratch []byte
	got, _, err := m.decodeMessage(msg, true, 1<<20, codec, &f, &scratch)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.decodeWhole(msg, 1<<20, codec, &whole, &scratch); err != nil {
		t.Fatal(err)
	}
	ids := func(f *frameInfo) []int64 {
		var out []int64
		for _, p := range f.peers {
			out = append(out, p.id)
		}
		slices.Sort(out)
		return out
	}
	if !got.full || got.selfID != 1 || !slices.Equal(ids(got), ids(&whole)) || len(got.peers) != 5 {
		t.Fatalf("runs decoded to self %d peers %v; whole: %v", got.selfID, ids(got), ids(&whole))
	}
	if len(m.runs) != 2 {
		t.Fatalf("%d runs cached, want 2", len(m.runs))
	}
	// Another node: different head, same runs.
	msg2 := slices.Concat(z(`{"Node":{"ID":7},"Peers":[`), z(run(true, 2, 3)), z(run(false, 4, 5, 6)), z("]}"))
	var f2 frameInfo
	got2, st, err := m.decodeMessage(msg2, true, 1<<20, codec, &f2, &scratch)
	if err != nil || got2.selfID != 7 || len(got2.peers) != 5 {
		t.Fatalf("second node: %v, self %d, %d peers", err, got2.selfID, len(got2.peers))
	}
	if st.decoded > 2*len(head)+500*5 {
		t.Errorf("second node decoded %d bytes: runs not taken from the cache", st.decoded)
	}
	// Runs outside the peer list fall back to decoding the whole message.
	odd := slices.Concat(z(`{"PeersChanged":[`), z(run(true, 2, 3)), z("]}"))
	var f3 frameInfo
	got3, _, err := m.decodeMessage(odd, true, 1<<20, codec, &f3, &scratch)
	if err != nil || got3.full || len(got3.changed) != 2 {
		t.Fatalf("fallback: %v, full %v, changed %d", err, got3.full, len(got3.changed))
	}
}

// TestMemoWhole: identical single-frame messages are parsed once.
func TestMemoWhole(t *testing.T) {
	codec := newEPCodec()
	m := newMemo()
	msg := z(`{"PeersChangedPatch":[{"NodeID":5,"Endpoints":["` + codec.endpoint(5, 9).String() + `"]}]}`)
	var f1, f2 frameInfo
	var scratch []byte
	a, _, err := m.decodeMessage(msg, true, 1<<20, codec, &f1, &scratch)
	if err != nil || len(a.patched) != 1 || a.patched[0].seq != 9 {
		t.Fatalf("first: %v %+v", err, a)
	}
	b, _, err := m.decodeMessage(msg, true, 1<<20, codec, &f2, &scratch)
	if err != nil || b == &f2 || len(b.patched) != 1 {
		t.Fatalf("second decode did not come from the cache: %v", err)
	}
}
