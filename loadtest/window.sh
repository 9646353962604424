# Sourced by durability.sh and replica_wait.sh: one measured window of
# claims on a stampede already started at $SVC (pid $S, log $DIR/svc.log).
#
#   claim_window LABEL ROUND SECS REDIS_PORT COMMAND
#
# waits for /readyz, creates campaign `bench` (per_phone and per_device 1),
# warms up for 1 s, runs wrk -t1 -c64 for SECS with loadtest/claim.lua
# (ROUND offsets the phones), and prints claims/s, p50, p99, non-2xx and
# how many COMMAND calls (INFO commandstats) the Redis on REDIS_PORT answered.
claim_window() {
  local label=$1 round=$2 secs=$3 port=$4 command=$5 out rps p50 p99 bad calls
  for _ in $(seq 50); do curl -sf "$SVC/readyz" >/dev/null && break; sleep 0.2; done
  curl -sf "$SVC/v1/campaigns" -H 'content-type: application/json' -d '{"id":"bench","name":"bench",
    "stock":2000000000,"limits":{"per_phone":1,"per_device":1},
    "coupon":{"kind":"amount_off","amount_off":100}}' >/dev/null || { echo "create failed"; cat "$DIR/svc.log"; exit 1; }
  ROUND=90 wrk -t1 -c16 -d1s -s loadtest/claim.lua "http://$SVC/v1/campaigns/bench/claims" >/dev/null
  out=$(ROUND=$round wrk -t1 -c64 -d"${secs}s" --latency -s loadtest/claim.lua "http://$SVC/v1/campaigns/bench/claims")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  bad=$(awk -F'[:,]' '/non-2xx/ {print $2}' <<<"$out")
  calls=$(redis-cli -p "$port" info commandstats | tr -d '\r' |
    awk -F'[:=,]' -v c="cmdstat_$command" '$1 == c {print $3}')
  echo "$label: $rps claims/s, p50 $p50, p99 $p99, non-2xx ${bad:-0}, $command calls ${calls:-0}"
}
