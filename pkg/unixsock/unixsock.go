// Package unixsock tells whether a server answers on a unix socket: the
// one check the commands that must not run beside a server (restore,
// imports, direct database access) and the server's own start share.
package unixsock

import (
	"net"
	"time"
)

// Answers reports whether something accepts a connection on the unix
// socket at path within a second. A socket file left by a crashed server
// does not answer.
func Answers(path string) bool {
	if path == "" {
		return false
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
