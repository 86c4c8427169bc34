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
// GOAWAY. Frames are parsed by golang.org/x/net/http2's Framer and header
// blocks decoded by its hpack package. Not supported: server push,
// request bodies streamed to a running handler (a request is dispatched
// once its body is complete), and trailers in responses.
//
// A hostile client is bounded: a handler counts against
// MaxConcurrentStreams until it returns, even when its stream was reset
// (the "rapid reset" attack), and a client that keeps opening streams
// over the limit is told to go away; request bodies hold the connection's
// flow-control window until their handler reads them and must arrive
// within BodyTimeout; every write has a deadline (WriteTimeout at most);
// header blocks, CONTINUATION chains and the rate of PING, SETTINGS and
// other frames that only cost the server work are bounded. Each limit
// hit is reported to OnLimit with a fixed name (the h2_* constants).
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

	"golang.org/x/net/http/httpguts"
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
	// connection, counting a handler until it returns (default 32); more
	// are refused, and a client refused too often is sent GOAWAY.
	MaxConcurrentStreams uint32
	// IdleTimeout closes a connection that has had no request in progress
	// for this long (0: never).
	IdleTimeout time.Duration
	// BodyTimeout drops a request whose body is not complete this long
	// after its headers (default 30s).
	BodyTimeout time.Duration
	// WriteTimeout bounds every write to the connection, and a response's
	// wait for flow-control window, when its handler set no earlier
	// deadline (default 30s). A write that misses it closes the
	// connection.
	WriteTimeout time.Duration
	// Logger receives protocol errors at debug level (default: discard).
	Logger *slog.Logger
	// OnLimit, if set, is called each time a protective limit refuses,
	// slows or closes something, with the limit's name (one of the Limit*
	// constants). It must be cheap and safe for concurrent use.
	OnLimit func(limit string)
}

// Names of the protective limits, as passed to Server.OnLimit.
const (
	// LimitStreams: a stream was refused (RST_STREAM REFUSED_STREAM)
	// because MaxConcurrentStreams handlers were running.
	LimitStreams = "h2_streams"
	// LimitRapidReset: a connection kept opening streams over the limit
	// and was sent GOAWAY ENHANCE_YOUR_CALM.
	LimitRapidReset = "h2_rapid_reset"
	// LimitBodyTimeout: a request body did not arrive within BodyTimeout
	// and the stream was reset.
	LimitBodyTimeout = "h2_body_timeout"
	// LimitFlowControl: the client sent more than the window it was
	// granted; the connection or stream ended with FLOW_CONTROL_ERROR.
	LimitFlowControl = "h2_flow_control"
	// LimitHeaderSize: a header list was over 64 KiB decoded (the stream
	// is refused) or its block over 128 KiB encoded (the connection ends).
	LimitHeaderSize = "h2_header_size"
	// LimitContinuation: a header block came in more than 16 CONTINUATION
	// frames; the connection ends.
	LimitContinuation = "h2_continuation"
	// LimitPingFlood, LimitSettingsFlood, LimitWindowUpdateFlood and
	// LimitEmptyFrameFlood: the client sent more frames of that kind
	// (PING, SETTINGS, WINDOW_UPDATE for streams that are gone, or empty
	// DATA, PRIORITY and unknown frames) than the connection's frame budget
	// allows; the connection ends with GOAWAY ENHANCE_YOUR_CALM.
	LimitPingFlood         = "h2_ping_flood"
	LimitSettingsFlood     = "h2_settings_flood"
	LimitWindowUpdateFlood = "h2_window_update_flood"
	LimitEmptyFrameFlood   = "h2_empty_frame_flood"
	// LimitWriteTimeout: a write to the connection missed its deadline
	// (the peer stopped reading); the connection is closed.
	LimitWriteTimeout = "h2_write_timeout"
)

const (
	defaultMaxBody      = 1 << 20
	defaultMaxStreams   = 32
	defaultBodyTimeout  = 30 * time.Second
	defaultWriteTimeout = 30 * time.Second
	// connRecvWindow is the connection-level window this side grants; it
	// is returned as handlers read request bodies, so it also bounds the
	// request bytes a connection can make the server hold.
	connRecvWindow = 4 << 20
	// bufferSize is how much a response buffers before sending, in a
	// buffer borrowed until the next send.
	bufferSize = 64 << 10
	// maxWindow is the largest flow-control window HTTP/2 allows.
	maxWindow = 1<<31 - 1
	// defaultMaxFrame is SETTINGS_MAX_FRAME_SIZE until the peer says.
	defaultMaxFrame = 16384
	// maxHeaderListSize bounds a request's decoded header list (as
	// HTTP/2 counts it: name, value and 32 bytes per field).
	maxHeaderListSize = 64 << 10
	// maxHeaderBlock bounds a header block as sent, and maxContinuations
	// the CONTINUATION frames it may take: HPACK instructions that decode
	// to no field (table size updates) count here and nowhere else.
	maxHeaderBlock   = 2 * maxHeaderListSize
	maxContinuations = 16
	// The frame budget: frames that cost the server work without
	// carrying a request (PING, SETTINGS, WINDOW_UPDATEs for closed
	// streams, empty frames) each take a token; tokens come back at budgetRate per
	// second up to budgetBurst. Well-behaved clients send a few per
	// minute.
	budgetBurst = 512
	budgetRate  = 20
	// minChunk is the smallest DATA a response sends while it has more
	// to send: a client that grants its window a few bytes at a time
	// does not get a frame (and a write) per grant.
	minChunk = 1024
	// maxCtlBuf is how many bytes of control frames (ACKs, resets,
	// window updates) the reading goroutine gathers before writing them.
	maxCtlBuf = 4 << 10
	// goAwayLinger is how long a connection ended by an error keeps
	// reading (and discarding) so that its GOAWAY reaches the client
	// instead of being lost to a TCP reset; lingerBytes bounds it too.
	goAwayLinger = time.Second
	lingerBytes  = 256 << 10
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
		srv:          s,
		nc:           nc,
		log:          s.Logger,
		streams:      make(map[uint32]*stream),
		connWindow:   65535,
		initWindow:   65535,
		windowCh:     make(chan struct{}),
		maxBody:      s.MaxBodyBytes,
		maxStreams:   s.MaxConcurrentStreams,
		bodyTimeout:  s.BodyTimeout,
		writeTimeout: s.WriteTimeout,
		recvAvail:    65535,
		tokens:       budgetBurst,
	}
	c.ra.nc = nc
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.maxBody <= 0 {
		c.maxBody = defaultMaxBody
	}
	if c.maxStreams == 0 {
		c.maxStreams = defaultMaxStreams
	}
	if c.bodyTimeout <= 0 {
		c.bodyTimeout = defaultBodyTimeout
	}
	if c.writeTimeout <= 0 {
		c.writeTimeout = defaultWriteTimeout
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
	c.flushControl()
	if c.lingering {
		c.linger()
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

type conn struct {
	srv          *Server
	nc           net.Conn
	log          *slog.Logger
	ctx          context.Context
	cancel       context.CancelCauseFunc
	maxBody      int64
	maxStreams   uint32
	bodyTimeout  time.Duration
	writeTimeout time.Duration
	idle         *time.Timer
	maxFrame     atomic.Uint32 // the peer's SETTINGS_MAX_FRAME_SIZE
	lastID       atomic.Uint32 // the highest stream the client opened

	// Writing: one writer at a time; each batch is one nc.Write.
	wmu       sync.Mutex
	enc       *hpack.Encoder
	hbuf      bytes.Buffer // enc's output
	wdeadline time.Time    // nc's write deadline now
	werr      error        // the first failed write; the connection is dead

	// Streams and flow control.
	mu         sync.Mutex
	streams    map[uint32]*stream
	active     uint32        // streams receiving a body plus handlers running
	connWindow int64         // bytes this side may still send on the connection
	initWindow int64         // the peer's SETTINGS_INITIAL_WINDOW_SIZE
	windowCh   chan struct{} // closed (and replaced) when a window grows
	waiting    int           // writers waiting on windowCh
	closed     bool
	recvAvail  int64 // bytes the client may still send on the connection
	recvOwed   int64 // of those received, consumed and not yet granted again
	refused    int   // streams refused since a response last completed
	// ended are the last streams whose handlers returned with window the
	// client may still give back (see handleWindowUpdate), oldest first
	// replaced.
	ended     [4]endedStream
	endedNext int
	bodyTimer *time.Timer // drops requests whose body is late (made on first use)
	bodyArmed bool        // bodyTimer is set to fire

	// Read side, touched only by the serving goroutine.
	ra        readAhead
	dec       *hpack.Decoder
	hdr       headerBlock
	ctl       []byte  // control frames gathered for one write
	ctlBuf    *[]byte // ctl's pooled buffer
	tokens    float64 // the frame budget (see budgetBurst)
	tokensAt  time.Time
	lingering bool // a GOAWAY with an error was sent
	// settingsAcked: the client acknowledged this side's SETTINGS, so its
	// stream windows are the one advertised.
	settingsAcked bool
}

// endedStream is a stream that ended with owed bytes of its window used
// by the response: WINDOW_UPDATEs the client sends for it while it reads
// what it buffered are free up to that much.
type endedStream struct {
	id   uint32
	owed int64
}

// headerBlock is the header block being received and decoded.
type headerBlock struct {
	stream  uint32
	end     bool   // the HEADERS frame had END_STREAM
	frags   []byte // fragments so far, when it spans frames
	conts   int    // CONTINUATION frames so far
	fields  []hpack.HeaderField
	size    uint32 // decoded size, as HTTP/2 counts it
	regular bool   // a regular field was seen (pseudo ones must come first)
	bad     error  // the first invalid field
	trunc   bool   // over maxHeaderListSize
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

	// Before dispatch, guarded by c.mu (the serving goroutine appends,
	// the body timer may drop).
	req          *http.Request
	body         []byte
	bodyDeadline time.Time // while the body is awaited
	waitBody     bool
	wantLen      int64 // content-length, or -1
	recvd        int64 // DATA payload bytes received, for the stream window
	// early: opened before the client acknowledged this side's SETTINGS,
	// so it may have taken send window under the default initial window.
	early bool

	// Touched only by the serving goroutine.
	dispatched bool
	bodyOpen   bool // answered before the client finished sending

	// Response state, touched only by the handler's goroutine.
	hdr        http.Header
	status     int
	sentHeader bool
	ended      bool
	failed     bool // a write failed: the response cannot be ended
	// done is ended as the serving goroutine sees it: set once END_STREAM
	// is framed, so WINDOW_UPDATEs that arrive before the handler returns
	// are treated like those for a forgotten stream (free while they give
	// back window the response used, charged beyond).
	done       atomic.Bool
	pending    []byte  // buffered response bytes, in pendingBuf
	pendingBuf *[]byte // borrowed from pendingBufs while pending is in use
	deadline   time.Time
}

func (c *conn) limit(name string) {
	if c.srv.OnLimit != nil {
		c.srv.OnLimit(name)
	}
}

func (c *conn) serve() error {
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c.nc, preface); err != nil {
		return fmt.Errorf("reading client preface: %w", err)
	}
	if string(preface) != http2.ClientPreface {
		return errors.New("not an HTTP/2 client preface")
	}
	fr := http2.NewFramer(nil, &c.ra)
	fr.SetMaxReadFrameSize(defaultMaxFrame)
	fr.SetReuseFrames()
	c.dec = hpack.NewDecoder(4096, c.emit)
	c.dec.SetMaxStringLength(maxHeaderListSize)
	// Server preface: our settings, and a bigger connection window.
	c.queueControl(func(b []byte) []byte {
		b = appendFrameHeader(b, 24, http2.FrameSettings, 0, 0)
		// No header table: the client's encoder then indexes nothing, and
		// the decoder here keeps nothing per connection.
		b = appendSetting(b, http2.SettingHeaderTableSize, 0)
		b = appendSetting(b, http2.SettingMaxConcurrentStreams, c.maxStreams)
		b = appendSetting(b, http2.SettingInitialWindowSize, uint32(min(c.maxBody+1, maxWindow)))
		b = appendSetting(b, http2.SettingMaxHeaderListSize, maxHeaderListSize)
		return appendWindowUpdate(b, 0, connRecvWindow-65535)
	})
	c.mu.Lock()
	c.recvAvail = connRecvWindow
	c.mu.Unlock()
	for {
		c.ra.first = true
		if len(c.ra.b) < 9 {
			// Nothing more is waiting to be read: answer what was.
			c.flushControl()
		}
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
			if errors.Is(err, http2.ErrFrameTooLarge) {
				return c.goAway(http2.ErrCodeFrameSize, err)
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
	case *http2.DataFrame:
		return c.handleData(f)
	case *http2.HeadersFrame:
		return c.handleHeaders(f)
	case *http2.ContinuationFrame:
		return c.handleContinuation(f)
	case *http2.SettingsFrame:
		if f.IsAck() {
			c.settingsAcked = true
			return nil
		}
		if !c.spend() {
			return c.calm(LimitSettingsFlood)
		}
		if err := c.applySettings(f); err != nil {
			return err
		}
		c.queueControl(func(b []byte) []byte {
			return appendFrameHeader(b, 0, http2.FrameSettings, http2.FlagSettingsAck, 0)
		})
	case *http2.WindowUpdateFrame:
		return c.handleWindowUpdate(f)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		if !c.spend() {
			return c.calm(LimitPingFlood)
		}
		c.queueControl(func(b []byte) []byte {
			b = appendFrameHeader(b, 8, http2.FramePing, http2.FlagPingAck, 0)
			return append(b, f.Data[:]...)
		})
	case *http2.RSTStreamFrame:
		if f.StreamID > c.lastID.Load() {
			return c.goAway(http2.ErrCodeProtocol, fmt.Errorf("RST_STREAM on idle stream %d", f.StreamID))
		}
		c.forget(f.StreamID)
	case *http2.GoAwayFrame:
		// The client sends no new streams; those in progress finish.
	case *http2.PushPromiseFrame:
		return c.goAway(http2.ErrCodeProtocol, errors.New("client sent PUSH_PROMISE"))
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			c.resetStream(f.StreamID, http2.ErrCodeProtocol)
			return nil
		}
		if !c.spend() {
			return c.calm(LimitEmptyFrameFlood)
		}
	default:
		// Unknown frame types are ignored, but not for free.
		if !c.spend() {
			return c.calm(LimitEmptyFrameFlood)
		}
	}
	return nil
}

// spend takes one token from the frame budget and reports whether there
// was one.
func (c *conn) spend() bool {
	now := time.Now()
	if !c.tokensAt.IsZero() {
		c.tokens = min(budgetBurst, c.tokens+now.Sub(c.tokensAt).Seconds()*budgetRate)
	}
	c.tokensAt = now
	if c.tokens < 1 {
		return false
	}
	c.tokens--
	return true
}

// calm ends the connection with GOAWAY ENHANCE_YOUR_CALM for limit.
func (c *conn) calm(limit string) error {
	c.limit(limit)
	return c.goAway(http2.ErrCodeEnhanceYourCalm, fmt.Errorf("limit %s", limit))
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
			overflow := false
			for _, st := range c.streams {
				st.window += delta
				overflow = overflow || st.window > maxWindow
			}
			c.wakeLocked()
			c.mu.Unlock()
			if overflow {
				c.limit(LimitFlowControl)
				return c.goAway(http2.ErrCodeFlowControl, errors.New("settings: a stream window overflows"))
			}
		}
		// Header table size: responses never index (table size 0), so
		// any limit holds. The rest do not concern a server.
		return nil
	})
}

func (c *conn) handleWindowUpdate(f *http2.WindowUpdateFrame) error {
	if f.StreamID > c.lastID.Load() {
		return c.goAway(http2.ErrCodeProtocol, fmt.Errorf("WINDOW_UPDATE on idle stream %d", f.StreamID))
	}
	inc := int64(f.Increment)
	c.mu.Lock()
	if f.StreamID == 0 {
		if c.connWindow+inc > maxWindow {
			c.mu.Unlock()
			c.limit(LimitFlowControl)
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
	// A client gives back the window a complete response used as it
	// reads what it buffered, after END_STREAM: those updates are free,
	// up to what the response used.
	done := st == nil || st.done.Load()
	returned := false
	if st != nil {
		returned = done && !overflow && st.window <= c.initWindow
	} else {
		returned = c.giveBackLocked(f.StreamID, inc)
	}
	c.mu.Unlock()
	if done && !returned && !c.spend() {
		// Other updates for streams that are gone, or whose response is
		// complete, do nothing: a flood of them is only work for the
		// server.
		return c.calm(LimitWindowUpdateFlood)
	}
	if overflow {
		c.limit(LimitFlowControl)
		c.resetStream(f.StreamID, http2.ErrCodeFlowControl)
	}
	return nil
}

func (c *conn) handleHeaders(f *http2.HeadersFrame) error {
	if f.HasPriority() && f.Priority.StreamDep == f.StreamID {
		// Decoded all the same, to keep the HPACK state.
		c.hdr.bad = errors.New("stream depends on itself")
	}
	c.hdr.stream, c.hdr.end = f.StreamID, f.StreamEnded()
	if f.HeadersEnded() {
		return c.headerBlock(f.HeaderBlockFragment())
	}
	c.hdr.frags = append(c.hdr.frags[:0], f.HeaderBlockFragment()...)
	c.hdr.conts = 0
	return nil
}

func (c *conn) handleContinuation(f *http2.ContinuationFrame) error {
	// The framer makes sure it follows HEADERS on the same stream.
	h := &c.hdr
	h.conts++
	frag := f.HeaderBlockFragment()
	if h.conts > maxContinuations {
		return c.calm(LimitContinuation)
	}
	if len(h.frags)+len(frag) > maxHeaderBlock {
		return c.calm(LimitHeaderSize)
	}
	h.frags = append(h.frags, frag...)
	if !f.HeadersEnded() {
		return nil
	}
	err := c.headerBlock(h.frags)
	h.frags = nil
	return err
}

// emit collects one decoded header field.
func (c *conn) emit(hf hpack.HeaderField) {
	h := &c.hdr
	h.size += hf.Size()
	if h.size > maxHeaderListSize {
		h.trunc = true
		return
	}
	if h.bad != nil || h.trunc {
		return
	}
	switch {
	case !httpguts.ValidHeaderFieldValue(hf.Value):
		h.bad = fmt.Errorf("invalid value for header %q", hf.Name)
	case hf.IsPseudo():
		if h.regular {
			h.bad = fmt.Errorf("pseudo-header %q after a regular one", hf.Name)
		}
	default:
		h.regular = true
		if !validFieldName(hf.Name) {
			h.bad = fmt.Errorf("invalid header name %q", hf.Name)
		}
	}
	h.fields = append(h.fields, hf)
}

// validFieldName reports whether name is a header name as HTTP/2 sends it:
// a token in lower case.
func validFieldName(name string) bool {
	if !httpguts.ValidHeaderFieldName(name) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if 'A' <= name[i] && name[i] <= 'Z' {
			return false
		}
	}
	return true
}

// headerBlock decodes a complete header block and acts on it.
func (c *conn) headerBlock(block []byte) error {
	h := &c.hdr
	defer func() {
		*h = headerBlock{frags: h.frags[:0]}
	}()
	if _, err := c.dec.Write(block); err != nil {
		return c.goAway(http2.ErrCodeCompression, fmt.Errorf("decoding header block: %w", err))
	}
	if err := c.dec.Close(); err != nil {
		return c.goAway(http2.ErrCodeCompression, fmt.Errorf("decoding header block: %w", err))
	}
	id := h.stream
	c.mu.Lock()
	st := c.streams[id]
	c.mu.Unlock()
	if st != nil {
		if st.dispatched {
			// Half closed: the request is complete.
			c.resetStream(id, http2.ErrCodeStreamClosed)
			return nil
		}
		// Trailers: they end the request.
		if !h.end {
			return c.goAway(http2.ErrCodeProtocol, errors.New("HEADERS after the request's headers without END_STREAM"))
		}
		for _, hf := range h.fields {
			if hf.IsPseudo() {
				h.bad = errors.New("pseudo-header in trailers")
			}
		}
		if h.bad != nil || h.trunc {
			c.resetStream(id, http2.ErrCodeProtocol)
			return nil
		}
		c.endBody(st)
		return nil
	}
	last := c.lastID.Load()
	if id%2 == 0 || id <= last {
		return c.goAway(http2.ErrCodeProtocol, fmt.Errorf("HEADERS on stream %d (last %d)", id, last))
	}
	c.lastID.Store(id)
	c.mu.Lock()
	full := c.active >= c.maxStreams
	if full {
		c.refused++
	}
	refused := c.refused
	c.mu.Unlock()
	if full {
		c.limit(LimitStreams)
		if refused > 2*int(c.maxStreams) {
			return c.calm(LimitRapidReset)
		}
		c.queueRST(id, http2.ErrCodeRefusedStream)
		return nil
	}
	if h.trunc {
		c.limit(LimitHeaderSize)
		c.queueRST(id, http2.ErrCodeRefusedStream)
		return nil
	}
	req, wantLen, err := c.newRequest(h)
	if err == nil {
		err = h.bad
	}
	if err != nil {
		c.log.Debug("bad request headers", "stream", id, "err", err)
		c.queueRST(id, http2.ErrCodeProtocol)
		return nil
	}
	st = &stream{c: c, id: id, req: req, wantLen: wantLen}
	st.ctx, st.cancel = context.WithCancel(c.ctx)
	c.mu.Lock()
	st.window = c.initWindow
	st.early = !c.settingsAcked
	c.streams[id] = st
	c.active++
	if c.idle != nil {
		c.idle.Stop()
	}
	if !h.end {
		st.waitBody = true
		st.bodyDeadline = time.Now().Add(c.bodyTimeout)
		c.armBodyTimerLocked(c.bodyTimeout)
	}
	c.mu.Unlock()
	if h.end {
		c.endBody(st)
	}
	return nil
}

func (c *conn) newRequest(h *headerBlock) (*http.Request, int64, error) {
	var method, path, scheme, authority string
	var seen [4]bool
	for _, hf := range h.fields {
		if !hf.IsPseudo() {
			break
		}
		var i int
		switch hf.Name {
		case ":method":
			i, method = 0, hf.Value
		case ":path":
			i, path = 1, hf.Value
		case ":scheme":
			i, scheme = 2, hf.Value
		case ":authority":
			i, authority = 3, hf.Value
		default:
			return nil, 0, fmt.Errorf("pseudo-header %q in a request", hf.Name)
		}
		if seen[i] {
			return nil, 0, fmt.Errorf("pseudo-header %q repeated", hf.Name)
		}
		seen[i] = true
	}
	if method == "" || method == http.MethodConnect || scheme == "" || !strings.HasPrefix(path, "/") {
		return nil, 0, fmt.Errorf("unsupported request %q %q", method, path)
	}
	u, err := url.ParseRequestURI(path)
	if err != nil {
		return nil, 0, fmt.Errorf("parsing path: %w", err)
	}
	hdr := make(http.Header, len(h.fields))
	for _, hf := range h.fields {
		if hf.IsPseudo() {
			continue
		}
		switch hf.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return nil, 0, fmt.Errorf("connection-specific header %q", hf.Name)
		case "te":
			if hf.Value != "trailers" {
				return nil, 0, errors.New("te header other than trailers")
			}
		}
		k := http.CanonicalHeaderKey(hf.Name)
		hdr[k] = append(hdr[k], hf.Value)
	}
	wantLen := int64(-1)
	if vs := hdr["Content-Length"]; len(vs) > 0 {
		n, err := strconv.ParseInt(vs[0], 10, 64)
		if err != nil || n < 0 || len(vs) > 1 {
			return nil, 0, errors.New("invalid content-length")
		}
		wantLen = n
	}
	if authority == "" {
		authority = hdr.Get("Host")
	}
	return &http.Request{
		Method:     method,
		URL:        u,
		Proto:      "HTTP/2.0",
		ProtoMajor: 2,
		Header:     hdr,
		Host:       authority,
		RequestURI: path,
		RemoteAddr: c.nc.RemoteAddr().String(),
	}, wantLen, nil
}

func (c *conn) handleData(f *http2.DataFrame) error {
	id := f.StreamID
	n := int64(f.Length) // padding counts against the window too
	data := f.Data()
	c.mu.Lock()
	c.recvAvail -= n
	if c.recvAvail < 0 {
		c.mu.Unlock()
		c.limit(LimitFlowControl)
		return c.goAway(http2.ErrCodeFlowControl, errors.New("client sent more than the connection window"))
	}
	st := c.streams[id]
	if st == nil || st.dispatched || !st.waitBody {
		// A reset, answered or timed-out stream: the bytes are dropped.
		owed := c.consumeLocked(n)
		c.mu.Unlock()
		c.grant(owed)
		if id > c.lastID.Load() {
			return c.goAway(http2.ErrCodeProtocol, fmt.Errorf("DATA on idle stream %d", id))
		}
		if st != nil && st.dispatched && !st.bodyOpen {
			c.resetStream(id, http2.ErrCodeStreamClosed) // half closed
		} else if st == nil {
			c.queueRST(id, http2.ErrCodeStreamClosed)
		}
		return nil
	}
	st.recvd += int64(len(data))
	overWindow := st.recvd > c.streamRecvWindow(st)
	owed := c.consumeLocked(n - int64(len(data))) // padding
	if !overWindow {
		st.body = append(st.body, data...)
	}
	blen := int64(len(st.body))
	c.mu.Unlock()
	c.grant(owed)
	switch {
	case overWindow:
		c.limit(LimitFlowControl)
		c.resetStream(id, http2.ErrCodeFlowControl)
	case st.wantLen >= 0 && st.recvd > st.wantLen:
		c.resetStream(id, http2.ErrCodeProtocol)
	case blen > c.maxBody:
		c.dropBody(st)
		c.dispatch(st, tooLarge{})
	case f.StreamEnded():
		c.endBody(st)
	case len(data) == 0 && n == 0 && !c.spend():
		return c.calm(LimitEmptyFrameFlood)
	}
	return nil
}

// streamRecvWindow is how many DATA bytes st may carry: its window is
// never returned. A stream opened before the client acknowledged this
// side's SETTINGS keeps the protocol's default window (65,535) if that is
// bigger: the client may have taken send window under it and write the
// DATA after its acknowledgement (Go's transport does).
func (c *conn) streamRecvWindow(st *stream) int64 {
	w := min(c.maxBody+1, maxWindow)
	if st.early || !c.settingsAcked {
		w = max(w, 65535)
	}
	return w
}

// endBody dispatches st, whose request is complete, unless its length is
// not what it said.
func (c *conn) endBody(st *stream) {
	if st.wantLen >= 0 && st.recvd != st.wantLen {
		c.resetStream(st.id, http2.ErrCodeProtocol)
		return
	}
	c.dispatch(st, nil)
}

// dropBody lets go of st's buffered body, returning its window.
func (c *conn) dropBody(st *stream) {
	c.mu.Lock()
	owed := c.consumeLocked(int64(len(st.body)))
	st.body = nil
	c.mu.Unlock()
	c.grant(owed)
}

// consumeLocked notes that n received bytes left the server's hands and
// returns how much window to grant back now (0: not yet, the client still
// has half).
func (c *conn) consumeLocked(n int64) int64 {
	c.recvOwed += n
	if c.recvOwed < connRecvWindow/2 || c.closed {
		return 0
	}
	owed := c.recvOwed
	c.recvOwed = 0
	c.recvAvail += owed
	return owed
}

// grant sends a WINDOW_UPDATE for owed bytes of the connection window.
func (c *conn) grant(owed int64) {
	if owed > 0 {
		c.writeControl(func(b []byte) []byte { return appendWindowUpdate(b, 0, uint32(owed)) })
	}
}

// armBodyTimerLocked makes the body timer fire within d.
func (c *conn) armBodyTimerLocked(d time.Duration) {
	if c.bodyArmed || c.closed {
		return
	}
	c.bodyArmed = true
	if c.bodyTimer == nil {
		c.bodyTimer = time.AfterFunc(d, c.expireBodies)
	} else {
		c.bodyTimer.Reset(d)
	}
}

// expireBodies drops the requests whose body is late and sets the timer
// for the next.
func (c *conn) expireBodies() {
	now := time.Now()
	var late []*stream
	var owed int64
	c.mu.Lock()
	c.bodyArmed = false
	var next time.Time
	for id, st := range c.streams {
		if !st.waitBody {
			continue
		}
		if st.bodyDeadline.After(now) {
			if next.IsZero() || st.bodyDeadline.Before(next) {
				next = st.bodyDeadline
			}
			continue
		}
		late = append(late, st)
		st.waitBody = false
		st.reset = true
		delete(c.streams, id)
		c.active--
		owed += c.consumeLocked(int64(len(st.body)))
		st.body, st.req = nil, nil
	}
	c.idleLocked()
	if !next.IsZero() {
		c.armBodyTimerLocked(next.Sub(now))
	}
	c.mu.Unlock()
	c.grant(owed)
	for _, st := range late {
		c.limit(LimitBodyTimeout)
		st.cancel()
		c.writeRST(st.id, http2.ErrCodeCancel)
	}
}

// bodyReader is a request body that lets go of its bytes once read, so a
// long-lived request (a map stream) does not keep them, and gives the
// client back the connection window they took.
type bodyReader struct {
	c  *conn
	mu sync.Mutex // a handler may hand the body to another goroutine
	b  []byte
}

func (r *bodyReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	if len(r.b) == 0 {
		r.mu.Unlock()
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	if len(r.b) == 0 {
		r.b = nil
	}
	r.mu.Unlock()
	r.c.consume(int64(n))
	return n, nil
}

// Close drops what was not read.
func (r *bodyReader) Close() error {
	r.mu.Lock()
	n := len(r.b)
	r.b = nil
	r.mu.Unlock()
	r.c.consume(int64(n))
	return nil
}

// consume notes that n request bytes left the server's hands.
func (c *conn) consume(n int64) {
	if n == 0 {
		return
	}
	c.mu.Lock()
	owed := c.consumeLocked(n)
	c.mu.Unlock()
	c.grant(owed)
}

type tooLarge struct{}

func (tooLarge) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
}

// dispatch runs the request's handler (h, or the server's) on its own
// goroutine, unless the stream was dropped meanwhile.
func (c *conn) dispatch(st *stream, h http.Handler) {
	c.mu.Lock()
	if st.reset {
		c.mu.Unlock()
		return
	}
	st.waitBody = false
	req := st.req
	st.req = nil
	body := st.body
	st.body = nil
	c.mu.Unlock()
	st.dispatched = true
	st.bodyOpen = h != nil // answered before the client finished sending
	req.ContentLength = int64(len(body))
	req.Body = http.NoBody
	var br *bodyReader
	if len(body) > 0 {
		br = &bodyReader{c: c, b: body}
		req.Body = br
	}
	if h == nil {
		h = c.srv.Handler
	}
	go c.runHandler(st, h, req.WithContext(st.ctx), br)
}

func (c *conn) runHandler(st *stream, h http.Handler, req *http.Request, br *bodyReader) {
	defer func() {
		if br != nil {
			br.Close()
		}
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				c.log.Error("panic serving request", "path", req.URL.Path, "panic", p)
			}
			c.endStream(st, false)
			c.writeRST(st.id, http2.ErrCodeInternal)
			st.cancel()
			return
		}
		st.finish()
	}()
	h.ServeHTTP(st, req)
}

// endStream forgets st, whose handler returned: its response is complete
// (done) or abandoned.
func (c *conn) endStream(st *stream, done bool) {
	c.mu.Lock()
	if c.streams[st.id] == st {
		delete(c.streams, st.id)
	}
	if owed := c.initWindow - st.window; done && owed > 0 {
		c.ended[c.endedNext] = endedStream{id: st.id, owed: owed}
		c.endedNext = (c.endedNext + 1) % len(c.ended)
	}
	c.active--
	if done {
		c.refused = 0
	}
	c.idleLocked()
	st.reset = true
	c.mu.Unlock()
}

// giveBackLocked reports whether inc is window an ended stream id's
// response used, and takes it off what that stream may give back.
func (c *conn) giveBackLocked(id uint32, inc int64) bool {
	for i := range c.ended {
		if e := &c.ended[i]; e.id == id && e.id != 0 && e.owed >= inc {
			e.owed -= inc
			return true
		}
	}
	return false
}

// idleLocked starts the idle timer when the last request ended.
func (c *conn) idleLocked() {
	if c.idle != nil && c.active == 0 && !c.closed {
		c.idle.Reset(c.srv.IdleTimeout)
	}
}

// idleCheck closes the connection if it is still idle. It does not wait
// for the write lock: a GOAWAY is sent only if nothing else is writing.
func (c *conn) idleCheck() {
	c.mu.Lock()
	idle := c.active == 0 && !c.closed
	c.mu.Unlock()
	if !idle {
		return
	}
	if c.wmu.TryLock() {
		if c.werr == nil {
			var buf [17]byte
			c.writeLocked(time.Time{}, appendGoAway(buf[:0], c.lastID.Load(), http2.ErrCodeNo))
		}
		c.wmu.Unlock()
	}
	c.cancel(errors.New("h2serve: idle connection closed"))
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
		st.body = nil
	}
	c.wakeLocked()
	if c.idle != nil {
		c.idle.Stop()
	}
	if c.bodyTimer != nil {
		c.bodyTimer.Stop()
	}
	c.mu.Unlock()
	c.cancel(cause)
	c.nc.Close()
	c.ra.release()
	c.releaseControl()
}

// goAway tells the client why the connection ends and returns err. It is
// called on the serving goroutine; the frame goes out when serve returns.
func (c *conn) goAway(code http2.ErrCode, err error) error {
	c.log.Debug("closing HTTP/2 connection", "code", code, "err", err)
	c.queueControl(func(b []byte) []byte { return appendGoAway(b, c.lastID.Load(), code) })
	c.lingering = code != http2.ErrCodeNo
	return err
}

// linger reads and discards what the client still sends, for a while, so
// that the GOAWAY just sent is not lost to a TCP reset.
func (c *conn) linger() {
	c.nc.SetReadDeadline(time.Now().Add(goAwayLinger))
	var buf [512]byte
	for n := 0; n < lingerBytes; {
		k, err := c.ra.Read(buf[:])
		n += k
		if err != nil {
			return
		}
	}
}

// forget drops stream id, reset by either side, and ends its handler's
// context. A handler still running counts against the stream limit until
// it returns. Called on the serving goroutine.
func (c *conn) forget(id uint32) {
	var owed int64
	c.mu.Lock()
	st := c.streams[id]
	if st != nil {
		st.reset = true
		delete(c.streams, id)
		if !st.dispatched {
			c.active--
			owed = c.consumeLocked(int64(len(st.body)))
			st.body, st.req = nil, nil
			st.waitBody = false
			c.idleLocked()
		}
		c.wakeLocked()
	}
	c.mu.Unlock()
	c.grant(owed)
	if st != nil {
		st.cancel()
	}
}

// resetStream forgets stream id and tells the client.
func (c *conn) resetStream(id uint32, code http2.ErrCode) {
	c.forget(id)
	c.queueRST(id, code)
}

// queueRST sends RST_STREAM with the next control frames (serving
// goroutine only).
func (c *conn) queueRST(id uint32, code http2.ErrCode) {
	c.queueControl(func(b []byte) []byte { return appendRST(b, id, code) })
}

// writeRST sends RST_STREAM now.
func (c *conn) writeRST(id uint32, code http2.ErrCode) {
	c.writeControl(func(b []byte) []byte { return appendRST(b, id, code) })
}

// ctlBufs lends the serving goroutine the buffer it gathers control
// frames in.
var ctlBufs = sync.Pool{New: func() any { b := make([]byte, 0, maxCtlBuf+64); return &b }}

// queueControl appends the frames build makes to those the serving
// goroutine writes before it next waits for the client, so that a burst
// of PINGs or SETTINGS is answered in one write.
func (c *conn) queueControl(build func([]byte) []byte) {
	if c.ctlBuf == nil {
		c.ctlBuf = ctlBufs.Get().(*[]byte)
		c.ctl = (*c.ctlBuf)[:0]
	}
	c.ctl = build(c.ctl)
	if len(c.ctl) >= maxCtlBuf {
		c.flushControl()
	}
}

// flushControl writes the control frames gathered so far.
func (c *conn) flushControl() {
	if len(c.ctl) == 0 {
		return
	}
	c.wmu.Lock()
	if c.werr == nil {
		c.writeLocked(time.Time{}, c.ctl)
	}
	c.wmu.Unlock()
	c.releaseControl()
}

func (c *conn) releaseControl() {
	if c.ctlBuf != nil {
		*c.ctlBuf = c.ctl[:0]
		ctlBufs.Put(c.ctlBuf)
		c.ctlBuf, c.ctl = nil, nil
	}
}

// writeControl writes the frames build appends now, ignoring errors (a
// dead connection is noticed by the reader).
func (c *conn) writeControl(build func([]byte) []byte) {
	var buf [64]byte
	b := build(buf[:0])
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return
	}
	c.writeLocked(time.Time{}, b)
}

// writeLocked writes buf with c.wmu held, by deadline if that comes before
// the connection's write timeout. A failed write closes the connection.
func (c *conn) writeLocked(deadline time.Time, buf []byte) error {
	now := time.Now()
	limit := now.Add(c.writeTimeout)
	if deadline.IsZero() || deadline.After(limit) {
		// The write timeout; the deadline set is moved on only when half
		// of it is gone, to spare a timer update per write.
		deadline = c.wdeadline
		if deadline.IsZero() || deadline.Before(now.Add(c.writeTimeout/2)) || deadline.After(limit) {
			deadline = limit
		}
	}
	if !deadline.Equal(c.wdeadline) {
		c.wdeadline = deadline
		c.nc.SetWriteDeadline(deadline)
	}
	if _, err := c.nc.Write(buf); err != nil {
		c.werr = err
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			c.limit(LimitWriteTimeout)
		}
		// A partly written frame leaves the connection unusable.
		c.nc.Close()
		return fmt.Errorf("h2serve: writing: %w", err)
	}
	return nil
}

// readAhead reads the connection for the framer. A frame's first read
// goes straight to the connection, so a connection waiting for its
// client holds no buffer; later reads take a pooled buffer and read ahead,
// which tells the serving goroutine that more frames are waiting (and
// spares a read per frame).
type readAhead struct {
	nc    net.Conn
	first bool    // the next read starts a frame
	bp    *[]byte // borrowed while b holds unread bytes
	b     []byte
}

// readAheadSize is the buffer a read ahead borrows.
const readAheadSize = 4 << 10

var readBufs = sync.Pool{New: func() any { b := make([]byte, readAheadSize); return &b }}

func (r *readAhead) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		if r.first || len(p) >= readAheadSize {
			r.first = false
			return r.nc.Read(p)
		}
		if r.bp == nil {
			r.bp = readBufs.Get().(*[]byte)
		}
		n, err := r.nc.Read(*r.bp)
		r.b = (*r.bp)[:n]
		if n == 0 {
			r.release()
			return 0, err
		}
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	if len(r.b) == 0 {
		r.release()
	}
	return n, nil
}

func (r *readAhead) release() {
	if r.bp != nil {
		readBufs.Put(r.bp)
		r.bp, r.b = nil, nil
	}
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
	deadline := st.deadline
	if limit := time.Now().Add(c.writeTimeout); deadline.IsZero() || deadline.After(limit) {
		deadline = limit
	}
	for {
		c.mu.Lock()
		if st.reset {
			c.mu.Unlock()
			return 0, errStreamClosed
		}
		avail := min(st.window, c.connWindow, int64(want))
		if avail < int64(want) && avail < minChunk && c.initWindow >= 4*minChunk {
			avail = 0 // wait for a window worth a frame
		}
		if avail > 0 {
			st.window -= avail
			c.connWindow -= avail
			c.mu.Unlock()
			return int(avail), nil
		}
		wake := c.windowCh
		c.waiting++
		c.mu.Unlock()
		d := time.Until(deadline)
		if d <= 0 {
			return 0, errDeadline
		}
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		select {
		case <-wake:
		case <-st.ctx.Done():
			return 0, errStreamClosed
		case <-timer.C:
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
				st.failed = true
				return err
			}
		}
		var chunk [2][]byte
		k := min(n, len(a))
		chunk[0], a = a[:k], a[k:]
		chunk[1], b = b[:n-k], b[n-k:]
		last := len(a)+len(b) == 0
		if err := st.c.writeFrames(st, chunk, end && last); err != nil {
			st.failed = true
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
			st.done.Store(true)
		}
	}
	for size > 0 || (end && !st.ended) {
		n := min(size, maxFrame)
		var flags http2.Flags
		if n == size && end {
			flags = http2.FlagDataEndStream
			st.ended = true
			st.done.Store(true)
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
			if err := c.writeLocked(st.deadline, buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
	}
	*bp = buf
	return c.writeLocked(st.deadline, buf)
}

// maxWriteBuf is about how much writeFrames frames before writing.
const maxWriteBuf = 64 << 10

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
	done := false
	switch {
	case reset:
	case st.failed:
		c.writeRST(st.id, http2.ErrCodeCancel)
	case !st.ended:
		if err := st.send(st.pending, nil, true); err != nil {
			c.log.Debug("ending response", "stream", st.id, "err", err)
			c.writeRST(st.id, http2.ErrCodeCancel)
			break
		}
		done = true
		if st.bodyOpen {
			// Stop the rest of the request body.
			c.writeRST(st.id, http2.ErrCodeNo)
		}
	default:
		done = true
	}
	st.release()
	c.endStream(st, done)
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

func appendGoAway(b []byte, lastID uint32, code http2.ErrCode) []byte {
	b = appendFrameHeader(b, 8, http2.FrameGoAway, 0, 0)
	b = binary.BigEndian.AppendUint32(b, lastID)
	return binary.BigEndian.AppendUint32(b, uint32(code))
}

func appendRST(b []byte, id uint32, code http2.ErrCode) []byte {
	b = appendFrameHeader(b, 4, http2.FrameRSTStream, 0, id)
	return binary.BigEndian.AppendUint32(b, uint32(code))
}
