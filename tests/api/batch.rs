//! Group commit: concurrent claims on one campaign share script calls, and
//! batching changes no outcome (store::batch, lua/claim.lua).

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{assert_exact_issue, assert_problem, counter, phone, spawn_app};

#[tokio::test]
async fn concurrent_claims_share_calls_and_never_over_issue() {
    let app = spawn_app().await;
    let id = app
        .create_campaign(json!({"stock": 120, "limits": {"per_phone": 1}}))
        .await;
    // 150 phones, each twice: 300 claims for 120 coupons.
    let answers = join_all((0..300).map(|i| {
        let (app, id) = (&app, &id);
        async move {
            let res = app.claim(id, &phone(i % 150), &format!("dev-{i}")).await;
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            (i % 150, status, body)
        }
    }))
    .await;
    assert_exact_issue(&answers, 120);
    let c = app.campaign(&id).await;
    assert_eq!(
        (c["issued"].as_i64(), c["remaining"].as_i64()),
        (Some(120), Some(0))
    );

    let m = app.metrics().await;
    let (calls, claims) = (
        counter(&m, "stampede_claim_batch_size_count"),
        counter(&m, "stampede_claim_batch_size_sum"),
    );
    assert!(
        claims >= 120.0,
        "every issued claim went through a call: {claims}"
    );
    assert!(
        calls < claims,
        "some calls carried several claims: {calls} calls, {claims} claims"
    );
    app.stop().await;
}

/// claim.lua's answers, one per claim, as their fields: a claim's answer is
/// its fields joined by '|', an error an array.
fn answers(out: Vec<redis::Value>) -> Vec<Vec<String>> {
    out.into_iter()
        .map(|v| match v {
            redis::Value::BulkString(b) => String::from_utf8(b)
                .unwrap()
                .split('|')
                .map(str::to_owned)
                .collect(),
            v => redis::from_redis_value(v).unwrap(),
        })
        .collect()
}

/// One call of claim.lua with `claims` as (phone, device key, device).
fn call(id: &str, now: &str, claims: &[(&str, &str, &str)]) -> redis::Cmd {
    call_with_rids(id, now, claims, usize::MAX)
}

/// The same, with request ids that repeat after `cycle` claims (a
/// transport re-send that reaches the same batch).
fn call_with_rids(id: &str, now: &str, claims: &[(&str, &str, &str)], cycle: usize) -> redis::Cmd {
    let k = |s: &str| format!("st:{{{id}}}:{s}");
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(concat!(
        include_str!("../../lua/hcache.lua"),
        include_str!("../../lua/rules_core.lua"),
        include_str!("../../lua/claim.lua")
    ))
    .arg(4 + 4 * claims.len())
    .arg(k("meta"))
    .arg(k("cl"))
    .arg(k("outbox"))
    .arg(k("stats"));
    for (_, device_key, _) in claims {
        cmd.arg(k("q:p:0"))
            .arg(k(device_key))
            .arg(k("q:i:0"))
            .arg(k("rid:1"));
    }
    // n claims, an empty rule table.
    cmd.arg(claims.len()).arg(0);
    for (i, (phone, _, device)) in claims.iter().enumerate() {
        // Mode 's' (a server request id), rollout bucket 0, no channel,
        // no deadline (the id's hash then lives a minute), no rules.
        cmd.arg(now)
            .arg(*phone)
            .arg(*device)
            .arg("ip")
            .arg("s")
            .arg("0")
            .arg("")
            .arg("0")
            .arg(0)
            .arg(format!("rid{}", i % cycle));
    }
    cmd
}

#[tokio::test]
async fn a_request_id_sent_twice_in_one_batch_is_charged_once() {
    crate::single_node_only!("calls the script by hand on one node");
    let app = spawn_app().await;
    let id = app.create_campaign(json!({"stock": 10})).await;
    let mut conn = app.redis().conn();
    let now = (crate::helpers::now().unix_timestamp_nanos() / 1_000_000).to_string();
    // Claims 0 and 2 carry request id rid0, 1 and 3 carry rid1: the second
    // of each pair is a transport re-send that reaches the same batch.
    let out: Vec<redis::Value> = call_with_rids(
        &id,
        &now,
        &[
            ("pa", "q:d:0", "da"),
            ("pb", "q:d:0", "db"),
            ("pa", "q:d:0", "da"),
            ("pb", "q:d:0", "db"),
        ],
        2,
    )
    .query(&mut conn)
    .unwrap();
    let out = answers(out);
    assert_eq!(out[0], ["ok", "1", &now, "0", "0"]);
    assert_eq!(out[1], ["ok", "2", &now, "0", "0"]);
    assert_eq!(
        out[2],
        ["ok", "1", &now, "0", "1"],
        "a replay, not a charge"
    );
    assert_eq!(out[3], ["ok", "2", &now, "0", "1"]);
    let c = app.campaign(&id).await;
    assert_eq!(c["issued"].as_i64(), Some(2));
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("st:{{{id}}}:rid:1"))
        .query(&mut conn)
        .unwrap();
    assert!(ttl > 0, "the request-id hash expires: {ttl}");
    app.stop().await;
}

#[tokio::test]
async fn each_claim_of_a_batch_is_checked_charged_and_answered_on_its_own() {
    crate::single_node_only!("calls the script by hand on one node");
    let app = spawn_app().await;
    let id = app
        .create_campaign(json!({"stock": 10, "limits": {"per_phone": 1}}))
        .await;
    let mut conn = app.redis().conn();
    let _: () = redis::cmd("SADD")
        .arg(format!("st:{{{id}}}:poison"))
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let now = (crate::helpers::now().unix_timestamp_nanos() / 1_000_000).to_string();
    let out: Vec<redis::Value> = call(
        &id,
        &now,
        &[
            ("pa", "q:d:0", "da"),
            // Its device bucket is a set: WRONGTYPE on the read.
            ("pb", "poison", "db"),
            // The same phone as the first claim: sees the first's charge.
            ("pa", "q:d:0", "dc"),
            ("pd", "q:d:0", "dd"),
        ],
    )
    .query(&mut conn)
    .unwrap();
    let out = answers(out);
    assert_eq!(out[0], ["ok", "1", &now, "0", "0"]);
    assert_eq!(out[1][0], "error");
    assert!(out[1][1].contains("WRONGTYPE"), "{:?}", out[1]);
    assert_eq!(out[2], ["limit", "per_phone", "0"]);
    assert_eq!(out[3], ["ok", "2", &now, "0", "0"]);
    // The failed claim charged nothing: no quota count for its phone, no
    // request id; the issued count and the records are the two coupons.
    let pb: Option<String> = redis::cmd("HGET")
        .arg(format!("st:{{{id}}}:q:p:0"))
        .arg("pb")
        .query(&mut conn)
        .unwrap();
    assert_eq!(pb, None);
    let rids: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("st:{{{id}}}:rid:1"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(rids.len(), 2, "{rids:?}");
    let c = app.campaign(&id).await;
    assert_eq!(c["issued"].as_i64(), Some(2));
    let stats: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(format!("st:{{{id}}}:stats"))
        .query(&mut conn)
        .unwrap();
    assert!(
        stats.contains(&("rej:per_phone".into(), "1".into())),
        "{stats:?}"
    );
    // A replay of the first claim's request id is answered from its record.
    let again: Vec<redis::Value> = call(&id, &now, &[("pa", "q:d:0", "da")])
        .query(&mut conn)
        .unwrap();
    let again = answers(again);
    assert_eq!(again[0], ["ok", "1", &now, "0", "1"]);
    app.stop().await;
}

#[tokio::test]
async fn each_rule_check_of_a_batch_sees_the_ones_before_and_fails_alone() {
    crate::single_node_only!("calls the script by hand on one node");
    let redis = crate::helpers::RedisServer::start();
    let mut conn = redis.conn();
    // At 1,000,000 ms a 60 s window is in epoch 15 (buckets of 6 s, 11 an
    // epoch): the poisoned rule's current epoch hash is a string.
    let _: () = redis::cmd("SET")
        .arg("poison:e:15")
        .arg("x")
        .query(&mut conn)
        .unwrap();
    let request = |rule: &str| {
        let keys = vec![format!("{rule}:e:"), format!("{rule}:b:f1")];
        let args: Vec<String> = [
            "check", "1000000", "1", "r", "1", "60000", "1", "", "0", "0", "1", "0", "0", "f1",
        ]
        .map(String::from)
        .to_vec();
        (keys, args)
    };
    let batch = [request("a"), request("poison"), request("a"), request("b")];
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(concat!(
        include_str!("../../lua/hcache.lua"),
        include_str!("../../lua/rules_core.lua"),
        include_str!("../../lua/rules.lua")
    ))
    .arg(1 + batch.iter().map(|(k, _)| k.len()).sum::<usize>())
    .arg("rc:1");
    for (k, _) in &batch {
        cmd.arg(k);
    }
    // The call's id and its record's expiry; then each request's key and
    // argument counts and its deadline (0: none).
    cmd.arg("batch")
        .arg(batch.len())
        .arg("call-1")
        .arg(4_000_000_000u64);
    for (k, a) in &batch {
        cmd.arg(k.len()).arg(a.len()).arg(0);
    }
    for (_, a) in &batch {
        cmd.arg(a);
    }
    let out: Vec<Vec<String>> = cmd.query(&mut conn).unwrap();
    assert_eq!(out[0][0], "ok", "{out:?}");
    assert_eq!(out[1][0], "error");
    assert!(out[1][1].contains("WRONGTYPE"), "{:?}", out[1]);
    assert_eq!(
        out[2][0], "over",
        "the third sees the first's charge: {out:?}"
    );
    assert_eq!(out[3][0], "ok");
    let poison: String = redis::cmd("GET")
        .arg("poison:e:15")
        .query(&mut conn)
        .unwrap();
    assert_eq!(poison, "x", "the failed check wrote nothing");
}

#[tokio::test]
async fn a_campaign_out_of_serials_is_sold_out_not_charged() {
    crate::single_node_only!("sets a campaign's serial cap by hand on one node");
    // Taken-back claims use serials too: once the last serial a code can
    // carry is used, a claim is refused as sold out, before any charge
    // (never charged and then answered 500 for a code that cannot be made).
    let app = spawn_app().await;
    let id = app.create_campaign(json!({"stock": 10})).await;
    let mut conn = app.redis().conn();
    let _: () = redis::cmd("HSET")
        .arg(format!("st:{{{id}}}:meta"))
        .arg("max_serial")
        .arg(2)
        .query(&mut conn)
        .unwrap();
    assert_eq!(app.claim(&id, &phone(1), "d1").await.status(), 201);
    assert_eq!(app.claim(&id, &phone(2), "d2").await.status(), 201);
    assert_problem(app.claim(&id, &phone(3), "d3").await, 409, "sold_out").await;
    assert_eq!(app.campaign(&id).await["issued"], 2);
    app.stop().await;
}
