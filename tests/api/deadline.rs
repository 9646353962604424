//! A 503 means "not charged" when Redis was only slow: the claim carries
//! its deadline into the script, which refuses to charge once it has passed
//! (the service has answered 503 by then). Clients here send no
//! `Idempotency-Key`, so nothing but the deadline keeps a timed-out claim
//! from being charged when Redis wakes up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_answered_503_during_a_stall_are_never_charged() {
    crate::single_node_only!("SIGSTOPs one redis-server");
    let app = Arc::new(spawn_app_with(|s| s.store_deadline_ms = 400).await);
    let id = app.create_campaign(json!({"stock": 1_000_000})).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, unavailable) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (app, id, stop) = (app.clone(), id.clone(), stop.clone());
            let (acked, unavailable, next) = (acked.clone(), unavailable.clone(), next.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let res = app
                        .client
                        .post(app.url(&format!("/v1/campaigns/{id}/claims")))
                        .timeout(Duration::from_secs(5))
                        .json(&json!({"phone": phone(i), "device_id": format!("d{w}-{i}")}))
                        .send()
                        .await
                        .expect("every claim gets an HTTP answer");
                    match res.status().as_u16() {
                        201 => {
                            let v: Value = res.json().await.unwrap();
                            assert!(v["code"].is_string());
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        503 => {
                            unavailable.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        s => panic!("unexpected {s}: {}", res.text().await.unwrap_or_default()),
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    app.redis().signal("STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    app.redis().signal("CONT");
    // Redis now runs every call that queued up during the stall.
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let (acked, unavailable) = (
        acked.load(Ordering::Relaxed),
        unavailable.load(Ordering::Relaxed),
    );
    assert!(
        unavailable >= 16,
        "the stall was not felt: {unavailable} x 503"
    );
    let c = app.campaign(&id).await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let voided: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("stampede_claims_voided_total"))
        .collect();
    eprintln!("voided: {voided:?}");
    assert_eq!(
        c["issued"].as_i64(),
        Some(acked as i64),
        "charged vs acknowledged after the stall ({unavailable} x 503): {c}"
    );
    eprintln!(
        "stall: {acked} claims acknowledged = issued, {unavailable} x 503, none charged; taken back: {voided:?}"
    );
    Arc::try_unwrap(app)
        .ok()
        .expect("no other handle")
        .stop()
        .await;
}

/// A batched rule check is recorded under its call id: Redis Cluster's
/// client re-sends a call after a dropped connection, and the re-sent call
/// gets the first one's answer without counting again. A check that reaches
/// Redis past its deadline (its caller has answered 503) counts nothing.
/// Runs on one node and on a cluster (`TEST_REDIS_CLUSTER=1`).
#[tokio::test]
async fn a_rule_check_sent_twice_or_too_late_counts_once_or_not_at_all() {
    use stampede::domain::clock::Clock;
    use stampede::store::keys;
    use stampede::store::rules::{RuleCall, RuleStatus};
    use stampede::store::{Store, StoreError};
    let app = spawn_app().await;
    let store = Store::open(&app.store_url(), Duration::from_secs(2)).unwrap();
    let digest = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
    let epochs = keys::rule(digest, "resend", keys::RULE_SHARDS);
    let rule = RuleCall::requests(epochs, digest.into(), 5, 60_000);
    let now = app.clock.now_ms();
    let deadline = store.script_deadline_ms();
    let check = |id: &'static str, deadline: i64| {
        let (store, rule) = (store.clone(), rule.clone());
        async move { store.check_rules_as(id, deadline, now, &[rule]).await }
    };
    let first = check("call-1", deadline).await.unwrap();
    assert_eq!((first[0].status, first[0].remaining), (RuleStatus::Ok, 4));
    // The same call again: the same answer, nothing counted.
    assert_eq!(check("call-1", deadline).await.unwrap(), first);
    // Past its deadline: 503 (a timeout), nothing counted.
    let late = check("call-2", deadline - 60_000).await;
    assert!(matches!(late, Err(StoreError::Timeout(_))), "{late:?}");
    // So the next call is the second one counted.
    let next = check("call-3", deadline).await.unwrap();
    assert_eq!(next[0].remaining, 3, "{next:?}");
    app.stop().await;
}
