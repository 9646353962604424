--[[ rules_core.lua: the rules engine's check and settle (see rules.lua for
the algorithm, KEYS, ARGV and the atomicity argument). Not a script of its
own: store::scripts prepends it to rules.lua (the rules' own calls) and to
claim.lua (a single node checks a claim's rules in the claim's call), so the
one engine has one text. It only defines locals: `rules_run`.
]]
local call, tonumber, tostring, floor, max, sub, byte =
  redis.call, tonumber, tostring, math.floor, math.max, string.sub, string.byte
local B, V, L = byte('b'), byte('v'), byte('l')
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
  local b = {}
  for j = 1, #r.bi do b[j] = {r.bi[j], r.bv[j]} end
  table.sort(b, function(x, y) return x[1] < y[1] end)
  local freed = 0
  for j = 1, #b do
    freed = freed + b[j][2]
    if freed >= need then return (b[j][1] + 1) * r.s + r.w - now end
  end
  return r.w
end

-- One request's rules: `n` rules whose keys are KEYS[K + 1 .. K + 2n] and
-- whose arguments are ARGV[A + 1 .. A + 10n] (10 a rule, as listed in
-- rules.lua's header), checked (mode 'check') or charged ('settle') at `now`.
-- Offsets rather than slices: a batch copies no table per request.
local function rules_run(mode, now, n, K, A)
  if not now or not n or #KEYS < K + 2 * n or #ARGV < A + 10 * n then
    return err('ERR rules.lua: bad arguments')
  end

  local rules = {}
  for i = 1, n do
    local a = A + 1 + (i - 1) * 10
    local w, ban_after = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 5])
    -- Every field named here, so the table is sized once.
    local r = {
      hash = KEYS[K + 2 * i - 1], zset = KEYS[K + 2 * i],
      kind = ARGV[a], limit = tonumber(ARGV[a + 1]), w = w,
      enforce = ARGV[a + 3] == '1', member = ARGV[a + 4], ban_after = ban_after,
      ban_ms = 0, factor = 1, ban_max = 0, decay = 0, uses_hash = false, s = 1, cur = 0,
      oldest = 0, lvl = 0, lvl_end = 0, has_cur = false, bi = false, bv = false,
      stale = false, viol = 0, first = false, present = false, over = false, reset = 0,
      remaining = 0, count = 0,
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
    local bi, bv, stale = {}, {}, {}
    local count, viol, first = 0, 0, false
    if r.uses_hash then
      local flat = call('HGETALL', r.hash)
      local oldest, cur_field = r.oldest, 'b' .. r.cur
      for j = 1, #flat, 2 do
        local f = flat[j]
        local c = byte(f)
        if c == L then
          if f == 'lvl' then r.lvl = tonumber(flat[j + 1]) or 0
          elseif f == 'lvl_end' then r.lvl_end = tonumber(flat[j + 1]) or 0 end
        else
          local idx = tonumber(sub(f, 2))
          if idx and idx < oldest then stale[#stale + 1] = f
          elseif idx then
            local v = tonumber(flat[j + 1]) or 0
            if c == B then
              count = count + v
              bi[#bi + 1], bv[#bv + 1] = idx, v
              if v > 0 and (not first or idx < first) then first = idx end
              if f == cur_field then r.has_cur = true end
            elseif c == V then viol = viol + v
            end
          end
        end
      end
    end
    r.bi, r.bv, r.stale, r.viol, r.first = bi, bv, stale, viol, first
    if r.kind == 'd' then
      local from = '(' .. int_str(now - r.w)
      count = call('ZCOUNT', r.zset, from, '+inf')
      -- An empty window holds no member, this one neither.
      if count > 0 then
        local seen = tonumber(call('ZSCORE', r.zset, r.member) or '-1')
        r.present = seen > now - r.w
      end
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
    -- Numbers go back as integer replies (no formatting here).
    out[#out + 1] = status
    out[#out + 1] = floor(r.remaining)
    out[#out + 1] = floor(max(0, r.reset))
    out[#out + 1] = floor(ban_ms)
    out[#out + 1] = level
  end
  return out
end

