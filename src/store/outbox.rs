//! The webhook outbox, Redis side: each campaign's `outbox` stream is read
//! through one consumer group, [`GROUP`], that every replica joins under its
//! own consumer name. A new entry goes to exactly one consumer
//! (`XREADGROUP ... >`) and stays in the group's pending list until it is
//! acknowledged (`XACK`); a pending entry changes hands only by `XCLAIM` with
//! a minimum idle time, so of two replicas reaching for the same entry one
//! wins and the other gets nothing. `expire_campaign.lua` writes the
//! `campaign.ended` of a window that closed without an `end`. Needs Redis
//! 6.2 or later (`XPENDING ... IDLE`).

use redis::{FromRedisValue, Value};

use crate::store::keys::CampaignKeys;
use crate::store::redis::{Result, Store, StoreError};
use crate::store::scripts;

/// The consumer group every replica reads each outbox through.
pub const GROUP: &str = "webhooks";

/// An event as the scripts wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// `campaign.low_stock`, `campaign.sold_out` or `campaign.ended`.
    pub event: String,
    pub stock: i64,
    pub remaining: i64,
    pub at_ms: i64,
}

/// One stream entry: its id and the event, or `None` when its fields cannot
/// be read (nothing the scripts write; it can never be delivered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: String,
    pub event: Option<OutboxEvent>,
}

type RawEntry = (String, Vec<(String, String)>);

fn entry((id, fields): RawEntry) -> OutboxEntry {
    let (mut event, mut stock, mut remaining, mut at_ms) = (None, None, None, None);
    for (k, v) in fields {
        match k.as_str() {
            "event" => event = Some(v),
            "stock" => stock = v.parse().ok(),
            "remaining" => remaining = v.parse().ok(),
            "at_ms" => at_ms = v.parse().ok(),
            _ => {}
        }
    }
    let event = match (event, stock, remaining, at_ms) {
        (Some(event), Some(stock), Some(remaining), Some(at_ms)) => Some(OutboxEvent {
            event,
            stock,
            remaining,
            at_ms,
        }),
        _ => None,
    };
    OutboxEntry { id, event }
}

/// A pending entry: handed to `consumer`, not acknowledged yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: String,
    pub consumer: String,
    /// Since it was last handed to a consumer.
    pub idle_ms: u64,
    /// How many times it was handed out (the first read counts).
    pub deliveries: u64,
}

/// What the worker needs to know to decide whether a campaign's window closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndState {
    pub state: String,
    /// 0: no end time.
    pub ends_ms: i64,
    pub ended_fired: bool,
}

/// What `expire_campaign.lua` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpireOutcome {
    Fired,
    NotFound,
    FiredAlready,
    NotDue,
    /// Never ran (draft, pending approval) or already `ended` by an action.
    NotLive(String),
}

fn has_code(e: &StoreError, code: &str) -> bool {
    matches!(e, StoreError::Failed(r) if r.code() == Some(code))
}

impl Store {
    /// Creates the group from the stream's start, so events written before
    /// the group existed are delivered too; an existing group is left as is.
    pub async fn outbox_group(&self, keys: &CampaignKeys) -> Result<()> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(keys.outbox())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM");
        match self.query::<()>(cmd).await {
            Err(e) if has_code(&e, "BUSYGROUP") => Ok(()),
            r => r,
        }
    }

    /// Up to `count` entries no consumer of the group has seen, now pending
    /// under `consumer`.
    pub async fn outbox_read_new(
        &self,
        keys: &CampaignKeys,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<OutboxEntry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(keys.outbox())
            .arg(">");
        let reply: Option<Vec<(String, Vec<RawEntry>)>> = self.query(cmd).await?;
        Ok(reply
            .into_iter()
            .flatten()
            .flat_map(|(_, entries)| entries)
            .map(entry)
            .collect())
    }

    /// Up to `count` pending entries idle for at least `min_idle_ms`, oldest first.
    pub async fn outbox_pending(
        &self,
        keys: &CampaignKeys,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<Pending>> {
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(keys.outbox())
            .arg(GROUP)
            .arg("IDLE")
            .arg(min_idle_ms)
            .arg("-")
            .arg("+")
            .arg(count);
        let raw: Vec<(String, String, u64, u64)> = self.query(cmd).await?;
        Ok(raw
            .into_iter()
            .map(|(id, consumer, idle_ms, deliveries)| Pending {
                id,
                consumer,
                idle_ms,
                deliveries,
            })
            .collect())
    }

    /// Takes pending entry `id` for `consumer` if it is still idle for at
    /// least `min_idle_ms` (so only one of several claimers gets it); counts
    /// a delivery and resets its idle time. `None`: someone else has it now,
    /// or it is gone (acknowledged, or trimmed from the stream).
    pub async fn outbox_claim(
        &self,
        keys: &CampaignKeys,
        consumer: &str,
        min_idle_ms: u64,
        id: &str,
    ) -> Result<Option<OutboxEntry>> {
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(keys.outbox())
            .arg(GROUP)
            .arg(consumer)
            .arg(min_idle_ms)
            .arg(id);
        let raw: Vec<Option<RawEntry>> = self.query(cmd).await?;
        match raw.into_iter().next() {
            Some(Some(e)) => Ok(Some(entry(e))),
            // Redis < 7 answers nil for an entry trimmed from the stream
            // but still pending: it can never be delivered.
            Some(None) => {
                self.outbox_ack(keys, id).await?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Removes `id` from the group's pending list: it will not be delivered again.
    pub async fn outbox_ack(&self, keys: &CampaignKeys, id: &str) -> Result<()> {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(keys.outbox()).arg(GROUP).arg(id);
        self.query::<i64>(cmd).await.map(|_| ())
    }

    /// Deletes the group's consumers other than `me` that hold nothing and
    /// were idle for `idle_ms` (processes gone for good: every restart
    /// joins under a new name). Returns how many.
    pub async fn outbox_forget_consumers(
        &self,
        keys: &CampaignKeys,
        me: &str,
        idle_ms: u64,
    ) -> Result<usize> {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("CONSUMERS").arg(keys.outbox()).arg(GROUP);
        let consumers: Vec<Vec<(String, Value)>> = self.query(cmd).await?;
        let mut forgotten = 0;
        for fields in consumers {
            let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
            let name = get("name").and_then(|v| String::from_redis_value_ref(v).ok());
            let pending = get("pending").and_then(|v| i64::from_redis_value_ref(v).ok());
            let idle = get("idle").and_then(|v| u64::from_redis_value_ref(v).ok());
            if let (Some(name), Some(0), Some(idle)) = (name, pending, idle)
                && name != me
                && idle >= idle_ms
            {
                let mut cmd = redis::cmd("XGROUP");
                cmd.arg("DELCONSUMER")
                    .arg(keys.outbox())
                    .arg(GROUP)
                    .arg(&name);
                self.query::<i64>(cmd).await?;
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// The meta fields that say whether a campaign's window closed unmarked.
    pub async fn end_state(&self, keys: &CampaignKeys) -> Result<Option<EndState>> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(keys.meta())
            .arg(&["state", "ends_ms", "ended_fired"]);
        let v: Vec<Option<String>> = self.query(cmd).await?;
        let [state, ends, fired] = <[Option<String>; 3]>::try_from(v)
            .map_err(|v| StoreError::Protocol(format!("HMGET: {v:?}")))?;
        let Some(state) = state else { return Ok(None) };
        Ok(Some(EndState {
            state,
            ends_ms: ends.and_then(|e| e.parse().ok()).unwrap_or(0),
            ended_fired: fired.as_deref() == Some("1"),
        }))
    }

    /// Writes `campaign.ended` for a window that closed by `now_ms`, once.
    pub async fn expire_campaign(&self, keys: &CampaignKeys, now_ms: i64) -> Result<ExpireOutcome> {
        let (meta, outbox) = (keys.meta(), keys.outbox());
        let out = self
            .script(
                &scripts::EXPIRE_CAMPAIGN,
                &[&meta, &outbox],
                &[&now_ms.to_string()],
            )
            .await?;
        Ok(match out.first().map(String::as_str) {
            Some("fired") => ExpireOutcome::Fired,
            Some("not_found") => ExpireOutcome::NotFound,
            Some("fired_already") => ExpireOutcome::FiredAlready,
            Some("not_due") => ExpireOutcome::NotDue,
            Some("not_live") => ExpireOutcome::NotLive(out.get(1).cloned().unwrap_or_default()),
            _ => return Err(StoreError::Protocol(format!("expire_campaign: {out:?}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn entries_are_read_as_the_scripts_write_them() {
        let e = entry((
            "1-0".into(),
            fields(&[
                ("event", "campaign.sold_out"),
                ("stock", "10"),
                ("remaining", "0"),
                ("at_ms", "1700000000000"),
            ]),
        ));
        assert_eq!(
            e.event,
            Some(OutboxEvent {
                event: "campaign.sold_out".into(),
                stock: 10,
                remaining: 0,
                at_ms: 1_700_000_000_000,
            })
        );
        let bad = entry(("2-0".into(), fields(&[("event", "x"), ("stock", "ten")])));
        assert_eq!(bad.event, None);
        assert_eq!(bad.id, "2-0");
    }
}
