// k6 load test of the claim path: a flash sale ramping to STAMPEDE_VUS
// virtual users, each claiming with fresh identities. A 201 (issued), a 409
// (sold out) and a 429 (quota) are all correct answers; anything else (5xx,
// 400, transport errors) fails the run.
//
//   k6 run -e BASE=http://127.0.0.1:8080 -e CAMPAIGN=bench loadtest/claim.js
//
// Create the campaign first (see docs/benchmarks.md). With an API key set,
// pass -e TOKEN=<client key>.
import http from "k6/http";
import { check } from "k6";
import { Counter } from "k6/metrics";

const BASE = __ENV.BASE || "http://127.0.0.1:8080";
const CAMPAIGN = __ENV.CAMPAIGN || "bench";
const VUS = parseInt(__ENV.STAMPEDE_VUS || "64");
const issued = new Counter("coupons_issued");
const refused = new Counter("claims_refused");

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
    // Business refusals are answers, not failures.
    "checks{kind:answer}": ["rate==1"],
    http_req_duration: ["p(99)<1000"],
  },
};

export default function () {
  // 64 VUs x 1M iterations stay inside 8 digits: every claim is a new phone.
  const n = __VU * 1000000 + __ITER;
  const phone = "+86139" + String(n % 100000000).padStart(8, "0");
  const headers = { "Content-Type": "application/json", "Idempotency-Key": `k6-${__VU}-${__ITER}` };
  if (__ENV.TOKEN) headers["Authorization"] = `Bearer ${__ENV.TOKEN}`;
  const res = http.post(
    `${BASE}/v1/campaigns/${CAMPAIGN}/claims`,
    JSON.stringify({ phone, device_id: `k6-${__VU}-${__ITER}` }),
    { headers, responseCallback: http.expectedStatuses(201, 409, 429) },
  );
  if (res.status === 201) issued.add(1);
  else refused.add(1);
  check(res, { "201, 409 or 429": (r) => [201, 409, 429].includes(r.status) }, { kind: "answer" });
}
