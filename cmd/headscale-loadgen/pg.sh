# pg.sh: a throwaway PostgreSQL for the load scripts (loadtest.sh
# DB=postgres, cluster.sh), sourced by them; $WORK must be set.
#
# pg_start SCRIPT PREFIX: initdb in a new directory /tmp/PREFIX.XXXXXX (a
# socket path must stay short), as the user postgres, else nobody, when
# run as root; PostgreSQL's default settings (fsync and synchronous_commit
# on), a unix socket in that directory only, with pg_stat_statements
# loaded when PG_STATEMENTS=1 and the Debian package has it (then
# STATEMENTS=1); a database and superuser "headscale" the socket trusts.
# The binaries are the newest Debian ones in /usr/lib/postgresql/*/bin, or
# PG_BIN. Sets PGBIN, PGDIR, PGRUN, PGMAIN and DSN, and starts a sampler
# (SAMPLER) of PostgreSQL's memory every second into $WORK/pg-samples.
# pg_stop_sampler ends the sampler once the run is over; pg_report then
# prints PostgreSQL's settings, peak memory (PSS, which counts shared
# buffers once, and RSS summed over its processes), CPU and database size;
# pg_cleanup stops and removes it (for the caller's EXIT trap).

PGBIN= PGDIR= PGRUN=() PGMAIN= SAMPLER= STATEMENTS= DSN=

pg_start() {
	local script=$1 prefix=$2
	PGBIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n | tail -n1)}
	if [ ! -x "$PGBIN/initdb" ]; then
		echo "$script: needs PostgreSQL's initdb and postgres (apt install postgresql, or set PG_BIN)" >&2
		exit 1
	fi
	PGDIR=$(mktemp -d "/tmp/$prefix.XXXXXX")
	if [ "$(id -u)" = 0 ]; then
		local osuser
		osuser=$(id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)
		chown "$osuser" "$PGDIR"
		PGRUN=(runuser -u "$osuser" --)
	fi
	"${PGRUN[@]}" "$PGBIN/initdb" -D "$PGDIR/data" -U headscale -A trust -E UTF8 --no-instructions >"$WORK/initdb.log" 2>&1 ||
		{ cat "$WORK/initdb.log" >&2; exit 1; }
	local opts="-k $PGDIR -c listen_addresses="
	if [ "${PG_STATEMENTS:-}" = 1 ] && { ls "$("$PGBIN/pg_config" --sharedir 2>/dev/null || echo /nonexistent)"/extension/pg_stat_statements.control ||
		ls /usr/share/postgresql/*/extension/pg_stat_statements.control; } >/dev/null 2>&1; then
		opts="$opts -c shared_preload_libraries=pg_stat_statements"
		STATEMENTS=1
	fi
	"${PGRUN[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/postgres.log" -w -o "$opts" start >/dev/null ||
		{ cat "$PGDIR/postgres.log" >&2; exit 1; }
	"${PGRUN[@]}" "$PGBIN/createdb" -h "$PGDIR" -U headscale headscale
	if [ -n "$STATEMENTS" ]; then pgsql "create extension pg_stat_statements" >/dev/null; fi
	DSN="host=$PGDIR port=5432 dbname=headscale user=headscale sslmode=disable"
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
}

# pg_yaml prints the server's database section for it.
pg_yaml() {
	cat <<YAML
database:
  type: postgres
  postgres:
    host: $PGDIR
    port: 5432
    name: headscale
    user: headscale
YAML
}

pgsql() { "${PGRUN[@]}" "$PGBIN/psql" -h "$PGDIR" -U headscale -Atc "$1" headscale; }

pg_stop_sampler() {
	if [ -n "$SAMPLER" ]; then
		kill "$SAMPLER" 2>/dev/null || true
		wait "$SAMPLER" 2>/dev/null || true
		SAMPLER=
	fi
}

pg_report() {
	# CPU: the live processes' own time plus what the postmaster collected
	# from children that exited (fields 14-17 of /proc/PID/stat, in ticks).
	local ticks=0 p f s
	for p in $PGMAIN $(pgrep -P "$PGMAIN"); do
		f=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
		read -r -a s <<<"$f"
		ticks=$((ticks + s[11] + s[12] + s[13] + s[14]))
	done
	echo "postgresql $("$PGBIN/postgres" --version | awk '{print $3}') ($(pgsql "select 'shared_buffers ' || current_setting('shared_buffers') || ', fsync ' || current_setting('fsync') || ', synchronous_commit ' || current_setting('synchronous_commit') || ', max_connections ' || current_setting('max_connections')"))"
	awk -v cpu="$ticks" '$2>p{p=$2} $3>r{r=$3} $4>n{n=$4} {last=$2} END{
		printf "postgresql memory: peak PSS %.1f MiB (all its processes), peak RSS summed %.1f MiB, at the end PSS %.1f MiB; up to %d processes; cpu %.1fs\n", p/1024, r/1024, last/1024, n, cpu/100}' "$WORK/pg-samples"
	echo "postgresql database size: $(pgsql "select pg_size_pretty(pg_database_size('headscale'))")"
}

pg_cleanup() {
	if [ -n "$SAMPLER" ]; then kill "$SAMPLER" 2>/dev/null; fi
	if [ -n "$PGDIR" ] && [ -f "$PGDIR/data/postmaster.pid" ]; then
		"${PGRUN[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast -w stop >/dev/null 2>&1 || true
	fi
	if [ -n "$PGDIR" ]; then rm -rf "$PGDIR"; fi
}
