#!/usr/bin/env bash
# CPU per request of a sold-out flood on stampede against the yardstick's bare
# hello, side by side (docs/benchmarks.md, "The edge of a request"):
#   loadtest/flood_cpu.sh [BIN=target/release/stampede]   (SECS=6)
# Needs the yardstick built as loadtest/compare.sh builds it
# (/tmp/yardstick-target/release/yardstick), redis-server, wrk. Loopback only.
set -u
BIN=${1:-target/release/stampede}; SECS=${SECS:-6}
cd "$(dirname "$0")/.."
redis-cli -p 16402 shutdown nosave >/dev/null 2>&1; sleep 0.3
rm -rf /tmp/fl; mkdir -p /tmp/fl
redis-server --port 16402 --save '' --appendonly no --dir /tmp/fl --daemonize yes --logfile /tmp/fl/log; sleep 0.5
YARDSTICK_LISTEN=127.0.0.1:18302 YARDSTICK_REDIS_URL=redis://127.0.0.1:16402 /tmp/yardstick-target/release/yardstick & Y=$!
STAMPEDE_LISTEN=127.0.0.1:18303 STAMPEDE_REDIS_URL=redis://127.0.0.1:16402 STAMPEDE_SECRET=bench-secret-bench-secret RUST_LOG=info $BIN >/tmp/fl/svc.log 2>&1 & S=$!
for _ in $(seq 50); do curl -sf localhost:18303/readyz >/dev/null && break; sleep 0.2; done
curl -sf localhost:18303/v1/campaigns -H 'content-type: application/json' -d '{"id":"gone","name":"gone","stock":1,"coupon":{"kind":"amount_off","amount_off":100}}' >/dev/null
curl -sf localhost:18303/v1/campaigns/gone/claims -H 'content-type: application/json' -d '{"phone":"+8613900000001","device_id":"first"}' >/dev/null
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
run() { # name pid wrkargs...
  local n=$1 p=$2; shift 2
  local a1=$(cpu $p)
  local rps=$(wrk -t1 -c64 -d${SECS}s "$@" | awk '/Requests\/sec/ {print $2}')
  local a2=$(cpu $p)
  awk -v a=$((a2-a1)) -v rps=$rps -v s=$SECS -v n=$n 'BEGIN{printf "%s req/s=%s proc %.1f us/req (%.0f%% core)\n", n, rps, a*10000/(rps*s), a/s}'
}
for r in 1 2; do
 run hello $Y http://127.0.0.1:18302/hello
 run flood $S -s loadtest/flood.lua http://127.0.0.1:18303/v1/campaigns/gone/claims
done
kill $Y $S; redis-cli -p 16402 shutdown nosave >/dev/null 2>&1
