package control

import (
	"bufio"
	"net"
	"net/http"
	"sync"
	"time"
)

// A Noise connection encrypts what HTTP/2 writes in records of at most
// 4 KiB and writes each record to the TCP connection on its own: two or
// more write system calls for every 4 KiB of a map, the largest single
// cost of sending full maps to thousands of nodes. coalescingConn sits
// under the Noise layer and holds full-size records back until the
// record that ends the write (a shorter one) arrives, then writes them
// all with one system call. A write that ends exactly on a full record is
// flushed by a short timer.

// noiseRecord is the size of a full Noise transport record (header and
// ciphertext): tailscale.com/control/controlbase's maxMessageSize.
const noiseRecord = 4096

// maxHeld bounds the bytes held back before they are written anyway.
const maxHeld = 64 << 10

// flushAfter is how long full records wait when no shorter one follows.
const flushAfter = time.Millisecond

var heldBufs = sync.Pool{New: func() any { b := make([]byte, 0, maxHeld+noiseRecord); return &b }}

type coalescingConn struct {
	net.Conn

	mu    sync.Mutex
	held  *[]byte // nil when nothing is held
	timer *time.Timer
	err   error // a failed timer flush, reported by the next Write
}

func (c *coalescingConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if len(b) == noiseRecord && (c.held == nil || len(*c.held) < maxHeld) {
		if c.held == nil {
			c.held = heldBufs.Get().(*[]byte)
		}
		*c.held = append(*c.held, b...)
		if c.timer == nil {
			c.timer = time.AfterFunc(flushAfter, c.flushTimer)
		} else {
			c.timer.Reset(flushAfter)
		}
		return len(b), nil
	}
	if c.held == nil {
		return c.Conn.Write(b)
	}
	*c.held = append(*c.held, b...)
	err := c.flushLocked()
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

func (c *coalescingConn) flushLocked() error {
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.held == nil {
		return nil
	}
	_, err := c.Conn.Write(*c.held)
	*c.held = (*c.held)[:0]
	heldBufs.Put(c.held)
	c.held = nil
	return err
}

func (c *coalescingConn) flushTimer() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.flushLocked(); err != nil && c.err == nil {
		c.err = err
	}
}

func (c *coalescingConn) Close() error {
	c.mu.Lock()
	_ = c.flushLocked() // best effort: the last frames (GOAWAY) before closing
	c.mu.Unlock()
	return c.Conn.Close()
}

// hijackWrapper hands AcceptHTTP a coalescingConn when it hijacks the
// connection.
type hijackWrapper struct {
	http.ResponseWriter
}

func (h hijackWrapper) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, http.ErrNotSupported
	}
	c, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	return &coalescingConn{Conn: c}, brw, nil
}
