//go:build linux

package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
	"golang.org/x/net/proxy"
	"tailscale.com/client/tailscale/apitype"
)

// received is what the receiving end of SendBytes observed on one
// connection whose payload header arrived.
type received struct {
	remote string                 // remote address of the forwarded connection
	sum    [sha256.Size]byte      // sha256 of the payload
	size   uint64                 // payload length
	whois  *apitype.WhoIsResponse // the receiving node's view of remote
	err    error
}

// SendBytes sends data from node from to node to over the tailnet: it
// dials to's tailnet IPv4 at port through from's SOCKS5 proxy, while a
// listener on 127.0.0.1:port (where to's netstack forwards the connection)
// receives it. It checks the sha256 on both ends and that to's LocalAPI
// attributes the incoming connection to from, which only holds for
// traffic that really crossed the tailnet.
//
// Wire format: 8-byte big-endian length, payload; the receiver answers
// with the payload's sha256 after identifying the sender.
func SendBytes(t testing.TB, from, to *Node, port int, data []byte) {
	t.Helper()
	fromStatus := from.MustStatus()
	if fromStatus.Self == nil {
		t.Fatalf("%s: status has no Self", from.Name)
	}
	fromKey := fromStatus.Self.PublicKey
	target := net.JoinHostPort(to.IPv4().String(), strconv.Itoa(port))
	want := sha256.Sum256(data)

	results, stop, err := listenAs(to, port)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	socks, err := proxy.SOCKS5("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(from.SOCKSPort)), nil, &net.Dialer{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	dialer, ok := socks.(proxy.ContextDialer)
	if !ok {
		t.Fatalf("SOCKS5 dialer %T has no DialContext", socks)
	}
	var conn net.Conn
	tstest.WaitFor(t, 60*time.Second, "a connection through the SOCKS5 proxy", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		c, err := dialer.DialContext(ctx, "tcp", target)
		if err != nil {
			return fmt.Errorf("%s dialing %s via SOCKS5: %w", from.Name, target, err)
		}
		conn = c
		return nil
	})
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Minute))

	start := time.Now()
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(len(data)))
	if _, err := conn.Write(hdr[:]); err != nil {
		t.Fatalf("%s -> %s: writing header: %v%s", from.Name, to.Name, err, receiverSide(results))
	}
	if _, err := io.Copy(conn, bytes.NewReader(data)); err != nil {
		t.Fatalf("%s -> %s: writing %d bytes: %v%s", from.Name, to.Name, len(data), err, receiverSide(results))
	}
	var echo [sha256.Size]byte
	if _, err := io.ReadFull(conn, echo[:]); err != nil {
		t.Fatalf("%s -> %s: reading the receiver's checksum: %v%s", from.Name, to.Name, err, receiverSide(results))
	}
	if echo != want {
		t.Fatalf("%s -> %s: receiver's sha256 %x, sent %x", from.Name, to.Name, echo, want)
	}

	var r received
	select {
	case r = <-results:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s -> %s: receiver reported nothing", from.Name, to.Name)
	}
	if r.err != nil {
		t.Fatalf("%s -> %s: receiver: %v", from.Name, to.Name, r.err)
	}
	if r.size != uint64(len(data)) || r.sum != want {
		t.Fatalf("%s -> %s: received %d bytes with sha256 %x, sent %d with %x", from.Name, to.Name, r.size, r.sum, len(data), want)
	}
	node := r.whois.Node
	if node == nil || node.Key != fromKey {
		t.Fatalf("%s -> %s: %s's whois of %s names %v, want %s (%s)", from.Name, to.Name, to.Name, r.remote, whoisName(r.whois), from.Name, fromKey.ShortString())
	}
	t.Logf("%s -> %s: %d bytes (sha256 %s…) via %s in %v; %s's whois of %s: %s",
		from.Name, to.Name, len(data), hex.EncodeToString(want[:6]), target, time.Since(start).Round(time.Millisecond),
		to.Name, r.remote, whoisName(r.whois))
}

// listenAs listens on 127.0.0.1:port, where to's netstack delivers tailnet
// connections for port, and reports each connection's payload on the
// returned channel until stop is called.
func listenAs(to *Node, port int) (results <-chan received, stop func(), err error) {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return nil, nil, fmt.Errorf("listening for %s: %v", to.Name, err)
	}
	ch := make(chan received, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go receive(c, to, ch)
		}
	}()
	return ch, func() { ln.Close() }, nil
}

// receive serves one forwarded connection on the receiving node. Results
// are reported only for connections whose header arrived; others are
// leftovers of dial attempts.
func receive(c net.Conn, to *Node, results chan<- received) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	r := received{remote: c.RemoteAddr().String()}
	report := func() {
		select {
		case results <- r:
		default:
		}
	}
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	r.size = binary.BigEndian.Uint64(hdr[:])
	if r.size > 1<<30 {
		r.err = fmt.Errorf("absurd payload length %d", r.size)
		report()
		return
	}
	h := sha256.New()
	if n, err := io.CopyN(h, c, int64(r.size)); err != nil {
		r.err = fmt.Errorf("read %d of %d bytes: %v", n, r.size, err)
		report()
		return
	}
	h.Sum(r.sum[:0])
	// The connection is still open, so the node's netstack still maps
	// this local address to the tailnet peer it came from.
	r.err = tstest.Poll(10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		w, err := to.WhoIs(ctx, r.remote)
		if err != nil {
			return fmt.Errorf("%s: whois %s: %w", to.Name, r.remote, err)
		}
		r.whois = w
		return nil
	})
	if r.err == nil {
		if _, err := c.Write(r.sum[:]); err != nil {
			r.err = fmt.Errorf("writing checksum: %w", err)
		}
	}
	report()
}

// receiverSide returns what the receiver reported, if anything arrives
// shortly, for failure messages.
func receiverSide(results <-chan received) string {
	select {
	case r := <-results:
		if r.err != nil {
			return fmt.Sprintf(" (receiver: %v)", r.err)
		}
		return fmt.Sprintf(" (receiver got %d bytes from %s)", r.size, r.remote)
	case <-time.After(5 * time.Second):
		return " (receiver reported nothing)"
	}
}

// whoisName describes a whois answer for messages.
func whoisName(w *apitype.WhoIsResponse) string {
	if w == nil || w.Node == nil {
		return "<nobody>"
	}
	host := ""
	if w.Node.Hostinfo.Valid() {
		host = w.Node.Hostinfo.Hostname()
	}
	return fmt.Sprintf("node %q (hostname %q, key %s)", w.Node.Name, host, w.Node.Key.ShortString())
}
