--[[ hcache.lua: a write-back cache of hash fields for one script call. Not a
script of its own: store::scripts prepends it (with rules_core.lua) to
claim.lua and rules.lua. It only defines locals. In a function library
(store::scripts) its locals outlive a call: `hc_reset` starts each call
afresh.

Why: a `redis.call` costs about 1 µs here, and a claim with three rules made
about 20 of them. The requests of a batch share many hashes (a rule's epoch
hash, the IP's quota bucket, 64 claims' record bucket), so the call reads
each field once (`hc_get`; `hc_prefetch` reads many fields of one hash with
one HMGET), keeps every write in the cache (`hc_set`), and `hc_flush` writes
each hash once at the end (one HSET of all its changed fields, then its
PEXPIRE if one was asked for).

ATOMICITY: a field is written only after it was read from a hash that
answered as a hash (or did not exist), or after `hc_hash` checked the key's
TYPE, so the flush cannot fail. A read that fails (WRONGTYPE) raises
inside the request that made it (its pcall), before that step of the
request wrote anything (in claim.lua, the rules a claim passed stay
charged, as they did when they were written at once); a prefetch that
fails marks its hash bad, and each request that needs it then fails the
same way. Scripts see the cache in the order they
run their requests, so each request sees the writes of the ones before it.
]]
local hc_vals, hc_bad, hc_dirty, hc_order, hc_ttl, hc_typed = {}, {}, {}, {}, {}, {}
-- Keys known not to exist (hc_absent): their fields read as absent
-- without a call, until the script writes one (hc_set clears the mark:
-- a reader that checks the mark itself, rules_core.lua, then reads the
-- cache).
local hc_none = {}

-- A fresh cache, for the next call of a function library (store::scripts):
-- there this text is set up once and its locals outlive a call. (A script
-- sent with EVALSHA runs this text on each call and starts fresh anyway.)
local function hc_reset()
  hc_vals, hc_bad, hc_dirty, hc_order, hc_ttl, hc_typed = {}, {}, {}, {}, {}, {}
  hc_none = {}
end

-- t[k], made an empty table first when absent.
local function sub_table(t, k)
  local s = t[k]
  if not s then
    s = {}
    t[k] = s
  end
  return s
end

-- The field's value (false when absent), read once per call.
-- (hc_get, hc_prefetch and hc_set make a key's table in place rather than
-- through sub_table: they run for every field of every claim, and a Lua
-- call costs more than the lookup it wraps.)
local function hc_get(key, field)
  local c = hc_vals[key]
  if c then
    local v = c[field]
    if v ~= nil then return v end
  else
    c = {}
    hc_vals[key] = c
  end
  if hc_bad[key] then error({err = hc_bad[key]}) end
  if hc_none[key] then
    c[field] = false
    return false
  end
  local v = redis.call('HGET', key, field) or false
  c[field] = v
  return v
end

-- Reads `fields` (a list, duplicates allowed) of `key` with one HMGET;
-- a field already in the cache keeps its value.
local function hc_prefetch(key, fields)
  if #fields == 0 or hc_bad[key] then return end
  local got = redis.pcall('HMGET', key, unpack(fields))
  if got.err then
    hc_bad[key] = got.err
    return
  end
  local c = hc_vals[key]
  if not c then
    c = {}
    hc_vals[key] = c
  end
  for j = 1, #fields do
    local f = fields[j]
    if c[f] == nil then c[f] = got[j] or false end
  end
end

-- True when `key` does not exist (one EXISTS): its fields then read as
-- absent without a call (a key that is written later in the call keeps
-- what was written: hc_set fills the cache, which hc_get reads first).
local function hc_absent(key)
  if hc_vals[key] or hc_bad[key] then return false end
  if redis.call('EXISTS', key) == 0 then
    hc_none[key] = true
    return true
  end
  return false
end

-- True when none of `keys` exists (one EXISTS for all of them), each then
-- marked as hc_absent marks it; false when one exists or is already read
-- (ask hc_absent key by key then). The keys must share a slot on a
-- cluster (a rules.lua call's do).
local function hc_all_absent(keys)
  for i = 1, #keys do
    local k = keys[i]
    if hc_vals[k] or hc_bad[k] then return false end
  end
  if redis.call('EXISTS', unpack(keys)) ~= 0 then return false end
  for i = 1, #keys do hc_none[keys[i]] = true end
  return true
end

-- Checks once per call that `key` holds a hash or nothing (for fields
-- written without being read first); raises otherwise.
local function hc_hash(key)
  if hc_typed[key] then return end
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= 'hash' then
    error({err = 'WRONGTYPE ' .. key .. ' holds a ' .. t .. ', expected hash'})
  end
  hc_typed[key] = true
end

-- Sets the field (written by hc_flush); `ttl_ms` (optional) is the
-- hash's PEXPIRE at the flush.
local function hc_set(key, field, value, ttl_ms)
  if hc_none[key] then hc_none[key] = nil end
  local c = hc_vals[key]
  if not c then
    c = {}
    hc_vals[key] = c
  end
  c[field] = value
  local d = hc_dirty[key]
  if not d then
    d = {}
    hc_dirty[key] = d
    hc_order[#hc_order + 1] = key
  end
  d[field] = value
  if ttl_ms then hc_ttl[key] = ttl_ms end
end

-- Writes every changed hash: one HSET (and one PEXPIRE) each. One argument
-- list serves every hash (unpack reads its first k): a table grown field
-- by field is rehashed at each power of two, and a batch writes a few
-- hashes a claim.
local function hc_flush()
  local args = {}
  for _, key in ipairs(hc_order) do
    local k = 0
    for f, v in pairs(hc_dirty[key]) do
      args[k + 1], args[k + 2] = f, v
      k = k + 2
    end
    redis.call('HSET', key, unpack(args, 1, k))
    local ttl = hc_ttl[key]
    if ttl then redis.call('PEXPIRE', key, string.format('%d', ttl)) end
  end
  hc_order, hc_dirty = {}, {}
end
