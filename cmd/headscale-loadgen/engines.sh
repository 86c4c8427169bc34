#!/bin/bash
# engines.sh N [loadgen flags...]: loadtest.sh N on SQLite, then on a
# throwaway local PostgreSQL with default settings (DB=postgres), back to
# back in one session, and a summary of both against issue 14's targets as
# a Markdown table (needs jq). Everything is kept in $OUT (default: a new
# temporary directory): each engine's output (loadtest-N-ENGINE.txt), the
# tool's JSON and PostgreSQL's memory report.
set -euo pipefail
N=${1:?usage: engines.sh N [loadgen flags...]}
shift
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$(mktemp -d)}
export OUT
mkdir -p "$OUT"
load() { echo "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"; }
rc=0
for db in sqlite postgres; do
	echo "== $db, N=$N, $(date -u +%FT%TZ), $(load)"
	DB=$db "$HERE/loadtest.sh" "$N" "$@" 2>&1 | tee "$OUT/loadtest-$N-$db.txt" || rc=1
done
echo "== done $(date -u +%FT%TZ), $(load); output in $OUT"
if ! command -v jq >/dev/null; then
	echo "engines.sh: install jq for the summary table" >&2
	exit "$rc"
fi

# One row per engine; MiB for memory, as the tool prints it.
row() {
	local json=$1 engine=$2 pg=${3:-}
	local pgmem="-"
	if [ -n "$pg" ] && [ -f "$pg" ]; then
		pgmem=$(sed -n 's/.*peak PSS \([0-9.]*\) MiB.*peak RSS summed \([0-9.]*\) MiB.*/\1 MiB PSS (RSS summed \2 MiB)/p' "$pg")
	fi
	jq -r --arg engine "$engine" --arg pgmem "$pgmem" '
		def ph($n): (.phases[] | select(.name == $n));
		def s: . * 10 | round / 10 | tostring + " s";
		def ms: round | tostring + " ms";
		def mib: . / 1048576 | round | tostring + " MiB";
		"| \($engine) | \(ph("register").metrics.register_s | s) | \(ph("register").metrics.converge_s | s) | " +
		"\(ph("propagate").latency.p99_ms | ms) | \(ph("churn").latency.p99_ms | ms), \(ph("churn").lost) lost | " +
		"\(ph("reconnect").metrics.converge_s | s) | " +
		"\(ph("register").server.hwm_bytes | mib) / \(ph("churn").server.peak_rss_bytes | mib) / \(ph("reconnect").server.peak_rss_bytes | mib) | " +
		"\($pgmem) | \(if .ok then "pass" else "FAIL" end) |"' "$json"
}
echo
echo "| N=$N | registered | converged | propagate p99 | churn 100/s p99 | reconnect storm | server RSS after register / churn peak / storm peak | PostgreSQL memory, peak | validations |"
echo "|---|---|---|---|---|---|---|---|---|"
echo "| target | ≤ 60 s | ≤ 90 s | ≤ 250 ms | ≤ 1 s, 0 lost | ≤ 60 s | ≤ 600 MB (572 MiB) | reported | |"
[ -f "$OUT/loadtest-$N.json" ] && row "$OUT/loadtest-$N.json" SQLite
[ -f "$OUT/loadtest-$N-postgres.json" ] && row "$OUT/loadtest-$N-postgres.json" PostgreSQL "$OUT/loadtest-$N-postgres-pg.txt"
exit "$rc"
