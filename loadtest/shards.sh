#!/usr/bin/env bash
# One hot campaign on a local 3-master Redis Cluster, unsharded vs
# `stock_shards: 3`: claims/s, latency, and each master's script calls and
# CPU seconds over the run (docs/scaling.md). Run it alone on the machine:
#
#   flock /tmp/stampede-bench.lock loadtest/shards.sh target/release/stampede
#
# SECS (default 8) per window; ROUNDS (default 2) alternating windows.
set -u
BIN=$(realpath "$1"); SECS=${SECS:-8}; ROUNDS=${ROUNDS:-2}
cd "$(dirname "$0")/.."
PORTS="27201 27202 27203"; SVC=127.0.0.1:18330; DIR=$(mktemp -d)
cleanup() {
  [ -n "${S:-}" ] && kill "$S" 2>/dev/null
  for p in $PORTS; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1; done
  rm -rf "$DIR"
}
trap cleanup EXIT
for p in $PORTS; do
  mkdir -p "$DIR/$p"
  (cd "$DIR/$p" && redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file nodes.conf --appendonly yes --appendfsync everysec --save '' \
    --auto-aof-rewrite-percentage 0 --daemonize yes --logfile redis.log)
done
sleep 1
redis-cli --cluster create $(for p in $PORTS; do printf '127.0.0.1:%s ' "$p"; done) \
  --cluster-replicas 0 --cluster-yes >/dev/null 2>&1
for _ in $(seq 50); do
  [ "$(redis-cli -p 27201 cluster info | tr -d '\r' | awk -F: '/cluster_state/ {print $2}')" = ok ] && break
  sleep 0.2
done
STAMPEDE_LISTEN=$SVC STAMPEDE_REDIS_URL=redis+cluster://127.0.0.1:27201,127.0.0.1:27202,127.0.0.1:27203 \
  STAMPEDE_SECRET=bench-secret-bench-secret RUST_LOG=warn "$BIN" >"$DIR/svc.log" 2>&1 & S=$!
for _ in $(seq 50); do curl -sf "$SVC/readyz" >/dev/null && break; sleep 0.2; done
mk() {
  curl -sf "$SVC/v1/campaigns" -H 'content-type: application/json' -d '{"id":"'"$1"'","name":"'"$1"'",
    "stock":2000000000,"stock_shards":'"$2"',"limits":{"per_phone":1,"per_device":1},
    "coupon":{"kind":"amount_off","amount_off":100}}' >/dev/null || { echo "create $1 failed"; exit 1; }
}
mk hot1 1; mk hot3 3
# Per master: "evalsha_calls cpu_seconds" (user + sys of the redis-server).
sample() {
  for p in $PORTS; do
    redis-cli -p "$p" info all | tr -d '\r' | awk -F'[:=,]' '
      /^cmdstat_evalsha:/ {c=$3} /^used_cpu_sys:/ {s=$2} /^used_cpu_user:/ {u=$2}
      END {printf "%d %.2f\n", c, s+u}'
  done
}
# The service's CPU ticks (user + sys).
svc_cpu() { awk '{print $14 + $15}' "/proc/$S/stat"; }
# Warm-up: connections, scripts loaded on every master.
for c in hot1 hot3; do
  ROUND=90 wrk -t1 -c16 -d1s -s loadtest/claim.lua "http://$SVC/v1/campaigns/$c/claims" >/dev/null
done
r=0
for round in $(seq "$ROUNDS"); do
  for c in hot1 hot3; do
    r=$((r + 1))
    before=$(sample); svc0=$(svc_cpu)
    out=$(ROUND=$r wrk -t1 -c64 -d"${SECS}s" --latency -s loadtest/claim.lua "http://$SVC/v1/campaigns/$c/claims")
    after=$(sample); svc1=$(svc_cpu)
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    bad=$(awk -F'[:,]' '/non-2xx/ {print $2}' <<<"$out")
    per=$(paste <(echo "$before") <(echo "$after") | awk -v secs="$SECS" '
      {printf "%d calls, %.0f%% cpu; ", $3-$1, 100*($4-$2)/secs}')
    per="$per(redis us/claim: $(paste <(echo "$before") <(echo "$after") | awk -v secs="$SECS" -v rps="$rps" '
      {c+=$4-$2} END {printf "%.1f", 1e6*c/(rps*secs)}'))"
    svc=$(awk -v a="$svc0" -v b="$svc1" -v secs="$SECS" -v rps="$rps" -v tck="$(getconf CLK_TCK)" \
      'BEGIN {cpu=(b-a)/tck; printf "%.0f%% cpu, %.1f us/claim", 100*cpu/secs, 1e6*cpu/(rps*secs)}')
    echo "round $round $c: $rps claims/s, p50 $p50, p99 $p99, non-2xx$bad | service: $svc | per master: $per"
  done
done
