// Package h2serve serves HTTP/2 requests on one already-established
// connection: the control protocol's Noise channel, where every connected
// node keeps one connection and one long-lived map stream.
//
// golang.org/x/net/http2's server spends, per connection, a goroutine
// that owns the connection, another that reads frames, a framer whose
// write buffer grows to 16 KiB and stays, and a 4 KiB buffer per
// response, and every write of a response crosses from the handler's
// goroutine to the connection's. At ten thousand nodes that is most of
// the server's memory and a fifth of its CPU. Here the goroutine that
// reads frames is the only one a connection owns, handlers write their
// frames themselves (one encrypted write per batch, under a mutex), and
// nothing bigger than a frame header is kept between writes.
//
// It speaks what the official clients (golang.org/x/net/http2's
// Transport) use: requests with bodies up to a limit, streamed responses,
// flow control in both directions, PING, RST_STREAM, SETTINGS and
// GOAWAY. Frames are parsed, and header blocks decoded, by
// golang.org/x/net/http2's Framer and hpack packages. Not supported:
// server push, request bodies streamed to a running handler (a request is
// dispatched once its body is complete), and trailers in responses.
package h2serve

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Server serves HTTP/2 connections with Handler. Its fields must not
// change once ServeConn has been called.
type Server struct {
	// Handler answers every request.
	Handler http.Handler
	// MaxBodyBytes bounds a request's body; a longer one is answered 413
	// (default 1 MiB).
	MaxBodyBytes int64
	// MaxConcurrentStreams bounds the requests in progress on one
	// connection (default 32); more are refused.
	MaxConcurrentStreams uint32
	// IdleTimeout closes a connection that has had no request in progress
	// for this long (0: never).
	IdleTimeout time.Duration
	// Logger receives protocol errors at debug level (default: discard).
	Logger *slog.Logger
}

const (
	defaultMaxBody    = 1 << 20
	defaultMaxStreams = 32
	// connRecvWindow is the connection-level window this side grants; it
	// is topped up as request bodies are handed to handlers.
	connRecvWindow = 4 << 20
	// bufferSize is how much a response buffers before sending, in a
	// buffer borrowed until the next send.
	bufferSize = 64 << 10
	// maxWindow is the largest flow-control window HTTP/2 allows.
	maxWindow = 1<<31 - 1
	// defaultMaxFrame is SETTINGS_MAX_FRAME_SIZE until the peer says.
	defaultMaxFrame = 16384
)

var (
	errStreamClosed = errors.New("h2serve: stream closed by the client")
	errConnClosed   = errors.New("h2serve: connection closed")
	errDeadline     = fmt.Errorf("h2serve: write deadline exceeded: %w", errDeadlineNet{})
)

// errDeadlineNet makes errDeadline a timeout to net.Error checks.
type errDeadlineNet struct{}

func (errDeadlineNet) Error() string   { return "i/o timeout" }
func (errDeadlineNet) Timeout() bool   { return true }
func (errDeadlineNet) Temporary() bool { return true }

// writeBufs lends a writer the buffer it frames a batch in.
var writeBufs = sync.Pool{New: func() any { return new([]byte) }}

// ServeConn serves HTTP/2 on nc until the client closes it, a protocol
// error ends it, it idles out or ctx ends. Handlers' requests carry a
// context derived from ctx. nc is closed on return.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) error {
	c := &conn{
		srv:        s,
		nc:         nc,
		log:        s.Logger,
		streams:    make(map[uint32]*stream),
		connWindow: 65535,
		initWindow: 65535,
		windowCh:   make(chan struct{}),
		maxBody:    s.MaxBodyBytes,
		maxStreams: s.MaxConcurrentStreams,
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.maxBody <= 0 {
		c.maxBody = defaultMaxBody
	}
	if c.maxStreams == 0 {
		c.maxStreams = defaultMaxStreams
	}
	c.maxFrame.Store(defaultMaxFrame)
	c.ctx, c.cancel = context.WithCancelCause(ctx)
	stop := context.AfterFunc(c.ctx, func() { nc.Close() })
	defer stop()
	defer c.close(errConnClosed)
	if s.IdleTimeout > 0 {
		c.idle = time.AfterFunc(s.IdleTimeout, c.idleCheck)
	}
	err := c.serve()
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

type conn struct {
	srv        *Server
	nc         net.Conn
	log        *slog.Logger
	ctx        context.Context
	cancel     context.CancelCauseFunc
	maxBody    int64
	maxStreams uint32
	idle       *time.Timer
	maxFrame   atomic.Uint32 // the peer's SETTINGS_MAX_FRAME_SIZE

	// Writing: one writer at a time; each batch is one nc.Write.
	wmu       sync.Mutex
	enc       *hpack.Encoder
	hbuf      bytes.Buffer // enc's output
	wdeadline time.Time    // nc's write deadline now
	werr      error        // the first failed write; the connection is dead

	// Streams and flow control.
	mu         sync.Mutex
	streams    map[uint32]*stream
	lastID     uint32
	connWindow int64         // bytes this side may still send on the connection
	initWindow int64         // the peer's SETTINGS_INITIAL_WINDOW_SIZE
	windowCh   chan struct{} // closed (and replaced) when a window grows
	waiting    int           // writers waiting on windowCh
	closed     bool

	// Read side, touched only by the serving goroutine.
	recvOwed int64 // connection window consumed and not yet returned
}

// stream is one request and its response; it is the handler's
// http.ResponseWriter.
type stream struct {
	c      *conn
	id     uint32
	ctx    context.Context
	cancel context.CancelFunc
	window int64 // guarded by c.mu: bytes this side may still send
	reset  bool  // guarded by c.mu: the client reset it, or it ended

	// Before dispatch, touched only by the serving goroutine.
	req        *http.Request
	body       []byte
	dispatched bool
	bodyOpen   bool // the client may still be sending (set before dispatch)

	// Response state, touched only by the handler's goroutine.
	hdr        http.Header
	status     int
	sentHeader bool
	ended      bool
	pending    []byte  // buffered response bytes, in pendingBuf
	pendingBuf *[]byte // borrowed from pendingBufs while pending is in use
	deadline   time.Time
}

func (c *conn) serve() error {
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c.nc, preface); err != nil {
		return fmt.Errorf("reading client preface: %w", err)
	}
	if string(preface) != http2.ClientPreface {
		return errors.New("not an HTTP/2 client preface")
	}
	fr := http2.NewFramer(nil, c.nc)
	fr.SetMaxReadFrameSize(defaultMaxFrame)
	fr.MaxHeaderListSize = 64 << 10
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	// Server preface: our settings, and a bigger connection window.
	c.writeControl(func(b []byte) []byte {
		b = appendFrameHeader(b, 24, http2.FrameSettings, 0, 0)
		// No header table: the client's encoder then indexes nothing, and
		// the decoder here keeps nothing per connection.
		b = appendSetting(b, http2.SettingHeaderTableSize, 0)
		b = appendSetting(b, http2.SettingMaxConcurrentStreams, c.maxStreams)
		b = appendSetting(b, http2.SettingInitialWindowSize, uint32(min(c.maxBody+1, maxWindow)))
		b = appendSetting(b, http2.SettingMaxHeaderListSize, fr.MaxHeaderListSize)
		return appendWindowUpdate(b, 0, connRecvWindow-65535)
	})
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.resetStream(se.StreamID, se.Code)
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return c.goAway(http2.ErrCode(ce), fmt.Errorf("reading frame: %w", err))
			}
			return err
		}
		if err := c.handle(f); err != nil {
			return err
		}
	}
}

// handle processes one frame; an error ends the connection.
func (c *conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.handleHeaders(f)
	case *http2.DataFrame:
		return c.handleData(f)
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		if err := c.applySettings(f); err != nil {
			return err
		}
		c.writeControl(func(b []byte) []byte {
			return appendFrameHeader(b, 0, http2.FrameSettings, http2.FlagSettingsAck, 0)
		})
	case *http2.WindowUpdateFrame:
		return c.handleWindowUpdate(f)
	case *http2.PingFrame:
		if !f.IsAck() {
			c.writeControl(func(b []byte) []byte {
				b = appendFrameHeader(b, 8, http2.FramePing, http2.FlagPingAck, 0)
				return append(b, f.Data[:]...)
			})
		}
	case *http2.RSTStreamFrame:
		c.forget(f.StreamID)
	case *http2.GoAwayFrame:
		// The client sends no new streams; those in progress finish.
	case *http2.PushPromiseFrame:
		return c.goAway(http2.ErrCodeProtocol, errors.New("client sent PUSH_PROMISE"))
	}
	// PRIORITY and unknown frame types are ignored.
	return nil
}

func (c *conn) applySettings(f *http2.SettingsFrame) error {
	return f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			code := http2.ErrCodeProtocol
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				code = http2.ErrCode(ce)
			}
			return c.goAway(code, fmt.Errorf("settings: %w", err))
		}
		switch s.ID {
		case http2.SettingMaxFrameSize:
			c.maxFrame.Store(s.Val)
		case http2.SettingInitialWindowSize:
			c.mu.Lock()
			delta := int64(s.Val) - c.initWindow
			c.initWindow = int64(s.Val)
			for _, st := range c.streams {
				st.window += delta
			}
			c.wakeLocked()
			c.mu.Unlock()
		}
		// Header table size: responses never index (table size 0), so
		// any limit holds. The rest do not concern a server.
		return nil
	})
}

func (c *conn) handleWindowUpdate(f *http2.WindowUpdateFrame) error {
	inc := int64(f.Increment)
	c.mu.Lock()
	if f.StreamID == 0 {
		if c.connWindow+inc > maxWindow {
			c.mu.Unlock()
			return c.goAway(http2.ErrCodeFlowControl, errors.New("connection window overflow"))
		}
		c.connWindow += inc
		c.wakeLocked()
		c.mu.Unlock()
		return nil
	}
	st := c.streams[f.StreamID]
	overflow := st != nil && st.window+inc > maxWindow
	if st != nil && !overflow {
		st.window += inc
		c.wakeLocked()
	}
	c.mu.Unlock()
	if overflow {
		c.resetStream(f.StreamID, http2.ErrCodeFlowControl)
	}
	return nil
}

func (c *conn) handleHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	st := c.streams[id]
	c.mu.Unlock()
	if st != nil {
		// Trailers: they end the request.
		if !f.StreamEnded() {
			return c.goAway(http2.ErrCodeProtocol, errors.New("HEADERS after the request's headers without END_STREAM"))
		}
		if !st.dispatched {
			c.dispatch(st, nil)
		}
		return nil
	}
	if id%2 == 0 || id <= c.lastID {
		return c.goAway(http2.ErrCodeProtocol, fmt.Errorf("HEADERS on stream %d (last %d)", id, c.lastID))
	}
	c.lastID = id
	c.mu.Lock()
	full := uint32(len(c.streams)) >= c.maxStreams
	c.mu.Unlock()
	if full {
		c.writeRST(id, http2.ErrCodeRefusedStream)
		return nil
	}
	if f.Truncated {
		c.writeRST(id, http2.ErrCodeProtocol)
		return nil
	}
	req, err := c.newRequest(f)
	if err != nil {
		c.log.Debug("bad request headers", "stream", id, "err", err)
		c.writeRST(id, http2.ErrCodeProtocol)
		return nil
	}
	st = &stream{c: c, id: id, req: req}
	st.ctx, st.cancel = context.WithCancel(c.ctx)
	c.mu.Lock()
	st.window = c.initWindow
	c.streams[id] = st
	if c.idle != nil {
		c.idle.Stop()
	}
	c.mu.Unlock()
	if f.StreamEnded() {
		c.dispatch(st, nil)
	}
	return nil
}

func (c *conn) newRequest(f *http2.MetaHeadersFrame) (*http.Request, error) {
	method, path := f.PseudoValue("method"), f.PseudoValue("path")
	if method == "" || method == http.MethodConnect || !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("unsupported request %q %q", method, path)
	}
	u, err := url.ParseRequestURI(path)
	if err != nil {
		return nil, fmt.Errorf("parsing path: %w", err)
	}
	h := make(http.Header, len(f.Fields))
	for _, hf := range f.RegularFields() {
		k := http.CanonicalHeaderKey(hf.Name)
		h[k] = append(h[k], hf.Value)
	}
	host := f.PseudoValue("authority")
	if host == "" {
		host = h.Get("Host")
	}
	return &http.Request{
		Method:     method,
		URL:        u,
		Proto:      "HTTP/2.0",
		ProtoMajor: 2,
		Header:     h,
		Host:       host,
		RequestURI: path,
		RemoteAddr: c.nc.RemoteAddr().String(),
	}, nil
}

func (c *conn) handleData(f *http2.DataFrame) error {
	id := f.StreamID
	n := int64(f.Length) // padding counts against the window too
	c.recvOwed += n
	c.mu.Lock()
	st := c.streams[id]
	c.mu.Unlock()
	if st == nil || st.dispatched {
		if id > c.lastID {
			return c.goAway(http2.ErrCodeProtocol, fmt.Errorf("DATA on idle stream %d", id))
		}
		// A reset or answered stream: the bytes are dropped.
		c.returnWindow()
		return nil
	}
	st.body = append(st.body, f.Data()...)
	if int64(len(st.body)) > c.maxBody {
		st.body = nil
		c.dispatch(st, tooLarge{})
		return nil
	}
	if f.StreamEnded() {
		c.dispatch(st, nil)
	}
	c.returnWindow()
	return nil
}

// returnWindow grants the client back the connection window its request
// bodies used, once half of it is used. What a connection buffers is
// bounded per stream instead: the stream window is the body limit plus
// one byte, and no stream window is ever returned.
func (c *conn) returnWindow() {
	if c.recvOwed < connRecvWindow/2 {
		return
	}
	owed := c.recvOwed
	c.recvOwed = 0
	c.writeControl(func(b []byte) []byte { return appendWindowUpdate(b, 0, uint32(owed)) })
}

// bodyReader is a request body that lets go of its bytes once read, so a
// long-lived request (a map stream) does not keep them.
type bodyReader struct{ b []byte }

func (r *bodyReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	if len(r.b) == 0 {
		r.b = nil
	}
	return n, nil
}

func (r *bodyReader) Close() error {
	r.b = nil
	return nil
}

type tooLarge struct{}

func (tooLarge) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
}

// dispatch runs the request's handler (h, or the server's) on its own
// goroutine.
func (c *conn) dispatch(st *stream, h http.Handler) {
	st.dispatched = true
	st.bodyOpen = h != nil // answered before the client finished sending
	req := st.req
	st.req = nil
	body := st.body
	st.body = nil
	req.ContentLength = int64(len(body))
	req.Body = http.NoBody
	if len(body) > 0 {
		req.Body = &bodyReader{b: body}
	}
	if h == nil {
		h = c.srv.Handler
	}
	go c.runHandler(st, h, req.WithContext(st.ctx))
}

func (c *conn) runHandler(st *stream, h http.Handler, req *http.Request) {
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				c.log.Error("panic serving request", "path", req.URL.Path, "panic", p)
			}
			c.endStream(st)
			c.writeRST(st.id, http2.ErrCodeInternal)
			st.cancel()
			return
		}
		st.finish()
	}()
	h.ServeHTTP(st, req)
}

// endStream forgets st: its response is complete or abandoned.
func (c *conn) endStream(st *stream) {
	c.mu.Lock()
	if c.streams[st.id] == st {
		delete(c.streams, st.id)
		c.idleLocked()
	}
	st.reset = true
	c.mu.Unlock()
}

// idleLocked starts the idle timer when the last stream ended.
func (c *conn) idleLocked() {
	if c.idle != nil && len(c.streams) == 0 && !c.closed {
		c.idle.Reset(c.srv.IdleTimeout)
	}
}

func (c *conn) idleCheck() {
	c.mu.Lock()
	idle := len(c.streams) == 0
	c.mu.Unlock()
	if idle {
		_ = c.goAway(http2.ErrCodeNo, errors.New("idle"))
		c.cancel(errors.New("h2serve: idle connection closed"))
	}
}

// wakeLocked wakes writers waiting for a window (or for the end).
func (c *conn) wakeLocked() {
	if c.waiting == 0 {
		return
	}
	c.waiting = 0
	close(c.windowCh)
	c.windowCh = make(chan struct{})
}

// close ends every stream in progress; their handlers see their contexts
// end and their writes fail.
func (c *conn) close(cause error) {
	c.mu.Lock()
	c.closed = true
	streams := c.streams
	c.streams = map[uint32]*stream{}
	for _, st := range streams {
		st.reset = true
	}
	c.wakeLocked()
	if c.idle != nil {
		c.idle.Stop()
	}
	c.mu.Unlock()
	c.cancel(cause)
	c.nc.Close()
}

// goAway tells the client why the connection ends and returns err.
func (c *conn) goAway(code http2.ErrCode, err error) error {
	c.log.Debug("closing HTTP/2 connection", "code", code, "err", err)
	c.writeControl(func(b []byte) []byte {
		b = appendFrameHeader(b, 8, http2.FrameGoAway, 0, 0)
		b = binary.BigEndian.AppendUint32(b, c.lastID)
		return binary.BigEndian.AppendUint32(b, uint32(code))
	})
	return err
}

// forget drops stream id, reset by either side, and ends its handler's
// context.
func (c *conn) forget(id uint32) {
	c.mu.Lock()
	st := c.streams[id]
	if st != nil {
		st.reset = true
		delete(c.streams, id)
		c.wakeLocked()
		c.idleLocked()
	}
	c.mu.Unlock()
	if st != nil {
		st.cancel()
	}
}

// resetStream forgets stream id and tells the client.
func (c *conn) resetStream(id uint32, code http2.ErrCode) {
	c.forget(id)
	c.writeRST(id, code)
}

func (c *conn) writeRST(id uint32, code http2.ErrCode) {
	c.writeControl(func(b []byte) []byte {
		b = appendFrameHeader(b, 4, http2.FrameRSTStream, 0, id)
		return binary.BigEndian.AppendUint32(b, uint32(code))
	})
}

// writeControl writes the frames build appends, ignoring errors (a dead
// connection is noticed by the reader).
func (c *conn) writeControl(build func([]byte) []byte) {
	var buf [64]byte
	b := build(buf[:0])
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return
	}
	if !c.wdeadline.IsZero() {
		c.wdeadline = time.Time{}
		c.nc.SetWriteDeadline(c.wdeadline)
	}
	if _, err := c.nc.Write(b); err != nil {
		c.failLocked(err)
	}
}

func (c *conn) failLocked(err error) {
	c.werr = err
	// A partly written frame leaves the connection unusable.
	c.nc.Close()
}

// reserve waits until st may send some of want bytes, and takes up to want
// from its window and the connection's.
func (st *stream) reserve(want int) (int, error) {
	c := st.c
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		c.mu.Lock()
		if st.reset {
			c.mu.Unlock()
			return 0, errStreamClosed
		}
		avail := min(st.window, c.connWindow, int64(want))
		if avail > 0 {
			st.window -= avail
			c.connWindow -= avail
			c.mu.Unlock()
			return int(avail), nil
		}
		wake := c.windowCh
		c.waiting++
		c.mu.Unlock()
		var expired <-chan time.Time
		if !st.deadline.IsZero() {
			d := time.Until(st.deadline)
			if d <= 0 {
				return 0, errDeadline
			}
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			expired = timer.C
		}
		select {
		case <-wake:
		case <-st.ctx.Done():
			return 0, errStreamClosed
		case <-expired:
			return 0, errDeadline
		}
	}
}

// send writes a and then b as the stream's next DATA, preceded by the
// response headers if they are not out yet, and ends the stream if end.
func (st *stream) send(a, b []byte, end bool) error {
	for {
		n := len(a) + len(b)
		if n > 0 {
			var err error
			if n, err = st.reserve(n); err != nil {
				return err
			}
		}
		var chunk [2][]byte
		k := min(n, len(a))
		chunk[0], a = a[:k], a[k:]
		chunk[1], b = b[:n-k], b[n-k:]
		last := len(a)+len(b) == 0
		if err := st.c.writeFrames(st, chunk, end && last); err != nil {
			return err
		}
		if last {
			return nil
		}
	}
}

// writeFrames writes the response headers (if not yet sent) and data as
// DATA frames, with one write to the connection.
func (c *conn) writeFrames(st *stream, data [2][]byte, end bool) error {
	bp := writeBufs.Get().(*[]byte)
	defer writeBufs.Put(bp)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return fmt.Errorf("h2serve: connection failed: %w", c.werr)
	}
	maxFrame := int(c.maxFrame.Load())
	size := len(data[0]) + len(data[1])
	buf := (*bp)[:0]
	if !st.sentHeader {
		st.sentHeader = true
		flags := http2.FlagHeadersEndHeaders
		if end && size == 0 {
			flags |= http2.FlagHeadersEndStream
		}
		block := c.encodeHeaders(st)
		st.hdr = nil // sent: a long response keeps no header map
		if len(block) > maxFrame {
			return errors.New("h2serve: response header block too large")
		}
		buf = appendFrameHeader(buf, len(block), http2.FrameHeaders, flags, st.id)
		buf = append(buf, block...)
		if end && size == 0 {
			st.ended = true
		}
	}
	for size > 0 || (end && !st.ended) {
		n := min(size, maxFrame)
		var flags http2.Flags
		if n == size && end {
			flags = http2.FlagDataEndStream
			st.ended = true
		}
		buf = appendFrameHeader(buf, n, http2.FrameData, flags, st.id)
		for n > 0 {
			k := min(n, len(data[0]))
			if k == 0 {
				data[0], data[1] = data[1], nil
				continue
			}
			buf = append(buf, data[0][:k]...)
			data[0] = data[0][k:]
			n -= k
			size -= k
		}
		if len(buf) >= maxWriteBuf && size > 0 {
			// A big response goes out in pieces: the buffer stays small.
			if err := c.writeLocked(st, buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
	}
	*bp = buf
	return c.writeLocked(st, buf)
}

// maxWriteBuf is about how much writeFrames frames before writing.
const maxWriteBuf = 64 << 10

func (c *conn) writeLocked(st *stream, buf []byte) error {
	if !st.deadline.Equal(c.wdeadline) {
		c.wdeadline = st.deadline
		c.nc.SetWriteDeadline(c.wdeadline)
	}
	if _, err := c.nc.Write(buf); err != nil {
		c.failLocked(err)
		return fmt.Errorf("h2serve: writing: %w", err)
	}
	return nil
}

// encodeHeaders returns st's response header block; it is valid until the
// next call (c.wmu held).
func (c *conn) encodeHeaders(st *stream) []byte {
	c.hbuf.Reset()
	if c.enc == nil {
		c.enc = hpack.NewEncoder(&c.hbuf)
		// Never index: nothing to remember per connection.
		c.enc.SetMaxDynamicTableSizeLimit(0)
	}
	status := st.status
	if status == 0 {
		status = http.StatusOK
	}
	c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(status)})
	for k, vs := range st.hdr {
		lk := strings.ToLower(k)
		switch lk {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			continue
		}
		for _, v := range vs {
			c.enc.WriteField(hpack.HeaderField{Name: lk, Value: v})
		}
	}
	return c.hbuf.Bytes()
}

// Header implements http.ResponseWriter.
func (st *stream) Header() http.Header {
	if st.hdr == nil {
		st.hdr = make(http.Header)
	}
	return st.hdr
}

// WriteHeader implements http.ResponseWriter.
func (st *stream) WriteHeader(code int) {
	if st.status != 0 || code < 200 {
		return
	}
	st.status = code
}

// Write implements http.ResponseWriter. Writes are buffered (up to
// bufferSize) until Flush, the handler's return or a write that does not
// fit, which is sent with what is buffered.
func (st *stream) Write(b []byte) (int, error) {
	if st.status == 0 {
		st.status = http.StatusOK
	}
	if st.ended {
		return 0, errors.New("h2serve: write after the response ended")
	}
	if len(st.pending)+len(b) <= bufferSize {
		if st.pending == nil {
			st.pendingBuf = pendingBufs.Get().(*[]byte)
			st.pending = (*st.pendingBuf)[:0]
		}
		st.pending = append(st.pending, b...)
		return len(b), nil
	}
	err := st.send(st.pending, b, false)
	st.release()
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

// pendingBufs lends a response its buffer between sends, so an idle
// stream keeps none.
var pendingBufs = sync.Pool{New: func() any { b := make([]byte, 0, bufferSize); return &b }}

// release returns the response's buffer.
func (st *stream) release() {
	if st.pendingBuf != nil {
		pendingBufs.Put(st.pendingBuf)
		st.pendingBuf = nil
	}
	st.pending = nil
}

// FlushError sends what is buffered (and the headers); it serves
// http.ResponseController.Flush.
func (st *stream) FlushError() error {
	if st.ended || (st.sentHeader && len(st.pending) == 0) {
		return nil
	}
	if st.status == 0 {
		st.status = http.StatusOK
	}
	err := st.send(st.pending, nil, false)
	st.release()
	return err
}

// Flush implements http.Flusher.
func (st *stream) Flush() { _ = st.FlushError() }

// SetWriteDeadline bounds how long the response's writes may block; it
// serves http.ResponseController.SetWriteDeadline. A write that misses
// it closes the connection (a frame may be half written).
func (st *stream) SetWriteDeadline(t time.Time) error {
	st.deadline = t
	return nil
}

// finish ends the response after its handler returned.
func (st *stream) finish() {
	c := st.c
	c.mu.Lock()
	reset := st.reset
	c.mu.Unlock()
	if !reset && !st.ended {
		if err := st.send(st.pending, nil, true); err != nil {
			c.log.Debug("ending response", "stream", st.id, "err", err)
		}
		if st.bodyOpen {
			// Stop the rest of the request body.
			c.writeRST(st.id, http2.ErrCodeNo)
		}
	}
	st.release()
	c.endStream(st)
	st.cancel()
}

func appendFrameHeader(b []byte, length int, t http2.FrameType, flags http2.Flags, id uint32) []byte {
	return append(b, byte(length>>16), byte(length>>8), byte(length), byte(t), byte(flags),
		byte(id>>24)&0x7f, byte(id>>16), byte(id>>8), byte(id))
}

func appendSetting(b []byte, id http2.SettingID, v uint32) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(id))
	return binary.BigEndian.AppendUint32(b, v)
}

func appendWindowUpdate(b []byte, id, inc uint32) []byte {
	b = appendFrameHeader(b, 4, http2.FrameWindowUpdate, 0, id)
	return binary.BigEndian.AppendUint32(b, inc&0x7fffffff)
}
