//! The rules file (LIMITS.md): rate rules, distinct counts, lists, shadow
//! mode, proxies, hot reload, check-config. Bans and the shield are in
//! `bans.rs`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn a_rate_rule_refuses_with_429_and_ratelimit_headers() {
    let (app, _f) = spawn_app_with_rules(
        r#"
[[rule]]
name = "ip-burst"
endpoint = "claim"
key = ["ip"]
limit = 3
window = "1m"
"#,
        |_| {},
    )
    .await;
    let c = app.create_campaign(json!({})).await;
    for i in 0..3 {
        let res = app.claim(&c, &phone(i), &format!("d{i}")).await;
        assert_eq!(res.status(), 201);
        assert_eq!(header(&res, "ratelimit-policy"), r#""ip-burst";q=3;w=60"#);
        assert!(
            header(&res, "ratelimit").starts_with(&format!(r#""ip-burst";r={};t="#, 2 - i)),
            "{}",
            header(&res, "ratelimit")
        );
    }
    let res = app.claim(&c, &phone(9), "d9").await;
    let retry: u64 = header(&res, "retry-after").parse().unwrap();
    let rl = header(&res, "ratelimit");
    assert_eq!(header(&res, "ratelimit-policy"), r#""ip-burst";q=3;w=60"#);
    let t: u64 = rl.rsplit("t=").next().unwrap().parse().unwrap();
    assert!(rl.starts_with(r#""ip-burst";r=0;t="#), "{rl}");
    assert!(t > 0 && t <= 66 && retry >= t, "retry {retry}, t {t}");
    let body = assert_problem(res, 429, "limit_exceeded").await;
    assert_eq!(body["limit"], "ip-burst");
    assert_eq!(
        app.campaign(&c).await["issued"],
        3,
        "a refused claim charges nothing"
    );
    // Another endpoint is not under this claim rule.
    let v = app
        .post("/v1/codes/validate", &json!({"code": "0".repeat(18)}))
        .await;
    assert_eq!(v.status(), 200);
    app.stop().await;
}

/// A rule's counts live in one hash per epoch of 11 buckets
/// (`lua/rules.lua`): what was counted just before an epoch ended still
/// counts after it, until its bucket leaves the window.
#[tokio::test]
async fn a_rate_window_slides_across_the_epochs_that_hold_its_counts() {
    use stampede::domain::clock::Clock as _;
    let (app, _f) = spawn_app_with_rules(
        "[[rule]]\nname = \"slide\"\nendpoint = \"claim\"\nkey = [\"ip\"]\nlimit = 3\nwindow = \"1m\"\n",
        |_| {},
    )
    .await;
    let c = app.create_campaign(json!({"stock": 100})).await;
    let ms = |n: i64| time::Duration::milliseconds(n);
    // A 1 m window has buckets of 6 s, 11 to an epoch of 66 s. Start 2 s
    // before an epoch ends.
    let epoch = 66_000;
    let now = app.clock.now_ms();
    app.clock
        .advance(ms((epoch - now.rem_euclid(epoch) - 2_000).rem_euclid(epoch)));
    let mut n = 0;
    let mut claim = async || {
        n += 1;
        app.claim(&c, &phone(n), &format!("slide-{n}")).await
    };
    assert_eq!(claim().await.status(), 201);
    assert_eq!(claim().await.status(), 201);
    // The next epoch: the two still count.
    app.clock.advance(ms(4_000));
    let third = claim().await;
    assert_eq!(third.status(), 201);
    assert!(header(&third, "ratelimit").starts_with(r#""slide";r=0;"#));
    let refused = claim().await;
    assert_problem(refused, 429, "limit_exceeded").await;
    // 59.5 s after the epoch ended, the first two's bucket is still in the
    // window (an exact log would have let them go 1.5 s before: a bucket
    // counts at most 6 s, w/10, past the window).
    app.clock.advance(ms(55_000));
    assert_problem(claim().await, 429, "limit_exceeded").await;
    app.clock.advance(ms(2_500));
    assert_problem(claim().await, 429, "limit_exceeded").await;
    // 60.5 s after, it left.
    app.clock.advance(ms(1_000));
    assert_eq!(claim().await.status(), 201);
    assert_eq!(claim().await.status(), 201);
    assert_problem(claim().await, 429, "limit_exceeded").await;
    app.stop().await;
}

/// The epochs of a 1 m window's rule: 66 s (11 buckets of 6 s).
const EPOCH_MS: i64 = 66_000;

/// Two instances on one Redis with a rule of 3 claims a minute by address,
/// and a campaign.
async fn two_instances_with_an_ip_rule() -> (TestApp, TestApp, RulesFile, String) {
    let (a, b, file) = spawn_two_apps_with_rules(
        "[[rule]]\nname = \"skew\"\nendpoint = \"claim\"\nkey = [\"ip\"]\nlimit = 3\nwindow = \"1m\"\n",
    )
    .await;
    let c = a.create_campaign(json!({"stock": 50})).await;
    (a, b, file, c)
}

/// An instance whose clock is up to two epochs behind another's still reads
/// every bucket it counts: the one ahead drops only older epoch hashes.
#[tokio::test]
async fn an_instance_two_epochs_behind_another_still_counts_its_window() {
    crate::single_node_only!("two instances share one Redis by hand");
    use stampede::domain::clock::{Clock as _, from_ms};
    let (a, b, _file, c) = two_instances_with_an_ip_rule().await;
    let ms = |n: i64| time::Duration::milliseconds(n);
    // `a` fills the rule 2 s before epoch e ends.
    let epoch = EPOCH_MS;
    let now = a.clock.now_ms();
    a.clock
        .advance(ms((epoch - now.rem_euclid(epoch) - 2_000).rem_euclid(epoch)));
    for i in 0..3 {
        assert_eq!(a.claim(&c, &phone(i), &format!("a{i}")).await.status(), 201);
    }
    // `b` runs in epoch e+3: its window is empty, and its call drops old
    // epoch hashes.
    b.clock.set(from_ms(a.clock.now_ms() + 2 * epoch + 3_000));
    assert_eq!(b.claim(&c, &phone(10), "b0").await.status(), 201);
    // `a`, 4 s on (epoch e+1), still counts its three of epoch e.
    a.clock.advance(ms(4_000));
    assert_problem(a.claim(&c, &phone(11), "a3").await, 429, "limit_exceeded").await;
    b.stop().await;
    a.stop().await;
}

/// An instance whose clock runs into the next epoch writes that epoch's
/// hash; one still in the epoch before reads it (its own call checks that
/// the hash exists before reading its fields) and counts those requests.
#[tokio::test]
async fn an_instance_whose_clock_runs_ahead_is_counted_by_the_one_behind() {
    crate::single_node_only!("two instances share one Redis by hand");
    use stampede::domain::clock::{Clock as _, from_ms};
    let (a, b, _file, c) = two_instances_with_an_ip_rule().await;
    // `a` 1 s into epoch e+1, `b` 2 s before its start.
    let epoch = EPOCH_MS;
    let now = a.clock.now_ms();
    let next = now - now.rem_euclid(epoch) + epoch;
    a.clock.set(from_ms(next + 1_000));
    b.clock.set(from_ms(next - 2_000));
    for i in 0..3 {
        assert_eq!(a.claim(&c, &phone(i), &format!("a{i}")).await.status(), 201);
    }
    assert_problem(b.claim(&c, &phone(10), "b0").await, 429, "limit_exceeded").await;
    b.stop().await;
    a.stop().await;
}

/// On a single node a claim's rules run in the claim's own script call;
/// a claim refused before that call (an unknown campaign), or sent under an
/// Idempotency-Key, runs them on their own. Every way counts the same.
#[tokio::test]
async fn every_claim_counts_against_its_rules_whichever_call_checks_them() {
    let (app, _f) = spawn_app_with_rules(
        "[[rule]]\nname = \"ip-burst\"\nendpoint = \"claim\"\nkey = [\"ip\"]\nlimit = 3\nwindow = \"1m\"\n",
        |_| {},
    )
    .await;
    let c = app.create_campaign(json!({"stock": 10})).await;
    let res = app.claim("no-such-campaign", &phone(1), "d1").await;
    assert_problem(res, 404, "campaign_not_found").await;
    let res = app
        .client
        .post(app.url(&format!("/v1/campaigns/{c}/claims")))
        .header("Idempotency-Key", "k-1")
        .json(&json!({"phone": phone(2), "device_id": "d2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert!(header(&res, "ratelimit").starts_with(r#""ip-burst";r=1;"#));
    let res = app.claim(&c, &phone(3), "d3").await;
    assert_eq!(res.status(), 201);
    assert!(
        header(&res, "ratelimit").starts_with(r#""ip-burst";r=0;"#),
        "{}",
        header(&res, "ratelimit")
    );
    let res = app.claim(&c, &phone(4), "d4").await;
    let body = assert_problem(res, 429, "limit_exceeded").await;
    assert_eq!(body["limit"], "ip-burst");
    assert_eq!(
        app.campaign(&c).await["issued"],
        2,
        "the refused claim was not tried"
    );
    app.stop().await;
}

#[tokio::test]
async fn exactly_limit_requests_pass_when_200_race_on_one_key() {
    let (app, _f) = spawn_app_with_rules(
        "[[rule]]\nname = \"race\"\nkey = [\"ip\"]\nlimit = 20\nwindow = \"1h\"\n",
        |_| {},
    )
    .await;
    let c = app.create_campaign(json!({"stock": 1000})).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (client, url) = (
            app.client.clone(),
            app.url(&format!("/v1/campaigns/{c}/claims")),
        );
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"phone": phone(i), "device_id": format!("d{i}")}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            201 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!((ok, limited), (20, 180));
    assert_eq!(app.campaign(&c).await["issued"], 20);
    app.stop().await;
}

#[tokio::test]
async fn ipv6_clients_are_counted_per_64_and_only_through_trusted_proxies() {
    let rules = r#"
[defaults]
trusted_proxies = ["127.0.0.1/32"]
[[rule]]
name = "v6"
key = ["ip"]
limit = 2
window = "1h"
"#;
    let (app, _f) = spawn_app_with_rules(rules, |_| {}).await;
    let c = app.create_campaign(json!({})).await;
    let a = app.claim_from(&c, &phone(1), "d1", "2001:db8:1:2::1").await;
    let b = app
        .claim_from(&c, &phone(2), "d2", "2001:db8:1:2:ffff::9")
        .await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (201, 201));
    let same64 = app
        .claim_from(&c, &phone(3), "d3", "2001:db8:1:2::77")
        .await;
    assert_problem(same64, 429, "limit_exceeded").await;
    let other64 = app.claim_from(&c, &phone(4), "d4", "2001:db8:1:3::1").await;
    assert_eq!(other64.status(), 201);
    // The left part of the header is the client's word: a spoofed hop
    // before a real one does not make a new client.
    let spoofed = app
        .claim_from(&c, &phone(5), "d5", "198.51.100.1, 2001:db8:1:2::5")
        .await;
    assert_problem(spoofed, 429, "limit_exceeded").await;
    app.stop().await;

    // Without a trusted proxy the header is ignored: every request is the peer.
    let (app, _f) = spawn_app_with_rules(
        "[[rule]]\nname = \"v6b\"\nkey = [\"ip\"]\nlimit = 1\nwindow = \"1h\"\n",
        |_| {},
    )
    .await;
    let c = app.create_campaign(json!({})).await;
    let a = app.claim_from(&c, &phone(1), "d1", "198.51.100.1").await;
    assert_eq!(a.status(), 201);
    let b = app.claim_from(&c, &phone(2), "d2", "198.51.100.2").await;
    assert_problem(b, 429, "limit_exceeded").await;
    app.stop().await;
}

#[tokio::test]
async fn a_distinct_rule_counts_phones_per_device() {
    let (app, _f) = spawn_app_with_rules(
        r#"
[[rule]]
name = "device-farm"
endpoint = "claim"
key = ["device"]
distinct = "phone"
limit = 3
window = "24h"
"#,
        |_| {},
    )
    .await;
    let c = app.create_campaign(json!({"stock": 50})).await;
    for i in 0..3 {
        assert_eq!(app.claim(&c, &phone(i), "farm-1").await.status(), 201);
    }
    let fourth = app.claim(&c, &phone(3), "farm-1").await;
    assert_eq!(
        assert_problem(fourth, 429, "limit_exceeded").await["limit"],
        "device-farm"
    );
    // A phone already counted is not a new one; another device has its own count.
    assert_eq!(app.claim(&c, &phone(1), "farm-1").await.status(), 201);
    assert_eq!(app.claim(&c, &phone(3), "farm-2").await.status(), 201);
    // A day later the window has moved on.
    app.clock.advance(time::Duration::hours(25));
    assert_eq!(app.claim(&c, &phone(7), "farm-1").await.status(), 201);
    app.stop().await;
}

/// Rule state takes no key per identity: a rule keeps one hash per epoch
/// (on a single node), and a rule key gets its own small hash only once it
/// breaks a rule that bans.
#[tokio::test]
async fn rule_state_adds_no_key_per_phone_or_device() {
    crate::single_node_only!("reads keys by hand");
    let (app, _f) = spawn_app_with_rules(
        r#"
[[rule]]
name = "farm"
endpoint = "claim"
key = ["device"]
distinct = "phone"
limit = 3
window = "24h"

[[rule]]
name = "rate"
endpoint = "claim"
key = ["phone"]
limit = 5
window = "1m"
ban = { after = 1, duration = "10m" }
"#,
        |_| {},
    )
    .await;
    let c = app.create_campaign(json!({"stock": 100})).await;
    for i in 0..40 {
        assert_eq!(
            app.claim(&c, &phone(i), &format!("dev-{i}")).await.status(),
            201
        );
    }
    let mut conn = app.redis().conn();
    let keys = |conn: &mut redis::Connection| -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("st:{r:*").query(conn).unwrap();
        keys.sort();
        keys
    };
    let rule_keys = keys(&mut conn);
    assert_eq!(rule_keys.len(), 2, "one epoch hash a rule: {rule_keys:?}");
    assert!(rule_keys.iter().all(|k| k.contains(":e:")), "{rule_keys:?}");
    let fields: usize = redis::cmd("HLEN")
        .arg(rule_keys.iter().find(|k| k.contains(":rate:")).unwrap())
        .query(&mut conn)
        .unwrap();
    assert_eq!(fields, 40, "one field a phone");
    // A phone over `rate` (which bans) gets its ban state, and is banned.
    let p = phone(0);
    for i in 0..4 {
        assert_eq!(app.claim(&c, &p, &format!("again-{i}")).await.status(), 201);
    }
    assert_problem(app.claim(&c, &p, "again-5").await, 429, "limit_exceeded").await;
    let after = keys(&mut conn);
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(after.iter().filter(|k| k.contains(":rate:b:")).count(), 1);
    assert_problem(app.claim(&c, &p, "again-6").await, 403, "blocked").await;
    app.stop().await;
}

#[tokio::test]
async fn block_and_allow_lists() {
    let rules = r#"
[defaults]
trusted_proxies = ["127.0.0.1/32"]
[[rule]]
name = "strict"
key = ["ip"]
limit = 1
window = "1h"
[block]
phones = ["+86170*"]
ips = ["203.0.113.0/24"]
devices = ["emulator-*"]
[allow]
ips = ["192.0.2.10/32"]
"#;
    let (app, _f) = spawn_app_with_rules(rules, |_| {}).await;
    let c = app.create_campaign(json!({})).await;
    for (p, d, ip) in [
        ("17012345678".to_owned(), "d1", "198.51.100.1"),
        (phone(2), "emulator-x86", "198.51.100.2"),
        (phone(3), "d3", "203.0.113.77"),
    ] {
        let res = app.claim_from(&c, &p, d, ip).await;
        assert!(res.headers().get("retry-after").is_none());
        let body = assert_problem(res, 403, "blocked").await;
        assert_eq!(body["reason"], "block_list");
    }
    // The allow-listed address is never limited by rules...
    for i in 10..14 {
        let res = app
            .claim_from(&c, &phone(i), &format!("a{i}"), "192.0.2.10")
            .await;
        assert_eq!(res.status(), 201);
    }
    // ...its neighbour is.
    assert_eq!(
        app.claim_from(&c, &phone(20), "n1", "192.0.2.11")
            .await
            .status(),
        201
    );
    let n = app.claim_from(&c, &phone(21), "n2", "192.0.2.11").await;
    assert_problem(n, 429, "limit_exceeded").await;
    assert_eq!(app.campaign(&c).await["issued"], 5);
    // The campaign's stats count the blocked claims (in process, added
    // once a second) next to the rule's refusal.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s: Value = app.stats(&c).await;
        let by_code = &s["rejections"]["by_code"];
        if by_code["blocked"] == 3 {
            assert_eq!(by_code["limit_exceeded"], 1, "{s}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "blocked claims never counted: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn shadow_rules_never_block_and_are_counted() {
    let (app, _f) = spawn_app_with_rules(
        "[[rule]]\nname = \"shadow-probe\"\nkey = [\"ip\"]\nlimit = 1\nwindow = \"1h\"\nmode = \"shadow\"\n",
        |_| {},
    )
    .await;
    let c = app.create_campaign(json!({})).await;
    for i in 0..4 {
        let res = app.claim(&c, &phone(i), &format!("d{i}")).await;
        assert_eq!(res.status(), 201);
        assert!(
            res.headers().get("ratelimit").is_none(),
            "a shadow rule sets no header"
        );
    }
    let m = app.metrics().await;
    let shadow = r#"stampede_rule_decisions_total{rule="shadow-probe",decision="shadow_limited"}"#;
    let allowed = r#"stampede_rule_decisions_total{rule="shadow-probe",decision="allowed"}"#;
    assert_eq!(counter(&m, shadow), 3.0, "{m}");
    assert_eq!(counter(&m, allowed), 1.0);
    app.stop().await;
}

#[tokio::test]
async fn unauthorized_requests_do_not_count_against_a_rule() {
    let (app, _f) = spawn_app_with_rules(
        "[[rule]]\nname = \"auth-probe\"\nkey = [\"ip\"]\nlimit = 2\nwindow = \"1h\"\n",
        |s| s.api_keys = "boss:admin:admin-secret-1,shop:client:client-secret-1".into(),
    )
    .await;
    let res = app
        .client
        .post(app.url("/v1/campaigns"))
        .bearer_auth("admin-secret-1")
        .json(&json!({"name": "n", "stock": 9, "coupon": {"kind": "amount_off", "amount_off": 1}}))
        .send()
        .await
        .unwrap();
    let c = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let claim = |key: Option<&'static str>, i: usize| {
        let mut rb = app
            .client
            .post(app.url(&format!("/v1/campaigns/{c}/claims")))
            .json(&json!({"phone": phone(i), "device_id": format!("d{i}")}));
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        rb.send()
    };
    for i in 0..5 {
        assert_eq!(claim(None, i).await.unwrap().status(), 401);
    }
    assert_eq!(
        claim(Some("client-secret-1"), 10).await.unwrap().status(),
        201
    );
    assert_eq!(
        claim(Some("client-secret-1"), 11).await.unwrap().status(),
        201
    );
    assert_eq!(
        claim(Some("client-secret-1"), 12).await.unwrap().status(),
        429
    );
    app.stop().await;
}

/// Polls `GET /v1/admin/limits` until `f` holds; returns how long it took.
async fn wait_for_limits(app: &TestApp, f: impl Fn(&Value) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let v: Value = app.get("/v1/admin/limits").await.json().await.unwrap();
        if f(&v) {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "not applied: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_valid_edit_applies_within_2s_and_a_broken_one_keeps_the_last_good_rules() {
    crate::single_node_only!("reads keys by hand");
    let one = "[[rule]]\nname = \"reload-probe\"\nkey = [\"ip\"]\nlimit = 1\nwindow = \"1h\"\n";
    let (app, file) = spawn_app_with_rules(one, |_| {}).await;
    let c = app.create_campaign(json!({"stock": 50})).await;
    assert_eq!(app.claim(&c, &phone(1), "d1").await.status(), 201);
    assert_eq!(app.claim(&c, &phone(2), "d2").await.status(), 429);
    let before: Value = app.get("/v1/admin/limits").await.json().await.unwrap();
    assert_eq!(before["rules"][0]["limit"], 1);

    file.write(&one.replace("limit = 1", "limit = 3"));
    let took = wait_for_limits(&app, |v| v["rules"][0]["limit"] == 3).await;
    assert!(took < Duration::from_secs(2), "applied after {took:?}");
    assert_eq!(app.claim(&c, &phone(3), "d3").await.status(), 201);
    assert_eq!(app.claim(&c, &phone(4), "d4").await.status(), 201);
    assert_eq!(app.claim(&c, &phone(5), "d5").await.status(), 429);

    // A typo: rejected whole, logged with its line, the limit of 3 stays.
    let rejected_before = counter(
        &app.metrics().await,
        r#"stampede_rules_reloads_total{result="rejected"}"#,
    );
    file.write(&one.replace("limit = 1", "limit = 0"));
    wait_for_limits(&app, |v| v["last_rejected"].is_object()).await;
    let v: Value = app.get("/v1/admin/limits").await.json().await.unwrap();
    let err = v["last_rejected"]["error"].as_str().unwrap();
    assert!(err.contains("line 4") && err.contains("limit"), "{err}");
    assert_eq!(v["rules"][0]["limit"], 3);
    assert_eq!(
        v["version"],
        wait_version(&one.replace("limit = 1", "limit = 3"))
    );
    assert_eq!(app.claim(&c, &phone(6), "d6").await.status(), 429);
    let rejected_after = counter(
        &app.metrics().await,
        r#"stampede_rules_reloads_total{result="rejected"}"#,
    );
    assert!(rejected_after > rejected_before);
    // The reload is in the audit stream.
    let mut conn = app.redis().conn();
    let audit: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("st:{audit}")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    let actions: Vec<String> = audit
        .iter()
        .flat_map(|(_, f)| {
            f.iter()
                .filter(|(k, _)| k == "action")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert!(actions.contains(&"limits.reload".to_owned()), "{actions:?}");
    assert!(
        actions.contains(&"limits.reload_rejected".to_owned()),
        "{actions:?}"
    );
    app.stop().await;
}

fn wait_version(text: &str) -> String {
    stampede::domain::limits::RuleSet::parse(text)
        .unwrap()
        .version
}

#[tokio::test]
async fn a_service_refuses_to_start_on_a_bad_rules_file() {
    crate::single_node_only!("starts its own redis-server");
    let f = RulesFile::new("[[rule]]\nname = \"x\"\nkey = [\"ip\"]\nlimit = 0\nwindow = \"1m\"\n");
    let redis = RedisServer::start();
    let mut s = test_settings(Some(redis.url()));
    s.limits_file = Some(f.path.clone());
    let err = stampede::startup::Application::build(
        s.validate().unwrap(),
        std::sync::Arc::new(stampede::domain::clock::SystemClock),
    )
    .await
    .expect_err("a bad rules file stops the start");
    assert!(err.to_string().contains("line 4"), "{err}");
}

#[test]
fn check_config_accepts_a_rules_file_and_rejects_each_mistake_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |text: &str| {
        let f = dir.path().join("limits.toml");
        std::fs::write(&f, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stampede"))
            .arg("check-config")
            .arg(&f)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/LIMITS.md"))
            .ok()
            .and_then(|md| {
                md.split("```toml")
                    .nth(1)
                    .map(|s| s.split("```").next().unwrap_or("").to_owned())
            })
            .unwrap_or_else(|| {
                "[[rule]]\nname = \"a\"\nkey = [\"ip\"]\nlimit = 1\nwindow = \"1m\"\n".into()
            });
    let (code, out, err) = run(&example);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ok (rules file"), "{out}");
    let base = "[[rule]]\nname = \"a\"\nkey = [\"ip\"]\nlimit = 1\nwindow = \"1m\"\n";
    for (bad, line, why) in [
        (base.replace("limit = 1", "limit = 0"), "line 4", "limit"),
        (
            base.replace("window = \"1m\"", "window = \"0s\""),
            "line 5",
            "window",
        ),
        (base.replace("limit = 1", "limt = 1"), "line 4", "limt"),
        (format!("{base}{base}"), "line 7", "twice"),
        (
            format!("{base}[block]\nips = [\"300.1.1.1/8\"]\n"),
            "line 7",
            "300.1.1.1/8",
        ),
        (
            base.replace("key = [\"ip\"]", "key = [\"ip\"]\ncampaign = \"[\""),
            "line 4",
            "campaign",
        ),
    ] {
        let (code, _, err) = run(&bad);
        assert_eq!(code, Some(2), "{bad}");
        assert!(err.contains(line) && err.contains(why), "{bad}\n=> {err}");
        assert!(err.contains("limits.toml"), "{err}");
        assert!(!err.contains("default.") && !err.contains("\"\""), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one readable line: {err}");
    }
    let big = format!("{base}# {}\n", "x".repeat(1024 * 1024));
    let (code, _, err) = run(&big);
    assert_eq!(code, Some(2));
    assert!(err.contains("1 MiB"), "{err}");
}
