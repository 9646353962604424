//! What marketers and auditors read: a campaign's stats and the audit trail.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::domain::clock::Clock;
use crate::error::ApiError;
use crate::service::campaigns::parse_campaign_id;
use crate::store::keys::{self, CampaignKeys};
use crate::store::reports::AuditPage;
use crate::store::{Store, StoredCampaign};

/// A campaign's numbers.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub campaign: Option<StoredCampaign>,
    /// Refusals by API error `code`.
    pub by_code: BTreeMap<String, i64>,
    /// Refusals by limit: campaign quotas and rate-rule names.
    pub by_limit: BTreeMap<String, i64>,
    /// (minute start ms, claims issued), oldest first, the last 60 minutes.
    pub per_minute: Vec<(i64, i64)>,
    pub redemptions_by_channel: BTreeMap<String, i64>,
    pub redemptions_by_store: BTreeMap<String, i64>,
}

#[derive(Debug)]
pub struct ReportService {
    store: Store,
    clock: Arc<dyn Clock>,
}

/// Largest audit page.
pub const MAX_PAGE: usize = 500;

impl ReportService {
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    pub async fn stats(&self, raw_id: &str) -> Result<Stats, ApiError> {
        let id = parse_campaign_id(raw_id)?;
        let keys = CampaignKeys::new(&id);
        let campaign = self
            .store
            .campaign(&keys)
            .await?
            .ok_or_else(|| ApiError::CampaignNotFound(id.to_string()))?;
        let now_minute = self.clock.now_ms() / 60_000;
        let mut s = Stats::default();
        let mut minutes: BTreeMap<i64, i64> =
            ((now_minute - 59)..=now_minute).map(|m| (m, 0)).collect();
        for (field, n) in self
            .store
            .stats_all(&keys, id.as_str(), campaign.spec.stock_shards)
            .await?
        {
            let (kind, name) = field.split_once(':').unwrap_or((field.as_str(), ""));
            match kind {
                "rej" => {
                    let code = match name {
                        "sold_out" => "sold_out",
                        "not_active" => "campaign_not_active",
                        "blocked" => "blocked",
                        "per_phone" | "per_device" | "per_ip" => {
                            *s.by_limit.entry(name.to_owned()).or_default() += n;
                            "limit_exceeded"
                        }
                        _ => "not_eligible",
                    };
                    *s.by_code.entry(code.to_owned()).or_default() += n;
                }
                "rule" => {
                    *s.by_limit.entry(name.to_owned()).or_default() += n;
                    *s.by_code.entry("limit_exceeded".to_owned()).or_default() += n;
                }
                "m" => {
                    if let Some(c) = name.parse::<i64>().ok().and_then(|m| minutes.get_mut(&m)) {
                        *c += n;
                    }
                }
                "red" => match name.split_once(':') {
                    Some(("store", st)) => {
                        s.redemptions_by_store.insert(st.to_owned(), n);
                    }
                    Some(("channel", ch)) => {
                        s.redemptions_by_channel.insert(ch.to_owned(), n);
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        s.per_minute = minutes.into_iter().map(|(m, n)| (m * 60_000, n)).collect();
        s.campaign = Some(campaign);
        Ok(s)
    }

    /// A page of the audit trail: one campaign's (every create, transition,
    /// PATCH and bulk reservation), or with no campaign the service-wide one
    /// (rules reloads, bans, unbans).
    pub async fn audit(
        &self,
        campaign: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<AuditPage, ApiError> {
        if let Some(c) = cursor
            && !is_stream_id(c)
        {
            return Err(ApiError::field("cursor", "is not a cursor this API gave"));
        }
        let stream = match campaign {
            Some(raw) => CampaignKeys::new(&parse_campaign_id(raw)?).audit(),
            None => keys::audit().to_owned(),
        };
        Ok(self
            .store
            .audit_page(&stream, cursor, limit.clamp(1, MAX_PAGE))
            .await?)
    }
}

/// `<ms>-<seq>`.
fn is_stream_id(s: &str) -> bool {
    s.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
            && s.len() <= 41
    })
}
