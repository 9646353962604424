--[[ expire_campaign.lua: write `campaign.ended` for a campaign whose `ends_at`
has passed without anyone calling `end`, once.

The webhook worker calls this each second for a webhook campaign whose meta
says the window is over and the event has not fired; the checks are repeated
here, so two replicas (or a racing `end`, which sets the same flag in
transition.lua) cannot both write the event.

KEYS (the campaign's hash tag)
  1  meta    hash    `state`, `ends_ms`, `ended_fired`, `webhook`, `stock`, `issued`
  2  outbox  stream  webhook events
ARGV
  1  now_ms  the service's injected clock
RETURNS
  {'fired'}             `ended_fired` set, and the event written (when `webhook` is '1')
  {'not_found'}
  {'fired_already'}     `end` was called, or this ran before
  {'not_due'}           no end time, or it has not passed
  {'not_live', state}   a draft or pending campaign never ran; an `ended` one is
                        transition.lua's (nothing is written)

ATOMICITY: both key types and every number are checked before the first
write; HSET on a hash and XADD on a stream cannot fail after that.
]]
local function check_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE expire_campaign.lua: ' .. key .. ' holds a ' .. t)
  end
end
local err = check_type(KEYS[1], 'hash') or check_type(KEYS[2], 'stream')
if err then return err end
local now = tonumber(ARGV[1])
if #ARGV ~= 1 or not now or string.find(ARGV[1], '[^0-9]') then
  return redis.error_reply('ERR expire_campaign.lua: bad arguments')
end

local m = redis.call('HMGET', KEYS[1], 'state', 'ends_ms', 'ended_fired', 'webhook', 'stock', 'issued', 'void')
if not m[1] then return {'not_found'} end
if m[3] == '1' then return {'fired_already'} end
local ends, stock, issued = tonumber(m[2] or '0'), tonumber(m[5] or '0'),
  (tonumber(m[6] or '0') or 0) - (tonumber(m[7] or '0') or 0)
if not (ends and stock and issued) then
  return redis.error_reply('ERR expire_campaign.lua: campaign ' .. KEYS[1] .. ' has a corrupt counter')
end
if ends <= 0 or now < ends then return {'not_due'} end
if m[1] ~= 'active' and m[1] ~= 'paused' then return {'not_live', m[1]} end

redis.call('HSET', KEYS[1], 'ended_fired', '1')
if m[4] == '1' then
  -- `at` is when the window closed, not when the worker noticed.
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, '*', 'event', 'campaign.ended',
    'stock', string.format('%d', stock), 'remaining', string.format('%d', math.max(0, stock - issued)),
    'at_ms', string.format('%d', ends))
end
return {'fired'}
