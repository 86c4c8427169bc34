package loadgen

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net/netip"
)

// Map stream frames are decoded here without building tailcfg objects: a
// simulated node needs only which peers it holds and, for the peers whose
// endpoints it watches, the newest endpoint it has seen. The scanner below
// walks the JSON once, picks out those few fields and skips everything
// else, allocating nothing but the reused slices in frameInfo.

// minPort is the port of sequence number 0: a node's endpoint port is
// minPort+seq, so a receiver can order the values it sees.
const minPort = 10000

// maxSeq is the highest sequence number a port can carry.
const maxSeq = 65535 - minPort

// epCodec encodes a simulated node's index and endpoint sequence number
// into an IPv6 endpoint [fdRR:RRRR:RRRR:RRRR::hi:lo]:port. The random run
// prefix tells this run's nodes from nodes an earlier run left on the
// server; the last 32 bits are the node index.
type epCodec struct {
	prefix [8]byte // first 8 bytes of every address of this run
	text   []byte  // "[" + canonical text up to and including "::"
}

func newEPCodec() *epCodec {
	var c epCodec
	rand.Read(c.prefix[:])
	c.prefix[0] = 0xfd
	// Keep every 16-bit group of the prefix non-zero so the canonical
	// text always compresses exactly the zero groups 4 and 5 (and 6 when
	// the index is below 65536) into "::".
	for g := 0; g < 4; g++ {
		c.prefix[2*g] |= 0x80
	}
	var a [16]byte
	copy(a[:], c.prefix[:])
	a[15] = 1
	s := netip.AddrFrom16(a).String() // "fdxx:xxxx:xxxx:xxxx::1"
	c.text = append([]byte("["), s[:len(s)-1]...)
	return &c
}

// addr is node idx's address.
func (c *epCodec) addr(idx int32) netip.Addr {
	var a [16]byte
	copy(a[:], c.prefix[:])
	a[12], a[13], a[14], a[15] = byte(idx>>24), byte(idx>>16), byte(idx>>8), byte(idx)
	return netip.AddrFrom16(a)
}

// endpoint is node idx's endpoint carrying sequence number seq.
func (c *epCodec) endpoint(idx, seq int32) netip.AddrPort {
	return netip.AddrPortFrom(c.addr(idx), uint16(minPort+seq))
}

// decode reads an endpoint string as JSON carries it (without quotes). ok
// is false for endpoints that are not this run's.
func (c *epCodec) decode(b []byte) (idx, seq int32, ok bool) {
	if bytes.HasPrefix(b, c.text) {
		// Fast path: canonical text, as Go servers write it.
		rest := b[len(c.text):]
		colon := bytes.LastIndexByte(rest, ':')
		bracket := bytes.IndexByte(rest, ']')
		if bracket < 0 || colon != bracket+1 {
			return c.decodeSlow(b)
		}
		var v uint64
		groups := 0
		var cur uint64
		digits := 0
		for _, ch := range rest[:bracket] {
			switch {
			case ch == ':':
				if digits == 0 {
					return c.decodeSlow(b)
				}
				v = v<<16 | cur
				cur, digits = 0, 0
				groups++
			case digits < 4 && (ch >= '0' && ch <= '9' || ch >= 'a' && ch <= 'f' || ch >= 'A' && ch <= 'F'):
				cur = cur<<4 | uint64(hexVal(ch))
				digits++
			default:
				return c.decodeSlow(b)
			}
		}
		if digits == 0 || groups > 1 {
			return c.decodeSlow(b)
		}
		v = v<<16 | cur
		port, ok := atou(rest[bracket+2:])
		if !ok || port < minPort || port > 65535 || v > 1<<31-1 {
			return 0, 0, false
		}
		return int32(v), int32(port - minPort), true
	}
	if len(b) > 3 && b[0] == '[' && (b[1] == 'f' || b[1] == 'F') {
		return c.decodeSlow(b)
	}
	return 0, 0, false
}

// decodeSlow parses any textual form of the address.
func (c *epCodec) decodeSlow(b []byte) (idx, seq int32, ok bool) {
	ap, err := netip.ParseAddrPort(string(b))
	if err != nil || !ap.Addr().Is6() || ap.Port() < minPort {
		return 0, 0, false
	}
	a := ap.Addr().As16()
	if [8]byte(a[:8]) != c.prefix || a[8]|a[9]|a[10]|a[11] != 0 || a[12]&0x80 != 0 {
		return 0, 0, false
	}
	return int32(a[12])<<24 | int32(a[13])<<16 | int32(a[14])<<8 | int32(a[15]), int32(ap.Port()) - minPort, true
}

func hexVal(ch byte) byte {
	switch {
	case ch >= '0' && ch <= '9':
		return ch - '0'
	case ch >= 'a' && ch <= 'f':
		return ch - 'a' + 10
	default:
		return ch - 'A' + 10
	}
}

func atou(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 9 {
		return 0, false
	}
	n := 0
	for _, ch := range b {
		if ch < '0' || ch > '9' {
			return 0, false
		}
		n = n*10 + int(ch-'0')
	}
	return n, true
}

// peerRef is one peer entry as the measurement needs it.
type peerRef struct {
	id     int64
	idx    int32 // this run's node index from its endpoints; -1: none
	seq    int32 // endpoint sequence number when idx >= 0
	online int8  // what the entry says of Online: 1 online, -1 offline, 0 nothing
}

// frameInfo is what one MapResponse says that the load tool reads. Its
// slices are reused from frame to frame.
type frameInfo struct {
	keepAlive bool
	selfID    int64     // Node.ID; 0 if the frame has no Node
	full      bool      // Peers present: it replaces the peer set
	peers     []peerRef // Peers
	changed   []peerRef // PeersChanged
	removed   []int64   // PeersRemoved
	patched   []peerRef // PeersChangedPatch entries that carry Endpoints or Online

	peersSpan  [2]int // offsets of the Peers array's '[' and just past its ']'
	decodedLen int    // bytes of JSON the message stands for
}

func (f *frameInfo) reset() {
	// Drop big backing arrays (a full map of a large tailnet) rather than
	// keep them per node.
	trim := func(s []peerRef) []peerRef {
		if cap(s) > 256 {
			return nil
		}
		return s[:0]
	}
	f.keepAlive, f.selfID, f.full = false, 0, false
	f.peersSpan, f.decodedLen = [2]int{}, 0
	f.peers, f.changed, f.patched = trim(f.peers), trim(f.changed), trim(f.patched)
	if cap(f.removed) > 256 {
		f.removed = nil
	}
	f.removed = f.removed[:0]
}

// syntaxError is the error kind of a frame the scanner cannot read.
type syntaxError string

func (e syntaxError) Error() string { return string(e) }

// errSyntax wraps every scanning error.
const errSyntax = syntaxError("malformed map response JSON")

// parseFrame decodes the JSON of one MapResponse into f.
func parseFrame(b []byte, codec *epCodec, f *frameInfo) error {
	f.reset()
	s := scanner{b: b}
	err := s.object(func(key []byte) error {
		switch string(key) {
		case "KeepAlive":
			v, err := s.boolean()
			f.keepAlive = v
			return err
		case "Node":
			var p peerRef
			if err := s.node(codec, &p, "ID"); err != nil {
				return err
			}
			f.selfID = p.id
			return nil
		case "Peers":
			if s.null() {
				return nil
			}
			f.full = true
			s.ws()
			f.peersSpan[0] = s.i
			err := s.array(func() error {
				p := peerRef{idx: -1}
				err := s.node(codec, &p, "ID")
				f.peers = append(f.peers, p)
				return err
			})
			f.peersSpan[1] = s.i
			return err
		case "PeersChanged":
			return s.array(func() error {
				p := peerRef{idx: -1}
				err := s.node(codec, &p, "ID")
				f.changed = append(f.changed, p)
				return err
			})
		case "PeersRemoved":
			return s.array(func() error {
				id, err := s.integer()
				f.removed = append(f.removed, id)
				return err
			})
		case "PeersChangedPatch":
			return s.array(func() error {
				p := peerRef{idx: -1}
				err := s.node(codec, &p, "NodeID")
				if p.idx >= 0 || p.online != 0 {
					f.patched = append(f.patched, p)
				}
				return err
			})
		default:
			return s.skip()
		}
	})
	if err != nil {
		return err
	}
	if s.ws(); s.i != len(s.b) {
		return fmt.Errorf("%w: trailing data at offset %d", errSyntax, s.i)
	}
	return nil
}

// scanner is a minimal JSON reader over a complete document.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) errorf(what string) error {
	return fmt.Errorf("%w: %s at offset %d", errSyntax, what, s.i)
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) peek() byte {
	s.ws()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *scanner) consume(c byte) bool {
	if s.peek() == c {
		s.i++
		return true
	}
	return false
}

// null consumes a JSON null if one is next.
func (s *scanner) null() bool {
	if s.peek() == 'n' && bytes.HasPrefix(s.b[s.i:], []byte("null")) {
		s.i += 4
		return true
	}
	return false
}

// str returns a string's raw bytes (escapes are left as they are).
func (s *scanner) str() ([]byte, error) {
	if s.peek() != '"' {
		return nil, s.errorf("string expected")
	}
	start := s.i + 1
	j := start
	for {
		k := bytes.IndexByte(s.b[j:], '"')
		if k < 0 {
			s.i = len(s.b)
			return nil, s.errorf("unterminated string")
		}
		j += k
		// The quote is escaped if an odd number of backslashes precede it.
		bs := 0
		for p := j - 1; p >= start && s.b[p] == '\\'; p-- {
			bs++
		}
		if bs%2 == 0 {
			s.i = j + 1
			return s.b[start:j], nil
		}
		j++
	}
}

// skip skips one value of any kind.
func (s *scanner) skip() error {
	switch c := s.peek(); c {
	case '"':
		_, err := s.str()
		return err
	case '{', '[':
		depth := 0
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case '"':
				if _, err := s.str(); err != nil {
					return err
				}
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					s.i++
					return nil
				}
			}
			s.i++
		}
		return s.errorf("unexpected end")
	case 0:
		return s.errorf("value expected")
	default:
		start := s.i
	scan:
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				break scan
			}
			s.i++
		}
		if s.i == start {
			return s.errorf("value expected")
		}
		return nil
	}
}

func (s *scanner) boolean() (bool, error) {
	switch {
	case s.peek() == 't' && bytes.HasPrefix(s.b[s.i:], []byte("true")):
		s.i += 4
		return true, nil
	case s.peek() == 'f' && bytes.HasPrefix(s.b[s.i:], []byte("false")):
		s.i += 5
		return false, nil
	case s.null():
		return false, nil
	}
	return false, s.errorf("boolean expected")
}

func (s *scanner) integer() (int64, error) {
	s.ws()
	start := s.i
	if s.i < len(s.b) && s.b[s.i] == '-' {
		s.i++
	}
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	digits := s.b[start:s.i]
	neg := len(digits) > 0 && digits[0] == '-'
	if neg {
		digits = digits[1:]
	}
	if len(digits) == 0 || len(digits) > 18 {
		return 0, s.errorf("integer expected")
	}
	var v int64
	for _, ch := range digits {
		v = v*10 + int64(ch-'0')
	}
	if neg {
		v = -v
	}
	return v, nil
}

// object calls fn for each key, with the scanner at the key's value; fn
// must consume the value. A null object has no keys.
func (s *scanner) object(fn func(key []byte) error) error {
	if s.null() {
		return nil
	}
	if !s.consume('{') {
		return s.errorf("object expected")
	}
	if s.consume('}') {
		return nil
	}
	for {
		key, err := s.str()
		if err != nil {
			return err
		}
		if !s.consume(':') {
			return s.errorf("colon expected")
		}
		if err := fn(key); err != nil {
			return err
		}
		if s.consume(',') {
			continue
		}
		if s.consume('}') {
			return nil
		}
		return s.errorf("comma or } expected")
	}
}

// array calls fn for each element, with the scanner at the element; fn
// must consume it. A null array has no elements.
func (s *scanner) array(fn func() error) error {
	if s.null() {
		return nil
	}
	if !s.consume('[') {
		return s.errorf("array expected")
	}
	if s.consume(']') {
		return nil
	}
	for {
		if err := fn(); err != nil {
			return err
		}
		if s.consume(',') {
			continue
		}
		if s.consume(']') {
			return nil
		}
		return s.errorf("comma or ] expected")
	}
}

// node reads a Node or PeerChange object: its ID under idKey and the first
// of its endpoints that belongs to this run.
func (s *scanner) node(codec *epCodec, p *peerRef, idKey string) error {
	return s.object(func(key []byte) error {
		switch string(key) {
		case idKey:
			id, err := s.integer()
			p.id = id
			return err
		case "Online":
			if s.null() {
				return nil
			}
			v, err := s.boolean()
			p.online = -1
			if v {
				p.online = 1
			}
			return err
		case "Endpoints":
			return s.array(func() error {
				ep, err := s.str()
				if err != nil {
					return err
				}
				if p.idx < 0 {
					if idx, seq, ok := codec.decode(ep); ok {
						p.idx, p.seq = idx, seq
					}
				}
				return nil
			})
		default:
			return s.skip()
		}
	})
}
