#!/usr/bin/env bash
# The idle query load of worker processes: statements per second the server receives from
# PROCESSES idle `process:jobs` processes of each BINARY (an app binary built with
# `lightjobs::cli::run_with`, e.g. `target/debug/examples/fault_worker`), read as the
# server's `Questions` over WINDOW seconds once they have been idle SETTLE seconds (a fetch
# loop polls at its minimum for 30 s after its last job, then backs off to its maximum).
# The server's own rate with no worker is measured first and subtracted. Binaries (say,
# before and after a change) alternate round by round.
#
#   benches/compare/idle.sh [ROUNDS] [PROCESSES] BINARY ...
#
# Needs the server at LIGHTJOBS_BENCH_URL (default mysql://root@127.0.0.1:3306) with
# nothing else talking to it; uses the database `bench_idle`, dropped at the end.
set -euo pipefail

rounds="${1:?rounds}"
processes="${2:?processes}"
shift 2
[ $# -gt 0 ] || { echo "name at least one binary" >&2; exit 1; }
settle="${SETTLE:-40}"
window="${WINDOW:-60}"
url="${LIGHTJOBS_BENCH_URL:-mysql://root@127.0.0.1:3306}"
hostport="${url#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"; [ "$port" != "$hostport" ] || port=3306
sql() { mariadb --no-defaults -uroot -h"$host" -P"$port" -N -B -e "$1"; }
questions() { sql "SHOW GLOBAL STATUS WHERE Variable_name = 'Questions'" | awk '{print $2}'; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sql "DROP DATABASE IF EXISTS bench_idle" || true; }
trap cleanup EXIT

# Statements per second over the window, less the two of each reading.
rate() {
  local q0 q1
  q0="$(questions)"; sleep "$window"; q1="$(questions)"
  awk -v a="$q0" -v b="$q1" -v w="$window" 'BEGIN { printf "%.2f", (b - a - 1) / w }'
}

base="$(rate)"
echo "server alone: $base statements/s"
printf '| round | binary | statements/s, %s idle process(es) | per process |\n|---:|---|---:|---:|\n' "$processes"
for round in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    sql "DROP DATABASE IF EXISTS bench_idle; CREATE DATABASE bench_idle"
    LIGHTJOBS_DATABASE_URL="$url/bench_idle" "$bin" migrate >/dev/null
    pids=()
    for _ in $(seq 1 "$processes"); do
      LIGHTJOBS_DATABASE_URL="$url/bench_idle" "$bin" process:jobs >/dev/null 2>&1 &
      pids+=("$!")
    done
    sleep "$settle"
    got="$(rate)"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    pids=()
    awk -v r="$round" -v b="$bin" -v g="$got" -v z="$base" -v n="$processes" \
      'BEGIN { printf "| %d | `%s` | %.2f | %.2f |\n", r, b, g - z, (g - z) / n }'
  done
done
