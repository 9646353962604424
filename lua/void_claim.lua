--[[ void_claim.lua: take back a claim the client was never told about.

The service answered 503 (its deadline passed) but the claim script had run
just inside its own deadline and its reply arrived late: the code reached
no one, so the claim is undone and "a 503 means not charged" holds. Only
claims made without an Idempotency-Key are voided (with a key, the client's
retry is answered with the code instead).

KEYS (the campaign's hash tag)
  1  meta      hash   'void' counts serials taken back (issued = `issued` - `void`)
  2  q_phone   3 q_device   4 q_ip    hash   the claim's quota buckets
  5  claims    hash   the serial's claim-record bucket
  6  rids      hash   the call's server request ids
ARGV
  1  the serial's field in KEYS[5]   2 phone   3 device   4 ip (short pseudonyms)
  5  the request id
RETURNS {'void'} taken back | {'gone'} no such claim record of this phone
  (voided already, or never written): nothing changed.

ATOMICITY: the claim record and the three counters are read and checked
before the first write; HDEL and HINCRBY on checked keys cannot fail.
]]
local rec = redis.call('HGET', KEYS[5], ARGV[1])
if not rec or string.sub(rec, 1, #ARGV[2] + 1) ~= ARGV[2] .. '|' then return {'gone'} end
local counts = {}
for i = 2, 4 do
  local v = redis.call('HGET', KEYS[i], ARGV[i])
  if v and not string.find(v, '^%d+$') then
    return redis.error_reply('ERR void_claim.lua: corrupt quota counter in ' .. KEYS[i])
  end
  counts[i] = tonumber(v or '0')
end
redis.call('HEXISTS', KEYS[6], ARGV[5])  -- raises WRONGTYPE here, before any write
local meta = redis.call('HMGET', KEYS[1], 'issued', 'void')
if not meta[1] or not counter(meta[1]) or not counter(meta[2]) then
  return redis.error_reply('ERR void_claim.lua: corrupt counter in ' .. KEYS[1])
end
redis.call('HDEL', KEYS[5], ARGV[1])
for i = 2, 4 do
  if counts[i] > 0 then redis.call('HINCRBY', KEYS[i], ARGV[i], -1) end
end
redis.call('HINCRBY', KEYS[1], 'void', 1)
redis.call('HDEL', KEYS[6], ARGV[5])
return {'void'}
