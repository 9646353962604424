--[[ create_campaign.lua: create a campaign once, with its audit entry.

KEYS (the new campaign's hash tag)
  1  meta   hash    the campaign
  2  idem   string  idempotency record: fingerprint .. '|' .. the spec JSON
  3  audit  stream  the campaign's audit trail
ARGV
  1  fingerprint ('' when the request has no Idempotency-Key)
  2  idem_ttl_s
  3  the spec JSON to record under the key (the first answer is rebuilt from it)
  4  actor (API key name)
  5  now_ms
  6.. field, value pairs for the meta hash
RETURNS
  {'ok'}                   created
  {'replay', spec}         the same key and request again: the first attempt's spec
  {'reused'}               the same key with another request
  {'exists'}               a campaign with this id exists

ATOMICITY: checks first; then one HSET, one SET and one XADD on checked keys.
]]
local t1 = redis.call('TYPE', KEYS[1])['ok']
local t2 = redis.call('TYPE', KEYS[2])['ok']
local t3 = redis.call('TYPE', KEYS[3])['ok']
if (t1 ~= 'none' and t1 ~= 'hash') or (t2 ~= 'none' and t2 ~= 'string')
  or (t3 ~= 'none' and t3 ~= 'stream') then
  return redis.error_reply('WRONGTYPE create_campaign.lua: unexpected key types')
end
if #ARGV < 7 or (#ARGV - 5) % 2 ~= 0 or not tonumber(ARGV[2]) or not tonumber(ARGV[5]) then
  return redis.error_reply('ERR create_campaign.lua: bad arguments')
end
if ARGV[1] ~= '' then
  local rec = redis.call('GET', KEYS[2])
  if rec then
    local sep = string.find(rec, '|', 1, true)
    if sep and string.sub(rec, 1, sep - 1) == ARGV[1] then
      return {'replay', string.sub(rec, sep + 1)}
    end
    return {'reused'}
  end
end
if t1 == 'hash' then return {'exists'} end

redis.call('HSET', KEYS[1], unpack(ARGV, 6))
if ARGV[1] ~= '' then
  redis.call('SET', KEYS[2], ARGV[1] .. '|' .. ARGV[3], 'EX', ARGV[2])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 100000, '*', 'at_ms', ARGV[5], 'actor', ARGV[4],
  'action', 'campaign.create', 'target', string.match(KEYS[1], '{(.-)}'), 'reason', '', 'detail', '')
return {'ok'}
