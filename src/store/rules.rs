//! The anti-abuse state: rate-rule counters (`lua/rules.lua`), bans
//! (`lua/ban.lua`, one hash with a version every replica polls) and the
//! audit stream.

use serde::{Deserialize, Serialize};

use crate::store::batch;
use crate::store::keys;
use crate::store::redis::{Result, Store, StoreError, parse};
use crate::store::scripts;

/// How a rule counts, as the script knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// Requests: checked and charged in the same call.
    Requests,
    /// Successes or failures: checked before, charged by [`Store::settle_rules`].
    Outcomes,
    /// Distinct values of one identity.
    Distinct,
}

/// One rule of one request, ready for the script.
#[derive(Debug, Clone)]
pub struct RuleCall {
    /// The prefix of the rule's epoch hashes (`keys::rule`).
    pub epochs: String,
    /// The rule key's ban state.
    pub ban_state: String,
    /// The rule key's digest: its field in the epoch hashes.
    pub field: String,
    pub kind: RuleKind,
    pub limit: u64,
    pub window_ms: u64,
    pub enforce: bool,
    /// The distinct value's digest, hex (kind `Distinct` only).
    pub member: String,
    pub ban_after: u32,
    pub ban_ms: u64,
    pub ban_factor: u32,
    pub ban_max_ms: u64,
    pub decay_ms: u64,
}

/// What the script decided for one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleStatus {
    Ok,
    /// Enforced and over: the request is refused.
    Over,
    /// A shadow rule that would have refused.
    Shadow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleResult {
    pub status: RuleStatus,
    pub remaining: u64,
    pub reset_ms: u64,
    /// Length of the ban this request started (0: none).
    pub ban_ms: u64,
    pub level: u32,
}

/// A ban as stored: the subject is the hash field (`<kind>:<pseudonym>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRecord {
    pub until_ms: i64,
    pub started_ms: i64,
    /// `admin`, or `rule:<name>`.
    pub source: String,
    /// The API key name (admin bans) or the rule name.
    pub by: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub level: u32,
}

/// One audit entry: who did what to what, why, when.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditEntry {
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub reason: String,
    pub detail: String,
}

/// The audit stream keeps about this many entries (trimmed approximately).
const AUDIT_MAX_LEN: usize = 100_000;

fn rule_args(now_ms: i64, mode: &str, calls: &[RuleCall]) -> (Vec<String>, Vec<String>) {
    let mut keys = Vec::with_capacity(calls.len() * 2);
    let mut args = Vec::with_capacity(3 + calls.len() * 11);
    args.push(mode.to_owned());
    args.push(now_ms.to_string());
    args.push(calls.len().to_string());
    push_rule_calls(calls, &mut keys, &mut args);
    (keys, args)
}

impl RuleCall {
    /// The rule's constants, as `claim.lua`'s rule table takes them (9:
    /// kind limit window enforce ban_after ban_ms ban_factor ban_max decay).
    pub(super) fn constants(&self) -> [String; 9] {
        [
            match self.kind {
                RuleKind::Requests => "r",
                RuleKind::Outcomes => "o",
                RuleKind::Distinct => "d",
            }
            .to_owned(),
            self.limit.to_string(),
            self.window_ms.to_string(),
            if self.enforce { "1" } else { "0" }.to_owned(),
            self.ban_after.to_string(),
            self.ban_ms.to_string(),
            self.ban_factor.to_string(),
            self.ban_max_ms.to_string(),
            self.decay_ms.to_string(),
        ]
    }

    /// Whether `other` is the same rule (same epoch hashes and constants):
    /// one entry of a claim call's rule table.
    pub(super) fn same_rule(&self, other: &RuleCall) -> bool {
        self.epochs == other.epochs
            && self.kind == other.kind
            && self.limit == other.limit
            && self.window_ms == other.window_ms
            && self.enforce == other.enforce
            && self.ban_after == other.ban_after
            && self.ban_ms == other.ban_ms
            && self.ban_factor == other.ban_factor
            && self.ban_max_ms == other.ban_max_ms
            && self.decay_ms == other.decay_ms
    }
}

/// Appends each rule's 2 keys and 11 arguments, as `rules_core.lua` takes
/// them (the rules' own calls and the claim script's rules section).
fn push_rule_calls(calls: &[RuleCall], keys: &mut Vec<String>, args: &mut Vec<String>) {
    for c in calls {
        keys.push(c.epochs.clone());
        keys.push(c.ban_state.clone());
        let [
            kind,
            limit,
            window,
            enforce,
            ban_after,
            ban_ms,
            factor,
            ban_max,
            decay,
        ] = c.constants();
        args.extend([kind, limit, window, enforce, c.member.clone()]);
        args.extend([ban_after, ban_ms, factor, ban_max, decay, c.field.clone()]);
    }
}

/// The answers of `n` rules (5 strings each, as `rules_core.lua`'s check
/// returns them).
pub(super) fn parse_rule_results(out: &[String], n: usize) -> Result<Vec<RuleResult>> {
    if out.len() != n * 5 {
        return Err(StoreError::Protocol(format!("rules: {out:?}")));
    }
    out.chunks(5)
        .map(|c| {
            Ok(RuleResult {
                status: match c[0].as_str() {
                    "ok" => RuleStatus::Ok,
                    "over" => RuleStatus::Over,
                    "shadow" => RuleStatus::Shadow,
                    s => return Err(StoreError::Protocol(format!("rules status {s}"))),
                },
                remaining: parse(c.get(1), "remaining")?,
                reset_ms: parse(c.get(2), "reset_ms")?,
                ban_ms: parse(c.get(3), "ban_ms")?,
                level: parse(c.get(4), "level")?,
            })
        })
        .collect()
}

/// One request's rule check, as `rules.lua` takes it.
pub(super) struct RulesCall {
    keys: Vec<String>,
    args: Vec<String>,
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

impl Store {
    /// Checks (and charges `Requests` and `Distinct`) the rules of one slot.
    pub async fn check_rules(&self, now_ms: i64, calls: &[RuleCall]) -> Result<Vec<RuleResult>> {
        let (keys, args) = rule_args(now_ms, "check", calls);
        let Some(first) = keys.first() else {
            return Ok(Vec::new());
        };
        self.compatible().await?;
        // On a cluster, one lane per hash tag (a call is one slot); on one
        // node, one lane for every request.
        let lane = if self.is_cluster() {
            keys::rule_tag(first).to_owned()
        } else {
            "rules".to_owned()
        };
        let store = self.clone();
        let flush_lane = lane.clone();
        let out = self
            .enqueue(&self.rules, &lane, RulesCall { keys, args }, move || {
                store.flush_rules(flush_lane)
            })
            .await?;
        if out.first().is_some_and(|s| s == "error") {
            return Err(StoreError::Script(out.get(1).cloned().unwrap_or_default()));
        }
        parse_rule_results(&out, calls.len())
    }

    /// Sends the lane's queued checks, a batch at a time, until none waits
    /// (`rules.lua`'s batch mode; runs on the Redis runtime).
    async fn flush_rules(self, lane: String) {
        while let Some(batch) = self.rules.take(&lane) {
            let mut inv = scripts::RULES.prepare_invoke();
            inv.arg("batch").arg(batch.len());
            for q in &batch {
                inv.arg(q.call.keys.len()).arg(q.call.args.len());
            }
            for q in &batch {
                for k in &q.call.keys {
                    inv.key(k);
                }
                for a in &q.call.args {
                    inv.arg(a);
                }
            }
            let mut conn = self.conn();
            let n = batch.len();
            let replies = batch::split(inv.invoke_async(&mut conn).await, n);
            metrics::histogram!("stampede_rules_batch_size").record(n as f64);
            for (q, reply) in batch.into_iter().zip(replies) {
                // A check answered after its caller's 503 charged a rule
                // counter at most: left as it is (rules bound abuse, not
                // stock).
                let _ = q.reply.send(reply);
            }
        }
    }

    /// Charges one unit to each (`Outcomes`) rule of one slot.
    pub async fn settle_rules(&self, now_ms: i64, calls: &[RuleCall]) -> Result<()> {
        let (keys, args) = rule_args(now_ms, "settle", calls);
        self.script(&scripts::RULES, &refs(&keys), &refs(&args))
            .await
            .map(|_| ())
    }

    /// Starts (or replaces) bans; returns the new bans version.
    pub async fn set_bans(&self, bans: &[(String, BanRecord)]) -> Result<u64> {
        let mut args = vec!["set".to_owned()];
        for (field, rec) in bans {
            args.push(field.clone());
            args.push(serde_json::to_string(rec).map_err(|e| StoreError::Protocol(e.to_string()))?);
        }
        let out = self
            .script(&scripts::BAN, &[keys::bans()], &refs(&args))
            .await?;
        parse(out.first(), "bans version")
    }

    /// Lifts bans; returns (new version, how many there were).
    pub async fn del_bans(&self, fields: &[String]) -> Result<(u64, u64)> {
        let mut args = vec!["del".to_owned()];
        args.extend(fields.iter().cloned());
        let out = self
            .script(&scripts::BAN, &[keys::bans()], &refs(&args))
            .await?;
        Ok((
            parse(out.first(), "bans version")?,
            parse(out.get(1), "removed")?,
        ))
    }

    /// The bans version (0 before the first ban).
    pub async fn bans_version(&self) -> Result<u64> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(keys::bans()).arg("~v");
        let v: Option<u64> = self.query(cmd).await?;
        Ok(v.unwrap_or(0))
    }

    /// Every stored ban (expired ones included: the caller judges by its clock).
    pub async fn all_bans(&self) -> Result<(u64, Vec<(String, BanRecord)>)> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(keys::bans());
        let all: Vec<(String, String)> = self.query(cmd).await?;
        let mut version = 0;
        let mut bans = Vec::with_capacity(all.len());
        for (field, value) in all {
            if field == "~v" {
                version = value.parse().unwrap_or(0);
                continue;
            }
            match serde_json::from_str::<BanRecord>(&value) {
                Ok(rec) => bans.push((field, rec)),
                Err(e) => tracing::warn!(error = %e, "unreadable ban record skipped"),
            }
        }
        Ok((version, bans))
    }

    /// Appends to the audit stream.
    pub async fn audit(&self, e: &AuditEntry) -> Result<()> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(keys::audit())
            .arg("MAXLEN")
            .arg("~")
            .arg(AUDIT_MAX_LEN)
            .arg("*")
            .arg("at_ms")
            .arg(e.at_ms)
            .arg("actor")
            .arg(&e.actor)
            .arg("action")
            .arg(&e.action)
            .arg("target")
            .arg(&e.target)
            .arg("reason")
            .arg(&e.reason)
            .arg("detail")
            .arg(&e.detail);
        self.query::<String>(cmd).await.map(|_| ())
    }

    /// The newest `count` audit entries, newest first.
    pub async fn audit_tail(&self, count: usize) -> Result<Vec<AuditEntry>> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(keys::audit())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count);
        let raw: Vec<(String, Vec<(String, String)>)> = self.query(cmd).await?;
        Ok(raw
            .into_iter()
            .map(|(_, fields)| {
                let mut e = AuditEntry::default();
                for (k, v) in fields {
                    match k.as_str() {
                        "at_ms" => e.at_ms = v.parse().unwrap_or(0),
                        "actor" => e.actor = v,
                        "action" => e.action = v,
                        "target" => e.target = v,
                        "reason" => e.reason = v,
                        "detail" => e.detail = v,
                        _ => {}
                    }
                }
                e
            })
            .collect())
    }
}
