#!/bin/bash
# cluster.sh N SERVERS [loadgen flags...]: one tailnet served by SERVERS
# servers (cluster.enabled) on one throwaway PostgreSQL, N simulated nodes
# spread over them (node i on server i mod SERVERS), every phase; prints
# the tool's report, PostgreSQL's memory and CPU, and the load average
# seen during the run.
#
# Builds this repository's server and load tool; makes a PostgreSQL
# cluster with initdb in a temporary directory as loadtest.sh DB=postgres
# does (PostgreSQL's default settings, a unix socket only, removed
# afterwards; as the user postgres, else nobody, when run as root), with
# pg_stat_statements loaded when the Debian package has it; starts server
# i on 127.0.0.1:18080+i (metrics and pprof on 127.0.0.1:19090+i), all
# sharing one noise private key, with no embedded DERP relay (a DERP map
# from a file, as the runbook's cluster setup). The tool gets every
# server's URL, PID and /metrics and the database's DSN, so each phase
# reports same-server and cross-server latency, CPU and RSS per server,
# change-log records applied, the servers' database operations and
# PostgreSQL's transactions and statements per change.
#
# Environment: DEBOUNCE (cluster.debounce, default 10ms); OUT (where the
# JSON cluster-N-SERVERS[-debounce].json, PostgreSQL's report and the
# servers' logs are kept; default a temporary directory); PG_BIN;
# SERVER_PROFILE=PREFIX writes each server's CPU profile to PREFIX-i.pprof,
# over SERVER_PROFILE_SECONDS (60) starting SERVER_PROFILE_DELAY (0)
# seconds into the run. Defaults: churn 100 changes/s for 60 s.
set -euo pipefail
N=${1:?usage: cluster.sh N SERVERS [loadgen flags...]}
S=${2:?usage: cluster.sh N SERVERS [loadgen flags...]}
shift 2
DEBOUNCE=${DEBOUNCE:-10ms}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
OUT=${OUT:-$WORK}
mkdir -p "$OUT"
PIDS=() LOADS= PROFILERS=()
# shellcheck source=pg.sh
. "$(dirname "$0")/pg.sh"
cleanup() {
	set +e # every step runs, whatever the one before returned
	for p in "$LOADS" "${PROFILERS[@]}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	pg_cleanup
	rm -rf "$WORK"/state-*
}
trap cleanup EXIT
cd "$ROOT"
go build -o "$WORK/headscale" ./cmd/headscale
go build -o "$WORK/headscale-loadgen" ./cmd/headscale-loadgen
PG_STATEMENTS=1 pg_start cluster.sh headscale-clusterpg

# One DERP region nobody serves: the nodes are simulated and need no
# relay; the servers must not each add their own embedded one.
cat >"$WORK/derp.yaml" <<YAML
regions:
  900:
    regionid: 900
    regioncode: load
    regionname: Load test
    nodes:
      - name: 900a
        regionid: 900
        hostname: 127.0.0.1
        derpport: 1
        stunport: -1
YAML
URLS= METRICS=
for i in $(seq 0 $((S - 1))); do
	cat >"$WORK/config-$i.yaml" <<YAML
server_url: http://127.0.0.1:$((18080 + i))
listen_addr: 127.0.0.1:$((18080 + i))
metrics_listen_addr: 127.0.0.1:$((19090 + i))
grpc_listen_addr: ""
state_dir: $WORK/state-$i
unix_socket: $WORK/headscale-$i.sock
noise:
  private_key_path: $WORK/noise_private.key
log:
  level: warn
derp:
  paths: [$WORK/derp.yaml]
  urls: []
  server:
    enabled: false
$(pg_yaml)
cluster:
  enabled: true
  server_name: s$i
  debounce: $DEBOUNCE
YAML
	URLS=${URLS:+$URLS,}http://127.0.0.1:$((18080 + i))
	METRICS=${METRICS:+$METRICS,}http://127.0.0.1:$((19090 + i))/metrics
done
ulimit -n "$(ulimit -Hn)"
hs() { "$WORK/headscale" -c "$WORK/config-$1.yaml" "${@:2}"; }
for i in $(seq 0 $((S - 1))); do
	"$WORK/headscale" -c "$WORK/config-$i.yaml" serve >"$OUT/server-$i.log" 2>&1 &
	PIDS+=($!) # the server's own PID (not a subshell's): the tool reads its CPU and RSS
	# The first server writes the shared noise key and the schema.
	for _ in $(seq 200); do hs "$i" health >/dev/null 2>&1 && break; sleep 0.1; done
	hs "$i" health >/dev/null 2>&1 || { echo "cluster.sh: server $i did not come up:" >&2; cat "$OUT/server-$i.log" >&2; exit 1; }
done
hs 0 users create load >/dev/null
PAK=$(hs 0 preauthkeys create --user load --reusable -e 24h -o json | sed -n 's/.*"key": *"\([^"]*\)".*/\1/p')
API=$(hs 0 apikeys create -o json | tr -d '"')
PIDLIST=$(IFS=,; echo "${PIDS[*]}")

# The load average every 5 s, to say how busy the machine was.
(while :; do cut -d' ' -f1 /proc/loadavg; sleep 5; done) >"$WORK/loads" &
LOADS=$!
if [ -n "${SERVER_PROFILE:-}" ]; then
	for i in $(seq 0 $((S - 1))); do
		(sleep "${SERVER_PROFILE_DELAY:-0}" && curl -s -o "$SERVER_PROFILE-$i.pprof" \
			"http://127.0.0.1:$((19090 + i))/debug/pprof/profile?seconds=${SERVER_PROFILE_SECONDS:-60}") &
		PROFILERS+=($!)
	done
fi
JSON=$OUT/cluster-$N-$S-$DEBOUNCE.json
echo "== $N nodes over $S servers, cluster.debounce $DEBOUNCE, $(date -u +%FT%TZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
rc=0
"$WORK/headscale-loadgen" --url "$URLS" --auth-key "$PAK" --api-key "$API" -n "$N" \
	--churn-rate 100 --churn-duration 60s --server-pid "$PIDLIST" --metrics-url "$METRICS" --pg-dsn "$DSN" \
	--json "$JSON" --quiet "$@" || rc=$?
kill "$LOADS" 2>/dev/null || true
wait "$LOADS" 2>/dev/null || true
LOADS=
for p in "${PROFILERS[@]}"; do wait "$p" 2>/dev/null || true; done
PROFILERS=()
pg_stop_sampler
{
	awk '{s+=$1; if ($1>m) m=$1; n++} END{if (n) printf "load average during the run (1-min, every 5 s): mean %.2f, max %.2f\n", s/n, m}' "$WORK/loads"
	pg_report
	if [ -n "$STATEMENTS" ]; then
		echo "postgresql: the statements called most (pg_stat_statements, whole run):"
		pgsql "select lpad(calls::text, 9) || '  ' || lpad(round(total_exec_time)::text, 7) || ' ms  ' || left(regexp_replace(query, '\s+', ' ', 'g'), 110) from pg_stat_statements where dbid = (select oid from pg_database where datname = 'headscale') order by calls desc limit 12"
	fi
} | tee "$OUT/cluster-$N-$S-$DEBOUNCE-pg.txt"
exit "$rc"
