//! Campaign lifecycle (four eyes, pause, PATCH across instances),
//! eligibility, bound codes, stats, audit, and idempotency keys that belong
//! to their caller.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;

const KEYS: &str = "ann:admin:ann-secret-1,bob:admin:bob-secret-1,shop:client:shop-secret-1,dash:viewer:dash-secret-1";

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut rb = app
        .client
        .request(method.parse().unwrap(), app.url(path))
        .bearer_auth(key);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    rb.send().await.unwrap()
}

fn base(extra: Value) -> Value {
    let mut b =
        json!({"name": "n", "stock": 10, "coupon": {"kind": "amount_off", "amount_off": 100}});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

#[tokio::test]
async fn four_eyes_approval_and_the_lifecycle() {
    let app = spawn_app_with(|s| s.api_keys = KEYS.into()).await;
    let res = send(
        &app,
        "POST",
        "/v1/campaigns",
        "ann-secret-1",
        Some(base(json!({"id": "fin", "require_approval": true}))),
    )
    .await;
    assert_eq!(res.status(), 201);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["status"], "pending_approval");
    assert_eq!(v["created_by"], "ann");
    // Nothing can be claimed before approval.
    let claim = |key: &'static str, i: usize| {
        send(
            &app,
            "POST",
            "/v1/campaigns/fin/claims",
            key,
            Some(json!({"phone": phone(i), "device_id": format!("d{i}")})),
        )
    };
    let res = claim("shop-secret-1", 1).await;
    assert_eq!(
        assert_problem(res, 409, "campaign_not_active").await["code"],
        "campaign_not_active"
    );
    // The creator may not approve; a client or viewer may not either.
    let res = send(
        &app,
        "POST",
        "/v1/campaigns/fin/approve",
        "ann-secret-1",
        None,
    )
    .await;
    let p = assert_problem(res, 403, "forbidden").await;
    assert!(p["detail"].as_str().unwrap().contains("four eyes"), "{p}");
    assert_problem(
        send(
            &app,
            "POST",
            "/v1/campaigns/fin/approve",
            "shop-secret-1",
            None,
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    assert_problem(
        send(
            &app,
            "POST",
            "/v1/campaigns/fin/approve",
            "dash-secret-1",
            None,
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    let res = send(
        &app,
        "POST",
        "/v1/campaigns/fin/approve",
        "bob-secret-1",
        Some(json!({"reason": "finance ok"})),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "active");
    assert_eq!(claim("shop-secret-1", 1).await.status(), 201);
    // Pause refuses claims; resume lets them in again.
    let res = send(
        &app,
        "POST",
        "/v1/campaigns/fin/pause",
        "ann-secret-1",
        None,
    )
    .await;
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "paused");
    let res = claim("shop-secret-1", 2).await;
    let p = assert_problem(res, 409, "campaign_not_active").await;
    assert!(p["detail"].as_str().unwrap().contains("paused"));
    // An illegal move is a 409 that says why.
    let res = send(
        &app,
        "POST",
        "/v1/campaigns/fin/approve",
        "bob-secret-1",
        None,
    )
    .await;
    let p = assert_problem(res, 409, "invalid_transition").await;
    assert!(
        p["detail"].as_str().unwrap().contains("pending_approval"),
        "{p}"
    );
    assert_eq!(
        send(
            &app,
            "POST",
            "/v1/campaigns/fin/resume",
            "ann-secret-1",
            None
        )
        .await
        .status(),
        200
    );
    assert_eq!(claim("shop-secret-1", 2).await.status(), 201);
    assert_eq!(
        send(&app, "POST", "/v1/campaigns/fin/end", "bob-secret-1", None)
            .await
            .status(),
        200
    );
    assert_problem(claim("shop-secret-1", 3).await, 409, "campaign_not_active").await;
    assert_problem(
        send(
            &app,
            "POST",
            "/v1/campaigns/fin/resume",
            "ann-secret-1",
            None,
        )
        .await,
        409,
        "invalid_transition",
    )
    .await;
    assert_problem(
        send(
            &app,
            "POST",
            "/v1/campaigns/fin/explode",
            "ann-secret-1",
            None,
        )
        .await,
        404,
        "not_found",
    )
    .await;

    // The audit trail, newest first, paginated; the viewer may read it.
    let res = send(
        &app,
        "GET",
        "/v1/audit?campaign=fin&limit=3",
        "dash-secret-1",
        None,
    )
    .await;
    assert_eq!(res.status(), 200);
    let page: Value = res.json().await.unwrap();
    let actions: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["campaign.end", "campaign.resume", "campaign.pause"]
    );
    assert_eq!(page["entries"][0]["actor"], "bob");
    let cursor = page["next_cursor"].as_str().unwrap();
    let res = send(
        &app,
        "GET",
        &format!("/v1/audit?campaign=fin&cursor={cursor}"),
        "dash-secret-1",
        None,
    )
    .await;
    let rest: Value = res.json().await.unwrap();
    let actions: Vec<&str> = rest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["campaign.approve", "campaign.create"]);
    assert_eq!(rest["entries"][0]["reason"], "finance ok");
    assert_eq!(rest["entries"][1]["actor"], "ann");
    assert!(rest["next_cursor"].is_null());
    assert_problem(
        send(&app, "GET", "/v1/audit?cursor=nope", "dash-secret-1", None).await,
        422,
        "invalid_request",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn drafts_are_submitted_and_rejected_back() {
    let app = spawn_app_with(|s| s.api_keys = KEYS.into()).await;
    let res = send(
        &app,
        "POST",
        "/v1/campaigns",
        "ann-secret-1",
        Some(base(
            json!({"id": "d1", "draft": true, "require_approval": true}),
        )),
    )
    .await;
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "draft");
    let res = send(
        &app,
        "POST",
        "/v1/campaigns/d1/submit",
        "ann-secret-1",
        None,
    )
    .await;
    assert_eq!(
        res.json::<Value>().await.unwrap()["status"],
        "pending_approval"
    );
    let res = send(
        &app,
        "POST",
        "/v1/campaigns/d1/reject",
        "bob-secret-1",
        Some(json!({"reason": "budget"})),
    )
    .await;
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "draft");
    app.stop().await;
}

#[tokio::test]
async fn a_patch_or_pause_on_one_instance_is_acted_on_by_another_within_1s() {
    let a = spawn_app().await;
    let b = spawn_with_settings(test_settings(Some(a.redis().url()))).await;
    let c = a
        .create_campaign(json!({"stock": 2, "limits": {"per_phone": 1}}))
        .await;
    assert_eq!(b.claim(&c, &phone(1), "d1").await.status(), 201);
    assert_eq!(b.claim(&c, &phone(2), "d2").await.status(), 201);
    assert_problem(b.claim(&c, &phone(3), "d3").await, 409, "sold_out").await;
    let res = a
        .client
        .patch(a.url(&format!("/v1/campaigns/{c}")))
        .json(&json!({"stock": 5, "limits": {"per_phone": 2}, "name": "bigger"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let start = Instant::now();
    let res = b.claim(&c, &phone(3), "d3").await;
    assert_eq!(res.status(), 201, "b saw the new stock");
    assert_eq!(
        b.claim(&c, &phone(1), "d9").await.status(),
        201,
        "b saw the new per_phone"
    );
    assert!(start.elapsed() < Duration::from_secs(1));
    // Below what is issued is refused, and says so.
    let res = a
        .client
        .patch(a.url(&format!("/v1/campaigns/{c}")))
        .json(&json!({"stock": 1}))
        .send()
        .await
        .unwrap();
    let p = assert_problem(res, 422, "invalid_request").await;
    assert!(
        p["errors"][0]["message"].as_str().unwrap().contains("4"),
        "{p}"
    );
    // A pause on a is a refusal on b at once.
    a.post(&format!("/v1/campaigns/{c}/pause"), &json!({}))
        .await;
    assert_problem(
        b.claim(&c, &phone(7), "d7").await,
        409,
        "campaign_not_active",
    )
    .await;
    let v = b.campaign(&c).await;
    assert_eq!(
        (
            v["status"].as_str(),
            v["name"].as_str(),
            v["stock"].as_i64()
        ),
        (Some("paused"), Some("bigger"), Some(5))
    );
    b.stop().await;
    a.stop().await;
}

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
    let s: Value = app
        .get(&format!("/v1/campaigns/{c}/stats"))
        .await
        .json()
        .await
        .unwrap();
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
