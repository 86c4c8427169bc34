package store

import "syscall"

// tcpUserTimeout is Linux's TCP_USER_TIMEOUT socket option (not in package
// syscall): how long sent data may stay unacknowledged before the kernel
// drops the connection.
const tcpUserTimeout = 0x12

// setUserTimeout bounds how long a write to PostgreSQL may wait for an
// acknowledgement, so that a query on a connection whose peer vanished
// (a host down, a network partition: no reset ever arrives) fails after
// deadPeerTimeout instead of the kernel's retransmission limit (about
// fifteen minutes).
func setUserTimeout(network, _ string, c syscall.RawConn) error {
	if network != "tcp" && network != "tcp4" && network != "tcp6" {
		return nil
	}
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, int(deadPeerTimeout.Milliseconds()))
	})
	if err != nil {
		return err
	}
	return serr
}
