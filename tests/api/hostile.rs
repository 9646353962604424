//! Hostile input: every request gets a problem+json 4xx (or 413/408/431),
//! never a 5xx, never a dropped connection without a status, and the service
//! stays healthy.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

/// Sends raw bytes, returns (status, whole response text).
fn raw(port: &str, bytes: &[u8], pause_after: Option<Duration>) -> (u16, String) {
    let mut s = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    if let Some(p) = pause_after {
        std::thread::sleep(p);
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in answer: {text:?}"));
    (status, text)
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn assert_4xx_problem(status: u16, text: &str, what: &str) {
    assert!((400..500).contains(&status), "{what}: got {status}: {text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{what}: not problem+json: {text}"
    );
    assert!(text.contains("\"code\":"), "{what}: no code: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_problem_4xx_and_charge_nothing() {
    let app = spawn_app_with(|s| {
        s.body_timeout_ms = 1000;
        s.header_timeout_ms = 1000;
    })
    .await;
    app.create_campaign(json!({"id": "h", "stock": 10})).await;
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let deep_obj = r#"{"a":"#.repeat(10_000);
    let two_mb = format!(
        r#"{{"phone": "{}", "device_id": "d"}}"#,
        "9".repeat(2 << 20)
    );
    let claim = "/v1/campaigns/h/claims";
    let bodies: Vec<(&str, &str, Vec<u8>)> = vec![
        ("empty", claim, b"".to_vec()),
        ("null", claim, b"null".to_vec()),
        ("array", claim, b"[]".to_vec()),
        (
            "array of objects",
            claim,
            br#"[{"phone":"13800138000","device_id":"d"}]"#.to_vec(),
        ),
        ("string", claim, br#""hello""#.to_vec()),
        (
            "invalid utf-8",
            claim,
            b"{\"phone\": \"\xff\xfe\", \"device_id\": \"d\"}".to_vec(),
        ),
        ("deep arrays", claim, deep.into_bytes()),
        ("deep objects", claim, deep_obj.into_bytes()),
        ("2 MB string", claim, two_mb.into_bytes()),
        (
            "duplicate keys",
            claim,
            br#"{"phone":"13800138000","phone":"13900139000","device_id":"d"}"#.to_vec(),
        ),
        (
            "number for string",
            claim,
            br#"{"phone":13800138000,"device_id":"d"}"#.to_vec(),
        ),
        (
            "control char in device",
            claim,
            b"{\"phone\":\"13800138000\",\"device_id\":\"a\\u0000b\"}".to_vec(),
        ),
        (
            "bidi char in device",
            claim,
            "{\"phone\":\"13800138000\",\"device_id\":\"a\u{202e}b\"}"
                .as_bytes()
                .to_vec(),
        ),
        (
            "control char in phone",
            claim,
            b"{\"phone\":\"138\\u0007138000\",\"device_id\":\"d\"}".to_vec(),
        ),
        (
            "unknown field",
            claim,
            br#"{"phone":"13800138000","device_id":"d","admin":true}"#.to_vec(),
        ),
        (
            "trailing garbage",
            claim,
            br#"{"phone":"13800138000","device_id":"d"} x"#.to_vec(),
        ),
        (
            "control char in campaign path",
            "/v1/campaigns/h%00x/claims",
            br#"{"phone":"13800138000","device_id":"d"}"#.to_vec(),
        ),
        (
            "unicode campaign path",
            "/v1/campaigns/%E2%80%AEh/claims",
            br#"{"phone":"13800138000","device_id":"d"}"#.to_vec(),
        ),
    ];
    let mut cases = bodies;
    for (field, v) in [
        ("stock", "-1"),
        ("stock", "0"),
        ("stock", "9223372036854775808"),
        ("stock", "1e309"),
        ("stock", "\"100\""),
        ("stock", "1.5"),
        ("stock", "4294967296"),
        ("valid_for_days", "-1"),
        ("name", "\"a\\u0000b\""),
        ("id", "\"a\\u0007b\""),
        ("starts_at", "\"2026-13-45T99:00:00Z\""),
    ] {
        let body = format!(
            r#"{{"name":"n","stock":5,"coupon":{{"kind":"amount_off","amount_off":100}},"{field}":{v}}}"#
        );
        // A later duplicate "stock" key makes the body malformed anyway.
        let body = if field == "stock" {
            format!(
                r#"{{"name":"n","stock":{v},"coupon":{{"kind":"amount_off","amount_off":100}}}}"#
            )
        } else {
            body
        };
        cases.push(("campaign field", "/v1/campaigns", body.into_bytes()));
    }
    for v in [
        "-1",
        "9223372036854775808",
        "1e309",
        "\"25900\"",
        "1000000000001",
    ] {
        let body = format!(r#"{{"code":"000000000000000000","order_id":"o","order_amount":{v}}}"#);
        cases.push(("order_amount", "/v1/redemptions", body.into_bytes()));
    }
    cases.push((
        "control char in order id",
        "/v1/redemptions",
        b"{\"code\":\"000000000000000000\",\"order_id\":\"o\\u0000\"}".to_vec(),
    ));

    for (what, path, body) in &cases {
        let (p, path, body) = (port.clone(), path.to_string(), body.clone());
        let (status, text) =
            tokio::task::spawn_blocking(move || raw(&p, &post(&path, &body), None))
                .await
                .unwrap();
        assert_4xx_problem(status, &text, what);
    }

    // Headers: one large header over our limit, and a head over actix-http's
    // own 128 KiB cap or its 96 headers (answered by actix before our code
    // runs; http::conn rewrites them): problem+json 431 each.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    let (status, text) = raw(&port, big.as_bytes(), None);
    assert_eq!(status, 431, "{text}");
    assert_4xx_problem(status, &text, "big header");
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(200_000)
    );
    let (status, text) = raw(&port, huge.as_bytes(), None);
    assert_eq!(status, 431);
    assert_4xx_problem(status, &text, "huge head");
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, text) = raw(
        &port,
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n").as_bytes(),
        None,
    );
    assert_eq!(status, 431);
    assert_4xx_problem(status, &text, "many headers");

    // A head actix-http cannot parse: problem+json 400. After a good
    // request on the same connection (pipelined), the good answer comes
    // first, unchanged, then the problem.
    for (what, bytes) in [
        ("garbage line", &b"GARBAGE\r\n\r\n"[..]),
        ("bad header", b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n"),
        ("bad version", b"GET /healthz HTTP/9.9\r\n\r\n"),
    ] {
        let (status, text) = raw(&port, bytes, None);
        assert_eq!(status, 400, "{what}: {text}");
        assert_4xx_problem(status, &text, what);
        assert!(
            text.contains("\"code\":\"malformed_request\""),
            "{what}: {text}"
        );
    }
    let (status, text) = raw(
        &port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nBAD\x01 LINE\r\n\r\n",
        None,
    );
    assert_eq!(status, 200, "{text}");
    let (first, second) = text
        .split_once("\r\n\r\nok")
        .expect("the good answer first");
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{text}");
    let second = second.trim_start();
    assert!(second.starts_with("HTTP/1.1 400 "), "{text}");
    assert_4xx_problem(400, second, "pipelined garbage");

    // Slow-loris body: headers promise 100 bytes, 10 arrive, then nothing;
    // and the same with no byte of the body at all (the read waits once
    // without its timer, then arms it).
    let head = "POST /v1/campaigns/h/claims HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    for (what, body) in [("slow body", "{\"phone\":"), ("silent body", "")] {
        let p = port.clone();
        let request = format!("{head}{body}");
        let (status, text) = tokio::task::spawn_blocking(move || raw(&p, request.as_bytes(), None))
            .await
            .unwrap();
        assert_eq!(status, 408, "{what}: {text}");
        assert_4xx_problem(status, &text, what);
    }

    // Slow-loris head: actix answers 408 and closes (problem+json: http::conn).
    let p = port.clone();
    let slow_head = b"POST /v1/redemptions HTTP/1.1\r\nHost: x\r\n";
    let (status, text) = tokio::task::spawn_blocking(move || raw(&p, slow_head, None))
        .await
        .unwrap();
    assert_eq!(status, 408);
    assert_4xx_problem(status, &text, "slow head");
    assert!(text.contains("\"code\":\"request_timeout\""), "{text}");

    // Still healthy, still issuing, nothing was charged by any of it.
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
    assert_eq!(app.campaign("h").await["issued"], 0);
    app.claim_code("h", &phone(1), "d").await;
    app.stop().await;
}
