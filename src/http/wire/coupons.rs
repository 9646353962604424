//! Claim, redeem, roll back, validate: the request shapes, their parsing into
//! the service's commands, and the answers.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::campaign::{CampaignId, Coupon};
use crate::domain::clock::{from_ms, rfc3339};
use crate::domain::eligibility::{Customer, OrderFacts, OrderItem};
use crate::domain::error::{Errors, amount_field, visible_field};
use crate::domain::identity::{DeviceId, Phone};
use crate::error::ApiError;
use crate::http::wire::schemas::CouponSchema;
use crate::service::claims::{ClaimCommand, Issued};
use crate::service::redemptions::{
    RedeemCommand, Redeemed, RollbackCommand, RolledBack, ValidateCommand, Validation,
};

type Region = phonenumber::country::Id;

fn optional_phone(raw: Option<&str>, region: Region, errs: &mut Errors) -> Option<Phone> {
    raw.and_then(|p| {
        Phone::parse(p, region)
            .map_err(|e| errs.push("phone", e.to_string()))
            .ok()
    })
}

fn require_code(raw: Option<&str>, errs: &mut Errors) -> String {
    match raw {
        Some(c) => c.to_owned(),
        None => {
            errs.push("code", "is required");
            String::new()
        }
    }
}

/// `POST /v1/campaigns/{id}/claims`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// Any common spelling; normalized to E.164 (default region CN).
    #[schema(
        required = true,
        example = "+8613800138000",
        min_length = 1,
        max_length = 40
    )]
    pub phone: Option<String>,
    /// 1..128 visible ASCII characters.
    #[schema(required = true, example = "ios-3f2a9c", pattern = "^[!-~]{1,128}$")]
    pub device_id: Option<String>,
    /// 1..128 visible ASCII characters.
    #[schema(example = "u-1001", pattern = "^[!-~]{1,128}$")]
    pub user_id: Option<String>,
    #[schema(example = "miniapp", pattern = "^[a-z0-9_-]{1,32}$")]
    pub channel: Option<String>,
}

impl ClaimRequest {
    /// Every field checked at once; a bad campaign id in the path is a 404.
    pub fn parse(self, raw_campaign: &str, region: Region) -> Result<ClaimCommand, ApiError> {
        let campaign = CampaignId::parse(raw_campaign)
            .map_err(|_| ApiError::CampaignNotFound(raw_campaign.chars().take(64).collect()))?;
        let mut errs = Errors::default();
        let phone = match self.phone.as_deref() {
            None => {
                errs.push("phone", "is required");
                None
            }
            Some(p) => optional_phone(Some(p), region, &mut errs),
        };
        let device = match self.device_id.as_deref() {
            None => {
                errs.push("device_id", "is required");
                None
            }
            Some(d) => DeviceId::parse(d)
                .map_err(|m| errs.push("device_id", m))
                .ok(),
        };
        let user_id = visible_field("user_id", self.user_id.as_deref(), 128, false, &mut errs);
        if let Some(c) = self.channel.as_deref()
            && (c.is_empty()
                || c.len() > 32
                || !c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                }))
        {
            errs.push("channel", "must match [a-z0-9_-]{1,32}");
        }
        match (phone, device) {
            (Some(phone), Some(device)) if errs.0.is_empty() => Ok(ClaimCommand {
                campaign,
                phone,
                device,
                user_id,
                channel: self.channel,
            }),
            _ => Err(ApiError::InvalidRequest(errs.0)),
        }
    }
}

/// `201` answer of a claim.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClaimResponse {
    #[schema(example = "0Fq3K9aQ7mZt2LwX1b")]
    pub code: String,
    pub campaign_id: String,
    pub claimed_at: String,
    /// Absent when the coupon never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[schema(value_type = CouponSchema)]
    pub coupon: Coupon,
}

impl From<Issued> for ClaimResponse {
    fn from(i: Issued) -> Self {
        Self {
            code: i.code,
            campaign_id: i.campaign_id,
            claimed_at: rfc3339(from_ms(i.claimed_ms)),
            expires_at: (i.expires_ms > 0).then(|| rfc3339(from_ms(i.expires_ms))),
            coupon: i.coupon,
        }
    }
}

/// `POST /v1/redemptions`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeemRequest {
    #[schema(required = true, pattern = "^[0-9A-Za-z]{18}$")]
    pub code: Option<String>,
    /// 1..128 visible ASCII characters.
    #[schema(required = true, example = "o-77812", pattern = "^[!-~]{1,128}$")]
    pub order_id: Option<String>,
    /// Minor units; required when the coupon has a minimum or is a percentage.
    #[schema(example = 25900, minimum = 0, maximum = 1000000000000i64)]
    pub order_amount: Option<i64>,
    pub phone: Option<String>,
    /// Where the code was redeemed (offline), 1..64 visible ASCII characters.
    #[schema(example = "sh-jingan-01", pattern = "^[!-~]{1,64}$")]
    pub store_id: Option<String>,
    /// The order's lines, when the campaign's eligibility needs them.
    #[schema(max_items = 1000)]
    pub items: Option<Vec<OrderItemRequest>>,
    /// The customer, when the campaign's eligibility needs it.
    pub customer: Option<CustomerRequest>,
}

/// One line of an order.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderItemRequest {
    #[schema(required = true, example = "sku-1", pattern = "^[!-~]{1,128}$")]
    pub sku: Option<String>,
    #[schema(example = "milk", pattern = "^[!-~]{1,128}$")]
    pub category: Option<String>,
    /// Minor units, the whole line.
    #[schema(example = 12900, minimum = 0, maximum = 1000000000000i64)]
    pub amount: Option<i64>,
}

/// The customer placing the order.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerRequest {
    pub is_new: Option<bool>,
    #[schema(example = "gold", pattern = "^[!-~]{1,64}$")]
    pub tier: Option<String>,
}

/// The order facts eligibility is judged on.
fn order_facts(
    items: Option<Vec<OrderItemRequest>>,
    customer: Option<CustomerRequest>,
    errs: &mut Errors,
) -> OrderFacts {
    let items = items.unwrap_or_default();
    if items.len() > 1000 {
        errs.push("items", "at most 1000 items");
    }
    let items = items
        .into_iter()
        .enumerate()
        .filter_map(|(i, it)| {
            let f = |name: &str| format!("items[{i}].{name}");
            let sku = visible_field(&f("sku"), it.sku.as_deref(), 128, true, errs)?;
            let category = visible_field(&f("category"), it.category.as_deref(), 128, false, errs);
            let amount = amount_field(&f("amount"), it.amount, errs);
            Some(OrderItem {
                sku,
                category,
                amount,
            })
        })
        .collect();
    let customer = customer.map(|c| Customer {
        is_new: c.is_new,
        tier: visible_field("customer.tier", c.tier.as_deref(), 64, false, errs),
    });
    OrderFacts { items, customer }
}

impl RedeemRequest {
    pub fn parse(self, region: Region) -> Result<RedeemCommand, ApiError> {
        let mut errs = Errors::default();
        let code = require_code(self.code.as_deref(), &mut errs);
        let order_id = visible_field("order_id", self.order_id.as_deref(), 128, true, &mut errs);
        let store_id = visible_field("store_id", self.store_id.as_deref(), 64, false, &mut errs);
        let order_amount = amount_field("order_amount", self.order_amount, &mut errs);
        let phone = optional_phone(self.phone.as_deref(), region, &mut errs);
        let order = order_facts(self.items, self.customer, &mut errs);
        match order_id {
            Some(order_id) if errs.0.is_empty() => Ok(RedeemCommand {
                code,
                order_id,
                order_amount,
                phone,
                store_id,
                order,
            }),
            _ => Err(ApiError::InvalidRequest(errs.0)),
        }
    }
}

/// `200` answer of a redemption (also of its safe retry).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RedeemResponse {
    pub code: String,
    pub order_id: String,
    pub campaign_id: String,
    pub discount: i64,
    pub redeemed_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_id: Option<String>,
    /// The SKU handed out, for gift coupons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gift_sku: Option<String>,
}

impl From<Redeemed> for RedeemResponse {
    fn from(r: Redeemed) -> Self {
        Self {
            code: r.code,
            order_id: r.order_id,
            campaign_id: r.campaign_id,
            discount: r.discount,
            redeemed_at: rfc3339(from_ms(r.redeemed_ms)),
            store_id: r.store_id,
            gift_sku: r.gift_sku,
        }
    }
}

/// `POST /v1/redemptions/rollback`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    #[schema(required = true, pattern = "^[0-9A-Za-z]{18}$")]
    pub code: Option<String>,
    #[schema(required = true, pattern = "^[!-~]{1,128}$")]
    pub order_id: Option<String>,
}

impl RollbackRequest {
    pub fn parse(self) -> Result<RollbackCommand, ApiError> {
        let mut errs = Errors::default();
        let code = require_code(self.code.as_deref(), &mut errs);
        let order_id = visible_field("order_id", self.order_id.as_deref(), 128, true, &mut errs);
        match order_id {
            Some(order_id) if errs.0.is_empty() => Ok(RollbackCommand { code, order_id }),
            _ => Err(ApiError::InvalidRequest(errs.0)),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RollbackResponse {
    pub code: String,
    pub order_id: String,
    pub campaign_id: String,
    /// False when the code was not redeemed (a repeated rollback).
    pub rolled_back: bool,
}

impl From<RolledBack> for RollbackResponse {
    fn from(r: RolledBack) -> Self {
        Self {
            code: r.code,
            order_id: r.order_id,
            campaign_id: r.campaign_id,
            rolled_back: r.rolled_back,
        }
    }
}

/// `POST /v1/codes/validate`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    #[schema(required = true)]
    pub code: Option<String>,
    #[schema(minimum = 0, maximum = 1000000000000i64)]
    pub order_amount: Option<i64>,
    pub phone: Option<String>,
    #[schema(max_items = 1000)]
    pub items: Option<Vec<OrderItemRequest>>,
    pub customer: Option<CustomerRequest>,
}

impl ValidateRequest {
    pub fn parse(self, region: Region) -> Result<ValidateCommand, ApiError> {
        let mut errs = Errors::default();
        let code = require_code(self.code.as_deref(), &mut errs);
        let order_amount = amount_field("order_amount", self.order_amount, &mut errs);
        let phone = optional_phone(self.phone.as_deref(), region, &mut errs);
        let order = order_facts(self.items, self.customer, &mut errs);
        errs.finish(ValidateCommand {
            code,
            order_amount,
            phone,
            order,
        })
        .map_err(ApiError::InvalidRequest)
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ValidateResponse {
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discount: Option<i64>,
    /// Why not, as an error `code` of the API (`invalid_code`, `not_eligible`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

impl From<Validation> for ValidateResponse {
    fn from(v: Validation) -> Self {
        Self {
            valid: v.valid,
            discount: v.discount,
            code: v.code.map(str::to_owned),
            detail: v.detail,
            campaign_id: v.campaign_id,
            expires_at: v.expires_ms.filter(|e| *e > 0).map(|e| rfc3339(from_ms(e))),
        }
    }
}
