#!/bin/bash
# loadtest.sh N [loadgen flags...]: build this repository's server and load
# tool, start the server with empty state on loopback, create a user, a
# reusable pre-auth key and an API key, run the load tool with N simulated
# nodes (churn 100 changes/s for 60 s unless flags say otherwise) and stop
# the server. Output: the tool's table on stdout, its JSON in
# $OUT/loadtest-N.json (OUT defaults to a temporary directory).
# SERVER_PROFILE=FILE writes the server's CPU profile of the run's first
# SERVER_PROFILE_SECONDS (default 60) to FILE. SERVER_BIN=FILE runs that
# server binary instead of this tree's (to compare two servers with the
# same load tool).
#
# DB=postgres runs the server on PostgreSQL instead of SQLite: a throwaway
# cluster made with initdb in a temporary directory (as the user postgres,
# else nobody, when run as root), with PostgreSQL's default settings (fsync
# and synchronous_commit on), listening on a unix socket in that directory
# only, and removed afterwards. The binaries are the newest Debian ones in
# /usr/lib/postgresql/*/bin, or PG_BIN. The JSON is then
# $OUT/loadtest-N-postgres.json, and PostgreSQL's own memory (all its
# processes, sampled every second: peak PSS, which counts shared buffers
# once, and peak RSS summed) and CPU are printed after the table and kept
# in $OUT/loadtest-N-postgres-pg.txt.
set -euo pipefail
N=${1:?usage: [DB=sqlite|postgres] loadtest.sh N [loadgen flags...]}
shift
DB=${DB:-sqlite}
case $DB in
sqlite | postgres) ;;
*) echo "loadtest.sh: DB=$DB: use sqlite or postgres" >&2; exit 2 ;;
esac
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
OUT=${OUT:-$WORK}
mkdir -p "$OUT"
PID=
# shellcheck source=pg.sh
. "$(dirname "$0")/pg.sh"
cleanup() {
	set +e # every step runs, whatever the one before returned
	[ -n "$PID" ] && { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; }
	pg_cleanup
	rm -rf "$WORK/state"
}
trap cleanup EXIT
cd "$ROOT"
if [ -n "${SERVER_BIN:-}" ]; then
	cp "$SERVER_BIN" "$WORK/headscale"
else
	go build -o "$WORK/headscale" ./cmd/headscale
fi
go build -o "$WORK/headscale-loadgen" ./cmd/headscale-loadgen

DBCONF="database:
  type: sqlite"
JSON=$OUT/loadtest-$N.json
if [ "$DB" = postgres ]; then
	pg_start loadtest.sh headscale-loadpg
	DBCONF=$(pg_yaml)
	JSON=$OUT/loadtest-$N-postgres.json
fi

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
$DBCONF
YAML
ulimit -n "$(ulimit -Hn)"
HS=("$WORK/headscale" -c "$WORK/config.yaml")
"${HS[@]}" serve > "$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do "${HS[@]}" health >/dev/null 2>&1 && break; sleep 0.1; done
"${HS[@]}" health >/dev/null 2>&1 || { echo "loadtest.sh: the server did not come up:" >&2; cat "$WORK/server.log" >&2; exit 1; }
"${HS[@]}" users create load >/dev/null
PAK=$("${HS[@]}" preauthkeys create --user load --reusable -e 24h -o json | sed -n 's/.*"key": *"\([^"]*\)".*/\1/p')
API=$("${HS[@]}" apikeys create -o json | tr -d '"')
rc=0
if [ -n "${SERVER_PROFILE:-}" ]; then
	# The server's CPU profile over the first SERVER_PROFILE_SECONDS (60)
	# of the run: registration, for the default phases.
	curl -s -o "$SERVER_PROFILE" "http://127.0.0.1:19090/debug/pprof/profile?seconds=${SERVER_PROFILE_SECONDS:-60}" &
fi
"$WORK/headscale-loadgen" --url http://127.0.0.1:18080 --auth-key "$PAK" --api-key "$API" -n "$N" \
	--churn-rate 100 --churn-duration 60s --server-pid "$PID" --json "$JSON" --quiet "$@" || rc=$?

if [ "$DB" = postgres ]; then
	pg_stop_sampler
	pg_report | tee "$OUT/loadtest-$N-postgres-pg.txt"
fi
exit "$rc"
