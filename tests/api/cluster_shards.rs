//! `stock_shards` on a local 3-master cluster the test starts itself: one
//! campaign's load spread over the masters, and a master killed mid-sale.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;
use stampede::store::keys::CampaignKeys;

use crate::cluster_support::{RedisCluster, Sale, assert_every_acknowledged_code_redeems};
use crate::helpers::*;

async fn spawn_on(cluster: &RedisCluster) -> TestApp {
    spawn_with_settings(test_settings(Some(cluster.url()))).await
}

/// One campaign with `stock_shards: 3`: each master runs a fair part of its
/// script calls (none more than 45 % of the total), where unsharded one
/// master runs them all.
#[tokio::test]
async fn three_shards_spread_one_campaigns_script_calls_over_the_three_masters() {
    crate::single_node_only!("starts its own cluster (it runs in the first pass)");
    let cluster = RedisCluster::start(3);
    let app = spawn_on(&cluster).await;
    let id = app
        .create_campaign(
            json!({"stock": 100000, "stock_shards": 3, "limits": {"per_phone": 1},
            "coupon": {"kind": "amount_off", "amount_off": 100}}),
        )
        .await;
    let owners: HashSet<usize> = (0..3)
        .map(|i| cluster.owner_of(&CampaignKeys::shard(&id, i, 3).meta()))
        .collect();
    assert_eq!(owners.len(), 3, "one shard a master");
    let before = cluster.script_calls();
    for chunk in 0..12 {
        let answers = join_all((0..50).map(|k| {
            let (app, id) = (&app, id.clone());
            let n = chunk * 50 + k;
            async move { app.claim(&id, &phone(n), &format!("d{n}")).await.status() }
        }))
        .await;
        assert!(answers.iter().all(|s| *s == 201), "{answers:?}");
    }
    let after = cluster.script_calls();
    let calls: Vec<u64> = before.iter().zip(&after).map(|(b, a)| a - b).collect();
    let total: u64 = calls.iter().sum();
    eprintln!("script calls per master, 600 claims on 3 shards: {calls:?}");
    for (m, c) in calls.iter().enumerate() {
        let share = *c as f64 / total as f64;
        assert!(
            *c > 0 && share <= 0.45,
            "master {m} ran {c} of {total} script calls ({:.0} %): {calls:?}",
            share * 100.0
        );
    }
    assert_eq!(app.campaign(&id).await["issued"], 600);
    app.stop().await;
}

/// A master of one shard killed (SIGKILL) mid-sale and started again from
/// its AOF (`appendfsync always`): claims of its shard are 503 while it is
/// down, the other shards go on, and every code answered 201 redeems, none
/// twice.
#[tokio::test]
async fn a_shards_master_killed_mid_sale_and_restarted_loses_no_acknowledged_claim() {
    crate::single_node_only!("starts its own cluster (it runs in the first pass)");
    let mut cluster = RedisCluster::start_with(3, 0, "always");
    let app = spawn_on(&cluster).await;
    let id = app
        .create_campaign(json!({"stock": 100000, "stock_shards": 3,
            "coupon": {"kind": "amount_off", "amount_off": 100}}))
        .await;
    let victim = cluster.owner_of(&CampaignKeys::shard(&id, 1, 3).meta());
    let sale = Sale::start(&app, &id);
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.kill(victim);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cluster.restart(victim);
    // Claims of every shard go through again (phones of all three shards).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut probe = 900_000;
    let mut ok_in_a_row = 0;
    while ok_in_a_row < 12 {
        probe += 1;
        if app.claim(&id, &phone(probe), "probe").await.status() == 201 {
            ok_in_a_row += 1;
        } else {
            ok_in_a_row = 0;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(Instant::now() < deadline, "claims never recovered");
    }
    let (acked, _) = sale.finish().await;
    assert_every_acknowledged_code_redeems(&app, &acked).await;
    let issued = app.campaign(&id).await["issued"].as_u64().unwrap();
    assert!(
        issued as usize >= acked.len() + 12,
        "issued {issued} < acknowledged {}",
        acked.len()
    );
    app.stop().await;
}

/// `redis_wait_replicas = 1` on a cluster with a replica per master: every
/// claim batch and stock transfer of a 3-shard campaign waits on its own
/// shard's master (a fence write and `WAIT`, one pipeline routed to that
/// master), so all three masters answer `WAIT`s, and the whole stock is
/// issued, each code once.
#[tokio::test]
async fn claims_on_three_shards_wait_for_a_replica_on_each_master() {
    crate::single_node_only!("starts its own cluster (it runs in the first pass)");
    let cluster = RedisCluster::start_with(3, 1, "everysec");
    let mut s = test_settings(Some(cluster.url()));
    s.redis_wait_replicas = 1;
    // Generous, so a loaded CI machine does not turn a slow ack into a 503
    // (that path is tested in replication.rs).
    s.store_deadline_ms = 5_000;
    s.redis_wait_timeout_ms = 2_000;
    let app = spawn_with_settings(s).await;
    let id = app
        .create_campaign(json!({"stock": 30, "stock_shards": 3,
            "coupon": {"kind": "amount_off", "amount_off": 100}}))
        .await;
    let codes = claim_until_sold_out(&app, &id, 0).await;
    assert_eq!(codes.len(), 30);
    let waits = cluster.command_calls(&["wait"]);
    let masters: HashSet<usize> = (0..3)
        .map(|i| cluster.owner_of(&CampaignKeys::shard(&id, i, 3).meta()))
        .collect();
    assert_eq!(masters.len(), 3, "one shard a master");
    for m in &masters {
        assert!(
            waits[*m] > 0,
            "master {m} waited for its replica: {waits:?}"
        );
    }
    app.stop().await;
}
