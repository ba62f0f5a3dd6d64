#!/usr/bin/env bash
# Reproduces the server tables of docs/BENCHMARKS.md: starts `mixtral serve` on a loopback port
# (weights read into memory), runs bench/load_gen at each concurrency level, then stops the
# server by its PID.
#   bash bench/run_server.sh BUILD_DIR MODEL [LEVELS] [REQUESTS] [MAX_TOKENS] [-- extra serve flags]
# e.g. bash bench/run_server.sh build /tmp/slice/gguf/slice-q8_0.gguf 1,16 64 32 -- --prefill-chunk 32
# REQUESTS per level are shared by the clients: with more requests than streams, requests end
# and start while others decode (the steady state: prompt chunks share steps with decoding).
# PORT (default 18091) may be set in the environment. Leave the machine otherwise idle.
set -euo pipefail
BUILD=${1:-build}
MODEL=${2:?model}
LEVELS=${3:-1,4,16}
REQUESTS=${4:-64}
MAX_TOKENS=${5:-32}
shift $(( $# < 5 ? $# : 5 ))
[ "${1:-}" = "--" ] && shift
PORT=${PORT:-18091}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
"$ROOT/$BUILD/mixtral" serve -m "$MODEL" --port "$PORT" --parallel 16 -c 512 -t 2 --no-mmap "$@" 2> /tmp/run_server.$PORT.log &
PID=$!
trap 'kill "$PID" 2> /dev/null || true; wait "$PID" 2> /dev/null || true' EXIT
for _ in $(seq 300); do
  grep -q "listening on" /tmp/run_server.$PORT.log && break
  kill -0 "$PID" 2> /dev/null || { cat /tmp/run_server.$PORT.log; exit 1; }
  sleep 1
done
"$ROOT/$BUILD/bench/load_gen" --port "$PORT" -c "$LEVELS" -n "$REQUESTS" --max-tokens "$MAX_TOKENS" --duration 120
# the server's own step durations (bash's /dev/tcp: no curl needed)
exec 3<> "/dev/tcp/127.0.0.1/$PORT"
printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
grep -E '^mixtral_step_seconds_(sum|count)' <&3 || true
