package control_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/pkg/loadgen"
	"tailscale.com/control/tsp"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// FuzzNoiseBody posts arbitrary register and map request bodies over a
// real Noise connection, as the registered fuzz node's machine, to a real
// server. A client's mistake must get a 4xx with a reason, never a 5xx, a
// dropped connection (a handler panic) or an unbounded allocation; a 200
// register answer must be a RegisterResponse. Seeds are the requests real
// clients send, for the registered node and for new ones.
func FuzzNoiseBody(f *testing.F) {
	// The server a fuzz process reuses for every input: a user, its
	// reusable key and one node registered with it, whose machine key the
	// inputs are sent as.
	srv := servertest.Start(f, servertest.Options{ExtraYAML: "policy:\n  mode: database\n", DiscardLogs: true})
	authKey := srv.CreatePreAuthKey(f, srv.CreateUser(f, "fuzz"), true, time.Now().Add(24*time.Hour))
	node := srv.RegisterNode(f, authKey, "fuzz-node")
	nk := node.Key.Public()
	seed := func(endpoint uint8, v any) {
		b, err := json.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(endpoint, b)
	}
	cur := tailcfg.CurrentCapabilityVersion
	hi := &tailcfg.Hostinfo{Hostname: "fuzz-node", OS: "linux", RoutableIPs: nil, RequestTags: []string{"tag:a"}}
	// Map requests first: the register seeds include a key rotation and
	// a logout, after which the node's first key is unknown.
	seed(1, tailcfg.MapRequest{Version: cur, NodeKey: nk, Stream: true, KeepAlive: true, Compress: "zstd", Hostinfo: hi})
	seed(1, tailcfg.MapRequest{Version: cur, NodeKey: nk, OmitPeers: true, Hostinfo: hi})
	seed(1, tailcfg.MapRequest{Version: cur, NodeKey: nk})
	seed(1, tailcfg.MapRequest{Version: 100, NodeKey: nk, Stream: true})
	seed(1, tailcfg.MapRequest{Version: cur, NodeKey: key.NewNode().Public()})
	seed(0, tailcfg.RegisterRequest{Version: cur, NodeKey: nk, Hostinfo: hi})
	seed(0, tailcfg.RegisterRequest{Version: cur, NodeKey: key.NewNode().Public(), Hostinfo: hi, Auth: &tailcfg.RegisterResponseAuth{AuthKey: authKey}})
	seed(0, tailcfg.RegisterRequest{Version: cur, NodeKey: key.NewNode().Public(), Auth: &tailcfg.RegisterResponseAuth{AuthKey: "hskey-auth-nope-nope"}})
	seed(0, tailcfg.RegisterRequest{Version: cur, NodeKey: key.NewNode().Public(), OldNodeKey: nk})
	seed(0, tailcfg.RegisterRequest{Version: 100, NodeKey: nk})
	seed(0, tailcfg.RegisterRequest{Version: cur, NodeKey: key.NewNode().Public(), Expiry: time.Unix(1, 0)})
	f.Add(uint8(0), []byte(`{`))
	f.Add(uint8(1), []byte(`{"Version": 1e400}`))

	ctx := context.Background()
	pub, err := tsp.DiscoverServerKey(ctx, srv.URL)
	if err != nil {
		f.Fatal(err)
	}
	nc, err := loadgen.DialNoise(srv.URL, node.Machine, pub)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { nc.Close() })
	host := strings.TrimPrefix(srv.URL, "http://")
	f.Fuzz(func(t *testing.T, endpoint uint8, body []byte) {
		path := "/machine/register"
		if endpoint%2 == 1 {
			path = "/machine/map"
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.TotalAlloc
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// A request that hangs fails the worker with its input, rather than
		// stalling the fuzzer silently.
		hung := time.AfterFunc(20*time.Second, func() { panic(fmt.Sprintf("%s still running after 20s on %q", path, body)) })
		defer hung.Stop()
		req, err := http.NewRequestWithContext(ctx, "POST", "https://"+host+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := nc.Do(req)
		if err != nil {
			t.Fatalf("%s: %v (did the handler fail?)", path, err)
		}
		var out []byte
		if path == "/machine/map" && resp.StatusCode == http.StatusOK {
			// A streaming map answers for as long as the client listens:
			// read the first frame (a little-endian length, then the full
			// map) and hang up.
			// A lite update (OmitPeers, not streaming) has an empty body.
			var n [4]byte
			switch _, err := io.ReadFull(resp.Body, n[:]); {
			case err == io.EOF:
			case err != nil:
				t.Fatalf("map %q: reading the first frame: %v", body, err)
			default:
				size := binary.LittleEndian.Uint32(n[:])
				if size == 0 || size > 4<<20 {
					t.Fatalf("map %q: first frame of %d bytes", body, size)
				}
				if _, err := io.CopyN(io.Discard, resp.Body, int64(size)); err != nil {
					t.Fatalf("map %q: reading the first frame: %v", body, err)
				}
			}
		} else {
			out, _ = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		}
		resp.Body.Close()
		runtime.ReadMemStats(&ms)
		if got := ms.TotalAlloc - before; got > 64<<20 {
			t.Fatalf("%s with %d bytes allocated %d MiB", path, len(body), got>>20)
		}
		switch {
		case resp.StatusCode >= 500:
			t.Fatalf("%s %q: %d %s", path, body, resp.StatusCode, out)
		case resp.StatusCode >= 400:
			if len(bytes.TrimSpace(out)) == 0 {
				t.Fatalf("%s %q: %d without a reason", path, body, resp.StatusCode)
			}
		case path == "/machine/register":
			var rr tailcfg.RegisterResponse
			if err := json.Unmarshal(out, &rr); err != nil {
				t.Fatalf("register %q: %d with a body that is not a RegisterResponse: %q", body, resp.StatusCode, out)
			}
		}
	})
}
