// Package loadgen simulates many Tailscale nodes against a control server
// over the real protocol and measures how the server copes.
//
// Each simulated node has fresh machine, node and disco keys and one Noise
// (ts2021) connection with HTTP/2 inside, on which it registers with a
// pre-auth key (/machine/register), keeps a streaming /machine/map open and
// sends its endpoint changes the way tailscaled does: a non-streaming
// MapRequest with OmitPeers, Endpoints, DiscoKey and Hostinfo. A node keeps
// no netmap: each map frame (4-byte little-endian length, JSON, zstd when
// asked) is scanned for peer IDs, full peer lists, removals and endpoint
// patches, and the node keeps a bit set of the run's nodes it holds, a bit
// set of those its stream last said are offline, and the newest endpoint of
// each watched node.
//
// Endpoints carry their own order: node i's endpoint is
// [fdRR:RRRR:RRRR:RRRR::i]:10000+seq, with a random per-run prefix, so a
// receiver can tell a newer value from an older one (a regression) and a
// node of this run from one an earlier run left behind.
//
// The phases, in order:
//
//   - register: N nodes register at the given concurrency and open their
//     map streams; then every node must hold all N-1 peers (with their
//     endpoints) and, within ten seconds, see every one of them online.
//     Reports the time to register all and to converge.
//   - propagate: K single endpoint changes, one at a time, each followed
//     until every other node has decoded it: p50/p90/p99/max per change.
//   - churn: changes at a fixed rate from random watched nodes; the latency
//     distribution, changes lost (not seen by some node within the grace
//     period) and regressions (a node seeing an older endpoint after a
//     newer one).
//   - reconnect: every node's connection drops at once and reconnects; the
//     time until all have converged again.
//   - slow: one node stops reading its connection (and advertises a 16 KiB
//     HTTP/2 window, so the server's writes to it block after a few hundred
//     frames rather than the 4 MiB tailscaled allows); a paced fill of
//     changes, then K measured changes to everyone else, then the node
//     reads again and must catch up.
//
// With several servers (Config.URL a comma-separated list, node i on the
// (i mod k)-th), the propagate, churn and slow phases also split the
// latency by receiver: on the sending node's server or on another one.
//
// Every phase reports wall time, the server's CPU seconds and peak RSS
// (given its PID; given several, each one's and their sum), the servers'
// change-log and database counters (given their /metrics URLs: records
// applied, apply lag, headscale_db_* operations), PostgreSQL's
// transactions (pg_stat_database) and statements (pg_stat_statements,
// when installed) per change (given a DSN), the bytes the nodes received,
// and its validations:
// nothing lost, regressed or stale, and with an API key the server's node
// list (Headscale's REST API) matching the simulated nodes. [Run] returns
// a [Report] that prints as a table or JSON.
//
// [StartFleet] runs only the register phase and keeps the nodes connected
// until [Fleet.Close]: a large tailnet for other clients to join while it
// runs (the end-to-end tests put official tailscaled nodes inside one).
// [RegisterOne] makes a single registration on a connection of its own
// (the crash test, pkg/crashtest, counts them), and Config.ProbeReconnect
// keeps nodes from waiting out the Tailscale client's 10 s dial timeout
// when they try to reconnect to a server that is restarting.
//
// Each node costs the tool about 70 KiB (mostly Go's HTTP/2 client) and
// three goroutines; full maps being decoded at once are bounded by a memory
// budget so that a reconnect storm of a large tailnet cannot exhaust the
// tool before the server. Nothing here depends on this repository's
// server: any Tailscale control server and a reusable pre-auth key will do.
package loadgen
