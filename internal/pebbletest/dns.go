package pebbletest

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/net/dns/dnsmessage"
)

// DNS is a small authoritative DNS server on loopback for tests: it answers
// A queries for its names with 127.0.0.1, every other question about them
// (AAAA, CAA, TXT) with an empty answer, and names it does not know with
// NXDOMAIN. It serves UDP and TCP on the same port (Pebble asks over TCP).
type DNS struct {
	names map[string]bool // lower case, with the trailing dot; empty: every name
	udp   net.PacketConn
	tcp   net.Listener
	wg    sync.WaitGroup
	once  sync.Once
}

// StartDNS serves names (any name when none are given) on a free loopback
// port. Close stops it.
func StartDNS(names ...string) (*DNS, error) {
	d := &DNS{names: map[string]bool{}}
	for _, n := range names {
		d.names[strings.ToLower(strings.TrimSuffix(n, "."))+"."] = true
	}
	var err error
	if d.tcp, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return nil, err
	}
	port := d.tcp.Addr().(*net.TCPAddr).Port
	if d.udp, err = net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err != nil {
		d.tcp.Close()
		return nil, err
	}
	d.wg.Go(d.serveUDP)
	d.wg.Go(d.serveTCP)
	return d, nil
}

// Addr is the "127.0.0.1:port" the server answers on (UDP and TCP).
func (d *DNS) Addr() string { return d.tcp.Addr().String() }

// Close stops the server and waits for its goroutines.
func (d *DNS) Close() {
	d.once.Do(func() {
		d.udp.Close()
		d.tcp.Close()
		d.wg.Wait()
	})
}

func (d *DNS) serveUDP() {
	buf := make([]byte, 1500)
	for {
		n, from, err := d.udp.ReadFrom(buf)
		if err != nil {
			return
		}
		if out, err := d.answer(buf[:n]); err == nil {
			d.udp.WriteTo(out, from)
		}
	}
}

func (d *DNS) serveTCP() {
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		c, err := d.tcp.Accept()
		if err != nil {
			return
		}
		conns.Go(func() {
			defer c.Close()
			for {
				var l [2]byte
				if _, err := io.ReadFull(c, l[:]); err != nil {
					return
				}
				q := make([]byte, binary.BigEndian.Uint16(l[:]))
				if _, err := io.ReadFull(c, q); err != nil {
					return
				}
				out, err := d.answer(q)
				if err != nil {
					return
				}
				if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(out))), out...)); err != nil {
					return
				}
			}
		})
	}
}

// answer builds the response to one query message.
func (d *DNS) answer(query []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	if h.Response {
		return nil, errors.New("not a query")
	}
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	name := strings.ToLower(q.Name.String())
	known := len(d.names) == 0 || d.names[name]
	if !known {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	if known && q.Type == dnsmessage.TypeA && q.Class == dnsmessage.ClassINET {
		err := b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 1},
			dnsmessage.AResource{A: [4]byte{127, 0, 0, 1}})
		if err != nil {
			return nil, err
		}
	}
	return b.Finish()
}
