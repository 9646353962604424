//! The war room in a real browser: headless Chromium (Debian's package;
//! `scripts/test` installs it) opens `/ops`, a key is entered, claims are
//! driven, and the page must show the campaign's remaining stock falling
//! and a rejection count rising. A screenshot goes to
//! `target/ops-war-room.png`. The browser is driven over the DevTools
//! protocol (a websocket on loopback).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

const KEYS: &str = "ops:admin:ops-secret-1,viewer:viewer:viewer-secret-1,shop:client:shop-secret-1";

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A headless Chromium, killed on drop.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    port: u16,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn start(bin: &str) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1280,900",
            ])
            .arg(format!("--remote-debugging-port={port}"))
            .arg("--remote-debugging-address=127.0.0.1")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            child,
            _profile: profile,
            port,
        }
    }

    /// The page target's DevTools websocket.
    async fn page(&self) -> Page {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            let list = reqwest::get(format!("http://127.0.0.1:{}/json/list", self.port)).await;
            if let Ok(res) = list
                && let Ok(targets) = res.json::<Vec<Value>>().await
                && let Some(ws) = targets
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            {
                break ws.to_owned();
            }
            assert!(Instant::now() < deadline, "chromium did not start");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Page { ws, next: 0 }
    }
}

struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
}

impl Page {
    /// One DevTools command and its result (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::Text(msg.into())).await.unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("DevTools answers")
                .expect("the socket is open")
                .unwrap();
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `js` in the page; its value (JSON).
    async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Saves a PNG of the page as `target/<name>`.
    async fn screenshot(&mut self, name: &str) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &png).unwrap();
    }

    /// Waits until `js` evaluates to a value `ok` accepts; that value.
    async fn wait_for(&mut self, what: &str, js: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.eval(js).await;
            if ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {what}: last {v}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn number(v: &Value) -> Option<i64> {
    v.as_str().and_then(|s| s.trim().parse().ok())
}

#[tokio::test]
async fn the_war_room_shows_stock_falling_and_rejections_rising() {
    let Some(bin) = chromium() else {
        eprintln!("chromium is not installed (scripts/test installs it): skipped");
        return;
    };
    let app = spawn_app_with(|s| s.api_keys = KEYS.into()).await;
    let admin = |rb: reqwest::RequestBuilder| rb.bearer_auth("ops-secret-1");
    let res = admin(app.client.post(app.url("/v1/campaigns")))
        .json(
            &json!({"id": "war-room", "name": "War room", "stock": 10, "limits": {"per_phone": 1},
                      "alerts": {"low_stock_percent": 30},
                      "coupon": {"kind": "amount_off", "amount_off": 100}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // The stream refuses a missing or forged token.
    let res = app
        .client
        .get(app.url("/v1/ops/stream?token=1.2.3"))
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "unauthorized").await;
    // A client key may not watch.
    let res = app
        .client
        .post(app.url("/v1/ops/token"))
        .bearer_auth("shop-secret-1")
        .send()
        .await
        .unwrap();
    assert_problem(res, 403, "forbidden").await;

    let browser = Browser::start(bin);
    let mut page = browser.page().await;
    page.call("Page.enable", json!({})).await;
    page.call("Page.navigate", json!({"url": app.url("/ops")}))
        .await;
    page.wait_for(
        "the sign-in form",
        "!!document.getElementById('key')",
        |v| v == true,
    )
    .await;
    page.eval(
        "document.getElementById('key').value = 'ops-secret-1'; \
         document.getElementById('connect').click(); true",
    )
    .await;
    let remaining =
        "document.querySelector('tr[data-campaign=\"war-room\"] .remaining')?.textContent ?? null";
    page.wait_for("the full stock", remaining, |v| number(v) == Some(10))
        .await;
    let stored = page
        .eval("sessionStorage.getItem('stampede.ops.key')")
        .await;
    assert_eq!(stored, "ops-secret-1", "the key is kept in session storage");
    let local = page.eval("localStorage.length").await;
    assert_eq!(local, 0, "and nowhere else");

    let claim = |i: usize| {
        app.client
            .post(app.url("/v1/campaigns/war-room/claims"))
            .bearer_auth("shop-secret-1")
            .json(&json!({"phone": phone(i), "device_id": format!("d{i}")}))
            .send()
    };
    for i in 0..8 {
        assert_eq!(claim(i).await.unwrap().status(), 201);
    }
    for _ in 0..3 {
        assert_eq!(claim(0).await.unwrap().status(), 429, "per_phone");
    }
    page.wait_for("the stock falling to 2", remaining, |v| {
        number(v) == Some(2)
    })
    .await;
    let limited = "document.querySelector('#by-code tr[data-key=\"limit_exceeded\"] .count')?.textContent ?? null";
    page.wait_for("3 rejections", limited, |v| number(v) == Some(3))
        .await;
    let per_phone = "document.querySelector('#by-limit tr[data-key=\"per_phone\"] .count')?.textContent ?? null";
    page.wait_for("the per_phone limit", per_phone, |v| number(v) == Some(3))
        .await;
    let low = page
        .eval("document.querySelector('tr[data-campaign=\"war-room\"]').textContent")
        .await;
    assert!(
        low.as_str().unwrap().contains("low stock"),
        "2 of 10 is under 30 %: {low}"
    );
    assert_eq!(
        page.eval("document.getElementById('conn').textContent")
            .await,
        "live"
    );

    page.screenshot("ops-war-room.png").await;
    // A phone's width: the same page, one column.
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
    )
    .await;
    let width = page.eval("document.documentElement.scrollWidth").await;
    assert!(
        width.as_i64().unwrap() <= 390,
        "no sideways scrolling on a phone: {width}"
    );
    page.screenshot("ops-war-room-phone.png").await;
    drop(browser);
    app.stop().await;
}
