//! `/v1/admin/limits` and `/v1/admin/bans`: the rules in force and bans.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::domain::clock::{from_ms, rfc3339};
use crate::domain::limits::{IdentityList, Rule};
use crate::guard::{Limits, Rejected};
use crate::store::rules::BanRecord;

/// A rule as loaded.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleView {
    #[schema(example = "ip-claim-burst")]
    pub name: String,
    /// `claim`, `redeem`, `validate` or `any`.
    pub endpoint: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    pub key: Vec<&'static str>,
    pub limit: u64,
    pub window_secs: u64,
    /// `requests`, `successes` or `failures`.
    pub count: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distinct: Option<&'static str>,
    /// `enforce` or `shadow`.
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ban: Option<BanPolicyView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BanPolicyView {
    pub after: u32,
    pub duration_secs: u64,
    pub factor: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_secs: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListView {
    pub phones: Vec<String>,
    pub ips: Vec<String>,
    pub devices: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShieldView {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RejectedView {
    pub at: String,
    /// File, line and reason.
    pub error: String,
}

/// `GET /v1/admin/limits`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitsView {
    /// First 16 hex digits of the SHA-256 of the file.
    pub version: String,
    pub loaded_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub rules: Vec<RuleView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shield: Option<ShieldView>,
    pub ipv6_prefix: u8,
    pub trusted_proxies: Vec<String>,
    pub block: ListView,
    pub allow: ListView,
    /// The last edit of the file that was refused (the rules above stayed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_rejected: Option<RejectedView>,
}

fn list(l: &IdentityList) -> ListView {
    ListView {
        phones: l.phone_patterns(),
        ips: l.ip_nets(),
        devices: l.device_patterns(),
    }
}

fn rule(r: &Rule) -> RuleView {
    RuleView {
        name: r.name.clone(),
        endpoint: r.endpoint.as_str(),
        campaign: r.campaign.as_ref().map(|g| g.as_str().to_owned()),
        key: r.key.iter().map(|k| k.as_str()).collect(),
        limit: r.limit,
        window_secs: r.window_ms / 1000,
        count: r.count.as_str(),
        distinct: r.distinct.map(|d| d.as_str()),
        mode: r.mode.as_str(),
        ban: r.ban.as_ref().map(|b| BanPolicyView {
            after: b.after,
            duration_secs: b.duration_ms / 1000,
            factor: b.factor,
            max_secs: b.max_ms.map(|m| m / 1000),
        }),
    }
}

impl LimitsView {
    pub fn new(
        l: &Limits,
        file: Option<&std::path::Path>,
        edge: &crate::guard::EdgeConfig,
        rejected: Option<Rejected>,
    ) -> Self {
        Self {
            version: l.set.version.clone(),
            loaded_at: rfc3339(from_ms(l.loaded_ms)),
            file: file.map(|f| f.display().to_string()),
            rules: l.set.rules.iter().map(rule).collect(),
            shield: l.shield.as_ref().map(|s| {
                let c = s.config();
                ShieldView {
                    per_second: c.per_second,
                    burst: c.burst,
                }
            }),
            ipv6_prefix: edge.ipv6_prefix,
            trusted_proxies: edge.trusted_proxies.iter().map(|n| n.to_string()).collect(),
            block: list(&l.set.block),
            allow: list(&l.set.allow),
            last_rejected: rejected.map(|r| RejectedView {
                at: rfc3339(from_ms(r.at_ms)),
                error: r.error,
            }),
        }
    }
}

/// `POST /v1/admin/bans`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BanRequest {
    /// `phone`, `device` or `ip`.
    #[schema(required = true, pattern = "^(phone|device|ip)$", example = "phone")]
    pub kind: Option<String>,
    /// The phone (any spelling: every spelling of the number is covered), device id or IP
    /// address (an IPv6 address bans its whole prefix, /64 by default).
    #[schema(
        required = true,
        example = "+8613800138000",
        min_length = 1,
        max_length = 128
    )]
    pub value: Option<String>,
    /// `s`, `m`, `h`, `d`, e.g. `24h`; default 24h, at most 365d.
    #[schema(example = "24h")]
    pub duration: Option<String>,
    /// Why, for the audit log (at most 500 characters).
    #[schema(example = "device farm", max_length = 500)]
    pub reason: Option<String>,
}

/// A running ban. `subject` is `<kind>:<pseudonym>`: the clear value is never stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct BanView {
    pub kind: String,
    pub subject: String,
    pub started_at: String,
    pub until: String,
    /// `admin` or `rule:<name>`.
    pub source: String,
    pub by: String,
    pub reason: String,
    /// Place in a rule's escalation (0 for admin bans).
    pub level: u32,
}

impl BanView {
    pub fn new(subject: &str, rec: &BanRecord) -> Self {
        Self {
            kind: subject.split(':').next().unwrap_or("").to_owned(),
            subject: subject.to_owned(),
            started_at: rfc3339(from_ms(rec.started_ms)),
            until: rfc3339(from_ms(rec.until_ms)),
            source: rec.source.clone(),
            by: rec.by.clone(),
            reason: rec.reason.clone(),
            level: rec.level,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BanList {
    pub bans: Vec<BanView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Unbanned {
    pub kind: String,
    pub subject: String,
    /// False when no ban was running.
    pub removed: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct BanQuery {
    /// `phone`, `device` or `ip`.
    pub kind: Option<String>,
    /// With `kind`: only this identity's ban.
    pub value: Option<String>,
}
