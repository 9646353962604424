--[[ ban.lua: start or lift bans, and bump the bans version, in one step.

KEYS
  1  bans   hash   '<kind>:<pseudonym>' -> ban record (JSON); '~v' -> version
ARGV
  1  'set' | 'del'
  2.. field (, record for 'set') pairs: 'set' takes field, record, field, record ...;
      'del' takes fields
RETURNS {version, changed}: the new version, and how many fields were set or removed.

Every replica polls '~v' and reloads the hash when it moves, so a ban
reaches every instance within the poll period.

ATOMICITY: the type is checked first; HSET/HDEL/HINCRBY on a hash cannot fail.
]]
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'hash' then
  return redis.error_reply('WRONGTYPE ban.lua: ' .. KEYS[1] .. ' holds a ' .. t)
end
if not counter(redis.call('HGET', KEYS[1], '~v')) then
  return redis.error_reply('ERR ban.lua: corrupt version in ' .. KEYS[1])
end
local changed = 0
if ARGV[1] == 'set' then
  if #ARGV < 3 or (#ARGV - 1) % 2 ~= 0 then return redis.error_reply('ERR ban.lua: bad arguments') end
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
  changed = (#ARGV - 1) / 2
elseif ARGV[1] == 'del' then
  if #ARGV < 2 then return redis.error_reply('ERR ban.lua: bad arguments') end
  changed = redis.call('HDEL', KEYS[1], unpack(ARGV, 2))
else
  return redis.error_reply('ERR ban.lua: mode is set or del')
end
local v = redis.call('HINCRBY', KEYS[1], '~v', 1)
return {tostring(v), tostring(changed)}
