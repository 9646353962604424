//! The in-process memory of campaigns that cannot issue right now (sold
//! out, or not active: paused, ended, scheduled, not approved), so a flood
//! of claims on them is answered without a Redis round trip.
//!
//! It lives in `service`, not `guard` (where STYLE.md lists it), because the
//! use cases that change what it remembers (PATCH, transitions) are
//! services: they forget an entry on this instance at once, and `guard`
//! would have to call back up into them.
//!
//! Invalidation across instances is by time: an entry lives [`TTL`]
//! (500 ms), after which the next claim on this instance asks Redis again.
//! So a PATCH that raises the stock, or a resume, on any instance is acted
//! on by every instance within 500 ms (the lifecycle contract is 1 s), at the
//! cost of at most two Redis calls a second per instance for a campaign that
//! stays sold out. No pub/sub connection to lose, no version check per claim.
//!
//! A campaign refused only because its start is still to come is
//! remembered until that start at the latest (by the service clock the
//! script compared with), so the first claim of a flash sale is never
//! answered from an old memory.
//!
//! Only claims without an `Idempotency-Key` are answered from memory: a
//! retry under a key must get its first answer (its code), which only Redis
//! has. The refusals answered here are counted in the campaign's stats by
//! [`SoldOut::flush`], once a second, so `GET .../stats` still sees them.

use foldhash::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// How long an answer is remembered.
pub const TTL: Duration = Duration::from_millis(500);

/// When an answer is asked for or learnt: the monotonic instant (for the
/// TTL) and the service clock in ms (for a start still to come).
pub type Now = (Instant, i64);

#[derive(Debug)]
struct Entry {
    until: Instant,
    /// Service-clock ms from which the answer no longer holds (a start).
    until_ms: i64,
    /// `None`: sold out; else the state the campaign is in.
    not_active: Option<String>,
    /// Refusals answered from this entry since the last flush.
    answered: AtomicU64,
}

#[derive(Debug, Default)]
pub struct SoldOut {
    by_id: RwLock<HashMap<String, Entry>>,
}

/// `id`'s entry while it holds.
fn live<'a>(map: &'a HashMap<String, Entry>, id: &str, (now, now_ms): Now) -> Option<&'a Entry> {
    map.get(id).filter(|e| e.until > now && e.until_ms > now_ms)
}

impl SoldOut {
    /// The refusal to answer for a claim on `id` now, if one is remembered.
    pub fn check(&self, id: &str, now: Now) -> Option<ApiError> {
        let map = self.by_id.read().unwrap_or_else(|p| p.into_inner());
        let e = live(&map, id, now)?;
        e.answered.fetch_add(1, Ordering::Relaxed);
        Some(match &e.not_active {
            None => ApiError::SoldOut(id.to_owned()),
            Some(state) => ApiError::CampaignNotActive {
                id: id.to_owned(),
                state: state.clone(),
            },
        })
    }

    /// Whether a claim on `id` would be refused from memory now (nothing
    /// counted: [`SoldOut::check`] answers it).
    pub fn holds(&self, id: &str, now: Now) -> bool {
        let map = self.by_id.read().unwrap_or_else(|p| p.into_inner());
        live(&map, id, now).is_some()
    }

    /// Remembers that every claim on `id` is refused: sold out (`state`
    /// `None`) or in `state`, until `starts_ms` at the latest.
    pub fn remember(&self, id: &str, state: Option<&str>, starts_ms: Option<i64>, (now, _): Now) {
        let mut map = self.by_id.write().unwrap_or_else(|p| p.into_inner());
        let answered = map
            .remove(id)
            .map_or(0, |e| e.answered.load(Ordering::Relaxed));
        map.insert(
            id.to_owned(),
            Entry {
                until: now + TTL,
                until_ms: starts_ms.unwrap_or(i64::MAX),
                not_active: state.map(str::to_owned),
                answered: AtomicU64::new(answered),
            },
        );
    }

    /// Forgets `id` (this instance changed it).
    pub fn forget(&self, id: &str) {
        let mut map = self.by_id.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(id) {
            e.until = Instant::now();
        }
    }

    /// The refusals answered from memory since the last call, by campaign
    /// and stats field; expired entries with nothing to count are dropped.
    pub fn flush(&self, now: Instant) -> Vec<(String, &'static str, u64)> {
        let mut map = self.by_id.write().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        map.retain(|id, e| {
            let n = e.answered.swap(0, Ordering::Relaxed);
            if n > 0 {
                let field = if e.not_active.is_some() {
                    "rej:not_active"
                } else {
                    "rej:sold_out"
                };
                out.push((id.clone(), field, n));
            }
            e.until > now
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_refusals_for_the_ttl_only_and_counts_what_it_answered() {
        let s = SoldOut::default();
        let t = Instant::now();
        assert!(s.check("c", (t, 0)).is_none());
        s.remember("c", None, None, (t, 0));
        assert!(matches!(s.check("c", (t, 0)), Some(ApiError::SoldOut(_))));
        assert!(s.holds("c", (t, 0)), "holds counts nothing");
        assert!(!s.holds("d", (t, 0)));
        assert!(matches!(
            s.check("c", (t + TTL / 2, 0)),
            Some(ApiError::SoldOut(_))
        ));
        assert!(s.check("c", (t + TTL, 0)).is_none(), "expired");
        assert!(!s.holds("c", (t + TTL, 0)));
        assert_eq!(s.flush(t), vec![("c".to_owned(), "rej:sold_out", 2)]);
        assert_eq!(s.flush(t + TTL), vec![], "counted once, then dropped");
    }

    #[test]
    fn a_start_still_to_come_is_remembered_until_the_start_only() {
        let s = SoldOut::default();
        let t = Instant::now();
        s.remember("c", Some("scheduled"), Some(1_000), (t, 900));
        assert!(matches!(
            s.check("c", (t, 999)),
            Some(ApiError::CampaignNotActive { state, .. }) if state == "scheduled"
        ));
        assert!(s.check("c", (t, 1_000)).is_none(), "the sale has started");
        assert_eq!(s.flush(t), vec![("c".to_owned(), "rej:not_active", 1)]);
    }

    #[test]
    fn forgets_on_a_local_change() {
        let s = SoldOut::default();
        let t = Instant::now();
        s.remember("c", Some("paused"), None, (t, 0));
        assert!(matches!(
            s.check("c", (t, 0)),
            Some(ApiError::CampaignNotActive { state, .. }) if state == "paused"
        ));
        s.forget("c");
        assert!(s.check("c", (Instant::now(), 0)).is_none());
        assert!(s.check("d", (t, 0)).is_none());
    }
}
