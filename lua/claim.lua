--[[ claim.lua: issue one coupon, or refuse and charge nothing.

KEYS (all under the campaign's hash tag, so this runs unchanged on Redis Cluster)
  1  meta        hash    campaign counters and rules (state stock issued starts_ms ...);
                         `issued` doubles as the serial counter: the n-th coupon has serial n
  2  q_phone     hash    short pseudonym -> coupons claimed by that phone (this phone's bucket)
  3  q_device    hash    the same for the device
  4  q_ip        hash    the same for the IP (/64 for IPv6)
  5  claims      prefix  the claim record of serial n goes to hash KEYS[5] .. ':' .. n // 64,
                         field n % 64: 'phone|claimed_ms|expires_ms|channel'. That key is built
                         here because the serial is handed out here; it carries KEYS[5]'s hash
                         tag, so it is in this call's slot (Redis Cluster runs it unchanged).
  6  idem        string  client key ('c'): fingerprint '|' the result's fields joined by '|'
                 hash    server id ('s'): request id -> the result's fields; the hash of the
                         second the call's deadline falls in, expiring 2 s after it
  7  outbox      stream  webhook events (campaign.low_stock, campaign.sold_out), written
                         by the claim that crosses the threshold, once each
  8  stats       hash    'rej:<code>' -> refusals, 'm:<minute>' -> claims issued that minute
Records are '|'-joined: every field is a number, a base64url pseudonym or a
fixed word (no field can contain '|'); cjson.encode cost more than the rest.
ARGV
  1  now_ms            the service's injected clock (windows, records)
  2  phone             3 device     4 ip          (short pseudonyms)
  5  fingerprint       hash of the request the idempotency key first came with
  6  idem_ttl_s        how long a client record lives
  7  idem_mode         'c' client Idempotency-Key (rejections recorded too) | 's' server id
  8  rollout_bucket    0..99, a stable hash of the phone pseudonym (staged rollouts)
  9  channel           the claim's channel ('' for none; recorded with the claim)
  10 deadline_ms       wall-clock ms (Redis TIME) after which nothing may be charged:
                       the service has answered 503 by then (0: none)
  11 request_id        the server request id (field of KEYS[6] in mode 's')
  12 rid_expire_s      unix second at which KEYS[6] expires in mode 's'
RETURNS a flat array of strings; the last element is '1' for a replay, else '0'
  {'ok', serial, claimed_ms, expires_ms (0: never), replay}
  {'late'}                                     past the deadline: nothing read, nothing written
  {'not_found', '0'}                           no such campaign (never recorded)
  {'not_active', state|'ended', replay}
  {'not_active', 'scheduled', starts_ms, replay}  before the start (service clock)
  {'not_eligible', 'rollout', replay}          outside the staged rollout's share of phones
  {'sold_out', replay}
  {'limit', 'per_phone'|'per_device'|'per_ip', replay}
  {'reused'}                                   same idempotency key, other request

ATOMICITY: Redis does not roll back a script that fails half-way, so every
read and check comes before the first write. KEYS 1-4 and 6 are read first (a
wrong-type key raises WRONGTYPE on the read), and every number the writes
add to is checked to be a plain integer. The first write is the claim record
(HSET): a wrong-type bucket fails there, before anything changed. The outbox
is type-checked before any write, and only when this claim will write to it.
The counters after it (HINCRBY on checked integers of hashes already read)
cannot fail; the per-minute statistic is best effort (pcall). A refusal
writes only its stats counter (and a client key's record): it charges nothing.
]]

local function int(v)
  if v == nil or v == false then return 0 end
  if string.find(v, '^%-?%d+$') then return tonumber(v) end
  return nil
end

local now, ttl, bucket, deadline = int(ARGV[1]), int(ARGV[6]), int(ARGV[8]), int(ARGV[10])
if not (now and ttl and bucket and deadline) or ttl < 1 or #ARGV[5] == 0 then
  return redis.error_reply('ERR claim.lua: bad arguments')
end
if deadline > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > deadline then
    return {'late'}
  end
end
local client = ARGV[7] == 'c'

-- 1. Idempotency: the first answer for this key (or request id) wins.
local rec
if client then rec = redis.call('GET', KEYS[6]) else rec = redis.call('HGET', KEYS[6], ARGV[11]) end
if rec then
  local out = {}
  for part in string.gmatch(rec, '[^|]+') do out[#out + 1] = part end
  if client then
    if out[1] ~= ARGV[5] then return {'reused'} end
    table.remove(out, 1)
  end
  out[#out + 1] = '1'
  return out
end

local function reject(a, b, c)
  redis.call('HINCRBY', KEYS[8], 'rej:' .. ((a == 'limit' or a == 'not_eligible') and b or a), 1)
  local out = {a}
  if b then out[2] = b end
  if c then out[3] = c end
  if client then
    redis.call('SET', KEYS[6], ARGV[5] .. '|' .. table.concat(out, '|'), 'EX', ttl)
  end
  out[#out + 1] = '0'
  return out
end

-- 2. The campaign and its rules.
local m = redis.call('HMGET', KEYS[1], 'state', 'stock', 'issued', 'starts_ms', 'ends_ms',
  'per_phone', 'per_device', 'per_ip', 'valid_ms', 'rollout', 'low_at', 'low_fired', 'webhook',
  'void')
if not m[1] then return {'not_found', '0'} end
-- `issued` counts serials handed out; `void` those taken back (void_claim.lua).
local stock, issued, void = int(m[2]), int(m[3]), int(m[14])
local starts, ends = int(m[4]), int(m[5])
local lp, ld, li, valid_ms = int(m[6]), int(m[7]), int(m[8]), int(m[9])
local rollout, low_at = tonumber(m[10] or '100'), tonumber(m[11] or '-1')
if not (stock and issued and void and starts and ends and lp and ld and li and valid_ms and rollout
        and low_at) then
  return redis.error_reply('ERR claim.lua: campaign ' .. KEYS[1] .. ' has a corrupt counter')
end

if m[1] ~= 'active' then return reject('not_active', m[1]) end
if now < starts then return reject('not_active', 'scheduled', tostring(starts)) end
if ends > 0 and now >= ends then return reject('not_active', 'ended') end
if issued - void >= stock then return reject('sold_out') end
if bucket >= rollout then return reject('not_eligible', 'rollout') end

-- 3. Quotas: counted always (so a limit added later sees past claims),
--    enforced when set (> 0).
local up = int(redis.call('HGET', KEYS[2], ARGV[2]))
local ud = int(redis.call('HGET', KEYS[3], ARGV[3]))
local ui = int(redis.call('HGET', KEYS[4], ARGV[4]))
if not (up and ud and ui) then
  return redis.error_reply('ERR claim.lua: corrupt quota counter')
end
if lp > 0 and up >= lp then return reject('limit', 'per_phone') end
if ld > 0 and ud >= ld then return reject('limit', 'per_device') end
if li > 0 and ui >= li then return reject('limit', 'per_ip') end

-- 4. Every check passed: charge. The events this claim fires are known now.
local serial = issued + 1
local remaining = stock - (issued - void) - 1
local events = {}
if m[13] == '1' then
  if low_at >= 0 and remaining <= low_at and m[12] ~= '1' then events[#events + 1] = 'campaign.low_stock' end
  if remaining == 0 then events[#events + 1] = 'campaign.sold_out' end
  if #events > 0 then
    local t = redis.call('TYPE', KEYS[7])['ok']
    if t ~= 'none' and t ~= 'stream' then
      return redis.error_reply('WRONGTYPE ' .. KEYS[7] .. ' holds a ' .. t .. ', expected stream')
    end
  end
end
local expires = 0
if valid_ms > 0 then expires = now + valid_ms end
local exp_s = string.format('%d', expires)
redis.call('HSET', KEYS[5] .. ':' .. math.floor(serial / 64), serial % 64,
  ARGV[2] .. '|' .. ARGV[1] .. '|' .. exp_s .. '|' .. ARGV[9])
redis.call('HINCRBY', KEYS[1], 'issued', 1)
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
local result = 'ok|' .. serial .. '|' .. ARGV[1] .. '|' .. exp_s
if client then
  redis.call('SET', KEYS[6], ARGV[5] .. '|' .. result, 'EX', ttl)
else
  redis.call('HSET', KEYS[6], ARGV[11], result)
  redis.call('EXPIREAT', KEYS[6], ARGV[12], 'NX')
end
redis.pcall('HINCRBY', KEYS[8], 'm:' .. math.floor(now / 60000), 1)

-- 5. Alerts: the claim that crosses a threshold writes its event, once.
for _, name in ipairs(events) do
  if name == 'campaign.low_stock' then redis.call('HSET', KEYS[1], 'low_fired', '1') end
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', 10000, '*', 'event', name,
    'stock', tostring(stock), 'remaining', tostring(remaining), 'at_ms', ARGV[1])
end
return {'ok', tostring(serial), ARGV[1], exp_s, '0'}
