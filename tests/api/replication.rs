//! `redis_wait_replicas`: a claim is acknowledged only once a replica has
//! it (`WAIT` after each batched claim call); when the replica does not
//! confirm in time the claim is answered `503` and taken back on the
//! master, so a 503 still means not charged there.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

/// A replica of `master`, killed on drop.
struct Replica {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn start(master: &RedisServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--replicaof", "127.0.0.1", &master.port.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .args(["--daemonize", "no", "--logfile", "redis.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = r.conn().ok().and_then(|mut c| {
                redis::cmd("INFO")
                    .arg("replication")
                    .query::<String>(&mut c)
                    .ok()
            });
            if up.is_some_and(|i| i.contains("master_link_status:up")) {
                return r;
            }
            assert!(Instant::now() < deadline, "the replica never synced");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn conn(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?.get_connection()
    }

    fn signal(&self, sig: &str) -> std::io::Result<std::process::ExitStatus> {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
    }
}

/// Settings on `master` whose claims wait for one replica, 200 ms.
fn waiting_for_one_replica(master: &RedisServer) -> stampede::settings::Settings {
    let mut s = test_settings(Some(master.url()));
    s.redis_wait_replicas = 1;
    s.redis_wait_timeout_ms = 200;
    s
}

fn issued_on(conn: &mut redis::Connection, id: &str) -> i64 {
    redis::cmd("HGET")
        .arg(format!("st:{{{id}}}:meta"))
        .arg("issued")
        .query::<Option<i64>>(conn)
        .unwrap()
        .unwrap_or(0)
}

#[tokio::test]
async fn claims_wait_for_a_replica_and_a_missing_one_means_503_and_not_charged() {
    crate::single_node_only!("runs its own master and replica");
    let master = RedisServer::start();
    let replica = Replica::start(&master);
    let app = spawn_with_settings(waiting_for_one_replica(&master)).await;
    let id = app
        .create_campaign(json!({"stock": 100, "coupon": {"kind": "amount_off", "amount_off": 100}}))
        .await;
    for i in 0..5 {
        assert_eq!(
            app.claim(&id, &phone(i), &format!("d{i}")).await.status(),
            201
        );
    }
    // Acknowledged means on the replica too.
    assert_eq!(issued_on(&mut replica.conn().unwrap(), &id), 5);

    // The replica stops answering: the claim is refused 503, and taken back.
    replica.signal("STOP").unwrap();
    let res = app.claim(&id, &phone(50), "d50").await;
    assert_problem(res, 503, "unavailable").await;
    let mut m = master.conn();
    let deadline = Instant::now() + Duration::from_secs(5);
    while issued_on(&mut m, &id) - {
        let v: Option<i64> = redis::cmd("HGET")
            .arg(format!("st:{{{id}}}:meta"))
            .arg("void")
            .query(&mut m)
            .unwrap();
        v.unwrap_or(0)
    } != 5
    {
        assert!(
            Instant::now() < deadline,
            "the unconfirmed claim was not taken back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("stampede_claim_batches_unreplicated_total"),
        "counted"
    );

    // Back: claims are acknowledged again.
    replica.signal("CONT").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if app.claim(&id, &phone(60), "d60").await.status() == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "claims never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.campaign(&id).await["issued"],
        6,
        "5 + 1: the 503 charged nothing"
    );
    app.stop().await;
}

/// The events in a campaign's webhook outbox, oldest first.
fn outbox_events(conn: &mut redis::Connection, id: &str) -> Vec<String> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("st:{{{id}}}:outbox"))
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap();
    entries
        .into_iter()
        .filter_map(|(_, fields)| fields.into_iter().find(|(k, _)| k == "event"))
        .map(|(_, v)| v)
        .collect()
}

/// The claim that sells a campaign out writes `campaign.sold_out`; when
/// that claim is taken back (a 503: the replica did not confirm it), the
/// unit it frees sells out again without a second event. A stock raise
/// re-arms it: the next sell-out writes one more.
#[tokio::test]
async fn a_claim_taken_back_at_the_sell_out_does_not_fire_sold_out_again() {
    crate::single_node_only!("runs its own master and replica");
    let master = RedisServer::start();
    let replica = Replica::start(&master);
    let mut s = waiting_for_one_replica(&master);
    s.webhook_allow_loopback = true;
    let app = spawn_with_settings(s).await;
    let id = app
        .create_campaign(json!({
            "stock": 2,
            "alerts": {"low_stock_percent": 10, "webhook_url": "http://127.0.0.1:9/hook"},
        }))
        .await;
    assert_eq!(app.claim(&id, &phone(0), "d0").await.status(), 201);

    // The selling-out claim runs on the master, is not confirmed: 503, taken back.
    replica.signal("STOP").unwrap();
    assert_problem(app.claim(&id, &phone(1), "d1").await, 503, "unavailable").await;
    let mut m = master.conn();
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.campaign(&id).await["issued"] != 1 {
        assert!(Instant::now() < deadline, "the claim was not taken back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        outbox_events(&mut m, &id),
        ["campaign.low_stock", "campaign.sold_out"],
        "the script wrote its events before the 503"
    );

    // The freed unit sells out again: no second event.
    replica.signal("CONT").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = app.claim(&id, &phone(2), "d2").await.status();
        if status == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "claims never came back: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_problem(app.claim(&id, &phone(3), "d3").await, 409, "sold_out").await;
    assert_eq!(
        outbox_events(&mut m, &id),
        ["campaign.low_stock", "campaign.sold_out"],
        "sold out once a sell-out"
    );

    // A raise re-arms it.
    app.patch_campaign(&id, &json!({"stock": 3})).await;
    assert_eq!(app.claim(&id, &phone(4), "d4").await.status(), 201);
    assert_eq!(
        outbox_events(&mut m, &id),
        [
            "campaign.low_stock",
            "campaign.sold_out",
            "campaign.sold_out"
        ]
    );
    app.stop().await;
}

#[test]
fn waiting_for_replicas_needs_a_redis_url_and_a_timeout_under_the_deadline() {
    let mut s = test_settings(None);
    s.redis_wait_replicas = 1;
    assert!(
        s.clone().validate().is_err(),
        "the embedded Redis has no replica"
    );
    s.redis_url = Some("redis://127.0.0.1:6379".into());
    s.redis_wait_timeout_ms = s.store_deadline_ms;
    assert!(s.clone().validate().is_err());
    s.redis_wait_timeout_ms = 100;
    assert!(s.validate().is_ok());
}

/// The `redis_version` of a server, as numbers.
fn version(redis: &RedisServer) -> Vec<u32> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut redis.conn())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap()
        .trim()
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect()
}

/// `redis_wait_aof` (`WAITAOF 1 <replicas>`) needs Redis 7.2+. On a server
/// without `WAITAOF` (Debian 12's 7.0, what the service runs here) the
/// service refuses to start, with the reason.
#[tokio::test]
async fn waiting_for_the_aof_is_refused_at_start_on_a_redis_without_waitaof() {
    crate::single_node_only!("reads one redis-server's version by hand");
    let redis = RedisServer::start();
    let v = version(&redis);
    assert!(
        v < vec![7, 2],
        "Debian's redis-server is {v:?}: this test is for a server without WAITAOF"
    );
    let mut s = test_settings(Some(redis.url()));
    s.redis_wait_aof = true;
    let built = stampede::startup::Application::build(
        s.validate().unwrap(),
        std::sync::Arc::new(stampede::domain::clock::ManualClock::new(now())),
    )
    .await;
    let Err(e) = built else {
        panic!("redis {v:?} has no WAITAOF: the start must be refused");
    };
    assert!(e.to_string().contains("WAITAOF"), "{e}");
}

/// The WAITAOF calls a server has answered (`INFO commandstats`).
fn waitaof_calls(redis: &RedisServer) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.conn())
        .unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_waitaof:calls="))
        .and_then(|r| r.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// On a Redis with WAITAOF (the Redis 8 `redis-server` `scripts/test`
/// installs, `TEST_REDIS8_SERVER`): each claim batch waits for the
/// master's AOF fsync before it is acknowledged; when the fsync cannot be
/// confirmed (AOF switched off under the service), claims are answered 503
/// and taken back, so a 503 still means not charged; with the AOF back,
/// claims are acknowledged again.
#[tokio::test]
async fn waiting_for_the_aof_acknowledges_only_fsynced_claims_on_redis_8() {
    crate::single_node_only!("runs its own Redis 8 redis-server");
    let Some(bin) = std::env::var("TEST_REDIS8_SERVER")
        .ok()
        .filter(|b| !b.is_empty())
    else {
        eprintln!("TEST_REDIS8_SERVER unset (scripts/test sets it): nothing to run against");
        return;
    };
    let redis = RedisServer::start_bin(&bin, "always");
    assert!(version(&redis) >= vec![7, 2], "{bin} has WAITAOF");
    let mut s = test_settings(Some(redis.url()));
    s.redis_wait_aof = true;
    s.redis_wait_timeout_ms = 500;
    let app = spawn_with_settings(s).await;
    let id = app
        .create_campaign(json!({"stock": 50, "coupon": {"kind": "amount_off", "amount_off": 100}}))
        .await;
    let before = waitaof_calls(&redis);
    for i in 0..5 {
        app.claim_code(&id, &phone(i), &format!("d{i}")).await;
    }
    assert!(
        waitaof_calls(&redis) >= before + 5,
        "each acknowledged claim waited for the AOF"
    );
    assert_eq!(app.campaign(&id).await["issued"], 5);

    // The AOF off: WAITAOF cannot confirm the fsync.
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "appendonly", "no"])
        .query(&mut redis.conn())
        .unwrap();
    for i in 10..13 {
        assert_problem(
            app.claim(&id, &phone(i), &format!("d{i}")).await,
            503,
            "unavailable",
        )
        .await;
    }
    assert_eq!(app.campaign(&id).await["issued"], 5, "a 503 is not charged");

    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "appendonly", "yes"])
        .query(&mut redis.conn())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 20;
    loop {
        n += 1;
        let res = app.claim(&id, &phone(n), &format!("d{n}")).await;
        if res.status() == 201 {
            break;
        }
        assert_eq!(res.status(), 503, "{}", res.text().await.unwrap());
        assert!(Instant::now() < deadline, "claims never acknowledged again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The claims answered 503 while the AOF was being rewritten were taken back.
    assert_eq!(app.campaign(&id).await["issued"], 6);
    app.stop().await;
}
