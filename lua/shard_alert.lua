--[[ shard_alert.lua: the stock webhooks of a campaign with stock_shards > 1.

Unsharded, the claim that crosses a threshold writes its event (claim.lua,
step 5). A sharded campaign's claims run in its shards, which cannot see the
whole stock, so the service sums the shards' `issued` (store::shards) and
this script, on the campaign record's slot, writes each event once:
`campaign.low_stock` when the remaining stock is at or below `low_at` (once
per campaign, as unsharded), `campaign.sold_out` when nothing remains (once,
and once again after each stock raise: patch_campaign.lua clears
`sold_fired`).

The sum is read shard by shard while claims go on, so it is never above the
true count: an event is written late (at the next check), never early.

KEYS (the campaign record's hash tag)
  1  meta    hash    stock, low_at, low_fired, sold_fired, webhook
  2  outbox  stream  webhook events
ARGV
  1  issued (summed over the shards, voids taken out)   2  now_ms
RETURNS the names of the events written ({} when none)

ATOMICITY: both types and every number are checked before the first write;
HSET and XADD cannot fail then.
]]
local issued, now = tonumber(ARGV[1]), tonumber(ARGV[2])
if not issued or not now then
  return redis.error_reply('ERR shard_alert.lua: bad arguments')
end
local want = {'hash', 'stream'}
for i = 1, 2 do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= want[i] then
    return redis.error_reply('WRONGTYPE shard_alert.lua: ' .. KEYS[i] .. ' holds a ' .. t)
  end
end
local m = redis.call('HMGET', KEYS[1], 'stock', 'low_at', 'low_fired', 'sold_fired', 'webhook')
if not m[1] or m[5] ~= '1' then return {} end
local stock, low_at = tonumber(m[1]), tonumber(m[2] or '-1')
if not (stock and low_at) then
  return redis.error_reply('ERR shard_alert.lua: corrupt counter in ' .. KEYS[1])
end
local remaining = math.max(stock - issued, 0)
local events = {}
if low_at >= 0 and remaining <= low_at and m[3] ~= '1' then
  redis.call('HSET', KEYS[1], 'low_fired', '1')
  events[#events + 1] = 'campaign.low_stock'
end
if remaining == 0 and m[4] ~= '1' then
  redis.call('HSET', KEYS[1], 'sold_fired', '1')
  events[#events + 1] = 'campaign.sold_out'
end
for _, name in ipairs(events) do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, '*', 'event', name,
    'stock', string.format('%d', stock), 'remaining', string.format('%d', remaining),
    'at_ms', string.format('%d', now))
end
return events
