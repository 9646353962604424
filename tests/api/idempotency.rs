use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::*;

async fn claim_with_key(app: &TestApp, id: &str, key: &str, phone: &str) -> (u16, Value) {
    post_with_key(
        app,
        &format!("/v1/campaigns/{id}/claims"),
        key,
        json!({"phone": phone, "device_id": "dev-1"}),
    )
    .await
}

#[tokio::test]
async fn a_retried_claim_returns_the_first_answer_and_charges_once() {
    let app = spawn_app().await;
    let id = app
        .create_campaign(json!({"limits": {"per_phone": 5}}))
        .await;
    let (s1, first) = claim_with_key(&app, &id, "retry-1", &phone(1)).await;
    assert_eq!(s1, 201);
    app.clock.advance(time::Duration::seconds(5));
    let (s2, second) = claim_with_key(&app, &id, "retry-1", &phone(1)).await;
    assert_eq!((s2, &second), (201, &first), "same status, same body");
    // The same person spelled differently is the same request.
    let (s3, third) = claim_with_key(&app, &id, "retry-1", "13800000001").await;
    assert_eq!((s3, &third), (201, &first));
    assert_eq!(app.campaign(&id).await["issued"], 1);
    // Same key, another request.
    let (s4, v) = claim_with_key(&app, &id, "retry-1", &phone(2)).await;
    assert_eq!(
        (s4, v["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    // Another key is another claim.
    let (s5, other) = claim_with_key(&app, &id, "retry-2", &phone(1)).await;
    assert_eq!(s5, 201);
    assert_ne!(other["code"], first["code"]);
    assert_eq!(app.campaign(&id).await["issued"], 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_one_key_issue_one_code() {
    let app = spawn_app().await;
    let id = app.create_campaign(json!({})).await;
    let p7 = phone(7);
    let answers = join_all((0..40).map(|_| claim_with_key(&app, &id, "storm", &p7))).await;
    let first = &answers[0];
    assert!(answers.iter().all(|a| a == first), "{answers:?}");
    assert_eq!(first.0, 201);
    assert_eq!(app.campaign(&id).await["issued"], 1);
    app.stop().await;
}

#[tokio::test]
async fn a_rejection_is_replayed_too_and_keys_are_validated() {
    let app = spawn_app().await;
    let id = app.create_campaign(json!({"stock": 1})).await;
    app.claim_code(&id, &phone(1), "d").await;
    let (s, v) = claim_with_key(&app, &id, "k-sold", &phone(2)).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("sold_out")));
    let (s2, v2) = claim_with_key(&app, &id, "k-sold", &phone(2)).await;
    assert_eq!((s2, v2), (409, v));
    let long = "x".repeat(256);
    for bad in [long.as_str(), "tab\there"] {
        let (s, v) = claim_with_key(&app, &id, bad, &phone(3)).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (422, Some("invalid_request")),
            "{bad}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn campaign_create_and_redeem_are_idempotent() {
    let app = spawn_app().await;
    let body =
        json!({"name": "n", "stock": 3, "coupon": {"kind": "amount_off", "amount_off": 100}});
    let send = || {
        app.client
            .post(app.url("/v1/campaigns"))
            .header("Idempotency-Key", "create-1")
            .json(&body)
            .send()
    };
    let a = send().await.unwrap();
    assert_eq!(a.status(), 201);
    let a: Value = a.json().await.unwrap();
    let b = send().await.unwrap();
    assert_eq!(b.status(), 201);
    assert_eq!(b.json::<Value>().await.unwrap(), a);
    let id = a["id"].as_str().unwrap();

    let code = app.claim_code(id, &phone(1), "d").await;
    let redeem = |order: &'static str| {
        app.client
            .post(app.url("/v1/redemptions"))
            .header("Idempotency-Key", "redeem-1")
            .json(&json!({"code": code, "order_id": order, "order_amount": 500}))
            .send()
    };
    let r1: Value = redeem("o-1").await.unwrap().json().await.unwrap();
    let r2: Value = redeem("o-1").await.unwrap().json().await.unwrap();
    assert_eq!(r1, r2);
    let r3 = redeem("o-2").await.unwrap();
    assert_problem(r3, 422, "idempotency_key_reused").await;
    assert_eq!(app.campaign(id).await["redeemed"], 1);
    app.stop().await;
}

#[tokio::test]
async fn retries_of_a_keyed_claim_use_no_rule_quota_and_earn_no_ban() {
    // Two claims a minute per address, two violations ban: six retries of
    // one claim must all get its first answer, and leave the second claim
    // of the minute free.
    let (app, _f) = spawn_app_with_rules(
        r#"
[[rule]]
name = "ip-claims"
endpoint = "claim"
key = ["ip"]
limit = 2
window = "1m"
ban = { after = 2, duration = "10m" }
"#,
        |_| {},
    )
    .await;
    let id = app.create_campaign(json!({})).await;
    let (s1, first) = claim_with_key(&app, &id, "timed-out", &phone(1)).await;
    assert_eq!(s1, 201);
    for _ in 0..6 {
        let again = claim_with_key(&app, &id, "timed-out", &phone(1)).await;
        assert_eq!(again, (201, first.clone()));
    }
    // Another key with another phone: the rule's second claim this minute.
    let (s2, _) = claim_with_key(&app, &id, "next", &phone(2)).await;
    assert_eq!(s2, 201);
    let (s3, third) = claim_with_key(&app, &id, "third", &phone(3)).await;
    assert_eq!((s3, third["limit"].as_str()), (429, Some("ip-claims")));
    assert_eq!(app.campaign(&id).await["issued"], 2);
    app.stop().await;
}

#[tokio::test]
async fn retries_of_a_keyed_redemption_use_no_rule_quota_and_count_no_failure() {
    // Two failures a minute per address ban: retries of one redemption
    // that failed (already redeemed by another order) and of one that
    // succeeded must all get their first answers, and count nothing.
    let (app, _f) = spawn_app_with_rules(
        r#"
[[rule]]
name = "redeem-guess"
endpoint = "redeem"
key = ["ip"]
count = "failures"
limit = 2
window = "1m"
ban = { after = 1, duration = "10m" }
"#,
        |_| {},
    )
    .await;
    let id = app.create_campaign(json!({})).await;
    let code = app.claim_code(&id, &phone(1), "d").await;
    let redeem = |key: &'static str, order: &'static str| {
        post_with_key(
            &app,
            "/v1/redemptions",
            key,
            json!({"code": code, "order_id": order, "order_amount": 30000}),
        )
    };
    let (s1, first) = redeem("paid", "o-1").await;
    assert_eq!(s1, 200, "{first}");
    let (s2, refused) = redeem("other-order", "o-2").await;
    assert_eq!(
        (s2, refused["code"].as_str()),
        (409, Some("already_redeemed"))
    );
    for _ in 0..5 {
        assert_eq!(redeem("paid", "o-1").await, (200, first.clone()));
        assert_eq!(redeem("other-order", "o-2").await, (409, refused.clone()));
    }
    // One failure counted so far: a second one is still answered (the
    // rule's limit is two), the third is refused.
    let (s3, again) = redeem("third", "o-3").await;
    assert_eq!(
        (s3, again["code"].as_str()),
        (409, Some("already_redeemed"))
    );
    let (s4, over) = redeem("fourth", "o-4").await;
    assert_eq!((s4, over["limit"].as_str()), (429, Some("redeem-guess")));
    // That violation banned the address: bans come before any replay.
    let (s5, banned) = redeem("paid", "o-1").await;
    assert_eq!((s5, banned["code"].as_str()), (403, Some("blocked")));
    assert_eq!(app.campaign(&id).await["redeemed"], 1);
    app.stop().await;
}

async fn post_with_key(app: &TestApp, path: &str, key: &str, body: Value) -> (u16, Value) {
    let res = app
        .client
        .post(app.url(path))
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn lifecycle_moves_bans_and_validations_honour_the_key_too() {
    let app = spawn_app().await;
    let id = app.create_campaign(json!({})).await;
    // A lifecycle move retried after a lost reply: the first answer, not
    // `409 invalid_transition`.
    let pause = format!("/v1/campaigns/{id}/pause");
    let first = post_with_key(&app, &pause, "k-pause", json!({"reason": "r"})).await;
    assert_eq!(first.0, 200);
    assert_eq!(first.1["status"], "paused");
    let again = post_with_key(&app, &pause, "k-pause", json!({"reason": "r"})).await;
    assert_eq!(again, first);
    let resume = format!("/v1/campaigns/{id}/resume");
    let (s, v) = post_with_key(&app, &resume, "k-pause", json!({"reason": "r"})).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    assert_eq!(app.campaign(&id).await["status"], "paused");
    // A ban retried: one ban; the key with another subject is refused.
    let ban = json!({"kind": "device", "value": "dev-x", "duration": "1h", "reason": "t"});
    let b1 = post_with_key(&app, "/v1/admin/bans", "k-ban", ban.clone()).await;
    assert_eq!(b1.0, 201);
    assert_eq!(
        post_with_key(&app, "/v1/admin/bans", "k-ban", ban).await,
        b1
    );
    let other = json!({"kind": "device", "value": "dev-y", "duration": "1h", "reason": "t"});
    let (s, v) = post_with_key(&app, "/v1/admin/bans", "k-ban", other).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    let list: Value = app
        .get("/v1/admin/bans?kind=device")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["bans"].as_array().map(Vec::len), Some(1), "{list}");
    // Validate: same rule.
    let code = "A".repeat(18);
    let v1 = post_with_key(&app, "/v1/codes/validate", "k-val", json!({"code": code})).await;
    assert_eq!(v1.0, 200);
    let (s, v) = post_with_key(
        &app,
        "/v1/codes/validate",
        "k-val",
        json!({"code": "B".repeat(18)}),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    app.stop().await;
}
