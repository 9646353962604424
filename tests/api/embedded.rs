use serde_json::{Value, json};

use crate::helpers::*;

/// Stops `app` and waits until its embedded redis-server is gone (it gets
/// SIGTERM and flushes its AOF; on a loaded machine that may take a moment),
/// so the next start on the same data dir finds it unlocked.
async fn stop_and_wait_for_its_redis(app: TestApp) {
    let pid = app.managed_pid.expect("runs an embedded redis");
    app.stop().await;
    let gone = || !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid);
    for _ in 0..200 {
        if gone() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(gone(), "the embedded redis-server outlived the service");
}

/// No Redis URL: the service runs its own redis-server with AOF in the data
/// dir, and everything survives a restart of the service.
#[tokio::test]
async fn embedded_default_keeps_data_across_a_restart() {
    crate::single_node_only!("the embedded default is single-node by design");
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_with_settings(data_dir_settings(dir.path())).await;
    let id = app
        .create_campaign(json!({"id": "keep", "stock": 10}))
        .await;
    let code = app.claim_code(&id, &phone(1), "d").await;
    stop_and_wait_for_its_redis(app).await;
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
    stop_and_wait_for_its_redis(app).await;

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

/// A service started on a data dir that another one still holds waits for
/// it (a restart that overlaps its predecessor's shutdown), then starts and
/// sees the data at once. The old redis-server holds the lock too, until it
/// has exited: had the new one started earlier, the old one would remove
/// the new one's socket on its way out, and the first calls would be 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_waits_for_the_data_dir_its_predecessor_still_holds() {
    crate::single_node_only!("the embedded default is single-node by design");
    let dir = tempfile::tempdir().unwrap();
    let first = spawn_with_settings(data_dir_settings(dir.path())).await;
    let id = first
        .create_campaign(json!({"id": "handover", "stock": 10}))
        .await;
    first.claim_code(&id, &phone(1), "d").await;
    let settings = data_dir_settings(dir.path());
    let second = tokio::spawn(async move { spawn_with_settings(settings).await });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "the second start waits for the lock");
    first.stop().await;
    let second = second.await.unwrap();
    assert_eq!(second.campaign("handover").await["issued"], 1);
    second.stop().await;
}
