//! Reads for people: a campaign's stats hash and the audit streams, and the
//! list of campaigns whose outbox a webhook worker drains.

use crate::store::keys::{self, CampaignKeys};
use crate::store::redis::{Result, Store};
use crate::store::rules::AuditEntry;

/// One page of an audit stream, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditPage {
    pub entries: Vec<(String, AuditEntry)>,
    /// Pass back as `cursor` for the next (older) page.
    pub next: Option<String>,
}

fn entry(fields: Vec<(String, String)>) -> AuditEntry {
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
}

impl Store {
    /// Every field of a campaign's stats hash.
    pub async fn stats(&self, keys: &CampaignKeys) -> Result<Vec<(String, i64)>> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(keys.stats());
        self.query(cmd).await
    }

    /// Counts a refusal decided outside the claim script (a rate rule:
    /// `rule:<name>`; a channel: `rej:channel`) on a campaign's stats.
    pub async fn count_refusal(&self, keys: &CampaignKeys, field: &str) -> Result<()> {
        self.count_refusals(keys, field, 1).await
    }

    /// Adds `n` refusals answered in process (`service::soldout`).
    pub async fn count_refusals(&self, keys: &CampaignKeys, field: &str, n: u64) -> Result<()> {
        let mut cmd = redis::cmd("HINCRBY");
        cmd.arg(keys.stats()).arg(field).arg(n);
        self.query::<i64>(cmd).await.map(|_| ())
    }

    /// A page of `stream`, newest first, starting before `cursor` (an entry id).
    pub async fn audit_page(
        &self,
        stream: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<AuditPage> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(stream)
            .arg(cursor.map_or("+".to_owned(), |c| format!("({c}")))
            .arg("-")
            .arg("COUNT")
            .arg(limit + 1);
        let raw: Vec<(String, Vec<(String, String)>)> = self.query(cmd).await?;
        let more = raw.len() > limit;
        let entries: Vec<(String, AuditEntry)> = raw
            .into_iter()
            .take(limit)
            .map(|(id, f)| (id, entry(f)))
            .collect();
        let next = more
            .then(|| entries.last().map(|(id, _)| id.clone()))
            .flatten();
        Ok(AuditPage { entries, next })
    }

    /// Adds a campaign to the webhook worker's list.
    pub async fn watch_webhooks(&self, campaign: &str) -> Result<()> {
        let mut cmd = redis::cmd("SADD");
        cmd.arg(keys::webhooks()).arg(campaign);
        self.query::<i64>(cmd).await.map(|_| ())
    }

    /// The ids of the newest `limit` campaigns, newest first (by campaign
    /// number: one pipeline on a single node, one GET each on a cluster).
    pub async fn campaign_ids(&self, limit: usize) -> Result<Vec<String>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(keys::campaign_seq());
        let last: Option<i64> = self.query(cmd).await?;
        let last = last.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32;
        let first = last.saturating_sub(limit as u32).max(1);
        let numbers: Vec<u32> = (first..=last).rev().collect();
        let ids: Vec<Option<String>> = if self.is_cluster() {
            // Each number's key is in its own slot: one GET each, at once.
            let gets = numbers.iter().map(|no| {
                let mut cmd = redis::cmd("GET");
                cmd.arg(keys::campaign_by_no(*no));
                self.query::<Option<String>>(cmd)
            });
            futures_util::future::join_all(gets)
                .await
                .into_iter()
                .collect::<Result<_>>()?
        } else {
            let mut pipe = redis::pipe();
            for no in &numbers {
                pipe.cmd("GET").arg(keys::campaign_by_no(*no));
            }
            let mut conn = self.conn();
            self.bounded(async move { pipe.query_async(&mut conn).await })
                .await?
        };
        let mut seen = std::collections::HashSet::new();
        Ok(ids
            .into_iter()
            .flatten()
            .filter(|id| seen.insert(id.clone()))
            .collect())
    }

    /// A campaign's webhook outbox: events in the stream, and events handed
    /// to a deliverer and not yet acknowledged (failing, being retried).
    pub async fn outbox_backlog(&self, keys: &CampaignKeys) -> Result<(u64, u64)> {
        let mut len = redis::cmd("XLEN");
        len.arg(keys.outbox());
        let len: u64 = self.query(len).await?;
        if len == 0 {
            return Ok((0, 0));
        }
        let mut pending = redis::cmd("XPENDING");
        pending.arg(keys.outbox()).arg(crate::store::outbox::GROUP);
        let summary: redis::Value = self.query(pending).await.unwrap_or(redis::Value::Nil);
        let pending = match summary {
            redis::Value::Array(v) => match v.first() {
                Some(redis::Value::Int(n)) => *n as u64,
                _ => 0,
            },
            _ => 0,
        };
        Ok((len, pending))
    }

    /// The campaigns with a webhook.
    pub async fn webhook_campaigns(&self) -> Result<Vec<String>> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(keys::webhooks());
        self.query(cmd).await
    }
}
