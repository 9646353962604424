//! The anti-abuse state: rate-rule counters (`lua/rules.lua`), bans
//! (`lua/ban.lua`, one hash with a version every replica polls) and the
//! audit stream.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::unique::unique_id;
use crate::store::batch::{self, Answer};
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
    /// The prefix of the rule's epoch hashes (`keys::rule`), shared by
    /// every request's call of the rule (a clone is a count, not a copy).
    pub epochs: Arc<str>,
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
    /// Units to charge at once when they fit (a lease: `guard::lease`);
    /// 0 or 1: one, as always. Kind `Requests` only.
    pub lease: u32,
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
    /// Admitted with the call's whole lease charged (`RuleCall::lease`);
    /// `remaining` counts the lease as used.
    pub leased: bool,
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
    /// A `requests` rule of `limit` a window of `window_ms` on the key
    /// `field`, enforced, without bans or a lease (tests and tools; the
    /// guard builds its calls from the rules file: `guard::rules::plan`).
    pub fn requests(epochs: Arc<str>, field: String, limit: u64, window_ms: u64) -> Self {
        Self {
            epochs,
            field,
            kind: RuleKind::Requests,
            limit,
            window_ms,
            enforce: true,
            member: String::new(),
            ban_after: 0,
            ban_ms: 0,
            ban_factor: 1,
            ban_max_ms: 0,
            decay_ms: 0,
            lease: 0,
        }
    }

    /// The rule's kind as the scripts read it: `r`, `r<lease>`, `o`, `d`.
    fn kind_text(&self) -> std::borrow::Cow<'static, str> {
        match self.kind {
            RuleKind::Requests if self.lease > 1 => format!("r{}", self.lease).into(),
            RuleKind::Requests => "r".into(),
            RuleKind::Outcomes => "o".into(),
            RuleKind::Distinct => "d".into(),
        }
    }

    /// Writes the rule's constants, as `claim.lua`'s rule table takes them,
    /// into `cmd`: one argument, the 9 values joined by `|` (kind limit
    /// window_ms enforce ban_after ban_ms ban_factor ban_max_ms decay_ms).
    /// One text is one string for Redis to read and one lookup for the
    /// script's memo of parsed rules, where 9 arguments were 9 of each.
    pub(super) fn write_constants(&self, cmd: &mut redis::Cmd) {
        let mut text = String::with_capacity(64);
        text.push_str(&self.kind_text());
        let mut num = itoa::Buffer::new();
        for n in [
            self.limit,
            self.window_ms,
            u64::from(self.enforce),
            u64::from(self.ban_after),
            self.ban_ms,
            u64::from(self.ban_factor),
            self.ban_max_ms,
            self.decay_ms,
        ] {
            text.push('|');
            text.push_str(num.format(n));
        }
        cmd.arg(text);
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
            && self.lease.max(1) == other.lease.max(1)
    }
}

/// Appends each rule's 2 keys and 11 arguments, as `rules_core.lua` takes
/// them (the rules' own calls and the claim script's rules section).
fn push_rule_calls(calls: &[RuleCall], keys: &mut Vec<String>, args: &mut Vec<String>) {
    for c in calls {
        keys.push(c.epochs.to_string());
        keys.push(keys::ban_state(&c.epochs, &c.field));
        let n = |v: u64| v.to_string();
        args.extend([
            c.kind_text().into_owned(),
            n(c.limit),
            n(c.window_ms),
            if c.enforce { "1" } else { "0" }.to_owned(),
            c.member.clone(),
            n(c.ban_after.into()),
            n(c.ban_ms),
            n(c.ban_factor.into()),
            n(c.ban_max_ms),
            n(c.decay_ms),
            c.field.clone(),
        ]);
    }
}

/// The answers of `n` rules (5 strings each, as `rules_core.lua`'s check
/// returns them).
pub(super) fn parse_rule_results(out: &[&str], n: usize) -> Result<Vec<RuleResult>> {
    if out.len() != n * 5 {
        return Err(StoreError::Protocol(format!("rules: {out:?}")));
    }
    out.chunks(5)
        .map(|c| {
            let (status, leased) = match c[0] {
                "ok" => (RuleStatus::Ok, false),
                "lease" => (RuleStatus::Ok, true),
                "over" => (RuleStatus::Over, false),
                "shadow" => (RuleStatus::Shadow, false),
                s => return Err(StoreError::Protocol(format!("rules status {s}"))),
            };
            Ok(RuleResult {
                status,
                leased,
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
    /// Wall-clock ms after which the check may not be charged
    /// ([`Store::script_deadline_ms`]).
    deadline_ms: i64,
}

/// One `rules.lua` batch call of `calls` under the call id `id` (its
/// answer is recorded under the id, so a re-send of the call is answered
/// with it and charges nothing again). Every call of a batch is on the
/// same hash tag: the record hash is on it too.
fn batch_invocation(id: &str, calls: &[&RulesCall]) -> redis::ScriptInvocation<'static> {
    let last = calls.iter().map(|c| c.deadline_ms).max().unwrap_or(0);
    let second = last.div_euclid(1000);
    let tag = calls
        .first()
        .and_then(|c| c.keys.first())
        .map_or("r:0", |k| keys::rule_tag(k));
    let mut inv = scripts::RULES.prepare_invoke();
    inv.key(keys::rule_calls(tag, second));
    inv.arg("batch").arg(calls.len()).arg(id).arg(second + 2);
    for c in calls {
        inv.arg(c.keys.len()).arg(c.args.len()).arg(c.deadline_ms);
    }
    for c in calls {
        for k in &c.keys {
            inv.key(k);
        }
        for a in &c.args {
            inv.arg(a);
        }
    }
    inv
}

/// One request's answer from a batch, or a `503` for a request Redis
/// reached past its deadline (not charged), or its keys' error.
fn answered<'a, 'b>(store: &Store, out: &'b [&'a str]) -> Result<&'b [&'a str]> {
    match out.first().copied() {
        Some("late") => Err(StoreError::Timeout(store.deadline())),
        Some("error") => Err(StoreError::Script(
            out.get(1).copied().unwrap_or_default().to_owned(),
        )),
        _ => Ok(out),
    }
}

/// A check's answer: its `n` rules' results (see [`answered`]).
fn rule_answer(store: &Store, out: &Answer, n: usize) -> Result<Vec<RuleResult>> {
    parse_rule_results(answered(store, &out.fields())?, n)
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

impl Store {
    /// Checks (and charges `Requests` and `Distinct`) the rules of one slot.
    /// The check carries its deadline into the script, as a claim does: one
    /// Redis reaches after its caller answered `503` charges nothing.
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
        let call = RulesCall {
            keys,
            args,
            deadline_ms: self.script_deadline_ms(),
        };
        let store = self.clone();
        let flush_lane = lane.clone();
        let out = self
            .enqueue(&self.rules, &lane, call, move || {
                store.flush_rules(flush_lane)
            })
            .await?;
        rule_answer(self, &out, calls.len())
    }

    /// One rule check sent on its own as a batch of one under the call id
    /// `id`, with its own `deadline_ms`: what the batcher sends, for tests
    /// of a re-sent call (the same id twice) and of a late one.
    pub async fn check_rules_as(
        &self,
        id: &str,
        deadline_ms: i64,
        now_ms: i64,
        calls: &[RuleCall],
    ) -> Result<Vec<RuleResult>> {
        let (keys, args) = rule_args(now_ms, "check", calls);
        let out = self
            .rules_call(
                id,
                RulesCall {
                    keys,
                    args,
                    deadline_ms,
                },
            )
            .await?;
        rule_answer(self, &out, calls.len())
    }

    /// One `rules.lua` batch call of one request (not queued), recorded
    /// under `id`; its answer.
    async fn rules_call(&self, id: &str, call: RulesCall) -> Result<Answer> {
        let inv = batch_invocation(id, &[&call]);
        let mut conn = self.conn();
        let reply: Vec<redis::Value> = self
            .bounded(async move { inv.invoke_async(&mut conn).await })
            .await?;
        let out = batch::split(Ok(reply), 1).into_iter().next();
        let out = out.ok_or_else(|| StoreError::Protocol("rules: no answer".into()))?;
        out.map_err(StoreError::classify)
    }

    /// Sends the lane's queued checks, a batch at a time, until none waits
    /// (`rules.lua`'s batch mode; runs on the Redis runtime). Each batch has
    /// its own call id: Redis Cluster's client re-sends a call after a
    /// dropped connection, and the script answers a re-sent call from its
    /// record instead of counting its checks twice.
    async fn flush_rules(self, lane: String) {
        while let Some(batch) = self.rules.take(&lane) {
            let calls: Vec<&RulesCall> = batch.iter().map(|q| &q.call).collect();
            let inv = batch_invocation(&unique_id(), &calls);
            let mut conn = self.conn();
            let n = batch.len();
            let replies = batch::split(inv.invoke_async(&mut conn).await, n);
            metrics::histogram!("stampede_rules_batch_size").record(n as f64);
            for (q, reply) in batch.into_iter().zip(replies) {
                // The caller gave up (answered 503): the script refused to
                // charge it once past its deadline; before the deadline,
                // a reply lost on the way back charged its rules.
                let _ = q.reply.send(reply);
            }
        }
    }

    /// Charges one unit to each (`Outcomes`) rule of one slot. Like a
    /// check, the charge is recorded under a call id (a cluster re-send
    /// counts once) and carries its deadline: an `Err` means not charged,
    /// unless the connection dropped.
    pub async fn settle_rules(&self, now_ms: i64, calls: &[RuleCall]) -> Result<()> {
        if calls.is_empty() {
            return Ok(());
        }
        let (keys, args) = rule_args(now_ms, "settle", calls);
        let call = RulesCall {
            keys,
            args,
            deadline_ms: self.script_deadline_ms(),
        };
        let out = self.rules_call(&unique_id(), call).await?;
        match answered(self, &out.fields())? {
            ["ok"] => Ok(()),
            other => Err(StoreError::Protocol(format!("rules settle: {other:?}"))),
        }
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
