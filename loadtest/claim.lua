-- wrk script: every request claims with a new phone and a new device, so
-- each claim is a real issue (quota counters bumped, stock charged, code
-- minted). Works for stampede (/v1/campaigns/{id}/claims) and the yardstick
-- (/claim/{campaign}): the path comes from the URL given to wrk.
--
--   ROUND=1 wrk -t2 -c64 -d15s --latency -s loadtest/claim.lua URL
--
-- ROUND offsets phones and devices so successive runs use fresh identities.
-- No response() callback: it would run Lua per response and take CPU from
-- the service on a small machine. done() prints the non-2xx/3xx count.
local threads = 0
round = tonumber(os.getenv("ROUND") or "0")
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

local n = 0
function request()
  n = n + 1
  local phone = string.format("+86138%08d", ((round * 2 + tid) * 12000000 + n) % 100000000)
  local body = string.format('{"phone":"%s","device_id":"dev-%d-%d-%d"}', phone, round, tid, n)
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
end

function done(summary, latency, requests)
  io.write(string.format("non-2xx/3xx responses: %d, socket errors: %d/%d/%d/%d\n",
    summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout))
end
