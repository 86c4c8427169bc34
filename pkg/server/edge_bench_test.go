package server

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/control"
	"tailscale.com/control/ts2021"
	"tailscale.com/control/tsp"
	"tailscale.com/net/tsdial"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// BenchmarkMapLatencyUnderHandshakeFlood measures how long one change
// takes to reach every other connected node (a rename of node 0, timed
// until all N-1 map streams decoded it), with and without a flood of Noise
// handshakes from new machine keys running (64 clients, each handshaking
// and closing as fast as it can), with the server's default limits. Tool
// and server share the machine's cores. N defaults to 200
// (HS_BENCH_NODES); HS_BENCH_HANDSHAKES sets the handshake limit.
//
//	go test -run XXX -bench MapLatencyUnderHandshakeFlood -benchtime 50x ./pkg/server/
func BenchmarkMapLatencyUnderHandshakeFlood(b *testing.B) {
	n := 200
	if v, err := strconv.Atoi(os.Getenv("HS_BENCH_NODES")); err == nil && v > 1 {
		n = v
	}
	for _, flood := range []int{0, 64} {
		b.Run(fmt.Sprintf("nodes=%d/flood=%d", n, flood), func(b *testing.B) { benchFlood(b, n, flood) })
	}
}

func benchFlood(b *testing.B, n, flooders int) {
	// HS_BENCH_HANDSHAKES overrides the concurrent handshake limit (to
	// compare with the default, GOMAXPROCS).
	ts := startServerWith(b, b.TempDir(), "", func(s *Server) {
		if v, err := strconv.Atoi(os.Getenv("HS_BENCH_HANDSHAKES")); err == nil && v > 0 {
			s.controlOpts.Limits.Handshakes = v
			s.control = control.New(s.controlOpts)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	authKey := ts.key(b, true, time.Now().Add(time.Hour))

	arrivals := make(chan int, 4*n)
	var first tailcfg.NodeID
	for i := range n {
		c, err := tsp.NewClient(tsp.ClientOpts{ServerURL: ts.url, MachineKey: key.NewMachine()})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		nk := key.NewNode()
		host := fmt.Sprintf("n%d", i)
		if _, err := c.Register(ctx, tsp.RegisterOpts{NodeKey: nk, AuthKey: authKey, Hostinfo: &tailcfg.Hostinfo{Hostname: host}}); err != nil {
			b.Fatal(err)
		}
		sess, err := c.Map(ctx, tsp.MapOpts{NodeKey: nk, Stream: true, Hostinfo: &tailcfg.Hostinfo{Hostname: host}})
		if err != nil {
			b.Fatal(err)
		}
		defer sess.Close()
		full, err := sess.Next()
		if err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			first = full.Node.ID
			continue // node 0 changes; the others watch
		}
		go func() {
			for {
				r, err := sess.Next()
				if err != nil {
					return
				}
				for _, p := range r.PeersChanged {
					if p.ID == first {
						if round, ok := strings.CutPrefix(strings.Split(p.Name, ".")[0], "r"); ok {
							if k, err := strconv.Atoi(round); err == nil {
								arrivals <- k
							}
						}
					}
				}
			}
		}()
	}

	var handshakes, refused atomic.Int64
	var wg sync.WaitGroup
	floodCtx, stopFlood := context.WithCancel(ctx)
	if flooders > 0 {
		pub, err := tsp.DiscoverServerKey(ctx, ts.url)
		if err != nil {
			b.Fatal(err)
		}
		for range flooders {
			wg.Go(func() {
				for floodCtx.Err() == nil {
					nc, err := ts2021.NewClient(ts2021.ClientOpts{
						ServerURL: ts.url, PrivKey: key.NewMachine(), ServerPubKey: pub,
						Dialer: tsdial.NewFromFuncForDebug(func(string, ...any) {}, (&net.Dialer{}).DialContext),
					})
					if err != nil {
						return
					}
					nk := key.NewNode().Public()
					rctx, rcancel := context.WithTimeout(floodCtx, 10*time.Second)
					res, err := nc.Post(rctx, "/machine/register", nk, &tailcfg.RegisterRequest{Version: tailcfg.CurrentCapabilityVersion, NodeKey: nk})
					rcancel()
					if err != nil {
						if floodCtx.Err() == nil {
							refused.Add(1)
						}
					} else {
						res.Body.Close()
						handshakes.Add(1)
					}
					nc.Close()
				}
			})
		}
		// Let the flood reach its steady state before measuring.
		time.Sleep(2 * time.Second)
	}
	hs0, ref0 := handshakes.Load(), refused.Load()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		t0 := time.Now()
		if _, err := ts.state.RenameNode(ctx, uint64(first), fmt.Sprintf("r%d", i)); err != nil {
			b.Fatal(err)
		}
		for got := 0; got < n-1; {
			select {
			case k := <-arrivals:
				if k == i {
					got++
				}
			case <-time.After(30 * time.Second):
				b.Fatalf("round %d: %d of %d peers heard of the change in 30 s", i, got, n-1)
			}
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	elapsed := time.Since(start)
	stopFlood()
	wg.Wait()
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.5), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(handshakes.Load()-hs0)/elapsed.Seconds(), "handshakes/s")
	b.ReportMetric(float64(refused.Load()-ref0)/elapsed.Seconds(), "refused/s")
	b.ReportMetric(float64(ts.limitHits(b, "noise_handshakes")), "limit-hits")
}
