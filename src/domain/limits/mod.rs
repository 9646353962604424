//! The anti-abuse rules file (`STAMPEDE_LIMITS_FILE`, contract in
//! `LIMITS.md`): the security team's rates, distinct counts, bans and
//! block/allow lists, parsed from TOML into typed, compiled values.
//!
//! This is the pure model only. The caller reads the file and hands over its
//! text; [`RuleSet::parse`] either returns a fully checked rule set or one
//! [`LimitsError`] with the line, column and a short reason, so that a bad
//! edit can be rejected whole while the last good rules stay in force, and
//! `stampede check-config` can point at the offending line.
//!
//! Everything a request path asks (does this rule look at this request, is
//! this phone or address on a list, how long is the next ban) is answered here
//! without I/O, so the answers are unit- and property-tested in-process.
//!
//! Layout: the model types live here; [`IdentityList`] (block/allow lists and
//! their lookups) in `lists`; the raw TOML shape in `raw`; validation of the
//! raw shape into the model, with line/column positions, in `parse`; the
//! syntax of single values (durations, names, nets, phone patterns) in
//! `values`.

mod lists;
mod parse;
mod raw;
mod values;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod check_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod model_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod parse_tests;
#[cfg(test)]
mod test_support;

use globset::{Glob, GlobMatcher};
use ipnet::IpNet;

pub use lists::IdentityList;

/// The largest rules file accepted. A real one is a few kilobytes; the cap
/// keeps a runaway file (or a wrong path pointing at a log) from being parsed.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// Names of the built-in limits (the shield and the campaign quotas). A rule
/// may not take one: clients, metrics and the audit log tell limits apart by
/// name alone.
pub const RESERVED_RULE_NAMES: [&str; 4] = ["shield", "per_phone", "per_device", "per_ip"];

const SECOND_MS: u64 = 1_000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;
/// Sliding windows live in Redis for their whole length; a month is already
/// far beyond any rate a flash sale needs.
const MAX_WINDOW_MS: u64 = 30 * DAY_MS;
/// A ban longer than a year is a mistake in the file (a missing unit, an
/// extra digit) rather than a decision; manual bans are the tool for that.
const MAX_BAN_MS: u64 = 365 * DAY_MS;
const MAX_RULE_NAME_LEN: usize = 64;
/// Generous: a glob may be longer than the ids it matches (`{a,b,c}`).
const MAX_CAMPAIGN_GLOB_LEN: usize = 256;
const MAX_E164_DIGITS: usize = 15;

// ---------------------------------------------------------------------------
// Small enums
// ---------------------------------------------------------------------------

/// The endpoint a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Claim,
    Redeem,
    Validate,
    /// Every endpoint (the default).
    Any,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Claim => "claim",
            Self::Redeem => "redeem",
            Self::Validate => "validate",
            Self::Any => "any",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "claim" => Some(Self::Claim),
            "redeem" => Some(Self::Redeem),
            "validate" => Some(Self::Validate),
            "any" => Some(Self::Any),
            _ => None,
        }
    }
}

/// One part of a rule's counting key; several parts make one composite key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyPart {
    Ip,
    Phone,
    Device,
    User,
    Campaign,
}

impl KeyPart {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Phone => "phone",
            Self::Device => "device",
            Self::User => "user",
            Self::Campaign => "campaign",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ip" => Some(Self::Ip),
            "phone" => Some(Self::Phone),
            "device" => Some(Self::Device),
            "user" => Some(Self::User),
            "campaign" => Some(Self::Campaign),
            _ => None,
        }
    }

    /// The identity a ban on this part freezes; `user` and `campaign` are not
    /// bannable (a user id is the caller's, a campaign is not an abuser).
    pub fn ban_kind(self) -> Option<BanKind> {
        match self {
            Self::Ip => Some(BanKind::Ip),
            Self::Phone => Some(BanKind::Phone),
            Self::Device => Some(BanKind::Device),
            Self::User | Self::Campaign => None,
        }
    }
}

/// Which answers a rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Every request (the default).
    Requests,
    /// Only successful answers.
    Successes,
    /// Only refused answers (e.g. `invalid_code`, `already_redeemed`).
    Failures,
}

impl Count {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Successes => "successes",
            Self::Failures => "failures",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "requests" => Some(Self::Requests),
            "successes" => Some(Self::Successes),
            "failures" => Some(Self::Failures),
            _ => None,
        }
    }
}

/// Whether a rule blocks or only reports what it would have blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Over the limit means 429 (the default).
    Enforce,
    /// Never blocks; counts what it would have blocked, to try a rule safely.
    Shadow,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Shadow => "shadow",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "enforce" => Some(Self::Enforce),
            "shadow" => Some(Self::Shadow),
            _ => None,
        }
    }
}

/// The kinds of identity that can be banned (by a rule or by hand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanKind {
    Phone,
    Device,
    Ip,
}

impl BanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Phone => "phone",
            Self::Device => "device",
            Self::Ip => "ip",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "phone" => Some(Self::Phone),
            "device" => Some(Self::Device),
            "ip" => Some(Self::Ip),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------

/// What happens after repeated violations of a rule: the offending identities
/// are frozen, each new ban longer than the last.
#[derive(Debug, Clone, PartialEq)]
pub struct BanPolicy {
    /// Violations (windows over the limit) before the first ban; at least 1.
    pub after: u32,
    /// Length of the first ban.
    pub duration_ms: u64,
    /// Each further ban is this many times longer than the previous; at least 1.
    pub factor: u32,
    /// Cap on the length of any ban; at least `duration_ms` when set.
    pub max_ms: Option<u64>,
}

impl BanPolicy {
    /// Length of the ban at `level` (1 = first ban):
    /// `duration * factor^(level-1)`, saturating, capped by `max_ms`.
    /// Level 0 is treated as 1.
    pub fn duration_for(&self, level: u32) -> u64 {
        let exponent = level.saturating_sub(1);
        let multiplier = u64::from(self.factor).saturating_pow(exponent);
        let ms = self.duration_ms.saturating_mul(multiplier);
        match self.max_ms {
            Some(max) => ms.min(max),
            None => ms,
        }
    }
}

/// A compiled glob on campaign ids, e.g. `double11-*`.
#[derive(Debug, Clone)]
pub struct CampaignGlob {
    source: String,
    matcher: GlobMatcher,
}

impl CampaignGlob {
    /// Compiles a campaign glob. Campaign ids are `[a-z0-9_-]{1,64}`, so a
    /// pattern with any other literal character (an upper-case letter, a dot)
    /// could never match; it is refused rather than silently inert.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("campaign glob is empty".to_owned());
        }
        if pattern.len() > MAX_CAMPAIGN_GLOB_LEN {
            return Err(format!(
                "campaign glob is longer than {MAX_CAMPAIGN_GLOB_LEN} characters"
            ));
        }
        let allowed = |c: char| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(
                    c,
                    '_' | '-' | '*' | '?' | '[' | ']' | '{' | '}' | ',' | '!' | '^'
                )
        };
        if let Some(c) = pattern.chars().find(|&c| !allowed(c)) {
            return Err(format!(
                "campaign glob `{pattern}` can never match: campaign ids are lower-case letters, \
                 digits, `_` and `-`, not `{c}`"
            ));
        }
        let glob = Glob::new(pattern).map_err(|e| {
            format!(
                "campaign glob `{pattern}` is not a valid glob: {}",
                e.kind()
            )
        })?;
        Ok(Self {
            source: pattern.to_owned(),
            matcher: glob.compile_matcher(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, campaign_id: &str) -> bool {
        self.matcher.is_match(campaign_id)
    }
}

/// One `[[rule]]`: a limit on how often (or for how many distinct values) a
/// key may be seen in a sliding window.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub endpoint: Endpoint,
    /// `None`: every campaign, and requests whose campaign is unknown.
    pub campaign: Option<CampaignGlob>,
    /// Non-empty, no duplicates.
    pub key: Vec<KeyPart>,
    /// At least 1.
    pub limit: u64,
    /// Greater than zero, at most 30 days.
    pub window_ms: u64,
    pub count: Count,
    /// Count distinct values of this part per key instead of requests; never
    /// `campaign`, never one of the key's parts, only with `Count::Requests`.
    pub distinct: Option<KeyPart>,
    pub mode: Mode,
    /// Only on enforcing rules whose key has an ip, phone or device part.
    pub ban: Option<BanPolicy>,
    /// 1-based line of the rule in the file (its `[[rule]]` header).
    pub line: usize,
}

impl Rule {
    /// Whether this rule looks at a request to `endpoint` of campaign
    /// `campaign` (None: unknown campaign, e.g. a forged code: then only rules
    /// without a campaign glob apply).
    pub fn applies(&self, endpoint: Endpoint, campaign: Option<&str>) -> bool {
        let endpoint_ok = self.endpoint == Endpoint::Any || self.endpoint == endpoint;
        let campaign_ok = match (&self.campaign, campaign) {
            (None, _) => true,
            (Some(glob), Some(id)) => glob.is_match(id),
            // A glob is a promise about which campaigns are meant; a request we
            // cannot tie to a campaign must not be caught by a narrow rule.
            (Some(_), None) => false,
        };
        endpoint_ok && campaign_ok
    }

    /// The identities a ban from this rule freezes: the key's ip/phone/device
    /// parts, in key order.
    pub fn ban_kinds(&self) -> Vec<BanKind> {
        self.key.iter().filter_map(|part| part.ban_kind()).collect()
    }
}

/// The in-process per-IP limiter in front of everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shield {
    /// Sustained requests per second per client IP (IPv6: per prefix); > 0.
    pub per_second: u32,
    /// Bucket size; > 0.
    pub burst: u32,
}

/// `[defaults]`: settings the rules file may override for the service.
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// IPv6 clients are counted per prefix of this length (32..=128).
    pub ipv6_prefix: Option<u8>,
    /// `X-Forwarded-For` is believed only from these.
    pub trusted_proxies: Option<Vec<IpNet>>,
}

// ---------------------------------------------------------------------------
// The rule set
// ---------------------------------------------------------------------------

/// A whole, validated rules file.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub defaults: Defaults,
    /// `None`: the shield is off.
    pub shield: Option<Shield>,
    /// In file order; names are unique.
    pub rules: Vec<Rule>,
    pub block: IdentityList,
    pub allow: IdentityList,
    /// first 16 hex chars of SHA-256 of the file's bytes
    pub version: String,
}

impl RuleSet {
    /// Parses and validates a rules file. Any problem rejects the whole file;
    /// when there are several, the one nearest the top is reported.
    pub fn parse(text: &str) -> Result<RuleSet, LimitsError> {
        if text.len() > MAX_FILE_BYTES {
            return Err(LimitsError::new(
                None,
                None,
                "the file is larger than 1 MiB",
            ));
        }
        parse::rule_set(text)
    }

    /// The rule called `name`, if any.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }
}

/// True when a TOML text is a rules file rather than a service config: it has
/// any of the top-level tables `rule`, `shield`, `block`, `allow`, `defaults`
/// (recognised by its tables). Unparsable text: false.
pub fn is_rules_file(text: &str) -> bool {
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return false;
    };
    table.iter().any(|(key, value)| match key.as_str() {
        "rule" => value
            .as_array()
            .is_some_and(|a| a.iter().all(toml::Value::is_table)),
        "shield" | "block" | "allow" | "defaults" => value.is_table(),
        _ => false,
    })
}

/// Why a rules file was rejected, with the position of the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct LimitsError {
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    pub message: String,
}

impl LimitsError {
    fn new(line: Option<usize>, column: Option<usize>, message: impl Into<String>) -> Self {
        Self {
            line,
            column,
            message: message.into(),
        }
    }

    /// "line 12, column 9: limit must be at least 1" or just the message when
    /// no position.
    pub fn render(&self) -> String {
        match (self.line, self.column) {
            (Some(line), Some(column)) => format!("line {line}, column {column}: {}", self.message),
            (Some(line), None) => format!("line {line}: {}", self.message),
            _ => self.message.clone(),
        }
    }
}
