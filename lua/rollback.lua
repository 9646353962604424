--[[ rollback.lua: undo one redemption (the order was cancelled or refunded),
so the code can be redeemed again.

KEYS (one campaign's hash tag)
  1  meta        hash   (redeemed counter)
  2  redemptions hash   serial -> cjson {order, at, discount, store}
  3  rollbacks   hash   serial -> cjson of the last undone redemption, for audit
ARGV
  1  now_ms   2 serial   3 order_id
RETURNS
  {'ok', '1'}            the redemption by this order was undone
  {'ok', '0'}            the code is not redeemed (already rolled back): nothing to do
  {'other_order'}        the code is redeemed by another order: untouched
  {'invalid_code'}       no such campaign

ATOMICITY: type checks and reads first; then HDEL, HINCRBY, HSET on checked keys.
]]

local function check_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. t .. ', expected ' .. want)
  end
end

if not tonumber(ARGV[1]) or #ARGV[3] == 0 then
  return redis.error_reply('ERR rollback.lua: bad arguments')
end
for i = 1, 3 do
  local err = check_type(KEYS[i], 'hash')
  if err then return err end
end
local redeemed = tonumber(redis.call('HGET', KEYS[1], 'redeemed') or '')
if not redeemed then return {'invalid_code'} end
local prev = redis.call('HGET', KEYS[2], ARGV[2])
if not prev then return {'ok', '0'} end
local rec = cjson.decode(prev)
if rec.order ~= ARGV[3] then return {'other_order'} end

rec.rolled_back_at = ARGV[1]
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'redeemed', -1)
redis.call('HSET', KEYS[3], ARGV[2], cjson.encode(rec))
return {'ok', '1'}
