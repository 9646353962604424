//! Campaigns: a draft (the create request's fields, as the HTTP layer read
//! them), its validation into a [`CampaignSpec`], the coupon's terms and the
//! discount they give, and the status a campaign shows. Serde only: the wire
//! shapes and their OpenAPI schemas live in `http::wire`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::clock::to_ms;
use crate::domain::code::{MAX_CAMPAIGN_NO, MAX_SERIAL};
pub use crate::domain::coupon::{Coupon, CouponDraft, Ineligible};
use crate::domain::eligibility::Eligibility;
use crate::domain::error::{Errors, FieldError};
use crate::domain::webhook::{UrlPolicy, check_url};

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
    /// Start as a draft (edit, then `submit`).
    pub draft: Option<bool>,
    /// Another API key must approve before the campaign goes live.
    pub require_approval: Option<bool>,
    /// Only claims from these channels.
    pub channels: Option<Vec<String>>,
    /// Staged rollout: the share of phones (1..100) that may claim yet.
    pub rollout_percent: Option<i64>,
    /// A redemption must come with the claimer's phone.
    pub bind_to_claimer: Option<bool>,
    pub eligibility: Option<Eligibility>,
    pub alerts: Option<Alerts>,
    /// Split the stock over this many shards (1..=64; default 1), each with
    /// its own hash tag, so one campaign's claims spread over Redis Cluster
    /// masters (`docs/scaling.md`).
    pub stock_shards: Option<i64>,
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
    /// The API key that created it (four eyes: it may not approve).
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub require_approval: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// 1..100; 100 (everyone) by default.
    #[serde(default = "everyone")]
    pub rollout_percent: i64,
    #[serde(default)]
    pub bind_to_claimer: bool,
    #[serde(default, skip_serializing_if = "Eligibility::is_empty")]
    pub eligibility: Eligibility,
    #[serde(default, skip_serializing_if = "Alerts::is_empty")]
    pub alerts: Alerts,
    /// The lifecycle state it was created in (its first answer shows it).
    #[serde(default = "active")]
    pub initial_state: String,
    /// Stock shards (1: the campaign's keys only; fixed at create).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub stock_shards: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// The most stock shards a campaign can have.
pub const MAX_STOCK_SHARDS: i64 = 64;

fn active() -> String {
    "active".into()
}

fn everyone() -> i64 {
    100
}

/// Low-stock alert and where webhooks go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    /// `campaign.low_stock` fires once when remaining first falls to this
    /// share of the stock (1..99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_stock_percent: Option<i64>,
    /// Where `campaign.low_stock`, `campaign.sold_out` and `campaign.ended` go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

impl Alerts {
    pub fn is_empty(&self) -> bool {
        *self == Alerts::default()
    }

    fn validate(&self, policy: UrlPolicy, errs: &mut Errors) {
        if let Some(p) = self.low_stock_percent
            && !(1..=99).contains(&p)
        {
            errs.push("alerts.low_stock_percent", "must be between 1 and 99");
        }
        if let Some(u) = &self.webhook_url
            && let Err(m) = check_url(u, policy)
        {
            errs.push("alerts.webhook_url", m);
        }
    }
}

/// `PATCH /v1/campaigns/{id}`: what may change after creation.
#[derive(Debug, Clone, Default)]
pub struct CampaignPatch {
    pub name: Option<String>,
    /// Raise (or lower, never below what is issued) the stock.
    pub stock: Option<i64>,
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
    pub limits: Option<Limits>,
    pub alerts: Option<Alerts>,
    pub rollout_percent: Option<i64>,
}

fn check_name(n: &str) -> Result<(), &'static str> {
    if n.trim().is_empty() || n.chars().count() > 200 {
        Err("must be 1 to 200 characters")
    } else if n.chars().any(char::is_control) {
        Err("must not contain control characters")
    } else {
        Ok(())
    }
}

fn check_limits(limits: &Limits, errs: &mut Errors) {
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
        creator: &str,
        policy: UrlPolicy,
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
            Some(n) => match check_name(n) {
                Ok(()) => n.to_owned(),
                Err(m) => {
                    errs.push("name", m);
                    String::new()
                }
            },
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
        check_limits(&limits, &mut errs);
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
        let channels = req.channels.clone().unwrap_or_default();
        if channels.len() > 32
            || channels.iter().any(|c| {
                c.is_empty()
                    || c.len() > 32
                    || !c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    })
            })
        {
            errs.push("channels", "at most 32 channels, each [a-z0-9_-]{1,32}");
        }
        let rollout_percent = req.rollout_percent.unwrap_or(100);
        if !(1..=100).contains(&rollout_percent) {
            errs.push("rollout_percent", "must be between 1 and 100");
        }
        let eligibility = req.eligibility.clone().unwrap_or_default();
        eligibility.validate(&mut errs);
        let alerts = req.alerts.clone().unwrap_or_default();
        alerts.validate(policy, &mut errs);
        let stock_shards = req.stock_shards.unwrap_or(1);
        if !(1..=MAX_STOCK_SHARDS).contains(&stock_shards) {
            errs.push("stock_shards", "must be between 1 and 64");
        } else if let Some(m) = stock_over_serials(stock, stock_shards) {
            errs.push("stock", m);
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
            created_by: creator.to_owned(),
            require_approval: req.require_approval.unwrap_or(false),
            channels,
            rollout_percent,
            bind_to_claimer: req.bind_to_claimer.unwrap_or(false),
            eligibility,
            alerts,
            initial_state: crate::domain::lifecycle::State::initial(
                req.draft.unwrap_or(false),
                req.require_approval.unwrap_or(false),
            )
            .as_str()
            .to_owned(),
            stock_shards: stock_shards.clamp(1, MAX_STOCK_SHARDS) as u32,
        });
        match (errs.0.is_empty(), spec) {
            (true, Some(spec)) => Ok(spec),
            _ => Err(errs.0),
        }
    }

    /// This spec with `patch` applied, validated as a create would be.
    pub fn patched(
        &self,
        patch: &CampaignPatch,
        policy: UrlPolicy,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errs = Errors::default();
        let mut next = self.clone();
        if let Some(n) = &patch.name {
            match check_name(n) {
                Ok(()) => next.name = n.clone(),
                Err(m) => errs.push("name", m),
            }
        }
        if let Some(s) = patch.stock {
            if !(1..=MAX_SERIAL as i64).contains(&s) {
                errs.push("stock", format!("must be between 1 and {MAX_SERIAL}"));
            } else if let Some(m) = stock_over_serials(s, i64::from(self.stock_shards)) {
                errs.push("stock", m);
            } else {
                next.stock = s;
            }
        }
        if let Some(t) = &patch.starts_at
            && let Some(t) = parse_time("starts_at", t, &mut errs)
        {
            next.starts_at_ms = to_ms(t);
        }
        if let Some(t) = &patch.ends_at {
            // An empty string reopens the end.
            if t.is_empty() {
                next.ends_at_ms = 0;
            } else if let Some(t) = parse_time("ends_at", t, &mut errs) {
                next.ends_at_ms = to_ms(t);
            }
        }
        if next.ends_at_ms != 0 && next.ends_at_ms <= next.starts_at_ms {
            errs.push("ends_at", "must be after starts_at");
        }
        if let Some(l) = patch.limits {
            check_limits(&l, &mut errs);
            next.limits = l;
        }
        if let Some(a) = &patch.alerts {
            a.validate(policy, &mut errs);
            next.alerts = a.clone();
        }
        if let Some(r) = patch.rollout_percent {
            if (1..=100).contains(&r) {
                next.rollout_percent = r;
            } else {
                errs.push("rollout_percent", "must be between 1 and 100");
            }
        }
        errs.finish(next)
    }

    /// Remaining stock at or below which `campaign.low_stock` fires (-1: never).
    pub fn low_stock_at(&self) -> i64 {
        self.alerts
            .low_stock_percent
            .map_or(-1, |p| self.stock * p / 100)
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
#[path = "campaign_tests.rs"]
mod tests;

/// Why `stock` is too much for `shards` stock shards, if it is. A shard's
/// coupon carries the serial `local × shards + shard` (`store::shards`), and
/// all the stock can end up in one shard (refills, bulk codes), so
/// `stock × shards` serials must fit in a code's [`MAX_SERIAL`].
fn stock_over_serials(stock: i64, shards: i64) -> Option<String> {
    let most = MAX_SERIAL as i64 / shards.max(1);
    (shards > 1 && stock > most).then(|| {
        format!("at most {most} with {shards} stock shards (a code's serial carries its shard)")
    })
}
