//go:build !linux

package store

import "syscall"

// setUserTimeout does nothing where TCP_USER_TIMEOUT is not known; TCP
// keepalives still find a dead peer of an idle connection.
func setUserTimeout(string, string, syscall.RawConn) error { return nil }
