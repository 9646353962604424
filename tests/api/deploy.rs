//! `deploy/`: every metric and label that the Grafana dashboard and the
//! Prometheus alert rules reference is exported by the service after some
//! traffic, and `promtool` accepts the rules (when it is installed).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::{Value, json};

use crate::helpers::*;

const RULES: &str = r#"
[[rule]]
name = "phone-rate"
endpoint = "claim"
key = ["phone"]
limit = 1
window = "1m"
"#;

/// Metric name -> the label names its series carry, from the text format.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let line = Regex::new(r#"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? "#).unwrap();
    let label = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)=""#).unwrap();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(c) = line.captures(l) else { continue };
        let labels = out.entry(c[1].to_owned()).or_default();
        if let Some(ls) = c.get(2) {
            labels.extend(label.captures_iter(ls.as_str()).map(|m| m[1].to_owned()));
        }
    }
    out
}

/// The PromQL expressions of the dashboard (panel targets and template
/// queries) and of the alert rules (`expr:`, inline or as a block).
fn expressions() -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana/stampede.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6, "the dashboard has its panels");
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(
            !targets.is_empty(),
            "panel {} queries something",
            p["title"]
        );
        for t in targets {
            exprs.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    let alerts = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    let mut lines = alerts.lines().peekable();
    while let Some(l) = lines.next() {
        let Some(rest) = l.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = l.len() - l.trim_start().len();
        if rest.trim() == "|" {
            let mut block = String::new();
            while let Some(next) = lines.peek() {
                if next.len() - next.trim_start().len() <= indent {
                    break;
                }
                block.push_str(next.trim());
                block.push(' ');
                lines.next();
            }
            exprs.push(block);
        } else {
            exprs.push(rest.trim().to_owned());
        }
    }
    assert!(exprs.len() >= 15, "{exprs:?}");
    exprs
}

/// The metrics and label names an expression uses.
fn references(expr: &str) -> (Vec<String>, Vec<String>) {
    let metric = Regex::new(r"stampede_[a-z0-9_]+").unwrap();
    let matchers = Regex::new(r"\{([^{}]*)\}").unwrap();
    let matcher = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*""#).unwrap();
    let grouping = Regex::new(r"\b(?:by|without)\s*\(([^)]*)\)").unwrap();
    let label_values = Regex::new(r"label_values\([^,]+,\s*([a-z_]+)\)").unwrap();
    let metrics = metric
        .find_iter(expr)
        .map(|m| m.as_str().to_owned())
        .collect();
    let mut labels = Vec::new();
    for m in matchers.captures_iter(expr) {
        labels.extend(matcher.captures_iter(&m[1]).map(|c| c[1].to_owned()));
    }
    for g in grouping.captures_iter(expr) {
        labels.extend(
            g[1].split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
        );
    }
    labels.extend(label_values.captures_iter(expr).map(|c| c[1].to_owned()));
    (metrics, labels)
}

async fn wait_for_metrics(app: &TestApp, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = app.metrics().await;
        if done(&m) || Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_use_only_metrics_the_service_exports() {
    let (app, rules) = spawn_app_with_rules(RULES, |s| s.webhook_allow_loopback = true).await;
    // Nothing listens there: the webhook's deliveries fail (and are counted).
    let hook = format!("http://127.0.0.1:{}/hook", free_port());
    let c = app
        .create_campaign(json!({
            "stock": 4, "limits": {"per_phone": 1},
            "alerts": {"low_stock_percent": 50, "webhook_url": hook},
        }))
        .await;
    let mut codes = Vec::new();
    for i in 0..4 {
        let res = app.claim(&c, &phone(i), &format!("d{i}")).await;
        assert_eq!(res.status(), 201);
        codes.push(
            res.json::<Value>().await.unwrap()["code"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let res = app.claim(&c, &phone(0), "d0").await;
    assert_problem(res, 429, "limit_exceeded").await;
    let res = app.claim(&c, &phone(9), "d9").await;
    assert_problem(res, 409, "sold_out").await;
    let res = app
        .post(
            "/v1/redemptions",
            &json!({"code": codes[0], "order_id": "o-1", "order_amount": 100_000}),
        )
        .await;
    assert_eq!(res.status(), 200);
    rules.write("this is not a rules file [");
    let campaign_gauge = format!("stampede_campaign_remaining{{campaign=\"{c}\"}} 0");
    let text = wait_for_metrics(&app, |m| {
        m.contains(&campaign_gauge)
            && m.contains("stampede_webhook_deliveries_total{")
            && m.contains(&format!(
                "stampede_campaign_status{{campaign=\"{c}\",status=\"sold_out\"}} 1"
            ))
            && !m.contains("stampede_rules_reloads_total{result=\"rejected\"} 0")
    })
    .await;
    let have = exported(&text);
    let mut missing = Vec::new();
    for expr in expressions() {
        let (metrics, labels) = references(&expr);
        assert!(!metrics.is_empty(), "no stampede metric in {expr}");
        let mut carried = BTreeSet::new();
        for m in &metrics {
            match have.get(m) {
                Some(ls) => carried.extend(ls.iter().cloned()),
                None => missing.push(format!("metric {m} (in {expr})")),
            }
        }
        for l in labels.iter().filter(|l| *l != "le") {
            if !carried.contains(l) {
                missing.push(format!("label {l} (in {expr})"));
            }
        }
    }
    assert!(missing.is_empty(), "not in /metrics: {missing:#?}");
    // The threshold the low-stock alert compares with: 50 % of 4.
    assert!(
        text.contains(&format!(
            "stampede_campaign_low_stock_threshold{{campaign=\"{c}\"}} 2"
        )),
        "{text}"
    );
    assert!(text.contains("stampede_redis_up 1"));
    app.stop().await;
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/prometheus/alerts.yml"
        ))
        .output()
    else {
        eprintln!("promtool is not installed (scripts/test installs it): skipped");
        return;
    };
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 5 rules found"));
}
