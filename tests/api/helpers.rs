//! Test fixtures: a private `redis-server` on a random port (killed on drop)
//! and `spawn_app()`, the real service on port 0 against it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stampede::domain::clock::ManualClock;
use stampede::settings::Settings;
use stampede::startup::Application;

pub const SECRET: &str = "test-secret-test-secret-test-secret";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A private redis-server with AOF, on a random port, in its own temp dir.
pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    appendfsync: String,
    bin: String,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with("always")
    }

    pub fn start_with(appendfsync: &str) -> Self {
        Self::start_bin("redis-server", appendfsync)
    }

    /// The same with another `redis-server` binary (the Redis 8 one of
    /// `scripts/test`, for what Debian's 7.0 lacks).
    pub fn start_bin(bin: &str, appendfsync: &str) -> Self {
        let mut s = Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            appendfsync: appendfsync.into(),
            bin: bin.into(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                &self.appendfsync,
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--daemonize", "no", "--logfile", "redis.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        self.wait_ready();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut c) = redis::Client::open(self.url()).and_then(|c| c.get_connection())
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on {} did not start", self.port);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// kill -9, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and data (after kill9).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// A blocking connection for assertions.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill9();
    }
}

/// True in the cluster pass of the suite (`TEST_REDIS_CLUSTER=1`, run by
/// `scripts/test`): `spawn_app*` then put the service on a fresh local
/// 3-master Redis Cluster instead of one `redis-server`.
pub fn on_cluster() -> bool {
    std::env::var("TEST_REDIS_CLUSTER").is_ok_and(|v| v == "1")
}

/// Skips the rest of a test in the cluster pass, saying why (a test that
/// reads or signals one Redis process by hand, or that is single-node by
/// design).
#[macro_export]
macro_rules! single_node_only {
    ($why:literal) => {
        if $crate::helpers::on_cluster() {
            eprintln!("skipped in the cluster pass: {}", $why);
            return;
        }
    };
}

pub struct TestApp {
    /// The cluster the app runs on, in the cluster pass.
    pub cluster: Option<crate::cluster_support::RedisCluster>,
    pub address: String,
    pub client: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub redis: Option<RedisServer>,
    pub handle: actix_web::dev::ServerHandle,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    pub managed_pid: Option<i32>,
}

pub fn test_settings(redis_url: Option<String>) -> Settings {
    Settings {
        listen: "127.0.0.1:0".into(),
        redis_url,
        secret: Some(SECRET.into()),
        workers: Some(2),
        ..Settings::default()
    }
}

pub fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The service against a fresh private Redis.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    if on_cluster() {
        let cluster = crate::cluster_support::RedisCluster::start(3);
        let mut settings = test_settings(Some(cluster.url()));
        tweak(&mut settings);
        let mut app = spawn_with_settings(settings).await;
        app.cluster = Some(cluster);
        return app;
    }
    let redis = RedisServer::start();
    let mut settings = test_settings(Some(redis.url()));
    tweak(&mut settings);
    let mut app = spawn_with_settings(settings).await;
    app.redis = Some(redis);
    app
}

pub async fn spawn_with_settings(settings: Settings) -> TestApp {
    let clock = Arc::new(ManualClock::new(now()));
    let app = Application::build(settings.validate().expect("valid settings"), clock.clone())
        .await
        .expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let managed_pid = app.managed_redis_pid();
    let task = tokio::spawn(app.run_until_stopped());
    TestApp {
        cluster: None,
        address,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("client"),
        clock,
        redis: None,
        handle,
        task,
        managed_pid,
    }
}

pub fn data_dir_settings(dir: &Path) -> Settings {
    Settings {
        data_dir: PathBuf::from(dir),
        ..test_settings(None)
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// The URL of the app's store: its redis-server, or its cluster.
    pub fn store_url(&self) -> String {
        match (&self.cluster, &self.redis) {
            (Some(c), _) => c.url(),
            (None, Some(r)) => r.url(),
            (None, None) => unreachable!("a test app has a Redis"),
        }
    }

    pub fn redis(&self) -> &RedisServer {
        self.redis
            .as_ref()
            .expect("this app has a single test redis (not in the cluster pass: single_node_only!)")
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// Creates a campaign from `overrides` merged into a valid default; returns its id.
    pub async fn create_campaign(&self, overrides: Value) -> String {
        let mut body = json!({
            "name": "Double 11: 20 off 200",
            "stock": 100,
            "coupon": {"kind": "amount_off", "amount_off": 2000, "min_order_amount": 20000},
        });
        if let (Some(b), Some(o)) = (body.as_object_mut(), overrides.as_object()) {
            for (k, v) in o {
                b.insert(k.clone(), v.clone());
            }
        }
        let res = self.post("/v1/campaigns", &body).await;
        let status = res.status();
        let v: Value = res.json().await.expect("json");
        assert_eq!(status, 201, "create failed: {v}");
        v["id"].as_str().expect("id").to_owned()
    }

    /// `GET /v1/campaigns/{id}/stats`.
    pub async fn stats(&self, id: &str) -> Value {
        self.get(&format!("/v1/campaigns/{id}/stats"))
            .await
            .json()
            .await
            .expect("stats are JSON")
    }

    pub async fn campaign(&self, id: &str) -> Value {
        let res = self.get(&format!("/v1/campaigns/{id}")).await;
        assert_eq!(res.status(), 200);
        res.json().await.expect("json")
    }

    /// `PATCH /v1/campaigns/{id}` with `body`; asserts a 200.
    pub async fn patch_campaign(&self, id: &str, body: &Value) {
        let res = self
            .client
            .patch(self.url(&format!("/v1/campaigns/{id}")))
            .json(body)
            .send()
            .await
            .expect("patch");
        assert_eq!(
            res.status(),
            200,
            "{}",
            res.text().await.unwrap_or_default()
        );
    }

    pub async fn claim(&self, campaign: &str, phone: &str, device: &str) -> reqwest::Response {
        self.post(
            &format!("/v1/campaigns/{campaign}/claims"),
            &json!({"phone": phone, "device_id": device}),
        )
        .await
    }

    /// Claims and returns the code; panics unless 201.
    pub async fn claim_code(&self, campaign: &str, phone: &str, device: &str) -> String {
        let res = self.claim(campaign, phone, device).await;
        let status = res.status();
        let v: Value = res.json().await.expect("json");
        assert_eq!(status, 201, "claim failed: {v}");
        v["code"].as_str().expect("code").to_owned()
    }

    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }
}

/// A distinct valid CN mobile number for index `i`.
pub fn phone(i: usize) -> String {
    format!("+86138{:08}", i)
}

/// A response header's value ("" when absent or not text).
pub fn header(res: &reqwest::Response, name: &str) -> String {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Asserts a problem+json answer with `status` and `code`; returns the body.
pub async fn assert_problem(res: reqwest::Response, status: u16, code: &str) -> Value {
    let got = res.status().as_u16();
    let ct = header(&res, "content-type");
    let text = res.text().await.unwrap_or_default();
    assert_eq!(got, status, "status; body: {text}");
    assert_eq!(ct, "application/problem+json", "content type; body: {text}");
    let v: Value = serde_json::from_str(&text).expect("problem body is JSON");
    assert_eq!(v["code"], code, "code; body: {v}");
    assert_eq!(v["status"], status);
    assert!(
        v["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("/problems/"))
    );
    assert!(v["title"].is_string() && v["detail"].is_string());
    v
}

/// A rules file (LIMITS.md) in its own temp dir, for `limits_file`.
pub struct RulesFile {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl RulesFile {
    pub fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("limits.toml");
        std::fs::write(&path, text).expect("rules file written");
        Self { dir, path }
    }

    /// Replaces the file the way an editor does: a new file renamed over it.
    pub fn write(&self, text: &str) {
        let tmp = self.dir.path().join(".limits.toml.swp");
        std::fs::write(&tmp, text).expect("rules file written");
        std::fs::rename(&tmp, &self.path).expect("rules file replaced");
    }
}

/// The service with a rules file, against a fresh private Redis.
pub async fn spawn_app_with_rules(
    rules: &str,
    tweak: impl FnOnce(&mut Settings),
) -> (TestApp, RulesFile) {
    let file = RulesFile::new(rules);
    let path = file.path.clone();
    let app = spawn_app_with(|s| {
        s.limits_file = Some(path);
        tweak(s);
    })
    .await;
    (app, file)
}

/// Two instances of the service with one rules file, sharing the first
/// one's private Redis (each with its own clock).
pub async fn spawn_two_apps_with_rules(rules: &str) -> (TestApp, TestApp, RulesFile) {
    let (a, file) = spawn_app_with_rules(rules, |_| {}).await;
    let mut settings = test_settings(Some(a.redis().url()));
    settings.limits_file = Some(file.path.clone());
    let b = spawn_with_settings(settings).await;
    (a, b, file)
}

impl TestApp {
    /// A claim sent as if through a proxy, from `forwarded_for`.
    pub async fn claim_from(
        &self,
        campaign: &str,
        phone: &str,
        device: &str,
        forwarded_for: &str,
    ) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/campaigns/{campaign}/claims")))
            .header("x-forwarded-for", forwarded_for)
            .json(&json!({"phone": phone, "device_id": device}))
            .send()
            .await
            .expect("request sent")
    }

    /// `post` with owned arguments (for closures that return the future).
    pub async fn post_owned(&self, path: String, body: Value) -> reqwest::Response {
        self.post(&path, &body).await
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.expect("metrics")
    }
}

/// The value of a counter line `name{labels}` in Prometheus text (0 if absent).
pub fn counter(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Checks racing claims' answers `(phone index, status, body)` on a campaign
/// of `stock` with `per_phone` 1: exactly `stock` issued, no code twice, no
/// phone twice, every other answer `sold_out` or `per_phone`. The codes.
pub fn assert_exact_issue(answers: &[(usize, u16, Value)], stock: usize) -> Vec<String> {
    use std::collections::HashSet;
    let issued: Vec<_> = answers.iter().filter(|a| a.1 == 201).collect();
    assert_eq!(issued.len(), stock, "exactly the stock is issued");
    let codes: HashSet<&str> = issued
        .iter()
        .map(|a| a.2["code"].as_str().expect("code"))
        .collect();
    assert_eq!(codes.len(), stock, "no code twice");
    let phones: HashSet<usize> = issued.iter().map(|a| a.0).collect();
    assert_eq!(
        phones.len(),
        stock,
        "no phone got two coupons (per_phone 1)"
    );
    for (_, status, body) in answers {
        assert!(
            *status == 201
                || (*status == 409 && body["code"] == "sold_out")
                || (*status == 429 && body["limit"] == "per_phone"),
            "{status} {body}"
        );
    }
    codes.into_iter().map(str::to_owned).collect()
}

/// Claims with a new phone each time (from `from` on) until the campaign
/// answers `sold_out` five times in a row; the codes issued, each once.
pub async fn claim_until_sold_out(
    app: &TestApp,
    id: &str,
    from: usize,
) -> std::collections::HashSet<String> {
    let mut codes = std::collections::HashSet::new();
    let mut refused = 0;
    for n in from..from + 300 {
        let res = app.claim(id, &phone(n), &format!("d{n}")).await;
        match res.status().as_u16() {
            201 => {
                refused = 0;
                let code = res.json::<Value>().await.unwrap()["code"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                assert!(codes.insert(code), "a code twice");
            }
            409 => {
                refused += 1;
                if refused == 5 {
                    return codes;
                }
            }
            s => panic!("{s}: {}", res.text().await.unwrap()),
        }
    }
    panic!("never sold out");
}

/// The `detail` of each `action` entry of a campaign's audit trail, newest first.
pub async fn audit_details(app: &TestApp, id: &str, action: &str) -> Vec<String> {
    let audit: Value = app
        .get(&format!("/v1/audit?campaign={id}"))
        .await
        .json()
        .await
        .unwrap();
    audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .map(|e| e["detail"].as_str().unwrap().to_owned())
        .collect()
}

/// `claims` claims at once by `phones` phones (claim `i` by phone
/// `i % phones`, each on its own device): (phone, status, body) each, for
/// [`assert_exact_issue`].
pub async fn race_claims(
    app: &TestApp,
    id: &str,
    claims: usize,
    phones: usize,
) -> Vec<(usize, u16, Value)> {
    futures_util::future::join_all((0..claims).map(|i| async move {
        let res = app.claim(id, &phone(i % phones), &format!("dev-{i}")).await;
        let status = res.status().as_u16();
        (i % phones, status, res.json::<Value>().await.unwrap())
    }))
    .await
}
