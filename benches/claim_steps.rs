//! Every in-process step of one claim, in the order the handler runs them
//! (docs/benchmarks.md, "Where a claim spends its time"): the body, the
//! command, the sold-out memory, the pseudonyms, the idempotency digest, the
//! script's keys and arguments, the code, and the answer (201 JSON, or a
//! problem+json refusal). The Redis round trip is measured with wrk.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use actix_web::ResponseError;
use criterion::{Criterion, criterion_group, criterion_main};
use stampede::domain::campaign::{CampaignId, Coupon};
use stampede::domain::code::{CodeKey, CodePayload};
use stampede::domain::identity::{ClientIp, Pseudonymizer};
use stampede::domain::secret::Secret;
use stampede::error::ApiError;
use stampede::http::body::parse_json;
use stampede::http::wire::{ClaimRequest, ClaimResponse};
use stampede::service::claims::{Issued, rollout_bucket};
use stampede::service::idempotency::{IdemTtls, Idempotency};
use stampede::service::soldout::SoldOut;
use stampede::store::keys::{self, CampaignKeys};

const BODY: &[u8] = br#"{"phone": "+8613800138000", "device_id": "ios-3f2a9c"}"#;
const CN: phonenumber::country::Id = phonenumber::country::Id::CN;

fn steps(c: &mut Criterion) {
    let mut g = c.benchmark_group("claim_step");
    // 1. The body and the command (phone normalized, ids checked).
    g.bench_function("1_body_json", |b| {
        b.iter(|| parse_json::<ClaimRequest>(black_box(BODY), 16))
    });
    let req: ClaimRequest = parse_json(BODY, 16).expect("body");
    g.bench_function("2_command", |b| {
        b.iter(|| black_box(req.clone()).parse("double11", CN))
    });
    let cmd = req.clone().parse("double11", CN).expect("command");

    // 2. The sold-out memory: a miss (the sale runs) and a hit (sold out).
    let soldout = SoldOut::default();
    soldout.remember("gone", None, None, (Instant::now(), 0));
    g.bench_function("3_soldout_miss", |b| {
        b.iter(|| soldout.check(black_box("double11"), (Instant::now(), 0)))
    });
    g.bench_function("3_soldout_hit", |b| {
        b.iter(|| soldout.check(black_box("gone"), (Instant::now(), 0)))
    });

    // 3. Pseudonyms (HMAC-SHA-256 each) and their short, bucketed forms.
    let ids = Pseudonymizer::new([9; 32]);
    let ip = ClientIp::new(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 64);
    g.bench_function("4_pseudonyms_x3", |b| {
        b.iter(|| {
            (
                ids.phone(black_box(&cmd.phone)),
                ids.device(black_box(&cmd.device)),
                ids.ip(black_box(&ip)),
            )
        })
    });
    let (p, d, i) = (ids.phone(&cmd.phone), ids.device(&cmd.device), ids.ip(&ip));
    g.bench_function("5_short_and_buckets_x3", |b| {
        b.iter(|| {
            (
                keys::short(black_box(&p)),
                keys::short(black_box(&d)),
                keys::short(black_box(&i)),
                keys::quota_bucket(&p, 64),
                keys::quota_bucket(&d, 64),
                keys::quota_bucket(&i, 64),
                rollout_bucket(&p),
            )
        })
    });

    // 4. The idempotency fingerprint (one more HMAC).
    let secret = Secret::new(vec![3u8; 32]).expect("secret");
    let idem = Idempotency::new(
        &secret,
        IdemTtls {
            client_secs: 86_400,
            server_secs: 60,
        },
    );
    g.bench_function("6_idempotency_digest", |b| {
        b.iter(|| {
            idem.digest(&[
                b"claim",
                cmd.campaign.as_str().as_bytes(),
                cmd.phone.as_e164().as_bytes(),
                cmd.device.as_str().as_bytes(),
                b"",
                b"",
            ])
        })
    });

    // 5. The script's keys and arguments: a claim names its campaign's lane
    // and its own four keys (the campaign's shared keys are named only by
    // the claim that starts a flusher); its numbers are printed straight
    // into the call (store::claims::ClaimArgs), as here into a `Cmd`.
    let id = CampaignId::parse("double11").expect("id");
    // (The call itself is made once a batch: not measured here, only what
    // a claim adds to it.)
    g.bench_function("7_script_keys_and_args", |b| {
        b.iter_batched_ref(
            || redis::Cmd::with_capacity(64, 4096),
            |cmd| {
                let k = CampaignKeys::new(black_box(&id));
                let keys = [
                    k.meta(),
                    k.quota_phone(3),
                    k.quota_device(17),
                    k.quota_ip(40),
                    k.request_ids(1_767_000_000),
                ];
                for key in &keys[1..] {
                    cmd.arg(key);
                }
                cmd.arg(1_767_000_000_123i64)
                    .arg("s")
                    .arg(7u8)
                    .arg("")
                    .arg(1_767_000_000_999i64)
                    .arg(3usize)
                    .arg("0f3a9c2e11d4b7a8");
                keys
            },
            criterion::BatchSize::SmallInput,
        )
    });

    // 6. The code for the serial the script handed out.
    let codes = CodeKey::new([7; 32]);
    let payload = CodePayload {
        campaign_no: 42,
        serial: 1_234_567,
    };
    g.bench_function("8_code_mint", |b| b.iter(|| codes.mint(black_box(payload))));

    // 7. The answer: 201 JSON, or the sold-out problem+json.
    let issued = Issued {
        code: codes.mint(payload).expect("mint"),
        campaign_id: "double11".into(),
        claimed_ms: 1_767_000_000_123,
        expires_ms: 1_767_600_000_123,
        coupon: Coupon::AmountOff {
            amount_off: 2000,
            min_order_amount: Some(20000),
        },
    };
    g.bench_function("9_response_json", |b| {
        b.iter(|| serde_json::to_vec(&ClaimResponse::from(black_box(issued.clone()))))
    });
    g.bench_function("9_sold_out_problem", |b| {
        b.iter(|| ApiError::SoldOut(black_box("double11").into()).error_response())
    });
    g.finish();
}

criterion_group!(benches, steps);
criterion_main!(benches);
