use std::collections::{HashMap, HashSet};

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::*;

/// 1,200 racing claims on stock 100: exactly 100 codes, all unique, no phone
/// or device over its quota, books balanced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claims_never_over_issue_or_exceed_quotas() {
    crate::single_node_only!(
        "sums quota hashes by hand (cluster::racing_claims covers the cluster)"
    );
    let app = spawn_app().await;
    let id = app
        .create_campaign(json!({"stock": 100, "limits": {"per_phone": 1, "per_device": 2}}))
        .await;
    // 400 phones each try 3 times, from 300 devices (some shared).
    let attempts: Vec<(String, String)> = (0..1200)
        .map(|i| (phone(i % 400), format!("dev-{}", i % 300)))
        .collect();
    let results = join_all(attempts.iter().map(|(p, d)| {
        let app = &app;
        let id = &id;
        async move {
            let res = app.claim(id, p, d).await;
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            (p.clone(), d.clone(), status, body)
        }
    }))
    .await;

    let mut codes = HashSet::new();
    let mut per_phone: HashMap<String, u32> = HashMap::new();
    let mut per_device: HashMap<String, u32> = HashMap::new();
    let mut statuses: HashMap<u16, u32> = HashMap::new();
    for (p, d, status, body) in &results {
        *statuses.entry(*status).or_default() += 1;
        match status {
            201 => {
                assert!(
                    codes.insert(body["code"].as_str().unwrap().to_owned()),
                    "duplicate code"
                );
                *per_phone.entry(p.clone()).or_default() += 1;
                *per_device.entry(d.clone()).or_default() += 1;
            }
            409 => assert_eq!(body["code"], "sold_out"),
            429 => assert!(["per_phone", "per_device"].contains(&body["limit"].as_str().unwrap())),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(codes.len(), 100, "statuses: {statuses:?}");
    assert!(per_phone.values().all(|&n| n <= 1));
    assert!(per_device.values().all(|&n| n <= 2));
    let c = app.campaign(&id).await;
    assert_eq!(
        (c["issued"].as_i64(), c["remaining"].as_i64()),
        (Some(100), Some(0))
    );
    assert_eq!(c["status"], "sold_out");
    // Rejections charged nothing: the quota counters sum to the issued
    // count, and no count was left behind at 0.
    for kind in ["p", "d"] {
        assert_eq!(quota_counts(&app, &id, kind), (100, false), "q:{kind}");
    }
    app.stop().await;
}

/// The sum of every quota count of kind `kind` (p, d, i) of a campaign, and
/// whether any field holds 0 (a count taken back but left behind).
fn quota_counts(app: &TestApp, id: &str, kind: &str) -> (i64, bool) {
    let mut conn = app.redis().conn();
    let buckets: Vec<String> = redis::cmd("KEYS")
        .arg(format!("st:{{{id}}}:q:{kind}:*"))
        .query(&mut conn)
        .unwrap();
    let (mut sum, mut zero) = (0, false);
    for b in buckets {
        let counts: HashMap<String, i64> = redis::cmd("HGETALL").arg(&b).query(&mut conn).unwrap();
        zero |= counts.values().any(|&n| n == 0);
        sum += counts.values().sum::<i64>();
    }
    (sum, zero)
}

/// A claim refused by a campaign quota: 429 `limit_exceeded` naming it.
async fn refused_by_quota(res: reqwest::Response, limit: &str) {
    let v = assert_problem(res, 429, "limit_exceeded").await;
    assert_eq!(v["limit"], limit);
}

/// The three quotas refuse, and a claim one refuses leaves no count behind:
/// the phone's and the device's counts are added before the later quotas
/// are checked, and taken back whole.
#[tokio::test]
async fn quotas_refuse_and_a_refused_claim_leaves_no_count_behind() {
    let app = spawn_app().await;
    let id = app
        .create_campaign(json!({"limits": {"per_phone": 1, "per_device": 1, "per_ip": 2}}))
        .await;
    app.claim_code(&id, &phone(1), "dev-a").await;
    // Refused on the device: the phone's count is taken back...
    refused_by_quota(app.claim(&id, &phone(2), "dev-a").await, "per_device").await;
    // ...so the same phone claims from another device.
    app.claim_code(&id, &phone(2), "dev-b").await;
    // A third coupon from 127.0.0.1: neither the phone nor the device counts.
    refused_by_quota(app.claim(&id, &phone(3), "dev-c").await, "per_ip").await;
    // Refused on the phone: nothing counts either.
    refused_by_quota(app.claim(&id, &phone(1), "dev-d").await, "per_phone").await;
    assert_eq!(app.campaign(&id).await["issued"], 2);
    if !on_cluster() {
        for kind in ["p", "d", "i"] {
            assert_eq!(quota_counts(&app, &id, kind), (2, false), "q:{kind}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn one_person_in_any_phone_spelling_hits_the_per_phone_quota() {
    let app = spawn_app().await;
    let id = app
        .create_campaign(json!({"limits": {"per_phone": 1}}))
        .await;
    app.claim_code(&id, "13800138000", "d1").await;
    for spelling in ["+86 138 0013 8000", "+8613800138000"] {
        refused_by_quota(app.claim(&id, spelling, "d2").await, "per_phone").await;
    }
    app.stop().await;
}

#[tokio::test]
async fn claim_answer_has_the_contract_fields_and_window_is_enforced() {
    let app = spawn_app().await;
    let start = now() + time::Duration::hours(1);
    let fmt = &time::format_description::well_known::Rfc3339;
    let id = app
        .create_campaign(json!({
            "id": "later", "valid_for_days": 7,
            "starts_at": start.format(fmt).unwrap(),
            "ends_at": (start + time::Duration::hours(1)).format(fmt).unwrap(),
        }))
        .await;
    assert_eq!(app.campaign(&id).await["status"], "scheduled");
    assert_problem(
        app.claim(&id, &phone(1), "d").await,
        409,
        "campaign_not_active",
    )
    .await;

    app.clock.advance(time::Duration::minutes(61));
    let res = app.claim(&id, &phone(1), "d").await;
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["campaign_id"], "later");
    assert_eq!(
        v["coupon"],
        json!({"kind": "amount_off", "amount_off": 2000, "min_order_amount": 20000})
    );
    assert_eq!(v["code"].as_str().unwrap().len(), 18);
    let claimed = time::OffsetDateTime::parse(v["claimed_at"].as_str().unwrap(), fmt).unwrap();
    let expires = time::OffsetDateTime::parse(v["expires_at"].as_str().unwrap(), fmt).unwrap();
    assert_eq!(expires - claimed, time::Duration::days(7));

    app.clock.advance(time::Duration::hours(1));
    assert_problem(
        app.claim(&id, &phone(2), "d2").await,
        409,
        "campaign_not_active",
    )
    .await;
    assert_eq!(app.campaign(&id).await["status"], "ended");
    app.stop().await;
}

#[tokio::test]
async fn campaigns_round_trip_and_ids_are_unique() {
    let app = spawn_app().await;
    let body = json!({
        "id": "pct", "name": "15% off", "stock": 5,
        "limits": {"per_phone": 1, "per_device": 1, "per_ip": 50},
        "coupon": {"kind": "percent_off", "percent_off": 15, "max_discount": 3000},
        "valid_for_days": 3
    });
    let res = app.post("/v1/campaigns", &body).await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["location"], "/v1/campaigns/pct");
    let created: Value = res.json().await.unwrap();
    let got = app.campaign("pct").await;
    assert_eq!(created, got);
    for (k, v) in [
        ("status", json!("active")),
        ("stock", json!(5)),
        ("remaining", json!(5)),
        ("issued", json!(0)),
        ("redeemed", json!(0)),
        (
            "limits",
            json!({"per_phone": 1, "per_device": 1, "per_ip": 50}),
        ),
        (
            "coupon",
            json!({"kind": "percent_off", "percent_off": 15, "max_discount": 3000}),
        ),
        ("valid_for_days", json!(3)),
    ] {
        assert_eq!(got[k], v, "{k}");
    }
    assert_problem(
        app.post("/v1/campaigns", &body).await,
        409,
        "campaign_exists",
    )
    .await;
    let generated = app.create_campaign(json!({})).await;
    assert!(generated.starts_with("c-"));
    let gift = app
        .create_campaign(json!({"coupon": {"kind": "gift", "gift_sku": "sku-mug"}}))
        .await;
    assert_eq!(app.campaign(&gift).await["coupon"]["gift_sku"], "sku-mug");
    app.stop().await;
}
