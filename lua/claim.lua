--[[ claim.lua: issue coupons to a batch of claims on one campaign, each
checked and charged atomically, or refused with nothing charged.

The service coalesces the claims that arrive while the campaign's previous
call is in flight into one call (store::batch): the script runs the claims
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
  then 4 per claim, claim i at 4 + 4(i-1) + 1..4:
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
  then 12 per claim, claim i at 1 + 12(i-1) + 1..12:
  +1  now_ms           the service's injected clock (windows, records)
  +2  phone            +3 device     +4 ip          (short pseudonyms)
  +5  fingerprint      hash of the request the idempotency key first came with
  +6  idem_ttl_s       how long a client record lives
  +7  idem_mode        'c' client Idempotency-Key (rejections recorded too) | 's' server id
  +8  rollout_bucket   0..99, a stable hash of the phone pseudonym (staged rollouts)
  +9  channel          the claim's channel ('' for none; recorded with the claim)
  +10 deadline_ms      wall-clock ms (Redis TIME) after which nothing may be charged:
                       the service has answered 503 by then (0: none)
  +11 request_id       the server request id (field of the idem key in mode 's')
  +12 rid_expire_s     unix second at which the idem key expires in mode 's'
RETURNS one array per claim, in order, of strings; the last element is '1'
for a replay, else '0':
  {'ok', serial, claimed_ms, expires_ms (0: never), replay}
  {'late'}                                     past the deadline: nothing read, nothing written
  {'not_found', '0'}                           no such campaign (never recorded)
  {'not_active', state|'ended', replay}
  {'not_active', 'scheduled', starts_ms, replay}  before the start (service clock)
  {'not_eligible', 'rollout', replay}          outside the staged rollout's share of phones
  {'sold_out', replay}
  {'limit', 'per_phone'|'per_device'|'per_ip', replay}
  {'reused'}                                   same idempotency key, other request
  {'error', message}                           this claim's keys failed (wrong type,
                                               corrupt counter): it charged nothing
A bad argument or a corrupt campaign record fails the whole call (an error
reply) before anything is written.

ATOMICITY: Redis does not roll back a script that fails half-way, so within
each claim every read and check comes before that claim's first write, and
each claim runs under pcall: a claim whose key raises (WRONGTYPE on a read)
has written nothing, is answered {'error', ...} and the next claim runs. The
quota buckets and the idempotency key are read first; every number the
writes add to is checked to be a plain integer. The first write is the claim
record (HSET): a wrong-type bucket fails there, before anything changed. The
outbox is type-checked before any write, and only when this claim will
write to it. The counters after it (HINCRBY on checked integers of hashes
already read) cannot fail. The statistics (refusals, claims per minute) are
summed over the batch and written last, best effort (pcall). A refusal
writes only a client key's record: it charges nothing.
]]

local function int(v)
  if v == nil or v == false then return 0 end
  if string.find(v, '^%-?%d+$') then return tonumber(v) end
  return nil
end

local n = int(ARGV[1])
if not n or n < 1 or #KEYS ~= 4 + 4 * n or #ARGV ~= 1 + 12 * n then
  return redis.error_reply('ERR claim.lua: bad arguments')
end

-- The campaign and its rules, read once: within the call only `issued`
-- and `low_fired` change, and this script is what changes them.
local m = redis.call('HMGET', KEYS[1], 'state', 'stock', 'issued', 'starts_ms', 'ends_ms',
  'per_phone', 'per_device', 'per_ip', 'valid_ms', 'rollout', 'low_at', 'low_fired', 'webhook',
  'void')
-- `issued` counts serials handed out; `void` those taken back (void_claim.lua).
local stock, issued, void = int(m[2]), int(m[3]), int(m[14])
local starts, ends = int(m[4]), int(m[5])
local lp, ld, li, valid_ms = int(m[6]), int(m[7]), int(m[8]), int(m[9])
local rollout, low_at = tonumber(m[10] or '100'), tonumber(m[11] or '-1')
if m[1] and not (stock and issued and void and starts and ends and lp and ld and li and valid_ms
                 and rollout and low_at) then
  return redis.error_reply('ERR claim.lua: campaign ' .. KEYS[1] .. ' has a corrupt counter')
end
local low_fired = m[12] == '1'

local t = redis.call('TIME')
local time_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rejected, per_minute, expiring = {}, {}, {}

-- One claim: K is the index of its first key, A of its first argument.
local function claim(K, A)
  local now, ttl, bucket, deadline = int(ARGV[A]), int(ARGV[A + 5]), int(ARGV[A + 7]), int(ARGV[A + 9])
  if not (now and ttl and bucket and deadline) or ttl < 1 or #ARGV[A + 4] == 0 then
    return {'error', 'claim.lua: bad arguments'}
  end
  if deadline > 0 and time_ms > deadline then return {'late'} end
  local client = ARGV[A + 6] == 'c'
  local phone, device, ip = ARGV[A + 1], ARGV[A + 2], ARGV[A + 3]
  local idem = KEYS[K + 3]

  -- 1. Idempotency: the first answer for this key (or request id) wins.
  local rec
  if client then rec = redis.call('GET', idem) else rec = redis.call('HGET', idem, ARGV[A + 10]) end
  if rec then
    local out = {}
    for part in string.gmatch(rec, '[^|]+') do out[#out + 1] = part end
    if client then
      if out[1] ~= ARGV[A + 4] then return {'reused'} end
      table.remove(out, 1)
    end
    out[#out + 1] = '1'
    return out
  end

  local function reject(a, b, c)
    local field = 'rej:' .. ((a == 'limit' or a == 'not_eligible') and b or a)
    rejected[field] = (rejected[field] or 0) + 1
    local out = {a}
    if b then out[2] = b end
    if c then out[3] = c end
    if client then
      redis.call('SET', idem, ARGV[A + 4] .. '|' .. table.concat(out, '|'), 'EX', ttl)
    end
    out[#out + 1] = '0'
    return out
  end

  -- 2. The campaign's state, window, stock and rollout.
  if not m[1] then return {'not_found', '0'} end
  if m[1] ~= 'active' then return reject('not_active', m[1]) end
  if now < starts then return reject('not_active', 'scheduled', tostring(starts)) end
  if ends > 0 and now >= ends then return reject('not_active', 'ended') end
  if issued - void >= stock then return reject('sold_out') end
  if bucket >= rollout then return reject('not_eligible', 'rollout') end

  -- 3. Quotas: counted always (so a limit added later sees past claims),
  --    enforced when set (> 0).
  local up = int(redis.call('HGET', KEYS[K], phone))
  local ud = int(redis.call('HGET', KEYS[K + 1], device))
  local ui = int(redis.call('HGET', KEYS[K + 2], ip))
  if not (up and ud and ui) then return {'error', 'claim.lua: corrupt quota counter'} end
  if lp > 0 and up >= lp then return reject('limit', 'per_phone') end
  if ld > 0 and ud >= ld then return reject('limit', 'per_device') end
  if li > 0 and ui >= li then return reject('limit', 'per_ip') end

  -- 4. Every check passed: charge. The events this claim fires are known now.
  local serial = issued + 1
  local remaining = stock - (issued - void) - 1
  local events = {}
  if m[13] == '1' then
    if low_at >= 0 and remaining <= low_at and not low_fired then events[#events + 1] = 'campaign.low_stock' end
    if remaining == 0 then events[#events + 1] = 'campaign.sold_out' end
    if #events > 0 then
      local ty = redis.call('TYPE', KEYS[3])['ok']
      if ty ~= 'none' and ty ~= 'stream' then
        return {'error', 'WRONGTYPE ' .. KEYS[3] .. ' holds a ' .. ty .. ', expected stream'}
      end
    end
  end
  local expires = 0
  if valid_ms > 0 then expires = now + valid_ms end
  local exp_s = string.format('%d', expires)
  redis.call('HSET', KEYS[2] .. ':' .. math.floor(serial / 64), serial % 64,
    phone .. '|' .. ARGV[A] .. '|' .. exp_s .. '|' .. ARGV[A + 8])
  redis.call('HINCRBY', KEYS[1], 'issued', 1)
  issued = serial
  redis.call('HINCRBY', KEYS[K], phone, 1)
  redis.call('HINCRBY', KEYS[K + 1], device, 1)
  redis.call('HINCRBY', KEYS[K + 2], ip, 1)
  local result = 'ok|' .. serial .. '|' .. ARGV[A] .. '|' .. exp_s
  if client then
    redis.call('SET', idem, ARGV[A + 4] .. '|' .. result, 'EX', ttl)
  else
    redis.call('HSET', idem, ARGV[A + 10], result)
    if not expiring[idem] then
      expiring[idem] = true
      redis.call('EXPIREAT', idem, ARGV[A + 11], 'NX')
    end
  end
  local minute = 'm:' .. math.floor(now / 60000)
  per_minute[minute] = (per_minute[minute] or 0) + 1

  -- 5. Alerts: the claim that crosses a threshold writes its event, once.
  for _, name in ipairs(events) do
    if name == 'campaign.low_stock' then
      redis.call('HSET', KEYS[1], 'low_fired', '1')
      low_fired = true
    end
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'event', name,
      'stock', tostring(stock), 'remaining', tostring(remaining), 'at_ms', ARGV[A])
  end
  return {'ok', tostring(serial), ARGV[A], exp_s, '0'}
end

local out = {}
for i = 1, n do
  local ok, res = pcall(claim, 4 + 4 * (i - 1) + 1, 1 + 12 * (i - 1) + 1)
  if not ok then
    local msg = res
    if type(res) == 'table' then msg = res.err or res.message or 'error' end
    res = {'error', tostring(msg)}
  end
  out[i] = res
end

-- Statistics, summed over the batch: best effort.
for field, k in pairs(rejected) do redis.pcall('HINCRBY', KEYS[4], field, k) end
for field, k in pairs(per_minute) do redis.pcall('HINCRBY', KEYS[4], field, k) end
return out
