//! In-process costs of the rules engine (LIMITS.md) per request: parsing a
//! rules file, planning the rule calls of one claim, block-list lookups, the
//! shield, and the RateLimit header values. The Redis side (one more
//! EVALSHA per claim) is measured with wrk (docs/benchmarks.md, "Rules
//! engine").

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use stampede::domain::identity::{ClientIp, DeviceId, Phone, Pseudonymizer};
use stampede::domain::limits::{self, Endpoint, RuleSet};
use stampede::domain::ratelimit::RateState;
use stampede::guard::rules::{Subject, by_slot, plan};
use stampede::guard::shield::Shield;

/// The example of LIMITS.md, verbatim.
const EXAMPLE: &str = r#"[defaults]
ipv6_prefix = 64                                   # IPv6 clients are counted per /64
trusted_proxies = ["127.0.0.1/32", "10.0.0.0/8"]   # X-Forwarded-For is believed only from these

[shield]                   # in-process per-IP limiter (governor), before anything else; no Redis
per_second = 50            # sustained requests per second per client IP (IPv6: per prefix)
burst = 100                # bucket size; 0, or no [shield] table, turns the shield off

[[rule]]
name = "ip-claim-burst"    # shown in 429 bodies (`limit`), RateLimit headers, metrics, audit
endpoint = "claim"         # claim | redeem | validate | any (default any)
campaign = "double11-*"    # optional glob on campaign id
key = ["ip"]               # any of ip, phone, device, user, campaign; several = one composite key
limit = 20
window = "1m"              # sliding window: s, m, h, d
count = "requests"         # requests (default) | successes | failures
mode = "enforce"           # enforce (default) | shadow: never blocks, counts what it would have blocked
ban = { after = 3, duration = "10m", factor = 2, max = "24h" }  # optional: 3 violations => ban; each new ban x2, capped

[[rule]]
name = "device-farm"       # one device cycling through many phone numbers
endpoint = "claim"
key = ["device"]
distinct = "phone"         # counts distinct phones per device instead of requests
limit = 3
window = "24h"

[[rule]]
name = "code-guessing"     # someone walking the code space
endpoint = "redeem"
key = ["ip"]
count = "failures"         # only invalid_code / already_redeemed answers count
limit = 10
window = "10m"
ban = { duration = "1h" }

[block]
phones  = ["+86170*", "+86171*"]   # E.164 prefixes ending in *, or whole numbers
ips     = ["203.0.113.0/24"]
devices = ["emulator-*"]

[allow]                             # never limited by rules (campaign quotas still apply)
ips = ["192.0.2.10/32"]
"#;

/// The three claim rules of `loadtest/limits-3rules.toml` (the wrk run).
const THREE_RULES: &str = r#"
[[rule]]
name = "ip-burst"
endpoint = "claim"
key = ["ip"]
limit = 100000000
window = "1m"

[[rule]]
name = "device-farm"
endpoint = "claim"
key = ["device"]
distinct = "phone"
limit = 3
window = "24h"

[[rule]]
name = "phone-rate"
endpoint = "claim"
key = ["phone"]
limit = 5
window = "1m"
"#;

/// Entries of each kind (phones, nets, devices) in the big block list.
const LIST_ENTRIES: u32 = 1_000;

/// A `[block]` table with `LIST_ENTRIES` phones (half whole numbers, half
/// prefixes), nets (IPv4 /32 and /24, IPv6 /64) and device globs (half
/// exact ids, half `prefix-*`).
fn big_block_list() -> String {
    let n = LIST_ENTRIES;
    let mut t = String::from("[block]\nphones = [\n");
    for i in 0..n / 2 {
        writeln!(t, "  \"+86139{:08}\",", i * 7919).expect("write");
        writeln!(t, "  \"+861{:05}*\",", 70_000 + i).expect("write");
    }
    t.push_str("]\nips = [\n");
    for i in 0..n {
        match i % 4 {
            0 | 1 => writeln!(
                t,
                "  \"198.{}.{}.{}/32\",",
                18 + i % 2,
                (i / 256) % 256,
                i % 256
            ),
            2 => writeln!(t, "  \"100.{}.{}.0/24\",", 64 + (i / 256) % 64, i % 256),
            _ => writeln!(t, "  \"2001:db8:{:x}:{:x}::/64\",", i / 256, i % 256),
        }
        .expect("write");
    }
    t.push_str("]\ndevices = [\n");
    for i in 0..n / 2 {
        writeln!(t, "  \"farm-{i:06}\",").expect("write");
        writeln!(t, "  \"emu{i}-*\",").expect("write");
    }
    t.push_str("]\n");
    t
}

fn parsing(c: &mut Criterion) {
    c.bench_function("rules/parse_limits_md_example", |b| {
        b.iter(|| RuleSet::parse(black_box(EXAMPLE)))
    });
    c.bench_function("rules/parse_3_rules", |b| {
        b.iter(|| RuleSet::parse(black_box(THREE_RULES)))
    });
    let big = big_block_list();
    c.bench_function("rules/parse_block_list_3x1000", |b| {
        b.iter(|| RuleSet::parse(black_box(&big)))
    });
}

fn planning(c: &mut Criterion) {
    let set = RuleSet::parse(THREE_RULES).expect("three rules");
    let ids = Pseudonymizer::new([9; 32]);
    let phone = Phone::parse("13800138000", phonenumber::country::Id::CN).expect("phone");
    let device = DeviceId::parse("ios-3f2a9c").expect("device");
    let ip = ClientIp::new("198.51.100.7".parse().expect("ip"), 64);
    let subject = Subject {
        campaign: Some("bench".into()),
        ip: Some(ids.ip(&ip)),
        phone: Some(ids.phone(&phone)),
        device: Some(ids.device(&device)),
        user: None,
    };
    assert_eq!(plan(&set, Endpoint::Claim, &subject, 1).len(), 3);
    c.bench_function("rules/plan_3_rules", |b| {
        b.iter(|| plan(black_box(&set), Endpoint::Claim, black_box(&subject), 1))
    });
    c.bench_function("rules/plan+by_slot_3_rules", |b| {
        b.iter(|| {
            let planned = plan(black_box(&set), Endpoint::Claim, black_box(&subject), 1);
            by_slot(&planned, false).len()
        })
    });
    c.bench_function("rules/plan+by_slot_3_rules_cluster", |b| {
        b.iter(|| {
            let planned = plan(
                black_box(&set),
                Endpoint::Claim,
                black_box(&subject),
                stampede::store::keys::RULE_SHARDS,
            );
            by_slot(&planned, true).len()
        })
    });
    // What `Guard::check` does around `plan` on every claim: the subject is
    // built from the request's pseudonyms (clones).
    c.bench_function("rules/subject+plan+by_slot_3_rules", |b| {
        b.iter(|| {
            let s = Subject {
                campaign: Some(black_box("bench").to_owned()),
                ip: subject.ip.clone(),
                phone: subject.phone.clone(),
                device: subject.device.clone(),
                user: None,
            };
            let planned = plan(black_box(&set), Endpoint::Claim, &s, 1);
            by_slot(&planned, false).len()
        })
    });
}

fn lists(c: &mut Criterion) {
    let set = RuleSet::parse(&big_block_list()).expect("block list");
    let block = &set.block;
    let ip_miss: IpAddr = "198.51.100.7".parse().expect("ip");
    let ip_hit: IpAddr = "100.65.10.42".parse().expect("ip");
    let ip6_miss: IpAddr = "2001:db8:ffff:1::7".parse().expect("ip");
    assert!(block.has_ip(ip_hit) && !block.has_ip(ip_miss) && !block.has_ip(ip6_miss));
    let phone_miss = "+8613800138000";
    let phone_hit = "+8617012345678";
    assert!(block.has_phone(phone_hit) && !block.has_phone(phone_miss));
    let device_miss = "ios-3f2a9c";
    let device_hit = "emu499-abc";
    assert!(block.has_device(device_hit) && !block.has_device(device_miss));

    c.bench_function("lists/has_ip_miss", |b| {
        b.iter(|| block.has_ip(black_box(ip_miss)))
    });
    c.bench_function("lists/has_ip_hit", |b| {
        b.iter(|| block.has_ip(black_box(ip_hit)))
    });
    c.bench_function("lists/has_ip_v6_miss", |b| {
        b.iter(|| block.has_ip(black_box(ip6_miss)))
    });
    c.bench_function("lists/has_phone_miss", |b| {
        b.iter(|| block.has_phone(black_box(phone_miss)))
    });
    c.bench_function("lists/has_phone_hit", |b| {
        b.iter(|| block.has_phone(black_box(phone_hit)))
    });
    c.bench_function("lists/has_device_miss", |b| {
        b.iter(|| block.has_device(black_box(device_miss)))
    });
    c.bench_function("lists/has_device_hit", |b| {
        b.iter(|| block.has_device(black_box(device_hit)))
    });
    // A claim that is on no list: the three lookups `Guard::check` makes.
    c.bench_function("lists/claim_all_three_miss", |b| {
        b.iter(|| {
            block.has_ip(black_box(ip_miss))
                || block.has_phone(black_box(phone_miss))
                || block.has_device(black_box(device_miss))
        })
    });
}

fn shield(c: &mut Criterion) {
    let addr: IpAddr = "198.51.100.7".parse().expect("ip");
    // A quota one address never exhausts: the admitted path.
    let open = Shield::new(limits::Shield {
        per_second: u32::MAX,
        burst: u32::MAX,
    })
    .expect("shield");
    c.bench_function("shield/admit", |b| b.iter(|| open.admit(black_box(addr))));
    // One request per second from one address: almost every call is refused
    // and builds the RateLimit state of the 429.
    let tight = Shield::new(limits::Shield {
        per_second: 1,
        burst: 1,
    })
    .expect("shield");
    let _ = tight.admit(addr);
    c.bench_function("shield/refuse", |b| b.iter(|| tight.admit(black_box(addr))));
}

fn headers(c: &mut Criterion) {
    let state = RateState {
        policy: "phone-rate".into(),
        quota: 5,
        window_secs: 60,
        remaining: 4,
        reset_secs: 0,
    };
    c.bench_function("ratelimit/policy_header", |b| {
        b.iter(|| black_box(&state).policy_header())
    });
    c.bench_function("ratelimit/limit_header", |b| {
        b.iter(|| black_box(&state).limit_header())
    });
}

criterion_group!(benches, parsing, planning, lists, shield, headers);
criterion_main!(benches);
