//! Leases of a hot rule key's units (`guard::lease`): a requests rule with
//! a large limit charges a few units at a time and the instance hands the
//! spare ones out without Redis; never past the limit, every request
//! counted in its own bucket.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

/// The script's side, through `rules.lua` (the claim script runs the same
/// engine): a lease is charged whole while it fits, then one unit a
/// request, then the rule refuses at its limit, never past it.
#[tokio::test]
async fn a_lease_is_charged_whole_while_it_fits_and_never_past_the_limit() {
    use stampede::domain::clock::Clock;
    use stampede::store::Store;
    use stampede::store::keys;
    use stampede::store::rules::{RuleCall, RuleStatus};
    let app = spawn_app().await;
    let store = Store::open(&app.store_url(), Duration::from_secs(2)).unwrap();
    let digest = "0123456789abcdef0123456789abcdef";
    let rule = RuleCall {
        lease: 30,
        ..RuleCall::requests(
            keys::rule(digest, "lease-probe", keys::RULE_SHARDS),
            digest.into(),
            100,
            3_600_000,
        )
    };
    let now = app.clock.now_ms();
    let mut seen = Vec::new();
    for _ in 0..14 {
        let r = store
            .check_rules(now, std::slice::from_ref(&rule))
            .await
            .unwrap();
        seen.push((r[0].status, r[0].leased, r[0].remaining));
    }
    let mut want = vec![
        (RuleStatus::Ok, true, 70),
        (RuleStatus::Ok, true, 40),
        (RuleStatus::Ok, true, 10),
    ];
    // 90 charged: 30 more do not fit, so one a request up to the limit.
    want.extend((0..10).map(|i| (RuleStatus::Ok, false, 9 - i)));
    want.push((RuleStatus::Over, false, 0));
    assert_eq!(seen, want);
    app.stop().await;
}

/// The service's side: 100 claims from one address under a rule of
/// 100,000 an hour (leases of 97 units) take that rule to Redis twice;
/// each is answered with its RateLimit headers and counted in the metrics,
/// and Redis holds whole leases, less than two of them unspent.
#[tokio::test]
async fn a_hot_rule_key_is_served_from_its_lease() {
    crate::single_node_only!("reads the rule's epoch hash by hand");
    let (app, _f) = spawn_app_with_rules(
        "[[rule]]\nname = \"hot-lease\"\nendpoint = \"claim\"\nkey = [\"ip\"]\nlimit = 100000\nwindow = \"1h\"\n",
        |_| {},
    )
    .await;
    let c = app.create_campaign(json!({"stock": 1000})).await;
    for i in 0..100 {
        let res = app.claim(&c, &phone(i), &format!("d{i}")).await;
        assert_eq!(res.status(), 201);
        let rl = header(&res, "ratelimit");
        let r: u64 = rl
            .strip_prefix(r#""hot-lease";r="#)
            .and_then(|s| s.split(';').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("claim {i}: {rl}"));
        // What is left counts this instance's spare units as unused; a
        // request that asked a lease sees it counted whole.
        let exact = 100_000 - (i as u64 + 1);
        assert!(r <= exact && r + 2 * 97 >= exact, "claim {i}: {rl}");
    }
    let m = app.metrics().await;
    let allowed = r#"stampede_rule_decisions_total{rule="hot-lease",decision="allowed"}"#;
    assert_eq!(counter(&m, allowed), 100.0, "every claim counted");
    // The decisions that did not happen are shown, at 0.
    let limited = r#"stampede_rule_decisions_total{rule="hot-lease",decision="limited"} 0"#;
    assert!(m.lines().any(|l| l == limited), "{m}");
    // Sequential claims: each lease is asked by one claim and granted.
    let event = |e: &str| {
        counter(
            &m,
            &format!(r#"stampede_rule_lease_events_total{{rule="hot-lease",event="{e}"}}"#),
        )
    };
    assert_eq!(
        (event("asked"), event("granted"), event("plain")),
        (2.0, 2.0, 0.0),
        "{m}"
    );
    let mut conn = app.redis().conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("st:{r:*:hot-lease:e:*")
        .query(&mut conn)
        .unwrap();
    let mut total = 0u64;
    for k in &keys {
        let values: Vec<String> = redis::cmd("HVALS").arg(k).query(&mut conn).unwrap();
        for v in values {
            total += v.split(';').next().unwrap().parse::<u64>().unwrap();
        }
    }
    assert!(
        total.is_multiple_of(97) && (100..100 + 2 * 97).contains(&total),
        "charged {total} for 100 claims in leases of 97 ({keys:?})"
    );
    app.stop().await;
}
