#!/usr/bin/env bash
# Side by side, in one run, against one redis-server: the yardstick (the
# thinnest actix + Redis claim path, ../shared/yardstick) and stampede.
#
#   loadtest/compare.sh [seconds=15] [connections=64] [appendfsync=everysec] [rounds=2]
#
# Needs: redis-server, wrk, both release builds (this script builds them).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}; CONNS=${2:-64}; FSYNC=${3:-everysec}; ROUNDS=${4:-2}
YARD_SRC=${YARDSTICK_SRC:-../shared/yardstick}
WORK=$(mktemp -d)
RPORT=16379; YPORT=18089; SPORT=18080
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

cp -r "$YARD_SRC" "$WORK/yardstick"
(cd "$WORK/yardstick" && CARGO_TARGET_DIR=/tmp/yardstick-target cargo build --release -q)
cargo build --release -q --bin stampede

redis-server --port $RPORT --save '' --appendonly yes --appendfsync "$FSYNC" --dir "$WORK" \
  --daemonize no --logfile "$WORK/redis.log" & pids+=($!)
sleep 0.5
redis-cli -p $RPORT SET '{bench}:stock' 100000000 >/dev/null
YARDSTICK_LISTEN=127.0.0.1:$YPORT YARDSTICK_REDIS_URL=redis://127.0.0.1:$RPORT \
  /tmp/yardstick-target/release/yardstick & pids+=($!)
STAMPEDE_LISTEN=127.0.0.1:$SPORT STAMPEDE_REDIS_URL=redis://127.0.0.1:$RPORT \
  STAMPEDE_SECRET=bench-secret-bench-secret RUST_LOG=warn \
  target/release/stampede & pids+=($!)
for _ in $(seq 100); do
  curl -sf localhost:$SPORT/readyz >/dev/null && curl -sf localhost:$YPORT/hello >/dev/null && break
  sleep 0.2
done
curl -sf localhost:$SPORT/v1/campaigns -H 'content-type: application/json' -d \
  '{"id":"bench","name":"bench","stock":4000000000,"limits":{"per_phone":1,"per_device":1},
    "coupon":{"kind":"amount_off","amount_off":100}}' >/dev/null

run() { # name url
  local out
  out=$(ROUND=$ROUND wrk -t2 -c"$CONNS" -d"${SECS}s" --latency -s loadtest/claim.lua "$2")
  local rps p50 p99 bad
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  bad=$(awk '/non-2xx/ {print $NF}' <<<"$out")
  printf '%-10s %10s req/s  p50 %-8s p99 %-8s non-2xx %s\n' "$1" "$rps" "$p50" "$p99" "${bad:-0}"
  echo "$rps" >> "$WORK/$1.rps"
}
echo "appendfsync=$FSYNC connections=$CONNS duration=${SECS}s cores=$(nproc)"
ROUND=0
for r in $(seq "$ROUNDS"); do
  ROUND=$r
  run yardstick "http://127.0.0.1:$YPORT/claim/bench"
  run stampede "http://127.0.0.1:$SPORT/v1/campaigns/bench/claims"
done
y=$(awk '{s+=$1} END {print s/NR}' "$WORK/yardstick.rps")
s=$(awk '{s+=$1} END {print s/NR}' "$WORK/stampede.rps")
printf 'mean yardstick %.0f req/s, stampede %.0f req/s, ratio stampede/yardstick %.2f\n' "$y" "$s" "$(awk -v a="$s" -v b="$y" 'BEGIN {print a/b}')"
if [ -n "${HTTP_ONLY:-}" ]; then
  echo "HTTP only (no Redis): GET /hello vs GET /healthz"
  for name in yardstick stampede; do
    url="http://127.0.0.1:$YPORT/hello"; [ "$name" = stampede ] && url="http://127.0.0.1:$SPORT/healthz"
    printf '%-10s %s req/s\n' "$name" "$(wrk -t2 -c"$CONNS" -d"${SECS}s" "$url" | awk '/Requests\/sec/ {print $2}')"
  done
fi
echo "issued by stampede: $(curl -s localhost:$SPORT/v1/campaigns/bench | sed 's/.*"issued":\([0-9]*\).*/\1/')"
