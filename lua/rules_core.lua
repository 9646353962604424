--[[ rules_core.lua: the rules engine's check and settle (see rules.lua for
the algorithm, the layout, KEYS, ARGV and the atomicity argument). Not a
script of its own: store::scripts prepends it to rules.lua (the rules' own
calls) and to claim.lua (a single node checks a claim's rules in the claim's
call), so the one engine has one text. It reads and writes the epoch hashes
through hcache.lua (prepended before it): a batch reads each epoch hash's
fields with one HMGET (`rules_prefetch`) and writes it once (`hc_flush`,
called by the script at its end). It only defines locals: `rules_prefetch`
and `rules_run`.

Lua here costs more than Redis's commands: printing a number (~0.35 µs), a
table with many fields (~0.7 µs), a pattern match (~0.1-0.4 µs). So the
epoch hashes' names and small integers are printed once per call (`ekey`,
`istr`), and a value carries its total and its oldest bucket up front.
]]
local call, tonumber, tostring, floor, max, sub, match, gmatch =
  redis.call, tonumber, tostring, math.floor, math.max, string.sub, string.match, string.gmatch
local function err(msg) return {err = msg} end

-- Integers print exactly through tostring (%.14g) below 1e14: every count,
-- length and ms value here is (ms clocks stay below 1e14 until the year 5138).
local function int_str(x) return tostring(floor(x)) end

-- Small non-negative integers, printed once per call.
local istrs = {}
local function istr(x)
  if x >= 0 and x < 4096 then
    local s = istrs[x]
    if not s then
      s = tostring(x)
      istrs[x] = s
    end
    return s
  end
  return tostring(x)
end

-- The name of epoch `e`'s hash of the rule whose prefix is `pre`.
local ekeys = {}
local function ekey(pre, e)
  local t = sub_table(ekeys, pre)
  local k = t[e]
  if not k then
    k = pre .. tostring(e)
    t[e] = k
  end
  return k
end

-- A rule's constants, parsed once (nil when they do not parse): from 9
-- strings, kind limit window_ms enforce ban_after ban_ms ban_factor
-- ban_max_ms decay_ms (rules.lua's header lists them). Buckets of s ms, P to
-- an epoch (rules.lua's header has the arithmetic).
local function rule_cfg(kind, limit, w, enforce, ban_after, ban_ms, factor, ban_max, decay)
  local c = {
    kind = kind, limit = tonumber(limit), w = tonumber(w), enforce = enforce == '1',
    ban_after = tonumber(ban_after), ban_ms = 0, factor = 1, ban_max = 0, decay = 0, s = 1, P = 1,
  }
  if not (c.limit and c.w and c.w > 0 and c.ban_after) then return nil end
  -- The ban's parameters matter only to a rule that bans.
  if c.ban_after > 0 then
    c.ban_ms, c.factor = tonumber(ban_ms), tonumber(factor)
    c.ban_max, c.decay = tonumber(ban_max), tonumber(decay)
    if not (c.ban_ms and c.factor and c.ban_max and c.decay) then return nil end
  end
  c.s = max(1, floor(c.w / 10))
  c.P = floor(c.w / c.s) + 1
  return c
end

-- One rule of one request: its constants, its epoch hashes' prefix, its
-- rule key's field, its distinct member, and its ban state's key (false:
-- derived from the prefix, '<...>:e:' -> '<...>:b:<field>', same slot).
local function rule_spec(cfg, pre, field, member, banh)
  return {
    cfg = cfg, pre = pre, field = field, member = member, banh = banh,
    cur = 0, e = 0, oldest = 0, hcur = false, ttl = 0, vcur = false, count = 0,
    first = false, present = false, over = false, reset = 0, remaining = 0,
  }
end

-- How many epochs an epoch hash outlives its own: it is read as the
-- previous one during the next epoch, and kept two more for a request
-- whose clock is behind (another instance's, or a check that waited in a
-- batch's queue): up to two epochs (2.2 windows) of skew read every live
-- bucket.
local KEEP_EPOCHS = 3

-- Reads the fields of a batch's rules (`reqs`: {now, specs} each), one HMGET
-- an epoch hash. Then, per rule, drops the hash KEEP_EPOCHS + 1 epochs
-- before the oldest epoch a request of the batch is in (UNLINK frees a big
-- one off the main thread; the TTL set in rules_run only frees the hashes
-- of a rule nobody uses any more).
local function rules_prefetch(reqs)
  local fields, order, oldest = {}, {}, {}
  local function want(key, field)
    local f = fields[key]
    if not f then
      f = {}
      fields[key] = f
      order[#order + 1] = key
    end
    f[#f + 1] = field
  end
  for _, q in ipairs(reqs) do
    local now = q[1]
    for _, r in ipairs(q[2]) do
      local c, pre = r.cfg, r.pre
      local e = floor(floor(now / c.s) / c.P)
      want(ekey(pre, e - 1), r.field)
      want(ekey(pre, e), r.field)
      want(ekey(pre, e + 1), r.field)
      if not oldest[pre] or e < oldest[pre] then oldest[pre] = e end
    end
  end
  for pre, e in pairs(oldest) do redis.pcall('UNLINK', ekey(pre, e - KEEP_EPOCHS - 1)) end
  for _, key in ipairs(order) do hc_prefetch(key, fields[key]) end
end

-- A counting value is 'T;F;o:c,o:c,...': T the sum of its counts, F its
-- oldest bucket's offset in the epoch, then one entry per bucket (o the
-- offset, c the count), newest first.
-- Epochs e and e+1 hold live buckets only: their total and oldest bucket
-- are read as they are.
local function add_whole(r, v, base)
  if not v then return end
  local t, f = match(v, '^(%d+);(%d+)')
  if not t then return end
  r.count = r.count + tonumber(t)
  local idx = base + tonumber(f)
  if not r.first or idx < r.first then r.first = idx end
end

-- Epoch e-1: the buckets from r.oldest on (newest first, so the loop stops
-- at the first one that left the window).
local function add_part(r, v, base)
  if not v then return end
  local oldest = r.oldest
  for o, c in gmatch(v, '(%d+):(%d+)') do
    local idx = base + tonumber(o)
    if idx < oldest then break end
    r.count = r.count + tonumber(c)
    if not r.first or idx < r.first then r.first = idx end
  end
end

-- Every live bucket of the three epochs, sorted oldest first (only a
-- refused request needs more than the oldest one).
local function live_buckets(r)
  local b = {}
  for j = -1, 1 do
    local v = hc_get(ekey(r.pre, r.e + j), r.field)
    if v then
      local base = (r.e + j) * r.cfg.P
      for o, c in gmatch(v, '(%d+):(%d+)') do
        local idx = base + tonumber(o)
        if idx >= r.oldest then b[#b + 1] = {idx, tonumber(c)} end
      end
    end
  end
  table.sort(b, function(x, y) return x[1] < y[1] end)
  return b
end

-- Time until `need` counted units have left the window.
local function free_after(r, need, now)
  local c = r.cfg
  if need <= 1 then
    if r.first then return (r.first + 1) * c.s + c.w - now end
    return c.w
  end
  local freed = 0
  for _, b in ipairs(live_buckets(r)) do
    freed = freed + b[2]
    if freed >= need then return (b[1] + 1) * c.s + c.w - now end
  end
  return c.w
end

-- The current epoch's value with one more in bucket offset `o`.
local function bump(v, o)
  local os = istr(o)
  local t, f, fo, fc, rest
  if v then t, f, fo, fc, rest = match(v, '^(%d+);(%d+);(%d+):(%d+)(.*)$') end
  -- A new value (or one this engine cannot read, started over).
  if not t then return '1;' .. os .. ';' .. os .. ':1' end
  local t1 = istr(tonumber(t) + 1)
  local newest = tonumber(fo)
  if newest == o then return t1 .. ';' .. f .. ';' .. os .. ':' .. istr(tonumber(fc) + 1) .. rest end
  if newest < o then return t1 .. ';' .. f .. ';' .. os .. ':1,' .. fo .. ':' .. fc .. rest end
  -- An older bucket than the newest one (another instance's clock is
  -- behind): rebuild in order.
  local b, found = {}, false
  for eo, c in gmatch(v, '(%d+):(%d+)') do
    eo, c = tonumber(eo), tonumber(c)
    if eo == o then c, found = c + 1, true end
    b[#b + 1] = {eo, c}
  end
  if not found then b[#b + 1] = {o, 1} end
  table.sort(b, function(x, y) return x[1] > y[1] end)
  local parts = {}
  for j = 1, #b do parts[j] = istr(b[j][1]) .. ':' .. istr(b[j][2]) end
  return t1 .. ';' .. istr(b[#b][1]) .. ';' .. table.concat(parts, ',')
end

-- A distinct value is 'member@ms,member@ms,...' (members are hex digests):
-- the members seen in that epoch, each with its last time in it.
local function add_members(v, seen, since)
  if not v then return end
  for m, t in gmatch(v, '(%x+)@(%d+)') do
    t = tonumber(t)
    if t > since and (not seen[m] or t > seen[m]) then seen[m] = t end
  end
end

-- One request's rules (`specs`, from rule_spec), checked (mode 'check')
-- or charged ('settle') at `now`. Returns 5 values a rule (rules.lua's
-- header), or {err = ...}.
local function rules_run(mode, now, specs)
  local n = #specs
  for i = 1, n do
    local r = specs[i]
    local c = r.cfg
    -- The hash of epoch x lives until epoch x + 1 + KEEP_EPOCHS ends (the
    -- UNLINK in rules_prefetch drops it after that, while the rule is used).
    r.cur = floor(now / c.s)
    r.e = floor(r.cur / c.P)
    r.oldest = floor((now - c.w) / c.s)
    r.hcur = ekey(r.pre, r.e)
    r.ttl = (r.e + 2 + KEEP_EPOCHS) * c.P * c.s - now + 1000
  end

  if mode == 'settle' then
    -- The reads first (a wrong-type hash raises before any write).
    local v = {}
    for i = 1, n do v[i] = hc_get(specs[i].hcur, specs[i].field) end
    for i = 1, n do
      local r = specs[i]
      hc_set(r.hcur, r.field, bump(v[i], r.cur - r.e * r.cfg.P), r.ttl)
    end
    return {'ok'}
  end
  if mode ~= 'check' then
    return err('ERR rules.lua: mode is check or settle')
  end

  -- 1. Read everything.
  local refused = false
  for i = 1, n do
    local r = specs[i]
    local c = r.cfg
    local field, pre, e = r.field, r.pre, r.e
    local vprev = hc_get(ekey(pre, e - 1), field)
    local vcur = hc_get(r.hcur, field)
    local vnext = hc_get(ekey(pre, e + 1), field)
    r.vcur = vcur
    if c.kind == 'd' then
      local seen, since = {}, now - c.w
      add_members(vprev, seen, since)
      add_members(vcur, seen, since)
      add_members(vnext, seen, since)
      local count, first = 0, false
      for _, t in pairs(seen) do
        count = count + 1
        if not first or t < first then first = t end
      end
      r.count = count
      r.present = seen[r.member] ~= nil
      r.over = (not r.present) and count >= c.limit
      r.reset = first and (first + c.w - now) or c.w
      r.remaining = c.limit - count - ((r.present or r.over) and 0 or 1)
    else
      add_part(r, vprev, (e - 1) * c.P)
      add_whole(r, vcur, e * c.P)
      add_whole(r, vnext, (e + 1) * c.P)
      local count = r.count
      if c.kind == 'r' then
        r.over = count + 1 > c.limit
        r.remaining = c.limit - count - 1
      else
        r.over = count >= c.limit
        r.remaining = c.limit - count
      end
      r.reset = free_after(r, r.over and (count + 1 - c.limit) or 1, now)
    end
    if r.remaining < 0 then r.remaining = 0 end
    if r.over and c.enforce then
      refused = true
      -- A violation: its ban state (only a rule that bans keeps one).
      if c.ban_after > 0 then
        if not r.banh then r.banh = sub(pre, 1, -3) .. 'b:' .. field end
        local flat = call('HGETALL', r.banh)
        local stale, viol = {}, 0
        r.lvl, r.lvl_end = 0, 0
        for j = 1, #flat, 2 do
          local f = flat[j]
          if f == 'lvl' then r.lvl = tonumber(flat[j + 1]) or 0
          elseif f == 'lvl_end' then r.lvl_end = tonumber(flat[j + 1]) or 0
          elseif sub(f, 1, 1) == 'v' then
            local idx = tonumber(sub(f, 2))
            if idx and idx < r.oldest then stale[#stale + 1] = f
            elseif idx then viol = viol + (tonumber(flat[j + 1]) or 0) end
          end
        end
        r.vstale, r.viol = stale, viol
      end
    end
  end

  -- 2. Write.
  local out = {}
  for i = 1, n do
    local r = specs[i]
    local c = r.cfg
    local status, ban_ms, level = 'ok', 0, 0
    if r.over then status = c.enforce and 'over' or 'shadow' end
    if refused then
      if status == 'over' and c.ban_after > 0 then
        if #r.vstale > 0 then call('HDEL', r.banh, unpack(r.vstale)) end
        call('HINCRBY', r.banh, 'v' .. r.cur, 1)
        if r.viol + 1 >= c.ban_after then
          level = r.lvl
          if r.lvl_end + c.decay < now then level = 0 end
          level = level + 1
          ban_ms = c.ban_ms
          for _ = 2, level do
            ban_ms = ban_ms * c.factor
            if c.ban_max > 0 and ban_ms >= c.ban_max then break end
          end
          if c.ban_max > 0 and ban_ms > c.ban_max then ban_ms = c.ban_max end
          local forget = {}
          for _, f in ipairs(call('HKEYS', r.banh)) do
            if sub(f, 1, 1) == 'v' then forget[#forget + 1] = f end
          end
          if #forget > 0 then call('HDEL', r.banh, unpack(forget)) end
          call('HSET', r.banh, 'lvl', level, 'lvl_end', int_str(now + ban_ms))
        end
        -- Keep the violations for their window, and a ban's level while
        -- the next ban still escalates.
        call('PEXPIRE', r.banh,
          max(c.w + c.s, max(r.lvl_end, now + ban_ms) + c.decay - now) + 1000)
      end
    elseif not r.over then
      if c.kind == 'r' then
        hc_set(r.hcur, r.field, bump(r.vcur, r.cur - r.e * c.P), r.ttl)
      elseif c.kind == 'd' then
        -- This epoch's members, with this one (again) at `now`.
        local v = r.vcur
        if v then
          if string.find(v, r.member, 1, true) then v = string.gsub(v, r.member .. '@%d+,?', '') end
          if #v > 0 and sub(v, -1) ~= ',' then v = v .. ',' end
        else
          v = ''
        end
        hc_set(r.hcur, r.field, v .. r.member .. '@' .. int_str(now), r.ttl)
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

-- The specs of one request's rules in rules.lua's layout: `n` rules whose
-- keys are KEYS[K + 1 .. K + 2n] and arguments ARGV[A + 1 .. A + 11n];
-- nil and a message when they do not parse.
local function rule_specs(n, K, A)
  if not n or #KEYS < K + 2 * n or #ARGV < A + 11 * n then
    return nil, 'ERR rules.lua: bad arguments'
  end
  local specs = {}
  for i = 1, n do
    local a = A + 1 + (i - 1) * 11
    local cfg = rule_cfg(ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 5],
      ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], ARGV[a + 9])
    local field = ARGV[a + 10]
    if not cfg or not field or #field == 0 then
      return nil, 'ERR rules.lua: bad arguments for rule ' .. i
    end
    specs[i] = rule_spec(cfg, KEYS[K + 2 * i - 1], field, ARGV[a + 4], KEYS[K + 2 * i])
  end
  return specs
end
