//! `stock_shards`: one campaign's stock over several hash tags (`store::shards`).
//! These run in both passes: on one `redis-server`, and on a local 3-master
//! cluster (`TEST_REDIS_CLUSTER=1`), where the shards sit on different masters.

use std::collections::HashSet;

use serde_json::{Value, json};
use stampede::store::keys::CampaignKeys;

use crate::helpers::*;

const COUPON: &str = r#"{"kind": "amount_off", "amount_off": 100}"#;

fn coupon() -> Value {
    serde_json::from_str(COUPON).unwrap()
}

/// A connection to the node that holds `key` (the app's own redis-server,
/// or the cluster master of the key's slot).
pub fn node_of(app: &TestApp, key: &str) -> redis::Connection {
    match &app.cluster {
        Some(c) => c.node(c.owner_of(key)),
        None => app.redis().conn(),
    }
}

/// Shard `i`'s counters: (stock, issued - void, redeemed).
pub fn shard_counts(app: &TestApp, id: &str, i: u32, n: u32) -> (i64, i64, i64) {
    let meta = CampaignKeys::shard(id, i, n).meta();
    let v: Vec<Option<i64>> = redis::cmd("HMGET")
        .arg(&meta)
        .arg(&["stock", "issued", "void", "redeemed"])
        .query(&mut node_of(app, &meta))
        .unwrap();
    let g = |j: usize| v[j].unwrap_or(0);
    (g(0), g(1) - g(2), g(3))
}

async fn redeem(app: &TestApp, code: &str, order: &str) -> u16 {
    app.post("/v1/redemptions", &json!({"code": code, "order_id": order}))
        .await
        .status()
        .as_u16()
}

/// Racing claims on 3 shards: exactly the stock, no code and no phone twice
/// (`per_phone` is exact: a phone always goes to its one shard), the
/// campaign sold out only once every shard is, and every code redeems,
/// from every shard.
#[tokio::test]
async fn racing_claims_on_three_shards_issue_exactly_the_stock_and_every_code_redeems() {
    let app = spawn_app().await;
    let id = app
        .create_campaign(
            json!({"stock": 60, "stock_shards": 3, "limits": {"per_phone": 1},
            "coupon": coupon()}),
        )
        .await;
    let c = app.campaign(&id).await;
    assert_eq!(
        (c["stock_shards"].as_u64(), c["remaining"].as_i64()),
        (Some(3), Some(60))
    );
    let answers = race_claims(&app, &id, 200, 80).await;
    // Every phone gets a last try. `sold_out` means the whole campaign was
    // dry (a dry shard is refilled first), so once a racing claim was told
    // `sold_out`, no later claim is issued.
    let told_sold_out = answers.iter().any(|a| a.1 == 409);
    let mut answers = answers;
    let mut late_issued = 0;
    for i in 0..80 {
        let res = app.claim(&id, &phone(i), &format!("late-{i}")).await;
        let status = res.status().as_u16();
        late_issued += usize::from(status == 201);
        answers.push((i, status, res.json::<Value>().await.unwrap()));
    }
    if told_sold_out {
        assert_eq!(
            late_issued, 0,
            "a claim was told sold_out while stock remained"
        );
    }
    let codes = assert_exact_issue(&answers, 60);
    let c = app.campaign(&id).await;
    assert_eq!(
        (
            c["issued"].as_i64(),
            c["remaining"].as_i64(),
            c["status"].as_str()
        ),
        (Some(60), Some(0), Some("sold_out"))
    );
    assert_problem(app.claim(&id, &phone(5000), "new").await, 409, "sold_out").await;
    let per_shard: Vec<_> = (0..3).map(|i| shard_counts(&app, &id, i, 3)).collect();
    assert!(
        per_shard.iter().all(|s| s.1 > 0),
        "every shard issued: {per_shard:?}"
    );
    assert_eq!(per_shard.iter().map(|s| s.1).sum::<i64>(), 60);
    for (n, code) in codes.iter().enumerate() {
        assert_eq!(redeem(&app, code, &format!("o-{n}")).await, 200, "{code}");
    }
    let per_shard: Vec<_> = (0..3).map(|i| shard_counts(&app, &id, i, 3)).collect();
    assert!(
        per_shard.iter().all(|s| s.2 > 0),
        "codes of every shard redeemed: {per_shard:?}"
    );
    assert_eq!(app.campaign(&id).await["redeemed"], 60);
    let stats: Value = app.stats(&id).await;
    assert_eq!(
        (stats["issued"].as_i64(), stats["redeemed"].as_i64()),
        (Some(60), Some(60))
    );
    let per_minute: i64 = stats["claims_per_minute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["claims"].as_i64().unwrap())
        .sum();
    assert_eq!(per_minute, 60, "the shards' claim counts summed: {stats}");
    app.stop().await;
}

/// One phone with no quota always lands on one shard: that shard runs dry
/// after its slice and is refilled from the others until the whole stock is
/// issued (stock moved, never created).
#[tokio::test]
async fn a_dry_shard_is_refilled_from_the_others_until_the_whole_stock_is_issued() {
    let app = spawn_app().await;
    let id = app
        .create_campaign(json!({"stock": 9, "stock_shards": 3, "coupon": coupon()}))
        .await;
    let mut codes = HashSet::new();
    for k in 0..9 {
        codes.insert(app.claim_code(&id, &phone(7), &format!("d{k}")).await);
    }
    assert_eq!(codes.len(), 9);
    assert_problem(app.claim(&id, &phone(7), "d-last").await, 409, "sold_out").await;
    let per_shard: Vec<_> = (0..3).map(|i| shard_counts(&app, &id, i, 3)).collect();
    assert_eq!(
        per_shard.iter().map(|s| s.0).sum::<i64>(),
        9,
        "stock moved, not made: {per_shard:?}"
    );
    assert_eq!(
        per_shard.iter().filter(|s| s.1 == 9).count(),
        1,
        "{per_shard:?}"
    );
    assert_eq!(app.campaign(&id).await["status"], "sold_out");
    for (n, code) in codes.iter().enumerate() {
        assert_eq!(redeem(&app, code, &format!("o-{n}")).await, 200);
    }
    app.stop().await;
}

/// A transfer cut after its first step (the donor took the units, the
/// receiver never got them) or after its second (given, but the donor's
/// record not dropped) is completed by the next refill, exactly once:
/// the stock issued is still exactly the campaign's.
#[tokio::test]
async fn a_transfer_cut_half_way_is_completed_once_and_nothing_is_over_issued() {
    let app = spawn_app().await;
    let id = app
        .create_campaign(json!({"stock": 12, "stock_shards": 3, "coupon": coupon()}))
        .await;
    let take = redis::Script::new(include_str!("../../lua/shard_take.lua"));
    let give = redis::Script::new(include_str!("../../lua/shard_give.lua"));
    let shard = |i| CampaignKeys::shard(&id, i, 3);
    // Cut 1: 2 units out of shard 1, bound for shard 0, never given.
    let (d, r) = (shard(1), shard(0));
    let k: Vec<String> = take
        .key(d.meta())
        .key(d.transfers_out())
        .arg("cut-1")
        .arg(0)
        .arg(2)
        .invoke(&mut node_of(&app, &d.meta()))
        .unwrap();
    assert_eq!(k, ["2"]);
    // Cut 2: 1 unit out of shard 2 to shard 0, given, the record kept.
    let d2 = shard(2);
    let _: Vec<String> = take
        .key(d2.meta())
        .key(d2.transfers_out())
        .arg("cut-2")
        .arg(0)
        .arg(1)
        .invoke(&mut node_of(&app, &d2.meta()))
        .unwrap();
    let g: Vec<String> = give
        .key(r.meta())
        .key(r.transfers_in())
        .arg("cut-2")
        .arg(1)
        .invoke(&mut node_of(&app, &r.meta()))
        .unwrap();
    assert_eq!(g, ["given"]);
    // The campaign still counts 12 (the pending units are not lost).
    assert_eq!(app.campaign(&id).await["remaining"], 12);
    // Sell out with one phone per claim, many phones: every shard drains.
    let mut codes = HashSet::new();
    let mut n = 0;
    loop {
        n += 1;
        let res = app.claim(&id, &phone(n), &format!("d{n}")).await;
        match res.status().as_u16() {
            201 => {
                codes.insert(res.json::<Value>().await.unwrap()["code"].to_string());
            }
            409 => break,
            s => panic!("{s}: {}", res.text().await.unwrap()),
        }
        assert!(n < 200, "never sold out");
    }
    assert_eq!(
        codes.len(),
        12,
        "exactly the stock, the cut transfers included once"
    );
    let per_shard: Vec<_> = (0..3).map(|i| shard_counts(&app, &id, i, 3)).collect();
    assert_eq!(
        per_shard.iter().map(|s| s.0).sum::<i64>(),
        12,
        "{per_shard:?}"
    );
    let pending: i64 = (0..3)
        .map(|i| {
            let x = shard(i).transfers_out();
            redis::cmd("HLEN")
                .arg(&x)
                .query::<i64>(&mut node_of(&app, &shard(i).meta()))
                .unwrap()
        })
        .sum();
    assert_eq!(pending, 0, "every transfer completed");
    app.stop().await;
}

/// What stays exact across shards and what does not: `per_phone` is exact
/// (one phone, one shard); `per_device` and `per_ip` are counted per shard,
/// so one device used with phones of all 3 shards gets at most 3 coupons
/// under `per_device: 1` (docs/scaling.md), and never more.
#[tokio::test]
async fn per_phone_is_exact_across_shards_and_per_device_drifts_to_at_most_one_per_shard() {
    let app = spawn_app().await;
    let id = app
        .create_campaign(json!({"stock": 1000, "stock_shards": 3,
            "limits": {"per_phone": 2, "per_device": 1}, "coupon": coupon()}))
        .await;
    let mut issued = 0;
    for i in 0..40 {
        if app.claim(&id, &phone(i), "shared-device").await.status() == 201 {
            issued += 1;
        }
    }
    assert_eq!(issued, 3, "one coupon per shard for the shared device");
    // per_phone 2: a phone gets two (different devices), never a third.
    for k in 0..2 {
        app.claim_code(&id, &phone(500), &format!("own-{k}")).await;
    }
    let body = assert_problem(
        app.claim(&id, &phone(500), "own-3").await,
        429,
        "limit_exceeded",
    )
    .await;
    assert_eq!(body["limit"], "per_phone");
    app.stop().await;
}

/// A pause, a resume and a PATCH reach every shard; a stock raise is given
/// to the shards; lowering a sharded campaign's stock is refused with a
/// stable code.
#[tokio::test]
async fn lifecycle_changes_reach_every_shard_and_unsupported_options_are_refused() {
    let app = spawn_app().await;
    let id = app
        .create_campaign(json!({"stock": 300, "stock_shards": 3, "coupon": coupon()}))
        .await;
    let res = app
        .post(&format!("/v1/campaigns/{id}/pause"), &json!({}))
        .await;
    assert_eq!(res.status(), 200);
    for i in 0..12 {
        assert_problem(
            app.claim(&id, &phone(i), "d").await,
            409,
            "campaign_not_active",
        )
        .await;
    }
    let res = app
        .post(&format!("/v1/campaigns/{id}/resume"), &json!({}))
        .await;
    assert_eq!(res.status(), 200);
    for i in 0..12 {
        app.claim_code(&id, &phone(i), &format!("d{i}")).await;
    }
    let res = app
        .client
        .patch(app.url(&format!("/v1/campaigns/{id}")))
        .json(&json!({"limits": {"per_phone": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    for i in 0..12 {
        let body = assert_problem(
            app.claim(&id, &phone(i), "again").await,
            429,
            "limit_exceeded",
        )
        .await;
        assert_eq!(body["limit"], "per_phone");
    }
    // The stock can be raised (given to the shards), not lowered.
    let res = app
        .client
        .patch(app.url(&format!("/v1/campaigns/{id}")))
        .json(&json!({"stock": 400}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let stocks: i64 = (0..3).map(|i| shard_counts(&app, &id, i, 3).0).sum();
    assert_eq!(stocks, 400, "the raise is in the shards");
    let res = app
        .client
        .patch(app.url(&format!("/v1/campaigns/{id}")))
        .json(&json!({"stock": 350}))
        .send()
        .await
        .unwrap();
    let body = assert_problem(res, 422, "invalid_request").await;
    assert!(body.to_string().contains("lowered"), "{body}");
    for bad in [json!({"stock_shards": 0}), json!({"stock_shards": 65})] {
        let mut body = json!({"stock": 10, "coupon": coupon()});
        body.as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        assert_problem(
            app.post("/v1/campaigns", &body).await,
            422,
            "invalid_request",
        )
        .await;
    }
    assert_eq!(app.campaign(&id).await["issued"], 12);
    app.stop().await;
}

/// A stock raise on a sold-out sharded campaign whose give to one shard
/// fails half-way (that shard's `xin` made unusable): the PATCH is made
/// and answered with an error, the raise stays pending on the record, the
/// next refill gives it once, and exactly the new stock is issued.
#[tokio::test]
async fn a_stock_raise_cut_half_way_is_given_once_and_nothing_is_over_issued() {
    let app = spawn_app().await;
    let id = app
        .create_campaign(json!({"stock": 6, "stock_shards": 3, "coupon": coupon()}))
        .await;
    let mut codes = claim_until_sold_out(&app, &id, 0).await;
    assert_eq!(codes.len(), 6);
    assert_eq!(app.campaign(&id).await["status"], "sold_out");
    // Shard 1's give will fail: its `xin` holds a string.
    let shard1 = CampaignKeys::shard(&id, 1, 3);
    let (xin, node) = (shard1.transfers_in(), shard1.meta());
    let _: () = redis::cmd("SET")
        .arg(&xin)
        .arg("not a set")
        .query(&mut node_of(&app, &node))
        .unwrap();
    let res = app
        .client
        .patch(app.url(&format!("/v1/campaigns/{id}")))
        .json(&json!({"stock": 12}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_server_error(), "{}", res.status());
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "a problem"
    );
    let c = app.campaign(&id).await;
    assert_eq!(
        (c["stock"].as_i64(), c["remaining"].as_i64()),
        (Some(12), Some(6)),
        "the raise is made, and pending units count as remaining"
    );
    let _: () = redis::cmd("DEL")
        .arg(&xin)
        .query(&mut node_of(&app, &node))
        .unwrap();
    let more = claim_until_sold_out(&app, &id, 1_000).await;
    assert_eq!(more.len(), 6, "exactly the raise");
    codes.extend(more);
    assert_eq!(codes.len(), 12, "no code twice");
    let c = app.campaign(&id).await;
    assert_eq!(
        (c["issued"].as_i64(), c["remaining"].as_i64()),
        (Some(12), Some(0))
    );
    let (grants, record) = (format!("st:{{{id}}}:xout"), format!("st:{{{id}}}:meta"));
    let pending: i64 = redis::cmd("HLEN")
        .arg(&grants)
        .query(&mut node_of(&app, &record))
        .unwrap();
    assert_eq!(pending, 0, "no grant left pending");
    let stocks: i64 = (0..3).map(|i| shard_counts(&app, &id, i, 3).0).sum();
    assert_eq!(stocks, 12, "each grant given once");
    app.stop().await;
}

/// Bulk codes on a sharded campaign: the unclaimed stock is gathered into
/// shard 0 and one range of its serials reserved; the codes are unique
/// (none equal to a claimed one), each redeems once, the campaign's audit
/// names the reservation, a retry under the same key streams the same
/// codes, and claims and codes together issue exactly the stock.
#[tokio::test]
async fn bulk_codes_of_a_sharded_campaign_come_from_one_shard_and_issue_exactly_the_stock() {
    let app = spawn_app().await;
    let id = app
        .create_campaign(json!({"stock": 30, "stock_shards": 3, "coupon": coupon()}))
        .await;
    let mut codes = HashSet::new();
    for i in 0..6 {
        assert!(codes.insert(app.claim_code(&id, &phone(i), &format!("d{i}")).await));
    }
    let bulk = |key: &'static str, count: u32| {
        let app = &app;
        let id = id.clone();
        async move {
            app.client
                .post(app.url(&format!("/v1/campaigns/{id}/codes")))
                .header("Idempotency-Key", key)
                .json(&json!({ "count": count }))
                .send()
                .await
                .unwrap()
        }
    };
    let res = bulk("print-1", 20).await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let printed: Vec<String> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_owned())
        .collect();
    assert_eq!(printed.len(), 20);
    for code in &printed {
        assert!(codes.insert(code.clone()), "{code} twice");
    }
    let c = app.campaign(&id).await;
    assert_eq!(
        (c["issued"].as_i64(), c["remaining"].as_i64()),
        (Some(26), Some(4))
    );
    // The same key again: the same codes, nothing reserved.
    let again = bulk("print-1", 20).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.text().await.unwrap(), text, "the same CSV");
    assert_eq!(app.campaign(&id).await["issued"], 26);
    // More than what remains: refused, nothing reserved.
    assert_problem(bulk("print-2", 5).await, 409, "sold_out").await;
    for (n, code) in printed.iter().enumerate() {
        assert_eq!(redeem(&app, code, &format!("b-{n}")).await, 200, "{code}");
        assert_eq!(redeem(&app, code, &format!("b-{n}-again")).await, 409);
    }
    let more = claim_until_sold_out(&app, &id, 100).await;
    assert_eq!(more.len(), 4, "the rest, by claims");
    codes.extend(more);
    assert_eq!(codes.len(), 30);
    let details = audit_details(&app, &id, "campaign.codes").await;
    assert_eq!(details.len(), 1, "{details:?}");
    assert!(details[0].starts_with("count=20 first="), "{details:?}");
    app.stop().await;
}

/// Two instances on one Redis, racing on one sharded campaign: each refills
/// dry shards on its own (its own refill lock), so transfers of both
/// interleave. Still exactly the stock, no code and no phone twice, and the
/// shards' stock adds up to the campaign's (no transfer doubled or lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_refilling_at_once_issue_exactly_the_stock() {
    crate::single_node_only!("two instances share one Redis by hand");
    let a = spawn_app().await;
    let b = spawn_with_settings(test_settings(Some(a.redis().url()))).await;
    let id = a
        .create_campaign(
            json!({"stock": 90, "stock_shards": 3, "limits": {"per_phone": 1},
            "coupon": coupon()}),
        )
        .await;
    let answers = futures_util::future::join_all((0..360).map(|i| {
        let (app, id) = (if i % 2 == 0 { &a } else { &b }, id.clone());
        async move {
            let res = app.claim(&id, &phone(i % 150), &format!("dev-{i}")).await;
            let status = res.status().as_u16();
            (i % 150, status, res.json::<Value>().await.unwrap())
        }
    }))
    .await;
    let codes = assert_exact_issue(&answers, 90);
    assert_eq!(codes.len(), 90);
    let per_shard: Vec<_> = (0..3).map(|i| shard_counts(&a, &id, i, 3)).collect();
    assert_eq!(
        per_shard.iter().map(|s| s.0).sum::<i64>(),
        90,
        "no stock created or lost by transfers: {per_shard:?}"
    );
    assert_eq!(per_shard.iter().map(|s| s.1).sum::<i64>(), 90);
    for app in [&a, &b] {
        assert_eq!(app.campaign(&id).await["status"], "sold_out");
    }
    b.stop().await;
    a.stop().await;
}

/// Claims under `Idempotency-Key`s on a sharded campaign: a dry shard's
/// `sold_out` is not recorded under the key while stock can still move
/// there, so keyed claims are never told `sold_out` early either; the
/// final `sold_out` is recorded, and the key's retry gets it even after a
/// stock raise (the first answer wins).
#[tokio::test]
async fn keyed_claims_on_shards_are_told_sold_out_only_when_every_shard_is_dry() {
    let app = spawn_app().await;
    let id = app
        .create_campaign(
            json!({"stock": 30, "stock_shards": 3, "limits": {"per_phone": 1},
            "coupon": coupon()}),
        )
        .await;
    let keyed = |n: usize, key: String| {
        let (app, id) = (&app, id.clone());
        async move {
            let res = app
                .client
                .post(app.url(&format!("/v1/campaigns/{id}/claims")))
                .header("Idempotency-Key", key)
                .json(&json!({"phone": phone(n), "device_id": format!("kd-{n}")}))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (n, status, res.json::<Value>().await.unwrap())
        }
    };
    let answers =
        futures_util::future::join_all((0..90).map(|i| keyed(i % 45, format!("race-{i}")))).await;
    let told_sold_out = answers.iter().any(|a| a.1 == 409);
    let mut answers = answers;
    let mut late_issued = 0;
    for n in 0..45 {
        let a = keyed(n, format!("late-{n}")).await;
        late_issued += usize::from(a.1 == 201);
        answers.push(a);
    }
    if told_sold_out {
        assert_eq!(
            late_issued, 0,
            "a keyed claim was told sold_out while stock remained"
        );
    }
    assert_exact_issue(&answers, 30);
    // A key refused `sold_out` replays it, even once stock is raised.
    let (_, status, _) = keyed(500, "final".into()).await;
    assert_eq!(status, 409);
    let res = app
        .client
        .patch(app.url(&format!("/v1/campaigns/{id}")))
        .json(&json!({"stock": 40}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, status, body) = keyed(500, "final".into()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("sold_out")),
        "{body}"
    );
    app.claim_code(&id, &phone(501), "fresh").await;
    app.stop().await;
}
