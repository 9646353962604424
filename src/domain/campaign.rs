//! Campaigns: a draft (the create request's fields, as the HTTP layer read
//! them), its validation into a [`CampaignSpec`], the coupon's terms and the
//! discount they give, and the status a campaign shows. Serde only: the wire
//! shapes and their OpenAPI schemas live in `http::wire`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::clock::to_ms;
use crate::domain::code::{MAX_CAMPAIGN_NO, MAX_SERIAL};
use crate::domain::error::{Errors, FieldError, is_visible_ascii};

/// Largest amount of money the API accepts, in minor units (10^12 fen).
pub const MAX_MONEY: i64 = 1_000_000_000_000;
/// Longest coupon validity, in days.
pub const MAX_VALID_DAYS: i64 = 3650;

/// A campaign id: `[a-z0-9_-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct CampaignId(String);

impl CampaignId {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let ok = (1..=64).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err("must match [a-z0-9_-]{1,64}")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CampaignId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Per-campaign lifetime quotas. Absent means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Coupons one phone number may claim in this campaign.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_phone: Option<i64>,
    /// Coupons one device may claim in this campaign.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_device: Option<i64>,
    /// Coupons one client IP (IPv6: one /64) may claim in this campaign.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_ip: Option<i64>,
}

/// The quota a claim ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    PerPhone,
    PerDevice,
    PerIp,
}

impl Quota {
    pub fn as_str(self) -> &'static str {
        match self {
            Quota::PerPhone => "per_phone",
            Quota::PerDevice => "per_device",
            Quota::PerIp => "per_ip",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "per_phone" => Some(Quota::PerPhone),
            "per_device" => Some(Quota::PerDevice),
            "per_ip" => Some(Quota::PerIp),
            _ => None,
        }
    }
}

/// The coupon as the create request spells it: every field optional so that
/// a missing one is reported by name (`422`), while a wrongly typed one is a
/// `400 malformed_request` from the JSON reader.
#[derive(Debug, Clone, Default)]
pub struct CouponDraft {
    /// `amount_off`, `percent_off` or `gift`.
    pub kind: Option<String>,
    /// Minor units off the order (`amount_off`).
    pub amount_off: Option<i64>,
    /// 1..99 percent off the order (`percent_off`).
    pub percent_off: Option<i64>,
    /// Cap on a `percent_off` discount, minor units.
    pub max_discount: Option<i64>,
    /// The SKU handed out (`gift`).
    pub gift_sku: Option<String>,
    /// Smallest order the coupon applies to, minor units.
    pub min_order_amount: Option<i64>,
}

/// A coupon's terms, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Coupon {
    AmountOff {
        amount_off: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_order_amount: Option<i64>,
    },
    PercentOff {
        percent_off: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_discount: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_order_amount: Option<i64>,
    },
    Gift {
        gift_sku: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_order_amount: Option<i64>,
    },
}

/// Why an order does not get the coupon's discount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ineligible {
    #[error("order_amount is required: the coupon has a minimum order amount or a percentage")]
    AmountRequired,
    #[error("the order amount {amount} is below the coupon's minimum of {min}")]
    BelowMinimum { amount: i64, min: i64 },
}

impl Coupon {
    pub fn min_order_amount(&self) -> Option<i64> {
        match self {
            Coupon::AmountOff {
                min_order_amount, ..
            }
            | Coupon::PercentOff {
                min_order_amount, ..
            }
            | Coupon::Gift {
                min_order_amount, ..
            } => *min_order_amount,
        }
    }

    /// The discount an order of `order_amount` gets, in minor units. Never
    /// more than the order itself.
    pub fn discount(&self, order_amount: Option<i64>) -> Result<i64, Ineligible> {
        if let Some(min) = self.min_order_amount() {
            let amount = order_amount.ok_or(Ineligible::AmountRequired)?;
            if amount < min {
                return Err(Ineligible::BelowMinimum { amount, min });
            }
        }
        Ok(match self {
            Coupon::AmountOff { amount_off, .. } => match order_amount {
                Some(a) => (*amount_off).min(a),
                None => *amount_off,
            },
            Coupon::PercentOff {
                percent_off,
                max_discount,
                ..
            } => {
                let amount = order_amount.ok_or(Ineligible::AmountRequired)?;
                // i128: amount * percent cannot overflow.
                let d = (i128::from(amount) * i128::from(*percent_off) / 100) as i64;
                max_discount.map_or(d, |cap| d.min(cap))
            }
            Coupon::Gift { .. } => 0,
        })
    }

    fn parse(req: &CouponDraft, errs: &mut Errors) -> Option<Self> {
        let money = |errs: &mut Errors, field: &str, v: Option<i64>, min: i64| -> Option<i64> {
            match v {
                Some(v) if !(min..=MAX_MONEY).contains(&v) => {
                    errs.push(
                        format!("coupon.{field}"),
                        format!("must be between {min} and {MAX_MONEY} (minor units)"),
                    );
                    None
                }
                v => v,
            }
        };
        let min_order_amount = money(errs, "min_order_amount", req.min_order_amount, 0);
        let required = |errs: &mut Errors, field: &str, v: Option<i64>, min: i64| {
            if v.is_none() {
                errs.push(format!("coupon.{field}"), "is required for this kind");
            }
            money(errs, field, v, min)
        };
        let stray = |errs: &mut Errors, field: &str, present: bool| {
            if present {
                errs.push(format!("coupon.{field}"), "does not apply to this kind");
            }
        };
        match req.kind.as_deref() {
            Some("amount_off") => {
                let amount_off = required(errs, "amount_off", req.amount_off, 1);
                stray(errs, "percent_off", req.percent_off.is_some());
                stray(errs, "max_discount", req.max_discount.is_some());
                stray(errs, "gift_sku", req.gift_sku.is_some());
                Some(Coupon::AmountOff {
                    amount_off: amount_off?,
                    min_order_amount,
                })
            }
            Some("percent_off") => {
                let pct = match req.percent_off {
                    None => {
                        errs.push("coupon.percent_off", "is required for this kind");
                        None
                    }
                    Some(p) if !(1..=99).contains(&p) => {
                        errs.push("coupon.percent_off", "must be between 1 and 99");
                        None
                    }
                    p => p,
                };
                let max_discount = money(errs, "max_discount", req.max_discount, 1);
                stray(errs, "amount_off", req.amount_off.is_some());
                stray(errs, "gift_sku", req.gift_sku.is_some());
                Some(Coupon::PercentOff {
                    percent_off: pct?,
                    max_discount,
                    min_order_amount,
                })
            }
            Some("gift") => {
                let sku = match req.gift_sku.as_deref() {
                    None => {
                        errs.push("coupon.gift_sku", "is required for this kind");
                        None
                    }
                    Some(s) if s.is_empty() || s.len() > 128 || !is_visible_ascii(s) => {
                        errs.push(
                            "coupon.gift_sku",
                            "must be 1 to 128 visible ASCII characters",
                        );
                        None
                    }
                    Some(s) => Some(s.to_owned()),
                };
                stray(errs, "amount_off", req.amount_off.is_some());
                stray(errs, "percent_off", req.percent_off.is_some());
                stray(errs, "max_discount", req.max_discount.is_some());
                Some(Coupon::Gift {
                    gift_sku: sku?,
                    min_order_amount,
                })
            }
            Some(_) => {
                errs.push(
                    "coupon.kind",
                    "must be one of amount_off, percent_off, gift",
                );
                None
            }
            None => {
                errs.push("coupon.kind", "is required");
                None
            }
        }
    }
}

/// A campaign as the create request gave it, before validation.
#[derive(Debug, Clone, Default)]
pub struct CampaignDraft {
    /// `[a-z0-9_-]{1,64}`; generated when absent.
    pub id: Option<String>,
    pub name: Option<String>,
    /// Total coupons that may ever be issued.
    pub stock: Option<i64>,
    /// RFC 3339; default now.
    pub starts_at: Option<String>,
    /// RFC 3339; default open-ended.
    pub ends_at: Option<String>,
    pub limits: Option<Limits>,
    pub coupon: Option<CouponDraft>,
    /// A claimed coupon expires this many days after its claim.
    pub valid_for_days: Option<i64>,
}

/// A validated campaign definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignSpec {
    pub id: String,
    pub name: String,
    pub stock: i64,
    pub starts_at_ms: i64,
    /// 0: open-ended.
    pub ends_at_ms: i64,
    pub limits: Limits,
    pub coupon: Coupon,
    pub valid_for_days: Option<i64>,
    pub created_at_ms: i64,
}

fn parse_time(field: &str, raw: &str, errs: &mut Errors) -> Option<OffsetDateTime> {
    match OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339) {
        Ok(t) if t.year() >= 2000 && t.year() <= 9999 => Some(t),
        _ => {
            errs.push(field, "must be an RFC 3339 time, e.g. 2026-11-11T00:00:00Z");
            None
        }
    }
}

impl CampaignSpec {
    /// Validates a create request; `generated_id` is used when it has none.
    pub fn parse(
        req: &CampaignDraft,
        generated_id: &str,
        now: OffsetDateTime,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errs = Errors::default();
        let id = match req.id.as_deref() {
            Some(raw) => match CampaignId::parse(raw) {
                Ok(id) => id.0,
                Err(m) => {
                    errs.push("id", m);
                    String::new()
                }
            },
            None => generated_id.to_owned(),
        };
        let name = match req.name.as_deref() {
            None => {
                errs.push("name", "is required");
                String::new()
            }
            Some(n) if n.trim().is_empty() || n.chars().count() > 200 => {
                errs.push("name", "must be 1 to 200 characters");
                String::new()
            }
            Some(n) if n.chars().any(char::is_control) => {
                errs.push("name", "must not contain control characters");
                String::new()
            }
            Some(n) => n.to_owned(),
        };
        let stock = match req.stock {
            None => {
                errs.push("stock", "is required");
                0
            }
            Some(s) if !(1..=MAX_SERIAL as i64).contains(&s) => {
                errs.push("stock", format!("must be between 1 and {MAX_SERIAL}"));
                0
            }
            Some(s) => s,
        };
        let starts = req
            .starts_at
            .as_deref()
            .map(|s| parse_time("starts_at", s, &mut errs));
        let ends = req
            .ends_at
            .as_deref()
            .map(|s| parse_time("ends_at", s, &mut errs));
        let starts_at_ms = match starts {
            Some(Some(t)) => to_ms(t),
            _ => to_ms(now),
        };
        let ends_at_ms = match ends {
            Some(Some(t)) => to_ms(t),
            _ => 0,
        };
        if ends_at_ms != 0 && ends_at_ms <= starts_at_ms {
            errs.push("ends_at", "must be after starts_at");
        }
        let limits = req.limits.unwrap_or_default();
        for (field, v) in [
            ("limits.per_phone", limits.per_phone),
            ("limits.per_device", limits.per_device),
            ("limits.per_ip", limits.per_ip),
        ] {
            if let Some(v) = v
                && !(1..=1_000_000).contains(&v)
            {
                errs.push(field, "must be between 1 and 1000000");
            }
        }
        let coupon = match &req.coupon {
            Some(c) => Coupon::parse(c, &mut errs),
            None => {
                errs.push("coupon", "is required");
                None
            }
        };
        if let Some(d) = req.valid_for_days
            && !(1..=MAX_VALID_DAYS).contains(&d)
        {
            errs.push(
                "valid_for_days",
                format!("must be between 1 and {MAX_VALID_DAYS}"),
            );
        }
        let spec = coupon.map(|coupon| CampaignSpec {
            id,
            name,
            stock,
            starts_at_ms,
            ends_at_ms,
            limits,
            coupon,
            valid_for_days: req.valid_for_days,
            created_at_ms: to_ms(now),
        });
        match (errs.0.is_empty(), spec) {
            (true, Some(spec)) => Ok(spec),
            _ => Err(errs.0),
        }
    }

    /// Milliseconds a claimed coupon stays valid; 0 for no expiry.
    pub fn valid_ms(&self) -> i64 {
        self.valid_for_days.map_or(0, |d| d * 86_400_000)
    }
}

/// A campaign's lifecycle state as `GET` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    PendingApproval,
    Scheduled,
    Active,
    Paused,
    Ended,
    SoldOut,
}

impl Status {
    /// The status shown for a stored lifecycle `state` at `now_ms`.
    pub fn derive(state: &str, spec: &CampaignSpec, issued: i64, now_ms: i64) -> Self {
        match state {
            "draft" => Status::Draft,
            "pending_approval" => Status::PendingApproval,
            "paused" => Status::Paused,
            "ended" => Status::Ended,
            _ if spec.ends_at_ms != 0 && now_ms >= spec.ends_at_ms => Status::Ended,
            _ if issued >= spec.stock => Status::SoldOut,
            _ if now_ms < spec.starts_at_ms => Status::Scheduled,
            _ => Status::Active,
        }
    }
}

/// Campaign numbers fit in a code; see [`crate::domain::code`].
pub fn campaign_no_in_range(no: i64) -> bool {
    (1..=i64::from(MAX_CAMPAIGN_NO)).contains(&no)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn req() -> CampaignDraft {
        CampaignDraft {
            name: Some("Double 11".into()),
            stock: Some(100),
            coupon: Some(CouponDraft {
                kind: Some("amount_off".into()),
                amount_off: Some(2000),
                min_order_amount: Some(20000),
                ..CouponDraft::default()
            }),
            ..CampaignDraft::default()
        }
    }

    #[test]
    fn a_minimal_campaign_is_valid_and_starts_now() {
        let now = datetime!(2026-11-11 00:00 UTC);
        let s = CampaignSpec::parse(&req(), "gen-1", now).unwrap();
        assert_eq!(s.id, "gen-1");
        assert_eq!(s.starts_at_ms, to_ms(now));
        assert_eq!(s.ends_at_ms, 0);
    }

    #[test]
    fn every_bad_field_is_named() {
        let r = CampaignDraft {
            id: Some("Bad Id".into()),
            stock: Some(-1),
            limits: Some(Limits {
                per_phone: Some(0),
                ..Limits::default()
            }),
            coupon: Some(CouponDraft {
                kind: Some("percent_off".into()),
                percent_off: Some(100),
                amount_off: Some(5),
                ..CouponDraft::default()
            }),
            valid_for_days: Some(0),
            starts_at: Some("yesterday".into()),
            ..CampaignDraft::default()
        };
        let errs = CampaignSpec::parse(&r, "x", datetime!(2026-11-11 00:00 UTC)).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "id",
            "name",
            "stock",
            "limits.per_phone",
            "coupon.percent_off",
            "coupon.amount_off",
            "valid_for_days",
            "starts_at",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn discounts() {
        let a = Coupon::AmountOff {
            amount_off: 2000,
            min_order_amount: Some(20000),
        };
        assert_eq!(a.discount(Some(25900)), Ok(2000));
        assert_eq!(a.discount(None), Err(Ineligible::AmountRequired));
        assert_eq!(
            a.discount(Some(100)),
            Err(Ineligible::BelowMinimum {
                amount: 100,
                min: 20000
            })
        );
        let small = Coupon::AmountOff {
            amount_off: 2000,
            min_order_amount: None,
        };
        assert_eq!(small.discount(Some(500)), Ok(500));
        let p = Coupon::PercentOff {
            percent_off: 15,
            max_discount: Some(1000),
            min_order_amount: None,
        };
        assert_eq!(p.discount(Some(5000)), Ok(750));
        assert_eq!(p.discount(Some(50000)), Ok(1000));
        let g = Coupon::Gift {
            gift_sku: "sku".into(),
            min_order_amount: None,
        };
        assert_eq!(g.discount(None), Ok(0));
    }

    #[test]
    fn status_follows_window_and_stock() {
        let mut s = CampaignSpec::parse(&req(), "c", datetime!(2026-11-11 00:00 UTC)).unwrap();
        s.ends_at_ms = s.starts_at_ms + 1000;
        assert_eq!(
            Status::derive("active", &s, 0, s.starts_at_ms - 1),
            Status::Scheduled
        );
        assert_eq!(
            Status::derive("active", &s, 0, s.starts_at_ms),
            Status::Active
        );
        assert_eq!(
            Status::derive("active", &s, 100, s.starts_at_ms),
            Status::SoldOut
        );
        assert_eq!(Status::derive("active", &s, 0, s.ends_at_ms), Status::Ended);
    }
}
