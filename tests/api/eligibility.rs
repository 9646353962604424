//! Eligibility (channels, rollout, SKUs, new customers, percent cap), bound
//! codes and rollback, stats, and idempotency keys that belong to their caller.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::lifecycle::base;

#[tokio::test]
async fn channel_rollout_sku_new_customer_and_percent_cap() {
    let app = spawn_app().await;
    let c = app
        .create_campaign(json!({
            "stock": 100, "channels": ["miniapp"],
            "coupon": {"kind": "percent_off", "percent_off": 20, "max_discount": 500},
            "eligibility": {"new_customers_only": true, "skus": ["milk-1", "milk-2"]},
        }))
        .await;
    let claim = |ch: Option<&str>, i: usize| {
        let mut body = json!({"phone": phone(i), "device_id": format!("d{i}")});
        if let Some(ch) = ch {
            body["channel"] = json!(ch);
        }
        app.post_owned(format!("/v1/campaigns/{c}/claims"), body)
    };
    let p = assert_problem(claim(Some("app"), 1).await, 422, "not_eligible").await;
    assert!(p["detail"].as_str().unwrap().starts_with("channels"), "{p}");
    assert_problem(claim(None, 1).await, 422, "not_eligible").await;
    let res = claim(Some("miniapp"), 1).await;
    assert_eq!(res.status(), 201);
    let code = res.json::<Value>().await.unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let redeem = |body: Value| app.post_owned("/v1/redemptions".into(), body);
    let order = |items: Value, customer: Value| json!({"code": code, "order_id": "o-1", "order_amount": 10000, "items": items, "customer": customer});
    let milk = json!([{"sku": "milk-1", "category": "milk", "amount": 1500}, {"sku": "bread", "amount": 8500}]);
    let p = assert_problem(
        redeem(order(milk.clone(), json!({"is_new": false}))).await,
        422,
        "not_eligible",
    )
    .await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .starts_with("new_customers_only"),
        "{p}"
    );
    let p = assert_problem(
        redeem(order(
            json!([{"sku": "bread", "amount": 10000}]),
            json!({"is_new": true}),
        ))
        .await,
        422,
        "not_eligible",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().starts_with("skus"), "{p}");
    // validate says the same, charging nothing.
    let v: Value = app.post("/v1/codes/validate", &json!({"code": code, "order_amount": 10000, "items": milk, "customer": {"is_new": true}})).await.json().await.unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(
        v["discount"], 300,
        "20% of the eligible 1500, not of the basket"
    );
    let res = redeem(order(milk, json!({"is_new": true}))).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["discount"], 300);

    // The cap of a percent_off coupon.
    let c2 = app
        .create_campaign(
            json!({"coupon": {"kind": "percent_off", "percent_off": 50, "max_discount": 1000}}),
        )
        .await;
    let code2 = app.claim_code(&c2, &phone(5), "d5").await;
    let res = app
        .post(
            "/v1/redemptions",
            &json!({"code": code2, "order_id": "o-2", "order_amount": 90000}),
        )
        .await;
    assert_eq!(res.json::<Value>().await.unwrap()["discount"], 1000);

    // A staged rollout lets in roughly its share, and raising it lets more in.
    let c3 = app
        .create_campaign(json!({"stock": 1000, "rollout_percent": 10}))
        .await;
    let mut admitted = Vec::new();
    for i in 0..200 {
        match app
            .claim(&c3, &phone(1000 + i), &format!("r{i}"))
            .await
            .status()
            .as_u16()
        {
            201 => admitted.push(i),
            422 => {}
            s => panic!("unexpected {s}"),
        }
    }
    assert!(
        (5..=40).contains(&admitted.len()),
        "{} of 200 in a 10% rollout",
        admitted.len()
    );
    app.client
        .patch(app.url(&format!("/v1/campaigns/{c3}")))
        .json(&json!({"rollout_percent": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        app.claim(&c3, &phone(1000 + 199), "again").await.status(),
        201
    );
    app.stop().await;
}

#[tokio::test]
async fn bound_codes_and_rollback_then_another_order() {
    let app = spawn_app().await;
    let c = app
        .create_campaign(
            json!({"bind_to_claimer": true, "coupon": {"kind": "amount_off", "amount_off": 100}}),
        )
        .await;
    let code = app.claim_code(&c, "13800138000", "d1").await;
    let p = assert_problem(
        app.post("/v1/redemptions", &json!({"code": code, "order_id": "o-1"}))
            .await,
        422,
        "not_eligible",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("bind_to_claimer"));
    assert_problem(
        app.post(
            "/v1/redemptions",
            &json!({"code": code, "order_id": "o-1", "phone": phone(2)}),
        )
        .await,
        422,
        "not_eligible",
    )
    .await;
    let ok = app
        .post(
            "/v1/redemptions",
            &json!({"code": code, "order_id": "o-1", "phone": "+86 138 0013 8000"}),
        )
        .await;
    assert_eq!(ok.status(), 200);
    assert_problem(
        app.post(
            "/v1/redemptions",
            &json!({"code": code, "order_id": "o-2", "phone": "13800138000"}),
        )
        .await,
        409,
        "already_redeemed",
    )
    .await;
    let rb = app
        .post(
            "/v1/redemptions/rollback",
            &json!({"code": code, "order_id": "o-1"}),
        )
        .await;
    assert_eq!(rb.json::<Value>().await.unwrap()["rolled_back"], true);
    let again = app
        .post(
            "/v1/redemptions",
            &json!({"code": code, "order_id": "o-2", "phone": "13800138000", "store_id": "sh-1"}),
        )
        .await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["order_id"], "o-2");
    app.stop().await;
}

#[tokio::test]
async fn stats_count_issues_refusals_and_redemptions() {
    let (app, _f) = spawn_app_with_rules(
        "[[rule]]\nname = \"stats-ip\"\nendpoint = \"claim\"\nkey = [\"ip\", \"campaign\"]\nlimit = 4\nwindow = \"1h\"\n",
        |_| {},
    ).await;
    let c = app
        .create_campaign(
            json!({"stock": 3, "limits": {"per_phone": 1}, "channels": ["app", "miniapp"],
        "coupon": {"kind": "amount_off", "amount_off": 100}}),
        )
        .await;
    let claim = |i: usize, ch: &str| {
        app.post_owned(
            format!("/v1/campaigns/{c}/claims"),
            json!({"phone": phone(i), "device_id": format!("d{i}"), "channel": ch}),
        )
    };
    let a = claim(1, "app").await.json::<Value>().await.unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = claim(2, "miniapp").await.json::<Value>().await.unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(claim(1, "app").await.status(), 429, "per_phone");
    assert_eq!(claim(3, "app").await.status(), 201);
    assert_eq!(
        claim(4, "app").await.status(),
        429,
        "the rule (4 per ip and campaign)"
    );
    app.post(
        "/v1/redemptions",
        &json!({"code": a, "order_id": "o-1", "store_id": "sh-1"}),
    )
    .await;
    app.post(
        "/v1/redemptions",
        &json!({"code": b, "order_id": "o-2", "store_id": "sh-1"}),
    )
    .await;
    let s: Value = app.stats(&c).await;
    assert_eq!(
        (
            s["issued"].as_i64(),
            s["redeemed"].as_i64(),
            s["remaining"].as_i64()
        ),
        (Some(3), Some(2), Some(0))
    );
    assert!((s["redemption_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(s["rejections"]["by_limit"]["per_phone"], 1, "{s}");
    assert_eq!(s["rejections"]["by_limit"]["stats-ip"], 1, "{s}");
    assert_eq!(s["rejections"]["by_code"]["limit_exceeded"], 2, "{s}");
    assert_eq!(s["status"], "sold_out");
    let minutes = s["claims_per_minute"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    assert_eq!(
        minutes
            .iter()
            .map(|m| m["claims"].as_i64().unwrap())
            .sum::<i64>(),
        3
    );
    assert_eq!(s["redemptions"]["by_store"]["sh-1"], 2);
    assert_eq!(s["redemptions"]["by_channel"]["app"], 1);
    assert_eq!(s["redemptions"]["by_channel"]["miniapp"], 1);
    app.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_belongs_to_its_caller_not_to_a_campaign() {
    let app = spawn_app().await;
    let app_ref = &app;
    let post = move |path: String, key: &'static str, body: Value| async move {
        app_ref
            .client
            .post(app_ref.url(&path))
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await
            .unwrap()
    };
    // Create: the same key with another id is refused, not a second campaign.
    let one = post(
        "/v1/campaigns".into(),
        "k-create",
        base(json!({"id": "one"})),
    )
    .await;
    assert_eq!(one.status(), 201);
    assert_problem(
        post(
            "/v1/campaigns".into(),
            "k-create",
            base(json!({"id": "two"})),
        )
        .await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_problem(
        app.get("/v1/campaigns/two").await,
        404,
        "campaign_not_found",
    )
    .await;
    let two = app.create_campaign(json!({"id": "two"})).await;
    // Claim: the same key on another campaign is refused, not a fresh claim.
    let body = json!({"phone": phone(1), "device_id": "d1"});
    assert_eq!(
        post("/v1/campaigns/one/claims".into(), "k-claim", body.clone())
            .await
            .status(),
        201
    );
    assert_problem(
        post(
            format!("/v1/campaigns/{two}/claims"),
            "k-claim",
            body.clone(),
        )
        .await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.campaign(&two).await["issued"], 0);
    // Redeem: the same key with another campaign's code is refused.
    let c1 = app.claim_code("one", &phone(2), "d2").await;
    let c2 = app.claim_code(&two, &phone(3), "d3").await;
    assert_eq!(
        post(
            "/v1/redemptions".into(),
            "k-redeem",
            json!({"code": c1, "order_id": "o-1"})
        )
        .await
        .status(),
        200
    );
    assert_problem(
        post(
            "/v1/redemptions".into(),
            "k-redeem",
            json!({"code": c2, "order_id": "o-1"}),
        )
        .await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.campaign(&two).await["redeemed"], 0);
    // Rollback: a retry returns the first answer; another body is refused.
    let first: Value = post(
        "/v1/redemptions/rollback".into(),
        "k-rb",
        json!({"code": c1, "order_id": "o-1"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let retry: Value = post(
        "/v1/redemptions/rollback".into(),
        "k-rb",
        json!({"code": c1, "order_id": "o-1"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        (
            first["rolled_back"].as_bool(),
            retry["rolled_back"].as_bool()
        ),
        (Some(true), Some(true))
    );
    assert_problem(
        post(
            "/v1/redemptions/rollback".into(),
            "k-rb",
            json!({"code": c2, "order_id": "o-1"}),
        )
        .await,
        422,
        "idempotency_key_reused",
    )
    .await;
    app.stop().await;
}
