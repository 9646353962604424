#!/usr/bin/env bash
# CPU per request of the service and of Redis, one mode at a time:
#   loadtest/cpu_per_claim.sh BIN rules|norules|flood   (SECS=8)
# A fresh redis-server on :16400 (AOF everysec, no auto-rewrite), one stampede on
# :18300, wrk -t1 -c64 with loadtest/claim.lua; utime+stime from /proc/<pid>/stat
# before and after the window, divided by the requests. Loopback only.
set -u
BIN=$1; MODE=$2; SECS=${SECS:-8}
cd "$(dirname "$0")/.."
redis-cli -p 16400 shutdown nosave >/dev/null 2>&1; sleep 0.3
rm -rf /tmp/profredis; mkdir -p /tmp/profredis
redis-server --port 16400 --save '' --appendonly yes --appendfsync everysec --dir /tmp/profredis --daemonize yes --logfile /tmp/profredis/log --auto-aof-rewrite-percentage 0
sleep 0.5
extra=()
[ "$MODE" = rules ] && extra=(STAMPEDE_LIMITS_FILE=loadtest/limits-3rules.toml)
env STAMPEDE_LISTEN=127.0.0.1:18300 STAMPEDE_REDIS_URL=redis://127.0.0.1:16400 STAMPEDE_SECRET=bench-secret-bench-secret RUST_LOG=info ${extra[@]+"${extra[@]}"} "$BIN" >/tmp/prof-svc.log 2>&1 &
PID=$!
for _ in $(seq 50); do curl -sf localhost:18300/readyz >/dev/null && break; sleep 0.2; done
mk() { curl -sf localhost:18300/v1/campaigns -H 'content-type: application/json' -d '{"id":"'$1'","name":"'$1'","stock":'$2',"limits":{"per_phone":1,"per_device":1},"coupon":{"kind":"amount_off","amount_off":100}}' >/dev/null; }
mk bench 4000000000; mk gone 1
curl -sf localhost:18300/v1/campaigns/gone/claims -H 'content-type: application/json' -d '{"phone":"+8613900000001","device_id":"first"}' >/dev/null
RPID=$(redis-cli -p 16400 info server | awk -F: '/process_id/ {print $2+0}')
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
c=bench; [ "$MODE" = flood ] && c=gone
a1=$(cpu $PID); r1=$(cpu $RPID)
ROUND=7 wrk -t1 -c64 -d${SECS}s --latency -s loadtest/claim.lua http://127.0.0.1:18300/v1/campaigns/$c/claims > /tmp/cpu.wrk
a2=$(cpu $PID); r2=$(cpu $RPID)
rps=$(awk '/Requests\/sec/ {print $2}' /tmp/cpu.wrk)
redis-cli -p 16400 info commandstats | grep -E 'evalsha|cmdstat_eval|cmdstat_fcall' 
awk -v a=$((a2-a1)) -v r=$((r2-r1)) -v rps=$rps -v s=$SECS 'BEGIN{n=rps*s; printf "%s req/s=%s svc %.1f us/req (%.0f%% core) redis %.1f us/req (%.0f%% core)\n", "'$MODE'", rps, a*10000/n, a/s, r*10000/n, r/s}'
kill $PID; wait $PID 2>/dev/null; redis-cli -p 16400 shutdown nosave >/dev/null 2>&1
