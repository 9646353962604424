--[[ claim.lua: issue one coupon, or refuse and charge nothing.

KEYS (all under the campaign's hash tag, so this runs unchanged on Redis Cluster)
  1  meta        hash    campaign counters and rules (state stock issued serial starts_ms ...)
  2  q_phone     hash    pseudonym -> coupons claimed by that phone
  3  q_device    hash    pseudonym -> coupons claimed by that device
  4  q_ip        hash    pseudonym -> coupons claimed from that IP (/64 for IPv6)
  5  claims      hash    serial -> cjson {p, d, i, at, exp}
  6  idem        string  idempotency record: fingerprint .. '|' .. cjson(result)
ARGV
  1  now_ms            the service's injected clock
  2  phone pseudonym   3 device pseudonym   4 ip pseudonym
  5  fingerprint       hash of the request the idempotency key first came with
  6  idem_ttl_s        how long the idempotency record lives
  7  keep_rejections   '1': a rejection is recorded under the key too (client keys)
RETURNS a flat array of strings; the last element is '1' for a replay, else '0'
  {'ok', serial, claimed_ms, expires_ms (0: never), replay}
  {'not_found', replay}                       no such campaign
  {'not_active', state|'scheduled'|'ended', replay}
  {'sold_out', replay}
  {'limit', 'per_phone'|'per_device'|'per_ip', replay}
  {'reused'}                                   same idempotency key, other request

ATOMICITY: Redis does not roll back a script that fails half-way, so every
read, type check and numeric check comes before the first write. KEYS 1, 2, 3,
4 and 6 are read (GET, HMGET, HGET) before any write, and a read of a
wrong-type key raises WRONGTYPE right there; KEYS[5] is only written, so its
type is checked explicitly. The writes (HINCRBY x5, HSET, SET) then touch only
keys of the right type and counters whose values were parsed, so none of them
can fail.
]]

local function check_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. t .. ', expected ' .. want)
  end
end

local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[6])
if not now or not ttl or ttl < 1 or #ARGV[5] == 0 then
  return redis.error_reply('ERR claim.lua: bad arguments')
end

local err = check_type(KEYS[5], 'hash')
if err then return err end

-- 1. Idempotency: the first answer for this key wins, for ever (within ttl).
local rec = redis.call('GET', KEYS[6])
if rec then
  local sep = string.find(rec, '|', 1, true)
  if not sep or string.sub(rec, 1, sep - 1) ~= ARGV[5] then return {'reused'} end
  local out = cjson.decode(string.sub(rec, sep + 1))
  out[#out + 1] = '1'
  return out
end

local function answer(out, record)
  if record then
    redis.call('SET', KEYS[6], ARGV[5] .. '|' .. cjson.encode(out), 'EX', ttl)
  end
  out[#out + 1] = '0'
  return out
end
local keep = ARGV[7] == '1'

-- 2. The campaign and its rules.
local m = redis.call('HMGET', KEYS[1], 'state', 'stock', 'issued', 'serial', 'starts_ms',
  'ends_ms', 'per_phone', 'per_device', 'per_ip', 'valid_ms')
if not m[1] then return answer({'not_found'}, false) end
local stock, issued, serial = tonumber(m[2]), tonumber(m[3]), tonumber(m[4])
local starts, ends = tonumber(m[5]), tonumber(m[6])
local lim = {tonumber(m[7]), tonumber(m[8]), tonumber(m[9])}
local valid_ms = tonumber(m[10])
if not (stock and issued and serial and starts and ends and lim[1] and lim[2] and lim[3] and valid_ms) then
  return redis.error_reply('ERR claim.lua: campaign ' .. KEYS[1] .. ' has a corrupt counter')
end

if m[1] ~= 'active' then return answer({'not_active', m[1]}, keep) end
if now < starts then return answer({'not_active', 'scheduled'}, keep) end
if ends > 0 and now >= ends then return answer({'not_active', 'ended'}, keep) end
if issued >= stock then return answer({'sold_out'}, keep) end

-- 3. Quotas: counted always (so a limit added later sees past claims),
--    enforced when set (> 0).
local names = {'per_phone', 'per_device', 'per_ip'}
for i = 1, 3 do
  local used = redis.call('HGET', KEYS[i + 1], ARGV[i + 1])
  local n = tonumber(used or '0')
  if not n then
    return redis.error_reply('ERR claim.lua: corrupt quota counter in ' .. KEYS[i + 1])
  end
  if lim[i] > 0 and n >= lim[i] then return answer({'limit', names[i]}, keep) end
end

-- 4. Every check passed: charge.
local s = redis.call('HINCRBY', KEYS[1], 'serial', 1)
redis.call('HINCRBY', KEYS[1], 'issued', 1)
for i = 1, 3 do redis.call('HINCRBY', KEYS[i + 1], ARGV[i + 1], 1) end
local expires = 0
if valid_ms > 0 then expires = now + valid_ms end
local at, exp = string.format('%d', now), string.format('%d', expires)
redis.call('HSET', KEYS[5], s, cjson.encode({p = ARGV[2], d = ARGV[3], i = ARGV[4], at = at, exp = exp}))
return answer({'ok', string.format('%d', s), at, exp}, true)
