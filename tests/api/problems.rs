use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn every_client_error_is_a_problem_with_a_stable_code() {
    let app = spawn_app().await;
    let id = app.create_campaign(json!({})).await;
    let claims = format!("/v1/campaigns/{id}/claims");

    assert_problem(
        app.post_raw(&claims, "{not json").await,
        400,
        "malformed_request",
    )
    .await;
    assert_problem(app.post_raw(&claims, "").await, 400, "malformed_request").await;
    assert_problem(
        app.post(&claims, &json!({"phone": 13800138000u64, "device_id": "d"}))
            .await,
        400,
        "malformed_request",
    )
    .await;
    let v = assert_problem(app.post(&claims, &json!({})).await, 422, "invalid_request").await;
    let fields: Vec<_> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].clone())
        .collect();
    assert_eq!(fields, vec![json!("phone"), json!("device_id")]);
    let v = assert_problem(
        app.post(&claims, &json!({"phone": "12345", "device_id": "d"}))
            .await,
        422,
        "invalid_request",
    )
    .await;
    assert_eq!(v["errors"][0]["field"], "phone");
    assert_problem(
        app.claim("no-such-campaign", &phone(1), "d").await,
        404,
        "campaign_not_found",
    )
    .await;
    assert_problem(
        app.claim("BAD ID", &phone(1), "d").await,
        404,
        "campaign_not_found",
    )
    .await;
    assert_problem(
        app.get("/v1/campaigns/nope").await,
        404,
        "campaign_not_found",
    )
    .await;
    let big = format!(r#"{{"phone": "{}", "device_id": "d"}}"#, "1".repeat(20_000));
    assert_problem(app.post_raw(&claims, big).await, 413, "malformed_request").await;
    assert_problem(app.get("/no/such/route").await, 404, "not_found").await;
    assert_problem(app.get(&claims).await, 405, "method_not_allowed").await;
    let v = assert_problem(
        app.post(
            "/v1/campaigns",
            &json!({"name": "x", "stock": 0, "coupon": {"kind": "nope"}}),
        )
        .await,
        422,
        "invalid_request",
    )
    .await;
    assert_eq!(v["errors"].as_array().unwrap().len(), 2);
    assert_problem(
        app.post(
            "/v1/campaigns",
            &json!({"name": "x", "stock": 1, "require_approvals": true}),
        )
        .await,
        400,
        "malformed_request",
    )
    .await;
    // Nothing was charged by any of it.
    assert_eq!(app.campaign(&id).await["issued"], 0);
    app.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
    let res = app.get("/healthz").await;
    assert_eq!(res.headers()["x-request-id"].len(), 32);
    let doc: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(doc["paths"]["/v1/campaigns/{id}/claims"]["post"].is_object());
    app.stop().await;
}
