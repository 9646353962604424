--[[ redeem.lua: redeem one issued code for one order, exactly once.

KEYS (one campaign's hash tag)
  1  meta        hash    campaign counters (redeemed) and state
  2  claims      hash    the serial's claim-record bucket: serial % 64 ->
                         'phone|claimed_ms|expires_ms|channel'   (read only)
  3  redemptions hash    serial -> cjson {order, at, discount, store}
  4  idem        string  idempotency record: fingerprint .. '|' .. cjson(result)
  5  batches     zset    first serial -> 'first|count|created_ms|expires_ms' of each bulk
                         reservation (codes bound to no one; read only)
  6  stats       hash    'red:store:<id>', 'red:channel:<channel>' -> redemptions
ARGV
  1  now_ms     2 serial     3 order_id     4 discount (minor units, computed by the service)
  5  store_id ('' for none)  6 fingerprint  7 idem_ttl_s  8 keep_rejections ('1'/'0')
  9  short phone pseudonym of the redeemer ('' when not checked)
  10 the serial's field in KEYS[2] (serial % 64)
RETURNS flat string arrays; the last element is '1' for an idempotent replay, else '0'
  {'ok', order_id, redeemed_ms, discount, store_id, same_order_replay ('1'/'0'), replay}
  {'invalid_code', replay}       signed correctly but never issued (or campaign gone)
A code is issued when it has a claim record, or when its serial lies in a
bulk reservation (then it is bound to no one, and its channel is 'bulk').
  {'already_redeemed', replay}   redeemed by another order
  {'expired', expires_ms, replay}
  {'wrong_claimer', replay}      phone given and it is not the claimer's
  {'reused'}                     same idempotency key, other request
The same (code, order_id) again answers 'ok' with the stored redemption:
a checkout that retries after a timeout gets its discount, once.

ATOMICITY: every key is read (GET, HGET, ZREVRANGEBYSCORE) before anything is
written, and a read of a wrong-type key raises WRONGTYPE there; the stats hash
is only written, so its type is checked first; the counter is parsed as
HINCRBY reads it (num.lua) before it is incremented. So the writes (HSET,
HINCRBY, SET) cannot fail, and a failure anywhere comes before the first
write; the statistics are added last, best effort.
]]

local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[7])
if not now or not ttl or ttl < 1 or not tonumber(ARGV[4]) or #ARGV[3] == 0 or #ARGV[6] == 0 then
  return redis.error_reply('ERR redeem.lua: bad arguments')
end
local st = redis.call('TYPE', KEYS[6])['ok']
if st ~= 'none' and st ~= 'hash' then
  return redis.error_reply('WRONGTYPE redeem.lua: ' .. KEYS[6] .. ' holds a ' .. st)
end
local rec = redis.call('GET', KEYS[4])
if rec then
  local sep = string.find(rec, '|', 1, true)
  if not sep or string.sub(rec, 1, sep - 1) ~= ARGV[6] then return {'reused'} end
  local out = cjson.decode(string.sub(rec, sep + 1))
  out[#out + 1] = '1'
  return out
end
local keep = ARGV[8] == '1'
local function answer(out, record)
  if record then
    redis.call('SET', KEYS[4], ARGV[6] .. '|' .. cjson.encode(out), 'EX', ttl)
  end
  out[#out + 1] = '0'
  return out
end

local redeemed = redis.call('HGET', KEYS[1], 'redeemed')
if not redeemed then return answer({'invalid_code'}, false) end
if not counter(redeemed) then
  return redis.error_reply('ERR redeem.lua: corrupt counter in ' .. KEYS[1])
end
local claim = redis.call('HGET', KEYS[2], ARGV[10])
local claimer, exp, channel
if claim then
  claimer, exp, channel = string.match(claim, '^([^|]*)|[0-9]+|([0-9]+)|([^|]*)$')
  if not claimer then
    return redis.error_reply('ERR redeem.lua: corrupt claim record in ' .. KEYS[2])
  end
else
  local serial = tonumber(ARGV[2])
  local b = redis.call('ZREVRANGEBYSCORE', KEYS[5], serial, '-inf', 'LIMIT', 0, 1)[1]
  local first, count, bexp
  if b then first, count, bexp = string.match(b, '^([0-9]+)|([0-9]+)|[0-9]+|([0-9]+)$') end
  if not first or serial >= tonumber(first) + tonumber(count) then
    return answer({'invalid_code'}, keep)
  end
  claimer, exp, channel = '', bexp, 'bulk'
end

local prev = redis.call('HGET', KEYS[3], ARGV[2])
if prev then
  prev = cjson.decode(prev)
  if prev.order == ARGV[3] then
    return answer({'ok', prev.order, prev.at, prev.discount, prev.store, '1'}, keep)
  end
  return answer({'already_redeemed'}, keep)
end
-- A bulk code (claimer '') is bound to no one.
if ARGV[9] ~= '' and claimer ~= '' and claimer ~= ARGV[9] then return answer({'wrong_claimer'}, keep) end
if tonumber(exp) > 0 and now >= tonumber(exp) then return answer({'expired', exp}, keep) end

-- Every check passed: redeem.
local at = string.format('%d', now)
redis.call('HSET', KEYS[3], ARGV[2], cjson.encode({order = ARGV[3], at = at, discount = ARGV[4], store = ARGV[5]}))
redis.call('HINCRBY', KEYS[1], 'redeemed', 1)
-- Statistics: best effort (a field corrupted by hand fails alone).
if ARGV[5] ~= '' then redis.pcall('HINCRBY', KEYS[6], 'red:store:' .. ARGV[5], 1) end
if channel ~= '' then redis.pcall('HINCRBY', KEYS[6], 'red:channel:' .. channel, 1) end
return answer({'ok', ARGV[3], at, ARGV[4], ARGV[5], '0'}, true)
