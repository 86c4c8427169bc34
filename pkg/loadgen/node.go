package loadgen

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"tailscale.com/control/ts2021"
	"tailscale.com/health"
	"tailscale.com/net/tsdial"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
)

// slowWindow is the slow node's HTTP/2 stream receive window.
const slowWindow = 16 << 10

// node is one simulated Tailscale node: fresh machine, node and disco
// keys, one Noise connection (HTTP/2 inside) carrying its registration,
// its streaming map request and its endpoint updates, and the little it
// keeps from its map stream: which of this run's nodes it holds as peers
// (a bit set) and the newest endpoint sequence number of each watched
// node.
type node struct {
	r       *runner
	idx     int32
	slot    int16 // this node's watched slot; -1 if it never changes endpoints
	slow    bool  // the slow-reader node: a small HTTP/2 receive window
	name    string
	machine key.MachinePrivate
	nodeKey key.NodePrivate
	nodePub key.NodePublic // nodeKey.Public(), which costs a curve25519 multiplication
	disco   key.DiscoPublic

	// sendMu orders this node's map requests (stream start and endpoint
	// updates) the way tailscaled's single control client does; seq is
	// the endpoint sequence number last sent.
	sendMu sync.Mutex
	seq    int32

	mu sync.Mutex
	nc *ts2021.Client // nil: dial on next use

	paused atomic.Pointer[chan struct{}] // non-nil: reads wait for it to close

	// What the map stream taught this node; guarded by rmu.
	rmu     sync.Mutex
	gen     uint64 // session generation: frames of older sessions are ignored
	id      int64  // own node ID (from the first map)
	gotFull bool   // the current session's first map arrived
	known   []uint64
	nKnown  int
	// offline marks held peers the stream last said are offline.
	offline  []uint64
	nOffline int
	seqs     []int32 // newest endpoint seq seen per watched slot; -1: none
	conv     bool

	registered atomic.Bool
	fullMaps   atomic.Int64 // sessions' first maps and full peer lists
	sessions   atomic.Int64
	lastFull   atomic.Int64 // unix nanos of the current session's first map
}

func (n *node) hostinfo() *tailcfg.Hostinfo {
	return &tailcfg.Hostinfo{
		Hostname:   n.name,
		OS:         "linux",
		OSVersion:  "loadgen",
		IPNVersion: "1.102.5-loadgen",
		GoArch:     runtime.GOARCH,
	}
}

// url is the server this node talks to: with several, the (idx mod k)-th.
func (n *node) url() string {
	urls := n.r.urls
	return urls[int(n.idx)%len(urls)]
}

// client returns the node's Noise client, creating one if the last was
// dropped. A ts2021 client redials by itself when its connection ends.
func (n *node) client() (*ts2021.Client, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nc != nil {
		return n.nc, nil
	}
	nc, err := ts2021.NewClient(ts2021.ClientOpts{
		ServerURL:    n.url(),
		PrivKey:      n.machine,
		ServerPubKey: n.r.serverKey,
		Dialer:       tsdial.NewFromFuncForDebug(logger.Discard, n.dial),
		Logf:         logger.Discard,
		// The dialer asks a health tracker whether it dialed recently
		// (and prints a stack trace to stderr under CI when there is
		// none); each client keeps its own, as a tailscaled does.
		HealthTracker: new(health.Tracker),
	})
	if err != nil {
		return nil, err
	}
	if n.slow {
		// tailscaled (Go's HTTP/2 client) lets 4 MiB per stream be in
		// flight; on loopback the kernel buffers megabytes more. The slow
		// node allows 16 KiB, so once it stops reading the server's
		// writes to it block after a few hundred frames rather than tens
		// of thousands: the state the slow-reader phase is about.
		if tr, ok := nc.Client.Transport.(*http.Transport); ok {
			tr.HTTP2 = &http.HTTP2Config{MaxReceiveBufferPerStream: slowWindow}
		}
	}
	n.nc = nc
	return nc, nil
}

// dial opens the TCP connection under the Noise handshake, counting the
// bytes it receives and able to stop reading.
func (n *node) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	rc := &rxConn{Conn: c, n: n, closed: make(chan struct{})}
	rc.br = bufio.NewReaderSize(rawReader{rc}, 32<<10)
	return rc, nil
}

// rxConn counts received bytes and blocks reads while its node is paused.
// Reads go through a buffer: the Noise layer above reads each 4 KiB record
// in two small reads, which would otherwise be two system calls.
type rxConn struct {
	net.Conn
	n      *node
	once   sync.Once
	closed chan struct{}
	br     *bufio.Reader
}

// rawReader reads from the connection itself, for rxConn's buffer.
type rawReader struct{ c *rxConn }

func (r rawReader) Read(p []byte) (int, error) { return r.c.readRaw(p) }

func (c *rxConn) Read(p []byte) (int, error) { return c.br.Read(p) }

func (c *rxConn) readRaw(p []byte) (int, error) {
	if ch := c.n.paused.Load(); ch != nil {
		select {
		case <-*ch:
		case <-c.closed:
			return 0, net.ErrClosed
		}
	}
	k, err := c.Conn.Read(p)
	c.n.r.rxWire.Add(int64(k))
	return k, err
}

func (c *rxConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// pause makes the node stop reading from its connection; resume undoes it.
func (n *node) pause() {
	ch := make(chan struct{})
	n.paused.Store(&ch)
}

func (n *node) resume() {
	if ch := n.paused.Swap(nil); ch != nil {
		close(*ch)
	}
}

// drop closes the node's connection at once, as a network failure would,
// and forgets the session's peers; the map loop reconnects.
func (n *node) drop() {
	n.rmu.Lock()
	n.gen++
	n.resetLocked()
	n.rmu.Unlock()
	n.mu.Lock()
	nc := n.nc
	n.nc = nil
	n.mu.Unlock()
	if nc != nil {
		nc.Close()
	}
}

func (n *node) post(ctx context.Context, nc *ts2021.Client, path string, body any) (*http.Response, error) {
	return nc.Post(ctx, path, n.nodePub, body)
}

// register logs the node in with the pre-auth key.
func (n *node) register(ctx context.Context) error {
	nc, err := n.client()
	if err != nil {
		return err
	}
	req := tailcfg.RegisterRequest{
		Version:   tailcfg.CurrentCapabilityVersion,
		NodeKey:   n.nodePub,
		Hostinfo:  n.hostinfo(),
		Ephemeral: n.r.cfg.Ephemeral,
		Auth:      &tailcfg.RegisterResponseAuth{AuthKey: n.r.cfg.AuthKey},
	}
	res, err := n.post(ctx, nc, "/machine/register", req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("register: http %d: %.200s", res.StatusCode, strings.TrimSpace(string(b)))
	}
	var resp tailcfg.RegisterResponse
	if err := json.Unmarshal(b, &resp); err != nil {
		return fmt.Errorf("register: decoding response: %w", err)
	}
	if resp.Error != "" {
		return fmt.Errorf("register: %s", resp.Error)
	}
	if !resp.MachineAuthorized {
		return fmt.Errorf("register: node not authorized (auth URL %q): the key must be a pre-approved auth key", resp.AuthURL)
	}
	n.registered.Store(true)
	return nil
}

// mapRequest is the MapRequest tailscaled sends: streaming, or the
// non-streaming "lite" update (OmitPeers) that pushes new endpoints
// without disturbing the stream. The caller holds sendMu.
func (n *node) mapRequest(stream bool) *tailcfg.MapRequest {
	req := &tailcfg.MapRequest{
		Version:       tailcfg.CurrentCapabilityVersion,
		KeepAlive:     true,
		NodeKey:       n.nodePub,
		DiscoKey:      n.disco,
		Endpoints:     []netip.AddrPort{n.r.codec.endpoint(n.idx, n.seq)},
		EndpointTypes: []tailcfg.EndpointType{tailcfg.EndpointLocal},
		Stream:        stream,
		OmitPeers:     !stream,
		Hostinfo:      n.hostinfo(),
	}
	if n.r.cfg.Compress {
		req.Compress = "zstd"
	}
	return req
}

// sendEndpoints moves the node to its next endpoint and tells the server
// with a lite map update. record registers the change before the request
// goes out; it gets the new sequence number.
func (n *node) sendEndpoints(ctx context.Context, record func(seq int32) *change) (*change, error) {
	n.sendMu.Lock()
	defer n.sendMu.Unlock()
	if n.seq >= maxSeq {
		return nil, fmt.Errorf("node %d: endpoint sequence exhausted", n.idx)
	}
	n.seq++
	c := record(n.seq)
	req := n.mapRequest(false)
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return c, ctx.Err()
			case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
			}
		}
		var nc *ts2021.Client
		if nc, err = n.client(); err != nil {
			continue
		}
		var res *http.Response
		if res, err = n.post(ctx, nc, "/machine/map", req); err != nil {
			continue
		}
		io.Copy(io.Discard, io.LimitReader(res.Body, 1<<20))
		res.Body.Close()
		if res.StatusCode == http.StatusOK {
			return c, nil
		}
		return c, fmt.Errorf("endpoint update: http %d", res.StatusCode)
	}
	return c, err
}

// run keeps the node's map stream open until ctx ends, reconnecting when
// it breaks.
func (n *node) run(ctx context.Context) {
	defer n.r.wg.Done()
	var f frameInfo
	fails := 0
	for ctx.Err() == nil {
		var (
			got bool
			err error
		)
		if n.r.cfg.ProbeReconnect && n.sessions.Load() > 0 && !n.r.listening(ctx, n.url()) {
			err = errors.New("the server does not accept connections")
		} else {
			got, err = n.session(ctx, &f)
		}
		if ctx.Err() != nil {
			return
		}
		n.r.streamEnds.Add(1)
		if err != nil && n.r.cfg.Logf != nil && fails == 2 {
			n.r.logf("node %d: map stream: %v (retrying)", n.idx, err)
		}
		if got && !n.r.cfg.ProbeReconnect {
			fails = 0
			continue // reconnect at once, as after a network change
		}
		if got {
			// Probing at once could find the listener of a server that is
			// being killed still open; wait a moment (50-100 ms) first.
			fails = 0
		}
		fails++
		d := min(5*time.Second, 50*time.Millisecond<<min(fails, 10))
		d = d/2 + rand.N(d/2+1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

// session runs one streaming map request; got reports whether any frame
// arrived.
func (n *node) session(ctx context.Context, f *frameInfo) (got bool, err error) {
	n.rmu.Lock()
	n.gen++
	g := n.gen
	n.resetLocked()
	n.rmu.Unlock()
	defer func() {
		n.rmu.Lock()
		if n.gen == g {
			n.gen++
			n.resetLocked()
		}
		n.rmu.Unlock()
	}()

	nc, err := n.client()
	if err != nil {
		return false, err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n.sendMu.Lock()
	res, err := n.post(sctx, nc, "/machine/map", n.mapRequest(true))
	n.sendMu.Unlock()
	if err != nil {
		return false, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 1<<10))
		return false, fmt.Errorf("map: http %d: %.200s", res.StatusCode, strings.TrimSpace(string(b)))
	}
	n.sessions.Add(1)
	r := n.r
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(res.Body, hdr[:]); err != nil {
			return got, err
		}
		size := int(binary.LittleEndian.Uint32(hdr[:]))
		if size == 0 || size > r.cfg.MaxFrame {
			return got, fmt.Errorf("map frame of %d bytes", size)
		}
		// A big frame (a full map) waits for room in the memory budget
		// before it is read; meanwhile flow control holds the server back.
		cost := 0
		if size > bigFrame {
			cost = size * 4 // the frame, and room to decompress it
			r.frameMem.acquire(cost)
		}
		raw := r.getBuf(size)
		if _, err := io.ReadFull(res.Body, *raw); err != nil {
			r.putBuf(raw)
			r.frameMem.release(cost)
			return got, err
		}
		now := time.Now()
		got = true
		r.rxMap.Add(int64(4 + size))
		r.frames.Add(1)
		dec := r.getBuf(0)
		fi, st, err := r.memo.decodeMessage(*raw, r.cfg.Compress, r.cfg.MaxFrame, r.codec, f, dec)
		r.putBuf(raw)
		r.putBuf(dec)
		r.frameMem.release(cost)
		if err != nil {
			return got, err
		}
		r.rxJSON.Add(int64(st.decoded))
		n.apply(fi, g, now)
		continue
	}
}

// resetLocked forgets the session's peers (a new session starts from its
// full map). Endpoint sequence numbers are kept: a later session showing
// an older endpoint is a regression.
func (n *node) resetLocked() {
	clear(n.known)
	n.nKnown = 0
	clear(n.offline)
	n.nOffline = 0
	n.gotFull = false
	n.setConvLocked(false)
}

func (n *node) setConvLocked(c bool) {
	if c == n.conv {
		return
	}
	n.conv = c
	if c {
		n.r.converged.Add(1)
	} else {
		n.r.converged.Add(-1)
	}
}

// apply folds one decoded frame of session g into the node's state.
func (n *node) apply(f *frameInfo, g uint64, now time.Time) {
	r := n.r
	n.rmu.Lock()
	defer n.rmu.Unlock()
	if n.gen != g {
		return
	}
	if f.selfID != 0 && n.id != f.selfID {
		n.id = f.selfID
		r.learnID(f.selfID, n.idx)
	}
	if f.keepAlive && f.selfID == 0 && !f.full && len(f.changed)+len(f.removed)+len(f.patched) == 0 {
		return
	}
	if !n.gotFull {
		// The first map of a session is the full netmap, even when a
		// server omits an empty Peers list.
		n.gotFull = true
		n.fullMaps.Add(1)
		n.lastFull.Store(now.UnixNano())
	} else if f.full {
		n.fullMaps.Add(1)
	}
	if f.full {
		clear(n.known)
		n.nKnown = 0
		clear(n.offline)
		n.nOffline = 0
		for i := range f.peers {
			n.seeLocked(&f.peers[i], now)
			n.onlineLocked(&f.peers[i])
		}
	}
	for i := range f.changed {
		n.seeLocked(&f.changed[i], now)
		n.onlineLocked(&f.changed[i])
	}
	for _, id := range f.removed {
		if idx, ok := r.lookupID(id); ok && n.hasLocked(idx) {
			n.known[idx/64] &^= 1 << (idx % 64)
			n.nKnown--
			n.setOfflineLocked(idx, false)
		}
	}
	for i := range f.patched {
		n.seeLocked(&f.patched[i], now)
		n.onlineLocked(&f.patched[i])
	}
	n.setConvLocked(n.nKnown == len(r.nodes)-1)
}

func (n *node) hasLocked(idx int32) bool { return n.known[idx/64]&(1<<(idx%64)) != 0 }

// onlineLocked notes what a peer entry says of the peer's online status.
// As in tailscaled, an entry for a peer the node does not hold changes
// nothing. Patches carrying only Online name the peer by node ID.
func (n *node) onlineLocked(p *peerRef) {
	if p.online == 0 {
		return
	}
	idx := p.idx
	if idx < 0 {
		var ok bool
		if idx, ok = n.r.lookupID(p.id); !ok {
			return
		}
	}
	if int(idx) >= len(n.r.nodes) || idx == n.idx || !n.hasLocked(idx) {
		return
	}
	n.setOfflineLocked(idx, p.online < 0)
}

func (n *node) setOfflineLocked(idx int32, off bool) {
	was := n.offline[idx/64]&(1<<(idx%64)) != 0
	switch {
	case off && !was:
		n.offline[idx/64] |= 1 << (idx % 64)
		n.nOffline++
	case !off && was:
		n.offline[idx/64] &^= 1 << (idx % 64)
		n.nOffline--
	}
}

// offlinePeers is how many held peers the node's stream says are offline.
func (n *node) offlinePeers() int {
	n.rmu.Lock()
	defer n.rmu.Unlock()
	return n.nOffline
}

// seeLocked notes a peer entry: the peer is held, and a watched peer's
// endpoint may deliver changes.
func (n *node) seeLocked(p *peerRef, now time.Time) {
	r := n.r
	if p.idx < 0 || int(p.idx) >= len(r.nodes) || p.idx == n.idx {
		return
	}
	if !n.hasLocked(p.idx) {
		n.known[p.idx/64] |= 1 << (p.idx % 64)
		n.nKnown++
	}
	r.learnPeerID(p.id, p.idx)
	s := r.slotOf[p.idx]
	if s < 0 {
		return
	}
	last := n.seqs[s]
	switch {
	case p.seq < last:
		r.noteRegression(n.idx, p.idx, last, p.seq)
	case p.seq > last:
		n.seqs[s] = p.seq
		r.slots[s].deliver(max(last+1, 1), p.seq, n.idx, now)
	}
}

// caughtUp reports whether the node holds every peer and the newest
// acknowledged endpoint of every watched node.
func (n *node) caughtUp() bool {
	n.rmu.Lock()
	defer n.rmu.Unlock()
	if !n.conv {
		return false
	}
	for s, sl := range n.r.slots {
		if int16(s) != n.slot && n.seqs[s] < sl.acked.Load() {
			return false
		}
	}
	return true
}

// bigFrame is the size above which a frame counts against the budget.
const bigFrame = 64 << 10

// memBudget bounds the bytes held by big frames being read and decoded at
// once, so that a reconnect storm (every node receiving a full map at the
// same time) cannot exhaust the tool's memory.
type memBudget struct {
	mu   sync.Mutex
	cond *sync.Cond
	max  int
	used int
}

func newMemBudget(max int) *memBudget {
	b := &memBudget{max: max}
	b.cond = sync.NewCond(&b.mu)
	return b
}

// acquire waits for n bytes; a request larger than the whole budget gets
// it alone.
func (b *memBudget) acquire(n int) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	for b.used > 0 && b.used+n > b.max {
		b.cond.Wait()
	}
	b.used += n
	b.mu.Unlock()
}

func (b *memBudget) release(n int) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	b.cond.Broadcast()
}

// getBuf and putBuf recycle frame buffers across nodes.
func (r *runner) getBuf(size int) *[]byte {
	b, _ := r.bufs.Get().(*[]byte)
	if b == nil {
		b = new([]byte)
	}
	if cap(*b) < size {
		*b = make([]byte, size, max(size, 4096))
	}
	*b = (*b)[:size]
	return b
}

func (r *runner) putBuf(b *[]byte) {
	// Full maps of a big tailnet are rare and large: leave them to the
	// GC rather than keep one per reader in the pool.
	if cap(*b) > 256<<10 {
		return
	}
	r.bufs.Put(b)
}

// listening reports whether a plain TCP connection to the server's
// address succeeds within a second.
func (r *runner) listening(ctx context.Context, server string) bool {
	u, err := url.Parse(server)
	if err != nil {
		return true // let the real request report it
	}
	host := u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
