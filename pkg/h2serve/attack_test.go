//lint:file-ignore SA1019 the tests drive and compare against x/net's HTTP/2 client and server on single connections, which net/http does not expose

package h2serve

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The attack suite: hostile clients speak raw frames to a server on a
// loopback TCP connection, and each scenario checks the server's limits
// and that another client on another connection is still served. Every
// scenario runs against this package and against golang.org/x/net/http2's
// server given the same limits (the implementation the configuration can
// switch to), so a difference between them shows.

// impl is an HTTP/2 server implementation under test.
type impl struct {
	name    string
	builtin bool // this package
	serve   func(ctx context.Context, nc net.Conn, h http.Handler, l suiteLimits) error
}

// suiteLimits are the limits every implementation is given.
type suiteLimits struct {
	maxStreams         uint32
	idle, body, write  time.Duration
	maxHeaderListBytes int
	onLimit            func(string)
	maxBody            int64
}

func impls() []impl {
	return []impl{
		{name: "h2serve", builtin: true, serve: func(ctx context.Context, nc net.Conn, h http.Handler, l suiteLimits) error {
			return (&Server{
				Handler: h, MaxConcurrentStreams: l.maxStreams, IdleTimeout: l.idle,
				BodyTimeout: l.body, WriteTimeout: l.write, OnLimit: l.onLimit, MaxBodyBytes: l.maxBody,
			}).ServeConn(ctx, nc)
		}},
		{name: "x-net", serve: func(ctx context.Context, nc net.Conn, h http.Handler, l suiteLimits) error {
			srv := &http2.Server{MaxConcurrentStreams: l.maxStreams, IdleTimeout: l.idle, WriteByteTimeout: l.write}
			srv.ServeConn(nc, &http2.ServeConnOpts{Context: ctx, Handler: h, BaseConfig: &http.Server{
				ReadTimeout: l.body, MaxHeaderBytes: l.maxHeaderListBytes,
			}})
			return nc.Close()
		}},
	}
}

// env is one server under attack: every connection to addr is served by
// the implementation with the suite's handlers.
type env struct {
	t       *testing.T
	impl    impl
	addr    string
	release chan struct{} // /block and /sink handlers wait for it
	running atomic.Int32  // /block handlers running
	peak    atomic.Int32  // the most /block handlers running at once
	called  atomic.Int32  // handlers started
	writes  atomic.Int64  // writes the server made to its connections
	ended   chan string   // the client address of each connection served to the end
	once    sync.Once
	mu      sync.Mutex
	hits    map[string]int
	errs    []error // what ServeConn returned, per connection
}

// releaseAll lets the /block and /sink handlers go on.
func (e *env) releaseAll() { e.once.Do(func() { close(e.release) }) }

const suiteMaxStreams = 4

func newEnv(t *testing.T, im impl, l suiteLimits) *env {
	t.Helper()
	e := &env{t: t, impl: im, release: make(chan struct{}), ended: make(chan string, 64), hits: map[string]int{}}
	if l.maxStreams == 0 {
		l.maxStreams = suiteMaxStreams
	}
	if l.idle == 0 {
		l.idle = time.Minute
	}
	if l.body == 0 {
		l.body = time.Minute
	}
	if l.write == 0 {
		l.write = time.Minute
	}
	if l.maxHeaderListBytes == 0 {
		l.maxHeaderListBytes = maxHeaderListSize
	}
	l.onLimit = func(name string) {
		e.mu.Lock()
		e.hits[name]++
		e.mu.Unlock()
	}
	t.Cleanup(e.releaseAll)
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		e.called.Add(1)
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("/block", func(w http.ResponseWriter, r *http.Request) {
		e.called.Add(1)
		n := e.running.Add(1)
		for {
			p := e.peak.Load()
			if n <= p || e.peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-e.release // ignoring the request's context, as a slow handler does
		e.running.Add(-1)
	})
	mux.HandleFunc("/sink", func(w http.ResponseWriter, r *http.Request) {
		e.called.Add(1)
		<-e.release
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, n)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		e.called.Add(1)
		chunk := make([]byte, 64<<10)
		for range 512 { // 32 MiB: more than loopback buffers hold
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); ln.Close(); wg.Wait() })
	e.addr = ln.Addr().String()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				stop := context.AfterFunc(ctx, func() { nc.Close() })
				defer stop()
				err := im.serve(ctx, &countConn{Conn: nc, writes: &e.writes}, mux, l)
				e.mu.Lock()
				e.errs = append(e.errs, err)
				e.mu.Unlock()
				e.ended <- nc.RemoteAddr().String()
			}()
		}
	}()
	return e
}

// countConn counts the server's writes.
type countConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c *countConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// hitsNow is a copy of the limit hits so far.
func (e *env) hitsNow() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.hits)
}

func (e *env) hit(name string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.hits[name]
}

// checkOthersServed makes a request as a well-behaved client
// (golang.org/x/net's Transport) on a connection of its own.
func (e *env) checkOthersServed() {
	e.t.Helper()
	nc, err := net.Dial("tcp", e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	defer nc.Close()
	cc, err := (&http2.Transport{}).NewClientConn(nc)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://control/ok", nil)
	res, err := cc.RoundTrip(req)
	if err != nil {
		e.t.Fatalf("another client's request failed: %v", err)
	}
	defer res.Body.Close()
	if b, _ := io.ReadAll(res.Body); string(b) != "ok" {
		e.t.Fatalf("another client got %d %q", res.StatusCode, b)
	}
}

// waitEnded waits until ServeConn returns for the client connection nc.
func (e *env) waitEnded(nc net.Conn, what string) {
	e.t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case addr := <-e.ended:
			if addr == nc.LocalAddr().String() {
				return
			}
		case <-timeout:
			e.t.Fatalf("%s: the server kept the connection open", what)
		}
	}
}

// event is what the raw client saw of one frame (frames are only valid
// until the next read).
type event struct {
	typ    http2.FrameType
	id     uint32
	flags  http2.Flags
	code   http2.ErrCode
	inc    uint32
	data   [8]byte
	status string
}

func (ev event) String() string {
	return fmt.Sprintf("%v stream %d flags %v code %v", ev.typ, ev.id, ev.flags, ev.code)
}

// attacker speaks raw HTTP/2 frames. Writes gather in a buffer and go out
// together at flush (as an attacker packs them); a goroutine reads
// frames into events.
type attacker struct {
	t      *testing.T
	nc     net.Conn
	buf    bytes.Buffer
	fr     *http2.Framer // writes into buf
	enc    *hpack.Encoder
	hbuf   bytes.Buffer
	events chan event // closed when the connection ends
	read   bool       // frames are being read
	debug  func() string
	env    *env
	// readErr is why reading ended.
	readErr atomic.Value
}

// dialAttacker connects, sends the preface and SETTINGS (a big window
// unless stall), and reads frames unless stall.
func (e *env) dialAttacker(stall bool) *attacker {
	e.t.Helper()
	nc, err := net.Dial("tcp", e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { nc.Close() })
	a := &attacker{t: e.t, nc: nc, events: make(chan event, 1<<16), read: !stall, env: e}
	a.fr = http2.NewFramer(&a.buf, nil)
	a.fr.AllowIllegalWrites = true
	a.enc = hpack.NewEncoder(&a.hbuf)
	a.buf.WriteString(http2.ClientPreface)
	a.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})
	a.fr.WriteWindowUpdate(0, 1<<30)
	a.flush()
	if stall {
		return a
	}
	go func() {
		defer close(a.events)
		rfr := http2.NewFramer(nil, nc)
		rfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		for {
			f, err := rfr.ReadFrame()
			if err != nil {
				a.readErr.Store(err)
				return
			}
			ev := event{typ: f.Header().Type, id: f.Header().StreamID, flags: f.Header().Flags}
			switch f := f.(type) {
			case *http2.RSTStreamFrame:
				ev.code = f.ErrCode
			case *http2.GoAwayFrame:
				ev.code = f.ErrCode
			case *http2.WindowUpdateFrame:
				ev.inc = f.Increment
			case *http2.PingFrame:
				ev.data = f.Data
			case *http2.MetaHeadersFrame:
				ev.status = f.PseudoValue("status")
			}
			a.events <- ev
		}
	}()
	return a
}

func (a *attacker) flush() {
	a.nc.SetWriteDeadline(time.Now().Add(20 * time.Second))
	a.nc.Write(a.buf.Bytes()) // a server that hung up is not an error here
	a.buf.Reset()
}

// block encodes a request's header block.
func (a *attacker) block(method, path string, extra ...string) []byte {
	a.hbuf.Reset()
	for _, f := range [][2]string{{":method", method}, {":scheme", "http"}, {":authority", "control"}, {":path", path}} {
		a.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	for i := 0; i+1 < len(extra); i += 2 {
		a.enc.WriteField(hpack.HeaderField{Name: extra[i], Value: extra[i+1]})
	}
	return bytes.Clone(a.hbuf.Bytes())
}

func (a *attacker) headers(id uint32, method, path string, end bool, extra ...string) {
	a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: a.block(method, path, extra...), EndHeaders: true, EndStream: end})
}

func (a *attacker) raw(t http2.FrameType, flags http2.Flags, id uint32, payload []byte) {
	a.fr.WriteRawFrame(t, flags, id, payload)
}

// until reads events until match accepts one; it reports false if the
// connection ended first.
func (a *attacker) until(what string, match func(event) bool) bool {
	a.t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev, ok := <-a.events:
			if !ok {
				a.t.Logf("waiting for %s: the connection ended: %v", what, a.readErr.Load())
				if a.env != nil {
					time.Sleep(100 * time.Millisecond)
					a.env.mu.Lock()
					a.t.Logf("server: %v", a.env.errs)
					a.env.mu.Unlock()
				}
				return false
			}
			if match(ev) {
				return true
			}
		case <-timeout:
			if a.debug != nil {
				a.t.Log(a.debug())
			}
			a.t.Fatalf("no %s within 20s", what)
		}
	}
}

// expectGone waits for the connection to end: a GOAWAY with code (any
// code if want is nil) or the connection closing.
func (a *attacker) expectGone(want *http2.ErrCode) {
	a.t.Helper()
	a.until("GOAWAY or close", func(ev event) bool {
		if ev.typ != http2.FrameGoAway {
			return false
		}
		if want != nil && ev.code != *want {
			a.t.Fatalf("GOAWAY %v, want %v", ev.code, *want)
		}
		return true
	})
}

// ping sends a PING and waits for its ACK, so that everything sent
// before has been processed; it reports false if the connection ended.
func (a *attacker) ping(mark byte) bool {
	a.fr.WritePing(false, [8]byte{mark})
	a.flush()
	return a.until("PING ACK", func(ev event) bool { return ev.typ == http2.FramePing && ev.data[0] == mark })
}

func code(c http2.ErrCode) *http2.ErrCode { return &c }

func TestAttacks(t *testing.T) {
	tests := []struct {
		name   string
		limits suiteLimits
		run    func(t *testing.T, e *env)
	}{
		{"rapid reset", suiteLimits{}, func(t *testing.T, e *env) {
			a := e.dialAttacker(false)
			for i := range 500 {
				id := uint32(2*i + 1)
				a.headers(id, "GET", "/block", true)
				a.fr.WriteRSTStream(id, http2.ErrCodeCancel)
				if i%50 == 49 {
					a.flush()
				}
			}
			a.flush()
			a.expectGone(code(http2.ErrCodeEnhanceYourCalm))
			e.checkOthersServed()
			t.Logf("peak handlers %d, handlers started %d, limits hit %v", e.peak.Load(), e.called.Load(), e.hitsNow())
			if p := e.peak.Load(); p > suiteMaxStreams {
				t.Errorf("%d handlers ran at once on one connection, limit %d", p, suiteMaxStreams)
			}
			if e.impl.builtin && (e.hit(LimitRapidReset) != 1 || e.hit(LimitStreams) == 0) {
				t.Errorf("limits hit: %v", e.hitsNow())
			}
		}},
		{"stalled reader", suiteLimits{write: 300 * time.Millisecond}, func(t *testing.T, e *env) {
			a := e.dialAttacker(true)
			a.headers(1, "GET", "/big", true)
			a.flush()
			// Keep the server's reader writing too (PING ACKs), so the
			// write lock is wanted on every side.
			for i := range 200 {
				a.fr.WritePing(false, [8]byte{byte(i)})
			}
			a.flush()
			e.checkOthersServed()
			e.waitEnded(a.nc, "a client that stopped reading")
			if e.impl.builtin && e.hit(LimitWriteTimeout) == 0 {
				t.Errorf("limits hit: %v", e.hitsNow())
			}
		}},
		{"request bodies hold the window", suiteLimits{body: 3 * time.Second, maxStreams: 8}, func(t *testing.T, e *env) {
			a := e.dialAttacker(false)
			const streams = 8
			for i := range streams {
				a.headers(uint32(2*i+1), "POST", "/sink", false)
			}
			// Send bodies as flow control allows, until it allows no more.
			granted, sent := int64(65535), int64(0)
			perStream := make([]int64, streams)
			chunk := make([]byte, 16<<10)
			for {
				progress := false
				for i := range streams {
					if perStream[i] < 1<<20 && sent+int64(len(chunk)) <= granted {
						a.fr.WriteData(uint32(2*i+1), false, chunk)
						perStream[i] += int64(len(chunk))
						sent += int64(len(chunk))
						progress = true
					}
				}
				a.fr.WritePing(false, [8]byte{0xbb})
				a.flush()
				if !a.until("PING ACK", func(ev event) bool {
					if ev.typ == http2.FrameWindowUpdate && ev.id == 0 {
						granted += int64(ev.inc)
					}
					return ev.typ == http2.FramePing && ev.data[0] == 0xbb
				}) {
					t.Fatal("connection closed while sending bodies")
				}
				if !progress {
					break
				}
			}
			if sent >= streams<<20 || granted > connRecvWindow+65535 {
				t.Fatalf("unread bodies: %d bytes accepted, window granted %d; want the window to stop them", sent, granted)
			}
			// Bodies that do not complete are dropped (h2serve), or their
			// handlers' reads time out (x/net); either way the window
			// comes back and the streams are reset.
			e.releaseAll()
			resets := 0
			a.debug = func() string { return fmt.Sprintf("%d resets, %d granted, %d sent", resets, granted, sent) }
			a.until("the window back and the streams reset", func(ev event) bool {
				if ev.typ == http2.FrameWindowUpdate && ev.id == 0 {
					granted += int64(ev.inc)
				}
				if ev.typ == http2.FrameRSTStream {
					resets++
				}
				return resets == streams && granted >= sent+65535
			})
			t.Logf("%d resets, %d granted, %d sent", resets, granted, sent)
			e.checkOthersServed()
			if e.impl.builtin && e.hit(LimitBodyTimeout) != streams {
				t.Errorf("limits hit: %v", e.hitsNow())
			}
		}},
		{"header list too large", suiteLimits{}, func(t *testing.T, e *env) {
			a := e.dialAttacker(false)
			blk := a.block("GET", "/block", "x-big", strings.Repeat("a", 100<<10))
			a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:16384], EndStream: true})
			for rest := blk[16384:]; len(rest) > 0; {
				n := min(len(rest), 16384)
				a.fr.WriteContinuation(1, n == len(rest), rest[:n])
				rest = rest[n:]
			}
			a.flush()
			a.until("a refusal", func(ev event) bool {
				return (ev.typ == http2.FrameRSTStream && ev.id == 1) || ev.typ == http2.FrameGoAway || ev.status == "431"
			})
			e.checkOthersServed()
			if e.peak.Load() != 0 {
				t.Error("a request with 100 KiB of headers reached its handler")
			}
		}},
		{"CONTINUATION flood of table size updates", suiteLimits{}, func(t *testing.T, e *env) {
			a := e.dialAttacker(false)
			a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: a.block("GET", "/ok"), EndStream: true})
			for range 10000 {
				a.fr.WriteContinuation(1, false, []byte{0x20}) // dynamic table size update to 0: no field
			}
			a.flush()
			e.checkOthersServed()
			if e.impl.builtin {
				a.expectGone(code(http2.ErrCodeEnhanceYourCalm))
				if e.hit(LimitContinuation) != 1 {
					t.Errorf("limits hit: %v", e.hitsNow())
				}
			}
		}},
		{"SETTINGS flood", suiteLimits{}, func(t *testing.T, e *env) {
			a := e.dialAttacker(false)
			for range 5000 {
				a.fr.WriteSettings()
			}
			a.flush()
			e.checkOthersServed()
			if !e.impl.builtin {
				return
			}
			acks := 0
			a.until("GOAWAY", func(ev event) bool {
				if ev.typ == http2.FrameSettings && ev.flags.Has(http2.FlagSettingsAck) {
					acks++
				}
				return ev.typ == http2.FrameGoAway && ev.code == http2.ErrCodeEnhanceYourCalm
			})
			if acks > budgetBurst+10 || e.hit(LimitSettingsFlood) != 1 {
				t.Errorf("%d SETTINGS acknowledged; limits hit: %v", acks, e.hitsNow())
			}
		}},
		{"PING flood", suiteLimits{}, func(t *testing.T, e *env) {
			a := e.dialAttacker(false)
			before := e.writes.Load()
			for i := range 5000 {
				a.fr.WritePing(false, [8]byte{byte(i)})
			}
			a.flush()
			e.checkOthersServed()
			if !e.impl.builtin {
				return
			}
			acks := 0
			a.until("GOAWAY", func(ev event) bool {
				if ev.typ == http2.FramePing {
					acks++
				}
				return ev.typ == http2.FrameGoAway && ev.code == http2.ErrCodeEnhanceYourCalm
			})
			writes := e.writes.Load() - before - 1 // the other client's connection wrote too
			if acks > budgetBurst+10 || e.hit(LimitPingFlood) != 1 {
				t.Errorf("%d PINGs acknowledged; limits hit: %v", acks, e.hitsNow())
			}
			if int64(acks) < 4*writes {
				t.Errorf("%d PING ACKs took %d writes; want them merged", acks, writes)
			}
		}},
		{"WINDOW_UPDATE flood on a closed stream", suiteLimits{}, func(t *testing.T, e *env) {
			a := e.dialAttacker(false)
			a.headers(1, "GET", "/ok", true)
			a.flush()
			a.until("the response", func(ev event) bool { return ev.id == 1 && ev.flags.Has(http2.FlagDataEndStream) })
			for range 5000 {
				a.fr.WriteWindowUpdate(1, 1)
			}
			a.flush()
			e.checkOthersServed()
			if e.impl.builtin {
				a.expectGone(code(http2.ErrCodeEnhanceYourCalm))
				if e.hit(LimitWindowUpdateFlood) != 1 {
					t.Errorf("limits hit: %v", e.hitsNow())
				}
			}
		}},
		{"WINDOW_UPDATEs giving back a finished response's window", suiteLimits{}, func(t *testing.T, e *env) {
			// What a client does that reads a big response it buffered
			// after END_STREAM in small pieces (Go's transport under load):
			// one update per piece, far more than the frame budget, none
			// beyond what the response used.
			a := e.dialAttacker(false)
			a.headers(1, "GET", "/big", true)
			a.flush()
			a.until("the big response's end", func(ev event) bool { return ev.id == 1 && ev.flags.Has(http2.FlagDataEndStream) })
			for i := range 2000 { // 2000 × 16 KiB of the 32 MiB sent
				a.fr.WriteWindowUpdate(1, 16<<10)
				if i%100 == 99 {
					a.flush()
				}
			}
			a.flush()
			if !a.ping(1) {
				t.Fatalf("the connection ended; limits hit: %v", e.hitsNow())
			}
			a.headers(3, "GET", "/ok", true)
			a.flush()
			if !a.until("the next response", func(ev event) bool { return ev.id == 3 && ev.flags.Has(http2.FlagDataEndStream) }) {
				t.Fatalf("no next response; limits hit: %v", e.hitsNow())
			}
			if e.impl.builtin && len(e.hitsNow()) != 0 {
				t.Errorf("limits hit: %v", e.hitsNow())
			}
		}},
		{"empty DATA flood", suiteLimits{}, func(t *testing.T, e *env) {
			a := e.dialAttacker(false)
			a.headers(1, "POST", "/ok", false)
			for range 5000 {
				a.fr.WriteData(1, false, nil)
			}
			a.flush()
			e.checkOthersServed()
			if e.impl.builtin {
				a.expectGone(code(http2.ErrCodeEnhanceYourCalm))
				if e.hit(LimitEmptyFrameFlood) != 1 {
					t.Errorf("limits hit: %v", e.hitsNow())
				}
			}
		}},
		{"idle connection", suiteLimits{idle: 300 * time.Millisecond}, func(t *testing.T, e *env) {
			e.waitEnded(e.dialAttacker(false).nc, "an idle connection")
		}},
		{"silent connection", suiteLimits{idle: 300 * time.Millisecond}, func(t *testing.T, e *env) {
			nc, err := net.Dial("tcp", e.addr) // not even a preface
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			e.waitEnded(nc, "a connection that sent nothing")
		}},
		{"ACKs merged, each answered", suiteLimits{}, func(t *testing.T, e *env) {
			a := e.dialAttacker(false)
			if !a.ping(0xfe) { // the preface is answered
				t.Fatal("connection closed")
			}
			before := e.writes.Load()
			for i := range 100 {
				a.fr.WritePing(false, [8]byte{byte(i), 0xaa})
			}
			a.flush()
			next := 0
			a.until("100 PING ACKs", func(ev event) bool {
				if ev.typ == http2.FramePing {
					if ev.data != [8]byte{byte(next), 0xaa} {
						t.Fatalf("PING ACK %d has data %x", next, ev.data)
					}
					next++
				}
				return next == 100
			})
			if w := e.writes.Load() - before; e.impl.builtin && w > 25 {
				t.Errorf("100 PING ACKs took %d writes", w)
			}
		}},
	}
	for _, im := range impls() {
		for _, tt := range tests {
			t.Run(im.name+"/"+tt.name, func(t *testing.T) {
				tt.run(t, newEnv(t, im, tt.limits))
			})
		}
	}
}

// TestConformance sends what RFC 9113 says a server must reject (the
// server-side cases of an h2spec-style suite) and checks the error, or
// that what must be ignored is, against both implementations.
func TestConformance(t *testing.T) {
	type outcome int
	const (
		connErr   outcome = iota // GOAWAY with the code, or the connection closes
		streamErr                // RST_STREAM or GOAWAY with the code, or the connection closes
		ignored                  // a PING sent after is answered, nothing else goes wrong
	)
	settingsPayload := func(id http2.SettingID, v uint32) []byte {
		return []byte{byte(id >> 8), byte(id), byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
	}
	tests := []struct {
		name string
		send func(a *attacker)
		want outcome
		code http2.ErrCode
		// xnetLax: golang.org/x/net's server accepts this; only this
		// package is held to it.
		xnetLax bool
	}{
		{"4.1 unknown frame type", func(a *attacker) { a.raw(0x20, 0, 0, []byte("x")) }, ignored, 0, false},
		{"4.1 unknown flags on PING", func(a *attacker) { a.raw(http2.FramePing, 0x16, 0, make([]byte, 8)) }, ignored, 0, false},
		// Requests with a body go to /block: x/net's server starts a handler
		// before its body arrives, and one that answered at once would
		// have the stream reset (NO_ERROR) before the bad frame is read.
		{"4.2 DATA over the maximum frame size", func(a *attacker) {
			a.headers(1, "POST", "/block", false)
			a.raw(http2.FrameData, 0, 1, make([]byte, 1<<20+1)) // over x/net's 1 MiB too
		}, connErr, http2.ErrCodeFrameSize, false},
		{"4.3 invalid header block", func(a *attacker) {
			a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0xff, 0xff, 0xff, 0xff}, EndHeaders: true, EndStream: true})
		}, connErr, http2.ErrCodeCompression, false},
		{"5.1 DATA on an idle stream", func(a *attacker) { a.fr.WriteData(1, true, []byte("x")) }, connErr, http2.ErrCodeProtocol, false},
		{"5.1 RST_STREAM on an idle stream", func(a *attacker) { a.fr.WriteRSTStream(1, http2.ErrCodeCancel) }, connErr, http2.ErrCodeProtocol, false},
		{"5.1 WINDOW_UPDATE on an idle stream", func(a *attacker) { a.fr.WriteWindowUpdate(1, 100) }, connErr, http2.ErrCodeProtocol, false},
		{"5.1 CONTINUATION without HEADERS", func(a *attacker) { a.fr.WriteContinuation(1, true, a.block("GET", "/ok")) }, connErr, http2.ErrCodeProtocol, false},
		{"5.1 DATA on a half-closed stream", func(a *attacker) {
			a.headers(1, "GET", "/block", true)
			a.fr.WriteData(1, true, []byte("x"))
		}, streamErr, http2.ErrCodeStreamClosed, false},
		{"5.1.1 even stream ID", func(a *attacker) { a.headers(2, "GET", "/ok", true) }, connErr, http2.ErrCodeProtocol, false},
		{"5.1.1 stream ID going back", func(a *attacker) {
			a.headers(5, "GET", "/ok", true)
			a.headers(3, "GET", "/ok", true)
		}, connErr, http2.ErrCodeProtocol, false},
		{"5.3.1 stream depending on itself", func(a *attacker) {
			a.fr.WritePriority(1, http2.PriorityParam{StreamDep: 1, Weight: 1})
		}, streamErr, http2.ErrCodeProtocol, false},
		{"6.1 DATA on stream 0", func(a *attacker) { a.raw(http2.FrameData, 0, 0, []byte("x")) }, connErr, http2.ErrCodeProtocol, false},
		{"6.2 HEADERS on stream 0", func(a *attacker) {
			a.raw(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 0, a.block("GET", "/ok"))
		}, connErr, http2.ErrCodeProtocol, false},
		{"6.2 HEADERS then another frame mid-block", func(a *attacker) {
			a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: a.block("GET", "/ok"), EndStream: true})
			a.fr.WritePriority(1, http2.PriorityParam{StreamDep: 0, Weight: 1})
		}, connErr, http2.ErrCodeProtocol, false},
		{"6.3 PRIORITY of the wrong length", func(a *attacker) { a.raw(http2.FramePriority, 0, 1, make([]byte, 4)) }, streamErr, http2.ErrCodeFrameSize, false},
		{"6.4 RST_STREAM on stream 0", func(a *attacker) { a.raw(http2.FrameRSTStream, 0, 0, make([]byte, 4)) }, connErr, http2.ErrCodeProtocol, false},
		{"6.4 RST_STREAM of the wrong length", func(a *attacker) {
			a.headers(1, "GET", "/block", true)
			a.raw(http2.FrameRSTStream, 0, 1, make([]byte, 3))
		}, connErr, http2.ErrCodeFrameSize, false},
		{"6.5 SETTINGS ACK with a payload", func(a *attacker) {
			a.raw(http2.FrameSettings, http2.FlagSettingsAck, 0, make([]byte, 6))
		}, connErr, http2.ErrCodeFrameSize, false},
		{"6.5 SETTINGS on a stream", func(a *attacker) { a.raw(http2.FrameSettings, 0, 1, nil) }, connErr, http2.ErrCodeProtocol, false},
		{"6.5 SETTINGS of a bad length", func(a *attacker) { a.raw(http2.FrameSettings, 0, 0, make([]byte, 5)) }, connErr, http2.ErrCodeFrameSize, false},
		{"6.5.2 SETTINGS_ENABLE_PUSH 2", func(a *attacker) {
			a.raw(http2.FrameSettings, 0, 0, settingsPayload(http2.SettingEnablePush, 2))
		}, connErr, http2.ErrCodeProtocol, false},
		{"6.5.2 SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1", func(a *attacker) {
			a.raw(http2.FrameSettings, 0, 0, settingsPayload(http2.SettingInitialWindowSize, 1<<31))
		}, connErr, http2.ErrCodeFlowControl, false},
		{"6.5.2 SETTINGS_MAX_FRAME_SIZE too small", func(a *attacker) {
			a.raw(http2.FrameSettings, 0, 0, settingsPayload(http2.SettingMaxFrameSize, 100))
		}, connErr, http2.ErrCodeProtocol, false},
		{"6.5.2 unknown setting", func(a *attacker) { a.raw(http2.FrameSettings, 0, 0, settingsPayload(0xff, 1)) }, ignored, 0, false},
		{"6.7 PING on a stream", func(a *attacker) { a.raw(http2.FramePing, 0, 1, make([]byte, 8)) }, connErr, http2.ErrCodeProtocol, false},
		{"6.7 PING of the wrong length", func(a *attacker) { a.raw(http2.FramePing, 0, 0, make([]byte, 6)) }, connErr, http2.ErrCodeFrameSize, false},
		{"6.7 PING ACK not answered", func(a *attacker) { a.fr.WritePing(true, [8]byte{0x77}) }, ignored, 0, false},
		{"6.8 GOAWAY on a stream", func(a *attacker) { a.raw(http2.FrameGoAway, 0, 1, make([]byte, 8)) }, connErr, http2.ErrCodeProtocol, false},
		{"6.9 WINDOW_UPDATE of 0 on the connection", func(a *attacker) { a.raw(http2.FrameWindowUpdate, 0, 0, make([]byte, 4)) }, connErr, http2.ErrCodeProtocol, false},
		{"6.9 WINDOW_UPDATE of 0 on a stream", func(a *attacker) {
			a.headers(1, "GET", "/block", true)
			a.raw(http2.FrameWindowUpdate, 0, 1, make([]byte, 4))
		}, streamErr, http2.ErrCodeProtocol, false},
		{"6.9 WINDOW_UPDATE of the wrong length", func(a *attacker) { a.raw(http2.FrameWindowUpdate, 0, 0, make([]byte, 3)) }, connErr, http2.ErrCodeFrameSize, false},
		{"6.9.1 connection window over 2^31-1", func(a *attacker) {
			a.fr.WriteWindowUpdate(0, 1<<31-1)
			a.fr.WriteWindowUpdate(0, 1<<31-1)
		}, connErr, http2.ErrCodeFlowControl, false},
		{"6.9.1 stream window over 2^31-1", func(a *attacker) {
			a.headers(1, "GET", "/block", true)
			a.fr.WriteWindowUpdate(1, 1<<31-1)
		}, streamErr, http2.ErrCodeFlowControl, false},
		{"6.10 CONTINUATION on another stream", func(a *attacker) {
			a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: a.block("GET", "/ok"), EndStream: true})
			a.fr.WriteContinuation(3, true, nil)
		}, connErr, http2.ErrCodeProtocol, false},
		{"8.1 second HEADERS without END_STREAM", func(a *attacker) {
			a.headers(1, "POST", "/block", false)
			a.headers(1, "POST", "/block", false)
		}, streamErr, http2.ErrCodeProtocol, false},
		{"8.1.2 upper-case header name", func(a *attacker) { a.headers(1, "GET", "/ok", true, "X-Upper", "1") }, streamErr, http2.ErrCodeProtocol, false},
		{"8.1.2.1 unknown pseudo-header", func(a *attacker) { a.headers(1, "GET", "/ok", true, ":foo", "1") }, streamErr, http2.ErrCodeProtocol, false},
		{"8.1.2.1 response pseudo-header", func(a *attacker) { a.headers(1, "GET", "/ok", true, ":status", "200") }, streamErr, http2.ErrCodeProtocol, false},
		{"8.1.2.1 pseudo-header after a regular one", func(a *attacker) {
			a.headers(1, "GET", "/ok", true, "x-a", "1", ":scheme", "http")
		}, streamErr, http2.ErrCodeProtocol, false},
		{"8.1.2.1 pseudo-header in trailers", func(a *attacker) {
			a.headers(1, "POST", "/block", false)
			a.hbuf.Reset()
			a.enc.WriteField(hpack.HeaderField{Name: ":path", Value: "/"})
			a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: bytes.Clone(a.hbuf.Bytes()), EndHeaders: true, EndStream: true})
		}, streamErr, http2.ErrCodeProtocol, false},
		{"8.1.2.2 connection-specific header", func(a *attacker) { a.headers(1, "GET", "/ok", true, "connection", "keep-alive") }, streamErr, http2.ErrCodeProtocol, true},
		{"8.1.2.2 TE other than trailers", func(a *attacker) { a.headers(1, "GET", "/ok", true, "te", "gzip") }, streamErr, http2.ErrCodeProtocol, true},
		{"8.1.2.3 empty :path", func(a *attacker) {
			a.hbuf.Reset()
			for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "c"}, {":path", ""}} {
				a.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
			}
			a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: bytes.Clone(a.hbuf.Bytes()), EndHeaders: true, EndStream: true})
		}, streamErr, http2.ErrCodeProtocol, false},
		{"8.1.2.3 missing :scheme", func(a *attacker) {
			a.hbuf.Reset()
			for _, f := range [][2]string{{":method", "GET"}, {":authority", "c"}, {":path", "/ok"}} {
				a.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
			}
			a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: bytes.Clone(a.hbuf.Bytes()), EndHeaders: true, EndStream: true})
		}, streamErr, http2.ErrCodeProtocol, false},
		{"8.1.2.3 :method twice", func(a *attacker) { a.headers(1, "GET", "/ok", true, ":method", "GET") }, streamErr, http2.ErrCodeProtocol, false},
		{"8.1.2.6 content-length and body differ", func(a *attacker) {
			a.headers(1, "POST", "/block", false, "content-length", "10")
			a.fr.WriteData(1, true, []byte("short"))
		}, streamErr, http2.ErrCodeProtocol, true},
		{"8.4 PUSH_PROMISE from the client", func(a *attacker) {
			a.headers(1, "GET", "/block", true)
			a.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: a.block("GET", "/"), EndHeaders: true})
		}, connErr, http2.ErrCodeProtocol, false},
	}
	for _, im := range impls() {
		for _, tt := range tests {
			t.Run(im.name+"/"+tt.name, func(t *testing.T) {
				if tt.xnetLax && !im.builtin {
					t.Skip("golang.org/x/net's server accepts this")
				}
				e := newEnv(t, im, suiteLimits{})
				a := e.dialAttacker(false)
				if !a.ping(0xfe) {
					t.Fatal("connection closed after the preface")
				}
				tt.send(a)
				a.fr.WritePing(false, [8]byte{0xfd})
				a.flush()
				answered := a.until("the outcome", func(ev event) bool {
					switch {
					case ev.typ == http2.FramePing && ev.data[0] == 0xfd:
						if tt.want != ignored {
							t.Fatalf("the server went on without an error, want %v", tt.code)
						}
						return true
					case ev.typ == http2.FrameGoAway:
						if tt.want == ignored || ev.code != tt.code {
							t.Fatalf("GOAWAY %v, want %v (outcome %d)", ev.code, tt.code, tt.want)
						}
						return true
					case ev.typ == http2.FrameRSTStream:
						if tt.want != streamErr || ev.code != tt.code {
							t.Fatalf("RST_STREAM %v on stream %d, want %v (outcome %d)", ev.code, ev.id, tt.code, tt.want)
						}
						return true
					case ev.typ == http2.FramePing && ev.data[0] == 0x77:
						t.Fatal("a PING ACK was answered")
					}
					return false
				})
				if !answered && tt.want == ignored {
					t.Fatal("the connection closed")
				}
			})
		}
	}
}

// A stream opened before the client acknowledged the server's SETTINGS may
// carry the default window's 65,535 bytes, even when they arrive after the
// acknowledgement (Go's transport takes send window, then acknowledges,
// then writes): the body is answered 413, not reset. A stream opened after
// it is held to the advertised window.
func TestEarlyStreamWindow(t *testing.T) {
	e := newEnv(t, impls()[0], suiteLimits{maxBody: 1000})
	a := e.dialAttacker(false)
	a.headers(1, "POST", "/ok", false)
	a.flush()
	a.until("the server's SETTINGS", func(ev event) bool {
		return ev.typ == http2.FrameSettings && ev.flags&http2.FlagSettingsAck == 0
	})
	a.fr.WriteSettingsAck()
	a.fr.WriteData(1, true, make([]byte, 5000))
	a.headers(3, "POST", "/ok", false)
	a.fr.WriteData(3, true, make([]byte, 5000))
	a.flush()
	got := map[uint32]string{}
	a.until("answers on streams 1 and 3", func(ev event) bool {
		if got[ev.id] != "" {
			return false // the first answer counts
		}
		switch {
		case ev.typ == http2.FrameHeaders:
			got[ev.id] = "status " + ev.status
		case ev.typ == http2.FrameRSTStream:
			got[ev.id] = "reset " + ev.code.String()
		}
		return len(got) == 2
	})
	want := map[uint32]string{1: "status 413", 3: "reset FLOW_CONTROL_ERROR"}
	if !maps.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	e.checkOthersServed()
}
