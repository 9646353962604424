--[[ inspect_code.lua: read-only view of one code, for /v1/codes/validate.

KEYS (one campaign's hash tag)
  1  meta  hash    2  the serial's claim-record bucket    3  redemptions hash
  4  batches zset
ARGV
  1  serial   2  its field in KEYS[2] (serial % 64)
RETURNS {state or '', claim record or '', redemption cjson or ''}; a claim
record is 'phone|claimed_ms|expires_ms|channel', and a code of a bulk
reservation has '|created_ms|expires_ms|bulk'.
Writes nothing.
]]
local state = redis.call('HGET', KEYS[1], 'state') or ''
local claim = redis.call('HGET', KEYS[2], ARGV[2])
if not claim then
  local serial = tonumber(ARGV[1]) or -1
  local b = redis.call('ZREVRANGEBYSCORE', KEYS[4], serial, '-inf', 'LIMIT', 0, 1)[1]
  local first, count, created, exp
  if b then first, count, created, exp = string.match(b, '^([0-9]+)|([0-9]+)|([0-9]+)|([0-9]+)$') end
  if first and serial < tonumber(first) + tonumber(count) then
    claim = '|' .. created .. '|' .. exp .. '|bulk'
  end
end
local red = redis.call('HGET', KEYS[3], ARGV[1]) or ''
return {state, claim or '', red}
