package store

import (
	"net"
	"syscall"
	"testing"
)

// TestDialerBoundsDeadPeers: a TCP connection to PostgreSQL gives up on
// unacknowledged data after deadPeerTimeout (TCP_USER_TIMEOUT is set).
func TestDialerBoundsDeadPeers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := dialer().DialContext(t.Context(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	raw.Control(func(fd uintptr) { got, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout) })
	if gerr != nil || got != int(deadPeerTimeout.Milliseconds()) {
		t.Fatalf("TCP_USER_TIMEOUT = %d ms (%v), want %d", got, gerr, deadPeerTimeout.Milliseconds())
	}
}
