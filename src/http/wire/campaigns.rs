//! `/v1/campaigns`: the create request and the campaign as `GET` shows it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::campaign::{
    Alerts, CampaignDraft, CampaignPatch, CampaignSpec, Coupon, CouponDraft, Limits, Status,
};
use crate::domain::clock::{from_ms, rfc3339};
use crate::domain::eligibility::Eligibility;
use crate::http::wire::schemas::{
    AlertsSchema, CouponSchema, EligibilitySchema, LimitsSchema, StatusSchema,
};

/// The coupon's terms as sent; validated by the domain.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CouponRequest {
    #[schema(
        required = true,
        example = "amount_off",
        pattern = "^(amount_off|percent_off|gift)$"
    )]
    pub kind: Option<String>,
    pub amount_off: Option<i64>,
    pub percent_off: Option<i64>,
    pub max_discount: Option<i64>,
    pub gift_sku: Option<String>,
    pub min_order_amount: Option<i64>,
}

/// `POST /v1/campaigns` as sent. Unknown fields are refused rather than
/// ignored: a marketer who sends `require_approval` to a server that does not
/// know it must hear so, not get an unapproved live campaign.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCampaignRequest {
    #[schema(example = "double11-20off", pattern = "^[a-z0-9_-]{1,64}$")]
    pub id: Option<String>,
    #[schema(
        required = true,
        example = "Double 11: 20 off 200",
        min_length = 1,
        max_length = 200
    )]
    pub name: Option<String>,
    #[schema(required = true, example = 10000, minimum = 1, maximum = 4294967295i64)]
    pub stock: Option<i64>,
    /// RFC 3339; default now.
    pub starts_at: Option<String>,
    /// RFC 3339; default open-ended.
    pub ends_at: Option<String>,
    #[schema(value_type = Option<LimitsSchema>)]
    pub limits: Option<Limits>,
    #[schema(required = true)]
    pub coupon: Option<CouponRequest>,
    /// A claimed coupon expires this many days after its claim.
    #[schema(minimum = 1, maximum = 3650)]
    pub valid_for_days: Option<i64>,
    /// Start as a `draft`: nothing can be claimed until it is submitted.
    pub draft: Option<bool>,
    /// Starts as `pending_approval` (or goes there on submit); another key must approve.
    pub require_approval: Option<bool>,
    /// Claims from other channels: `422 not_eligible`.
    #[schema(example = json!(["miniapp", "app"]))]
    pub channels: Option<Vec<String>>,
    /// Staged rollout: only this share of phones (a stable hash of the pseudonymized phone) may claim yet.
    #[schema(minimum = 1, maximum = 100)]
    pub rollout_percent: Option<i64>,
    /// Redemption must come with the claimer's phone.
    pub bind_to_claimer: Option<bool>,
    #[schema(value_type = Option<EligibilitySchema>)]
    pub eligibility: Option<Eligibility>,
    #[schema(value_type = Option<AlertsSchema>)]
    pub alerts: Option<Alerts>,
    /// Split the stock over this many shards, each under its own hash tag, so
    /// one campaign's claims spread over the masters of a Redis Cluster. A
    /// claim goes to a shard by a hash of its phone (so `per_phone` stays
    /// exact; `per_device` and `per_ip` are counted per shard); stock moves
    /// to a shard that runs dry. Fixed at create. On a sharded campaign the
    /// `stock` can be raised by PATCH, not lowered; bulk codes are reserved
    /// in shard 0 (its unclaimed stock gathered there first); stock webhooks
    /// come from the shards' summed counters, up to 0.5 s after the crossing.
    #[schema(minimum = 1, maximum = 64, default = 1)]
    pub stock_shards: Option<i64>,
}

impl From<CreateCampaignRequest> for CampaignDraft {
    fn from(r: CreateCampaignRequest) -> Self {
        CampaignDraft {
            id: r.id,
            name: r.name,
            stock: r.stock,
            starts_at: r.starts_at,
            ends_at: r.ends_at,
            limits: r.limits,
            coupon: r.coupon.map(|c| CouponDraft {
                kind: c.kind,
                amount_off: c.amount_off,
                percent_off: c.percent_off,
                max_discount: c.max_discount,
                gift_sku: c.gift_sku,
                min_order_amount: c.min_order_amount,
            }),
            valid_for_days: r.valid_for_days,
            draft: r.draft,
            require_approval: r.require_approval,
            channels: r.channels,
            rollout_percent: r.rollout_percent,
            bind_to_claimer: r.bind_to_claimer,
            eligibility: r.eligibility,
            alerts: r.alerts,
            stock_shards: r.stock_shards,
        }
    }
}

/// `PATCH /v1/campaigns/{id}`: every field optional; what is absent stays.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchCampaignRequest {
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// Never below what is issued.
    #[schema(minimum = 1, maximum = 4294967295i64)]
    pub stock: Option<i64>,
    pub starts_at: Option<String>,
    /// RFC 3339, or `""` to remove the end.
    pub ends_at: Option<String>,
    #[schema(value_type = Option<LimitsSchema>)]
    pub limits: Option<Limits>,
    #[schema(value_type = Option<AlertsSchema>)]
    pub alerts: Option<Alerts>,
    #[schema(minimum = 1, maximum = 100)]
    pub rollout_percent: Option<i64>,
}

impl From<PatchCampaignRequest> for CampaignPatch {
    fn from(r: PatchCampaignRequest) -> Self {
        CampaignPatch {
            name: r.name,
            stock: r.stock,
            starts_at: r.starts_at,
            ends_at: r.ends_at,
            limits: r.limits,
            alerts: r.alerts,
            rollout_percent: r.rollout_percent,
        }
    }
}

/// `POST /v1/campaigns/{id}/{action}`: an optional reason for the audit trail.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    #[schema(max_length = 500, example = "finance approved budget B-17")]
    pub reason: Option<String>,
}

/// `GET /v1/campaigns/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CampaignView {
    #[schema(example = "double11-20off")]
    pub id: String,
    pub name: String,
    #[schema(value_type = StatusSchema)]
    pub status: Status,
    pub stock: i64,
    pub remaining: i64,
    pub issued: i64,
    pub redeemed: i64,
    pub starts_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    #[schema(value_type = LimitsSchema)]
    pub limits: Limits,
    #[schema(value_type = CouponSchema)]
    pub coupon: Coupon,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_for_days: Option<i64>,
    pub created_at: String,
    /// The API key that created it.
    pub created_by: String,
    pub require_approval: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    pub rollout_percent: i64,
    pub bind_to_claimer: bool,
    #[serde(skip_serializing_if = "Eligibility::is_empty")]
    #[schema(value_type = EligibilitySchema)]
    pub eligibility: Eligibility,
    #[serde(skip_serializing_if = "Alerts::is_empty")]
    #[schema(value_type = AlertsSchema)]
    pub alerts: Alerts,
    /// Stock shards (absent: 1). `stock`, `remaining`, `issued` and `redeemed`
    /// are the sums over them.
    #[serde(skip_serializing_if = "is_one")]
    #[schema(minimum = 2, maximum = 64)]
    pub stock_shards: u32,
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl CampaignView {
    pub fn new(spec: &CampaignSpec, state: &str, issued: i64, redeemed: i64, now_ms: i64) -> Self {
        Self {
            id: spec.id.clone(),
            name: spec.name.clone(),
            status: Status::derive(state, spec, issued, now_ms),
            stock: spec.stock,
            remaining: (spec.stock - issued).max(0),
            issued,
            redeemed,
            starts_at: rfc3339(from_ms(spec.starts_at_ms)),
            ends_at: (spec.ends_at_ms != 0).then(|| rfc3339(from_ms(spec.ends_at_ms))),
            limits: spec.limits,
            coupon: spec.coupon.clone(),
            valid_for_days: spec.valid_for_days,
            created_at: rfc3339(from_ms(spec.created_at_ms)),
            created_by: spec.created_by.clone(),
            require_approval: spec.require_approval,
            channels: spec.channels.clone(),
            rollout_percent: spec.rollout_percent,
            bind_to_claimer: spec.bind_to_claimer,
            eligibility: spec.eligibility.clone(),
            alerts: spec.alerts.clone(),
            stock_shards: spec.stock_shards,
        }
    }

    /// The status as its API word.
    pub fn status_str(&self) -> String {
        serde_json::to_value(self.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The first answer of a create, rebuilt identically for its replay: a
    /// new campaign has issued and redeemed nothing, and its status is the
    /// one it had at its creation time.
    pub fn created(spec: &CampaignSpec) -> Self {
        Self::new(spec, &spec.initial_state, 0, 0, spec.created_at_ms)
    }
}

/// `GET /v1/campaigns` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// 1..1000, default 100.
    pub limit: Option<u32>,
}

/// `GET /v1/campaigns` answer: the newest campaigns first.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignList {
    pub campaigns: Vec<CampaignView>,
}
