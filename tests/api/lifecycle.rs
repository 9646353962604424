//! Campaign lifecycle: four eyes, drafts, pause, PATCH across instances, audit.

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

pub fn base(extra: Value) -> Value {
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
    crate::single_node_only!("two instances share one Redis by hand");
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
    // b remembers the sold-out answer for up to 500 ms (`service::soldout`).
    let start = Instant::now();
    while b.claim(&c, &phone(3), "d3").await.status() != 201 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "b saw the new stock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
