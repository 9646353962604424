//! Tests of what the model answers on a request path: ban lengths, which
//! rules apply, list lookups, and the words of the file.

use std::net::IpAddr;

use super::test_support::{EXAMPLE, rule_with};
use super::*;

#[test]
fn ban_durations_grow_and_are_capped() {
    let policy = BanPolicy {
        after: 3,
        duration_ms: 10 * 60_000,
        factor: 2,
        max_ms: Some(24 * 3_600_000),
    };
    let minutes: Vec<u64> = (1..=9).map(|l| policy.duration_for(l) / 60_000).collect();
    assert_eq!(minutes, [10, 20, 40, 80, 160, 320, 640, 1280, 1440]);
    assert_eq!(policy.duration_for(0), 10 * 60_000);
    assert_eq!(policy.duration_for(1000), 24 * 3_600_000);
    assert_eq!(policy.duration_for(u32::MAX), 24 * 3_600_000);

    let uncapped = BanPolicy {
        max_ms: None,
        factor: u32::MAX,
        ..policy.clone()
    };
    assert_eq!(uncapped.duration_for(1000), u64::MAX);
    let flat = BanPolicy {
        factor: 1,
        max_ms: None,
        ..policy
    };
    assert_eq!(flat.duration_for(1000), 10 * 60_000);
}

#[test]
fn rules_apply_by_endpoint_and_campaign() {
    let set = RuleSet::parse(EXAMPLE).unwrap();
    let burst = set.rule("ip-claim-burst").unwrap();
    assert!(burst.applies(Endpoint::Claim, Some("double11-shoes")));
    assert!(!burst.applies(Endpoint::Claim, Some("618-shoes")));
    assert!(!burst.applies(Endpoint::Redeem, Some("double11-shoes")));
    // An unknown campaign (a forged code) is not caught by a glob rule.
    assert!(!burst.applies(Endpoint::Claim, None));

    let farm = set.rule("device-farm").unwrap();
    assert!(farm.applies(Endpoint::Claim, None));
    assert!(farm.applies(Endpoint::Claim, Some("anything")));
    assert!(!farm.applies(Endpoint::Validate, None));

    let any = RuleSet::parse(&rule_with("")).unwrap();
    let any = &any.rules[0];
    for endpoint in [
        Endpoint::Claim,
        Endpoint::Redeem,
        Endpoint::Validate,
        Endpoint::Any,
    ] {
        assert!(any.applies(endpoint, None));
        assert!(any.applies(endpoint, Some("c1")));
    }
}

#[test]
fn block_lists_match_phones_ips_and_devices() {
    let set = RuleSet::parse(
        "[block]\n\
         phones = [\"+86170*\", \"+8613800138000\"]\n\
         ips = [\"203.0.113.0/24\", \"2001:db8::/32\", \"198.51.100.7\", \"10.9.8.7/8\"]\n\
         devices = [\"emulator-*\", \"bad?\"]\n",
    )
    .unwrap();
    let block = &set.block;

    assert!(block.has_phone("+8617012345678"));
    assert!(block.has_phone("+86170"));
    assert!(!block.has_phone("+8617112345678"));
    assert!(!block.has_phone("+8617"));
    assert!(block.has_phone("+8613800138000"));
    assert!(
        !block.has_phone("+86138001380001"),
        "an exact number is not a prefix"
    );
    assert!(!block.has_phone("+861380013800"));
    assert!(!block.has_phone(""));

    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(block.has_ip(ip("203.0.113.0")));
    assert!(block.has_ip(ip("203.0.113.255")));
    assert!(!block.has_ip(ip("203.0.114.1")));
    assert!(block.has_ip(ip("198.51.100.7")));
    assert!(!block.has_ip(ip("198.51.100.8")));
    assert!(
        block.has_ip(ip("10.200.0.1")),
        "host bits in the CIDR are ignored"
    );
    assert!(block.has_ip(ip("2001:db8:1::5")));
    assert!(!block.has_ip(ip("2001:db9::5")));
    assert!(block.has_ip(ip("::ffff:203.0.113.9")), "IPv4-mapped");
    assert!(!block.has_ip(ip("::ffff:203.0.114.9")));
    assert!(
        !block.has_ip(ip("::203.0.113.9")),
        "IPv4-compatible is not mapped"
    );
    assert_eq!(
        block.ip_nets(),
        [
            "203.0.113.0/24",
            "2001:db8::/32",
            "198.51.100.7/32",
            "10.9.8.7/8"
        ]
    );

    assert!(block.has_device("emulator-5554"));
    assert!(block.has_device("emulator-"));
    assert!(!block.has_device("Emulator-5554"), "case-sensitive");
    assert!(!block.has_device("my-emulator-1"));
    assert!(block.has_device("bad1"));
    assert!(!block.has_device("bad12"));

    let mapped = RuleSet::parse("[allow]\nips = [\"::ffff:0:0/96\"]\n").unwrap();
    assert!(mapped.allow.has_ip(ip("::ffff:1.2.3.4")));
    assert!(!mapped.allow.has_ip(ip("1.2.3.4")));

    let empty = IdentityList::default();
    assert!(empty.is_empty());
    assert!(!empty.has_phone("+1"));
    assert!(!empty.has_ip(ip("1.2.3.4")));
    assert!(!empty.has_device("x"));
}

#[test]
fn words_round_trip() {
    for e in [
        Endpoint::Claim,
        Endpoint::Redeem,
        Endpoint::Validate,
        Endpoint::Any,
    ] {
        assert_eq!(Endpoint::parse(e.as_str()), Some(e));
    }
    for k in [
        KeyPart::Ip,
        KeyPart::Phone,
        KeyPart::Device,
        KeyPart::User,
        KeyPart::Campaign,
    ] {
        assert_eq!(KeyPart::parse(k.as_str()), Some(k));
    }
    for b in [BanKind::Phone, BanKind::Device, BanKind::Ip] {
        assert_eq!(BanKind::parse(b.as_str()), Some(b));
    }
    assert_eq!(BanKind::parse("user"), None);
    for c in [Count::Requests, Count::Successes, Count::Failures] {
        assert_eq!(Count::parse(c.as_str()), Some(c));
    }
    for m in [Mode::Enforce, Mode::Shadow] {
        assert_eq!(Mode::parse(m.as_str()), Some(m));
    }
}
