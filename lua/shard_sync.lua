--[[ shard_sync.lua: create one stock shard of a campaign, or bring its copy
of the campaign's claim rules up to the campaign record's version.

A campaign with `stock_shards` N > 1 keeps its record in `st:{c}:meta` and
claims in N shards `st:{c#i}:…` (store::shards). Each shard's meta holds a
copy of what claim.lua / redeem.lua read (state, window, limits, rollout)
plus its own counters (stock slice, issued, void, redeemed).

KEYS (the shard's hash tag)
  1  meta    hash    the shard's meta
ARGV
  1  ver     the campaign record's `ver` the fields below were read at
  2  slice   the shard's stock at creation (used only when it does not exist)
  3..        field, value pairs: the claim rules copied from the record
RETURNS {'created'} | {'synced'} | {'current'} (the shard has `ver` or a newer one)

A shard is created once (its stock slice set only then: stock moves between
shards later, shard_take / shard_give), so a retried create adds no stock.
An older sync never overwrites a newer one (`sync_ver`).

ATOMICITY: the type and `sync_ver` are read and every argument checked
before the one HSET, which cannot fail on a hash.
]]
local ver, slice = tonumber(ARGV[1]), tonumber(ARGV[2])
if not ver or not slice or slice < 0 or #ARGV < 3 or (#ARGV - 2) % 2 ~= 0 then
  return redis.error_reply('ERR shard_sync.lua: bad arguments')
end
for i = 3, #ARGV, 2 do
  local f = ARGV[i]
  if f == 'stock' or f == 'issued' or f == 'void' or f == 'redeemed' or f == 'sync_ver' then
    return redis.error_reply('ERR shard_sync.lua: ' .. f .. ' is the shard\'s own')
  end
end
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'hash' then
  return redis.error_reply('WRONGTYPE shard_sync.lua: ' .. KEYS[1] .. ' holds a ' .. t)
end
if t == 'none' then
  redis.call('HSET', KEYS[1], 'stock', string.format('%d', slice), 'issued', '0', 'void', '0',
    'redeemed', '0', 'sync_ver', string.format('%d', ver), unpack(ARGV, 3))
  return {'created'}
end
local have = tonumber(redis.call('HGET', KEYS[1], 'sync_ver') or '-1') or -1
if have >= ver then return {'current'} end
redis.call('HSET', KEYS[1], 'sync_ver', string.format('%d', ver), unpack(ARGV, 3))
return {'synced'}
