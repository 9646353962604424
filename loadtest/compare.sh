#!/usr/bin/env bash
# Every performance ratio of the flash-sale issue, side by side, in one run,
# against one redis-server on this machine:
#
#   loadtest/compare.sh [seconds=15] [connections=64] [appendfsync=everysec] [rounds=3]
#
# Targets, started here: the yardstick (../shared/yardstick, the thinnest
# actix + Redis claim path), stampede with the 3-rule file
# (loadtest/limits-3rules.toml: three claim rules that never refuse this
# load) and stampede without rules. Each round runs, one after another:
#   1. claims: yardstick, stampede-rules, stampede (loadtest/claim.lua: a
#      new phone and device every request, so every claim is a real issue);
#   2. a sold-out flood on stampede (a campaign of stock 1, sold) and a bare
#      hello on the yardstick (GET /hello, no Redis). The flood's ratio uses
#      loadtest/flood.lua (one fixed request, built once by wrk, as the hello
#      is); the run with claim.lua (a new phone a request) is printed too.
# The ratios use the median of the rounds. Then, unless MEMORY_CLAIMS=0:
#   3. Redis bytes per issued coupon: a fresh campaign of MEMORY_CLAIMS
#      (default 1,000,000) stock with per_phone and per_device limits is
#      sold out on a stampede of its own, on a redis-server of its own
#      (same settings); `used_memory` is read the moment the last
#      coupon is issued (the sale's request-id hashes still live) and the
#      growth is divided by the coupons issued.
#
# Env: THREADS (wrk threads, default 1), BENCH_BIN (a stampede binary to use
# instead of building one; not a STAMPEDE_* name: the service refuses
# unknown STAMPEDE_ variables), LIMITS_FILE, YARDSTICK_SRC.
# Needs: redis-server, redis-cli, wrk, curl; the two release builds are made here.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}; CONNS=${2:-64}; FSYNC=${3:-everysec}; ROUNDS=${4:-3}
THREADS=${THREADS:-1}
MEMORY_CLAIMS=${MEMORY_CLAIMS:-1000000}
YARD_SRC=${YARDSTICK_SRC:-../shared/yardstick}
LIMITS_FILE=${LIMITS_FILE:-loadtest/limits-3rules.toml}
WORK=$(mktemp -d)
RPORT=16379; YPORT=18089; SPORT=18080; LPORT=18082; MPORT=16378; MSPORT=18084
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
rcli() { redis-cli -p $RPORT "$@"; }
rcli SET '{bench}:stock' 100000000000 >/dev/null
YARDSTICK_LISTEN=127.0.0.1:$YPORT YARDSTICK_REDIS_URL=redis://127.0.0.1:$RPORT \
  /tmp/yardstick-target/release/yardstick & pids+=($!)
# Info-level logging, as in production.
STAMPEDE_LISTEN=127.0.0.1:$SPORT STAMPEDE_REDIS_URL=redis://127.0.0.1:$RPORT \
  STAMPEDE_SECRET=bench-secret-bench-secret RUST_LOG=info \
  "$BIN" >"$WORK/stampede.log" 2>&1 & pids+=($!)
STAMPEDE_LISTEN=127.0.0.1:$LPORT STAMPEDE_REDIS_URL=redis://127.0.0.1:$RPORT \
  STAMPEDE_SECRET=bench-secret-bench-secret RUST_LOG=info STAMPEDE_LIMITS_FILE="$LIMITS_FILE" \
  "$BIN" >"$WORK/stampede-rules.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do
  curl -sf localhost:$SPORT/readyz >/dev/null && curl -sf localhost:$YPORT/hello >/dev/null &&
    curl -sf localhost:$LPORT/readyz >/dev/null && break
  sleep 0.2
done
campaign() { # port id stock
  curl -sf localhost:"$1"/v1/campaigns -H 'content-type: application/json' -d \
    '{"id":"'"$2"'","name":"'"$2"'","stock":'"$3"',"limits":{"per_phone":1,"per_device":1},
      "coupon":{"kind":"amount_off","amount_off":100}}' >/dev/null
}
issued() { # port id
  curl -s localhost:"$1"/v1/campaigns/"$2" | sed 's/.*"issued":\([0-9]*\).*/\1/'
}
campaign $SPORT bench 4000000000
campaign $LPORT bench-rules 4000000000
campaign $SPORT gone 1
curl -sf localhost:$SPORT/v1/campaigns/gone/claims -H 'content-type: application/json' \
  -d '{"phone":"+8613900000001","device_id":"first"}' >/dev/null
# One claim outside the measured windows: the rules must admit it (201)
# and answer with their RateLimit headers.
hdrs=$(curl -s -o /dev/null -D - localhost:$LPORT/v1/campaigns/bench-rules/claims \
  -H 'content-type: application/json' -d '{"phone":"+8613900000000","device_id":"rules-probe"}')
grep -q '^HTTP/[0-9.]* 201' <<<"$hdrs" && grep -qi '^ratelimit-policy:' <<<"$hdrs" &&
  grep -qi '^ratelimit:' <<<"$hdrs" ||
  { echo "stampede-rules: the probe claim was refused or had no RateLimit headers:"; echo "$hdrs"; exit 1; }

run() { # name url [script]
  local out rps p50 p99 bad
  if [ -n "${3:-}" ]; then
    out=$(ROUND=$ROUND wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency -s "$3" "$2")
  else
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency "$2")
  fi
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  # claim.lua's done(): "non-2xx/3xx responses: N, socket errors: c/r/w/t"
  bad=$(awk '/non-2xx/ {sub(",", "", $3); print $3}' <<<"$out")
  printf '%-16s %10s req/s  p50 %-8s p99 %-8s non-2xx %s\n' "$1" "$rps" "$p50" "$p99" "${bad:--}"
  echo "$rps" >> "$WORK/$1.rps"
  echo "$p50 $p99" >> "$WORK/$1.lat"
}
echo "appendfsync=$FSYNC connections=$CONNS wrk-threads=$THREADS duration=${SECS}s rounds=$ROUNDS cores=$(nproc)"
for r in $(seq "$ROUNDS"); do
  ROUND=$r
  echo "round $r"
  run yardstick "http://127.0.0.1:$YPORT/claim/bench" loadtest/claim.lua
  run stampede-rules "http://127.0.0.1:$LPORT/v1/campaigns/bench-rules/claims" loadtest/claim.lua
  run stampede "http://127.0.0.1:$SPORT/v1/campaigns/bench/claims" loadtest/claim.lua
  run hello "http://127.0.0.1:$YPORT/hello"
  # The flood as wrk sends the hello: one request built once (flood.lua);
  # and with a new phone each request (claim.lua's formatting costs wrk CPU).
  run sold-out-flood "http://127.0.0.1:$SPORT/v1/campaigns/gone/claims" loadtest/flood.lua
  run flood-new-phones "http://127.0.0.1:$SPORT/v1/campaigns/gone/claims" loadtest/claim.lua
done
median() { sort -g "$WORK/$1.rps" | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
y=$(median yardstick); l=$(median stampede-rules); s=$(median stampede)
h=$(median hello); f=$(median sold-out-flood); fv=$(median flood-new-phones)
echo
printf 'median req/s: yardstick %.0f, stampede-rules %.0f, stampede %.0f, hello %.0f, sold-out flood %.0f\n' \
  "$y" "$l" "$s" "$h" "$f"
echo "ratio claims/s, 3-rule file vs yardstick:   $(ratio "$l" "$y")  (target >= 1.0)"
echo "ratio claims/s, no rules vs yardstick:      $(ratio "$s" "$y")"
echo "ratio sold-out flood vs bare hello:         $(ratio "$f" "$h")  (target >= 0.8)"
echo "  the same flood with a new phone a request: $(ratio "$fv" "$h")"
echo "stampede-rules latency per round (p50 p99): $(paste -sd, "$WORK/stampede-rules.lat")"
echo "stampede-rules non-2xx must be 0 above: a refusal would not be a claim."
echo "issued: stampede $(issued $SPORT bench), stampede-rules $(issued $LPORT bench-rules), sold-out campaign $(issued $SPORT gone)"
# The AOF rewrites Redis forked for during the rounds (auto-aof-rewrite at its
# defaults): each takes a core for seconds from whichever window it falls in.
echo "AOF rewrites during the rounds: $(rcli INFO persistence | awk -F: '/^aof_rewrites:/ {print $2+0}')"

if [ "$MEMORY_CLAIMS" != 0 ]; then
  echo
  # On a Redis of its own, with a stampede of its own (no rules): on the
  # rounds' Redis, holding their ~1.5M claims, the growth of its main
  # dictionary (a power of two) lands in whichever phase crosses it (121 B
  # there against 105 B alone, for one build: docs/benchmarks.md).
  echo "memory: selling out a campaign of $MEMORY_CLAIMS on stampede (a fresh Redis)..."
  mkdir -p "$WORK/mem"
  redis-server --port $MPORT --save '' --appendonly yes --appendfsync "$FSYNC" --dir "$WORK/mem" \
    --daemonize no --logfile "$WORK/mem/redis.log" & pids+=($!)
  sleep 0.5
  STAMPEDE_LISTEN=127.0.0.1:$MSPORT STAMPEDE_REDIS_URL=redis://127.0.0.1:$MPORT \
    STAMPEDE_SECRET=bench-secret-bench-secret RUST_LOG=info \
    "$BIN" >"$WORK/stampede-mem.log" 2>&1 & pids+=($!)
  for _ in $(seq 100); do curl -sf localhost:$MSPORT/readyz >/dev/null && break; sleep 0.2; done
  mem() { redis-cli -p $MPORT INFO memory | awk -F: '/^used_memory:/ {print $2+0}'; }
  campaign $MSPORT mem "$MEMORY_CLAIMS"
  before=$(mem)
  ROUND=1000 wrk -t"$THREADS" -c"$CONNS" -d600s -s loadtest/claim.lua \
    "http://127.0.0.1:$MSPORT/v1/campaigns/mem/claims" >/dev/null & wrk_pid=$!
  peak=0; at_end=0
  while kill -0 $wrk_pid 2>/dev/null; do
    m=$(mem); [ "$m" -gt "$peak" ] && peak=$m
    n=$(redis-cli -p $MPORT HGET 'st:{mem}:meta' issued)
    if [ "${n:-0}" -ge "$MEMORY_CLAIMS" ]; then at_end=$m; kill $wrk_pid; break; fi
    sleep 0.2
  done
  wait $wrk_pid 2>/dev/null || true
  n=$(issued $MSPORT mem)
  sleep 5
  later=$(mem)
  awk -v b="$before" -v e="$at_end" -v p="$peak" -v l="$later" -v n="$n" 'BEGIN {
    printf "Redis bytes per issued coupon: %.0f at sell-out (target <= 200), %.0f at the peak, %.0f 5 s later (%d issued)\n",
      (e-b)/n, (p-b)/n, (l-b)/n, n }'
fi
