#!/usr/bin/env bash
# Side by side, in one run, against one redis-server: the yardstick (the
# thinnest actix + Redis claim path, ../shared/yardstick) and stampede.
#
#   loadtest/compare.sh [seconds=15] [connections=64] [appendfsync=everysec] [rounds=2]
#
# RULES=1 also starts a second stampede (port 18082, same Redis, campaign
# `bench-rules`) with STAMPEDE_LIMITS_FILE=loadtest/limits-3rules.toml (three
# claim rules that never refuse this load), runs yardstick, stampede and
# stampede-rules in each round, and prints the three ratios.
# BENCH_BIN=path uses that stampede binary instead of building one (not a
# STAMPEDE_* name: the service refuses unknown STAMPEDE_ variables).
#
# Needs: redis-server, wrk, both release builds (this script builds them).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}; CONNS=${2:-64}; FSYNC=${3:-everysec}; ROUNDS=${4:-2}
YARD_SRC=${YARDSTICK_SRC:-../shared/yardstick}
WORK=$(mktemp -d)
RPORT=16379; YPORT=18089; SPORT=18080; LPORT=18082
RULES=${RULES:-}
LIMITS_FILE=${LIMITS_FILE:-loadtest/limits-3rules.toml}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

cp -r "$YARD_SRC" "$WORK/yardstick"
(cd "$WORK/yardstick" && CARGO_TARGET_DIR=/tmp/yardstick-target cargo build --release -q)
if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  cargo build --release -q --bin stampede
  BIN=target/release/stampede
fi

redis-server --port $RPORT --save '' --appendonly yes --appendfsync "$FSYNC" --dir "$WORK" \
  --daemonize no --logfile "$WORK/redis.log" & pids+=($!)
sleep 0.5
redis-cli -p $RPORT SET '{bench}:stock' 100000000 >/dev/null
YARDSTICK_LISTEN=127.0.0.1:$YPORT YARDSTICK_REDIS_URL=redis://127.0.0.1:$RPORT \
  /tmp/yardstick-target/release/yardstick & pids+=($!)
STAMPEDE_LISTEN=127.0.0.1:$SPORT STAMPEDE_REDIS_URL=redis://127.0.0.1:$RPORT \
  STAMPEDE_SECRET=bench-secret-bench-secret RUST_LOG=warn \
  "$BIN" & pids+=($!)
if [ -n "$RULES" ]; then
  STAMPEDE_LISTEN=127.0.0.1:$LPORT STAMPEDE_REDIS_URL=redis://127.0.0.1:$RPORT \
    STAMPEDE_SECRET=bench-secret-bench-secret RUST_LOG=warn STAMPEDE_LIMITS_FILE="$LIMITS_FILE" \
    "$BIN" & pids+=($!)
fi
for _ in $(seq 100); do
  curl -sf localhost:$SPORT/readyz >/dev/null && curl -sf localhost:$YPORT/hello >/dev/null &&
    { [ -z "$RULES" ] || curl -sf localhost:$LPORT/readyz >/dev/null; } && break
  sleep 0.2
done
campaign() { # port id
  curl -sf localhost:"$1"/v1/campaigns -H 'content-type: application/json' -d \
    '{"id":"'"$2"'","name":"'"$2"'","stock":4000000000,"limits":{"per_phone":1,"per_device":1},
      "coupon":{"kind":"amount_off","amount_off":100}}' >/dev/null
}
campaign $SPORT bench
if [ -n "$RULES" ]; then
  campaign $LPORT bench-rules
  # One claim outside the measured windows: the rules must admit it (201)
  # and answer with their RateLimit headers.
  hdrs=$(curl -s -o /dev/null -D - localhost:$LPORT/v1/campaigns/bench-rules/claims \
    -H 'content-type: application/json' -d '{"phone":"+8613900000000","device_id":"rules-probe"}')
  grep -q '^HTTP/[0-9.]* 201' <<<"$hdrs" && grep -qi '^ratelimit-policy:' <<<"$hdrs" &&
    grep -qi '^ratelimit:' <<<"$hdrs" ||
    { echo "stampede-rules: the probe claim was refused or had no RateLimit headers:"; echo "$hdrs"; exit 1; }
  echo "stampede-rules probe: $(tr -d '\r' <<<"$hdrs" | grep -iE '^(HTTP/|ratelimit)' | paste -sd' ')"
fi

run() { # name url
  local out
  out=$(ROUND=$ROUND wrk -t2 -c"$CONNS" -d"${SECS}s" --latency -s loadtest/claim.lua "$2")
  local rps p50 p99 bad
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  # claim.lua's done(): "non-2xx/3xx responses: N, socket errors: c/r/w/t"
  bad=$(awk '/non-2xx/ {sub(",", "", $3); print $3}' <<<"$out")
  sock=$(awk '/non-2xx/ {print $NF}' <<<"$out")
  if [ -n "$RULES" ]; then
    printf '%-14s %10s req/s  p50 %-8s p99 %-8s non-2xx %s socket errors %s\n' \
      "$1" "$rps" "$p50" "$p99" "${bad:-0}" "${sock:-0}"
  else
    printf '%-10s %10s req/s  p50 %-8s p99 %-8s non-2xx %s\n' "$1" "$rps" "$p50" "$p99" "${bad:-0}"
  fi
  echo "$rps" >> "$WORK/$1.rps"
  echo "${bad:-0}" >> "$WORK/$1.bad"
}
echo "appendfsync=$FSYNC connections=$CONNS duration=${SECS}s cores=$(nproc)"
ROUND=0
for r in $(seq "$ROUNDS"); do
  ROUND=$r
  run yardstick "http://127.0.0.1:$YPORT/claim/bench"
  run stampede "http://127.0.0.1:$SPORT/v1/campaigns/bench/claims"
  # The same identities as stampede's run, in another campaign: campaign
  # quotas are per campaign, and only this instance keeps rule counters.
  if [ -n "$RULES" ]; then
    run stampede-rules "http://127.0.0.1:$LPORT/v1/campaigns/bench-rules/claims"
  fi
done
mean() { awk '{s+=$1} END {print s/NR}' "$WORK/$1.rps"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {print a/b}'; }
y=$(mean yardstick)
s=$(mean stampede)
if [ -z "$RULES" ]; then
  printf 'mean yardstick %.0f req/s, stampede %.0f req/s, ratio stampede/yardstick %.2f\n' "$y" "$s" "$(ratio "$s" "$y")"
else
  l=$(mean stampede-rules)
  printf 'mean yardstick %.0f req/s, stampede %.0f req/s, stampede-rules %.0f req/s\n' "$y" "$s" "$l"
  printf 'ratio stampede/yardstick %.2f, stampede-rules/yardstick %.2f, stampede-rules/stampede %.2f\n' \
    "$(ratio "$s" "$y")" "$(ratio "$l" "$y")" "$(ratio "$l" "$s")"
  bad=$(awk '{s+=$1} END {print s}' "$WORK/stampede-rules.bad")
  [ "$bad" = 0 ] || echo "WARNING: stampede-rules answered $bad non-2xx (a rule refused?): its figure is not a claim rate"
fi
if [ -n "${HTTP_ONLY:-}" ]; then
  echo "HTTP only (no Redis): GET /hello vs GET /healthz"
  for name in yardstick stampede; do
    url="http://127.0.0.1:$YPORT/hello"; [ "$name" = stampede ] && url="http://127.0.0.1:$SPORT/healthz"
    printf '%-10s %s req/s\n' "$name" "$(wrk -t2 -c"$CONNS" -d"${SECS}s" "$url" | awk '/Requests\/sec/ {print $2}')"
  done
fi
echo "issued by stampede: $(curl -s localhost:$SPORT/v1/campaigns/bench | sed 's/.*"issued":\([0-9]*\).*/\1/')"
[ -z "$RULES" ] ||
  echo "issued by stampede-rules: $(curl -s localhost:$LPORT/v1/campaigns/bench-rules | sed 's/.*"issued":\([0-9]*\).*/\1/')"
