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
// Everything here is test-only: the harness lives in _test.go files and this
// file exists to document the package. Run the tests with
//
//	go test ./e2e/ -v
//
// and skip them with -short.
package e2e
