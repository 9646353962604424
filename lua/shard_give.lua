--[[ shard_give.lua: the second step of a stock transfer (shard_take.lua):
add the units to the receiver's stock, at most once per transfer id.

KEYS (the receiver shard's hash tag)
  1  meta   hash   the receiver's `stock`
  2  xin    set    ids of the transfers already applied here
ARGV
  1  transfer id   2  units (>= 1)
RETURNS {'given'} | {'already'} (applied before: nothing written)
  | {'missing'} (the receiver shard does not exist: nothing written)

ATOMICITY: both types, the counter and the arguments are checked before
the HSET and SADD, which cannot fail then.
]]
local k = tonumber(ARGV[2])
if not k or k < 1 or #ARGV[1] == 0 then
  return redis.error_reply('ERR shard_give.lua: bad arguments')
end
local want = {'hash', 'set'}
for i = 1, 2 do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= want[i] then
    return redis.error_reply('WRONGTYPE shard_give.lua: ' .. KEYS[i] .. ' holds a ' .. t)
  end
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return {'already'} end
local stock = redis.call('HGET', KEYS[1], 'stock')
if not stock then return {'missing'} end
if not tonumber(stock) then
  return redis.error_reply('ERR shard_give.lua: corrupt counter in ' .. KEYS[1])
end
redis.call('HSET', KEYS[1], 'stock', string.format('%d', tonumber(stock) + k))
redis.call('SADD', KEYS[2], ARGV[1])
return {'given'}
