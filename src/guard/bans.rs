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
