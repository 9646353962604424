use serde_json::{Value, json};

use crate::helpers::*;

/// No Redis URL: the service runs its own redis-server with AOF in the data
/// dir, and everything survives a restart of the service.
#[tokio::test]
async fn embedded_default_keeps_data_across_a_restart() {
    crate::single_node_only!("the embedded default is single-node by design");
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_with_settings(data_dir_settings(dir.path())).await;
    let pid = app.managed_pid.expect("runs an embedded redis");
    let id = app
        .create_campaign(json!({"id": "keep", "stock": 10}))
        .await;
    let code = app.claim_code(&id, &phone(1), "d").await;
    app.stop().await;
    // The embedded redis-server is gone with the service (it gets SIGTERM
    // and flushes its AOF; on a loaded machine that may take a moment).
    let gone = || !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid);
    for _ in 0..100 {
        if gone() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(gone(), "the embedded redis-server outlived the service");
    assert!(dir.path().join("appendonlydir").exists());

    let mut settings = data_dir_settings(dir.path());
    settings.secret = None; // a generated secret must be reused too
    let app = spawn_with_settings(settings.clone()).await;
    let c = app.campaign("keep").await;
    assert_eq!(
        (c["issued"].as_i64(), c["remaining"].as_i64()),
        (Some(1), Some(9))
    );
    let code2 = app.claim_code("keep", &phone(2), "d2").await;
    app.stop().await;

    let app = spawn_with_settings(settings).await;
    let r: Value = app
        .post(
            "/v1/redemptions",
            &json!({"code": code2, "order_id": "o", "order_amount": 30000}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["discount"], 2000, "{r}");
    // The code from the first run was signed with the configured secret;
    // under the generated one it is (correctly) refused.
    assert_problem(
        app.post(
            "/v1/redemptions",
            &json!({"code": code, "order_id": "o2", "order_amount": 30000}),
        )
        .await,
        404,
        "invalid_code",
    )
    .await;
    assert_eq!(app.campaign("keep").await["issued"], 2);
    app.stop().await;
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) == Some("Z"))
        .unwrap_or(true)
}
