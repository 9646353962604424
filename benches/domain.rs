//! In-process costs on the claim and redeem paths: code mint/verify, phone
//! normalization, pseudonymization, JSON body checks. The whole-service
//! throughput is measured with wrk/k6 (docs/benchmarks.md).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use stampede::domain::code::{CodeKey, CodePayload};
use stampede::domain::identity::{DeviceId, Phone, Pseudonymizer};
use stampede::http::body::parse_json;
use stampede::http::wire::ClaimRequest;

fn codes(c: &mut Criterion) {
    let key = CodeKey::new([7; 32]);
    let p = CodePayload {
        campaign_no: 42,
        serial: 1_234_567,
    };
    let code = key.mint(p).expect("mint");
    c.bench_function("code/mint", |b| b.iter(|| key.mint(black_box(p))));
    c.bench_function("code/verify", |b| b.iter(|| key.verify(black_box(&code))));
    c.bench_function("code/verify_forged", |b| {
        b.iter(|| key.verify(black_box("0000000000000000aa")))
    });
}

fn identities(c: &mut Criterion) {
    let ids = Pseudonymizer::new([9; 32]);
    c.bench_function("phone/parse_national", |b| {
        b.iter(|| Phone::parse(black_box("13800138000"), phonenumber::country::Id::CN))
    });
    c.bench_function("phone/parse_e164", |b| {
        b.iter(|| Phone::parse(black_box("+8613800138000"), phonenumber::country::Id::CN))
    });
    // The general path: libphonenumber's rules, no memo (a US number).
    c.bench_function("phone/parse_general", |b| {
        b.iter(|| Phone::parse(black_box("+1 650 253 0000"), phonenumber::country::Id::CN))
    });
    let phone = Phone::parse("13800138000", phonenumber::country::Id::CN).expect("phone");
    let device = DeviceId::parse("ios-3f2a9c").expect("device");
    c.bench_function("pseudonym/phone+device", |b| {
        b.iter(|| (ids.phone(black_box(&phone)), ids.device(black_box(&device))))
    });
}

fn bodies(c: &mut Criterion) {
    let body = br#"{"phone": "+8613800138000", "device_id": "ios-3f2a9c", "user_id": "u-1001", "channel": "miniapp"}"#;
    c.bench_function("json/claim_body", |b| {
        b.iter(|| parse_json::<ClaimRequest>(black_box(body), 16))
    });
}

criterion_group!(benches, codes, identities, bodies);
criterion_main!(benches);
