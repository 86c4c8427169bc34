// Package e2e holds end-to-end tests for the headscale control server.
//
// The tests build the headscale binary from ./cmd/headscale and the official
// Tailscale client (tailscaled and tailscale, at the tailscale.com version
// pinned in go.mod), start a real server and real clients, and drive them
// through the headscale CLI and the tailscale CLI/LocalAPI. When run as root,
// the test binary re-executes itself inside a private network namespace that
// has only a loopback interface, so no packet leaves the machine; otherwise it
// falls back to the host loopback.
//
// Servers run at log level debug and write their logs, with the CLI's
// output, into one directory for the whole run. After the last test
// TestMain searches it for every secret the run created (pre-auth and API
// keys, right and deliberately wrong ones, and each server's private keys)
// and fails the run if a log line carries one; the directory is kept and
// named when that happens.
//
// Everything here is test-only: the harness lives in _test.go files and this
// file exists to document the package. Run the tests with
//
//	go test ./e2e/ -v
//
// and skip them with -short.
package e2e
