//lint:file-ignore SA1019 the tests drive and compare against x/net's HTTP/2 client and server on single connections, which net/http does not expose

package h2serve

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// pair serves h on one end of a loopback TCP connection and returns an
// HTTP/2 client connection (golang.org/x/net/http2's Transport, as the
// official clients use) on the other, and a channel that reports
// ServeConn's return.
func pair(t *testing.T, srv *Server) (*http2.ClientConn, <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The listener closes once the one connection is accepted: closing it
	// sooner would reset a connection still in its accept queue.
	t.Cleanup(func() { ln.Close() })
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			done <- err
			return
		}
		done <- srv.ServeConn(ctx, c)
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	cc, err := (&http2.Transport{}).NewClientConn(nc)
	if err != nil {
		t.Fatal(err)
	}
	return cc, done
}

func do(t *testing.T, cc *http2.ClientConn, method, path string, body io.Reader) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://control"+path, body)
	if err != nil {
		t.Fatal(err)
	}
	res, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return res, string(b)
}

func TestRequests(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /echo/{name}", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Name", r.PathValue("name"))
		w.Header().Set("X-Len", fmt.Sprint(r.ContentLength))
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.Header.Get("X-Test"), b)
	})
	mux.HandleFunc("GET /empty", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	})
	cc, _ := pair(t, &Server{Handler: mux})

	tests := []struct {
		method, path, body string
		status             int
		want               string
		header             map[string]string
	}{
		{"POST", "/echo/a", "hello", http.StatusAccepted, "POST x hello", map[string]string{"X-Name": "a", "X-Len": "5"}},
		{"POST", "/echo/b", "", http.StatusAccepted, "POST x ", map[string]string{"X-Len": "0"}},
		{"POST", "/echo/big", strings.Repeat("z", 100_000), http.StatusAccepted, "POST x " + strings.Repeat("z", 100_000), nil},
		{"GET", "/empty", "", http.StatusOK, "", nil},
		{"GET", "/status", "", http.StatusTeapot, "", nil},
		{"GET", "/nowhere", "", http.StatusNotFound, "404 page not found\n", nil},
		{"GET", "/echo/a", "", http.StatusMethodNotAllowed, "Method Not Allowed\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.method+tt.path, func(t *testing.T) {
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			req, err := http.NewRequest(tt.method, "http://control"+tt.path, body)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("X-Test", "x")
			res, err := cc.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != tt.status || string(got) != tt.want {
				t.Errorf("got %d %.60q, want %d %.60q", res.StatusCode, got, tt.status, tt.want)
			}
			for k, v := range tt.header {
				if res.Header.Get(k) != v {
					t.Errorf("header %s = %q, want %q", k, res.Header.Get(k), v)
				}
			}
		})
	}
}

// A response far bigger than the client's flow-control windows arrives
// whole and in order, written in pieces of every size.
func TestBigResponse(t *testing.T) {
	data := make([]byte, 24<<20)
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		rest := data
		for n := 1; len(rest) > 0; n = n*3 + 1 {
			k := min(n%(3<<20), len(rest))
			if _, err := w.Write(rest[:k]); err != nil {
				return
			}
			rest = rest[k:]
		}
	})
	cc, _ := pair(t, &Server{Handler: mux})
	for range 2 {
		_, body := do(t, cc, "GET", "/", nil)
		if sha256.Sum256([]byte(body)) != sha256.Sum256(data) {
			t.Fatalf("body differs: got %d bytes, want %d", len(body), len(data))
		}
	}
}

// Flushed writes reach the client one by one while the response goes on:
// how a map stream works.
func TestStreaming(t *testing.T) {
	next := make(chan string)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if err := rc.SetWriteDeadline(time.Now().Add(time.Minute)); err != nil {
			t.Errorf("SetWriteDeadline: %v", err)
		}
		if err := rc.Flush(); err != nil { // the headers
			t.Errorf("Flush: %v", err)
		}
		for msg := range next {
			io.WriteString(w, msg)
			if err := rc.Flush(); err != nil {
				t.Errorf("Flush: %v", err)
				return
			}
		}
	})
	cc, _ := pair(t, &Server{Handler: mux})
	req, _ := http.NewRequest("GET", "http://control/", nil)
	res, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	for i := range 20 {
		msg := fmt.Sprintf("message %02d;", i)
		if i == 10 {
			msg = strings.Repeat("m", 70_000)
		}
		next <- msg
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(res.Body, buf); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if string(buf) != msg {
			t.Fatalf("message %d = %.40q, want %.40q", i, buf, msg)
		}
	}
	close(next)
	if rest, err := io.ReadAll(res.Body); err != nil || len(rest) != 0 {
		t.Fatalf("end of stream: %q, %v", rest, err)
	}
}

// A request the client abandons ends its handler's context; the
// connection serves on.
func TestClientCancel(t *testing.T) {
	ended := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/wait", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("started"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(ended)
	})
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	cc, _ := pair(t, &Server{Handler: mux})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://control/wait", nil)
	res, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	if _, err := io.ReadFull(res.Body, buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("handler's context did not end after the client cancelled")
	}
	if _, body := do(t, cc, "GET", "/ok", nil); body != "ok" {
		t.Fatalf("after a cancel: %q", body)
	}
}

func TestBodyTooLarge(t *testing.T) {
	var called bool
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { called = true })
	cc, _ := pair(t, &Server{Handler: mux, MaxBodyBytes: 1000})
	res, body := do(t, cc, "POST", "/", bytes.NewReader(make([]byte, 5000)))
	if res.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(body, "too large") {
		t.Fatalf("got %d %q, want 413", res.StatusCode, body)
	}
	if called {
		t.Fatal("the handler ran for a body over the limit")
	}
	if res, _ := do(t, cc, "POST", "/", bytes.NewReader(make([]byte, 1000))); res.StatusCode != http.StatusOK {
		t.Fatalf("a body at the limit: %d", res.StatusCode)
	}
}

// A client that stops reading makes a writer with a deadline fail, and
// does not hold up the connection's other streams until then.
func TestWriteDeadline(t *testing.T) {
	werr := make(chan error, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("/flood", func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		rc.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
		chunk := make([]byte, 64<<10)
		for {
			if _, err := w.Write(chunk); err != nil {
				werr <- err
				return
			}
		}
	})
	cc, _ := pair(t, &Server{Handler: mux})
	req, _ := http.NewRequest("GET", "http://control/flood", nil)
	res, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	// The body is never read: the stream's window (4 MiB) runs out.
	select {
	case err := <-werr:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("write error %v is not a timeout", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a write to a client that stopped reading did not fail at its deadline")
	}
}

func TestConcurrentStreams(t *testing.T) {
	const n = 30
	release := make(chan struct{})
	var mu sync.Mutex
	inside := 0
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inside++
		mu.Unlock()
		<-release
		fmt.Fprint(w, r.URL.Query().Get("i"))
	})
	cc, _ := pair(t, &Server{Handler: mux})
	if err := cc.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, body := do(t, cc, "GET", fmt.Sprintf("/?i=%d", i), nil)
			if res.StatusCode != 200 || body != fmt.Sprint(i) {
				t.Errorf("request %d: %d %q", i, res.StatusCode, body)
			}
		}()
	}
	tstest.WaitFor(t, 10*time.Second, "every handler to run at once", func() error {
		mu.Lock()
		k := inside
		mu.Unlock()
		if k != n {
			return fmt.Errorf("%d handlers running at once, want %d", k, n)
		}
		return nil
	})
	close(release)
	wg.Wait()
}

// rawClient speaks HTTP/2 frame by frame, to see what the server answers
// to what a well-behaved client never sends.
type rawClient struct {
	t      *testing.T
	fr     *http2.Framer
	writes chan func() // in order, on one goroutine: net.Pipe blocks writers
}

func newRawClient(t *testing.T, srv *Server) (*rawClient, <-chan error) {
	a, b := net.Pipe()
	t.Cleanup(func() { b.Close() })
	done := make(chan error, 1)
	go func() { done <- srv.ServeConn(context.Background(), a) }()
	rc := &rawClient{t: t, fr: http2.NewFramer(b, b), writes: make(chan func(), 16)}
	go func() {
		for w := range rc.writes {
			w()
		}
	}()
	t.Cleanup(func() { close(rc.writes) })
	rc.writes <- func() {
		io.WriteString(b, http2.ClientPreface)
		rc.fr.WriteSettings()
	}
	return rc, done
}

func (rc *rawClient) headers(id uint32, path string, end bool) {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "x"}, {":path", path}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	rc.writes <- func() {
		rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: buf.Bytes(), EndHeaders: true, EndStream: end})
	}
}

// expect reads frames until match accepts one.
func (rc *rawClient) expect(what string, match func(http2.Frame) bool) {
	rc.t.Helper()
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			rc.t.Fatalf("waiting for %s: %v", what, err)
		}
		if match(f) {
			return
		}
	}
}

func TestStreamLimit(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	rc, _ := newRawClient(t, &Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-block }), MaxConcurrentStreams: 2})
	rc.headers(1, "/", true)
	rc.headers(3, "/", true)
	rc.headers(5, "/", true)
	rc.expect("RST_STREAM(REFUSED) on stream 5", func(f http2.Frame) bool {
		r, ok := f.(*http2.RSTStreamFrame)
		if ok && r.StreamID != 5 {
			t.Fatalf("stream %d reset, want 5", r.StreamID)
		}
		return ok && r.ErrCode == http2.ErrCodeRefusedStream
	})
}

func TestProtocolErrors(t *testing.T) {
	tests := []struct {
		name string
		send func(rc *rawClient)
	}{
		{"DATA on an idle stream", func(rc *rawClient) { rc.writes <- func() { rc.fr.WriteData(7, true, []byte("x")) } }},
		{"even stream ID", func(rc *rawClient) { rc.headers(2, "/", true) }},
		{"stream IDs going back", func(rc *rawClient) { rc.headers(5, "/", true); rc.headers(3, "/", true) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc, done := newRawClient(t, &Server{Handler: http.NotFoundHandler()})
			tt.send(rc)
			rc.expect("GOAWAY(PROTOCOL_ERROR)", func(f http2.Frame) bool {
				g, ok := f.(*http2.GoAwayFrame)
				return ok && g.ErrCode == http2.ErrCodeProtocol
			})
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("ServeConn returned no error")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the connection stayed open")
			}
		})
	}
}

func TestPanicAndPing(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/panic", func(w http.ResponseWriter, r *http.Request) { panic("boom") })
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	cc, _ := pair(t, &Server{Handler: mux})
	req, _ := http.NewRequest("GET", "http://control/panic", nil)
	if res, err := cc.RoundTrip(req); err == nil {
		_, err = io.ReadAll(res.Body)
		res.Body.Close()
		if err == nil {
			t.Fatal("a panicking handler's response ended cleanly")
		}
	}
	if err := cc.Ping(context.Background()); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if _, body := do(t, cc, "GET", "/ok", nil); body != "ok" {
		t.Fatalf("after a panic: %q", body)
	}
}

func TestIdleTimeout(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	cc, done := pair(t, &Server{Handler: mux, IdleTimeout: 200 * time.Millisecond})
	do(t, cc, "GET", "/", nil)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("an idle connection stayed open")
	}
}

func TestBadPreface(t *testing.T) {
	a, b := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- (&Server{Handler: http.NotFoundHandler()}).ServeConn(context.Background(), a) }()
	go b.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "preface") {
			t.Fatalf("ServeConn = %v, want a preface error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ServeConn did not reject HTTP/1")
	}
}
