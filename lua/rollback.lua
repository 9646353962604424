--[[ rollback.lua: undo one redemption (the order was cancelled or refunded),
so the code can be redeemed again.

KEYS (one campaign's hash tag)
  1  meta        hash   (redeemed counter)
  2  redemptions hash   serial -> cjson {order, at, discount, store}
  3  rollbacks   hash   serial -> cjson of the last undone redemption, for audit
  4  idem        string the client key's record: fingerprint '|' '1' or '0' (the first
                        answer), written in the same step as the rollback
ARGV
  1  now_ms   2 serial   3 order_id
  4  fingerprint of the request under a client Idempotency-Key ('' for none)
  5  ttl_s of that record
RETURNS
  {'ok', '1'}            the redemption by this order was undone
  {'ok', '0'}            the code is not redeemed (already rolled back): nothing to do
  {'other_order'}        the code is redeemed by another order: untouched
  {'invalid_code'}       no such campaign
  {'reused'}             the client key came with another request
An answer recorded under the client key is returned again as it was.

ATOMICITY: type checks and reads first; then HDEL, HINCRBY, HSET, SET on checked keys.
]]

local function check_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. t .. ', expected ' .. want)
  end
end

local fp, ttl = ARGV[4], tonumber(ARGV[5])
if not tonumber(ARGV[1]) or #ARGV[3] == 0 or not fp or not ttl or ttl < 1 then
  return redis.error_reply('ERR rollback.lua: bad arguments')
end
for i = 1, 3 do
  local err = check_type(KEYS[i], 'hash')
  if err then return err end
end
if fp ~= '' then
  local err = check_type(KEYS[4], 'string')
  if err then return err end
  local first = redis.call('GET', KEYS[4])
  if first then
    local f, answer = string.match(first, '^([^|]*)|(.*)$')
    if f ~= fp then return {'reused'} end
    return {'ok', answer}
  end
end
local stored = redis.call('HGET', KEYS[1], 'redeemed')
if not stored then return {'invalid_code'} end
if not counter(stored) then
  return redis.error_reply('ERR rollback.lua: corrupt counter in ' .. KEYS[1])
end

-- The answer, recorded under the client key in the same step.
local function answer(undone)
  if fp ~= '' then redis.call('SET', KEYS[4], fp .. '|' .. undone, 'EX', ttl) end
  return {'ok', undone}
end

local prev = redis.call('HGET', KEYS[2], ARGV[2])
if not prev then return answer('0') end
local rec = cjson.decode(prev)
if rec.order ~= ARGV[3] then return {'other_order'} end

rec.rolled_back_at = ARGV[1]
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'redeemed', -1)
redis.call('HSET', KEYS[3], ARGV[2], cjson.encode(rec))
return answer('1')
