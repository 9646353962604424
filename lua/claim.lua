--[[ claim.lua: issue one coupon, or refuse and charge nothing.

KEYS (all under the campaign's hash tag, so this runs unchanged on Redis Cluster)
  1  meta        hash    campaign counters and rules (state stock issued starts_ms ...);
                         `issued` doubles as the serial counter: the n-th coupon has serial n
  2  q_phone     hash    pseudonym -> coupons claimed by that phone
  3  q_device    hash    pseudonym -> coupons claimed by that device
  4  q_ip        hash    pseudonym -> coupons claimed from that IP (/64 for IPv6)
  5  claims      hash    serial -> 'phone|device|ip|claimed_ms|expires_ms|channel'
  6  idem        string  idempotency record: fingerprint '|' the result's fields joined by '|'
  7  outbox      stream  webhook events (campaign.low_stock, campaign.sold_out), written
                         by the claim that crosses the threshold, once each
  8  stats       hash    'rej:<code>' -> refusals, 'm:<minute>' -> claims issued that minute
Records are '|'-joined because every field is a number, a hex pseudonym or a
fixed word (no field can contain '|'), and cjson.encode cost more than the
rest of the script's Lua.
ARGV
  1  now_ms            the service's injected clock
  2  phone pseudonym   3 device pseudonym   4 ip pseudonym
  5  fingerprint       hash of the request the idempotency key first came with
  6  idem_ttl_s        how long the idempotency record lives
  7  keep_rejections   '1': a rejection is recorded under the key too (client keys)
  8  rollout_bucket    0..99, a stable hash of the phone pseudonym (staged rollouts)
  9  channel           the claim's channel ('' for none; recorded with the claim)
RETURNS a flat array of strings; the last element is '1' for a replay, else '0'
  {'ok', serial, claimed_ms, expires_ms (0: never), replay}
  {'not_found', '0'}                          no such campaign (never recorded)
  {'not_active', state|'scheduled'|'ended', replay}
  {'not_eligible', 'rollout', replay}          outside the staged rollout's share of phones
  {'sold_out', replay}
  {'limit', 'per_phone'|'per_device'|'per_ip', replay}
  {'reused'}                                   same idempotency key, other request

ATOMICITY: Redis does not roll back a script that fails half-way, so every
read, type check and numeric check comes before the first write. KEYS 1, 2, 3,
4 and 6 are read (GET, HMGET, HGET) before any write, and a read of a
wrong-type key raises WRONGTYPE right there; KEYS[5], 7 and 8 are only
written, so their types are checked explicitly. The writes (HINCRBY, HSET,
SET, XADD) then touch only keys of the right type and counters whose values
were parsed, so none of them can fail. A refusal writes only its stats
counter (and the idempotency record): it charges nothing.
]]

local function check_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. t .. ', expected ' .. want)
  end
end

local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[6])
if not now or not ttl or ttl < 1 or #ARGV[5] == 0 or string.find(ARGV[1], '[^0-9]') then
  return redis.error_reply('ERR claim.lua: bad arguments')
end

local err = check_type(KEYS[5], 'hash') or check_type(KEYS[7], 'stream')
  or check_type(KEYS[8], 'hash')
if err then return err end
local bucket = tonumber(ARGV[8])
if not bucket then return redis.error_reply('ERR claim.lua: bad arguments') end

-- 1. Idempotency: the first answer for this key wins, for ever (within ttl).
local rec = redis.call('GET', KEYS[6])
if rec then
  local out = {}
  for part in string.gmatch(rec, '[^|]+') do out[#out + 1] = part end
  if out[1] ~= ARGV[5] then return {'reused'} end
  table.remove(out, 1)
  out[#out + 1] = '1'
  return out
end

local keep = ARGV[7] == '1'
local function reject(a, b)
  redis.call('HINCRBY', KEYS[8], 'rej:' .. ((a == 'limit' or a == 'not_eligible') and b or a), 1)
  local out = {a, b}
  if keep then
    redis.call('SET', KEYS[6], ARGV[5] .. '|' .. table.concat(out, '|'), 'EX', ttl)
  end
  out[#out + 1] = '0'
  return out
end

-- 2. The campaign and its rules.
local m = redis.call('HMGET', KEYS[1], 'state', 'stock', 'issued', 'starts_ms', 'ends_ms',
  'per_phone', 'per_device', 'per_ip', 'valid_ms', 'rollout', 'low_at', 'low_fired', 'webhook')
if not m[1] then return {'not_found', '0'} end
local stock, issued = tonumber(m[2]), tonumber(m[3])
local starts, ends = tonumber(m[4]), tonumber(m[5])
local lp, ld, li, valid_ms = tonumber(m[6]), tonumber(m[7]), tonumber(m[8]), tonumber(m[9])
if not (stock and issued and starts and ends and lp and ld and li and valid_ms) then
  return redis.error_reply('ERR claim.lua: campaign ' .. KEYS[1] .. ' has a corrupt counter')
end

local rollout, low_at = tonumber(m[10] or '100'), tonumber(m[11] or '-1')
if not (rollout and low_at) then
  return redis.error_reply('ERR claim.lua: campaign ' .. KEYS[1] .. ' has a corrupt rollout or alert')
end

if m[1] ~= 'active' then return reject('not_active', m[1]) end
if now < starts then return reject('not_active', 'scheduled') end
if ends > 0 and now >= ends then return reject('not_active', 'ended') end
if issued >= stock then return reject('sold_out') end
if bucket >= rollout then return reject('not_eligible', 'rollout') end

-- 3. Quotas: counted always (so a limit added later sees past claims),
--    enforced when set (> 0).
local up = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
local ud = tonumber(redis.call('HGET', KEYS[3], ARGV[3]) or '0')
local ui = tonumber(redis.call('HGET', KEYS[4], ARGV[4]) or '0')
if not (up and ud and ui) then
  return redis.error_reply('ERR claim.lua: corrupt quota counter')
end
if lp > 0 and up >= lp then return reject('limit', 'per_phone') end
if ld > 0 and ud >= ld then return reject('limit', 'per_device') end
if li > 0 and ui >= li then return reject('limit', 'per_ip') end

-- 4. Every check passed: charge.
local serial = redis.call('HINCRBY', KEYS[1], 'issued', 1)
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
local expires = 0
if valid_ms > 0 then expires = now + valid_ms end
local result = 'ok|' .. serial .. '|' .. ARGV[1] .. '|' .. string.format('%d', expires)
redis.call('HSET', KEYS[5], serial, ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4] .. '|' .. ARGV[1]
  .. '|' .. string.format('%d', expires) .. '|' .. ARGV[9])
redis.call('SET', KEYS[6], ARGV[5] .. '|' .. result, 'EX', ttl)
redis.call('HINCRBY', KEYS[8], 'm:' .. math.floor(now / 60000), 1)

-- 5. Alerts: the claim that crosses a threshold writes its event, once.
local remaining = stock - serial
if m[13] == '1' then
  local function event(name)
    redis.call('XADD', KEYS[7], 'MAXLEN', '~', 10000, '*', 'event', name,
      'stock', tostring(stock), 'remaining', tostring(remaining), 'at_ms', ARGV[1])
  end
  if low_at >= 0 and remaining <= low_at and m[12] ~= '1' then
    redis.call('HSET', KEYS[1], 'low_fired', '1')
    event('campaign.low_stock')
  end
  if remaining == 0 then event('campaign.sold_out') end
end
return {'ok', tostring(serial), ARGV[1], string.format('%d', expires), '0'}
