-- A sold-out flood with one fixed claim body: wrk builds the request once,
-- as it does for the bare hello it is compared with (loadtest/claim.lua
-- formats a new phone per request, which costs wrk CPU on these shared
-- cores). The sold-out answer does not depend on the phone.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"phone":"+8613800138000","device_id":"flood-device"}'

function done(summary, latency, requests)
  io.write(string.format("non-2xx/3xx responses: %d, socket errors: %d/%d/%d/%d\n",
    summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout))
end
