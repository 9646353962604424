//! The claim script as a Redis function library (`store::scripts::Library`):
//! loaded again when Redis forgets it, and replaced by the EVALSHA form on
//! a server that refuses functions. Either way no claim is lost or charged
//! twice, and the rules keep their counts (they live in Redis, not in Lua).

use std::collections::HashSet;

use serde_json::json;

use crate::helpers::*;

const RULES: &str = r#"
[[rule]]
name = "phone-rate"
endpoint = "claim"
key = ["phone"]
limit = 2
window = "1m"
"#;

/// The names of the function libraries a node holds (`FUNCTION LIST`).
fn libraries(conn: &mut redis::Connection) -> Vec<String> {
    let list: Vec<redis::Value> = redis::cmd("FUNCTION").arg("LIST").query(conn).unwrap();
    list.iter()
        .filter_map(|lib| match lib {
            redis::Value::Array(fields) => fields
                .windows(2)
                .find(|w| matches!(&w[0], redis::Value::BulkString(b) if b == b"library_name"))
                .and_then(|w| redis::from_redis_value::<String>(w[1].clone()).ok()),
            _ => None,
        })
        .collect()
}

/// A connection to each master the app's store has (one on a single node).
fn masters(app: &TestApp) -> Vec<redis::Connection> {
    match &app.cluster {
        Some(c) => (0..3).map(|i| c.node(i)).collect(),
        None => vec![app.redis().conn()],
    }
}

/// Calls of `command` the node has run (`INFO commandstats`).
fn calls(conn: &mut redis::Connection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Phone 0's third claim within the minute: refused by the rule.
async fn assert_refused_by_the_rule(app: &TestApp, id: &str) {
    let res = app.claim(id, &phone(0), "d0-third").await;
    let body = assert_problem(res, 429, "limit_exceeded").await;
    assert_eq!(body["limit"], "phone-rate");
}

#[tokio::test]
async fn the_claim_library_is_loaded_again_when_redis_forgets_it() {
    let (app, _rules) = spawn_app_with_rules(RULES, |_| {}).await;
    let id = app
        .create_campaign(json!({"stock": 20, "limits": {"per_phone": 5}}))
        .await;
    let mut codes = HashSet::new();
    for k in 0..4 {
        codes.insert(app.claim_code(&id, &phone(k), &format!("d{k}")).await);
    }
    codes.insert(app.claim_code(&id, &phone(0), "d0-again").await);
    for mut conn in masters(&app) {
        let libs = libraries(&mut conn);
        assert!(
            libs.iter().any(|l| l.starts_with("stampede_")),
            "the library is loaded on every master at start: {libs:?}"
        );
        // Redis forgets every script and function (a FLUSH, a new node).
        let _: () = redis::cmd("FUNCTION")
            .arg("FLUSH")
            .query(&mut conn)
            .unwrap();
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut conn).unwrap();
        assert!(libraries(&mut conn).is_empty());
    }
    for k in 4..8 {
        codes.insert(app.claim_code(&id, &phone(k), &format!("d{k}")).await);
    }
    // Phone 0 claimed twice before the flush: the rule still counts them.
    assert_refused_by_the_rule(&app, &id).await;
    assert_eq!(codes.len(), 9, "every claim issued one new code");
    assert_eq!(app.campaign(&id).await["issued"], 9);
    for mut conn in masters(&app) {
        assert!(
            libraries(&mut conn)
                .iter()
                .any(|l| l.starts_with("stampede_")),
            "loaded again on every master"
        );
    }
}

#[tokio::test]
async fn a_redis_that_refuses_functions_gets_the_claim_script() {
    crate::single_node_only!("changes the ACL of one redis-server");
    let (app, _rules) = spawn_app_with_rules(RULES, |_| {}).await;
    let id = app
        .create_campaign(json!({"stock": 20, "limits": {"per_phone": 5}}))
        .await;
    let mut conn = app.redis().conn();
    let fcalls = calls(&mut conn, "fcall");
    let mut codes = HashSet::from([app.claim_code(&id, &phone(0), "d0").await]);
    assert_eq!(
        calls(&mut conn, "fcall"),
        fcalls + 1,
        "a claim is one FCALL"
    );
    // The library is gone and may not be loaded again (a managed Redis
    // whose ACL refuses FUNCTION): the next call finds no function, cannot
    // load it, and goes as the script in the same request.
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-function")
        .query(&mut conn)
        .unwrap();
    let evalshas = calls(&mut conn, "evalsha");
    for k in 1..5 {
        codes.insert(app.claim_code(&id, &phone(k), &format!("d{k}")).await);
    }
    codes.insert(app.claim_code(&id, &phone(0), "d0-again").await);
    assert_refused_by_the_rule(&app, &id).await;
    assert_eq!(codes.len(), 6);
    assert_eq!(app.campaign(&id).await["issued"], 6);
    assert!(
        calls(&mut conn, "evalsha") >= evalshas + 6,
        "the claims went as the script"
    );
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("+function")
        .query(&mut conn)
        .unwrap();
    assert!(
        libraries(&mut conn).is_empty(),
        "nothing loaded the library again: the process keeps to the script"
    );
}

#[tokio::test]
async fn other_versions_libraries_are_deleted_at_start() {
    crate::single_node_only!("loads libraries into one redis-server by hand");
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    for (lib, function) in [
        ("stampede_00000000deadbeef", "claim_00000000deadbeef"),
        ("shop", "shop_fn"),
    ] {
        let _: String = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg(format!(
                "#!lua name={lib}\nredis.register_function('{function}', function() return 1 end)"
            ))
            .query(&mut conn)
            .unwrap();
    }
    let mut app = spawn_with_settings(test_settings(Some(redis.url()))).await;
    app.redis = Some(redis);
    let mut libs = libraries(&mut conn);
    libs.sort();
    assert_eq!(libs.len(), 2, "{libs:?}");
    assert_eq!(libs[0], "shop", "another application's library stays");
    assert!(
        libs[1].starts_with("stampede_") && libs[1] != "stampede_00000000deadbeef",
        "only this version's claim library is left: {libs:?}"
    );
    let id = app.create_campaign(json!({"stock": 5})).await;
    app.claim_code(&id, &phone(1), "d1").await;
}
