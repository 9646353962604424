--[[ rules.lua: check (and charge) the rate rules of one request that live in
one hash slot, or settle the outcome-counted rules after the request.

Algorithm: a BUCKETED SLIDING WINDOW. A rule's window w is cut into 10
buckets of s = w/10 (at least 1 ms); bucket i holds what happened in
[i*s, (i+1)*s). A request at `now` counts every bucket from
floor((now - w) / s) to floor(now / s): an interval that contains the whole
window (now - w, now] plus at most one bucket (s) before it. So the count is
never below the exact sliding count: a rule NEVER admits more than `limit` in
any window of length w, and it may refuse for at most w/10 longer than an
exact sliding log would. Memory: at most 11 small fields per key.
`distinct` rules are exact: a sorted set of member -> last seen (ms); the
members seen in (now - w, now] are counted, and only `limit` of them can ever
be admitted, so the set holds at most `limit` live members.

Time is the service's injected clock (ARGV[2]), never Redis TIME; key TTLs
only bound memory.

KEYS (2 per rule, all under one hash tag: this call's slot)
  2i-1  hash   'b<bucket>' -> count, 'v<bucket>' -> violations,
               'lvl' -> bans started in a row, 'lvl_end' -> when the last ban ends (ms)
  2i    zset   distinct member -> last seen ms (only `distinct` rules use it)
ARGV
  1  mode      'check' | 'settle'
  2  now_ms
  3  n         rules in this call
  then 10 per rule, starting at 4 + (i-1)*10:
    +0 kind    'r' requests (checked and charged now), 'o' successes/failures
               (check now, charged by 'settle'), 'd' distinct
    +1 limit   +2 window_ms   +3 enforce ('1' enforce, '0' shadow)
    +4 member  the distinct value's pseudonym ('' unless kind 'd')
    +5 ban_after (0: no ban)  +6 ban_ms  +7 ban_factor  +8 ban_max_ms
    +9 decay_ms  how long after a ban ends the next one still escalates
RETURNS (check) 5 values per rule, in order (the status a string, the
  others integers):
  status 'ok' | 'over' (enforced, refused) | 'shadow' (would have refused),
  remaining after this request, reset_ms (time until the window has room,
  or until its oldest counted request leaves), ban_ms (0, or the ban this
  request started), level (that ban's place in the escalation)
RETURNS (settle) {'ok'}: one unit charged to each rule (kind 'o' only).

BATCH: ARGV[1] = 'batch' checks several requests in one call (the service
coalesces the checks that arrive while one is in flight: store::batch):
  ARGV  1 'batch'   2 n   then 2 per request: its key count, its argument count
        then each request's arguments (as above, from 'check'), in order
  KEYS  each request's keys, in order
  RETURNS one array per request: its 'check' answer, or {'error', message}
  when its keys failed (that request wrote nothing; the others ran).
Each request is checked and charged on its own, in order, as if by its own
call: a later request sees an earlier one's charges.

A request refused by any enforced rule charges nothing to any rule of this
call; it adds one violation to each rule it was over, and a rule whose
violations reach ban_after starts a ban (its length escalates: ban_ms *
factor^(level-1), capped by ban_max_ms) and forgets its violations.

ATOMICITY: in 'check' mode every key a rule writes is read first (HGETALL of
its hash, ZCOUNT of its set: a wrong-type key raises WRONGTYPE there, before
the first write), so a failing call changed nothing; the writes that follow
(HDEL of stale buckets, HINCRBY, HSET, ZADD, ZREMRANGEBYSCORE, PEXPIRE) touch
only keys of the right type and counters this script wrote itself, so none of
them can fail. 'settle' only writes, so it checks every TYPE first. (No TYPE
calls on the hot path: they were a third of the script's Redis calls.)
]]

-- rules_core.lua (prepended by store::scripts) defines rules_run.
if ARGV[1] ~= 'batch' then
  local n = tonumber(ARGV[3])
  if not n or #KEYS ~= 2 * n or #ARGV ~= 3 + 10 * n then
    return redis.error_reply('ERR rules.lua: bad arguments')
  end
  local r = rules_run(ARGV[1], tonumber(ARGV[2]), n, 0, 3)
  if r.err then return redis.error_reply(r.err) end
  return r
end
local n = tonumber(ARGV[2])
if not n or #ARGV < 2 + 2 * n then return redis.error_reply('ERR rules.lua: bad batch') end
local out, k, a = {}, 0, 2 + 2 * n
for i = 1, n do
  local nk, na = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local ok, r
  if not nk or not na or na ~= 3 + 5 * nk or nk % 2 ~= 0 then
    ok, r = true, {err = 'ERR rules.lua: bad arguments'}
  else
    -- Each request's arguments are 'check', now, n, then 10 a rule.
    ok, r = pcall(rules_run, ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), k, a + 3)
  end
  k, a = k + (nk or 0), a + (na or 0)
  if not ok then
    r = {'error', tostring(type(r) == 'table' and (r.err or r.message) or r)}
  elseif r.err then
    r = {'error', r.err}
  end
  out[i] = r
end
return out
