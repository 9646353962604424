//! Fault injection under concurrent load: Redis stalled (SIGSTOP) and Redis
//! killed (-9) and restarted on the same port with AOF `always`.
//!
//! Every logical claim is a client that retries with its `Idempotency-Key`
//! until it gets a definitive answer, as API.md tells clients to. Afterwards
//! the books must balance exactly: every acknowledged code is issued, nothing
//! is issued that no client was told about twice, `issued + remaining = stock`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::helpers::*;

#[derive(Debug, Default)]
struct Stats {
    codes: Vec<String>,
    unavailable: u32,
    server_errors: Vec<String>,
    transport_errors: u32,
    slowest: Duration,
    requests: u32,
    missing_retry_after: u32,
}

/// `workers` clients claim until `stop` is set; each logical claim is retried
/// with the same key until 201 (or a business refusal) or 30 s pass.
async fn load(app: Arc<TestApp>, id: String, workers: usize, stop: Arc<AtomicBool>) -> Stats {
    let stats = Arc::new(Mutex::new(Stats::default()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (app, id, stop, stats, client) =
                (app.clone(), id.clone(), stop.clone(), stats.clone(), client.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("w{w}-{i}");
                    let give_up = Instant::now() + Duration::from_secs(30);
                    loop {
                        let t = Instant::now();
                        let res = client
                            .post(app.url(&format!("/v1/campaigns/{id}/claims")))
                            .header("Idempotency-Key", &key)
                            .json(&json!({"phone": phone(w * 100_000 + i), "device_id": format!("d{w}")}))
                            .send()
                            .await;
                        let elapsed = t.elapsed();
                        let mut s = stats.lock().await;
                        s.requests += 1;
                        s.slowest = s.slowest.max(elapsed);
                        match res {
                            Ok(r) if r.status() == 201 => {
                                let v: Value = r.json().await.unwrap();
                                s.codes.push(v["code"].as_str().unwrap().to_owned());
                                break;
                            }
                            Ok(r) if r.status() == 503 => {
                                s.unavailable += 1;
                                if r.headers().get("retry-after").is_none() {
                                    s.missing_retry_after += 1;
                                }
                            }
                            Ok(r) => {
                                let status = r.status();
                                let body = r.text().await.unwrap_or_default();
                                s.server_errors.push(format!("{status}: {body}"));
                                break;
                            }
                            Err(_) => s.transport_errors += 1,
                        }
                        drop(s);
                        assert!(Instant::now() < give_up, "claim {key} never resolved");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(stats).unwrap().into_inner()
}

async fn ready(app: &TestApp) -> u16 {
    match app
        .client
        .get(app.url("/readyz"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn wait_ready(app: &TestApp, within: Duration) -> Duration {
    let t = Instant::now();
    while ready(app).await != 200 {
        assert!(
            t.elapsed() < within,
            "readiness did not come back within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.elapsed()
}

/// After the storm: every acknowledged code is unique and issued, the books
/// balance, and nothing else was issued.
async fn assert_books(app: &TestApp, id: &str, stats: &Stats, stock: i64) {
    assert!(
        stats.server_errors.is_empty(),
        "non-503 errors: {:?}",
        stats.server_errors
    );
    assert_eq!(stats.missing_retry_after, 0, "a 503 without Retry-After");
    let unique: HashSet<_> = stats.codes.iter().collect();
    assert_eq!(
        unique.len(),
        stats.codes.len(),
        "a code was handed out twice"
    );
    let c = app.campaign(id).await;
    let issued = c["issued"].as_i64().unwrap();
    assert_eq!(
        issued,
        stats.codes.len() as i64,
        "issued vs acknowledged: {c}"
    );
    assert_eq!(issued + c["remaining"].as_i64().unwrap(), stock);
    for code in &stats.codes {
        let v: Value = app
            .post(
                "/v1/codes/validate",
                &json!({"code": code, "order_amount": 100_000}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            v["valid"], true,
            "acknowledged code {code} is not in the store: {v}"
        );
    }
    eprintln!(
        "claims acknowledged {}, issued {issued}, lost 0, over-issued 0, requests {}, 503s {}, transport errors {}, slowest answer {:?}",
        stats.codes.len(),
        stats.requests,
        stats.unavailable,
        stats.transport_errors,
        stats.slowest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hang_is_answered_503_within_the_deadline_and_recovers() {
    crate::single_node_only!("SIGSTOPs one redis-server");
    let app = Arc::new(spawn_app_with(|s| s.store_deadline_ms = 500).await);
    let stock = 1_000_000;
    let id = app.create_campaign(json!({"stock": stock})).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(app.clone(), id.clone(), 16, stop.clone()));

    tokio::time::sleep(Duration::from_millis(700)).await;
    app.redis().signal("STOP");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let t = Instant::now();
    let r = ready(&app).await;
    assert_eq!(r, 503, "readiness must go red while Redis hangs");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "readyz took {:?}",
        t.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.redis().signal("CONT");
    let back = wait_ready(&app, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let stats = load.await.unwrap();

    assert!(stats.unavailable > 0, "the hang was not felt: {stats:?}");
    // The deadline is 500 ms; allow scheduling slack on a loaded 2-core box.
    assert!(
        stats.slowest < Duration::from_millis(2500),
        "slowest answer {:?}",
        stats.slowest
    );
    assert_eq!(stats.transport_errors, 0, "a request got no HTTP answer");
    eprintln!("ready again {back:?} after SIGCONT");
    assert_books(&app, &id, &stats, stock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_loses_nothing_acknowledged() {
    crate::single_node_only!(
        "kills one redis-server (cluster::a_master_killed... covers the cluster)"
    );
    let mut app = spawn_app_with(|s| s.store_deadline_ms = 500).await;
    let stock = 1_000_000;
    let id = app.create_campaign(json!({"stock": stock})).await;
    let mut redis = app.redis.take().unwrap();
    let app = Arc::new(app);
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(app.clone(), id.clone(), 16, stop.clone()));

    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        redis.kill9();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(ready(&app).await, 503);
        redis.restart();
        wait_ready(&app, Duration::from_secs(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let stats = load.await.unwrap();
    assert!(stats.unavailable > 0, "the crash was not felt: {stats:?}");
    assert!(
        stats.slowest < Duration::from_millis(2500),
        "slowest answer {:?}",
        stats.slowest
    );
    assert_books(&app, &id, &stats, stock).await;
    // Phase 2: redeem every acknowledged code concurrently while Redis is
    // killed and restarted again; clients retry with their key until 200.
    let codes = Arc::new(stats.codes.clone());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let redeemers: Vec<_> = (0..16)
        .map(|_| {
            let (app, codes, next) = (app.clone(), codes.clone(), next.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let (mut unavailable, mut slowest) = (0u32, Duration::ZERO);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(code) = codes.get(i) else { break };
                    let give_up = Instant::now() + Duration::from_secs(30);
                    loop {
                        let t = Instant::now();
                        let res = client
                            .post(app.url("/v1/redemptions"))
                            .header("Idempotency-Key", format!("r-{code}"))
                            .json(&json!({"code": code, "order_id": format!("o-{code}"), "order_amount": 30000}))
                            .send()
                            .await;
                        slowest = slowest.max(t.elapsed());
                        match res.map(|r| r.status().as_u16()) {
                            Ok(200) => break,
                            Ok(503) | Err(_) => unavailable += 1,
                            Ok(other) => panic!("redeem {code}: {other}"),
                        }
                        assert!(Instant::now() < give_up, "redemption of {code} never resolved");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                (unavailable, slowest)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    let (mut unavailable, mut slowest) = (0, Duration::ZERO);
    for r in redeemers {
        let (u, s) = r.await.unwrap();
        unavailable += u;
        slowest = slowest.max(s);
    }
    wait_ready(&app, Duration::from_secs(10)).await;
    let c = app.campaign(&id).await;
    assert_eq!(
        c["redeemed"].as_i64(),
        Some(codes.len() as i64),
        "acknowledged redemptions vs redeemed: {c}"
    );
    eprintln!(
        "redemptions acknowledged {}, redeemed {}, lost 0, 503s/transport errors {unavailable}, slowest answer {slowest:?}",
        codes.len(),
        c["redeemed"]
    );
    // Each is redeemed once: another order is refused, after one more crash.
    redis.restart();
    wait_ready(&app, Duration::from_secs(10)).await;
    for code in codes.iter().take(20) {
        let again = app
            .post(
                "/v1/redemptions",
                &json!({"code": code, "order_id": "other", "order_amount": 30000}),
            )
            .await;
        assert_problem(again, 409, "already_redeemed").await;
    }
    drop(redis);
}

/// A script that errors out half-way would leave a partial charge; ours check
/// every key's type and every counter before the first write, so a failing
/// script changes nothing.
/// Every key of campaign `id` but its idempotency records, with its type and
/// contents (sorted). Not DUMP bytes: a hashtable-encoded hash serializes in
/// iteration order, which incremental rehashing may change on a mere read.
fn snapshot(conn: &mut redis::Connection, id: &str) -> Vec<(String, String, Vec<String>)> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("st:{{{id}}}:*"))
        .query(conn)
        .unwrap();
    keys.retain(|k| !k.contains(":idem:"));
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let t: String = redis::cmd("TYPE").arg(&k).query(conn).unwrap();
            let mut v: Vec<String> = match t.as_str() {
                "hash" => {
                    let m: std::collections::BTreeMap<String, String> =
                        redis::cmd("HGETALL").arg(&k).query(conn).unwrap();
                    m.into_iter().map(|(f, v)| format!("{f}={v}")).collect()
                }
                "string" => vec![redis::cmd("GET").arg(&k).query(conn).unwrap()],
                "set" => redis::cmd("SMEMBERS").arg(&k).query(conn).unwrap(),
                "stream" => {
                    let e: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                        .arg(&k)
                        .arg("-")
                        .arg("+")
                        .query(conn)
                        .unwrap();
                    e.into_iter().map(|(id, f)| format!("{id}={f:?}")).collect()
                }
                other => panic!("unexpected type {other}"),
            };
            v.sort();
            (k, t, v)
        })
        .collect()
}

enum Request {
    Claim(usize),
    Redeem,
}

#[tokio::test]
async fn a_failing_script_changes_nothing() {
    crate::single_node_only!("corrupts keys by hand");
    let app = spawn_app().await;
    let id = app.create_campaign(json!({"stock": 10})).await;
    let code = app.claim_code(&id, &phone(1), "d1").await;
    let redeem = json!({"code": code, "order_id": "o", "order_amount": 30000});
    let mut conn = app.redis().conn();
    let key = |suffix: &str| format!("st:{{{id}}}:{suffix}");
    let replace = |k: String, cmd: &str, args: &[&str]| {
        let mut p = redis::pipe();
        p.cmd("DEL").arg(&k).cmd(cmd).arg(&k).arg(args);
        (k, p)
    };
    // One field of the campaign's record set by hand.
    let set_meta = |field: &str, value: &str| {
        let mut p = redis::pipe();
        p.cmd("HSET").arg(key("meta")).arg(field).arg(value);
        (key("meta"), p)
    };
    let cases = [
        // A wrong-type key the claim script only writes: its first write fails.
        (
            "claims",
            replace(key("cl:0"), "SET", &["oops"]),
            Request::Claim(2),
        ),
        // A wrong-type key the script reads: the read fails before any write.
        (
            "quota",
            replace(key("q:d:0"), "SADD", &["x"]),
            Request::Claim(3),
        ),
        // A corrupt counter: parsed before it is incremented.
        ("counter", set_meta("issued", "NaN-ish"), Request::Claim(4)),
        // A counter Lua's tonumber reads but HINCRBY refuses: the redemption
        // must not be recorded ahead of a failing increment.
        ("redeemed", set_meta("redeemed", "1.5"), Request::Redeem),
        // The redeem script with a wrong-type redemptions key.
        (
            "redemptions",
            replace(key("redemptions"), "SET", &["oops"]),
            Request::Redeem,
        ),
    ];
    for (what, (k, corruption), request) in cases {
        let saved: Option<Vec<u8>> = redis::cmd("DUMP").arg(&k).query(&mut conn).unwrap();
        corruption.query::<()>(&mut conn).unwrap();
        let before = snapshot(&mut conn, &id);
        let res = match request {
            Request::Claim(i) => app.claim(&id, &phone(i), &format!("d{i}")).await,
            Request::Redeem => app.post("/v1/redemptions", &redeem).await,
        };
        assert_problem(res, 500, "internal_error").await;
        assert_eq!(
            snapshot(&mut conn, &id),
            before,
            "{what}: the script wrote before failing"
        );
        let _: () = redis::cmd("DEL").arg(&k).query(&mut conn).unwrap();
        if let Some(saved) = saved {
            let _: () = redis::cmd("RESTORE")
                .arg(&k)
                .arg(0)
                .arg(saved)
                .query(&mut conn)
                .unwrap();
        }
    }

    // Repaired, everything works and the books are as before the faults.
    app.claim_code(&id, &phone(5), "d5").await;
    let c = app.campaign(&id).await;
    assert_eq!(
        (c["issued"].as_i64(), c["remaining"].as_i64()),
        (Some(2), Some(8))
    );
    assert_eq!(app.post("/v1/redemptions", &redeem).await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_service_started_before_its_redis_serves_once_redis_is_up() {
    crate::single_node_only!("starts and stops one redis-server by hand");
    // Redis unreachable at start: the service starts, not ready, and reads
    // the server's version on the first call that reaches it (no call goes
    // to a Redis too old for the scripts), then serves.
    let mut redis = RedisServer::start();
    redis.kill9();
    let mut app = spawn_with_settings(test_settings(Some(redis.url()))).await;
    assert_ne!(ready(&app).await, 200);
    let res = app
        .post(
            "/v1/campaigns",
            &json!({"name": "n", "stock": 5, "coupon": {"kind": "amount_off", "amount_off": 100}}),
        )
        .await;
    assert_problem(res, 503, "unavailable").await;
    redis.restart();
    wait_ready(&app, Duration::from_secs(15)).await;
    let id = app.create_campaign(json!({})).await;
    assert_eq!(app.claim(&id, &phone(1), "d").await.status(), 201);
    app.redis = Some(redis);
    app.stop().await;
}

#[tokio::test]
async fn the_servers_version_is_read_on_one_node_and_on_a_cluster() {
    // On a cluster every master answers INFO (a map of node to text): the
    // oldest is read, not skipped as unreadable.
    let app = spawn_app().await;
    let store = stampede::store::Store::open(&app.store_url(), Duration::from_secs(2)).unwrap();
    let v = store.check_version().await.unwrap();
    assert!(
        v.is_some_and(|v| v >= stampede::store::version::MIN_REDIS),
        "{v:?}"
    );
    app.stop().await;
}
