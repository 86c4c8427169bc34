package loadgen

import (
	"fmt"
	"hash/maphash"
	"sync"

	"tailscale.com/util/zstdframe"
)

// Ten thousand simulated nodes in one process receive about N² peer
// entries while a tailnet forms (a hundred million at N = 10,000), far
// more than one process can decompress and scan in time. But a server
// that shares its encodings sends the same bytes to many nodes: the same
// delta frame, or the same compressed run of peers inside full maps. The
// same bytes always decode to the same content, so the tool decodes each
// distinct byte string once and lets every node that receives it apply
// the cached result. The cache is exact (keyed by a 64-bit hash and the
// length of the bytes) and generic: it needs nothing from the server
// beyond identical bytes, and a server that sends every node different
// bytes is simply decoded each time.
//
// Two things are cached:
//   - whole frames (a message of one zstd frame, or uncompressed JSON): the
//     parsed frameInfo, shared read-only;
//   - runs: a zstd frame inside a multi-frame message whose text is a run
//     of array elements (`{...},{...}` or `,{...},...`). The message is
//     reassembled without its runs and parsed; the runs' peers count only
//     if every cut fell inside the Peers array. Anything else falls back to
//     decoding the whole message.

// memoLimit bounds each cache's entries; a full cache is emptied.
const memoLimit = 1 << 16

// memoMaxRefs is the largest frame (in peer entries) cached whole: bigger
// ones are full maps, which are per node.
const memoMaxRefs = 2048

type memoKey struct {
	h uint64
	n int
}

type memo struct {
	seed  maphash.Seed
	mu    sync.Mutex
	whole map[memoKey]*frameInfo
	runs  map[memoKey]run
}

// run is a cached run of peers and the length of its JSON.
type run struct {
	peers []peerRef
	n     int
}

func newMemo() *memo {
	return &memo{seed: maphash.MakeSeed(), whole: map[memoKey]*frameInfo{}, runs: map[memoKey]run{}}
}

func (m *memo) key(b []byte) memoKey { return memoKey{maphash.Bytes(m.seed, b), len(b)} }

func (m *memo) getWhole(k memoKey) *frameInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.whole[k]
}

func (m *memo) putWhole(k memoKey, f *frameInfo) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.whole) >= memoLimit {
		clear(m.whole)
	}
	m.whole[k] = f
}

func (m *memo) getRun(k memoKey) (run, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.runs[k]
	return r, ok
}

func (m *memo) putRun(k memoKey, p run) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.runs) >= memoLimit {
		clear(m.runs)
	}
	m.runs[k] = p
}

// decodeStats is what decoding one message cost, for the report.
type decodeStats struct {
	decoded int // bytes of JSON the message stands for
}

// decodeMessage returns what message raw says. It may return a cached,
// shared frameInfo (read only) or fill and return f. scratch is reused
// decompression space.
func (m *memo) decodeMessage(raw []byte, compressed bool, maxSize int, codec *epCodec, f *frameInfo, scratch *[]byte) (*frameInfo, decodeStats, error) {
	var st decodeStats
	if !compressed {
		k := m.key(raw)
		if c := m.getWhole(k); c != nil {
			st.decoded = len(raw)
			return c, st, nil
		}
		st.decoded = len(raw)
		if err := parseFrame(raw, codec, f); err != nil {
			return nil, st, err
		}
		m.maybeCache(k, f)
		return f, st, nil
	}
	k := m.key(raw)
	if c := m.getWhole(k); c != nil {
		st.decoded = c.decodedLen
		return c, st, nil
	}
	first, err := zstdframe.NextSize(raw)
	if err != nil || first == len(raw) {
		out, err := zstdframe.AppendDecode((*scratch)[:0], raw, zstdframe.MaxDecodedSize(uint64(maxSize)))
		*scratch = out
		if err != nil {
			return nil, st, fmt.Errorf("decompressing map frame: %w", err)
		}
		st.decoded = len(out)
		if err := parseFrame(out, codec, f); err != nil {
			return nil, st, err
		}
		f.decodedLen = len(out)
		m.maybeCache(k, f)
		return f, st, nil
	}
	return m.decodeRuns(raw, maxSize, codec, f, scratch)
}

func (m *memo) maybeCache(k memoKey, f *frameInfo) {
	if len(f.peers)+len(f.changed)+len(f.patched)+len(f.removed) > memoMaxRefs {
		return
	}
	c := &frameInfo{
		keepAlive: f.keepAlive, selfID: f.selfID, full: f.full, decodedLen: f.decodedLen,
		peers:   append([]peerRef(nil), f.peers...),
		changed: append([]peerRef(nil), f.changed...),
		removed: append([]int64(nil), f.removed...),
		patched: append([]peerRef(nil), f.patched...),
	}
	m.putWhole(k, c)
}

type cut struct {
	at int
	run
}

// decodeRuns decodes a message of several zstd frames, taking runs of
// peers from the cache.
func (m *memo) decodeRuns(raw []byte, maxSize int, codec *epCodec, f *frameInfo, scratch *[]byte) (*frameInfo, decodeStats, error) {
	var st decodeStats
	text := (*scratch)[:0]
	var cuts []cut
	var dec []byte
	for rest := raw; len(rest) > 0; {
		n, err := zstdframe.NextSize(rest)
		if err != nil {
			return nil, st, fmt.Errorf("splitting map frame: %w", err)
		}
		fr := rest[:n]
		rest = rest[n:]
		k := m.key(fr)
		if r, ok := m.getRun(k); ok {
			cuts = append(cuts, cut{len(text), r})
			continue
		}
		dec, err = zstdframe.AppendDecode(dec[:0], fr, zstdframe.MaxDecodedSize(uint64(maxSize)))
		if err != nil {
			return nil, st, fmt.Errorf("decompressing map frame: %w", err)
		}
		if peers, ok := parseRun(dec, codec); ok {
			r := run{peers, len(dec)}
			m.putRun(k, r)
			cuts = append(cuts, cut{len(text), r})
			continue
		}
		// A run without its leading comma may have been cut right before
		// text that starts with one.
		if len(text) > 0 && text[len(text)-1] == '[' && len(dec) > 0 && dec[0] == ',' {
			dec = dec[1:]
		}
		text = append(text, dec...)
	}
	*scratch = text
	st.decoded = len(text)
	if err := parseFrame(text, codec, f); err != nil {
		return nil, st, err
	}
	for _, c := range cuts {
		if !f.full || c.at <= f.peersSpan[0] || c.at >= f.peersSpan[1] {
			return m.decodeWhole(raw, maxSize, codec, f, scratch)
		}
		f.peers = append(f.peers, c.peers...)
		st.decoded += c.n // what the run stands for, decoded or not
	}
	f.decodedLen = st.decoded
	return f, st, nil
}

// decodeWhole decodes the message in one piece, without the caches.
func (m *memo) decodeWhole(raw []byte, maxSize int, codec *epCodec, f *frameInfo, scratch *[]byte) (*frameInfo, decodeStats, error) {
	out, err := zstdframe.AppendDecode((*scratch)[:0], raw, zstdframe.MaxDecodedSize(uint64(maxSize)))
	*scratch = out
	if err != nil {
		return nil, decodeStats{}, fmt.Errorf("decompressing map frame: %w", err)
	}
	if err := parseFrame(out, codec, f); err != nil {
		return nil, decodeStats{}, err
	}
	f.decodedLen = len(out)
	return f, decodeStats{decoded: len(out)}, nil
}

// parseRun reads b as a run of array elements that are nodes: an
// optional leading comma, then objects separated by commas, nothing after.
func parseRun(b []byte, codec *epCodec) ([]peerRef, bool) {
	s := scanner{b: b}
	s.ws()
	if s.peek() == ',' {
		s.i++
		s.ws()
	}
	if s.peek() != '{' {
		return nil, false
	}
	var out []peerRef
	for {
		p := peerRef{idx: -1}
		if err := s.node(codec, &p, "ID"); err != nil || p.id == 0 {
			return nil, false
		}
		out = append(out, p)
		s.ws()
		if s.i == len(s.b) {
			return out, true
		}
		if !s.consume(',') {
			return nil, false
		}
		s.ws()
	}
}
