//! `/v1/campaigns`: the create request and the campaign as `GET` shows it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::campaign::{CampaignDraft, CampaignSpec, Coupon, CouponDraft, Limits, Status};
use crate::domain::clock::{from_ms, rfc3339};
use crate::http::wire::schemas::{CouponSchema, LimitsSchema, StatusSchema};

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
        }
    }
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
        }
    }

    /// The first answer of a create, rebuilt identically for its replay: a
    /// new campaign has issued and redeemed nothing, and its status is the
    /// one it had at its creation time.
    pub fn created(spec: &CampaignSpec) -> Self {
        Self::new(spec, "active", 0, 0, spec.created_at_ms)
    }
}
