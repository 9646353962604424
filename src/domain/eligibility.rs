//! Who may use a coupon, judged on redeem and validate against the facts of
//! the order (`items`, `customer`): new customers only, some SKUs, some
//! categories, some member tiers. A failure names the unmet condition.
//!
//! When a campaign is limited to SKUs or categories and the order's items
//! carry amounts, the discount is computed on the eligible items only (a
//! "20 % off milk" coupon does not discount the bread in the same basket).

use serde::{Deserialize, Serialize};

use crate::domain::error::{Errors, is_visible_ascii};

/// Largest number of entries in one eligibility list.
pub const MAX_LIST: usize = 1000;

/// The campaign's conditions (each empty or false: no condition).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eligibility {
    #[serde(default, skip_serializing_if = "is_false")]
    pub new_customers_only: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skus: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_tiers: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !b
}

/// One line of an order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderItem {
    pub sku: String,
    pub category: Option<String>,
    /// Minor units, for the whole line.
    pub amount: Option<i64>,
}

/// The customer placing the order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Customer {
    pub is_new: Option<bool>,
    pub tier: Option<String>,
}

/// What the order says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFacts {
    pub items: Vec<OrderItem>,
    pub customer: Option<Customer>,
}

/// The condition an order does not meet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unmet {
    #[error(
        "new_customers_only: the coupon is for new customers only (customer.is_new must be true)"
    )]
    NewCustomersOnly,
    #[error("skus: no item of the order has one of the coupon's SKUs")]
    Skus,
    #[error("categories: no item of the order is in one of the coupon's categories")]
    Categories,
    #[error("member_tiers: the customer's tier is not one the coupon is for")]
    MemberTiers,
}

impl Eligibility {
    pub fn is_empty(&self) -> bool {
        *self == Eligibility::default()
    }

    /// Validates the lists of a create request.
    pub fn validate(&self, errs: &mut Errors) {
        for (field, list) in [
            ("eligibility.skus", &self.skus),
            ("eligibility.categories", &self.categories),
            ("eligibility.member_tiers", &self.member_tiers),
        ] {
            if list.len() > MAX_LIST {
                errs.push(field, format!("at most {MAX_LIST} entries"));
            }
            if list
                .iter()
                .any(|v| v.is_empty() || v.len() > 128 || !is_visible_ascii(v))
            {
                errs.push(field, "each entry is 1 to 128 visible ASCII characters");
            }
        }
    }

    fn item_matches(&self, item: &OrderItem) -> bool {
        (self.skus.is_empty() || self.skus.contains(&item.sku))
            && (self.categories.is_empty()
                || item
                    .category
                    .as_ref()
                    .is_some_and(|c| self.categories.contains(c)))
    }

    /// Checks the order against every condition, in a fixed order.
    pub fn check(&self, order: &OrderFacts) -> Result<(), Unmet> {
        if self.new_customers_only && order.customer.as_ref().and_then(|c| c.is_new) != Some(true) {
            return Err(Unmet::NewCustomersOnly);
        }
        if !self.skus.is_empty() && !order.items.iter().any(|i| self.skus.contains(&i.sku)) {
            return Err(Unmet::Skus);
        }
        if !self.categories.is_empty()
            && !order.items.iter().any(|i| {
                i.category
                    .as_ref()
                    .is_some_and(|c| self.categories.contains(c))
            })
        {
            return Err(Unmet::Categories);
        }
        if !self.member_tiers.is_empty()
            && !order
                .customer
                .as_ref()
                .and_then(|c| c.tier.as_ref())
                .is_some_and(|t| self.member_tiers.contains(t))
        {
            return Err(Unmet::MemberTiers);
        }
        Ok(())
    }

    /// The amount the discount is computed on: the eligible items' total when
    /// the coupon is limited to SKUs or categories and every eligible item
    /// has an amount; else the order amount.
    pub fn discount_base(&self, order: &OrderFacts, order_amount: Option<i64>) -> Option<i64> {
        if self.skus.is_empty() && self.categories.is_empty() {
            return order_amount;
        }
        let eligible: Vec<&OrderItem> = order
            .items
            .iter()
            .filter(|i| self.item_matches(i))
            .collect();
        if eligible.is_empty() || eligible.iter().any(|i| i.amount.is_none()) {
            return order_amount;
        }
        let sum: i64 = eligible.iter().filter_map(|i| i.amount).sum();
        Some(order_amount.map_or(sum, |a| sum.min(a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str, cat: &str, amount: i64) -> OrderItem {
        OrderItem {
            sku: sku.into(),
            category: Some(cat.into()),
            amount: Some(amount),
        }
    }

    #[test]
    fn each_condition_is_named_when_unmet() {
        let e = Eligibility {
            new_customers_only: true,
            skus: vec!["sku-1".into()],
            categories: vec!["milk".into()],
            member_tiers: vec!["gold".into()],
        };
        let mut o = OrderFacts::default();
        assert_eq!(e.check(&o), Err(Unmet::NewCustomersOnly));
        o.customer = Some(Customer {
            is_new: Some(true),
            tier: Some("silver".into()),
        });
        assert_eq!(e.check(&o), Err(Unmet::Skus));
        o.items = vec![item("sku-1", "bread", 100)];
        assert_eq!(e.check(&o), Err(Unmet::Categories));
        o.items.push(item("sku-9", "milk", 100));
        assert_eq!(e.check(&o), Err(Unmet::MemberTiers));
        o.customer.as_mut().unwrap().tier = Some("gold".into());
        assert_eq!(e.check(&o), Ok(()));
        assert!(Unmet::Skus.to_string().starts_with("skus:"));
    }

    #[test]
    fn the_discount_base_is_the_eligible_items() {
        let e = Eligibility {
            skus: vec!["milk-1".into(), "milk-2".into()],
            ..Eligibility::default()
        };
        let o = OrderFacts {
            items: vec![item("milk-1", "milk", 1200), item("bread", "bakery", 800)],
            customer: None,
        };
        assert_eq!(e.discount_base(&o, Some(2000)), Some(1200));
        assert_eq!(
            Eligibility::default().discount_base(&o, Some(2000)),
            Some(2000)
        );
    }
}
