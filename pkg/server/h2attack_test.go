package server_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/h2serve"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"tailscale.com/control/controlhttp"
	"tailscale.com/control/tsp"
	"tailscale.com/tailcfg"
	"tailscale.com/tstime"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
)

// dialNoise opens a real Noise (ts2021) connection to the server and
// reads the early payload, leaving the connection where the client's
// HTTP/2 starts.
func dialNoise(t *testing.T, ts *testServer) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pub, err := tsp.DiscoverServerKey(ctx, ts.URL)
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(ts.Addr().String())
	d := &controlhttp.Dialer{
		Hostname: host, HTTPPort: port, HTTPSPort: controlhttp.NoPort,
		MachineKey: key.NewMachine(), ControlKey: pub,
		ProtocolVersion: uint16(tailcfg.CurrentCapabilityVersion),
		Dialer:          (&net.Dialer{}).DialContext, Logf: logger.Discard, Clock: tstime.StdClock{},
	}
	conn, err := d.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var hdr [9]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil || string(hdr[:5]) != "\xff\xff\xffTS" {
		t.Fatalf("early payload: %q %v", hdr, err)
	}
	if _, err := io.CopyN(io.Discard, conn, int64(binary.BigEndian.Uint32(hdr[5:]))); err != nil {
		t.Fatal(err)
	}
	return conn
}

// limitHits reads headscale_limit_hits_total{limit} from the server's
// metrics.
func limitHits(t *testing.T, ts *testServer, limit string) float64 {
	t.Helper()
	mfs, err := ts.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "headscale_limit_hits_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "limit" && l.GetValue() == limit {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// A client that fills its connection's stream limit and then keeps
// opening and resetting streams (the "rapid reset" attack), over a real
// Noise connection to the real server, is refused and then sent GOAWAY
// ENHANCE_YOUR_CALM; the limits show in the metrics, and another client
// registers meanwhile. The same runs with noise.http2_server: x/net,
// whose server refuses every stream over the limit instead.
func TestNoiseRapidReset(t *testing.T) {
	for _, impl := range []string{"builtin", "x/net"} {
		t.Run(impl, func(t *testing.T) {
			ts := startServerWith(t, t.TempDir(), "noise:\n  http2_server: "+impl+"\n", nil)
			conn := dialNoise(t, ts)
			var buf, hbuf bytes.Buffer
			fr := http2.NewFramer(&buf, nil)
			enc := hpack.NewEncoder(&hbuf)
			block := func() []byte {
				hbuf.Reset()
				for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "control"}, {":path", "/machine/register"}} {
					enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
				}
				return bytes.Clone(hbuf.Bytes())
			}
			buf.WriteString(http2.ClientPreface)
			fr.WriteSettings()
			// 32 requests whose bodies never come hold the stream limit
			// (their handlers are running, for x/net's server)...
			id := uint32(1)
			for range 32 {
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block(), EndHeaders: true})
				id += 2
			}
			// ...and then a burst of streams opened and reset at once.
			for range 500 {
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block(), EndHeaders: true, EndStream: true})
				fr.WriteRSTStream(id, http2.ErrCodeCancel)
				id += 2
			}
			go func() {
				conn.SetWriteDeadline(time.Now().Add(20 * time.Second))
				conn.Write(buf.Bytes())
			}()

			// Another client is served meanwhile.
			k := ts.key(t, true, time.Now().Add(time.Hour))
			if _, msg := register(t, newClient(t, ts.URL), k, "bystander"); msg != "" {
				t.Fatalf("another client's registration: %s", msg)
			}

			rfr := http2.NewFramer(nil, conn)
			rfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
			conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			refused := 0
			for {
				f, err := rfr.ReadFrame()
				if err != nil {
					t.Fatalf("no GOAWAY before the connection ended (%d streams refused): %v", refused, err)
				}
				if r, ok := f.(*http2.RSTStreamFrame); ok && r.ErrCode == http2.ErrCodeRefusedStream {
					refused++
					if impl == "x/net" && refused == 500 {
						// x/net's server refuses every stream over the
						// limit and never sends GOAWAY for it.
						break
					}
				}
				if g, ok := f.(*http2.GoAwayFrame); ok {
					if g.ErrCode != http2.ErrCodeEnhanceYourCalm {
						t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", g.ErrCode)
					}
					break
				}
			}
			if impl == "builtin" {
				if refused == 0 || limitHits(t, ts, h2serve.LimitStreams) < float64(refused) || limitHits(t, ts, h2serve.LimitRapidReset) != 1 {
					t.Fatalf("%d refused; limit hits: h2_streams %v, h2_rapid_reset %v", refused,
						limitHits(t, ts, h2serve.LimitStreams), limitHits(t, ts, h2serve.LimitRapidReset))
				}
			}
		})
	}
}
