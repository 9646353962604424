--[[ reserve_codes.lua: reserve one range of serials for bulk codes, against
stock, or refuse and charge nothing; or mark a reservation's stream finished.

A reservation is one range [first, first + count - 1] of the serial counter
`issued`, so bulk codes never collide with claimed codes (serials only grow).
Its codes are bound to no one: redeem.lua and inspect_code.lua accept a serial
with no claim record when it lies in a reservation of KEYS[2].

KEYS (all under the campaign's hash tag, so this runs unchanged on Redis Cluster)
  1  meta     hash    state stock issued ends_ms valid_ms low_at low_fired sold_fired webhook
  2  batches  zset    first serial -> 'first|count|created_ms|expires_ms'
  3  idem     string  'fingerprint|pending|first|count|lease_until_ms' while the
                      codes are being streamed, then 'fingerprint|done|first|count|0'
  4  audit    stream  the campaign's audit trail (one entry per reservation)
  5  outbox   stream  webhook events (campaign.low_stock, campaign.sold_out), written
                      by the reservation that crosses the threshold, once each
ARGV
  1  mode         'reserve' or 'done'
  2  now_ms       the service's injected clock
  3  count        1..1000000
  4  fingerprint  hash of the request the idempotency key first came with
  5  idem_ttl_s   how long the idempotency record lives
  6  lease_ms     how long a 'pending' record keeps a duplicate out (409): a
                  stream that died is replayed by the first retry after it
  7  actor        API key name, for the audit entry
  8  own          '1' when the record is this request's alone (keyed by the server's
                  request id, no client key): a pending record of its fingerprint is
                  then this very call sent again (Redis Cluster's client re-sends a
                  call after a dropped connection), answered 'ok' with its range
RETURNS (mode 'reserve')
  {'ok', first, count, expires_ms (0: never)}   reserved now; the record is 'pending'
  {'replay', first, count, expires_ms}          the same request again, after its
                                                stream finished or its lease ran out:
                                                the same codes, nothing reserved
  {'in_progress'}                               the same request is streaming now
                                                (with own = '1': {'ok', ...} of its range)
  {'reused'}                                    same idempotency key, other request
  {'not_found'}
  {'not_active', state|'ended'}                 only 'active' and 'paused' campaigns
                                                whose window has not closed (codes may
                                                be printed before it opens)
  {'sold_out', remaining}                       fewer than count left
A refusal is not recorded under the key (it charged nothing; a retry checks again).
RETURNS (mode 'done')
  {'ok'}       the record now says 'done' (TTL kept)
  {'gone'}     no pending record of this request (expired, or another one's)

ATOMICITY: Redis does not roll back a script that fails half-way, so every
read, type check and numeric check comes before the first write. KEYS[3] and
KEYS[1] are read (GET, HMGET) before any write, and a read of a wrong-type key
raises WRONGTYPE right there; KEYS[2], 4 and 5 are only written, so their types
are checked explicitly first. The counters are parsed before HINCRBY; the writes
(HINCRBY, ZADD, SET, XADD, HSET) then touch only keys of the right type and
cannot fail.
]]

local function check_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE reserve_codes.lua: ' .. key .. ' holds a ' .. t
      .. ', expected ' .. want)
  end
end

local mode, now, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, lease = tonumber(ARGV[5]), tonumber(ARGV[6])
if #ARGV ~= 8 or (mode ~= 'reserve' and mode ~= 'done') or not now or not count
  or count < 1 or count > 1000000 or count ~= math.floor(count)
  or string.find(ARGV[2], '[^0-9]') or not ttl or ttl < 1 or not lease or lease < 0
  or #ARGV[4] == 0
  or string.find(ARGV[4], '|', 1, true) then
  return redis.error_reply('ERR reserve_codes.lua: bad arguments')
end

-- The idempotency record: fingerprint|state|first|count|lease_until_ms.
local rec = redis.call('GET', KEYS[3])
local r_fp, r_state, r_first, r_count, r_lease
if rec then
  r_fp, r_state, r_first, r_count, r_lease =
    string.match(rec, '^([^|]*)|([a-z]+)|([0-9]+)|([0-9]+)|([0-9]+)$')
  if not r_fp then
    return redis.error_reply('ERR reserve_codes.lua: corrupt idempotency record ' .. KEYS[3])
  end
end

if mode == 'done' then
  if not rec or r_fp ~= ARGV[4] or r_state ~= 'pending' then return {'gone'} end
  redis.call('SET', KEYS[3], r_fp .. '|done|' .. r_first .. '|' .. r_count .. '|0', 'KEEPTTL')
  return {'ok'}
end

local err = check_type(KEYS[2], 'zset') or check_type(KEYS[4], 'stream')
  or check_type(KEYS[5], 'stream')
if err then return err end

-- 1. Idempotency: one reservation per request, streamed again on a retry.
if rec then
  if r_fp ~= ARGV[4] then return {'reused'} end
  local streaming = r_state == 'pending' and now < tonumber(r_lease)
  if streaming and ARGV[8] ~= '1' then return {'in_progress'} end
  -- The reservation's expiry is its batch's (the batch is the truth).
  local b = redis.call('ZRANGEBYSCORE', KEYS[2], r_first, r_first, 'LIMIT', 0, 1)[1]
  local bexp = b and string.match(b, '^[0-9]+|[0-9]+|[0-9]+|([0-9]+)$')
  if not bexp then
    return redis.error_reply('ERR reserve_codes.lua: no batch at ' .. r_first .. ' in ' .. KEYS[2])
  end
  -- This call's own reservation, sent again: the range it reserved.
  if streaming then return {'ok', r_first, r_count, bexp} end
  if r_state == 'pending' then
    -- The first stream died (its lease ran out): this retry takes the lease over.
    redis.call('SET', KEYS[3], ARGV[4] .. '|pending|' .. r_first .. '|' .. r_count .. '|'
      .. string.format('%d', now + lease), 'KEEPTTL')
  end
  return {'replay', r_first, r_count, bexp}
end

-- 2. The campaign: it must exist, be approved and running (or paused), and
--    have `count` serials left.
local m = redis.call('HMGET', KEYS[1], 'state', 'stock', 'issued', 'ends_ms', 'valid_ms',
  'low_at', 'low_fired', 'webhook', 'void', 'sold_fired')
if not m[1] then return {'not_found'} end
local stock, issued, ends, valid_ms = tonumber(m[2]), tonumber(m[3]), tonumber(m[4]), tonumber(m[5])
local low_at = tonumber(m[6] or '-1')
local void = tonumber(m[9] or '0')
if not (stock and issued and ends and valid_ms and low_at and void) then
  return redis.error_reply('ERR reserve_codes.lua: campaign ' .. KEYS[1] .. ' has a corrupt counter')
end
if m[1] ~= 'active' and m[1] ~= 'paused' then return {'not_active', m[1]} end
if ends > 0 and now >= ends then return {'not_active', 'ended'} end
local left = math.max(0, stock - (issued - void))
if left < count then return {'sold_out', string.format('%d', left)} end

-- 3. Every check passed: charge.
local first = issued + 1
redis.call('HINCRBY', KEYS[1], 'issued', count)
local expires = 0
if valid_ms > 0 then expires = now + valid_ms end
local f, n, e = string.format('%d', first), string.format('%d', count), string.format('%d', expires)
redis.call('ZADD', KEYS[2], first, f .. '|' .. n .. '|' .. ARGV[2] .. '|' .. e)
redis.call('SET', KEYS[3], ARGV[4] .. '|pending|' .. f .. '|' .. n .. '|'
  .. string.format('%d', now + lease), 'EX', ttl)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 'at_ms', ARGV[2], 'actor', ARGV[7],
  'action', 'campaign.codes', 'target', string.match(KEYS[1], '{(.-)}'), 'reason', '',
  'detail', 'count=' .. n .. ' first=' .. f)

-- 4. Alerts, as claim.lua writes them: the reservation that crosses a
--    threshold writes its event, once.
local remaining = stock - (issued - void + count)
if m[8] == '1' then
  local function event(name)
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', 10000, '*', 'event', name,
      'stock', string.format('%d', stock), 'remaining', string.format('%d', remaining),
      'at_ms', ARGV[2])
  end
  if low_at >= 0 and remaining <= low_at and m[7] ~= '1' then
    redis.call('HSET', KEYS[1], 'low_fired', '1')
    event('campaign.low_stock')
  end
  -- Once a sell-out, as claim.lua: a stock raise re-arms it.
  if remaining == 0 and m[10] ~= '1' then
    redis.call('HSET', KEYS[1], 'sold_fired', '1')
    event('campaign.sold_out')
  end
end
return {'ok', f, n, e}
