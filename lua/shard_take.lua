--[[ shard_take.lua: the first step of moving stock between two shards of a
campaign: take up to `want` units of unclaimed stock out of the donor and
record the transfer in the donor's own slot.

KEYS (the donor shard's hash tag)
  1  meta   hash   the donor's `stock`, `issued`, `void`
  2  xout   hash   transfer id -> '<receiver>|<units>' (pending transfers)
ARGV
  1  transfer id (unique)   2  receiver shard number   3  want (>= 1)
RETURNS {units} taken (0: the donor has no unclaimed stock, nothing written)

Every unit of a campaign's stock is at all times in exactly one shard's
unclaimed stock, in one pending transfer, or issued: this script moves
units from the first to the second atomically, shard_give.lua from the
second to the receiver's stock at most once (its `xin` set). A crash
between the two leaves the units pending (not claimable anywhere: never
over-issued) until a refill completes the transfer (store::shards).

ATOMICITY: both types, the counters and the arguments are checked before
the two HSETs, which cannot fail then.
]]
local want, recv = tonumber(ARGV[3]), ARGV[2]
if not want or want < 1 or #ARGV[1] == 0 or not tonumber(recv) then
  return redis.error_reply('ERR shard_take.lua: bad arguments')
end
for i = 1, 2 do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= 'hash' then
    return redis.error_reply('WRONGTYPE shard_take.lua: ' .. KEYS[i] .. ' holds a ' .. t)
  end
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return redis.error_reply('ERR shard_take.lua: transfer id used twice')
end
local m = redis.call('HMGET', KEYS[1], 'stock', 'issued', 'void')
if not m[1] then return {'0'} end
local stock, issued, void = tonumber(m[1]), tonumber(m[2] or '0'), tonumber(m[3] or '0')
if not (stock and issued and void) then
  return redis.error_reply('ERR shard_take.lua: corrupt counter in ' .. KEYS[1])
end
local free = stock - (issued - void)
local k = math.min(want, free)
if k < 1 then return {'0'} end
redis.call('HSET', KEYS[1], 'stock', string.format('%d', stock - k))
redis.call('HSET', KEYS[2], ARGV[1], recv .. '|' .. string.format('%d', k))
return {string.format('%d', k)}
