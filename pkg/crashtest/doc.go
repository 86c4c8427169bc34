// Package crashtest measures crash safety: it runs this repository's
// server binary on loopback, keeps simulated nodes (pkg/loadgen) connected,
// lets more nodes register and admin writers edit through the REST API,
// kills the server with SIGKILL at a random moment, checks the database
// file with PRAGMA integrity_check, restarts the server and verifies that
// every write the server acknowledged is still there (an unanswered write
// may or may not be) and that every simulated node reconnects and holds
// all its peers again. cmd/headscale-crashtest is its command line.
package crashtest
