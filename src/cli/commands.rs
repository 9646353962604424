//! What each admin command sends and prints.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::cli::client::{CliError, Client};
use crate::cli::table::{cell, pairs, render};
use crate::cli::{Admin, BanCmd, CampaignCmd, CodesCmd, LimitsCmd};

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The whole `POST /v1/campaigns` body as a JSON file (flags then override it).
    #[arg(long)]
    from: Option<PathBuf>,
    /// [a-z0-9_-]{1,64}; generated when absent.
    #[arg(long)]
    id: Option<String>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    stock: Option<i64>,
    /// Coupon: a fixed amount off, in minor units (fen/cents).
    #[arg(long, conflicts_with_all = ["percent_off", "gift_sku"])]
    amount_off: Option<i64>,
    /// Coupon: a share off, 1..99.
    #[arg(long, conflicts_with = "gift_sku")]
    percent_off: Option<i64>,
    /// With --percent-off: the most it takes off.
    #[arg(long, requires = "percent_off")]
    max_discount: Option<i64>,
    /// Coupon: a gift.
    #[arg(long)]
    gift_sku: Option<String>,
    #[arg(long)]
    min_order_amount: Option<i64>,
    #[arg(long)]
    per_phone: Option<i64>,
    #[arg(long)]
    per_device: Option<i64>,
    #[arg(long)]
    per_ip: Option<i64>,
    /// RFC 3339, e.g. 2026-11-11T00:00:00Z.
    #[arg(long)]
    starts_at: Option<String>,
    #[arg(long)]
    ends_at: Option<String>,
    #[arg(long)]
    valid_for_days: Option<i64>,
    /// Starts as pending_approval; another key must approve.
    #[arg(long)]
    require_approval: bool,
    /// Starts as a draft.
    #[arg(long)]
    draft: bool,
    #[arg(long)]
    low_stock_percent: Option<i64>,
    #[arg(long)]
    webhook_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct TransitionArgs {
    id: String,
    /// Why, for the audit trail.
    #[arg(long)]
    reason: Option<String>,
}

/// Builds the create body from `--from` and the flags.
fn create_body(a: &CreateArgs) -> Result<Value, CliError> {
    let mut body = match &a.from {
        Some(path) => {
            let text = std::fs::read_to_string(path)?;
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(m)) => m,
                Ok(_) => {
                    return Err(CliError::Usage(format!(
                        "{}: not a JSON object",
                        path.display()
                    )));
                }
                Err(e) => return Err(CliError::Usage(format!("{}: {e}", path.display()))),
            }
        }
        None => Map::new(),
    };
    let mut set = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            body.insert(k.to_owned(), v);
        }
    };
    set("id", a.id.clone().map(Value::from));
    set("name", a.name.clone().map(Value::from));
    set("stock", a.stock.map(Value::from));
    set("starts_at", a.starts_at.clone().map(Value::from));
    set("ends_at", a.ends_at.clone().map(Value::from));
    set("valid_for_days", a.valid_for_days.map(Value::from));
    set(
        "require_approval",
        a.require_approval.then_some(Value::Bool(true)),
    );
    set("draft", a.draft.then_some(Value::Bool(true)));
    let coupon = match (a.amount_off, a.percent_off, &a.gift_sku) {
        (Some(n), _, _) => Some(json!({"kind": "amount_off", "amount_off": n})),
        (_, Some(p), _) => Some(json!({"kind": "percent_off", "percent_off": p})),
        (_, _, Some(g)) => Some(json!({"kind": "gift", "gift_sku": g})),
        _ => None,
    };
    if let Some(mut c) = coupon {
        if let Some(m) = a.max_discount {
            c["max_discount"] = m.into();
        }
        if let Some(m) = a.min_order_amount {
            c["min_order_amount"] = m.into();
        }
        body.insert("coupon".into(), c);
    }
    let mut limits = body
        .get("limits")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (k, v) in [
        ("per_phone", a.per_phone),
        ("per_device", a.per_device),
        ("per_ip", a.per_ip),
    ] {
        if let Some(v) = v {
            limits.insert(k.into(), v.into());
        }
    }
    if !limits.is_empty() {
        body.insert("limits".into(), Value::Object(limits));
    }
    let mut alerts = body
        .get("alerts")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(p) = a.low_stock_percent {
        alerts.insert("low_stock_percent".into(), p.into());
    }
    if let Some(u) = &a.webhook_url {
        alerts.insert("webhook_url".into(), u.clone().into());
    }
    if !alerts.is_empty() {
        body.insert("alerts".into(), Value::Object(alerts));
    }
    Ok(Value::Object(body))
}

/// One row per element of the array `list`, one cell per field.
fn rows(list: &Value, fields: &[&str]) -> Vec<Vec<String>> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|e| fields.iter().map(|k| cell(&e[*k])).collect())
                .collect()
        })
        .unwrap_or_default()
}

/// The service's JSON (`--json`) or the text for people.
fn print_either(json_out: bool, v: &Value, text: impl FnOnce(&Value) -> String) {
    if json_out {
        print_json(v);
    } else {
        print!("{}", text(v));
    }
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

const CAMPAIGN_FIELDS: [&str; 7] = [
    "id",
    "status",
    "stock",
    "remaining",
    "issued",
    "redeemed",
    "name",
];

const CAMPAIGN_COLUMNS: [&str; 7] = [
    "ID",
    "STATUS",
    "STOCK",
    "REMAINING",
    "ISSUED",
    "REDEEMED",
    "NAME",
];

fn show_campaign(c: &Value) -> String {
    let mut items = vec![
        ("id", cell(&c["id"])),
        ("name", cell(&c["name"])),
        ("status", cell(&c["status"])),
        ("stock", cell(&c["stock"])),
        ("remaining", cell(&c["remaining"])),
        ("issued", cell(&c["issued"])),
        ("redeemed", cell(&c["redeemed"])),
        ("starts_at", cell(&c["starts_at"])),
        ("ends_at", cell(&c["ends_at"])),
        ("limits", cell(&c["limits"])),
        ("coupon", cell(&c["coupon"])),
        ("created_by", cell(&c["created_by"])),
    ];
    if !c["alerts"].is_null() {
        items.push(("alerts", cell(&c["alerts"])));
    }
    pairs(&items)
}

pub async fn dispatch(client: &Client, json_out: bool, cmd: Admin) -> Result<(), CliError> {
    match cmd {
        Admin::Campaign(c) => campaign(client, json_out, c).await,
        Admin::Codes(CodesCmd::Export {
            campaign,
            count,
            out,
            idempotency_key,
        }) => export(client, json_out, &campaign, count, &out, idempotency_key).await,
        Admin::Ban(b) => ban(client, json_out, b).await,
        Admin::Limits(LimitsCmd::Show) => {
            let v = client.json(Method::GET, "/v1/admin/limits", None).await?;
            if json_out {
                print_json(&v);
                return Ok(());
            }
            print!(
                "{}",
                pairs(&[
                    ("version", cell(&v["version"])),
                    ("loaded_at", cell(&v["loaded_at"])),
                    ("file", cell(&v["file"])),
                    ("shield", cell(&v["shield"])),
                    ("last_rejected", cell(&v["last_rejected"])),
                ])
            );
            let rules = rows(
                &v["rules"],
                &[
                    "name", "endpoint", "key", "limit", "window", "count", "mode",
                ],
            );
            print!(
                "\n{}",
                render(
                    &[
                        "RULE", "ENDPOINT", "KEY", "LIMIT", "WINDOW", "COUNT", "MODE"
                    ],
                    &rules
                )
            );
            Ok(())
        }
        Admin::Limits(LimitsCmd::Check { .. }) => Ok(()),
        Admin::Audit { campaign, limit } => {
            let mut path = format!("/v1/audit?limit={limit}");
            if let Some(c) = &campaign {
                path.push_str(&format!("&campaign={c}"));
            }
            let v = client.json(Method::GET, &path, None).await?;
            if json_out {
                print_json(&v);
                return Ok(());
            }
            let entries = rows(
                &v["entries"],
                &["at", "actor", "action", "target", "reason"],
            );
            print!(
                "{}",
                render(&["AT", "ACTOR", "ACTION", "TARGET", "REASON"], &entries)
            );
            Ok(())
        }
    }
}

async fn campaign(client: &Client, json_out: bool, cmd: CampaignCmd) -> Result<(), CliError> {
    let (action, t) = match cmd {
        CampaignCmd::Create(a) => {
            let body = create_body(&a)?;
            let v = client
                .json(Method::POST, "/v1/campaigns", Some(&body))
                .await?;
            if json_out {
                print_json(&v);
            } else {
                print!("created\n{}", show_campaign(&v));
            }
            return Ok(());
        }
        CampaignCmd::List { limit } => {
            let v = client
                .json(Method::GET, &format!("/v1/campaigns?limit={limit}"), None)
                .await?;
            print_either(json_out, &v, |v| {
                render(&CAMPAIGN_COLUMNS, &rows(&v["campaigns"], &CAMPAIGN_FIELDS))
            });
            return Ok(());
        }
        CampaignCmd::Show { id } => {
            let v = client
                .json(Method::GET, &format!("/v1/campaigns/{id}"), None)
                .await?;
            print_either(json_out, &v, show_campaign);
            return Ok(());
        }
        CampaignCmd::Pause(t) => ("pause", t),
        CampaignCmd::Resume(t) => ("resume", t),
        CampaignCmd::End(t) => ("end", t),
        CampaignCmd::Approve(t) => ("approve", t),
        CampaignCmd::Submit(t) => ("submit", t),
        CampaignCmd::Reject(t) => ("reject", t),
    };
    let body = match &t.reason {
        Some(r) => json!({ "reason": r }),
        None => json!({}),
    };
    let v = client
        .json(
            Method::POST,
            &format!("/v1/campaigns/{}/{action}", t.id),
            Some(&body),
        )
        .await?;
    if json_out {
        print_json(&v);
    } else {
        println!("{}: {}", cell(&v["id"]), cell(&v["status"]));
    }
    Ok(())
}

async fn export(
    client: &Client,
    json_out: bool,
    campaign: &str,
    count: u64,
    out: &PathBuf,
    idempotency_key: Option<String>,
) -> Result<(), CliError> {
    let mut rb = client
        .request(Method::POST, &format!("/v1/campaigns/{campaign}/codes"))
        .json(&json!({ "count": count }));
    if let Some(k) = idempotency_key {
        rb = rb.header("Idempotency-Key", k);
    }
    let res = client.send(rb).await?;
    // Written next to the target and renamed at the end: a broken stream
    // never leaves a file that looks complete.
    let tmp = out.with_extension("partial");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let bar = if json_out {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(count)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bar:40} {pos}/{len} codes ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut lines: u64 = 0;
    let mut body = res.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| CliError::Connect {
            url: "the code stream".into(),
            source: e,
        })?;
        file.write_all(&chunk)?;
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        bar.set_position(lines.saturating_sub(1));
    }
    file.flush()?;
    drop(file);
    bar.finish_and_clear();
    let codes = lines.saturating_sub(1);
    if codes != count {
        return Err(CliError::Usage(format!(
            "the stream ended after {codes} of {count} codes; {} kept as it is, retry with the same --idempotency-key",
            tmp.display()
        )));
    }
    std::fs::rename(&tmp, out)?;
    if json_out {
        print_json(&json!({"campaign": campaign, "codes": codes, "file": out}));
    } else {
        println!("{codes} codes of {campaign} written to {}", out.display());
    }
    Ok(())
}

async fn ban(client: &Client, json_out: bool, cmd: BanCmd) -> Result<(), CliError> {
    let v = match &cmd {
        BanCmd::Add {
            kind,
            value,
            duration,
            reason,
        } => {
            let mut body = json!({"kind": kind, "value": value});
            if let Some(d) = duration {
                body["duration"] = d.clone().into();
            }
            if let Some(r) = reason {
                body["reason"] = r.clone().into();
            }
            client
                .json(Method::POST, "/v1/admin/bans", Some(&body))
                .await?
        }
        BanCmd::Rm { kind, value } => {
            let value: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
            client
                .json(
                    Method::DELETE,
                    &format!("/v1/admin/bans/{kind}/{value}"),
                    None,
                )
                .await?
        }
        BanCmd::List { kind } => {
            let path = match kind {
                Some(k) => format!("/v1/admin/bans?kind={k}"),
                None => "/v1/admin/bans".to_owned(),
            };
            client.json(Method::GET, &path, None).await?
        }
    };
    if json_out {
        print_json(&v);
        return Ok(());
    }
    match cmd {
        BanCmd::Add { .. } => {
            println!("banned {} until {}", cell(&v["subject"]), cell(&v["until"]))
        }
        BanCmd::Rm { .. } => println!(
            "{} {}",
            cell(&v["subject"]),
            if v["removed"] == true {
                "released"
            } else {
                "was not banned"
            }
        ),
        BanCmd::List { .. } => {
            let bans = rows(
                &v["bans"],
                &["kind", "subject", "until", "source", "by", "reason"],
            );
            print!(
                "{}",
                render(
                    &["KIND", "SUBJECT", "UNTIL", "SOURCE", "BY", "REASON"],
                    &bans
                )
            );
        }
    }
    Ok(())
}
