//! stampede on a local 3-master Redis Cluster (`cluster_support`): the same
//! scripts, each on its own slot, through redis-rs's cluster connection.

use std::collections::HashSet;

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::cluster_support::RedisCluster;
use crate::helpers::*;

async fn spawn_on(cluster: &RedisCluster, rules: Option<&RulesFile>) -> TestApp {
    let mut s = test_settings(Some(cluster.url()));
    s.limits_file = rules.map(|r| r.path.clone());
    spawn_with_settings(s).await
}

#[tokio::test]
async fn racing_claims_issue_exactly_the_stock_and_every_code_redeems() {
    let cluster = RedisCluster::start(3);
    let app = spawn_on(&cluster, None).await;
    let id = app
        .create_campaign(json!({"stock": 60, "limits": {"per_phone": 1},
            "coupon": {"kind": "amount_off", "amount_off": 100}}))
        .await;
    let answers = join_all((0..200).map(|i| {
        let (app, id) = (&app, id.clone());
        async move {
            let res = app.claim(&id, &phone(i % 80), &format!("dev-{i}")).await;
            let status = res.status().as_u16();
            (i % 80, status, res.json::<Value>().await.unwrap())
        }
    }))
    .await;
    let issued: Vec<_> = answers.iter().filter(|a| a.1 == 201).collect();
    assert_eq!(issued.len(), 60, "exactly the stock");
    let codes: HashSet<&str> = issued
        .iter()
        .map(|a| a.2["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes.len(), 60, "no code twice");
    let phones: HashSet<usize> = issued.iter().map(|a| a.0).collect();
    assert_eq!(phones.len(), 60, "per_phone is exact");
    for (_, status, body) in &answers {
        assert!(
            *status == 201
                || (*status == 409 && body["code"] == "sold_out")
                || (*status == 429 && body["limit"] == "per_phone"),
            "{status} {body}"
        );
    }
    let c = app.campaign(&id).await;
    assert_eq!(
        (c["issued"].as_i64(), c["status"].as_str()),
        (Some(60), Some("sold_out"))
    );
    for (n, code) in codes.iter().take(10).enumerate() {
        let res = app
            .post(
                "/v1/redemptions",
                &json!({"code": code, "order_id": format!("o-{n}")}),
            )
            .await;
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }
    assert_eq!(app.campaign(&id).await["redeemed"], 10);
    app.stop().await;
}

#[tokio::test]
async fn campaigns_spread_over_the_masters_and_are_listed() {
    let cluster = RedisCluster::start(3);
    let app = spawn_on(&cluster, None).await;
    let before = cluster.script_calls();
    let mut ids = Vec::new();
    for i in 0..9 {
        let id = app
            .create_campaign(json!({"id": format!("spread-{i}"), "stock": 10,
                "coupon": {"kind": "amount_off", "amount_off": 100}}))
            .await;
        for k in 0..3 {
            assert_eq!(
                app.claim(&id, &phone(k), &format!("d{k}")).await.status(),
                201
            );
        }
        ids.push(id);
    }
    let after = cluster.script_calls();
    let busy = before.iter().zip(&after).filter(|(b, a)| a > b).count();
    assert!(
        busy >= 2,
        "scripts ran on {busy} masters: {before:?} -> {after:?}"
    );
    // The list reads the campaign numbers, one key each, across slots.
    let list: Value = app.get("/v1/campaigns").await.json().await.unwrap();
    assert!(list["campaigns"].is_array(), "{list}");
    let listed: HashSet<&str> = list["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    for id in &ids {
        assert!(listed.contains(id.as_str()), "{id} listed");
    }
    app.stop().await;
}

#[tokio::test]
async fn rules_on_several_slots_refuse_and_bans_apply() {
    let rules = RulesFile::new(
        r#"
[[rule]]
name = "ip-burst"
endpoint = "claim"
key = ["ip"]
limit = 1000
window = "1m"

[[rule]]
name = "device-farm"
endpoint = "claim"
key = ["device"]
distinct = "phone"
limit = 2
window = "1h"

[[rule]]
name = "phone-rate"
endpoint = "claim"
key = ["phone"]
limit = 1
window = "1m"
"#,
    );
    let cluster = RedisCluster::start(3);
    let app = spawn_on(&cluster, Some(&rules)).await;
    let id = app
        .create_campaign(json!({"stock": 100, "coupon": {"kind": "amount_off", "amount_off": 100}}))
        .await;
    let res = app.claim(&id, &phone(1), "farm").await;
    assert_eq!(res.status(), 201);
    assert!(res.headers().contains_key("ratelimit-policy"));
    let body = assert_problem(
        app.claim(&id, &phone(1), "other").await,
        429,
        "limit_exceeded",
    )
    .await;
    assert_eq!(body["limit"], "phone-rate");
    assert_eq!(app.claim(&id, &phone(2), "farm").await.status(), 201);
    let body = assert_problem(
        app.claim(&id, &phone(3), "farm").await,
        429,
        "limit_exceeded",
    )
    .await;
    assert_eq!(body["limit"], "device-farm", "a third phone on one device");
    assert_eq!(app.campaign(&id).await["issued"], 2);
    // A ban lives in its own slot.
    let res = app
        .post(
            "/v1/admin/bans",
            &json!({"kind": "phone", "value": phone(9), "duration": "1h"}),
        )
        .await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    assert_problem(app.claim(&id, &phone(9), "d9").await, 403, "blocked").await;
    app.stop().await;
}
