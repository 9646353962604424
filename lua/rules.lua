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
RETURNS (check) 5 strings per rule, in order:
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
local call, tonumber, tostring, floor, max, sub = redis.call, tonumber, tostring, math.floor, math.max, string.sub
local function err(msg) return {err = msg} end

-- Integers print exactly through tostring (%.14g) below 1e14: every count,
-- length and ms value here is (ms clocks stay below 1e14 until the year 5138).
local function int_str(x) return tostring(floor(x)) end

-- Time until `need` counted units have left the window (the buckets sorted
-- on first use; only a refused request needs more than the oldest one).
local function free_after(r, need, now)
  if need <= 1 then
    if r.first then return (r.first + 1) * r.s + r.w - now end
    return r.w
  end
  local b = r.buckets
  table.sort(b, function(x, y) return x[1] < y[1] end)
  local freed = 0
  for j = 1, #b do
    freed = freed + b[j][2]
    if freed >= need then return (b[j][1] + 1) * r.s + r.w - now end
  end
  return r.w
end

-- One request's rules: KEYS and ARGV are that request's own (in a batch, its
-- slices of the call's).
local function one(KEYS, ARGV)

  local mode = ARGV[1]
  local now = tonumber(ARGV[2])
  local n = tonumber(ARGV[3])
  if not now or not n or #KEYS ~= 2 * n or #ARGV ~= 3 + 10 * n then
    return err('ERR rules.lua: bad arguments')
  end

  local rules = {}
  for i = 1, n do
    local a = 4 + (i - 1) * 10
    local w, ban_after = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 5])
    local r = {
      hash = KEYS[2 * i - 1], zset = KEYS[2 * i],
      kind = ARGV[a], limit = tonumber(ARGV[a + 1]), w = w,
      enforce = ARGV[a + 3] == '1', member = ARGV[a + 4], ban_after = ban_after,
    }
    if not (r.limit and w and w > 0 and ban_after) then
      return err('ERR rules.lua: bad arguments for rule ' .. i)
    end
    -- The ban's parameters matter only to a rule that bans.
    if ban_after > 0 then
      r.ban_ms, r.factor = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])
      r.ban_max, r.decay = tonumber(ARGV[a + 8]), tonumber(ARGV[a + 9])
      if not (r.ban_ms and r.factor and r.ban_max and r.decay) then
        return err('ERR rules.lua: bad arguments for rule ' .. i)
      end
    end
    -- A distinct rule without a ban keeps no hash (no buckets, no violations).
    r.uses_hash = r.kind ~= 'd' or ban_after > 0
    local s = max(1, floor(w / 10))
    r.s = s
    r.cur = floor(now / s)
    r.oldest = floor((now - w) / s)
    rules[i] = r
  end

  local function expire(r, extra_ms)
    call('PEXPIRE', r.hash, max(r.w + r.s, extra_ms or 0) + 1000)
  end

  if mode == 'settle' then
    -- Writes only: check every type before the first one.
    for i = 1, n do
      local r = rules[i]
      local t = call('TYPE', r.hash)['ok']
      if t ~= 'none' and t ~= 'hash' then
        return err('WRONGTYPE rules.lua: ' .. r.hash .. ' holds a ' .. t)
      end
    end
    for i = 1, n do
      local r = rules[i]
      call('HINCRBY', r.hash, 'b' .. r.cur, 1)
      expire(r, 0)
    end
    return {'ok'}
  end
  if mode ~= 'check' then
    return err('ERR rules.lua: mode is check or settle')
  end

  -- 1. Read everything.
  local refused = false
  for i = 1, n do
    local r = rules[i]
    local buckets, stale = {}, {}
    local count, viol, first = 0, 0, nil
    r.lvl, r.lvl_end = 0, 0
    if r.uses_hash then
      local flat = call('HGETALL', r.hash)
      local oldest, cur_field = r.oldest, 'b' .. r.cur
      for j = 1, #flat, 2 do
        local f, v = flat[j], tonumber(flat[j + 1]) or 0
        if f == 'lvl' then r.lvl = v
        elseif f == 'lvl_end' then r.lvl_end = v
        else
          local idx = tonumber(sub(f, 2))
          if idx and idx < oldest then stale[#stale + 1] = f
          elseif idx then
            local tag = sub(f, 1, 1)
            if tag == 'b' then
              count = count + v
              buckets[#buckets + 1] = {idx, v}
              if v > 0 and (not first or idx < first) then first = idx end
              if f == cur_field then r.has_cur = true end
            elseif tag == 'v' then viol = viol + v
            end
          end
        end
      end
    end
    r.buckets, r.stale, r.viol, r.first = buckets, stale, viol, first
    if r.kind == 'd' then
      local from = '(' .. int_str(now - r.w)
      count = call('ZCOUNT', r.zset, from, '+inf')
      local seen = tonumber(call('ZSCORE', r.zset, r.member) or '-1')
      r.present = seen > now - r.w
      r.over = (not r.present) and count >= r.limit
      r.reset = r.w
      if count > 0 then
        local oldest = call('ZRANGEBYSCORE', r.zset, from, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
        if oldest[2] then r.reset = tonumber(oldest[2]) + r.w - now end
      end
      r.remaining = r.limit - count - ((r.present or r.over) and 0 or 1)
    elseif r.kind == 'r' then
      r.over = count + 1 > r.limit
      r.remaining = r.limit - count - 1
      r.reset = free_after(r, r.over and (count + 1 - r.limit) or 1, now)
    else
      r.over = count >= r.limit
      r.remaining = r.limit - count
      r.reset = free_after(r, r.over and (count + 1 - r.limit) or 1, now)
    end
    r.count = count
    if r.remaining < 0 then r.remaining = 0 end
    if r.over and r.enforce then refused = true end
  end

  -- 2. Write.
  local out = {}
  for i = 1, n do
    local r = rules[i]
    if #r.stale > 0 then call('HDEL', r.hash, unpack(r.stale)) end
    local status, ban_ms, level = 'ok', 0, 0
    if r.over then status = r.enforce and 'over' or 'shadow' end
    if refused then
      if status == 'over' and r.ban_after > 0 then
        call('HINCRBY', r.hash, 'v' .. r.cur, 1)
        if r.viol + 1 >= r.ban_after then
          level = r.lvl
          if r.lvl_end + r.decay < now then level = 0 end
          level = level + 1
          ban_ms = r.ban_ms
          for _ = 2, level do
            ban_ms = ban_ms * r.factor
            if r.ban_max > 0 and ban_ms >= r.ban_max then break end
          end
          if r.ban_max > 0 and ban_ms > r.ban_max then ban_ms = r.ban_max end
          local forget = {}
          local flat = call('HKEYS', r.hash)
          for _, f in ipairs(flat) do
            if sub(f, 1, 1) == 'v' then forget[#forget + 1] = f end
          end
          if #forget > 0 then call('HDEL', r.hash, unpack(forget)) end
          call('HSET', r.hash, 'lvl', level, 'lvl_end', int_str(now + ban_ms))
        end
      end
    elseif not r.over then
      if r.kind == 'r' then
        call('HINCRBY', r.hash, 'b' .. r.cur, 1)
      elseif r.kind == 'd' then
        -- Only a set that holds members can hold stale ones.
        if r.count > 0 or r.present then
          call('ZREMRANGEBYSCORE', r.zset, '-inf', int_str(now - r.w))
        end
        call('ZADD', r.zset, now, r.member)
        call('PEXPIRE', r.zset, r.w + 1000)
      end
    end
    -- Keep the hash for its window, and while a ban's escalation still
    -- counts. A request that only adds to the current bucket of a rule
    -- without bans needs no new TTL: the request that opened that bucket
    -- (this second or earlier) set one that outlives it (now' + w + s >=
    -- the bucket's end + w).
    if r.uses_hash and (r.kind ~= 'd' or ban_ms > 0 or (refused and status == 'over')) then
      if r.ban_after > 0 then
        expire(r, max(r.lvl_end, now + ban_ms) + r.decay - now)
      elseif refused or r.over or not r.has_cur then
        expire(r, 0)
      end
    end
    out[#out + 1] = status
    out[#out + 1] = int_str(r.remaining)
    out[#out + 1] = int_str(max(0, r.reset))
    out[#out + 1] = int_str(ban_ms)
    out[#out + 1] = tostring(level)
  end
  return out
end

if ARGV[1] ~= 'batch' then
  local r = one(KEYS, ARGV)
  if r.err then return redis.error_reply(r.err) end
  return r
end
local n = tonumber(ARGV[2])
if not n or #ARGV < 2 + 2 * n then return redis.error_reply('ERR rules.lua: bad batch') end
local out, k, a = {}, 0, 2 + 2 * n
for i = 1, n do
  local nk, na = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local keys, args = {}, {}
  for j = 1, nk do keys[j] = KEYS[k + j] end
  for j = 1, na do args[j] = ARGV[a + j] end
  k, a = k + nk, a + na
  local ok, r = pcall(one, keys, args)
  if not ok then
    r = {'error', tostring(type(r) == 'table' and (r.err or r.message) or r)}
  elseif r.err then
    r = {'error', r.err}
  end
  out[i] = r
end
return out
