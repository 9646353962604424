//! `/v1/campaigns/{id}/stats` and `/v1/audit`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::domain::clock::{from_ms, rfc3339};
use crate::service::reports::Stats;
use crate::store::reports::AuditPage;

#[derive(Debug, Serialize, ToSchema)]
pub struct Rejections {
    /// By API error `code` (`sold_out`, `campaign_not_active`, `limit_exceeded`, `not_eligible`,
    /// `blocked`: the block list or a ban, counted in process and added once a second).
    pub by_code: BTreeMap<String, i64>,
    /// By limit: campaign quotas (`per_phone`, ...) and rate-rule names.
    pub by_limit: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MinuteCount {
    pub minute: String,
    pub claims: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RedemptionSplit {
    /// By the channel the code was claimed through (`bulk` for bulk codes).
    pub by_channel: BTreeMap<String, i64>,
    pub by_store: BTreeMap<String, i64>,
}

/// `GET /v1/campaigns/{id}/stats`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsView {
    pub campaign_id: String,
    pub status: String,
    pub stock: i64,
    pub issued: i64,
    pub remaining: i64,
    pub redeemed: i64,
    /// redeemed / issued (0 when nothing is issued).
    pub redemption_rate: f64,
    pub rejections: Rejections,
    /// Claims issued per minute over the last hour, oldest first.
    pub claims_per_minute: Vec<MinuteCount>,
    pub redemptions: RedemptionSplit,
}

impl StatsView {
    pub fn new(s: Stats, now_ms: i64) -> Option<Self> {
        let c = s.campaign?;
        Some(Self {
            campaign_id: c.spec.id.clone(),
            status: crate::http::wire::CampaignView::new(
                &c.spec, &c.state, c.issued, c.redeemed, now_ms,
            )
            .status_str(),
            stock: c.spec.stock,
            issued: c.issued,
            remaining: (c.spec.stock - c.issued).max(0),
            redeemed: c.redeemed,
            redemption_rate: if c.issued > 0 {
                c.redeemed as f64 / c.issued as f64
            } else {
                0.0
            },
            rejections: Rejections {
                by_code: s.by_code,
                by_limit: s.by_limit,
            },
            claims_per_minute: s
                .per_minute
                .into_iter()
                .map(|(m, n)| MinuteCount {
                    minute: rfc3339(from_ms(m)),
                    claims: n,
                })
                .collect(),
            redemptions: RedemptionSplit {
                by_channel: s.redemptions_by_channel,
                by_store: s.redemptions_by_store,
            },
        })
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// A campaign's trail; absent: the service-wide one (rules reloads, bans).
    pub campaign: Option<String>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// 1..500, default 100.
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    /// The entry's id in the stream.
    pub id: String,
    pub at: String,
    /// The API key name, `rules-file`, or `rule:<name>`.
    pub actor: String,
    /// e.g. `campaign.create`, `campaign.approve`, `campaign.patch`, `ban.start`, `limits.reload`.
    pub action: String,
    pub target: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// `GET /v1/audit`: newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub entries: Vec<AuditEntryView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl From<AuditPage> for AuditView {
    fn from(p: AuditPage) -> Self {
        Self {
            entries: p
                .entries
                .into_iter()
                .map(|(id, e)| AuditEntryView {
                    id,
                    at: rfc3339(from_ms(e.at_ms)),
                    actor: e.actor,
                    action: e.action,
                    target: e.target,
                    reason: e.reason,
                    detail: e.detail,
                })
                .collect(),
            next_cursor: p.next,
        }
    }
}
