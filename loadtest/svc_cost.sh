#!/usr/bin/env bash
# Instructions the service runs per request, counted by callgrind: a count,
# not a time, so it does not move with the load on this shared machine
# (apt-get install valgrind). One mode at a time:
#
#   loadtest/svc_cost.sh BIN flood|claims|rules   (SECS=6; KEEP=<file> keeps the callgrind dump)
#
#   flood   a sold-out campaign, one fixed request (loadtest/flood.lua): the
#           refusal answered from memory
#   claims  a new phone and device a request (loadtest/claim.lua), no rules
#   rules   the same with loadtest/limits-3rules.toml
#
# Its own redis-server (not under valgrind) on a free loopback port, the
# service under `valgrind --tool=callgrind`, wrk -t1 -c8: a warm-up of 3 s,
# the counters zeroed, SECS seconds of load, the counters dumped. Prints the
# service's user-space instructions per request (the kernel's TCP work is
# not counted: it is the same for any HTTP server). Build BIN with
# `cargo build --profile profiling` to read the dump by function
# (callgrind_annotate --inclusive=yes <file>). Loopback only.
set -euo pipefail
BIN=$1; MODE=$2; SECS=${SECS:-6}
cd "$(dirname "$0")/.."
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(free_port); PORT=$(free_port)
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
  --logfile "$WORK/redis.log" & pids+=($!)
extra=()
[ "$MODE" = rules ] && extra=(STAMPEDE_LIMITS_FILE=loadtest/limits-3rules.toml)
env STAMPEDE_LISTEN=127.0.0.1:$PORT STAMPEDE_REDIS_URL=redis://127.0.0.1:$RPORT \
  STAMPEDE_SECRET=bench-secret-bench-secret RUST_LOG=info ${extra[@]+"${extra[@]}"} \
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" "$BIN" >"$WORK/svc.log" 2>&1 & VP=$!
pids+=($VP)
for _ in $(seq 300); do curl -sf "localhost:$PORT/readyz" >/dev/null && break; sleep 0.3; done
mk() { curl -sf "localhost:$PORT/v1/campaigns" -H 'content-type: application/json' \
  -d '{"id":"'"$1"'","name":"'"$1"'","stock":'"$2"',"limits":{"per_phone":1,"per_device":1},"coupon":{"kind":"amount_off","amount_off":100}}' >/dev/null; }
if [ "$MODE" = flood ]; then
  mk gone 1
  curl -sf "localhost:$PORT/v1/campaigns/gone/claims" -H 'content-type: application/json' \
    -d '{"phone":"+8613900000001","device_id":"first"}' >/dev/null
  url="http://127.0.0.1:$PORT/v1/campaigns/gone/claims"; script=loadtest/flood.lua
else
  mk bench 4000000000
  # A first claim reads a phone through libphonenumber, which compiles its
  # CN patterns once (tens of millions of instructions): not in the count.
  curl -sf "localhost:$PORT/v1/campaigns/bench/claims" -H 'content-type: application/json' \
    -d '{"phone":"+8613900000001","device_id":"first"}' >/dev/null
  url="http://127.0.0.1:$PORT/v1/campaigns/bench/claims"; script=loadtest/claim.lua
fi
ROUND=11 wrk -t1 -c8 -d3s -s "$script" "$url" >/dev/null
callgrind_control -z "$VP" >/dev/null 2>&1
out=$(ROUND=12 wrk -t1 -c8 -d"${SECS}s" -s "$script" "$url")
callgrind_control -d "$VP" >/dev/null 2>&1
sleep 1
reqs=$(awk '/requests in/ {print $1}' <<<"$out")
dump=$(ls -t "$WORK"/cg.*.* | head -1)
total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
[ -n "${KEEP:-}" ] && cp "$dump" "$KEEP"
awk -v t="$total" -v r="$reqs" -v m="$MODE" \
  'BEGIN {printf "%s: %d requests, %.0f service instructions a request\n", m, r, t / r}'
