//! Sold-out (and not-active) floods are answered in-process, without a
//! Redis round trip, and every instance acts on a raised stock or a resume
//! within 1 s (`service::soldout`).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

/// Script calls Redis has run so far (EVALSHA, EVAL and FCALL).
fn script_calls(redis: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.conn())
        .unwrap();
    info.lines()
        .filter(|l| {
            ["cmdstat_evalsha:", "cmdstat_eval:", "cmdstat_fcall:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Claims on `app` until one is issued; returns how long it took and how
/// many were refused before.
async fn until_issued(app: &TestApp, c: &str, from: usize) -> (Duration, i64) {
    let start = Instant::now();
    for i in from.. {
        let res = app.claim(c, &phone(i), &format!("dev-{i}")).await;
        match res.status().as_u16() {
            201 => return (start.elapsed(), (i - from) as i64),
            409 => assert!(start.elapsed() < Duration::from_secs(3), "never issued"),
            s => panic!("unexpected {s}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_flood_is_answered_in_process_and_a_stock_raise_elsewhere_is_seen_within_1s() {
    crate::single_node_only!("two instances share one Redis by hand");
    let a = spawn_app().await;
    let b = spawn_with_settings(test_settings(Some(a.redis().url()))).await;
    let c = a.create_campaign(json!({"stock": 2})).await;
    b.claim_code(&c, &phone(1), "d1").await;
    let keyed = || {
        b.client
            .post(b.url(&format!("/v1/campaigns/{c}/claims")))
            .header("Idempotency-Key", "k-early")
            .json(&json!({"phone": phone(2), "device_id": "d2"}))
            .send()
    };
    let first: serde_json::Value = keyed().await.unwrap().json().await.unwrap();
    assert!(first["code"].is_string(), "{first}");

    let before = script_calls(a.redis());
    let flood = 300;
    let start = Instant::now();
    for i in 0..flood {
        assert_problem(b.claim(&c, &phone(100 + i), "flood").await, 409, "sold_out").await;
    }
    let took = start.elapsed();
    // A retry under its key still gets its code while the refusal is remembered.
    let again = keyed().await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(
        again.json::<serde_json::Value>().await.unwrap()["code"],
        first["code"]
    );
    let calls = script_calls(a.redis()) - before;
    // One call to learn it, then at most one per TTL (500 ms) of flood.
    let allowed = 2 + (took.as_millis() / 500) as u64;
    assert!(
        calls <= allowed,
        "{calls} script calls for {flood} refusals in {took:?}"
    );
    let m = b.metrics().await;
    assert!(
        counter(&m, "stampede_claims_in_process_total{outcome=\"sold_out\"}")
            >= (flood as f64) - allowed as f64,
        "{m}"
    );

    // A raise of stock on a: b issues again within 1 s, and only the new stock.
    let res = a
        .client
        .patch(a.url(&format!("/v1/campaigns/{c}")))
        .json(&json!({"stock": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (waited, refused) = until_issued(&b, &c, 1_000).await;
    assert!(waited < Duration::from_secs(1), "b issued after {waited:?}");
    b.claim_code(&c, &phone(2_000), "d-2000").await;
    assert_problem(b.claim(&c, &phone(2_001), "d-2001").await, 409, "sold_out").await;
    assert_eq!(a.campaign(&c).await["issued"], 4);

    // The refusals answered in-process reach the campaign's stats.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let s: serde_json::Value = a.stats(&c).await;
        let n = s["rejections"]["by_code"]["sold_out"].as_i64().unwrap_or(0);
        if n == flood as i64 + refused + 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stats never counted the flood: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_is_remembered_and_a_resume_elsewhere_is_seen_within_1s() {
    crate::single_node_only!("two instances share one Redis by hand");
    let a = spawn_app().await;
    let b = spawn_with_settings(test_settings(Some(a.redis().url()))).await;
    let c = a.create_campaign(json!({"stock": 10})).await;
    assert_eq!(
        a.post(&format!("/v1/campaigns/{c}/pause"), &json!({}))
            .await
            .status(),
        200
    );
    let before = script_calls(a.redis());
    for i in 0..100 {
        assert_problem(
            b.claim(&c, &phone(i), "p").await,
            409,
            "campaign_not_active",
        )
        .await;
    }
    assert!(script_calls(a.redis()) - before <= 4);
    // A retry under an Idempotency-Key is never answered from memory.
    let keyed = |key: &'static str| {
        b.client
            .post(b.url(&format!("/v1/campaigns/{c}/claims")))
            .header("Idempotency-Key", key)
            .json(&json!({"phone": phone(500), "device_id": "k"}))
            .send()
    };
    let before = script_calls(a.redis());
    assert_problem(keyed("k-1").await.unwrap(), 409, "campaign_not_active").await;
    assert_eq!(
        script_calls(a.redis()) - before,
        1,
        "keyed claims go to Redis"
    );

    assert_problem(
        a.claim(&c, &phone(600), "a").await,
        409,
        "campaign_not_active",
    )
    .await;
    assert_eq!(
        a.post(&format!("/v1/campaigns/{c}/resume"), &json!({}))
            .await
            .status(),
        200
    );
    // The instance that resumed forgets at once; the other within 1 s.
    a.claim_code(&c, &phone(3_000), "d-3000").await;
    let (waited, _) = until_issued(&b, &c, 1_000).await;
    assert!(waited < Duration::from_secs(1), "b issued after {waited:?}");
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn refusals_answered_from_memory_are_in_the_stats_after_a_graceful_stop() {
    // They are counted in process and added to the campaign's stats once a
    // second; a graceful stop adds what the last second counted.
    crate::single_node_only!("reads the stats after the service stopped");
    let mut app = spawn_app().await;
    let c = app.create_campaign(json!({"stock": 1})).await;
    assert_eq!(app.claim(&c, &phone(0), "d0").await.status(), 201);
    for i in 1..=20 {
        assert_problem(
            app.claim(&c, &phone(i), &format!("d{i}")).await,
            409,
            "sold_out",
        )
        .await;
    }
    let redis = app.redis.take().expect("a single node");
    app.stop().await;
    let counted: Option<i64> = redis::cmd("HGET")
        .arg(format!("st:{{{c}}}:stats"))
        .arg("rej:sold_out")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(
        counted,
        Some(20),
        "every refusal, the script's and the memory's"
    );
}
