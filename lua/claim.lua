--[[ claim.lua: issue coupons to a batch of claims on one campaign, each
checked and charged atomically, or refused with no stock and no quota
charged (rate rules count requests: see ATOMICITY).

The service coalesces the claims that arrive while the campaign's calls
are in flight into one call (store::batch): the script runs the claims
one after another, so each sees every charge of the claims before it, and
answers each on its own. A batch of one is the plain single claim.

KEYS (all under the campaign's hash tag, so this runs unchanged on Redis Cluster)
  1  meta        hash    campaign counters and rules (state stock issued starts_ms ...);
                         `issued` doubles as the serial counter: the n-th coupon has serial n
  2  claims      prefix  the claim record of serial n goes to hash KEYS[2] .. ':' .. n // 64,
                         field n % 64: 'phone|claimed_ms|expires_ms|channel'. That key is built
                         here because the serial is handed out here; it carries KEYS[2]'s hash
                         tag, so it is in this call's slot (Redis Cluster runs it unchanged).
  3  outbox      stream  webhook events (campaign.low_stock, campaign.sold_out), written
                         by the claim that crosses the threshold, once each
  4  stats       hash    'rej:<code>' -> refusals, 'm:<minute>' -> claims issued that minute
  5 .. 4+R       prefix  the call's rule table (ARGV[2] = R): rule j's epoch hashes are
                         KEYS[4+j] followed by the epoch (rules.lua); a rule key's ban
                         state is that prefix with 'e:' replaced by 'b:<field>' (built
                         here, same hash tag). A single node checks a claim's rules in
                         its claim's call; on Redis Cluster R is 0 (the rules live in
                         their own slots and go through rules.lua)
  then 4 per claim, one claim after another:
  +1 q_phone     hash    short pseudonym -> coupons claimed by that phone (this phone's bucket)
  +2 q_device    hash    the same for the device
  +3 q_ip        hash    the same for the IP (/64 for IPv6)
  +4 idem        string  client key ('c'): fingerprint '|' the result's fields joined by '|'
                 hash    server id ('s'): request id -> the result's fields; the hash of the
                         second the call's deadline falls in, expiring 2 s after it
Records are '|'-joined: every field is a number, a base64url pseudonym or a
fixed word (no field can contain '|'); cjson.encode cost more than the rest.
ARGV
  1  n                 claims in this call (1..)
  2  R                 rules in the call's rule table (0..)
  then 1 a rule of the table: its constants joined by '|', kind|limit|window_ms|
                       enforce|ban_after|ban_ms|ban_factor|ban_max_ms|decay_ms (rules.lua's
                       header has them): what every claim of the call sends the same is
                       sent once, as one argument (read once per rules file: rule_cfg_at)
  then a claim's 10 (mode 's') or 11 (modes 'c', 'k') + 2 or 3 a rule, one claim
  after another (an argument costs Redis ~1,000 instructions to read, so what a
  mode does not use is not sent):
  +1  now_ms           the service's injected clock (windows, records)
  +2  phone            +3 device     +4 ip          (short pseudonyms)
  +5  idem_mode        'c' client Idempotency-Key (rejections recorded too) | 's' server id
                       | 'k' client key on a stock shard: as 'c', but a `sold_out` is
                       not recorded (the service refills the shard and tries again;
                       it records `sold_out` itself once the whole campaign is dry)
  +6  rollout_bucket   0..99, a stable hash of the phone pseudonym (staged rollouts)
  +7  channel          the claim's channel ('' for none; recorded with the claim)
  +8  deadline_ms      wall-clock ms (Redis TIME) after which nothing may be charged:
                       the service has answered 503 by then (0: none)
  +9  r                the claim's rate rules (0: none)
  mode 's':
  +10 request_id       the server request id (its field in the idem hash, which
                       expires at the unix second floor(deadline_ms / 1000) + 2; with
                       no deadline, 62 s after Redis's clock)
  modes 'c' and 'k':
  +10 fingerprint      hash of the request the idempotency key first came with
  +11 idem_ttl_s       how long a client record lives
  then ..             a rule: its place j in the rule table, the rule key's digest
                       (its field), and for a distinct rule only, the distinct member
                       (the others send none: an argument costs Redis ~1,000
                       instructions to read)
RETURNS one answer per claim, in order: the strings below joined by '|'
into one string (no field holds a '|'), except an 'error' answer, which
stays an array {'error', message} (a message is free text). A claim with rules
(r > 0) starts with its rules' answers, 5 a rule as rules.lua's 'check'
returns them, and then {'refused'} when an enforced rule refused it (the
claim was not tried: nothing of it was charged, nor were its rules), else
the claim's answer below. Then (without a rules prefix for 'late' and
'error') the last element is '1' for a replay, else '0':
  {'ok', serial, claimed_ms, expires_ms (0: never), replay}
  {'late'}                                     past the deadline: nothing of it read or written
                                               (its rules' fields were read with the batch's)
  {'not_found', '0'}                           no such campaign (never recorded)
  {'not_active', state|'ended', replay}
  {'not_active', 'scheduled', starts_ms, replay}  before the start (service clock)
  {'not_eligible', 'rollout', replay}          outside the staged rollout's share of phones
  {'sold_out', replay}
  {'limit', 'per_phone'|'per_device'|'per_ip', replay}
  {'reused'}                                   same idempotency key, other request
  {'error', message}                           this claim's keys failed (wrong type,
                                               corrupt counter): it charged no stock and no
                                               quota (its rules, when they passed, count it)
A bad argument or a corrupt campaign record fails the whole call (an error
reply) before anything is written.

ATOMICITY: Redis does not roll back a script that fails half-way, so within
each claim every read and check comes before that claim's first write (the
two quota counts below, which take themselves back), and each claim runs
under pcall: a claim whose key raises (WRONGTYPE on a read) has written
nothing of the claim proper, is answered {'error', ...} and the next claim
runs. A claim's rules are checked first (rules_core.lua: all
reads before its writes); a refusal there ends the claim. Rules count
requests: a claim they passed stays counted whatever the claim proper
answers. The idempotency key is read next; then the outbox's type (only
when this claim will write to it), the claim record's bucket's type
(hc_hash) and the IP's quota count (through hcache.lua). Then the phone's
and the device's quota counts are added in place (HINCRBY, the claim's
first writes): one that fails (a wrong type, a count HINCRBY cannot read)
or refuses the claim takes back what was added before it (`uncount`, which
cannot fail), so a refused or failing claim leaves no count behind. The
record and the IP's count are then written into the cache, and once for
the whole batch at its end (hc_flush: keys read or type-checked, so it
cannot fail); the IP's count as a value (the count read plus one), so no
stored spelling of a number can make it fail. The server request ids of the batch are read at once (one HMGET
per hash, before any claim runs) and written at once at the end, with
`issued` (HSET: only this script writes it, and it was read at the start);
neither write can fail, and a script's effects reach the AOF and replicas
as one MULTI/EXEC, so no crash can keep the claims and lose those. The
statistics (refusals, claims per minute) are summed over the batch and
written last, best effort (pcall). A refusal writes only a client key's
record: it charges no stock and no quota.
]]

local tonumber, tostring, floor = tonumber, tostring, math.floor

local n, R = int(ARGV[1]), int(ARGV[2])
if not n or n < 1 or not R or R < 0 then
  return redis.error_reply('ERR claim.lua: bad arguments')
end
-- The rule table, by the text of the place a claim names (its prefix with
-- it): each rule's constants parsed once (rule_cfg_at, rules_core.lua;
-- kept across the calls of a function library).
local cfgs, prefixes = {}, {}
for j = 1, R do
  local text, pre = ARGV[2 + j], KEYS[4 + j]
  local cfg = pre and text and rule_cfg_at(text, pre)
  if not cfg then return redis.error_reply('ERR claim.lua: bad rule ' .. j) end
  local place = place_text(j)
  cfgs[place], prefixes[place] = cfg, pre
end
-- Each claim's first key and argument (they differ in length by their
-- rules), its clock (nil when it does not parse) and its rules (rule_spec,
-- rules_core.lua).
local ks, as, nows, specs = {}, {}, {}, {}
do
  local k, a = 4 + R, 2 + R
  for i = 1, n do
    local r = int(ARGV[a + 9])
    local b = a + (ARGV[a + 5] == 's' and 10 or 11)
    if not r or r < 0 or #ARGV < b + 2 * r then
      return redis.error_reply('ERR claim.lua: bad arguments')
    end
    -- (Made at the size of four rules: grown one by one, it was
    -- reallocated three times for three.)
    local list = {nil, nil, nil, nil}
    for t = 1, r do
      local j, field = ARGV[b + 1], ARGV[b + 2]
      local cfg = cfgs[j]
      local member = ''
      if cfg and cfg.kind == 'd' then
        member = ARGV[b + 3]
        b = b + 3
      else
        b = b + 2
      end
      if not (cfg and field and member) or #field == 0 then
        return redis.error_reply('ERR claim.lua: bad arguments')
      end
      -- (rule_spec's list, rules_core.lua, made here: the call cost 0.8 %.)
      list[t] = {cfg, prefixes[j], field, member, false, false}
    end
    ks[i], as[i], nows[i], specs[i] = k + 1, a + 1, int(ARGV[a + 1]), list
    k, a = k + 4, b
  end
  if #KEYS ~= k or #ARGV ~= a then
    return redis.error_reply('ERR claim.lua: bad arguments')
  end
end

-- The campaign and its rules, read once: within the call only `issued`,
-- `low_fired` and `sold_fired` change, and this script is what changes them.
local m = redis.call('HMGET', KEYS[1], 'state', 'stock', 'issued', 'starts_ms', 'ends_ms',
  'per_phone', 'per_device', 'per_ip', 'valid_ms', 'rollout', 'low_at', 'low_fired', 'webhook',
  'void', 'max_serial', 'sold_fired')
-- `issued` counts serials handed out; `void` those taken back (void_claim.lua).
local stock, issued, void = int(m[2]), int(m[3]), int(m[14])
local starts, ends = int(m[4]), int(m[5])
local lp, ld, li, valid_ms = int(m[6]), int(m[7]), int(m[8]), int(m[9])
local rollout, low_at = tonumber(m[10] or '100'), tonumber(m[11] or '-1')
if m[1] and not (stock and issued and void and starts and ends and lp and ld and li and valid_ms
                 and rollout and low_at) then
  return redis.error_reply('ERR claim.lua: campaign ' .. KEYS[1] .. ' has a corrupt counter')
end
-- The last serial a code can carry (a stock shard's is smaller: its codes
-- carry `local × N + i`). Taken-back claims use serials too, so the serials
-- can run out before the stock does: then the campaign (or shard) is sold out.
local max_serial = tonumber(m[15] or '4294967295') or 4294967295
local issued_at_start = issued
local record_prefix = KEYS[2] .. ':'
local low_fired = m[12] == '1'
-- `campaign.sold_out` fires once a sell-out: a claim taken back
-- (void_claim.lua) frees a unit without re-arming it; a stock raise does
-- (patch_campaign.lua clears `sold_fired`).
local sold_fired = m[16] == '1'

-- The batch's rule fields, read at once (hcache.lua, rules_core.lua).
if R > 0 then rules_prefetch(nows, specs, n) end

local t = redis.call('TIME')
local time_ms = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
local rejected, per_minute = {}, {}

-- Server request ids, read for the whole batch at once (one HMGET per
-- hash: the claims of a batch share the second their deadlines fall in),
-- and written at once at the end. `rids[key][id]` is the stored answer,
-- false when there is none; a failing read marks the hash unreadable.
local rids, rid_order, rid_bad, rid_new = {}, {}, {}, {}
for i = 1, n do
  local K, A = ks[i], as[i]
  if ARGV[A + 4] == 's' then
    local key = KEYS[K + 3]
    local fields = rids[key]
    if not fields then
      fields = {}
      rids[key] = fields
      rid_order[#rid_order + 1] = key
    end
    fields[ARGV[A + 9]] = false
  end
end
for _, key in ipairs(rid_order) do
  local ids = {}
  for id in pairs(rids[key]) do ids[#ids + 1] = id end
  local got = redis.pcall('HMGET', key, unpack(ids))
  if got.err then
    rid_bad[key] = got.err
  else
    local fields = rids[key]
    for j = 1, #ids do fields[ids[j]] = got[j] or false end
  end
  rid_new[key] = {}
end

-- Takes back the quota count a claim just added to `field` of `key` (`n`
-- the count after it). Cannot fail: the field holds an integer now. A
-- count that was the first goes whole, so a refused claim leaves no field.
local function uncount(key, field, n)
  if n == 1 then
    redis.call('HDEL', key, field)
  else
    redis.call('HINCRBY', key, field, '-1')
  end
end

-- The refusal {a, b, c} of the claim whose first key is K and first
-- argument A (claim() has checked them; `client` is its client key's mode,
-- or false): counted in the statistics, recorded under a client key,
-- appended to the claim's rules' answers. (Not a closure in claim():
-- making one there cost every claim, refused or not.)
local function refuse(K, A, client, rule_out, a, b, c)
  local field = 'rej:' .. ((a == 'limit' or a == 'not_eligible') and b or a)
  rejected[field] = (rejected[field] or 0) + 1
  local out = {a}
  if b then out[2] = b end
  if c then out[3] = c end
  if client and not (client == 'k' and a == 'sold_out') then
    redis.call('SET', KEYS[K + 3], ARGV[A + 9] .. '|' .. table.concat(out, '|'), 'EX',
      int_str(int(ARGV[A + 10])))
  end
  out[#out + 1] = '0'
  if #rule_out == 0 then return out end
  for j = 1, #out do rule_out[#rule_out + 1] = out[j] end
  return rule_out
end

-- One claim: K is the index of its first key, A of its first argument.
local function claim(K, A, now, rule_out)
  local mode, bucket = ARGV[A + 4], int(ARGV[A + 5])
  local client = (mode == 'c' or mode == 'k') and mode
  local idem, fp, ttl = KEYS[K + 3], false, false
  if client then
    fp, ttl = ARGV[A + 9], int(ARGV[A + 10])
    if not (fp and ttl) or ttl < 1 or #fp == 0 then return {'error', 'claim.lua: bad arguments'} end
  elseif mode ~= 's' then
    return {'error', 'claim.lua: bad arguments'}
  end
  if not (now and bucket) then return {'error', 'claim.lua: bad arguments'} end
  local phone, device, ip = ARGV[A + 1], ARGV[A + 2], ARGV[A + 3]

  -- 1. Idempotency: the first answer for this key (or request id) wins.
  local rec
  if client then
    rec = redis.call('GET', idem)
  else
    if rid_bad[idem] then return {'error', rid_bad[idem]} end
    rec = rid_new[idem][ARGV[A + 9]] or rids[idem][ARGV[A + 9]]
  end
  if rec then
    local out = rule_out
    local first = #out
    for part in string.gmatch(rec, '[^|]+') do out[#out + 1] = part end
    if client then
      if out[first + 1] ~= fp then
        for j = #out, first + 1, -1 do out[j] = nil end
        out[#out + 1] = 'reused'
        return out
      end
      table.remove(out, first + 1)
    end
    out[#out + 1] = '1'
    return out
  end

  -- 2. The campaign's state, window, stock and rollout.
  if not m[1] then rule_out[#rule_out + 1] = 'not_found'; rule_out[#rule_out + 1] = '0'; return rule_out end
  if m[1] ~= 'active' then return refuse(K, A, client, rule_out, 'not_active', m[1]) end
  if now < starts then return refuse(K, A, client, rule_out, 'not_active', 'scheduled', tostring(starts)) end
  if ends > 0 and now >= ends then return refuse(K, A, client, rule_out, 'not_active', 'ended') end
  if issued - void >= stock or issued >= max_serial then return refuse(K, A, client, rule_out, 'sold_out') end
  if bucket >= rollout then return refuse(K, A, client, rule_out, 'not_eligible', 'rollout') end

  -- 3. What the claim's writes need is checked first: the events it fires
  --    (known now) and the outbox's type, the record bucket's type, the
  --    IP's count.
  local serial = issued + 1
  local remaining = stock - (issued - void) - 1
  local events
  if m[13] == '1' then
    if low_at >= 0 and remaining <= low_at and not low_fired then events = {'campaign.low_stock'} end
    if remaining == 0 and not sold_fired then
      events = events or {}
      events[#events + 1] = 'campaign.sold_out'
    end
    if events then
      local ty = redis.call('TYPE', KEYS[3])['ok']
      if ty ~= 'none' and ty ~= 'stream' then
        return {'error', 'WRONGTYPE ' .. KEYS[3] .. ' holds a ' .. ty .. ', expected stream'}
      end
    end
  end
  local record = ekey(record_prefix, floor(serial / 64))
  hc_hash(record)
  local ui = int(hc_get(KEYS[K + 2], ip))
  if not ui then return {'error', 'claim.lua: corrupt quota counter'} end

  -- 4. Quotas: counted always (so a limit added later sees past claims),
  --    enforced when set (> 0). The phone's and the device's are counted
  --    in place, one HINCRBY each (their buckets are seldom shared by two
  --    claims of a batch, so a read and a cached write cost two calls and
  --    two tables for nothing), and taken back when the claim goes no
  --    further: a refused or failing claim leaves no count behind.
  -- (The increments go as text: Redis prints a Lua number with '%.17g'.)
  local np = redis.pcall('HINCRBY', KEYS[K], phone, '1')
  if type(np) == 'table' then return {'error', np.err} end
  if lp > 0 and np > lp then
    uncount(KEYS[K], phone, np)
    return refuse(K, A, client, rule_out, 'limit', 'per_phone')
  end
  local nd = redis.pcall('HINCRBY', KEYS[K + 1], device, '1')
  if type(nd) == 'table' then
    uncount(KEYS[K], phone, np)
    return {'error', nd.err}
  end
  local over = (ld > 0 and nd > ld and 'per_device') or (li > 0 and ui >= li and 'per_ip')
  if over then
    uncount(KEYS[K], phone, np)
    uncount(KEYS[K + 1], device, nd)
    return refuse(K, A, client, rule_out, 'limit', over)
  end

  -- 5. Every check passed: charge. Nothing below can fail: the writes go
  --    to the cache (hcache.lua), to a key that takes any type (SET) or to
  --    one whose type was checked.
  local exp_s = '0'
  if valid_ms > 0 then exp_s = int_str(now + valid_ms) end
  -- Numbers are printed once (printing one costs more than a redis.call's
  -- share here): the serial's text, and small ones through istr/ekey
  -- (rules_core.lua).
  local serial_s = int_str(serial)
  hc_set(record, istr(serial % 64), phone .. '|' .. ARGV[A] .. '|' .. exp_s .. '|' .. ARGV[A + 6])
  issued = serial
  hc_set(KEYS[K + 2], ip, istr(ui + 1))
  local result = 'ok|' .. serial_s .. '|' .. ARGV[A] .. '|' .. exp_s
  if client then
    redis.call('SET', idem, fp .. '|' .. result, 'EX', int_str(ttl))
  else
    local new = rid_new[idem]
    new[#new + 1] = ARGV[A + 9]
    new[#new + 1] = result
    new[ARGV[A + 9]] = result
    new.deadline = ARGV[A + 7]
  end
  local minute = floor(now / 60000)
  per_minute[minute] = (per_minute[minute] or 0) + 1

  -- 6. Alerts: the claim that crosses a threshold writes its event, once.
  if events then
    for _, name in ipairs(events) do
      if name == 'campaign.low_stock' then
        redis.call('HSET', KEYS[1], 'low_fired', '1')
        low_fired = true
      else
        redis.call('HSET', KEYS[1], 'sold_fired', '1')
        sold_fired = true
      end
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'event', name,
        'stock', tostring(stock), 'remaining', tostring(remaining), 'at_ms', ARGV[A])
    end
  end
  -- (The result's fields are joined already: 'ok|serial|ms|exp'.)
  local out, k = rule_out, #rule_out
  out[k + 1], out[k + 2] = result, '0'
  return out
end

-- One claim with its rules: past its deadline nothing is read or written;
-- then its rules (rules_core.lua, prepended by store::scripts); a refusal
-- there ends it.
local function checked(K, A, now, rules)
  local deadline = int(ARGV[A + 7])
  if not deadline then return {'error', 'claim.lua: bad arguments'} end
  if deadline > 0 and time_ms > deadline then return {'late'} end
  if #rules == 0 then return claim(K, A, now, {}) end
  if not now then return {'error', 'claim.lua: bad arguments'} end
  local rule_out, refused = rules_run('check', now, rules, true)
  if rule_out.err then return {'error', rule_out.err} end
  if refused then
    rule_out[#rule_out + 1] = 'refused'
    return rule_out
  end
  return claim(K, A, now, rule_out)
end

local out = {}
for i = 1, n do
  local ok, res = pcall(checked, ks[i], as[i], nows[i], specs[i])
  if not ok then
    local msg = res
    if type(res) == 'table' then msg = res.err or res.message or 'error' end
    res = {'error', tostring(msg)}
  end
  -- One string a claim (see RETURNS): one bulk reply is cheaper to send and
  -- to read than twenty.
  if res[1] ~= 'error' then res = table.concat(res, '|') end
  out[i] = res
end

-- What the batch wrote once for all its claims: cannot fail (see ATOMICITY).
hc_flush()
if issued ~= issued_at_start then
  redis.call('HSET', KEYS[1], 'issued', int_str(issued))
end
for _, key in ipairs(rid_order) do
  local new = rid_new[key]
  if #new > 0 then
    redis.call('HSET', key, unpack(new))
    -- (No deadline, 0: a minute after Redis's clock.)
    local deadline = int(new.deadline)
    if deadline <= 0 then deadline = time_ms + 60000 end
    redis.call('EXPIREAT', key, int_str(floor(deadline / 1000) + 2), 'NX')
  end
end

-- Statistics, summed over the batch: best effort.
for field, k in pairs(rejected) do redis.pcall('HINCRBY', KEYS[4], field, int_str(k)) end
for minute, k in pairs(per_minute) do
  redis.pcall('HINCRBY', KEYS[4], 'm:' .. int_str(minute), int_str(k))
end
return out
