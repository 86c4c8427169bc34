//lint:file-ignore SA1019 the tests drive and compare against x/net's HTTP/2 client and server on single connections, which net/http does not expose

package h2serve

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// recordConn records what the client writes.
type recordConn struct {
	net.Conn
	mu  sync.Mutex
	out bytes.Buffer
}

func (c *recordConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.out.Write(b)
	c.mu.Unlock()
	return c.Conn.Write(b)
}

// recordClient returns what golang.org/x/net's Transport (the official
// clients' HTTP/2) sends for a few requests, after the preface.
func recordClient(f *testing.F) []byte {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, r.Body)
	})
	go func() {
		if a, err := ln.Accept(); err == nil {
			(&Server{Handler: mux}).ServeConn(context.Background(), a)
		}
	}()
	b, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		f.Fatal(err)
	}
	rc := &recordConn{Conn: b}
	cc, err := (&http2.Transport{}).NewClientConn(rc)
	if err != nil {
		f.Fatal(err)
	}
	for _, body := range []string{"", "hello", strings.Repeat("x", 20000)} {
		req, _ := http.NewRequest("POST", "http://control/machine/map?x=1", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		res, err := cc.RoundTrip(req)
		if err != nil {
			f.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	cc.Ping(context.Background())
	cc.Close()
	b.Close()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return bytes.TrimPrefix(rc.out.Bytes(), []byte(http2.ClientPreface))
}

// frames builds a seed with a framer.
func frames(build func(fr *http2.Framer, block func(path string) []byte)) []byte {
	var buf, hbuf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	fr.AllowIllegalWrites = true
	enc := hpack.NewEncoder(&hbuf)
	build(fr, func(path string) []byte {
		hbuf.Reset()
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "c"}, {":path", path}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		return bytes.Clone(hbuf.Bytes())
	})
	return buf.Bytes()
}

// FuzzServeConn feeds arbitrary bytes after a valid preface to a server
// reading them as frames: it must not panic, hang or allocate without
// bound.
func FuzzServeConn(f *testing.F) {
	f.Add(recordClient(f))
	f.Add(frames(func(fr *http2.Framer, block func(string) []byte) { // rapid reset
		for i := range 40 {
			id := uint32(2*i + 1)
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block("/"), EndHeaders: true, EndStream: true})
			fr.WriteRSTStream(id, http2.ErrCodeCancel)
		}
	}))
	f.Add(frames(func(fr *http2.Framer, block func(string) []byte) { // CONTINUATION chain
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block("/")})
		for range 20 {
			fr.WriteContinuation(1, false, []byte{0x20})
		}
		fr.WriteContinuation(1, true, nil)
	}))
	f.Add(frames(func(fr *http2.Framer, block func(string) []byte) { // body, settings, pings, windows
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1}, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block("/a"), EndHeaders: true})
		fr.WriteData(1, false, []byte("abc"))
		fr.WriteDataPadded(1, true, []byte("def"), make([]byte, 10))
		fr.WritePing(false, [8]byte{1})
		fr.WriteWindowUpdate(0, 100)
		fr.WriteWindowUpdate(1, 1)
		fr.WritePriority(3, http2.PriorityParam{StreamDep: 3})
		fr.WriteRawFrame(0x42, 0, 5, []byte("unknown"))
		fr.WriteGoAway(1, http2.ErrCodeNo, nil)
	}))
	f.Fuzz(func(t *testing.T, in []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		a, b := net.Pipe()
		mux := http.NewServeMux()
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			io.Copy(w, r.Body)
		})
		done := make(chan error, 1)
		srv := &Server{Handler: mux, IdleTimeout: time.Second, BodyTimeout: time.Second, WriteTimeout: time.Second}
		go func() { done <- srv.ServeConn(context.Background(), a) }()
		go io.Copy(io.Discard, b) // the client reads everything
		go func() {
			b.Write([]byte(http2.ClientPreface))
			b.Write(in)
			b.Close()
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("ServeConn did not return")
		}
		runtime.ReadMemStats(&after)
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<20+64*uint64(len(in)) {
			t.Fatalf("%d input bytes made the server allocate %d bytes", len(in), grew)
		}
	})
}
