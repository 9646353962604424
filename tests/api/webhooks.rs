//! Webhooks: events fire once each, signed; a failing receiver gets each
//! event once as an acknowledged delivery, across a restart of the service;
//! `campaign.ended` by action and by end time; forbidden URLs are refused.
//!
//! The receiver is an actix server the test runs on 127.0.0.1 only: no
//! request ever leaves loopback. The forbidden-URL tests check refusals and
//! never let a delivery be attempted.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use redis::Value as RedisValue;
use serde_json::{Value, json};
use stampede::domain::clock::{Clock, rfc3339};
use stampede::domain::secret::Secret;
use stampede::domain::webhook::signature;
use stampede::settings::Settings;

use crate::helpers::*;

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    event: String,
    signature: String,
    content_type: String,
    body: Vec<u8>,
    answered: u16,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

struct ReceiverState {
    log: Mutex<Vec<Received>>,
    /// Answer 500 to the first this many requests of each event id.
    fail_first: usize,
    /// Answer only after this long.
    delay: Duration,
}

/// A webhook receiver on 127.0.0.1, port 0.
struct Receiver {
    port: u16,
    state: Arc<ReceiverState>,
    handle: actix_web::dev::ServerHandle,
}

async fn hook(req: HttpRequest, body: web::Bytes, state: web::Data<ReceiverState>) -> HttpResponse {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let id = header("stampede-event-id");
    let answered = {
        let mut log = state.log.lock().unwrap();
        let seen = log.iter().filter(|r| r.id == id).count();
        let answered = if seen < state.fail_first { 500 } else { 200 };
        log.push(Received {
            id,
            event: header("stampede-event"),
            signature: header("stampede-signature"),
            content_type: header("content-type"),
            body: body.to_vec(),
            answered,
        });
        answered
    };
    tokio::time::sleep(state.delay).await;
    HttpResponse::build(StatusCode::from_u16(answered).unwrap()).finish()
}

impl Receiver {
    fn start(fail_first: usize) -> Self {
        Self::start_with(fail_first, Duration::ZERO)
    }

    fn start_with(fail_first: usize, delay: Duration) -> Self {
        let state = Arc::new(ReceiverState {
            log: Mutex::new(Vec::new()),
            fail_first,
            delay,
        });
        let data = web::Data::from(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/hook", web::post().to(hook))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            port,
            state,
            handle,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn received(&self) -> Vec<Received> {
        self.state.log.lock().unwrap().clone()
    }

    /// The requests answered 2xx.
    fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.answered == 200)
            .collect()
    }

    /// Waits until `done` holds for what was received (at most 15 s).
    async fn wait_until(&self, what: &str, done: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.received();
            if done(&got) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; received: {got:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

fn webhook_settings(s: &mut Settings) {
    s.webhook_allow_loopback = true;
    s.webhook_retry_base_ms = 50;
    s.webhook_claim_idle_ms = 500;
}

fn webhook_key() -> [u8; 32] {
    Secret::new(SECRET.as_bytes().to_vec())
        .unwrap()
        .derive("webhook")
}

/// Stock 10, low stock at 20% (remaining 2), webhooks to `url`.
async fn campaign_with_webhook(app: &TestApp, url: &str) -> String {
    app.create_campaign(json!({
        "stock": 10,
        "alerts": {"low_stock_percent": 20, "webhook_url": url},
    }))
    .await
}

/// Claims all 10, then 3 more that are refused.
async fn sell_out(app: &TestApp, campaign: &str) {
    for i in 0..10 {
        app.claim_code(campaign, &phone(i), &format!("d{i}")).await;
    }
    for i in 10..13 {
        assert_problem(
            app.claim(campaign, &phone(i), &format!("d{i}")).await,
            409,
            "sold_out",
        )
        .await;
    }
}

/// Each event id accepted exactly once; returns the accepted requests.
fn accepted_once(r: &Receiver) -> Vec<Received> {
    let accepted = r.accepted();
    let mut ids: Vec<&str> = accepted.iter().map(|a| a.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        accepted.len(),
        "an event was accepted twice: {accepted:#?}"
    );
    accepted
}

fn outbox(campaign: &str) -> String {
    format!("st:{{{campaign}}}:outbox")
}

/// The group's pending entries for a campaign's outbox (0: all acknowledged).
fn pending(redis: &RedisServer, campaign: &str) -> i64 {
    let (n, _, _, _): (i64, Option<String>, Option<String>, RedisValue) = redis::cmd("XPENDING")
        .arg(outbox(campaign))
        .arg("webhooks")
        .query(&mut redis.conn())
        .unwrap();
    n
}

/// The group's last-delivered-id and its pending count, once the group exists.
fn group(redis: &RedisServer, campaign: &str) -> Option<(String, i64)> {
    let groups: Vec<Vec<(String, RedisValue)>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(outbox(campaign))
        .query(&mut redis.conn())
        .ok()?;
    let g = groups.into_iter().next()?;
    let field = |name: &str| g.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    Some((
        redis::from_redis_value_ref(field("last-delivered-id")?).ok()?,
        redis::from_redis_value_ref(field("pending")?).ok()?,
    ))
}

#[tokio::test]
async fn low_stock_and_sold_out_fire_once_each_signed() {
    crate::single_node_only!("reads the outbox stream by hand");
    let receiver = Receiver::start(0);
    let app = spawn_app_with(webhook_settings).await;
    let c = campaign_with_webhook(&app, &receiver.url()).await;
    sell_out(&app, &c).await;
    receiver
        .wait_until("two deliveries", |r| r.len() >= 2)
        .await;
    // Nothing more comes: each event fired once, and was acknowledged.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = accepted_once(&receiver);
    assert_eq!(receiver.received().len(), 2, "{got:#?}");
    assert_eq!(pending(app.redis(), &c), 0);

    let key = webhook_key();
    let at = rfc3339(app.clock.now());
    for (event, remaining) in [("campaign.low_stock", 2), ("campaign.sold_out", 0)] {
        let r = got
            .iter()
            .find(|r| r.event == event)
            .unwrap_or_else(|| panic!("no {event}: {got:#?}"));
        assert_eq!(r.signature, signature(&key, &r.body), "{event} is signed");
        assert_eq!(r.content_type, "application/json");
        assert!(
            r.id.split_once('-')
                .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok()),
            "event id {} is a stream entry id",
            r.id
        );
        assert_eq!(
            r.json(),
            json!({"event": event, "campaign_id": c, "stock": 10, "remaining": remaining, "at": at})
        );
    }
    let m = app.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("stampede_webhook_deliveries_total{")
                && l.contains("event=\"campaign.sold_out\"")
                && l.contains("result=\"delivered\"")),
        "{m}"
    );
    receiver.stop().await;
}

#[tokio::test]
async fn a_failing_receiver_gets_each_event_once_after_retries() {
    crate::single_node_only!("reads the outbox stream by hand");
    let receiver = Receiver::start(2);
    let app = spawn_app_with(webhook_settings).await;
    let c = campaign_with_webhook(&app, &receiver.url()).await;
    sell_out(&app, &c).await;
    receiver
        .wait_until("both events accepted", |r| {
            r.iter().filter(|r| r.answered == 200).count() >= 2
        })
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = accepted_once(&receiver);
    assert_eq!(got.len(), 2);
    let all = receiver.received();
    for a in &got {
        let tries: Vec<u16> = all
            .iter()
            .filter(|r| r.id == a.id)
            .map(|r| r.answered)
            .collect();
        assert_eq!(
            tries,
            [500, 500, 200],
            "{}: retried, then acknowledged",
            a.event
        );
        // Every attempt is the same signed body.
        assert!(
            all.iter()
                .filter(|r| r.id == a.id)
                .all(|r| r.body == a.body && r.signature == a.signature)
        );
    }
    assert_eq!(pending(app.redis(), &c), 0);
    let m = app.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("stampede_webhook_deliveries_total{")
                && l.contains("result=\"failed\"")),
        "{m}"
    );
    receiver.stop().await;
}

#[tokio::test]
async fn a_restarted_service_takes_over_the_pending_events() {
    crate::single_node_only!("reads the outbox stream by hand");
    let receiver = Receiver::start(2);
    let redis = RedisServer::start();
    let settings = || {
        let mut s = test_settings(Some(redis.url()));
        webhook_settings(&mut s);
        s
    };
    // The first process tries once and never again on its own, so it dies
    // with both events pending under its name.
    let first = spawn_with_settings(Settings {
        webhook_retry_base_ms: 300_000,
        ..settings()
    })
    .await;
    let c = campaign_with_webhook(&first, &receiver.url()).await;
    sell_out(&first, &c).await;
    receiver
        .wait_until("a first failed attempt of each event", |r| r.len() >= 2)
        .await;
    first.stop().await;
    assert_eq!(pending(&redis, &c), 2);
    let owners: Vec<RedisValue> = redis::cmd("XPENDING")
        .arg(outbox(&c))
        .arg("webhooks")
        .arg("-")
        .arg("+")
        .arg(10)
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(owners.len(), 2);
    assert!(receiver.accepted().is_empty());

    // A new process on the same Redis takes them over once they are idle.
    let second = spawn_with_settings(settings()).await;
    receiver
        .wait_until("both events accepted", |r| {
            r.iter().filter(|r| r.answered == 200).count() >= 2
        })
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = accepted_once(&receiver);
    assert_eq!(got.len(), 2);
    for a in &got {
        let tries = receiver.received().iter().filter(|r| r.id == a.id).count();
        assert_eq!(tries, 3, "{}", a.event);
    }
    assert_eq!(pending(&redis, &c), 0);
    // Both processes joined the group, under different names.
    let consumers: Vec<RedisValue> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(outbox(&c))
        .arg("webhooks")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(consumers.len(), 2);
    second.stop().await;
    receiver.stop().await;
}

#[tokio::test]
async fn campaign_ended_fires_once_on_end_and_once_at_ends_at() {
    crate::single_node_only!("reads the outbox stream by hand");
    let receiver = Receiver::start(0);
    let app = spawn_app_with(webhook_settings).await;
    // By action. The URL names its host, so the delivery resolves it, checks
    // every address and connects to those only.
    let named = format!("http://localhost:{}/hook", receiver.port);
    let a = campaign_with_webhook(&app, &named).await;
    let res = app
        .post(&format!("/v1/campaigns/{a}/end"), &json!({}))
        .await;
    assert_eq!(res.status(), 200);
    receiver
        .wait_until("ended by action", |r| !r.is_empty())
        .await;
    let ended_at = rfc3339(app.clock.now());

    // By end time: nothing before it, one event once the clock passes it.
    let ends = app.clock.now() + time::Duration::hours(1);
    let b = app
        .create_campaign(json!({
            "stock": 10,
            "ends_at": rfc3339(ends),
            "alerts": {"webhook_url": receiver.url()},
        }))
        .await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(receiver.received().len(), 1, "{:#?}", receiver.received());
    app.clock.advance(time::Duration::hours(2));
    receiver
        .wait_until("ended by end time", |r| r.len() >= 2)
        .await;
    // `end` after the end time does not fire again.
    let res = app
        .post(&format!("/v1/campaigns/{b}/end"), &json!({}))
        .await;
    assert_eq!(res.status(), 200);
    tokio::time::sleep(Duration::from_millis(1300)).await;

    let got = accepted_once(&receiver);
    assert_eq!(receiver.received().len(), 2, "{got:#?}");
    let key = webhook_key();
    for r in &got {
        assert_eq!(r.event, "campaign.ended");
        assert_eq!(r.signature, signature(&key, &r.body));
    }
    let bodies: Vec<Value> = got.iter().map(Received::json).collect();
    assert!(
        bodies.contains(&json!({"event": "campaign.ended", "campaign_id": a, "stock": 10, "remaining": 10, "at": ended_at})),
        "{bodies:#?}"
    );
    assert!(
        bodies.contains(&json!({"event": "campaign.ended", "campaign_id": b, "stock": 10, "remaining": 10, "at": rfc3339(ends)})),
        "{bodies:#?}"
    );
    assert_eq!(pending(app.redis(), &a), 0);
    assert_eq!(pending(app.redis(), &b), 0);
    receiver.stop().await;
}

#[tokio::test]
async fn forbidden_webhook_urls_are_refused_at_create_and_patch() {
    crate::single_node_only!("reads the outbox stream by hand");
    // Loopback not allowed (the default). No delivery is ever attempted:
    // every URL is refused before anything is stored.
    let app = spawn_app().await;
    let plain = app.create_campaign(json!({"stock": 10})).await;
    for url in [
        "http://10.0.0.1/h",
        "https://169.254.169.254/latest",
        "https://[::1]/h",
        "ftp://x/y",
        "http://127.0.0.1:9/h",
    ] {
        let body = json!({
            "name": "n", "stock": 10,
            "coupon": {"kind": "amount_off", "amount_off": 100},
            "alerts": {"webhook_url": url},
        });
        let p = assert_problem(
            app.post("/v1/campaigns", &body).await,
            422,
            "invalid_request",
        )
        .await;
        assert_eq!(p["errors"][0]["field"], "alerts.webhook_url", "{url}: {p}");

        let res = app
            .client
            .patch(app.url(&format!("/v1/campaigns/{plain}")))
            .json(&json!({"alerts": {"webhook_url": url}}))
            .send()
            .await
            .unwrap();
        let p = assert_problem(res, 422, "invalid_request").await;
        assert_eq!(p["errors"][0]["field"], "alerts.webhook_url", "{url}: {p}");
    }
    assert!(app.campaign(&plain).await["alerts"]["webhook_url"].is_null());
    let watched: Vec<String> = redis::cmd("SMEMBERS")
        .arg("st:{webhooks}")
        .query(&mut app.redis().conn())
        .unwrap();
    assert!(watched.is_empty(), "{watched:?}");
}

#[tokio::test]
async fn a_url_refused_at_delivery_is_dropped_not_retried() {
    crate::single_node_only!("reads the outbox stream by hand");
    // Stored while loopback was allowed; delivered by a process that does
    // not allow it: the URL guard runs again before each attempt.
    let receiver = Receiver::start(0);
    let redis = RedisServer::start();
    let mut s = test_settings(Some(redis.url()));
    webhook_settings(&mut s);
    let first = spawn_with_settings(s).await;
    let c = first
        .create_campaign(json!({"stock": 1, "alerts": {"webhook_url": receiver.url()}}))
        .await;
    first.stop().await;
    let mut s = test_settings(Some(redis.url()));
    s.webhook_retry_base_ms = 50;
    let second = spawn_with_settings(s).await;
    second.claim_code(&c, &phone(1), "d1").await;
    // The event is read by the group and acknowledged as refused, without a request.
    let entry: Vec<(String, RedisValue)> = redis::cmd("XRANGE")
        .arg(outbox(&c))
        .arg("-")
        .arg("+")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(entry.len(), 1, "one sold_out event");
    let id = entry[0].0.clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    while group(&redis, &c) != Some((id.clone(), 0)) {
        assert!(
            Instant::now() < deadline,
            "the event was not settled: {:?}",
            group(&redis, &c)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.received().is_empty());
    let m = second.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("stampede_webhook_deliveries_total{")
                && l.contains("result=\"refused\"")),
        "{m}"
    );
    second.stop().await;
    receiver.stop().await;
}

#[tokio::test]
async fn events_written_before_the_group_existed_are_delivered() {
    crate::single_node_only!("reads the outbox stream by hand");
    // An outbox filled while no worker ran (an older release, or every
    // replica down): the group is created from the stream's start.
    let receiver = Receiver::start(0);
    let redis = RedisServer::start();
    let mut s = test_settings(Some(redis.url()));
    webhook_settings(&mut s);
    let first = spawn_with_settings(s.clone()).await;
    let c = first
        .create_campaign(json!({"stock": 10, "alerts": {"webhook_url": receiver.url()}}))
        .await;
    first.stop().await;
    let mut conn = redis.conn();
    let _: redis::RedisResult<i64> = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(outbox(&c))
        .arg("webhooks")
        .query(&mut conn);
    let id: String = redis::cmd("XADD")
        .arg(outbox(&c))
        .arg("*")
        .arg(&[
            ("event", "campaign.low_stock"),
            ("stock", "10"),
            ("remaining", "2"),
            ("at_ms", "1700000000000"),
        ])
        .query(&mut conn)
        .unwrap();
    let second = spawn_with_settings(s).await;
    receiver
        .wait_until("the old event", |r| !r.is_empty())
        .await;
    let got = accepted_once(&receiver);
    assert_eq!(got[0].id, id);
    assert_eq!(got[0].json()["at"], "2023-11-14T22:13:20.000Z");
    second.stop().await;
    receiver.stop().await;
}

#[tokio::test]
async fn a_hanging_receiver_does_not_hold_up_other_campaigns() {
    crate::single_node_only!("reads the outbox stream by hand");
    // `slow` answers after 10 s (past the 5 s delivery timeout), for ever.
    let slow = Receiver::start_with(usize::MAX, Duration::from_secs(10));
    let fast = Receiver::start(0);
    let app = spawn_app_with(webhook_settings).await;
    let stuck = app
        .create_campaign(json!({"stock": 1, "alerts": {"webhook_url": slow.url()}}))
        .await;
    app.claim_code(&stuck, &phone(1), "d1").await;
    slow.wait_until("the hanging attempt", |r| !r.is_empty())
        .await;
    let started = Instant::now();
    let ok = app
        .create_campaign(json!({"stock": 1, "alerts": {"webhook_url": fast.url()}}))
        .await;
    app.claim_code(&ok, &phone(2), "d2").await;
    fast.wait_until("the other campaign's event", |r| !r.is_empty())
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited {:?} behind a hanging receiver",
        started.elapsed()
    );
    assert_eq!(slow.received().len(), 1, "still the first attempt");
    assert_eq!(pending(app.redis(), &stuck), 1);
    fast.stop().await;
    slow.stop().await;
}

/// A campaign with `stock_shards` 3 sends its stock webhooks from its
/// shards' summed counters (`worker::shard_alerts`): `campaign.low_stock`
/// once, `campaign.sold_out` once, and once more after a stock raise sold
/// out again; checked by every instance's loop, written once. Runs on the
/// cluster pass too (the shards on three masters).
#[tokio::test]
async fn a_sharded_campaign_sends_low_stock_once_and_sold_out_once_per_sell_out() {
    let receiver = Receiver::start(0);
    let app = spawn_app_with(webhook_settings).await;
    let c = app
        .create_campaign(json!({
            "stock": 10, "stock_shards": 3,
            "alerts": {"low_stock_percent": 20, "webhook_url": receiver.url()},
        }))
        .await;
    assert_eq!(claim_until_sold_out(&app, &c, 0).await.len(), 10);
    receiver
        .wait_until("low_stock and sold_out", |r| r.len() >= 2)
        .await;
    // Four more checks of the loop: nothing is written again.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let got = accepted_once(&receiver);
    let events: Vec<&str> = got.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(
        events,
        ["campaign.low_stock", "campaign.sold_out"],
        "{got:#?}"
    );
    let low = got[0].json();
    assert!(low["remaining"].as_i64().unwrap() <= 2, "{low}");
    assert_eq!(got[1].json()["remaining"], 0);

    let res = app
        .client
        .patch(app.url(&format!("/v1/campaigns/{c}")))
        .json(&json!({"stock": 13}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(
        claim_until_sold_out(&app, &c, 1_000).await.len(),
        3,
        "exactly the raise"
    );
    receiver
        .wait_until("the second sold_out", |r| r.len() >= 3)
        .await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let got = accepted_once(&receiver);
    let events: Vec<&str> = got.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(
        events,
        [
            "campaign.low_stock",
            "campaign.sold_out",
            "campaign.sold_out"
        ],
        "low stock once per campaign, sold out once per sell-out"
    );
    assert_eq!(got[2].json()["stock"], 13);
    app.stop().await;
    receiver.stop().await;
}
