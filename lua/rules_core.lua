--[[ rules_core.lua: the rules engine's check and settle (see rules.lua for
the algorithm, the layout, KEYS, ARGV and the atomicity argument). Not a
script of its own: store::scripts prepends it to rules.lua (the rules' own
calls) and to claim.lua (a single node checks a claim's rules in the claim's
call), so the one engine has one text. It reads and writes the epoch hashes
through hcache.lua (prepended before it): a batch reads each epoch hash's
fields with one HMGET (`rules_prefetch`) and writes it once (`hc_flush`,
called by the script at its end). It only defines locals: chiefly
`rules_prefetch` and `rules_run`; `rule_cfg_at` (a rule's constants, kept
across the calls of a function library), `int` (a counter's text read) and
`rules_reset` (fresh per-call caches for a function library's next call:
store::scripts).

Lua here costs more than Redis's commands: printing a number (~0.35 µs), a
table with many fields (~0.7 µs), a pattern match (~0.1-0.4 µs). So the
epoch hashes' names and small integers are printed once per call (`ekey`,
`istr`), and a value carries its total and its oldest bucket up front.
]]
local call, tonumber, floor, max, sub, match, gmatch, fmt =
  redis.call, tonumber, math.floor, math.max, string.sub, string.match, string.gmatch, string.format
local function err(msg) return {err = msg} end

-- Integers are printed with '%d' (a C long: exact for every count, length
-- and ms value here): tostring's '%.14g' cost three times as much, and so
-- does a number handed to redis.call or `..` as it is.
local function int_str(x) return fmt('%d', floor(x)) end

-- Integers, each printed once per call (the requests of a call share
-- most: a window's length, a limit less one, a bucket's offset).
local istrs = {}
local function istr(x)
  local s = istrs[x]
  if not s then
    s = fmt('%d', x)
    istrs[x] = s
  end
  return s
end

-- A stored counter: 0 when absent, nil when not an integer. Each text is
-- read once per call (`ints`, false: not an integer): the claims of a
-- batch send many of the same numbers (a TTL, a rule count, a clock), and
-- tonumber parses with strtod.
local ints = {}
local function int(v)
  if not v then return 0 end
  local x = ints[v]
  if x == nil then
    x = tonumber(v)
    if not (x and x % 1 == 0) then x = false end
    ints[v] = x
  end
  return x or nil
end

-- The name of epoch `e`'s hash of the rule whose prefix is `pre`.
local ekeys = {}
local function ekey(pre, e)
  local t = sub_table(ekeys, pre)
  local k = t[e]
  if not k then
    k = pre .. fmt('%d', e)
    t[e] = k
  end
  return k
end

-- A rule's constants, parsed once (nil when they do not parse): from 9
-- strings, kind limit window_ms enforce ban_after ban_ms ban_factor
-- ban_max_ms decay_ms (rules.lua's header lists them). Buckets of s ms, P to
-- an epoch (rules.lua's header has the arithmetic).
-- A finite number (Lua 5.1's tonumber also reads 'nan' and 'inf'), or nil.
local function finite(v)
  local x = tonumber(v)
  if x and x == x and x > -math.huge and x < math.huge then return x end
  return nil
end

local function rule_cfg(kind, limit, w, enforce, ban_after, ban_ms, factor, ban_max, decay)
  -- 'r<B>': a requests rule whose admitted request takes a lease of B
  -- units while B more fit (rules.lua's header).
  local lease = 1
  if #kind > 1 then
    local b = match(kind, '^r(%d+)$')
    lease = tonumber(b)
    if not lease or lease < 2 then return nil end
    kind = 'r'
  end
  local c = {
    kind = kind, limit = finite(limit), w = finite(w), enforce = enforce == '1',
    ban_after = finite(ban_after), ban_ms = 0, factor = 1, ban_max = 0, decay = 0, s = 1, P = 1,
    lease = lease,
  }
  if not (c.limit and c.w and c.w > 0 and c.ban_after) then return nil end
  -- The ban's parameters matter only to a rule that bans.
  if c.ban_after > 0 then
    c.ban_ms, c.factor = finite(ban_ms), finite(factor)
    c.ban_max, c.decay = finite(ban_max), finite(decay)
    if not (c.ban_ms and c.factor and c.ban_max and c.decay) then return nil end
  end
  c.s = max(1, floor(c.w / 10))
  c.P = floor(c.w / c.s) + 1
  -- What a key with nothing stored in the window answers (rules_run's
  -- check with no value; its reset is the window): over, and what
  -- remains. A new phone's or device's key, most of a flash sale's.
  if c.kind == 'r' then
    c.cold_over, c.cold_rem = 1 > c.limit, c.limit - 1
  elseif c.kind == 'o' then
    c.cold_over, c.cold_rem = 0 >= c.limit, c.limit
  else
    c.cold_over = 0 >= c.limit
    c.cold_rem = c.cold_over and c.limit or c.limit - 1
  end
  if c.cold_rem < 0 then c.cold_rem = 0 end
  return c
end

-- The rule whose constants are `text` (its 9 values joined by '|', in
-- rule_cfg's order: claim.lua's rule table) and whose epoch hashes are
-- named `pre`... (rule_cfg; false when they do not parse), parsed once
-- while this text's locals live: a call of a script, every call of a
-- function library (store::scripts), where the rule's frame (below) is
-- then also shared by the calls. Kept by prefix, then by text: Lua interns
-- strings, so each lookup hashes no text (joining 9 arguments into one
-- memo key cost ~2k cycles a rule and call; comparing 9 arguments one by
-- one, a tenth of a batch of one's Lua). A batch can hold a rule both as a
-- lease ask ('r<N>') and as a plain call ('r'): two texts, two entries.
-- A prefix sent with other constants (a reloaded rules file) is parsed
-- again. At most 64 are kept (a rules file has a few).
local cfg_memo, cfg_count = {}, 0
local function rule_cfg_at(text, pre)
  local by_text = cfg_memo[pre]
  local c = by_text and by_text[text]
  if c == nil then
    local kind, limit, w, enforce, ban_after, ban_ms, factor, ban_max, decay = match(text,
      '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
    c = kind and rule_cfg(kind, limit, w, enforce, ban_after, ban_ms, factor, ban_max, decay)
      or false
    if cfg_count >= 64 then cfg_memo, cfg_count, by_text = {}, 0, nil end
    if not by_text then
      by_text = {}
      cfg_memo[pre] = by_text
    end
    by_text[text] = c
    cfg_count = cfg_count + 1
  end
  return c or nil
end

-- The text of a small place number (a claim names its rules by their
-- place in the call's rule table), printed once while this text's locals
-- live (tostring prints with '%.14g': ~3k cycles).
local place_texts = {}
local function place_text(j)
  local t = place_texts[j]
  if not t then
    t = fmt('%d', j)
    if j <= 64 then place_texts[j] = t end
  end
  return t
end

-- One rule of one request, as a list: [1] its constants, [2] its epoch
-- hashes' prefix, [3] its rule key's field, [4] its distinct member, [5]
-- its ban state's key (false: derived from the prefix, '<...>:e:' ->
-- '<...>:b:<field>', same slot), [6] its frame (false until the batch's
-- prefetch sets it: rules_run then need not look it up). A list, not
-- named fields: a table gets each named field by a hash insert, and a
-- claim makes one of these per rule (1.3 % of Redis's instructions a
-- 3-rule claim, measured). What a check finds out about it is kept in
-- rules_run's scratch arrays, not here (a violation's ban state excepted:
-- rare). claim.lua makes the same list inline, for every rule of every
-- claim: the call cost 0.8 % of Redis's instructions a 3-rule claim.
local function rule_spec(cfg, pre, field, member, banh)
  return {cfg, pre, field, member, banh, false}
end

-- rules_run's findings on a request's i-th rule, by i: its frame, its
-- current epoch's value, its first live bucket, whether it is over, what
-- remains and when it resets. One set of
-- arrays serves every request of the call (each check sets 1..n before it
-- reads them), so a check allocates none.
local S_fr, S_vcur, S_first, S_over, S_remaining, S_reset = {}, {}, {}, {}, {}, {}

-- How many epochs an epoch hash outlives its own: it is read as the
-- previous one during the next epoch, and kept two more for a request
-- whose clock is behind (another instance's, or a check that waited in a
-- batch's queue): up to two epochs (2.2 windows) of skew read every live
-- bucket.
local KEEP_EPOCHS = 3

-- What a rule's bucket `cur` (prefix `pre`) fixes: the epoch e, the bucket's
-- offset in it, the names and first buckets of epochs e-1, e and e+1, and
-- when epoch e's hash expires (`exp`, service clock: it lives until epoch
-- e + 1 + KEEP_EPOCHS ends, and a second more; its TTL is exp - now).
-- The rule keeps the last one: the requests of a call share their buckets.
local function frame(c, pre, now)
  local cur = floor(now / c.s)
  local f = c.fr
  if f and f.cur == cur and f.pre == pre then return f end
  local P = c.P
  local e = floor(cur / P)
  f = {
    pre = pre, cur = cur, e = e, off = cur - e * P,
    kprev = ekey(pre, e - 1), kcur = ekey(pre, e), knext = ekey(pre, e + 1),
    bprev = (e - 1) * P, bcur = e * P, bnext = (e + 1) * P,
    exp = (e + 2 + KEEP_EPOCHS) * P * c.s + 1000,
  }
  c.fr = f
  return f
end

-- Reads the fields of a batch's rules, one HMGET an epoch hash (each field
-- once): request i
-- (1..n) is checked at nows[i] (nil or false: not checked) with the rules
-- lists[i] (two parallel lists, not a table a request: a claim's call
-- already has both). Then, per rule, drops the hash KEEP_EPOCHS + 1 epochs
-- before the oldest epoch a request of the batch is in (UNLINK frees a big
-- one off the main thread; the TTL set in rules_run only frees the hashes
-- of a rule nobody uses any more).
local unlinked, unlinked_count = {}, 0
local function rules_prefetch(nows, lists, n)
  -- The fields wanted of each epoch e (by its hash's name), read from the
  -- hashes of e-1, e and e+1.
  local wanted, order, oldest = {}, {}, {}
  for i = 1, n do
    local now = nows[i]
    local list = now and lists[i]
    for j = 1, list and #list or 0 do
      local r = list[j]
      local pre = r[2]
      local fr = frame(r[1], pre, now)
      r[6] = fr
      local l = wanted[fr.kcur]
      if not l then
        l = {fr = fr, seen = {}}
        wanted[fr.kcur] = l
        order[#order + 1] = l
      end
      -- Each field once: the requests of a batch on one hot key (one
      -- address, many phones) would read it once each.
      local field = r[3]
      if not l.seen[field] then
        l.seen[field] = true
        l[#l + 1] = field
      end
      local e = fr.e
      if not oldest[pre] or e < oldest[pre] then oldest[pre] = e end
    end
  end
  for pre, e in pairs(oldest) do
    -- (Once an epoch while this text's locals live: every call of a
    -- function library would otherwise send the same UNLINK again.)
    if unlinked[pre] ~= e then
      redis.pcall('UNLINK', ekey(pre, e - KEEP_EPOCHS - 1))
      if unlinked_count >= 1024 then unlinked, unlinked_count = {}, 0 end
      unlinked[pre], unlinked_count = e, unlinked_count + 1
    end
  end
  -- The next epoch's hash exists only while some instance's clock runs
  -- ahead: one EXISTS of them all, rather than an HMGET of every field,
  -- tells (and one EXISTS a hash when one of them does).
  local nexts = {}
  for i, l in ipairs(order) do nexts[i] = l.fr.knext end
  local none = #nexts > 1 and hc_all_absent(nexts)
  for _, l in ipairs(order) do
    local fr = l.fr
    hc_prefetch(fr.kprev, l)
    hc_prefetch(fr.kcur, l)
    if not none and not hc_absent(fr.knext) then hc_prefetch(fr.knext, l) end
  end
end

-- A counting value is 'T;F;o:c,o:c,...': T the sum of its counts, F its
-- oldest bucket's offset in the epoch, then one entry per bucket (o the
-- offset, c the count), newest first.
--
-- Parsed values, by value: T, F, the newest bucket's offset and count, and
-- the text after that bucket. A string is interned, so the lookup hashes
-- no text; bump() records what it writes over a value, so the requests of a
-- call on one hot rule key (one address, many phones) parse it once, not
-- each time. A brand-new value (a new phone's first request) is not
-- recorded: it rarely comes up again in the same call, and then it is
-- parsed.
local heads = {}
local function head(v)
  local h = heads[v]
  if h then return h end
  local t, f, fo, fc, rest = match(v, '^(%d+);(%d+);(%d+):(%d+)(.*)$')
  if not t then return nil end
  h = {tonumber(t), tonumber(f), tonumber(fo), tonumber(fc), rest}
  heads[v] = h
  return h
end

-- Epochs e and e+1 hold live buckets only: their total and oldest bucket
-- are read as they are. Returns the count and the oldest bucket so far.
local function add_whole(v, base, count, first)
  if not v then return count, first end
  local t, f
  local h = head(v)
  if h then
    t, f = h[1], h[2]
  else
    t, f = match(v, '^(%d+);(%d+)')
    if not t then return count, first end
    t, f = tonumber(t), tonumber(f)
  end
  local idx = base + f
  if not first or idx < first then first = idx end
  return count + t, first
end

-- Epoch e-1: the buckets from `oldest` on (newest first, so the loop stops
-- at the first one that left the window). Nothing writes epoch e-1's value
-- during a call but a request whose clock is behind, so its sum is kept by
-- value, base and start.
local parts = {}

-- Fresh per-call caches (values parsed, numbers read and printed, hash
-- names), for the next call of a function library: there this text is set
-- up once and its locals outlive a call. Kept across calls (bounded at a
-- few thousand entries) they saved 0.7 % of Redis's instructions but no
-- time (1-3 % more a claim, timed A B B A with `script_cost.py --ab-dir`):
-- the claims' clocks and counts fill them with numbers seen once, and the
-- garbage collector walks every live table on each cycle.
local function rules_reset()
  heads, parts, istrs, ekeys, ints = {}, {}, {}, {}, {}
end
local function add_part(v, base, oldest, count, first)
  if not v then return count, first end
  local p = parts[v]
  if not (p and p[1] == base and p[2] == oldest) then
    local n, low = 0, false
    for o, c in gmatch(v, '(%d+):(%d+)') do
      local idx = base + tonumber(o)
      if idx < oldest then break end
      n = n + tonumber(c)
      if not low or idx < low then low = idx end
    end
    p = {base, oldest, n, low}
    parts[v] = p
  end
  if p[4] and (not first or p[4] < first) then first = p[4] end
  return count + p[3], first
end

-- Every live bucket of the three epochs, sorted oldest first (only a
-- refused request needs more than the oldest one).
local function live_buckets(r, i, now)
  local cfg = r[1]
  local b, fr, oldest = {}, S_fr[i], floor((now - cfg.w) / cfg.s)
  for j = -1, 1 do
    local v = hc_get(ekey(r[2], fr.e + j), r[3])
    if v then
      local base = (fr.e + j) * r[1].P
      for o, c in gmatch(v, '(%d+):(%d+)') do
        local idx = base + tonumber(o)
        if idx >= oldest then b[#b + 1] = {idx, tonumber(c)} end
      end
    end
  end
  table.sort(b, function(x, y) return x[1] < y[1] end)
  return b
end

-- Time until `need` counted units have left the window.
local function free_after(r, i, need, now)
  local c = r[1]
  if need <= 1 then
    local first = S_first[i]
    if first then return (first + 1) * c.s + c.w - now end
    return c.w
  end
  local freed = 0
  for _, b in ipairs(live_buckets(r, i, now)) do
    freed = freed + b[2]
    if freed >= need then return (b[1] + 1) * c.s + c.w - now end
  end
  return c.w
end

-- A new value of one unit in bucket offset o, by o (a few per rule: kept
-- while this text's locals live): every new key of a bucket starts so.
local first_vals = {}

-- The current epoch's value with `k` more (1 when nil) in bucket offset `o`.
local function bump(v, o, k)
  k = k or 1
  local h = v and head(v)
  -- A new value (or one this engine cannot read, started over).
  if not h then
    if k == 1 then
      local nv = first_vals[o]
      if not nv then
        nv = '1;' .. istr(o) .. ';' .. istr(o) .. ':1'
        if o < 1024 then first_vals[o] = nv end
      end
      return nv
    end
    local os, ks = istr(o), istr(k)
    return ks .. ';' .. os .. ';' .. os .. ':' .. ks
  end
  local os = istr(o)
  local t, f, newest, fc, rest = h[1] + k, h[2], h[3], h[4], h[5]
  local t1, fs = istr(t), istr(f)
  if newest == o then
    local nv = t1 .. ';' .. fs .. ';' .. os .. ':' .. istr(fc + k) .. rest
    heads[nv] = {t, f, o, fc + k, rest}
    return nv
  end
  if newest < o then
    rest = ',' .. istr(newest) .. ':' .. istr(fc) .. rest
    local nv = t1 .. ';' .. fs .. ';' .. os .. ':' .. istr(k) .. rest
    heads[nv] = {t, f, o, k, rest}
    return nv
  end
  -- An older bucket than the newest one (another instance's clock is
  -- behind): rebuild in order.
  local b, found = {}, false
  for eo, c in gmatch(v, '(%d+):(%d+)') do
    eo, c = tonumber(eo), tonumber(c)
    if eo == o then c, found = c + k, true end
    b[#b + 1] = {eo, c}
  end
  if not found then b[#b + 1] = {o, k} end
  table.sort(b, function(x, y) return x[1] > y[1] end)
  local list = {}
  for j = 1, #b do list[j] = istr(b[j][1]) .. ':' .. istr(b[j][2]) end
  return t1 .. ';' .. istr(b[#b][1]) .. ';' .. table.concat(list, ',')
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

-- The answer of a rule that passed without a ban ('ok' or 'lease', with
-- what remains and when it resets), as one '|'-joined text. The rule keeps
-- the last one it made: the requests of a call on a new key (a new phone,
-- a new device: most of a flash sale's) all answer the same, and a text
-- made once costs a lookup rather than two numbers printed and five
-- fields joined into the claim's answer.
local function passed_text(c, status, remaining, reset)
  local a = c.ans
  if a and a[1] == status and a[2] == remaining and a[3] == reset then return a[4] end
  local t = status .. '|' .. istr(floor(remaining)) .. '|'
    .. (reset > 0 and istr(floor(reset)) or '0') .. '|0|0'
  c.ans = {status, remaining, reset, t}
  return t
end

-- One request's rules (`specs`, from rule_spec), checked (mode 'check')
-- or charged ('settle') at `now`. Returns 5 values a rule (rules.lua's
-- header), or {err = ...}. With `joined` (claim.lua, which joins a
-- claim's answer into one text anyway), a rule that passed without a ban
-- is answered as its 5 values already joined by '|' (one element), and a
-- second value tells whether an enforced rule refused the request.
local function rules_run(mode, now, specs, joined)
  local n = #specs

  if mode == 'settle' then
    -- The reads first (a wrong-type hash raises before any write).
    for i = 1, n do
      local r = specs[i]
      local fr = frame(r[1], r[2], now)
      S_fr[i], S_vcur[i] = fr, hc_get(fr.kcur, r[3])
    end
    for i = 1, n do
      local fr = S_fr[i]
      hc_set(fr.kcur, specs[i][3], bump(S_vcur[i], fr.off), fr.exp - now)
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
    local c = r[1]
    -- (The batch's prefetch made the frame: r[6].)
    local fr = r[6] or frame(c, r[2], now)
    local field = r[3]
    S_fr[i] = fr
    -- The batch's prefetch read them (hc_get only when it did not).
    local h = hc_vals[fr.kprev]
    local vprev = h and h[field]
    if vprev == nil then vprev = hc_get(fr.kprev, field) end
    h = hc_vals[fr.kcur]
    local vcur = h and h[field]
    if vcur == nil then vcur = hc_get(fr.kcur, field) end
    local vnext = false
    if not hc_none[fr.knext] then
      h = hc_vals[fr.knext]
      vnext = h and h[field]
      if vnext == nil then vnext = hc_get(fr.knext, field) end
    end
    S_vcur[i] = vcur
    local over, remaining, reset
    if not (vprev or vcur or vnext or c.cold_over) then
      -- A key with nothing stored in the window (the common case: a new
      -- phone, a new device) answers what the rule's constants say
      -- (rule_cfg: cold_rem), and resets a window from now.
      over, remaining, reset = false, c.cold_rem, c.w
      S_first[i] = false
    elseif c.kind == 'd' then
      local count, first, present = 0, false, false
      -- (No members to scan without a value.)
      if vprev or vcur or vnext then
        local seen, since = {}, now - c.w
        add_members(vprev, seen, since)
        add_members(vcur, seen, since)
        add_members(vnext, seen, since)
        for _, t in pairs(seen) do
          count = count + 1
          if not first or t < first then first = t end
        end
        present = seen[r[4]] ~= nil
      end
      over = (not present) and count >= c.limit
      reset = first and (first + c.w - now) or c.w
      remaining = c.limit - count - ((present or over) and 0 or 1)
    else
      -- (Each read only when there is a value: a new key has none, and
      -- a call costs more than the test.)
      local count, first = 0, false
      if vprev then
        count, first = add_part(vprev, fr.bprev, floor((now - c.w) / c.s), 0, false)
      end
      if vcur then count, first = add_whole(vcur, fr.bcur, count, first) end
      if vnext then count, first = add_whole(vnext, fr.bnext, count, first) end
      S_first[i] = first
      if c.kind == 'r' then
        over = count + 1 > c.limit
        remaining = c.limit - count - 1
      else
        over = count >= c.limit
        remaining = c.limit - count
      end
      if not over and not first then
        reset = c.w
      else
        reset = free_after(r, i, over and (count + 1 - c.limit) or 1, now)
      end
    end
    if remaining < 0 then remaining = 0 end
    S_over[i], S_remaining[i], S_reset[i] = over, remaining, reset
    if over and c.enforce then
      refused = true
      -- A violation: its ban state (only a rule that bans keeps one).
      if c.ban_after > 0 then
        if not r[5] then r[5] = sub(r[2], 1, -3) .. 'b:' .. field end
        local flat = call('HGETALL', r[5])
        local stale, viol, oldest = {}, 0, floor((now - c.w) / c.s)
        r.lvl, r.lvl_end = 0, 0
        for j = 1, #flat, 2 do
          local f = flat[j]
          if f == 'lvl' then r.lvl = finite(flat[j + 1]) or 0
          elseif f == 'lvl_end' then r.lvl_end = finite(flat[j + 1]) or 0
          elseif sub(f, 1, 1) == 'v' then
            local idx = tonumber(sub(f, 2))
            if idx and idx < oldest then stale[#stale + 1] = f
            elseif idx then viol = viol + (finite(flat[j + 1]) or 0) end
          end
        end
        r.vstale, r.viol = stale, viol
      end
    end
  end

  -- 2. Write. The answer is made at the size of three rules and a claim's
  -- answer after them (claim.lua appends it): it is not grown step by step
  -- (joined, a rule that passed is one element).
  local out, k
  if joined then
    out, k = {nil, nil, nil, nil, nil, nil, nil, nil}, 0
  else
    out, k = {nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil,
      nil, nil, nil, nil, nil, nil}, 0
  end
  for i = 1, n do
    local r = specs[i]
    local c = r[1]
    local status, ban_ms, level = 'ok', 0, 0
    local over = S_over[i]
    if over then status = c.enforce and 'over' or 'shadow' end
    if refused then
      if status == 'over' and c.ban_after > 0 then
        if #r.vstale > 0 then call('HDEL', r[5], unpack(r.vstale)) end
        call('HINCRBY', r[5], 'v' .. int_str(S_fr[i].cur), 1)
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
          for _, f in ipairs(call('HKEYS', r[5])) do
            if sub(f, 1, 1) == 'v' then forget[#forget + 1] = f end
          end
          if #forget > 0 then call('HDEL', r[5], unpack(forget)) end
          call('HSET', r[5], 'lvl', int_str(level), 'lvl_end', int_str(now + ban_ms))
        end
        -- Keep the violations for their window, and a ban's level while
        -- the next ban still escalates.
        -- (Printed whole: a fractional ban factor makes ban_ms fractional.)
        call('PEXPIRE', r[5],
          int_str(max(c.w + c.s, max(r.lvl_end, now + ban_ms) + c.decay - now) + 1000))
      end
    elseif not over then
      local fr = S_fr[i]
      if c.kind == 'r' then
        -- A lease: B at once while B fit (remaining counts the one unit
        -- this request takes already).
        local k = 1
        if c.lease > 1 and S_remaining[i] >= c.lease - 1 then
          k, status = c.lease, 'lease'
          S_remaining[i] = S_remaining[i] - (c.lease - 1)
        end
        hc_set(fr.kcur, r[3], bump(S_vcur[i], fr.off, k), fr.exp - now)
      elseif c.kind == 'd' then
        -- This epoch's members, with this one (again) at `now`.
        local v = S_vcur[i]
        if v then
          if string.find(v, r[4], 1, true) then v = string.gsub(v, r[4] .. '@%d+,?', '') end
          if #v > 0 and sub(v, -1) ~= ',' then v = v .. ',' end
        else
          v = ''
        end
        hc_set(fr.kcur, r[3], v .. r[4] .. '@' .. istr(now), fr.exp - now)
      end
    end
    -- Numbers go back as text ('%d', small ones printed once a call):
    -- claim.lua joins a claim's answer into one string.
    local reset = S_reset[i]
    if joined and not over and ban_ms == 0 then
      out[k + 1] = passed_text(c, status, S_remaining[i], reset)
      k = k + 1
    else
      out[k + 1] = status
      out[k + 2] = istr(floor(S_remaining[i]))
      out[k + 3] = reset > 0 and istr(floor(reset)) or '0'
      out[k + 4] = ban_ms > 0 and istr(floor(ban_ms)) or '0'
      out[k + 5] = level > 0 and istr(level) or '0'
      k = k + 5
    end
  end
  return out, refused
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
