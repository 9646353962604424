--[[ transition.lua: move a campaign from one lifecycle state to another,
with its audit entry (and its webhook event) in the same atomic step.

The table of allowed moves is `domain::lifecycle` (the service reads the
state, computes the target, and sends both): this script is its
compare-and-set, so two racing actions cannot both apply.

KEYS (the campaign's hash tag)
  1  meta    hash    `state`, `created_by`, `webhook`, `ver`, `ended_fired`
  2  audit   stream  the campaign's audit trail
  3  outbox  stream  webhook events
ARGV
  1  from      the state the service read     2  to   the target state
  3  action    4  actor (API key name)         5  now_ms
  6  reason    ('' for none)
  7  four_eyes '1': the actor may not be the campaign's creator
  8  event     webhook event to emit ('' for none), e.g. 'campaign.ended' (skipped
               when `ended_fired` is already '1')
RETURNS
  {'ok'}                    moved, audited
  {'not_found'}
  {'moved', state}          the state is no longer `from` (the service re-reads and retries)
  {'forbidden'}             four eyes: the creator may not approve

ATOMICITY: the types of all three keys and the state are read first; HSET,
HINCRBY and XADD on keys of the right type cannot fail.
]]
local function check_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE transition.lua: ' .. key .. ' holds a ' .. t)
  end
end
local err = check_type(KEYS[1], 'hash') or check_type(KEYS[2], 'stream') or check_type(KEYS[3], 'stream')
if err then return err end
if #ARGV ~= 8 or not tonumber(ARGV[5]) then
  return redis.error_reply('ERR transition.lua: bad arguments')
end
local m = redis.call('HMGET', KEYS[1], 'state', 'created_by', 'webhook', 'stock', 'issued',
  'ended_fired', 'void', 'ver')
if not m[1] then return {'not_found'} end
if not (counter(m[4]) and counter(m[5]) and counter(m[7]) and counter(m[8])) then
  return redis.error_reply('ERR transition.lua: corrupt counter in ' .. KEYS[1])
end
if m[1] ~= ARGV[1] then return {'moved', m[1]} end
if ARGV[7] == '1' and m[2] == ARGV[4] then return {'forbidden'} end

redis.call('HSET', KEYS[1], 'state', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'ver', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'at_ms', ARGV[5], 'actor', ARGV[4],
  'action', 'campaign.' .. ARGV[3], 'target', string.match(KEYS[1], '{(.-)}'), 'reason', ARGV[6],
  'detail', ARGV[1] .. ' -> ' .. ARGV[2])
-- `campaign.ended` fires once: expire_campaign.lua may have sent it when
-- `ends_at` passed, before anyone called `end`.
local event = ARGV[8]
if event == 'campaign.ended' then
  if m[6] == '1' then event = '' end
  redis.call('HSET', KEYS[1], 'ended_fired', '1')
end
if event ~= '' and m[3] == '1' then
  local remaining = math.max(0, counter(m[4]) - counter(m[5]) + counter(m[7]))
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'event', event,
    'stock', m[4] or '0', 'remaining', tostring(remaining), 'at_ms', ARGV[5])
end
return {'ok'}
