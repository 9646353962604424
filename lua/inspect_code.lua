--[[ inspect_code.lua: read-only view of one code, for /v1/codes/validate.

KEYS (one campaign's hash tag)
  1  meta  hash    2  claims hash    3  redemptions hash
ARGV
  1  serial
RETURNS {state or '', claim cjson or '', redemption cjson or ''}
Writes nothing.
]]
local state = redis.call('HGET', KEYS[1], 'state') or ''
local claim = redis.call('HGET', KEYS[2], ARGV[1]) or ''
local red = redis.call('HGET', KEYS[3], ARGV[1]) or ''
return {state, claim, red}
