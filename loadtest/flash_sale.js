// k6 flash-sale scenario: a quiet start, a ramp, then a spike far above the
// stock, from a crowd of honest phones, some repeat offenders who keep
// trying after their coupon, and one device farm (many phones, a handful of
// devices). Every coupon a client receives is written to a ledger (a Redis
// set on loopback), so two clients given the same code are caught the
// moment it happens; the teardown checks issued <= stock and that every
// issued code reached exactly one client.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e LEDGER_URL=redis://127.0.0.1:6379 \
//     loadtest/flash_sale.js
//
// Env: BASE_URL (the service), LEDGER_URL (any Redis that is not needed for
// anything else; one key `k6:ledger:<campaign>` is written), STOCK (5000),
// PEAK (the spike's virtual users, 200), TOKEN / ADMIN_TOKEN (API keys, when
// the service has keys). 201, 409 and 429 are business answers; 403 is a
// ban or block (the device farm earns them when a rules file bans it);
// anything else fails the run.
import http from "k6/http";
import redis from "k6/experimental/redis";
import { check, fail } from "k6";
import { Counter, Rate } from "k6/metrics";
import exec from "k6/execution";

const BASE = __ENV.BASE_URL || "http://127.0.0.1:8080";
const STOCK = parseInt(__ENV.STOCK || "5000");
const PEAK = parseInt(__ENV.PEAK || "200");
const CAMPAIGN = __ENV.CAMPAIGN || `flash-${Date.now().toString(36)}`;
const ledger = new redis.Client(__ENV.LEDGER_URL || "redis://127.0.0.1:6379");
const LEDGER = `k6:ledger:${CAMPAIGN}`;

const issued = new Counter("coupons_issued");
const duplicates = new Counter("duplicate_codes");
const unexpected = new Rate("unexpected_answers");
const offenderRepeats = new Counter("offender_repeats_issued");

http.setResponseCallback(http.expectedStatuses(201, 403, 409, 429));

function headers(token) {
  const h = { "content-type": "application/json" };
  if (token) h.authorization = `Bearer ${token}`;
  return h;
}

export const options = {
  scenarios: {
    crowd: {
      executor: "ramping-arrival-rate",
      startRate: 50,
      timeUnit: "1s",
      preAllocatedVUs: PEAK,
      maxVUs: PEAK * 2,
      stages: [
        { duration: "5s", target: 200 }, // the page opens
        { duration: "5s", target: 2000 }, // the ramp
        { duration: "10s", target: 8000 }, // the spike: far above the stock
        { duration: "5s", target: 500 }, // sold out, the crowd keeps trying
      ],
      exec: "crowd",
    },
    offenders: {
      executor: "constant-vus",
      vus: 10,
      duration: "25s",
      exec: "offender",
    },
    farm: {
      executor: "constant-arrival-rate",
      rate: 200,
      timeUnit: "1s",
      duration: "25s",
      preAllocatedVUs: 20,
      exec: "farm",
    },
  },
  thresholds: {
    // Nothing but business answers.
    unexpected_answers: ["rate==0"],
    http_req_failed: ["rate<0.001"],
    // Never two clients with one code.
    duplicate_codes: ["count==0"],
    // A repeat offender never gets a second coupon (per_phone 1).
    offender_repeats_issued: ["count==0"],
    // Latency of every answer, the spike included.
    http_req_duration: ["p(99)<250"],
  },
};

export function setup() {
  const res = http.post(
    `${BASE}/v1/campaigns`,
    JSON.stringify({
      id: CAMPAIGN,
      name: "k6 flash sale",
      stock: STOCK,
      limits: { per_phone: 1, per_device: 2 },
      coupon: { kind: "amount_off", amount_off: 2000, min_order_amount: 20000 },
    }),
    { headers: headers(__ENV.ADMIN_TOKEN || __ENV.TOKEN) },
  );
  if (res.status !== 201) fail(`creating the campaign: ${res.status} ${res.body}`);
  return { campaign: CAMPAIGN };
}

async function claim(campaign, phone, device, ip) {
  const h = headers(__ENV.TOKEN);
  h["x-forwarded-for"] = ip;
  const res = http.post(
    `${BASE}/v1/campaigns/${campaign}/claims`,
    JSON.stringify({ phone, device_id: device }),
    { headers: h, tags: { name: "claim" } },
  );
  const ok = [201, 403, 409, 429].includes(res.status);
  unexpected.add(!ok);
  check(res, { "a business answer": () => ok });
  if (res.status === 201) {
    issued.add(1);
    const code = res.json("code");
    // SADD answers 0 when the code is in the ledger already: a duplicate.
    if ((await ledger.sadd(LEDGER, code)) === 0) duplicates.add(1);
  }
  return res.status;
}

const pad = (n, w) => String(n).padStart(w, "0");

// Honest phones: every iteration is a new phone on its own device.
export async function crowd(data) {
  const i = exec.scenario.iterationInTest;
  await claim(data.campaign, `+86138${pad(i, 8)}`, `crowd-${i}`, `10.1.${(i >> 8) & 255}.${i & 255}`);
}

// Repeat offenders: ten phones that keep claiming after their coupon (each
// VU runs its own copy of this module, so this flag is the VU's own).
let gotCoupon = false;
export async function offender(data) {
  const vu = exec.vu.idInTest;
  const phone = `+86137${pad(vu, 8)}`;
  const status = await claim(data.campaign, phone, `offender-${vu}`, `10.2.0.${vu & 255}`);
  if (status === 201) {
    if (gotCoupon) offenderRepeats.add(1);
    gotCoupon = true;
  }
}

// The device farm: a new phone on every request, five devices, one subnet.
export async function farm(data) {
  const i = exec.scenario.iterationInTest;
  await claim(data.campaign, `+86136${pad(i, 8)}`, `farm-${i % 5}`, `10.3.0.${i % 5}`);
}

export async function teardown(data) {
  const res = http.get(`${BASE}/v1/campaigns/${data.campaign}`, {
    headers: headers(__ENV.ADMIN_TOKEN || __ENV.TOKEN),
  });
  const c = res.json();
  const received = await ledger.scard(LEDGER);
  console.log(`stock ${STOCK}, issued ${c.issued}, distinct codes received ${received}`);
  if (!(c.issued <= STOCK)) fail(`over-issued: ${c.issued} > ${STOCK}`);
  if (c.issued + c.remaining !== STOCK) fail(`books: issued ${c.issued} + remaining ${c.remaining} != ${STOCK}`);
  if (received !== c.issued) fail(`issued ${c.issued} but clients received ${received} distinct codes`);
  await ledger.del(LEDGER);
}
