//! A coupon's terms: the draft the create request gives, its validation, and
//! the discount an order gets.

use serde::{Deserialize, Serialize};

use crate::domain::campaign::MAX_MONEY;
use crate::domain::error::{Errors, is_visible_ascii};

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

    pub(crate) fn parse(req: &CouponDraft, errs: &mut Errors) -> Option<Self> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
