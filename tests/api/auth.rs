use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn keys_and_roles() {
    let app = spawn_app_with(|s| {
        s.api_keys = "alice:admin:admin-secret-1,shop:client:client-secret-1".into();
    })
    .await;
    let body =
        json!({"name": "n", "stock": 3, "coupon": {"kind": "amount_off", "amount_off": 100}});
    let no_key = app.post("/v1/campaigns", &body).await;
    assert_eq!(no_key.headers()["www-authenticate"], "Bearer");
    assert_problem(no_key, 401, "unauthorized").await;
    let wrong = app
        .client
        .post(app.url("/v1/campaigns"))
        .bearer_auth("nope-nope-nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(wrong, 401, "unauthorized").await;
    let as_client = app
        .client
        .post(app.url("/v1/campaigns"))
        .bearer_auth("client-secret-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(as_client, 403, "forbidden").await;
    let as_admin = app
        .client
        .post(app.url("/v1/campaigns"))
        .bearer_auth("admin-secret-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(as_admin.status(), 201);
    let id = as_admin.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let claim = app
        .client
        .post(app.url(&format!("/v1/campaigns/{id}/claims")))
        .bearer_auth("client-secret-1")
        .json(&json!({"phone": phone(1), "device_id": "d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(claim.status(), 201);
    app.stop().await;
}
