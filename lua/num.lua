--[[ num.lua: strict integers for the scripts that increment counters. Not
a script of its own: store::scripts prepends it to redeem.lua,
rollback.lua, void_claim.lua, transition.lua, patch_campaign.lua and
ban.lua. It only defines a local.

Why: Lua's tonumber also reads '1.5', ' 2', '0x10', '1e3', 'nan' and 'inf',
which HINCRBY refuses. A script that checked a counter with tonumber and
then wrote something before its HINCRBY failed half-way on a counter
corrupted by hand. `counter` reads a counter as HINCRBY does, before any
write.
]]

-- A stored counter: 0 when absent, nil when it is not an integer that
-- HINCRBY can add to (at most 18 digits: adding one cannot overflow).
local function counter(v)
  if not v then return 0 end
  local digits = string.match(v, '^%-?(%d+)$')
  if not digits or #digits > 18 then return nil end
  return tonumber(v)
end
