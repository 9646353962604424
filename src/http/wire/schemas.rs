//! Doc-only OpenAPI mirrors of domain values that are serialized as they are
//! (see the module docs of `http::wire`). Never constructed.

#![allow(dead_code)]

use utoipa::ToSchema;

/// Campaign quotas: lifetime caps per phone, device and IP (/64 for IPv6).
#[derive(Debug, serde::Serialize, ToSchema)]
#[schema(as = Limits)]
pub struct LimitsSchema {
    #[schema(minimum = 1, maximum = 1000000)]
    pub per_phone: Option<i64>,
    #[schema(minimum = 1, maximum = 1000000)]
    pub per_device: Option<i64>,
    #[schema(minimum = 1, maximum = 1000000)]
    pub per_ip: Option<i64>,
}

/// A coupon's terms, tagged by `kind`.
#[derive(Debug, serde::Serialize, ToSchema)]
#[schema(as = Coupon)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CouponSchema {
    AmountOff {
        amount_off: i64,
        min_order_amount: Option<i64>,
    },
    PercentOff {
        percent_off: i64,
        max_discount: Option<i64>,
        min_order_amount: Option<i64>,
    },
    Gift {
        gift_sku: String,
        min_order_amount: Option<i64>,
    },
}

/// A campaign's status.
#[derive(Debug, serde::Serialize, ToSchema)]
#[schema(as = Status)]
#[serde(rename_all = "snake_case")]
pub enum StatusSchema {
    Draft,
    PendingApproval,
    Scheduled,
    Active,
    Paused,
    Ended,
    SoldOut,
}

/// One field that failed validation.
#[derive(Debug, serde::Serialize, ToSchema)]
#[schema(as = FieldError)]
pub struct FieldErrorSchema {
    /// JSON path of the field, e.g. `coupon.amount_off`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Who may use the coupon, judged on redeem and validate against the order.
#[derive(Debug, serde::Serialize, ToSchema)]
#[schema(as = Eligibility)]
pub struct EligibilitySchema {
    pub new_customers_only: Option<bool>,
    #[schema(example = json!(["sku-1"]))]
    pub skus: Option<Vec<String>>,
    #[schema(example = json!(["milk"]))]
    pub categories: Option<Vec<String>>,
    #[schema(example = json!(["gold"]))]
    pub member_tiers: Option<Vec<String>>,
}

/// Low-stock alert and webhook destination.
#[derive(Debug, serde::Serialize, ToSchema)]
#[schema(as = Alerts)]
pub struct AlertsSchema {
    #[schema(minimum = 1, maximum = 99, example = 10)]
    pub low_stock_percent: Option<i64>,
    /// `https` to a public address (or loopback `http` when `webhook_allow_loopback`).
    #[schema(example = "https://ops.example/hooks/stock")]
    pub webhook_url: Option<String>,
}
