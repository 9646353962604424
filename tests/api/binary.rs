//! The real `stampede` binary on its embedded default: privacy of logs (at
//! trace level), metrics, Redis keys, values and the AOF; the supervisor
//! restarting a killed redis-server; graceful shutdown with a request in
//! flight.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;

const PHONE_FORMS: [&str; 3] = ["13912345678", "+86 139 1234 5678", "+8613912345678"];
const DEVICE: &str = "device-CLEARTEXT-77";
const IPS: [&str; 2] = ["198.51.100.23", "2001:db8:abcd:12::7"];
/// What must never appear: the phone in any spelling, the device id, the IPs.
const SECRETS: [&str; 6] = [
    "13912345678",
    "139 1234 5678",
    "device-CLEARTEXT-77",
    "198.51.100.23",
    "2001:db8",
    "51.100.23",
];

/// SIGKILLs a process when dropped (a panicking test must not leave its
/// service running; once it exited by itself, this does nothing).
struct Reaper(u32);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

fn redis_child(pid: u32) -> Option<i32> {
    let out = Command::new("pgrep")
        .args(["-P", &pid.to_string(), "redis-server"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .next()?
        .parse()
        .ok()
}

fn assert_clean(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} contains {s:?} in clear");
    }
}

fn read_all(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_file() {
            out.push_str(&String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_keeps_identities_private_restarts_redis_and_drains_on_sigterm() {
    crate::single_node_only!("the embedded default is single-node by design");
    // The test's own HTTPS-capable client needs the process's provider (the
    // service installs it too, but this test may run alone).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log_path = dir.path().join("stampede.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let data = dir.path().join("data");
    // Rules on every kind of identity, so their keys and the audit stream
    // are part of what is searched for clear identities below.
    let rules = dir.path().join("limits.toml");
    std::fs::write(
        &rules,
        r#"
[shield]
per_second = 1000
burst = 1000
[[rule]]
name = "per-ip"
key = ["ip"]
limit = 1000
window = "1m"
[[rule]]
name = "phone-device"
key = ["phone", "device", "campaign"]
limit = 1000
window = "1h"
[[rule]]
name = "farm"
key = ["device"]
distinct = "phone"
limit = 1000
window = "1d"
"#,
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stampede"))
        .env("STAMPEDE_LISTEN", format!("127.0.0.1:{port}"))
        .env("STAMPEDE_DATA_DIR", &data)
        .env("STAMPEDE_TRUSTED_PROXIES", "[\"127.0.0.1/32\"]")
        .env("STAMPEDE_SHUTDOWN_GRACE_SECS", "10")
        .env("STAMPEDE_LIMITS_FILE", &rules)
        .env("RUST_LOG", "trace")
        .env_remove("STAMPEDE_REDIS_URL")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // Whatever happens below, the service does not outlive the test.
    let _reaper = Reaper(child.id());
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let wait_ready = |within: Duration| {
        let client = client.clone();
        let base = base.clone();
        let log_path = log_path.clone();
        async move {
            let t = Instant::now();
            loop {
                if let Ok(r) = client.get(format!("{base}/readyz")).send().await
                    && r.status() == 200
                {
                    return;
                }
                assert!(
                    t.elapsed() < within,
                    "not ready within {within:?}; the service's log ends:\n{}",
                    std::fs::read_to_string(&log_path)
                        .unwrap_or_default()
                        .lines()
                        .rev()
                        .take(40)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_ready(Duration::from_secs(30)).await;

    let r = client
        .post(format!("{base}/v1/campaigns"))
        .json(
            &json!({"id": "p", "name": "n", "stock": 100, "limits": {"per_phone": 1},
                      "coupon": {"kind": "amount_off", "amount_off": 100}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let claim = |phone: &'static str, ip: &'static str| {
        client
            .post(format!("{base}/v1/campaigns/p/claims"))
            .header("X-Forwarded-For", ip)
            .json(&json!({"phone": phone, "device_id": DEVICE}))
            .send()
    };
    let first = claim(PHONE_FORMS[0], IPS[0]).await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(
        first.headers().contains_key("ratelimit"),
        "the rules file is in force"
    );
    // A ban and its release: both land in the audit stream, by pseudonym.
    for (method, url, body) in [
        (
            "POST",
            format!("{base}/v1/admin/bans"),
            Some(json!({"kind": "device", "value": DEVICE, "duration": "1h"})),
        ),
        (
            "DELETE",
            format!("{base}/v1/admin/bans/device/{DEVICE}"),
            None,
        ),
    ] {
        let mut rb = client.request(method.parse().unwrap(), url);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        assert!(rb.send().await.unwrap().status().is_success());
    }
    let code = first.json::<Value>().await.unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    for (p, ip) in [(PHONE_FORMS[1], IPS[1]), (PHONE_FORMS[2], IPS[0])] {
        assert_eq!(claim(p, ip).await.unwrap().status(), 429);
    }
    let bad = client
        .post(format!("{base}/v1/campaigns/p/claims"))
        .json(&json!({"phone": 13912345678u64, "device_id": DEVICE}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let r = client
        .post(format!("{base}/v1/redemptions"))
        .json(&json!({"code": code, "order_id": "o-1", "phone": PHONE_FORMS[1], "store_id": "s1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Kill the embedded redis-server: the supervisor restarts it, says so,
    // and the service recovers by itself.
    let redis_pid = redis_child(child.id()).expect("an embedded redis-server child");
    Command::new("kill")
        .args(["-9", &redis_pid.to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_ready(Duration::from_secs(20)).await;
    let new_pid = redis_child(child.id()).expect("restarted redis-server");
    assert_ne!(new_pid, redis_pid);
    let c: Value = client
        .get(format!("{base}/v1/campaigns/p"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (c["issued"].as_i64(), c["redeemed"].as_i64()),
        (Some(1), Some(1)),
        "{c}"
    );

    // Metrics.
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("stampede_claims_total"), "{metrics}");
    assert_clean("metrics", &metrics);

    // Redis keys and values, and the AOF on disk.
    let mut conn = redis::Client::open(format!(
        "redis+unix://{}",
        data.join("redis.sock").display()
    ))
    .unwrap()
    .get_connection()
    .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert!(keys.len() > 5);
    let mut dump = String::new();
    for k in &keys {
        dump.push_str(k);
        let t: String = redis::cmd("TYPE").arg(k).query(&mut conn).unwrap();
        let v: Vec<String> = match t.as_str() {
            "hash" => redis::cmd("HGETALL").arg(k).query(&mut conn).unwrap(),
            "string" => vec![redis::cmd("GET").arg(k).query(&mut conn).unwrap()],
            "zset" => redis::cmd("ZRANGE")
                .arg(k)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query(&mut conn)
                .unwrap(),
            "stream" => {
                let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                    .arg(k)
                    .arg("-")
                    .arg("+")
                    .query(&mut conn)
                    .unwrap();
                entries
                    .into_iter()
                    .flat_map(|(_, f)| f.into_iter().flat_map(|(a, b)| [a, b]))
                    .collect()
            }
            other => panic!("unexpected type {other} for {k}"),
        };
        dump.push_str(&v.join(" "));
    }
    for kind in ["{r:", "{bans}", "{audit}", "ban.start", "ban.lift"] {
        assert!(dump.contains(kind), "{kind} is among what was searched");
    }
    assert_clean("redis", &dump);
    assert_clean("the AOF", &read_all(&data.join("appendonlydir")));

    // Graceful shutdown: a claim whose body is still arriving when SIGTERM
    // comes is served, then Redis is stopped cleanly.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = br#"{"phone":"13700000001","device_id":"dv2"}"#;
    let head = format!(
        "POST /v1/campaigns/p/claims HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body[..10]).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.write_all(&body[10..]).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 201"),
        "in-flight claim during shutdown: {answer}\n{}",
        std::fs::read_to_string(&log_path)
            .unwrap()
            .lines()
            .filter(|l| !l.contains("TRACE") && !l.contains("DEBUG"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    assert!(
        !Path::new(&format!("/proc/{new_pid}")).exists(),
        "redis-server outlived the service"
    );

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("exited unexpectedly; restarting"),
        "the restart is not in the log"
    );
    assert!(log.contains("embedded redis-server restarted"));
    assert!(log.contains("embedded redis-server stopped"));
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the log was not at trace level"
    );
    assert_clean("the log", &log);
}

#[test]
fn check_config_validates_a_file_without_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:9000\"\nredis_url = \"redis://127.0.0.1:1\"\nmax_body_bytes = 4096\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stampede"))
        .args(["check-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (bad, why) in [
        ("listen = \"0.0.0.0:80\"\n", "api_keys"),
        ("store_deadline_ms = 0\n", "store_deadline_ms"),
        ("no_such_setting = 1\n", "no_such_setting"),
        ("max_body_bytes = \"lots\"\n", "max_body_bytes"),
        ("trusted_proxies = [\"10.0.0.0/99\"]\n", "trusted_proxies"),
    ] {
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, bad).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_stampede"))
            .args(["check-config"])
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains(why), "{bad}: {err}");
    }
}
