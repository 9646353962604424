//! The admin CLI (`stampede campaign|codes|ban|limits|audit`): the real
//! binary against a running service.

use serde_json::Value;

use crate::helpers::*;

const KEYS: &str = "ann:admin:ann-secret-1,bob:admin:bob-secret-1,vic:viewer:vic-secret-1";

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

async fn cli(app: &TestApp, key: &str, args: &[&str]) -> Out {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_stampede"))
        .args(args)
        .env("STAMPEDE_URL", &app.address)
        .env("STAMPEDE_KEY", key)
        .output()
        .await
        .expect("the binary runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn show(app: &TestApp, id: &str) -> Value {
    app.client
        .get(app.url(&format!("/v1/campaigns/{id}")))
        .bearer_auth("ann-secret-1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn campaigns_codes_bans_and_audit_from_the_command_line() {
    let app = spawn_app_with(|s| s.api_keys = KEYS.into()).await;
    let ann = "ann-secret-1";
    let o = cli(
        &app,
        ann,
        &[
            "campaign",
            "create",
            "--id",
            "cli-a",
            "--name",
            "CLI A",
            "--stock",
            "50",
            "--amount-off",
            "300",
            "--per-phone",
            "1",
            "--low-stock-percent",
            "10",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("created") && o.stdout.contains("cli-a"),
        "{}",
        o.stdout
    );
    let c = show(&app, "cli-a").await;
    assert_eq!(
        (c["stock"].as_i64(), c["limits"]["per_phone"].as_i64()),
        (Some(50), Some(1))
    );

    // list: a table for people, JSON for scripts; a viewer may read.
    let o = cli(&app, "vic-secret-1", &["campaign", "list"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let row = o
        .stdout
        .lines()
        .find(|l| l.starts_with("cli-a"))
        .expect("a row");
    assert!(row.contains("active") && row.contains("50"), "{}", o.stdout);
    assert!(o.stdout.starts_with("ID"), "{}", o.stdout);
    let o = cli(&app, ann, &["--json", "campaign", "list"]).await;
    assert_eq!(o.json()["campaigns"][0]["id"], "cli-a");

    // pause, show, resume
    let o = cli(
        &app,
        ann,
        &["campaign", "pause", "cli-a", "--reason", "stock check"],
    )
    .await;
    assert_eq!(
        (o.code, o.stdout.trim()),
        (0, "cli-a: paused"),
        "{}",
        o.stderr
    );
    let o = cli(&app, ann, &["campaign", "show", "cli-a", "--json"]).await;
    assert_eq!(o.json()["status"], "paused");
    let o = cli(&app, ann, &["campaign", "resume", "cli-a"]).await;
    assert_eq!(o.stdout.trim(), "cli-a: active");

    // export: the right number of lines, reserved against the stock.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("codes.csv");
    let f = file.to_str().unwrap();
    let o = cli(
        &app,
        ann,
        &["codes", "export", "cli-a", "--count", "20", "--out", f],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let csv = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 21, "a header and 20 codes");
    assert_eq!(lines[0], "code,campaign_id,expires_at");
    assert_eq!(show(&app, "cli-a").await["issued"], 20);
    assert!(o.stdout.contains("20 codes"), "{}", o.stdout);

    // ban add / list / rm, the phone in two spellings.
    let o = cli(
        &app,
        ann,
        &[
            "ban",
            "add",
            "phone",
            "+8613800138000",
            "--duration",
            "1h",
            "--reason",
            "farm",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with("banned phone:"), "{}", o.stdout);
    assert!(
        !o.stdout.contains("13800138000"),
        "no identity in clear: {}",
        o.stdout
    );
    let o = cli(&app, ann, &["ban", "list", "--json"]).await;
    let bans = o.json()["bans"].as_array().unwrap().clone();
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0]["reason"], "farm");
    let o = cli(&app, ann, &["ban", "rm", "phone", "0086-138-0013-8000"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("released"), "{}", o.stdout);
    let o = cli(&app, ann, &["--json", "ban", "list"]).await;
    assert_eq!(o.json()["bans"], Value::Array(vec![]));

    // audit
    let o = cli(&app, ann, &["audit", "cli-a"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("campaign.pause") && o.stdout.contains("stock check"),
        "{}",
        o.stdout
    );

    // Errors: the problem's detail and a non-zero exit.
    let o = cli(&app, ann, &["campaign", "show", "nope"]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("404 campaign_not_found"), "{}", o.stderr);
    let o = cli(&app, "vic-secret-1", &["campaign", "pause", "cli-a"]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("403 forbidden") && o.stderr.contains("viewer"),
        "{}",
        o.stderr
    );
    let o = cli(&app, "wrong", &["campaign", "list"]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("401 unauthorized"), "{}", o.stderr);
    let o = cli(
        &app,
        ann,
        &[
            "campaign",
            "create",
            "--name",
            "x",
            "--stock=-1",
            "--amount-off",
            "1",
        ],
    )
    .await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("422 invalid_request") && o.stderr.contains("stock"),
        "{}",
        o.stderr
    );
    app.stop().await;
}

#[tokio::test]
async fn limits_show_and_an_offline_check() {
    let (app, _file) = spawn_app_with_rules(
        "[[rule]]\nname = \"phone-rate\"\nendpoint = \"claim\"\nkey = [\"phone\"]\nlimit = 5\nwindow = \"1m\"\n",
        |_| {},
    )
    .await;
    let o = cli(&app, "", &["limits", "show"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let row = o
        .stdout
        .lines()
        .find(|l| l.starts_with("phone-rate"))
        .expect("the rule");
    assert!(row.contains("claim") && row.contains('5'), "{}", o.stdout);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("limits.toml");
    std::fs::write(
        &bad,
        "[[rule]]\nname = \"x\"\nkey = [\"nose\"]\nlimit = 1\nwindow = \"1m\"\n",
    )
    .unwrap();
    let o = cli(&app, "", &["limits", "check", bad.to_str().unwrap()]).await;
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("line 3"), "{}", o.stderr);
    // Unreachable service: its own exit code.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_stampede"))
        .args([
            "campaign",
            "list",
            "--url",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    app.stop().await;
}
