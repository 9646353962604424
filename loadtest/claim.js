// k6 load test of the claim path: a flash sale ramping to STAMPEDE_VUS
// virtual users, each claiming with fresh identities. A 201 (issued), a 409
// (sold out) and a 429 (quota) are business answers, not failures; anything
// else (5xx, 400, transport errors) fails the run.
//
//   k6 run -e BASE=http://127.0.0.1:8080 -e CAMPAIGN=bench loadtest/claim.js
//
// Options: -e STAMPEDE_VUS=64 -e RAMP=5s -e HOLD=15s -e PREFIX=139 (the
// mobile prefix; phones are PREFIX + 8 digits from VU and iteration, so a
// second run against a campaign with per-phone limits needs another PREFIX
// or a fresh campaign). With an API key set, pass -e TOKEN=<client key>.
// Create the campaign first (see docs/benchmarks.md).
import http from "k6/http";
import { check } from "k6";
import { Counter } from "k6/metrics";

const BASE = __ENV.BASE || "http://127.0.0.1:8080";
const CAMPAIGN = __ENV.CAMPAIGN || "bench";
const VUS = parseInt(__ENV.STAMPEDE_VUS || "64");
const PREFIX = __ENV.PREFIX || "139";
const issued = new Counter("coupons_issued");
const refused = new Counter("claims_refused");

// 201, 409 and 429 are expected: they do not count in http_req_failed.
http.setResponseCallback(http.expectedStatuses(201, 409, 429));

export const options = {
  scenarios: {
    flash_sale: {
      executor: "ramping-vus",
      startVUs: 1,
      stages: [
        { duration: __ENV.RAMP || "5s", target: VUS },
        { duration: __ENV.HOLD || "15s", target: VUS },
        { duration: "2s", target: 0 },
      ],
      gracefulRampDown: "2s",
    },
  },
  thresholds: {
    // Transport errors and statuses other than 201/409/429.
    http_req_failed: ["rate==0"],
    "checks{kind:answer}": ["rate==1"],
    http_req_duration: ["p(99)<1000"],
  },
};

// One id per test run (setup runs once), so idempotency keys never replay
// a previous run's answers.
export function setup() {
  return { run: Date.now().toString(36) };
}

export default function (data) {
  // VU (<= 99) x 1M iterations stay inside 8 digits: every claim is a new phone.
  const n = __VU * 1000000 + __ITER;
  const phone = "+86" + PREFIX + String(n % 100000000).padStart(8, "0");
  const key = `k6-${data.run}-${__VU}-${__ITER}`;
  const headers = { "Content-Type": "application/json", "Idempotency-Key": key };
  if (__ENV.TOKEN) headers["Authorization"] = `Bearer ${__ENV.TOKEN}`;
  const res = http.post(
    `${BASE}/v1/campaigns/${CAMPAIGN}/claims`,
    JSON.stringify({ phone, device_id: key }),
    { headers },
  );
  if (res.status === 201) issued.add(1);
  else refused.add(1);
  check(res, { "201, 409 or 429": (r) => [201, 409, 429].includes(r.status) }, { kind: "answer" });
}
