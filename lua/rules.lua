--[[ rules.lua: check (and charge) the rate rules of one request that live in
one hash slot, or settle the outcome-counted rules after the request.

Algorithm: a BUCKETED SLIDING WINDOW. A rule's window w is cut into
buckets of s = max(1, floor(w/10)) ms; bucket i holds what happened in
[i*s, (i+1)*s). A request at `now` counts every bucket from
floor((now - w) / s) on: an interval that contains the whole window
(now - w, now] plus at most one bucket (s) before it. So the count is never
below the exact sliding count: a rule NEVER admits more than `limit` in any
window of length w, and it may refuse for at most w/10 longer than an exact
sliding log would. `distinct` rules are exact: each member's last-seen time
is kept, the members seen in (now - w, now] are counted, and only `limit`
of them can ever be admitted.

LAYOUT: NO KEY PER IDENTITY. The buckets are grouped into epochs of
P = floor(w/s) + 1 buckets (epoch e holds buckets eP .. eP + P - 1). One
hash per rule, epoch and shard (`<prefix><e>`; a single node has one shard,
a cluster 64, the shard a slice of the rule key's digest and the hash tag)
holds every rule key's buckets of that epoch in one field:
  counting rules  field <rule key digest> -> 'T;F;o:c,o:c,...' (T the total,
                  F the oldest bucket's offset in the epoch, then offset :
                  count, newest first)
  distinct rules  field <rule key digest> -> 'member@ms,...' (the members
                  seen in that epoch, each with its last time in it)
A request in epoch e reads its field in epochs e-1, e and e+1 and writes
epoch e. With P = floor(w/s) + 1, epochs e and e+1 hold live buckets only
(their totals are read as they are: cur - floor(w/s) <= eP for every
bucket of epoch e) and e-2 none (bucket (e-1)P - 1 < floor((now - w)/s)
for every now in epoch e), so only epoch e-1's value is cut at the
window's start. Epoch e+1 is read for an instance whose clock runs ahead.
A batch reads each epoch hash with one HMGET and writes it with one HSET
(hcache.lua). An epoch hash is kept three epochs past its own, so a
request whose clock is up to two epochs behind (another instance's, or a
check that waited in a queue) still reads every live bucket; while a rule
is used, the hash of epoch e-4 (e the oldest epoch of the batch) is
UNLINKed (a big hash is freed off the main thread), and each hash also
expires when epoch x+4 ends, for a rule nobody uses any more. A rule thus
holds what 4-5 epochs (4.4-5.5 windows) saw. A new identity costs a field
in a hash that exists already, not a key with its own TTL: the keyspace
(and Redis's expiry work) no longer grows with the identities. (The keys
of the layout before it, one per identity, are not read: a deploy starts
every rate window and ban escalation afresh.)
Bans keep their state in a small hash per rule key (violations 'v<bucket>',
'lvl' bans started in a row, 'lvl_end' when the last one ends), read and
written only when a request is over a rule that bans.

Time is the service's injected clock (a request's now_ms), never Redis
TIME (which only judges a request's deadline); key TTLs only bound memory.

Every call is a BATCH (below) of requests; ONE REQUEST has
KEYS (2 per rule, all under one hash tag: this call's slot)
  2i-1  prefix  the rule's epoch hashes are this prefix followed by the epoch
  2i    hash    the rule key's ban state (only rules that ban use it)
ARGV
  1  mode      'check' | 'settle'
  2  now_ms
  3  n         rules in this request
  then 11 per rule, starting at 4 + (i-1)*11:
    +0 kind    'r' requests (checked and charged now), 'o' successes/failures
               (check now, charged by 'settle'), 'd' distinct; 'r<B>' (B >= 2)
               requests with a lease: when B more still fit under the limit,
               B are charged at once and the status is 'lease' (the service
               hands the other B - 1 to its next requests on this rule key
               within the same bucket: guard::lease)
    +1 limit   +2 window_ms   +3 enforce ('1' enforce, '0' shadow)
    +4 member  the distinct value's digest, hex ('' unless kind 'd')
    +5 ban_after (0: no ban)  +6 ban_ms  +7 ban_factor  +8 ban_max_ms
    +9 decay_ms  how long after a ban ends the next one still escalates
    +10 field  the rule key's digest: its field in the epoch hashes
RETURNS (check) 5 values per rule, in order, all strings (the numbers
  printed as integers):
  status 'ok' | 'over' (enforced, refused) | 'shadow' (would have refused)
  | 'lease' (admitted, and the lease charged: kind 'r<B>' only),
  remaining after this request (after the whole lease), reset_ms (time until the window has room,
  or until its oldest counted request leaves), ban_ms (0, or the ban this
  request started), level (that ban's place in the escalation)
RETURNS (settle) {'ok'}: one unit charged to each rule (kind 'o' only).

BATCH: a call checks (or settles) several requests (the service coalesces
the checks that arrive while one is in flight: store::batch; a settle is a
batch of one):
  ARGV  1 'batch'   2 n   3 the call's id ('' for none)   4 when the record
        hash expires (unix s)
        then 3 per request: its key count, its argument count, its deadline
        (wall-clock ms, Redis TIME, after which it may not be charged: its
        caller has answered 503 by then; 0 for none)
        then each request's arguments (as above, from 'check'), in order
  KEYS  1 the record hash (call id -> this call's answer, JSON), in the
        rules' slot; then each request's keys, in order
  RETURNS one array per request: its 'check' answer, {'late'} past its
  deadline (nothing of it read or written), or {'error', message} when its
  keys failed (that request wrote nothing; the others ran).
A call whose id is in the record hash ran already: Redis Cluster's client
re-sends a call after a dropped connection, and the re-sent call is answered
with the first one's answer and charges nothing again. The record lives until
2 s after the second the call's last deadline falls in; a re-send after that
finds every request past its deadline, so it charges nothing either.
Each request is checked and charged on its own, in order, as if by its own
call: a later request sees an earlier one's charges.

A request refused by any enforced rule charges nothing to any rule of this
call; it adds one violation to each rule it was over, and a rule whose
violations reach ban_after starts a ban (its length escalates: ban_ms *
factor^(level-1), capped by ban_max_ms) and forgets its violations.

ATOMICITY: every key a rule writes is read first (its epoch hashes by the
batch's HMGET, through hcache.lua, its ban state by HGETALL: a wrong-type
key raises WRONGTYPE there, in that request, before any write of it), and
the epoch hashes are written once, at the end of the call (hc_flush), so a
failing request changed nothing but the UNLINK of an epoch hash no request
reads any more; the writes touch only keys of the right type and values
this script wrote itself, so none of them can fail. 'settle' reads the
current epoch's field the same way before it charges. (No TYPE calls on
the hot path: they were a third of the script's Redis calls.)
]]

-- hcache.lua and rules_core.lua (prepended by store::scripts) define
-- rule_specs, rules_prefetch, rules_run and hc_flush.
local function failed(r)
  return tostring(type(r) == 'table' and (r.err or r.message) or r)
end
if ARGV[1] ~= 'batch' then return redis.error_reply('ERR rules.lua: bad batch') end
local n, id, expire_at = tonumber(ARGV[2]), ARGV[3], ARGV[4]
if not n or not tonumber(expire_at) or #ARGV < 4 + 3 * n then
  return redis.error_reply('ERR rules.lua: bad batch')
end
-- A re-sent call: the first one's answer (a wrong-type record hash fails the
-- call here, before anything is written).
if id ~= '' then
  local first = redis.call('HGET', KEYS[1], id)
  if first then return cjson.decode(first) end
end
local t = redis.call('TIME')
local time_ms = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
-- Each request's rules, then one read of every epoch hash for all of them.
-- Each request's arguments are 'check', now, n, then 11 a rule.
local nows, lists, todo, k, a = {}, {}, {}, 1, 4 + 3 * n
for i = 1, n do
  local h = 2 + 3 * i
  local nk, na, deadline = tonumber(ARGV[h]), tonumber(ARGV[h + 1]), tonumber(ARGV[h + 2])
  local now, nr = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if deadline and deadline > 0 and time_ms > deadline then
    todo[i] = 'late'
  elseif nk and na and now and nr and deadline and 2 * na == 6 + 11 * nk and nk == 2 * nr then
    local specs, msg = rule_specs(nr, k, a + 3)
    if specs then
      todo[i] = {ARGV[a + 1], now, specs}
      nows[i], lists[i] = now, specs
    else
      todo[i] = msg
    end
  end
  k, a = k + (nk or 0), a + (na or 0)
end
rules_prefetch(nows, lists, n)
local out = {}
for i = 1, n do
  local t, ok, r = todo[i], true, nil
  if type(t) == 'table' then
    ok, r = pcall(rules_run, t[1], t[2], t[3])
  elseif t == 'late' then
    r = {'late'}
  else
    r = {err = t or 'ERR rules.lua: bad arguments'}
  end
  if not ok then
    r = {'error', failed(r)}
  elseif r.err then
    r = {'error', r.err}
  end
  out[i] = r
end
hc_flush()
-- The record of this call's answer (its hash was read above, so this
-- cannot fail).
if id ~= '' then
  redis.call('HSET', KEYS[1], id, cjson.encode(out))
  redis.call('EXPIREAT', KEYS[1], expire_at, 'NX')
end
return out
