#!/usr/bin/env bash
# The web path measured with ApacheBench, the way issue 13 set its target: `ab -c 32`, a new
# connection per request, against `lightjobs-compare web-serve`, the no-op route and then
# `POST /dispatch` on a fresh app each round. Several binaries (say, before and after a
# change) alternate round by round, so that the machine's drift falls on all of them.
#
#   benches/compare/ab.sh [ROUNDS] [REQUESTS] [BINARY ...]
#
# Defaults: 3 rounds, 30,000 requests, target/release/lightjobs-compare (build it first with
# `cargo build --release`). LIGHTJOBS_WEB_SERVE_ARGS passes options to `web-serve`
# (`--workers`: Workers run in the app's process; `--alone`: a statement per dispatch). Needs `ab` (Debian: apache2-utils) and the server at
# LIGHTJOBS_BENCH_URL (default mysql://root@127.0.0.1:3306), on this machine: the CPU
# columns read mariadbd's and the app's CPU time from /proc (µs per request).
set -euo pipefail

rounds="${1:-3}"
requests="${2:-30000}"
shift $(( $# > 2 ? 2 : $# ))
binaries=("$@")
[ ${#binaries[@]} -gt 0 ] || binaries=("$(dirname "$0")/target/release/lightjobs-compare")
url="${LIGHTJOBS_BENCH_URL:-mysql://root@127.0.0.1:3306}"
hostport="${url#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"; [ "$port" != "$hostport" ] || port=3306
command -v ab >/dev/null || { echo "ab not found (apt-get install apache2-utils)" >&2; exit 1; }

empty="$(mktemp)"
app=""
cleanup() { [ -z "$app" ] || kill "$app" 2>/dev/null || true; rm -f "$empty"; }
trap cleanup EXIT

inserts() {
  mariadb --no-defaults -uroot -h"$host" -P"$port" -N -B \
    -e "SHOW GLOBAL STATUS WHERE Variable_name = 'Com_insert'" | awk '{print $2}'
}
# User + system CPU of a process in clock ticks; 0 without one (a server elsewhere).
cpu_ticks() { if [ -n "$1" ]; then awk '{print $14 + $15}' "/proc/$1/stat"; else echo 0; fi; }
hz="$(getconf CLK_TCK)"
server_pid="$(pgrep -x mariadbd | head -n1 || true)"

# ab's figures for one load: requests/s, p50 ms, p99 ms.
load() {
  ab -q -c 32 -n "$requests" "$@" 2>&1 | awk '
    /Non-2xx/ { bad = 1 }
    /Requests per second/ { rps = $4 }
    /^ +50%/ { p50 = $2 }
    /^ +99%/ { p99 = $2 }
    END { if (bad) print "non-2xx 0 0"; else print rps, p50, p99 }'
}

printf '| binary | round | no-op req/s | dispatch req/s | × no-op | p50 ms | p99 ms | rows per INSERT | app µs/req | mariadbd µs/req |\n'
printf '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n'
for round in $(seq "$rounds"); do
  for bin in "${binaries[@]}"; do
    out="$(mktemp)"
    # shellcheck disable=SC2086 # the options are words
    "$bin" --url "$url" web-serve ${LIGHTJOBS_WEB_SERVE_ARGS:-} >"$out" 2>&1 &
    app=$!
    for _ in $(seq 100); do grep -q '^http://' "$out" && break; sleep 0.1; done
    base="$(grep -m1 '^http://' "$out")" || { cat "$out" >&2; exit 1; }
    rm -f "$out"
    ab -q -c 32 -n 5000 -p "$empty" -T text/plain "$base/dispatch" >/dev/null # warm-up
    read -r noop _ _ <<<"$(load "$base/noop")"
    c0="$(inserts)"; a0="$(cpu_ticks "$app")"; s0="$(cpu_ticks "$server_pid")"
    read -r rps p50 p99 <<<"$(load -p "$empty" -T text/plain "$base/dispatch")"
    c1="$(inserts)"; a1="$(cpu_ticks "$app")"; s1="$(cpu_ticks "$server_pid")"
    kill "$app"; wait "$app" 2>/dev/null || true; app=""
    awk -v b="$(basename "$(dirname "$bin")")/$(basename "$bin")" -v r="$round" -v n="$noop" \
        -v d="$rps" -v p50="$p50" -v p99="$p99" -v req="$requests" -v c="$(( c1 - c0 ))" \
        -v a="$(( a1 - a0 ))" -v s="$(( s1 - s0 ))" -v hz="$hz" 'BEGIN {
      printf "| %s | %d | %.0f | %.0f | %.2f | %s | %s | %.1f | %.0f | %.0f |\n",
        b, r, n, d, (n > 0 ? d / n : 0), p50, p99, (c > 0 ? req / c : 0),
        a * 1e6 / hz / req, s * 1e6 / hz / req }'
  done
done
