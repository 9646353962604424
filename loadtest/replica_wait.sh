#!/usr/bin/env bash
# What `redis_wait_replicas = 1` costs: claims/s and latency of one campaign
# on a master (AOF everysec) with one replica on loopback, without and with
# the wait (a fence write and `WAIT 1` after each claim batch). Run it alone:
#
#   flock /tmp/stampede-bench.lock loadtest/replica_wait.sh target/release/stampede
#
# SECS (default 8) per window; ROUNDS (default 2) of the two settings.
set -u
BIN=$(realpath "$1"); SECS=${SECS:-8}; ROUNDS=${ROUNDS:-2}
cd "$(dirname "$0")/.."
. loadtest/window.sh
M=27311; R=27312; SVC=127.0.0.1:18332; DIR=$(mktemp -d)
S=""
stop_all() {
  [ -n "$S" ] && kill "$S" 2>/dev/null && wait "$S" 2>/dev/null
  S=""
  redis-cli -p "$R" shutdown nosave >/dev/null 2>&1
  redis-cli -p "$M" shutdown nosave >/dev/null 2>&1
  sleep 0.3
}
trap 'stop_all; rm -rf "$DIR"' EXIT
# run NAME REPLICAS_TO_WAIT_FOR
run() {
  rm -rf "$DIR/m" "$DIR/r" && mkdir -p "$DIR/m" "$DIR/r"
  (cd "$DIR/m" && redis-server --port "$M" --bind 127.0.0.1 --appendonly yes --appendfsync everysec \
    --save '' --auto-aof-rewrite-percentage 0 --daemonize yes --logfile redis.log)
  (cd "$DIR/r" && redis-server --port "$R" --bind 127.0.0.1 --replicaof 127.0.0.1 "$M" \
    --repl-diskless-sync-delay 0 --save '' --daemonize yes --logfile redis.log)
  for _ in $(seq 100); do
    redis-cli -p "$R" info replication | grep -q 'master_link_status:up' && break; sleep 0.1
  done
  STAMPEDE_LISTEN=$SVC STAMPEDE_REDIS_URL=redis://127.0.0.1:$M STAMPEDE_SECRET=bench-secret-bench-secret \
    STAMPEDE_REDIS_WAIT_REPLICAS=$2 RUST_LOG=warn "$BIN" >"$DIR/svc.log" 2>&1 & S=$!
  claim_window "round $round $1" "$r" "$SECS" "$M" wait
  stop_all
}
redis-server --version
r=0
for round in $(seq "$ROUNDS"); do
  r=$((r + 1)); run "no wait      " 0
  r=$((r + 1)); run "WAIT 1 fenced" 1
done
