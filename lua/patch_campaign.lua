--[[ patch_campaign.lua: apply a PATCH to a campaign, with its audit entry,
as a compare-and-set on the campaign's version.

The service reads the campaign (spec and `ver`), builds the new spec and the
fields it flattens to, and sends them; this script applies them only if
nobody changed the campaign in between, and never lets the stock fall below
what is issued.

KEYS (the campaign's hash tag)
  1  meta    hash    2  audit   stream
  3  xout    hash    stock granted to shards and not yet given (stock_shards > 1)
ARGV
  1  expected ver     2  new stock     3  actor     4  now_ms     5  detail (what changed)
  6  g: how many grants follow
  7..6+2g  transfer id, '<shard>|<units>' pairs: a stock raise of a sharded
     campaign, recorded here with the new stock, in the same step, and added
     to the shards once each by shard_give.lua (store::shards)
  7+2g.. field, value pairs for the meta hash (the new `spec` among them)
RETURNS
  {'ok', ver}       applied; the new version
  {'not_found'}
  {'moved'}         changed since it was read (the service retries)
  {'below_issued', issued}

ATOMICITY: types and every value checked first; HSET, HINCRBY and XADD cannot fail.
(A grant's transfer id is fresh, so the xout HSET adds, never overwrites.)
]]
local t1, t2 = redis.call('TYPE', KEYS[1])['ok'], redis.call('TYPE', KEYS[2])['ok']
if (t1 ~= 'none' and t1 ~= 'hash') or (t2 ~= 'none' and t2 ~= 'stream') then
  return redis.error_reply('WRONGTYPE patch_campaign.lua: unexpected key types')
end
local g = tonumber(ARGV[6])
if not g or g < 0 or #ARGV < 8 + 2 * g or (#ARGV - 6) % 2 ~= 0 or not tonumber(ARGV[2])
    or not tonumber(ARGV[4]) then
  return redis.error_reply('ERR patch_campaign.lua: bad arguments')
end
local t3 = redis.call('TYPE', KEYS[3])['ok']
if t3 ~= 'none' and t3 ~= 'hash' then
  return redis.error_reply('WRONGTYPE patch_campaign.lua: unexpected key types')
end
local m = redis.call('HMGET', KEYS[1], 'ver', 'issued', 'void', 'stock')
if not m[2] then return {'not_found'} end
if (m[1] or '0') ~= ARGV[1] then return {'moved'} end
-- Serials taken back by void_claim.lua are not issued.
if not (counter(m[1]) and counter(m[2]) and counter(m[3]) and counter(m[4])) then
  return redis.error_reply('ERR patch_campaign.lua: corrupt counter')
end
local issued = counter(m[2]) - counter(m[3])
if tonumber(ARGV[2]) < issued then return {'below_issued', tostring(issued)} end

redis.call('HSET', KEYS[1], unpack(ARGV, 7 + 2 * g))
if g > 0 then redis.call('HSET', KEYS[3], unpack(ARGV, 7, 6 + 2 * g)) end
-- A raise re-arms the sold-out webhook (claim.lua, reserve_codes.lua,
-- shard_alert.lua: it fires once a sell-out).
if tonumber(ARGV[2]) > counter(m[4]) then redis.call('HDEL', KEYS[1], 'sold_fired') end
local ver = redis.call('HINCRBY', KEYS[1], 'ver', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'at_ms', ARGV[4], 'actor', ARGV[3],
  'action', 'campaign.patch', 'target', string.match(KEYS[1], '{(.-)}'), 'reason', '', 'detail', ARGV[5])
return {'ok', tostring(ver)}
