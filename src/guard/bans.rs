//! The in-process view of the bans (`st:{bans}` in Redis, the one truth):
//! a request is checked against it without a Redis round trip. This
//! instance's own bans and unbans apply at once; every replica polls the bans
//! version each second (see `worker`) and reloads when it moved, so a ban
//! from elsewhere applies everywhere within about a second.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::domain::identity::Pseudonym;
use crate::domain::limits::BanKind;
use crate::error::ApiError;
use crate::guard::Guard;
use crate::store::rules::BanRecord;

/// The hash field of a ban: `<kind>:<pseudonym>`.
pub fn subject(kind: BanKind, who: &Pseudonym) -> String {
    format!("{}:{}", kind.as_str(), who.as_str())
}

#[derive(Debug, Default)]
pub struct BanCache {
    version: AtomicU64,
    bans: RwLock<HashMap<String, BanRecord>>,
}

impl BanCache {
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Replaces the whole view (after a reload from Redis).
    pub fn replace(&self, version: u64, bans: Vec<(String, BanRecord)>) {
        let mut map = self.bans.write().unwrap_or_else(|p| p.into_inner());
        *map = bans.into_iter().collect();
        self.version.store(version, Ordering::Release);
    }

    /// Applies this instance's own change at once.
    pub fn apply(&self, set: &[(String, BanRecord)], removed: &[String]) {
        let mut map = self.bans.write().unwrap_or_else(|p| p.into_inner());
        for (k, v) in set {
            map.insert(k.clone(), v.clone());
        }
        for k in removed {
            map.remove(k);
        }
    }

    /// The end (ms) of a ban on `who` that runs at `now_ms`.
    pub fn active(&self, kind: BanKind, who: &Pseudonym, now_ms: i64) -> Option<i64> {
        if self.is_empty() {
            return None;
        }
        self.bans
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&subject(kind, who))
            .map(|b| b.until_ms)
            .filter(|until| *until > now_ms)
    }

    fn is_empty(&self) -> bool {
        self.bans
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Every ban running at `now_ms`.
    pub fn running(&self, now_ms: i64) -> Vec<(String, BanRecord)> {
        let mut v: Vec<_> = self
            .bans
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, b)| b.until_ms > now_ms)
            .map(|(k, b)| (k.clone(), b.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Starting, lifting and refreshing bans.
impl Guard {
    pub(super) async fn start_bans(&self, bans: &[(String, BanRecord)]) {
        match self.store.set_bans(bans).await {
            Ok(_) => {
                self.bans.apply(bans, &[]);
                for (field, rec) in bans {
                    let kind = field.split(':').next().unwrap_or("");
                    metrics::counter!("stampede_bans_started_total", "source" => rec.source.clone(), "kind" => kind.to_owned())
                        .increment(1);
                    tracing::warn!(kind, by = %rec.by, level = rec.level, secs = (rec.until_ms - rec.started_ms) / 1000, "ban started");
                    self.audit(
                        &rec.source,
                        "ban.start",
                        field,
                        &rec.reason,
                        &format!("until_ms={} level={}", rec.until_ms, rec.level),
                    )
                    .await;
                }
            }
            Err(e) => tracing::error!(error = %e, "a ban could not be stored"),
        }
    }

    /// An admin's ban on `who` for `duration_ms`.
    pub async fn ban(
        &self,
        kind: BanKind,
        who: &Pseudonym,
        duration_ms: u64,
        reason: &str,
        by: &str,
    ) -> Result<(String, BanRecord), ApiError> {
        let now = self.clock.now_ms();
        let field = subject(kind, who);
        let rec = BanRecord {
            until_ms: now.saturating_add(duration_ms as i64),
            started_ms: now,
            source: "admin".into(),
            by: by.into(),
            reason: reason.into(),
            level: 0,
        };
        let entry = [(field.clone(), rec.clone())];
        self.store.set_bans(&entry).await?;
        self.bans.apply(&entry, &[]);
        metrics::counter!("stampede_bans_started_total", "source" => "admin", "kind" => kind.as_str())
            .increment(1);
        self.audit(
            by,
            "ban.start",
            &field,
            reason,
            &format!("until_ms={}", rec.until_ms),
        )
        .await;
        Ok((field, rec))
    }

    /// Lifts a ban; false when there was none.
    pub async fn unban(&self, kind: BanKind, who: &Pseudonym, by: &str) -> Result<bool, ApiError> {
        let field = subject(kind, who);
        let (_, removed) = self.store.del_bans(std::slice::from_ref(&field)).await?;
        self.bans.apply(&[], std::slice::from_ref(&field));
        if removed > 0 {
            self.audit(by, "ban.lift", &field, "", "").await;
        }
        Ok(removed > 0)
    }

    /// Reloads the bans from Redis when their version moved (every replica
    /// calls this about once a second).
    pub async fn refresh_bans(&self) -> Result<(), crate::store::StoreError> {
        let v = self.store.bans_version().await?;
        if v != self.bans.version() {
            let (version, all) = self.store.all_bans().await?;
            self.bans.replace(version, all);
        }
        Ok(())
    }
}
