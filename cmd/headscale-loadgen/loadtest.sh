#!/bin/bash
# loadtest.sh N [loadgen flags...]: build this repository's server and load
# tool, start the server with empty state on loopback, create a user, a
# reusable pre-auth key and an API key, run the load tool with N simulated
# nodes (churn 100 changes/s for 60 s unless flags say otherwise) and stop
# the server. Output: the tool's table on stdout, its JSON in
# $OUT/loadtest-N.json (OUT defaults to a temporary directory).
# SERVER_PROFILE=FILE writes the server's CPU profile of the run's first
# SERVER_PROFILE_SECONDS (default 60) to FILE.
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
PID= PGDIR= PGBIN= PGRUN=() SAMPLER=
cleanup() {
	set +e # every step runs, whatever the one before returned
	[ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
	[ -n "$PID" ] && { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; }
	if [ -n "$PGDIR" ] && [ -f "$PGDIR/data/postmaster.pid" ]; then
		"${PGRUN[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast -w stop >/dev/null 2>&1 || true
	fi
	[ -n "$PGDIR" ] && rm -rf "$PGDIR"
	rm -rf "$WORK/state"
}
trap cleanup EXIT
cd "$ROOT"
go build -o "$WORK/headscale" ./cmd/headscale
go build -o "$WORK/headscale-loadgen" ./cmd/headscale-loadgen

DBCONF="database:
  type: sqlite"
JSON=$OUT/loadtest-$N.json
if [ "$DB" = postgres ]; then
	PGBIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n | tail -n1)}
	if [ ! -x "$PGBIN/initdb" ]; then
		echo "loadtest.sh: DB=postgres needs PostgreSQL's initdb and postgres (apt install postgresql, or set PG_BIN)" >&2
		exit 1
	fi
	# A socket path must stay short (about 100 bytes): /tmp, not $WORK.
	PGDIR=$(mktemp -d /tmp/headscale-loadpg.XXXXXX)
	if [ "$(id -u)" = 0 ]; then
		PGUSER_OS=$(id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)
		chown "$PGUSER_OS" "$PGDIR"
		PGRUN=(runuser -u "$PGUSER_OS" --)
	fi
	# The superuser is called headscale and the socket trusts it: nobody
	# else can reach the directory. Everything else is PostgreSQL's default.
	"${PGRUN[@]}" "$PGBIN/initdb" -D "$PGDIR/data" -U headscale -A trust -E UTF8 --no-instructions >"$WORK/initdb.log" 2>&1 ||
		{ cat "$WORK/initdb.log" >&2; exit 1; }
	"${PGRUN[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/postgres.log" -w \
		-o "-k $PGDIR -c listen_addresses=" start >/dev/null ||
		{ cat "$PGDIR/postgres.log" >&2; exit 1; }
	"${PGRUN[@]}" "$PGBIN/createdb" -h "$PGDIR" -U headscale headscale
	DBCONF="database:
  type: postgres
  postgres:
    host: $PGDIR
    port: 5432
    name: headscale
    user: headscale"
	JSON=$OUT/loadtest-$N-postgres.json
	PGREPORT=$OUT/loadtest-$N-postgres-pg.txt
	PGMAIN=$(head -n1 "$PGDIR/data/postmaster.pid")
	# Every second: the sum over the postmaster and its children of PSS and
	# RSS (KiB) and the number of processes. A process may exit while it is
	# read: the sampler must not stop for that (no errexit/pipefail here).
	(
		set +e +o pipefail
		while :; do
			pids="$PGMAIN $(pgrep -P "$PGMAIN" | tr '\n' ' ')"
			for p in $pids; do cat "/proc/$p/smaps_rollup" 2>/dev/null; done |
				awk -v t="$(date +%s)" -v n="$(wc -w <<<"$pids")" '/^Rss:/{r+=$2} /^Pss:/{p+=$2} END{print t, p, r, n}'
			sleep 1
		done
	) >"$WORK/pg-samples" &
	SAMPLER=$!
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
	kill "$SAMPLER" 2>/dev/null || true
	wait "$SAMPLER" 2>/dev/null || true
	SAMPLER=
	# CPU: the live processes' own time plus what the postmaster collected
	# from children that exited (fields 14-17 of /proc/PID/stat, in ticks).
	ticks=0
	for p in $PGMAIN $(pgrep -P "$PGMAIN"); do
		f=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
		read -r -a s <<<"$f"
		ticks=$((ticks + s[11] + s[12] + s[13] + s[14]))
	done
	{
		pgsql() { "${PGRUN[@]}" "$PGBIN/psql" -h "$PGDIR" -U headscale -Atc "$1" headscale; }
		echo "postgresql $("$PGBIN/postgres" --version | awk '{print $3}') ($(pgsql "select 'shared_buffers ' || current_setting('shared_buffers') || ', fsync ' || current_setting('fsync') || ', synchronous_commit ' || current_setting('synchronous_commit') || ', max_connections ' || current_setting('max_connections')"))"
		awk -v cpu="$ticks" '$2>p{p=$2} $3>r{r=$3} $4>n{n=$4} {last=$2} END{
			printf "postgresql memory: peak PSS %.1f MiB (all its processes), peak RSS summed %.1f MiB, at the end PSS %.1f MiB; up to %d processes; cpu %.1fs\n", p/1024, r/1024, last/1024, n, cpu/100}' "$WORK/pg-samples"
		echo "postgresql database size: $(pgsql "select pg_size_pretty(pg_database_size('headscale'))")"
	} | tee "$PGREPORT"
fi
exit "$rc"
