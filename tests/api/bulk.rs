//! Bulk codes (`POST /v1/campaigns/{id}/codes`): reserved against stock in
//! one atomic step, streamed as CSV, each redeemable once, replayed (not
//! reserved again) under the same `Idempotency-Key`, refused before approval
//! and to anyone but an admin.

use std::collections::HashSet;

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::*;

const KEYS: &str = "ann:admin:ann-secret-1,bob:admin:bob-secret-1,shop:client:shop-secret-1";

async fn codes(app: &TestApp, id: &str, count: Value, key: Option<&str>) -> reqwest::Response {
    let mut rb = app
        .client
        .post(app.url(&format!("/v1/campaigns/{id}/codes")))
        .json(&json!({ "count": count }));
    if let Some(k) = key {
        rb = rb.header("Idempotency-Key", k);
    }
    rb.send().await.unwrap()
}

/// The CSV's rows after checking the answer's headers and the header line.
async fn csv_rows(res: reqwest::Response) -> (String, Vec<Vec<String>>) {
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(h["content-type"], "text/csv; charset=utf-8");
    let disposition = h["content-disposition"].to_str().unwrap().to_owned();
    assert!(
        disposition.starts_with("attachment; filename="),
        "{disposition}"
    );
    let text = res.text().await.unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("code,campaign_id,expires_at"));
    let rows = lines
        .map(|l| l.split(',').map(str::to_owned).collect::<Vec<_>>())
        .collect();
    (text, rows)
}

async fn redeem(app: &TestApp, code: &str, order: String) -> reqwest::Response {
    app.post(
        "/v1/redemptions",
        &json!({"code": code, "order_id": order, "order_amount": 25_900}),
    )
    .await
}

async fn issued(app: &TestApp, id: &str) -> i64 {
    app.campaign(id).await["issued"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_codes_count_against_stock_and_each_redeems_once() {
    crate::single_node_only!("reads keys by hand");
    let app = spawn_app().await;
    let id = app
        .create_campaign(json!({"stock": 1100, "valid_for_days": 30,
            "alerts": {"low_stock_percent": 5, "webhook_url": "https://ops.example/hooks/stock"}}))
        .await;
    let claimed = [
        app.claim_code(&id, &phone(1), "d1").await,
        app.claim_code(&id, &phone(2), "d2").await,
    ];

    let (_, rows) = csv_rows(codes(&app, &id, json!(1000), None).await).await;
    assert_eq!(rows.len(), 1000);
    let unique: HashSet<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(unique.len(), 1000, "every code once");
    assert!(
        claimed.iter().all(|c| !unique.contains(c.as_str())),
        "no bulk code is a claimed one"
    );
    for r in &rows {
        assert_eq!(r.len(), 3, "{r:?}");
        assert_eq!((r[0].len(), r[1].as_str()), (18, id.as_str()));
        assert!(
            r[2].ends_with('Z') && r[2] == rows[0][2],
            "one expiry per batch: {r:?}"
        );
    }
    assert_eq!(issued(&app, &id).await, 1002);

    // More than is left: sold_out, saying how many are left; nothing charged.
    let p = assert_problem(codes(&app, &id, json!(99), None).await, 409, "sold_out").await;
    assert!(
        p["detail"].as_str().unwrap().contains("98 codes left"),
        "{p}"
    );
    assert_eq!(issued(&app, &id).await, 1002);
    // Claims go on, and the rest can be reserved to the last one.
    app.claim_code(&id, &phone(3), "d3").await;
    let (_, rest) = csv_rows(codes(&app, &id, json!(97), None).await).await;
    assert_eq!(rest.len(), 97);
    assert_eq!(issued(&app, &id).await, 1100);
    assert_problem(app.claim(&id, &phone(4), "d4").await, 409, "sold_out").await;
    assert_problem(codes(&app, &id, json!(1), None).await, 409, "sold_out").await;
    assert_eq!(
        issued(&app, &id).await,
        1100,
        "claims + bulk codes = stock, never more"
    );

    // The reservations crossed the low-stock threshold and emptied the stock:
    // one event each, as a claim writes them.
    let mut conn = app.redis().conn();
    let events: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("st:{{{id}}}:outbox"))
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    let names: Vec<&str> = events
        .iter()
        .map(|(_, f)| f.iter().find(|(k, _)| k == "event").unwrap().1.as_str())
        .collect();
    assert_eq!(names, ["campaign.low_stock", "campaign.sold_out"]);

    // A sample redeems once each, concurrently; a second order is refused.
    let sample: Vec<&str> = rows.iter().step_by(20).map(|r| r[0].as_str()).collect();
    assert_eq!(sample.len(), 50);
    let first = join_all(sample.iter().map(|c| redeem(&app, c, format!("o-{c}")))).await;
    for res in first {
        assert_eq!(res.status(), 200);
    }
    let second = join_all(sample.iter().map(|c| redeem(&app, c, format!("p-{c}")))).await;
    for res in second {
        assert_problem(res, 409, "already_redeemed").await;
    }
    assert_eq!(app.campaign(&id).await["redeemed"], 50);

    // Validate: an unredeemed bulk code is valid, with its batch's expiry.
    let res = app
        .post(
            "/v1/codes/validate",
            &json!({"code": rows[1][0], "order_amount": 25_900}),
        )
        .await;
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["expires_at"], rows[1][2].as_str());
    let v: Value = app
        .post(
            "/v1/codes/validate",
            &json!({"code": rows[0][0], "order_amount": 25_900}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["valid"].as_bool(), v["code"].as_str()),
        (Some(false), Some("already_redeemed"))
    );

    // Stats count them under the `bulk` channel; the audit names each reservation.
    let stats: Value = app.stats(&id).await;
    assert_eq!(stats["redemptions"]["by_channel"]["bulk"], 50, "{stats}");
    let details = audit_details(&app, &id, "campaign.codes").await;
    assert_eq!(
        details,
        ["count=97 first=1004", "count=1000 first=3"],
        "{details:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_retry_with_the_same_key_streams_the_same_codes_and_reserves_nothing() {
    let app = spawn_app().await;
    let id = app.create_campaign(json!({"stock": 5000})).await;
    let first = codes(&app, &id, json!(1000), Some("print-run-7")).await;
    let disposition = first.headers()["content-disposition"].clone();
    let first = first.bytes().await.unwrap();
    assert_eq!(issued(&app, &id).await, 1000);

    app.clock.advance(time::Duration::seconds(5));
    let again = codes(&app, &id, json!(1000), Some("print-run-7")).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["content-disposition"], disposition);
    assert_eq!(again.bytes().await.unwrap(), first, "byte-identical CSV");
    assert_eq!(issued(&app, &id).await, 1000, "nothing reserved again");

    // The same key with another count is another request.
    assert_problem(
        codes(&app, &id, json!(999), Some("print-run-7")).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    // Without a key, each request is a new reservation.
    let (_, a) = csv_rows(codes(&app, &id, json!(10), None).await).await;
    let (_, b) = csv_rows(codes(&app, &id, json!(10), None).await).await;
    assert_ne!(a, b);
    assert_eq!(issued(&app, &id).await, 1020);
    app.stop().await;
}

#[tokio::test]
async fn codes_can_be_printed_before_the_window_opens_not_after_it_closed() {
    let app = spawn_app().await;
    let start = now() + time::Duration::hours(1);
    let fmt = &time::format_description::well_known::Rfc3339;
    let id = app
        .create_campaign(json!({
            "starts_at": start.format(fmt).unwrap(),
            "ends_at": (start + time::Duration::hours(1)).format(fmt).unwrap(),
        }))
        .await;
    let (_, rows) = csv_rows(codes(&app, &id, json!(3), None).await).await;
    assert_eq!((rows.len(), rows[0][2].as_str()), (3, ""), "no expiry");
    app.clock.advance(time::Duration::minutes(121));
    let p = assert_problem(
        codes(&app, &id, json!(3), None).await,
        409,
        "campaign_not_active",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("ended"), "{p}");
    assert_eq!(issued(&app, &id).await, 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_while_streaming_is_in_progress_and_a_dead_stream_is_replayed() {
    let app = spawn_app().await;
    let id = app.create_campaign(json!({"stock": 1_000_000})).await;
    // A large stream, of which only the first bytes are read: its record
    // stays `pending` while it runs.
    let mut first = codes(&app, &id, json!(1_000_000), Some("big")).await;
    assert_eq!(first.status(), 200);
    let head = first.chunk().await.unwrap().unwrap();
    assert!(head.starts_with(b"code,campaign_id,expires_at\n"));
    let dup = codes(&app, &id, json!(1_000_000), Some("big")).await;
    assert_problem(dup, 409, "request_in_progress").await;
    assert_eq!(issued(&app, &id).await, 1_000_000);

    // The first stream dies; after its lease a retry streams the same codes.
    drop(first);
    app.clock.advance(time::Duration::seconds(31));
    let mut retry = codes(&app, &id, json!(1_000_000), Some("big")).await;
    assert_eq!(retry.status(), 200);
    let mut again = Vec::new();
    while again.len() < head.len() {
        again.extend_from_slice(&retry.chunk().await.unwrap().unwrap());
    }
    assert_eq!(
        &again[..head.len()],
        &head[..],
        "the same codes, in the same order"
    );
    // The retry holds the lease now.
    assert_problem(
        codes(&app, &id, json!(1_000_000), Some("big")).await,
        409,
        "request_in_progress",
    )
    .await;
    drop(retry);
    assert_eq!(issued(&app, &id).await, 1_000_000, "nothing reserved again");
    app.stop().await;
}

#[tokio::test]
async fn two_requests_at_once_with_one_key_reserve_once() {
    let app = spawn_app().await;
    let id = app.create_campaign(json!({"stock": 100_000})).await;
    let (a, b) = tokio::join!(
        codes(&app, &id, json!(50_000), Some("twice")),
        codes(&app, &id, json!(50_000), Some("twice"))
    );
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    // One streams; the other is refused while it runs, or (if the first had
    // already finished) streams the same codes.
    assert!(
        statuses == [200, 409] || statuses == [200, 200],
        "{statuses:?}"
    );
    let (ta, tb) = (a.bytes().await.unwrap(), b.bytes().await.unwrap());
    if statuses == [200, 200] {
        assert_eq!(ta, tb);
    }
    assert_eq!(issued(&app, &id).await, 50_000);
    app.stop().await;
}

#[tokio::test]
async fn codes_need_an_approved_campaign_an_admin_and_a_sane_count() {
    let app = spawn_app_with(|s| s.api_keys = KEYS.into()).await;
    let send = |path: String, key: &'static str, body: Value| {
        let rb = app.client.post(app.url(&path)).bearer_auth(key).json(&body);
        async move { rb.send().await.unwrap() }
    };
    let base =
        json!({"name": "n", "stock": 10, "coupon": {"kind": "amount_off", "amount_off": 100}});
    let mut draft = base.clone();
    draft["id"] = json!("bulk-draft");
    draft["draft"] = json!(true);
    assert_eq!(
        send("/v1/campaigns".into(), "ann-secret-1", draft)
            .await
            .status(),
        201
    );
    let mut gated = base.clone();
    gated["id"] = json!("bulk-gated");
    gated["require_approval"] = json!(true);
    assert_eq!(
        send("/v1/campaigns".into(), "ann-secret-1", gated)
            .await
            .status(),
        201
    );
    let one = json!({"count": 1});
    for id in ["bulk-draft", "bulk-gated"] {
        let res = send(
            format!("/v1/campaigns/{id}/codes"),
            "ann-secret-1",
            one.clone(),
        )
        .await;
        assert_problem(res, 409, "campaign_not_active").await;
    }
    let path = "/v1/campaigns/bulk-gated/codes".to_owned();
    // Only admins.
    assert_problem(
        send(path.clone(), "shop-secret-1", one.clone()).await,
        403,
        "forbidden",
    )
    .await;
    let res = app
        .client
        .post(app.url(&path))
        .json(&one)
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "unauthorized").await;
    // Approved (by the other admin): active, then paused, both give codes.
    let approve = send(
        "/v1/campaigns/bulk-gated/approve".into(),
        "bob-secret-1",
        json!({}),
    )
    .await;
    assert_eq!(approve.status(), 200);
    assert_eq!(
        send(path.clone(), "ann-secret-1", one.clone())
            .await
            .status(),
        200
    );
    let pause = send(
        "/v1/campaigns/bulk-gated/pause".into(),
        "ann-secret-1",
        json!({}),
    )
    .await;
    assert_eq!(pause.status(), 200);
    assert_eq!(
        send(path.clone(), "ann-secret-1", one.clone())
            .await
            .status(),
        200
    );
    let end = send(
        "/v1/campaigns/bulk-gated/end".into(),
        "ann-secret-1",
        json!({}),
    )
    .await;
    assert_eq!(end.status(), 200);
    assert_problem(
        send(path.clone(), "ann-secret-1", one.clone()).await,
        409,
        "campaign_not_active",
    )
    .await;
    // Counts outside 1..=1,000,000, a missing count, an unknown campaign.
    for body in [json!({"count": 0}), json!({"count": 1_000_001}), json!({})] {
        let res = send(path.clone(), "ann-secret-1", body.clone()).await;
        assert_problem(res, 422, "invalid_request").await;
    }
    let res = send(path.clone(), "ann-secret-1", json!({"count": "ten"})).await;
    assert_problem(res, 400, "malformed_request").await;
    let res = send(
        "/v1/campaigns/nope/codes".into(),
        "ann-secret-1",
        one.clone(),
    )
    .await;
    assert_problem(res, 404, "campaign_not_found").await;
    app.stop().await;
}

#[tokio::test]
async fn a_reservation_sent_twice_reserves_once() {
    // Redis Cluster's client re-sends a call after a dropped connection. A
    // reservation under the server's request id that arrives twice is the
    // same call: the second gets the first's range, and nothing more is
    // reserved. Under a client key a second arrival while the first streams
    // is a duplicate request: 409 request_in_progress, as before.
    use stampede::domain::campaign::CampaignId;
    use stampede::domain::clock::Clock;
    use stampede::store::Store;
    use stampede::store::bulk::{ReserveIdem, ReserveOutcome};
    use stampede::store::keys::CampaignKeys;
    let app = spawn_app().await;
    let id = app.create_campaign(json!({"stock": 100})).await;
    let store = Store::open(&app.store_url(), std::time::Duration::from_secs(2)).unwrap();
    let keys = CampaignKeys::new(&CampaignId::parse(&id).unwrap());
    let now = app.clock.now_ms();
    let idem = |digest: &str, own: bool| ReserveIdem {
        digest: digest.into(),
        fingerprint: "fp".into(),
        ttl_secs: 60,
        lease_ms: 60_000,
        own,
    };
    let reserve = |idem: ReserveIdem| {
        let (store, keys) = (store.clone(), keys.clone());
        async move {
            store
                .reserve_codes(&keys, now, 10, "test", &idem)
                .await
                .unwrap()
        }
    };
    let first = reserve(idem("server-1", true)).await;
    let ReserveOutcome::Reserved(batch) = &first else {
        panic!("{first:?}")
    };
    assert_eq!(reserve(idem("server-1", true)).await, first);
    assert_eq!(app.campaign(&id).await["issued"], 10);
    let keyed = reserve(idem("client-1", false)).await;
    assert!(matches!(keyed, ReserveOutcome::Reserved(ref b) if b.first == batch.first + 10));
    assert_eq!(
        reserve(idem("client-1", false)).await,
        ReserveOutcome::InProgress
    );
    assert_eq!(app.campaign(&id).await["issued"], 20);
    app.stop().await;
}
