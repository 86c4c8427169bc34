package mapper

import (
	"bytes"
	"cmp"
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/hsctl/headscale/pkg/state"
	"tailscale.com/util/zstdframe"
)

// Full maps are most of what a large tailnet sends: every node receives
// every peer when it connects. The peers are encoded once per node
// snapshot (peerJSON) and, for compressed sessions, compressed once per
// run of chunkSpan consecutive node IDs: a zstd stream may consist of
// several frames, which decoders (tailscale's included) decode back to
// back, so a full map is the session's own compressed head, the shared
// compressed peer runs, and a shared tail. Only the run that would contain
// the session's own node (or differs by policy) is compressed for it.

// chunkSpan is how many consecutive node IDs share one compressed run.
const chunkSpan = 128

// chunkCache holds recently used compressed peer runs per run index.
type chunkCache struct {
	mu   sync.Mutex
	runs map[uint64][]*chunk // run index -> most recent first
}

// chunk is one compressed run: the exact peer snapshots it encodes.
type chunk struct {
	members []*state.Node
	comma   bool // starts with "," (not the first run of the list)
	z       []byte
}

// chunksPerRun is how many variants of a run are kept (the common one
// plus per-session ones that differ by a member).
const chunksPerRun = 4

func (c *chunkCache) get(run uint64, members []*state.Node, comma bool) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	list := c.runs[run]
	for i, ch := range list {
		if ch.comma == comma && slices.Equal(ch.members, members) {
			if i > 0 {
				copy(list[1:i+1], list[:i])
				list[0] = ch
			}
			return ch.z
		}
	}
	return nil
}

func (c *chunkCache) put(run uint64, members []*state.Node, comma bool, z []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.runs == nil {
		c.runs = make(map[uint64][]*chunk)
	}
	list := c.runs[run]
	ch := &chunk{members: slices.Clone(members), comma: comma, z: z}
	if len(list) < chunksPerRun {
		list = append(list, nil)
	}
	copy(list[1:], list[:len(list)-1])
	list[0] = ch
	c.runs[run] = list
}

var compressedTail = zstdframe.AppendEncode(nil, []byte("]}"), zstdOpts...)

// zstdOpts compress every frame: the fastest level, and a 128 KiB window,
// which keeps each pooled encoder's history (and a client's decoder) small;
// a frame is a delta, a map's head or a run of 128 peers, rarely more.
var zstdOpts = []zstdframe.Option{zstdframe.FastestCompression, zstdframe.MaxWindowSize(128 << 10), zstdframe.LowMemory(true)}

func sortedPeers(snap state.Snapshot) []*state.Node {
	byID := func(a, b *state.Node) int { return cmp.Compare(a.ID, b.ID) }
	if slices.IsSortedFunc(snap.Peers, byID) {
		return snap.Peers // as the state lists them
	}
	peers := slices.Clone(snap.Peers)
	slices.SortFunc(peers, byID)
	return peers
}

// fullHead encodes everything but the peers, ending in `"Peers":[`.
func (h *Hub) fullHead(snap state.Snapshot, now time.Time) []byte {
	resp := h.m.fullResponse(snap, now)
	head, err := json.Marshal(resp)
	if err != nil {
		panic("mapper: encoding map response: " + err.Error())
	}
	head = head[:len(head)-1] // drop the closing brace
	return append(head, `,"Peers":[`...)
}

// FullMapJSON encodes a full map for snap, splicing in the shared peer
// encodings instead of re-encoding every peer for every session.
func (h *Hub) FullMapJSON(snap state.Snapshot) []byte {
	now := h.opts.Now()
	head := h.fullHead(snap, now)
	peers := sortedPeers(snap)
	var buf bytes.Buffer
	buf.Grow(len(head) + len(peers)*600)
	buf.Write(head)
	for i, p := range peers {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(h.peerJSON(p, now))
	}
	buf.WriteString("]}")
	return buf.Bytes()
}

// FullMapZstd is FullMapJSON compressed, built from the shared compressed
// peer runs.
func (h *Hub) FullMapZstd(snap state.Snapshot) []byte {
	parts, size := h.fullMapZstdParts(snap)
	out := make([]byte, 0, size)
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// runBufs lends fullMapZstdParts the buffer it encodes a run's peers in
// before compressing them: while nodes join, most full maps end in a run
// not seen before.
var runBufs = sync.Pool{New: func() any { b := make([]byte, 0, chunkSpan*640); return &b }}

// fullMapZstdParts returns FullMapZstd as the pieces it is made of (the
// session's compressed head, the shared compressed runs, the tail) and
// their total size: a session writes them one after the other and the
// map is never copied into one buffer.
func (h *Hub) fullMapZstdParts(snap state.Snapshot) ([][]byte, int) {
	now := h.opts.Now()
	peers := sortedPeers(snap)
	head := zstdframe.AppendEncode(nil, h.fullHead(snap, now), zstdOpts...)
	parts := make([][]byte, 0, len(peers)/chunkSpan+3)
	parts = append(parts, head)
	size := len(head) + len(compressedTail)
	jsp := runBufs.Get().(*[]byte)
	defer runBufs.Put(jsp)
	js := *jsp
	defer func() { *jsp = js[:0] }()
	for i := 0; i < len(peers); {
		run := uint64(peers[i].ID / chunkSpan)
		j := i + 1
		for j < len(peers) && uint64(peers[j].ID/chunkSpan) == run {
			j++
		}
		members := peers[i:j]
		comma := i > 0
		z := h.chunks.get(run, members, comma)
		if z == nil {
			js = js[:0]
			for k, p := range members {
				if k > 0 || comma {
					js = append(js, ',')
				}
				js = append(js, h.peerJSON(p, now)...)
			}
			z = zstdframe.AppendEncode(nil, js, zstdOpts...)
			h.chunks.put(run, members, comma, z)
		}
		parts = append(parts, z)
		size += len(z)
		i = j
	}
	return append(parts, compressedTail), size
}
