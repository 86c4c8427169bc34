#!/bin/bash
# loadtest.sh N [loadgen flags...]: build this repository's server and load
# tool, start the server with empty state on loopback, create a user, a
# reusable pre-auth key and an API key, run the load tool with N simulated
# nodes (churn 100 changes/s for 60 s unless flags say otherwise) and stop
# the server. Output: the tool's table on stdout, its JSON in
# $OUT/loadtest-N.json (OUT defaults to a temporary directory).
set -euo pipefail
N=${1:?usage: loadtest.sh N [loadgen flags...]}
shift
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
OUT=${OUT:-$WORK}
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$WORK/state"' EXIT
cd "$ROOT"
go build -o "$WORK/headscale" ./cmd/headscale
go build -o "$WORK/headscale-loadgen" ./cmd/headscale-loadgen
cat > "$WORK/config.yaml" <<YAML
server_url: http://127.0.0.1:18080
listen_addr: 127.0.0.1:18080
metrics_listen_addr: 127.0.0.1:19090
state_dir: $WORK/state
unix_socket: $WORK/headscale.sock
log:
  level: warn
derp:
  server:
    stun_listen_addr: 127.0.0.1:0
YAML
ulimit -n "$(ulimit -Hn)"
HS=("$WORK/headscale" -c "$WORK/config.yaml")
"${HS[@]}" serve > "$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do "${HS[@]}" health >/dev/null 2>&1 && break; sleep 0.1; done
"${HS[@]}" users create load >/dev/null
PAK=$("${HS[@]}" preauthkeys create --user load --reusable -e 24h -o json | sed -n 's/.*"key": *"\([^"]*\)".*/\1/p')
API=$("${HS[@]}" apikeys create -o json | tr -d '"')
"$WORK/headscale-loadgen" --url http://127.0.0.1:18080 --auth-key "$PAK" --api-key "$API" -n "$N" \
	--churn-rate 100 --churn-duration 60s --server-pid "$PID" --json "$OUT/loadtest-$N.json" --quiet "$@"
