//! The war room (`GET /ops`): one sampler per process reads every recent
//! campaign once a second (counters, refusals by code and by limit or rule,
//! webhook backlog) and keeps 15 minutes of claims/s and redemptions/s;
//! every open page gets the same snapshot over SSE (`http::warroom`).
//!
//! While no page is open, a sample reads only each campaign's counters (one
//! call each), so the rate history is there when one opens; refusals and
//! webhook backlogs are read only while someone watches.
//!
//! Rates are differences of the campaigns' `issued` and `redeemed` counters
//! between samples, so they count every instance's traffic. Nothing here
//! holds an identity: campaign ids, counts, rule names, a webhook's host.
//!
//! Access: the page trades an admin or viewer API key for a short-lived
//! stream token ([`WarRoom::token`]), because `EventSource` cannot send an
//! `Authorization` header and a long-lived key must not sit in a URL.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::watch;

use crate::domain::campaign::Status;
use crate::domain::clock::Clock;
use crate::domain::secret::hmac_sha256;
use crate::service::reports::ReportService;
use crate::store::Store;
use crate::store::keys::CampaignKeys;

/// Samples kept: 15 minutes at one a second.
pub const HISTORY: usize = 900;
/// The most campaigns one snapshot shows (the newest).
pub const MAX_CAMPAIGNS: usize = 200;
/// How long a stream token is good for (a page fetches a new one on error).
pub const TOKEN_TTL_MS: i64 = 10 * 60_000;

/// One campaign in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct CampaignRow {
    pub id: String,
    pub name: String,
    pub status: Status,
    pub stock: i64,
    pub remaining: i64,
    pub issued: i64,
    pub redeemed: i64,
    /// Remaining stock at which the low-stock warning shows (-1: none).
    pub low_stock_at: i64,
    pub low_stock: bool,
    /// Claims issued and redemptions in the last second.
    pub claims_per_s: f64,
    pub redemptions_per_s: f64,
    /// Refusals by API error `code`, and by limit (quota or rule).
    pub rejections_by_code: BTreeMap<String, i64>,
    pub rejections_by_limit: BTreeMap<String, i64>,
    pub webhook: Option<WebhookState>,
}

/// A campaign's webhook delivery state.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookState {
    /// Host of the URL only (its path or query may hold a secret).
    pub host: String,
    /// Events in the outbox stream (trimmed at about 10,000).
    pub events: u64,
    /// Events handed to a deliverer and not acknowledged: failing, retried.
    pub unacknowledged: u64,
}

/// One point of the rate charts.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    pub at_ms: i64,
    pub claims_per_s: f64,
    pub redemptions_per_s: f64,
}

/// What every page shows, once a second.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub at_ms: i64,
    pub redis_up: bool,
    pub campaigns: Vec<CampaignRow>,
    /// Refusals by rule over every campaign shown.
    pub rejections_by_rule: BTreeMap<String, i64>,
    pub point: Point,
}

#[derive(Debug, Default)]
struct Memory {
    /// campaign -> (when, issued, redeemed) of the last sample. Rates are
    /// per second of the monotonic clock (no clock step can fake a burst).
    last: HashMap<String, (Instant, i64, i64)>,
    history: VecDeque<Point>,
}

pub struct WarRoom {
    store: Store,
    reports: ReportService,
    clock: Arc<dyn Clock>,
    token_key: [u8; 32],
    memory: Mutex<Memory>,
    latest: watch::Sender<Option<Arc<Snapshot>>>,
}

impl std::fmt::Debug for WarRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarRoom").finish_non_exhaustive()
    }
}

const QUOTAS: [&str; 3] = ["per_phone", "per_device", "per_ip"];

impl WarRoom {
    pub fn new(store: Store, clock: Arc<dyn Clock>, token_key: [u8; 32]) -> Self {
        Self {
            reports: ReportService::new(store.clone(), clock.clone()),
            store,
            clock,
            token_key,
            memory: Mutex::default(),
            latest: watch::channel(None).0,
        }
    }

    /// The latest snapshot, and every next one.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.latest.subscribe()
    }

    /// The rate points of the last 15 minutes, oldest first.
    pub fn history(&self) -> Vec<Point> {
        let m = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        m.history.iter().copied().collect()
    }

    /// Reads every recent campaign and publishes a snapshot.
    pub async fn sample(&self) {
        let now = self.clock.now_ms();
        let watched = self.latest.receiver_count() > 0;
        let redis_up = self.store.ping().await.is_ok();
        let ids = if redis_up {
            self.store
                .campaign_ids(MAX_CAMPAIGNS)
                .await
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            let Ok(cid) = crate::domain::campaign::CampaignId::parse(&id) else {
                continue;
            };
            let keys = CampaignKeys::new(&cid);
            // With no page open only the counters are read (the rate
            // history keeps going); refusals and webhooks when watched.
            let stats = if watched {
                match self.reports.stats(&id).await {
                    Ok(s) => s,
                    Err(_) => continue,
                }
            } else {
                match self.store.campaign(&keys).await {
                    Ok(c) => crate::service::reports::Stats {
                        campaign: c,
                        ..Default::default()
                    },
                    Err(_) => continue,
                }
            };
            let Some(c) = stats.campaign else { continue };
            let remaining = (c.spec.stock - c.issued).max(0);
            let low_stock_at = c.spec.low_stock_at();
            let webhook = match &c.spec.alerts.webhook_url {
                Some(url) if watched => {
                    let (events, unacknowledged) =
                        self.store.outbox_backlog(&keys).await.unwrap_or((0, 0));
                    Some(WebhookState {
                        host: url::Url::parse(url)
                            .ok()
                            .and_then(|u| u.host_str().map(str::to_owned))
                            .unwrap_or_default(),
                        events,
                        unacknowledged,
                    })
                }
                _ => None,
            };
            rows.push(CampaignRow {
                status: Status::derive(&c.state, &c.spec, c.issued, now),
                id: id.clone(),
                name: c.spec.name.clone(),
                stock: c.spec.stock,
                remaining,
                issued: c.issued,
                redeemed: c.redeemed,
                low_stock_at,
                low_stock: low_stock_at >= 0 && remaining <= low_stock_at && remaining > 0,
                claims_per_s: 0.0,
                redemptions_per_s: 0.0,
                rejections_by_code: stats.by_code,
                rejections_by_limit: stats.by_limit,
                webhook,
            });
        }
        let snapshot = self.record(now, redis_up, rows);
        self.latest.send_replace(Some(Arc::new(snapshot)));
    }

    /// Rates from the previous sample, the history, the rule totals.
    fn record(&self, now: i64, redis_up: bool, mut rows: Vec<CampaignRow>) -> Snapshot {
        let mut m = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        let sampled = Instant::now();
        let (mut claims, mut redemptions) = (0.0, 0.0);
        let mut by_rule: BTreeMap<String, i64> = BTreeMap::new();
        for row in &mut rows {
            if let Some((at, issued, redeemed)) = m.last.get(&row.id).copied()
                && sampled > at
            {
                let secs = sampled.duration_since(at).as_secs_f64();
                row.claims_per_s = ((row.issued - issued).max(0) as f64) / secs;
                row.redemptions_per_s = ((row.redeemed - redeemed).max(0) as f64) / secs;
            }
            m.last
                .insert(row.id.clone(), (sampled, row.issued, row.redeemed));
            claims += row.claims_per_s;
            redemptions += row.redemptions_per_s;
            for (limit, n) in &row.rejections_by_limit {
                if !QUOTAS.contains(&limit.as_str()) {
                    *by_rule.entry(limit.clone()).or_default() += n;
                }
            }
        }
        let point = Point {
            at_ms: now,
            claims_per_s: claims,
            redemptions_per_s: redemptions,
        };
        if m.history.len() >= HISTORY {
            m.history.pop_front();
        }
        m.history.push_back(point);
        Snapshot {
            at_ms: now,
            redis_up,
            campaigns: rows,
            rejections_by_rule: by_rule,
            point,
        }
    }

    /// A stream token for the API key `name`, and when it expires.
    pub fn token(&self, name: &str) -> (String, i64) {
        sign_token(&self.token_key, name, self.clock.now_ms())
    }

    /// Whether `token` is one a process with this secret made, still good.
    pub fn check_token(&self, token: &str) -> bool {
        token_ok(&self.token_key, token, self.clock.now_ms())
    }
}

/// `<expiry ms>.<hex name>.<tag>`: the tag is 128 bits of HMAC-SHA-256 of
/// the rest under the process secret's `ops-stream` key.
pub fn sign_token(key: &[u8; 32], name: &str, now_ms: i64) -> (String, i64) {
    let expires = now_ms + TOKEN_TTL_MS;
    let body = format!("{expires}.{}", hex::encode(name));
    let tag = hex::encode(&hmac_sha256(key, &[body.as_bytes()])[..16]);
    (format!("{body}.{tag}"), expires)
}

/// True for a token [`sign_token`] made with `key` that has not expired.
pub fn token_ok(key: &[u8; 32], token: &str, now_ms: i64) -> bool {
    let Some((body, tag)) = token.rsplit_once('.') else {
        return false;
    };
    let want = hex::encode(&hmac_sha256(key, &[body.as_bytes()])[..16]);
    let same = want.len() == tag.len()
        && want
            .bytes()
            .zip(tag.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    let expires = body
        .split_once('.')
        .and_then(|(e, _)| e.parse::<i64>().ok())
        .unwrap_or(0);
    same && expires > now_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_good_until_it_expires_and_only_with_its_key() {
        let (key, other) = ([1u8; 32], [2u8; 32]);
        let (t, expires) = sign_token(&key, "alice", 1_000);
        assert_eq!(expires, 1_000 + TOKEN_TTL_MS);
        assert!(token_ok(&key, &t, 1_001));
        assert!(!token_ok(&key, &t, expires), "expired");
        assert!(!token_ok(&other, &t, 1_001), "another secret");
        let forged = t.replacen(&expires.to_string(), &(expires + 1).to_string(), 1);
        assert!(
            !token_ok(&key, &forged, 1_001),
            "a longer life is not signed"
        );
        assert!(!token_ok(&key, "", 0));
        assert!(!token_ok(&key, "1.2", 0));
    }
}
