package server_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/control"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/loadgen"
	"github.com/hsctl/headscale/pkg/server"
	"tailscale.com/control/tsp"
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
// The "proc" variant runs the flooders in a child process at the lowest
// CPU priority (nice 19), as an attacker's CPU is on other machines: the
// server then competes with the flood's handshakes only for its own share,
// which is what its limits can bound. The "inproc" variant runs them in
// the benchmark's process, where the flooders' own CPU (a handshake costs
// the client as much as the server) competes with the server too.
//
//	go test -run XXX -bench MapLatencyUnderHandshakeFlood -benchtime 50x ./pkg/server/
func BenchmarkMapLatencyUnderHandshakeFlood(b *testing.B) {
	n := 200
	if v, err := strconv.Atoi(os.Getenv("HS_BENCH_NODES")); err == nil && v > 1 {
		n = v
	}
	for _, tc := range []struct {
		flood  int
		inProc bool
	}{{0, true}, {64, true}, {64, false}} {
		where := "proc"
		if tc.inProc {
			where = "inproc"
		}
		b.Run(fmt.Sprintf("nodes=%d/flood=%d/%s", n, tc.flood, where), func(b *testing.B) { benchFlood(b, n, tc.flood, tc.inProc) })
	}
}

// floodURLEnv, set in the environment, makes the test binary a handshake
// flooder (runFloodProcess) against that server URL.
const floodURLEnv = "HS_FLOOD_URL"

// runFloodProcess floods HS_FLOOD_URL with handshakes from
// HS_FLOOD_CLIENTS clients at nice 19 until it is killed, printing the
// running count of answered and refused handshakes every 100 ms.
func runFloodProcess() int {
	syscall.Setpriority(syscall.PRIO_PROCESS, 0, 19)
	clients, _ := strconv.Atoi(os.Getenv("HS_FLOOD_CLIENTS"))
	var ok, refused atomic.Int64
	ctx := context.Background()
	go flood(ctx, os.Getenv(floodURLEnv), max(clients, 1), &ok, &refused)
	for {
		time.Sleep(100 * time.Millisecond)
		fmt.Printf("%d %d\n", ok.Load(), refused.Load())
	}
}

// flood runs clients loops, each handshaking with a new machine key,
// posting a register request and closing, until ctx ends.
func flood(ctx context.Context, url string, clients int, ok, refused *atomic.Int64) {
	pub, err := tsp.DiscoverServerKey(ctx, url)
	if err != nil {
		return
	}
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for ctx.Err() == nil {
				nc, err := loadgen.DialNoise(url, key.NewMachine(), pub)
				if err != nil {
					return
				}
				nk := key.NewNode().Public()
				rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
				res, err := nc.Post(rctx, "/machine/register", nk, &tailcfg.RegisterRequest{Version: tailcfg.CurrentCapabilityVersion, NodeKey: nk})
				rcancel()
				if err != nil {
					if ctx.Err() == nil {
						refused.Add(1)
					}
				} else {
					res.Body.Close()
					ok.Add(1)
				}
				nc.Close()
			}
		})
	}
	wg.Wait()
}

func benchFlood(b *testing.B, n, flooders int, inProc bool) {
	// HS_BENCH_HANDSHAKES overrides the concurrent handshake limit (to
	// compare with the default, GOMAXPROCS).
	ts := startServerWith(b, b.TempDir(), "", func(s *server.Server) {
		if v, err := strconv.Atoi(os.Getenv("HS_BENCH_HANDSHAKES")); err == nil && v > 0 {
			s.SetControlLimits(func(l *control.Limits) { l.Handshakes = v })
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	authKey := ts.key(b, true, time.Now().Add(time.Hour))

	arrivals := make(chan int, 4*n)
	var first tailcfg.NodeID
	for i := range n {
		c, err := tsp.NewClient(tsp.ClientOpts{ServerURL: ts.URL, MachineKey: key.NewMachine()})
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
	counts := func() (int64, int64) { return handshakes.Load(), refused.Load() }
	switch {
	case flooders > 0 && inProc:
		wg.Go(func() { flood(floodCtx, ts.URL, flooders, &handshakes, &refused) })
	case flooders > 0:
		cmd := exec.CommandContext(floodCtx, os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), floodURLEnv+"="+ts.URL, fmt.Sprintf("HS_FLOOD_CLIENTS=%d", flooders))
		out, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		var last atomic.Pointer[[2]int64]
		last.Store(&[2]int64{})
		wg.Go(func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				var v [2]int64
				if _, err := fmt.Sscan(sc.Text(), &v[0], &v[1]); err == nil {
					last.Store(&v)
				}
			}
			cmd.Wait()
		})
		counts = func() (int64, int64) { v := last.Load(); return v[0], v[1] }
	}
	if flooders > 0 {
		// Let the flood reach its steady state before measuring.
		time.Sleep(2 * time.Second)
	}
	hs0, ref0 := counts()
	countedFrom := time.Now()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		if _, err := ts.State().RenameNode(ctx, ids.NodeID(first), fmt.Sprintf("r%d", i)); err != nil {
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
	hs1, ref1 := counts()
	// The child's counts are up to 100 ms old at either end, so the rate
	// is over the time between the two reads of them.
	counted := time.Since(countedFrom)
	stopFlood()
	wg.Wait()
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.5), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(hs1-hs0)/counted.Seconds(), "handshakes/s")
	b.ReportMetric(float64(ref1-ref0)/counted.Seconds(), "refused/s")
	b.ReportMetric(float64(ts.limitHits(b, "noise_handshakes")), "limit-hits")
}
