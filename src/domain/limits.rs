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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::ops::Range;

use globset::{Glob, GlobMatcher, GlobSet, GlobSetBuilder};
use ipnet::IpNet;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

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
// Block / allow lists
// ---------------------------------------------------------------------------

/// A `[block]` or `[allow]` list of phones, addresses and devices.
///
/// Lookups are hash-based (one probe per prefix length) rather than a scan,
/// because a list may hold tens of thousands of entries and is consulted on
/// every claim.
#[derive(Debug, Clone, Default)]
pub struct IdentityList {
    /// Source text of the phone patterns, in file order (for display).
    phone_patterns: Vec<String>,
    exact_phones: HashSet<String>,
    /// Phone prefixes without their trailing `*`.
    phone_prefixes: HashSet<String>,
    /// Nets as written (host bits kept), in file order (for display).
    ip_nets: Vec<IpNet>,
    /// Truncated nets, looked up by truncating the address to each length.
    net_set: HashSet<IpNet>,
    v4_prefix_lens: BTreeSet<u8>,
    v6_prefix_lens: BTreeSet<u8>,
    device_patterns: Vec<String>,
    device_globs: GlobSet,
}

impl IdentityList {
    pub fn is_empty(&self) -> bool {
        self.phone_patterns.is_empty() && self.ip_nets.is_empty() && self.device_patterns.is_empty()
    }

    /// Whether an E.164 number (`+8617012345678`) is on the list, exactly or
    /// by one of its prefix patterns (`+86170*`).
    pub fn has_phone(&self, e164: &str) -> bool {
        if self.exact_phones.contains(e164) {
            return true;
        }
        if self.phone_prefixes.is_empty() {
            return false;
        }
        // Every prefix of the number, shortest first; at most 16 probes.
        e164.char_indices()
            .map(|(i, c)| &e164[..i + c.len_utf8()])
            .any(|prefix| self.phone_prefixes.contains(prefix))
    }

    /// Whether an address is in one of the list's nets. An IPv4-mapped IPv6
    /// address (`::ffff:203.0.113.7`, as a dual-stack socket reports IPv4
    /// peers) matches the IPv4 nets too.
    pub fn has_ip(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.in_nets(ip) || (canonical != ip && self.in_nets(canonical))
    }

    fn in_nets(&self, ip: IpAddr) -> bool {
        let lens = match ip {
            IpAddr::V4(_) => &self.v4_prefix_lens,
            IpAddr::V6(_) => &self.v6_prefix_lens,
        };
        lens.iter().any(|&len| {
            IpNet::new(ip, len)
                .map(|net| self.net_set.contains(&net.trunc()))
                .unwrap_or(false)
        })
    }

    /// Whether a device id matches one of the list's globs (case-sensitive).
    pub fn has_device(&self, device_id: &str) -> bool {
        self.device_globs.is_match(device_id)
    }

    pub fn phone_patterns(&self) -> Vec<String> {
        self.phone_patterns.clone()
    }

    pub fn ip_nets(&self) -> Vec<String> {
        self.ip_nets.iter().map(ToString::to_string).collect()
    }

    pub fn device_patterns(&self) -> Vec<String> {
        self.device_patterns.clone()
    }
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
        let raw: RawFile = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let cx = Cx {
            text,
            errors: Vec::new(),
        };
        cx.build(raw)
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

// ---------------------------------------------------------------------------
// Raw shape of the file
// ---------------------------------------------------------------------------
//
// Every value that is checked after deserializing keeps its span, so an error
// points at the value rather than at the table. Words (endpoint, count, ...)
// are read as strings and parsed here, for messages that name the choices.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a rules file")]
struct RawFile {
    defaults: Option<RawDefaults>,
    shield: Option<RawShield>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    block: Option<RawList>,
    allow: Option<RawList>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [defaults] table")]
struct RawDefaults {
    ipv6_prefix: Option<Spanned<Int>>,
    trusted_proxies: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [shield] table")]
struct RawShield {
    per_second: Option<Spanned<Int>>,
    burst: Option<Spanned<Int>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[rule]] table")]
struct RawRule {
    name: Spanned<String>,
    endpoint: Option<Spanned<String>>,
    campaign: Option<Spanned<String>>,
    key: Spanned<Vec<Spanned<String>>>,
    limit: Spanned<Int>,
    window: Spanned<String>,
    count: Option<Spanned<String>>,
    distinct: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    ban: Option<Spanned<RawBan>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a ban table, e.g. { duration = \"1h\" }"
)]
struct RawBan {
    after: Option<Spanned<Int>>,
    duration: Spanned<String>,
    factor: Option<Spanned<Int>>,
    max: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of phones, ips and devices")]
struct RawList {
    #[serde(default)]
    phones: Vec<Spanned<String>>,
    #[serde(default)]
    ips: Vec<Spanned<String>>,
    #[serde(default)]
    devices: Vec<Spanned<String>>,
}

/// An integer read for checking. Its own visitor, so that a wrong type reads
/// "expected an integer" rather than serde's "expected i64".
struct Int(i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;

        impl serde::de::Visitor<'_> for IntVisitor {
            type Value = Int;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
        }

        deserializer.deserialize_i64(IntVisitor)
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// 1-based line and column (in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn toml_error(text: &str, e: &toml::de::Error) -> LimitsError {
    let (line, column) = match e.span() {
        Some(span) => {
            let (l, c) = position(text, span.start);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    // `message()` is the reason alone; Display would add a source snippet.
    let message = e.message().trim().replace('\n', " ");
    LimitsError::new(line, column, message)
}

/// Collects every error so the one nearest the top of the file is reported,
/// whichever section it is in.
struct Cx<'a> {
    text: &'a str,
    errors: Vec<LimitsError>,
}

impl Cx<'_> {
    fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> LimitsError {
        let (line, column) = position(self.text, span.start);
        LimitsError::new(Some(line), Some(column), message)
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        position(self.text, span.start).0
    }

    /// Keeps the value, or records the error (at `span`) and gives `None`.
    fn check<T>(&mut self, span: Range<usize>, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(message) => {
                self.fail(span, message);
                None
            }
        }
    }

    fn fail(&mut self, span: Range<usize>, message: impl Into<String>) {
        let e = self.error_at(span, message);
        self.errors.push(e);
    }

    fn build(mut self, raw: RawFile) -> Result<RuleSet, LimitsError> {
        let defaults = raw.defaults.map(|d| self.defaults(d)).unwrap_or_default();
        let shield = raw.shield.and_then(|s| self.shield(s));
        let mut rules: Vec<Rule> = Vec::with_capacity(raw.rule.len());
        let mut first_seen: HashMap<String, usize> = HashMap::new();
        for raw_rule in raw.rule {
            let name = raw_rule.get_ref().name.clone();
            let name_line = self.line_of(&name.span());
            match first_seen.get(name.get_ref()) {
                Some(&first) => self.fail(
                    name.span(),
                    format!(
                        "rule name `{}` is used twice (first at line {first})",
                        name.get_ref()
                    ),
                ),
                None => {
                    first_seen.insert(name.get_ref().clone(), name_line);
                }
            }
            if let Some(rule) = self.rule(raw_rule) {
                rules.push(rule);
            }
        }
        let block = raw.block.map(|l| self.list(l)).unwrap_or_default();
        let allow = raw.allow.map(|l| self.list(l)).unwrap_or_default();

        if let Some(first) = self
            .errors
            .into_iter()
            .min_by_key(|e| (e.line.unwrap_or(usize::MAX), e.column.unwrap_or(0)))
        {
            return Err(first);
        }
        Ok(RuleSet {
            defaults,
            shield,
            rules,
            block,
            allow,
            version: version_of(self.text),
        })
    }

    fn defaults(&mut self, raw: RawDefaults) -> Defaults {
        let ipv6_prefix = raw.ipv6_prefix.and_then(|p| {
            let v = p.get_ref().0;
            let ok = u8::try_from(v)
                .ok()
                .filter(|v| (32..=128).contains(v))
                .ok_or_else(|| "ipv6_prefix must be between 32 and 128".to_owned());
            self.check(p.span(), ok)
        });
        let trusted_proxies = raw.trusted_proxies.map(|nets| {
            nets.into_iter()
                .filter_map(|n| self.check(n.span(), parse_net(n.get_ref())))
                .collect()
        });
        Defaults {
            ipv6_prefix,
            trusted_proxies,
        }
    }

    fn shield(&mut self, raw: RawShield) -> Option<Shield> {
        let per_second = raw
            .per_second
            .as_ref()
            .and_then(|v| self.check(v.span(), shield_number("per_second", v.get_ref().0)));
        let burst = raw
            .burst
            .as_ref()
            .and_then(|v| self.check(v.span(), shield_number("burst", v.get_ref().0)));
        match (&raw.per_second, &raw.burst) {
            (None, Some(b)) if burst.is_some_and(|b| b > 0) => {
                self.fail(b.span(), "[shield] has a burst but no per_second");
                None
            }
            (Some(p), None) if per_second.is_some_and(|p| p > 0) => {
                // Half a shield is a typo, not a choice: burst = 0 is the way
                // to turn it off.
                self.fail(
                    p.span(),
                    "[shield] has a per_second but no burst (burst = 0 turns the shield off)",
                );
                None
            }
            _ => match (per_second, burst) {
                (Some(per_second), Some(burst)) if per_second > 0 && burst > 0 => {
                    Some(Shield { per_second, burst })
                }
                _ => None,
            },
        }
    }

    fn rule(&mut self, raw: Spanned<RawRule>) -> Option<Rule> {
        let line = self.line_of(&raw.span());
        let raw = raw.into_inner();
        let errors_before = self.errors.len();

        let name = self.check(raw.name.span(), check_rule_name(raw.name.get_ref()));
        let endpoint = match &raw.endpoint {
            None => Some(Endpoint::Any),
            Some(e) => self.check(
                e.span(),
                Endpoint::parse(e.get_ref()).ok_or_else(|| {
                    format!(
                        "endpoint is one of claim, redeem, validate or any, not `{}`",
                        e.get_ref()
                    )
                }),
            ),
        };
        let campaign = match &raw.campaign {
            None => Some(None),
            Some(c) => self
                .check(c.span(), CampaignGlob::new(c.get_ref()))
                .map(Some),
        };
        let key = self.key(&raw.key);
        let limit = self.check(
            raw.limit.span(),
            u64::try_from(raw.limit.get_ref().0)
                .ok()
                .filter(|&l| l >= 1)
                .ok_or_else(|| "limit must be at least 1".to_owned()),
        );
        let window_ms = self.check(
            raw.window.span(),
            parse_duration_ms(raw.window.get_ref(), "window", MAX_WINDOW_MS),
        );
        let count = match &raw.count {
            None => Some(Count::Requests),
            Some(c) => self.check(
                c.span(),
                Count::parse(c.get_ref()).ok_or_else(|| {
                    format!(
                        "count is one of requests, successes or failures, not `{}`",
                        c.get_ref()
                    )
                }),
            ),
        };
        let distinct = match &raw.distinct {
            None => Some(None),
            Some(d) => self
                .check(
                    d.span(),
                    KeyPart::parse(d.get_ref())
                        .filter(|p| *p != KeyPart::Campaign)
                        .ok_or_else(|| {
                            format!(
                                "distinct is one of ip, phone, device or user, not `{}`",
                                d.get_ref()
                            )
                        }),
                )
                .map(Some),
        };
        let mode = match &raw.mode {
            None => Some(Mode::Enforce),
            Some(m) => self.check(
                m.span(),
                Mode::parse(m.get_ref())
                    .ok_or_else(|| format!("mode is enforce or shadow, not `{}`", m.get_ref())),
            ),
        };
        let ban = match &raw.ban {
            None => Some(None),
            Some(b) => self.ban(b.get_ref()).map(Some),
        };

        // Checks across fields, once each field is known to be well-formed.
        if let (Some(d), Some(Some(part)), Some(key), Some(count)) =
            (&raw.distinct, distinct, &key, count)
        {
            if key.contains(&part) {
                self.fail(
                    d.span(),
                    format!(
                        "distinct `{}` is part of the key, so it would always count 1",
                        part.as_str()
                    ),
                );
            }
            if count != Count::Requests {
                self.fail(
                    d.span(),
                    format!(
                        "distinct counts requests only, not {} (remove count or set count = \"requests\")",
                        count.as_str()
                    ),
                );
            }
        }
        if let (Some(b), Some(Some(_)), Some(key), Some(mode)) = (&raw.ban, &ban, &key, mode) {
            if mode == Mode::Shadow {
                self.fail(
                    b.span(),
                    "a shadow rule never bans (remove ban or the shadow mode)",
                );
            }
            if !key.iter().any(|p| p.ban_kind().is_some()) {
                self.fail(b.span(), "ban needs ip, phone or device in the key");
            }
        }

        if self.errors.len() != errors_before {
            return None;
        }
        Some(Rule {
            name: name?,
            endpoint: endpoint?,
            campaign: campaign?,
            key: key?,
            limit: limit?,
            window_ms: window_ms?,
            count: count?,
            distinct: distinct?,
            mode: mode?,
            ban: ban?,
            line,
        })
    }

    fn key(&mut self, raw: &Spanned<Vec<Spanned<String>>>) -> Option<Vec<KeyPart>> {
        if raw.get_ref().is_empty() {
            self.fail(
                raw.span(),
                "key needs at least one of ip, phone, device, user or campaign",
            );
            return None;
        }
        let mut parts = Vec::with_capacity(raw.get_ref().len());
        let mut ok = true;
        for item in raw.get_ref() {
            match KeyPart::parse(item.get_ref()) {
                None => {
                    self.fail(
                        item.span(),
                        format!(
                            "`{}` is not a key part: use ip, phone, device, user or campaign",
                            item.get_ref()
                        ),
                    );
                    ok = false;
                }
                Some(part) if parts.contains(&part) => {
                    self.fail(
                        item.span(),
                        format!("`{}` is in the key twice", part.as_str()),
                    );
                    ok = false;
                }
                Some(part) => parts.push(part),
            }
        }
        ok.then_some(parts)
    }

    fn ban(&mut self, raw: &RawBan) -> Option<BanPolicy> {
        let errors_before = self.errors.len();
        let after = match &raw.after {
            None => Some(1),
            Some(a) => self.check(a.span(), at_least_one_u32("ban after", a.get_ref().0)),
        };
        let factor = match &raw.factor {
            None => Some(1),
            Some(f) => self.check(f.span(), at_least_one_u32("ban factor", f.get_ref().0)),
        };
        let duration_ms = self.check(
            raw.duration.span(),
            parse_duration_ms(raw.duration.get_ref(), "ban duration", MAX_BAN_MS),
        );
        let max_ms = match &raw.max {
            None => Some(None),
            Some(m) => self
                .check(
                    m.span(),
                    parse_duration_ms(m.get_ref(), "ban max", MAX_BAN_MS),
                )
                .map(Some),
        };
        if let (Some(m), Some(Some(max)), Some(duration)) = (&raw.max, max_ms, duration_ms)
            && max < duration
        {
            self.fail(m.span(), "ban max must be at least the ban duration");
        }
        if self.errors.len() != errors_before {
            return None;
        }
        Some(BanPolicy {
            after: after?,
            duration_ms: duration_ms?,
            factor: factor?,
            max_ms: max_ms?,
        })
    }

    fn list(&mut self, raw: RawList) -> IdentityList {
        let mut list = IdentityList::default();
        for p in &raw.phones {
            if let Some(pattern) = self.check(p.span(), parse_phone_pattern(p.get_ref())) {
                match pattern {
                    PhonePattern::Exact(n) => list.exact_phones.insert(n),
                    PhonePattern::Prefix(n) => list.phone_prefixes.insert(n),
                };
                list.phone_patterns.push(p.get_ref().clone());
            }
        }
        for n in &raw.ips {
            if let Some(net) = self.check(n.span(), parse_net(n.get_ref())) {
                match net {
                    IpNet::V4(_) => list.v4_prefix_lens.insert(net.prefix_len()),
                    IpNet::V6(_) => list.v6_prefix_lens.insert(net.prefix_len()),
                };
                list.net_set.insert(net.trunc());
                list.ip_nets.push(net);
            }
        }
        let mut globs = GlobSetBuilder::new();
        for d in &raw.devices {
            if let Some(glob) = self.check(d.span(), parse_device_glob(d.get_ref())) {
                globs.add(glob);
                list.device_patterns.push(d.get_ref().clone());
            }
        }
        match globs.build() {
            Ok(set) => list.device_globs = set,
            // Each glob compiled on its own above; building the set can only
            // fail on resource limits, which a 1 MiB file cannot reach in
            // practice. Reported anyway rather than dropping the list.
            Err(e) => self.errors.push(LimitsError::new(
                None,
                None,
                format!("the device globs cannot be compiled together: {}", e.kind()),
            )),
        }
        list
    }
}

fn version_of(text: &str) -> String {
    let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    hex::encode(&digest[..8])
}

fn check_rule_name(name: &str) -> Result<String, String> {
    let well_formed = (1..=MAX_RULE_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !well_formed {
        return Err(format!(
            "rule name is 1 to {MAX_RULE_NAME_LEN} characters of A-Z, a-z, 0-9, `_`, `.` and `-`"
        ));
    }
    if RESERVED_RULE_NAMES.contains(&name) {
        return Err(format!(
            "rule name `{name}` is reserved for a built-in limit"
        ));
    }
    Ok(name.to_owned())
}

fn shield_number(what: &str, v: i64) -> Result<u32, String> {
    if v < 0 {
        return Err(format!("{what} must be 0 or more"));
    }
    u32::try_from(v).map_err(|_| format!("{what} must be at most {}", u32::MAX))
}

fn at_least_one_u32(what: &str, v: i64) -> Result<u32, String> {
    if v < 1 {
        return Err(format!("{what} must be at least 1"));
    }
    u32::try_from(v).map_err(|_| format!("{what} must be at most {}", u32::MAX))
}

/// `<integer><unit>`, unit one of s, m, h, d; greater than zero, at most `max_ms`.
fn parse_duration_ms(s: &str, what: &str, max_ms: u64) -> Result<u64, String> {
    let bad_form = || format!("{what} is a number and a unit s, m, h or d, e.g. \"1m\"");
    let Some(unit) = s.chars().last() else {
        return Err(bad_form());
    };
    let digits = &s[..s.len() - unit.len_utf8()];
    let unit_ms = match unit {
        's' => SECOND_MS,
        'm' => MINUTE_MS,
        'h' => HOUR_MS,
        'd' => DAY_MS,
        _ => return Err(bad_form()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_form());
    }
    let too_long = || format!("{what} must be at most {}", format_duration(max_ms));
    let n: u64 = digits.parse().map_err(|_| too_long())?;
    if n == 0 {
        return Err(format!("{what} must be longer than zero"));
    }
    let ms = n.checked_mul(unit_ms).ok_or_else(too_long)?;
    if ms > max_ms {
        return Err(too_long());
    }
    Ok(ms)
}

/// The largest unit that divides `ms` exactly, in the file's own notation.
fn format_duration(ms: u64) -> String {
    for (unit_ms, unit) in [
        (DAY_MS, "d"),
        (HOUR_MS, "h"),
        (MINUTE_MS, "m"),
        (SECOND_MS, "s"),
    ] {
        if ms.is_multiple_of(unit_ms) {
            return format!("{}{unit}", ms / unit_ms);
        }
    }
    format!("{ms}ms")
}

/// A CIDR, or a bare address meaning a single host (/32 or /128).
fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{s}` is not a CIDR"))
}

enum PhonePattern {
    Exact(String),
    /// Without the trailing `*`.
    Prefix(String),
}

fn parse_phone_pattern(s: &str) -> Result<PhonePattern, String> {
    let (body, is_prefix) = match s.strip_suffix('*') {
        Some(body) => (body, true),
        None => (s, false),
    };
    let well_formed = body.strip_prefix('+').is_some_and(|digits| {
        (1..=MAX_E164_DIGITS).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    });
    if !well_formed {
        return Err(format!(
            "`{s}` is not a phone pattern: write an E.164 number (`+` and 1 to 15 digits), \
             or its prefix followed by `*`, e.g. \"+86170*\""
        ));
    }
    Ok(if is_prefix {
        PhonePattern::Prefix(body.to_owned())
    } else {
        PhonePattern::Exact(body.to_owned())
    })
}

fn parse_device_glob(s: &str) -> Result<Glob, String> {
    if s.is_empty() {
        return Err("device pattern is empty".to_owned());
    }
    Glob::new(s).map_err(|e| format!("`{s}` is not a valid glob: {}", e.kind()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The example of LIMITS.md, verbatim.
    const EXAMPLE: &str = r#"[defaults]
ipv6_prefix = 64                                   # IPv6 clients are counted per /64
trusted_proxies = ["127.0.0.1/32", "10.0.0.0/8"]   # X-Forwarded-For is believed only from these

[shield]                   # in-process per-IP limiter (governor), before anything else; no Redis
per_second = 50            # sustained requests per second per client IP (IPv6: per prefix)
burst = 100                # bucket size; 0, or no [shield] table, turns the shield off

[[rule]]
name = "ip-claim-burst"    # shown in 429 bodies (`limit`), RateLimit headers, metrics, audit
endpoint = "claim"         # claim | redeem | validate | any (default any)
campaign = "double11-*"    # optional glob on campaign id
key = ["ip"]               # any of ip, phone, device, user, campaign; several = one composite key
limit = 20
window = "1m"              # sliding window: s, m, h, d
count = "requests"         # requests (default) | successes | failures
mode = "enforce"           # enforce (default) | shadow: never blocks, counts what it would have blocked
ban = { after = 3, duration = "10m", factor = 2, max = "24h" }  # optional: 3 violations => ban; each new ban x2, capped

[[rule]]
name = "device-farm"       # one device cycling through many phone numbers
endpoint = "claim"
key = ["device"]
distinct = "phone"         # counts distinct phones per device instead of requests
limit = 3
window = "24h"

[[rule]]
name = "code-guessing"     # someone walking the code space
endpoint = "redeem"
key = ["ip"]
count = "failures"         # only invalid_code / already_redeemed answers count
limit = 10
window = "10m"
ban = { duration = "1h" }

[block]
phones  = ["+86170*", "+86171*"]   # E.164 prefixes ending in *, or whole numbers
ips     = ["203.0.113.0/24"]
devices = ["emulator-*"]

[allow]                             # never limited by rules (campaign quotas still apply)
ips = ["192.0.2.10/32"]
"#;

    fn err(text: &str) -> LimitsError {
        match RuleSet::parse(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        }
    }

    /// Asserts the error's line and that its message contains `needle`.
    fn assert_err(text: &str, line: usize, needle: &str) {
        let e = err(text);
        assert_eq!(e.line, Some(line), "wrong line for {e:?} in:\n{text}");
        assert!(e.column.is_some(), "no column: {e:?}");
        assert!(e.message.contains(needle), "{e:?} does not say {needle:?}");
        assert!(!e.message.contains('\n'), "multi-line message: {e:?}");
    }

    /// A valid rule with `extra` lines appended; the rule header is line 1,
    /// so `extra`'s first line is line 6.
    fn rule_with(extra: &str) -> String {
        format!("[[rule]]\nname = \"r\"\nkey = [\"ip\"]\nlimit = 5\nwindow = \"1m\"\n{extra}\n")
    }

    #[test]
    fn the_example_parses_with_every_value() {
        let set = RuleSet::parse(EXAMPLE).unwrap();

        assert_eq!(set.defaults.ipv6_prefix, Some(64));
        let proxies: Vec<String> = set
            .defaults
            .trusted_proxies
            .as_ref()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(proxies, ["127.0.0.1/32", "10.0.0.0/8"]);
        assert_eq!(
            set.shield,
            Some(Shield {
                per_second: 50,
                burst: 100
            })
        );

        assert_eq!(set.rules.len(), 3);
        let burst = set.rule("ip-claim-burst").unwrap();
        assert_eq!(burst.endpoint, Endpoint::Claim);
        assert_eq!(burst.campaign.as_ref().unwrap().as_str(), "double11-*");
        assert_eq!(burst.key, [KeyPart::Ip]);
        assert_eq!(burst.limit, 20);
        assert_eq!(burst.window_ms, 60_000);
        assert_eq!(burst.count, Count::Requests);
        assert_eq!(burst.distinct, None);
        assert_eq!(burst.mode, Mode::Enforce);
        assert_eq!(
            burst.ban,
            Some(BanPolicy {
                after: 3,
                duration_ms: 600_000,
                factor: 2,
                max_ms: Some(86_400_000)
            })
        );
        assert_eq!(burst.line, 9);
        assert_eq!(burst.ban_kinds(), [BanKind::Ip]);

        let farm = set.rule("device-farm").unwrap();
        assert_eq!(farm.endpoint, Endpoint::Claim);
        assert!(farm.campaign.is_none());
        assert_eq!(farm.key, [KeyPart::Device]);
        assert_eq!(farm.distinct, Some(KeyPart::Phone));
        assert_eq!(farm.limit, 3);
        assert_eq!(farm.window_ms, 24 * 3_600_000);
        assert_eq!(farm.count, Count::Requests);
        assert_eq!(farm.mode, Mode::Enforce);
        assert_eq!(farm.ban, None);
        assert_eq!(farm.line, 20);

        let guess = set.rule("code-guessing").unwrap();
        assert_eq!(guess.endpoint, Endpoint::Redeem);
        assert_eq!(guess.key, [KeyPart::Ip]);
        assert_eq!(guess.count, Count::Failures);
        assert_eq!(guess.limit, 10);
        assert_eq!(guess.window_ms, 600_000);
        assert_eq!(
            guess.ban,
            Some(BanPolicy {
                after: 1,
                duration_ms: 3_600_000,
                factor: 1,
                max_ms: None
            })
        );
        assert_eq!(guess.line, 28);

        let names: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["ip-claim-burst", "device-farm", "code-guessing"]);
        assert!(set.rule("nope").is_none());

        assert_eq!(set.block.phone_patterns(), ["+86170*", "+86171*"]);
        assert_eq!(set.block.ip_nets(), ["203.0.113.0/24"]);
        assert_eq!(set.block.device_patterns(), ["emulator-*"]);
        assert!(!set.block.is_empty());
        assert_eq!(set.allow.ip_nets(), ["192.0.2.10/32"]);
        assert!(set.allow.phone_patterns().is_empty());
        assert!(set.allow.device_patterns().is_empty());

        assert_eq!(set.version.len(), 16);
        assert!(set.version.bytes().all(|b| b.is_ascii_hexdigit()));
        // The hash of the bytes: any edit, even a comment, is a new version.
        let edited = format!("{EXAMPLE}# edited\n");
        assert_ne!(RuleSet::parse(&edited).unwrap().version, set.version);
    }

    #[test]
    fn an_empty_file_is_an_empty_rule_set() {
        let set = RuleSet::parse("").unwrap();
        assert!(set.rules.is_empty());
        assert!(set.shield.is_none());
        assert!(set.block.is_empty() && set.allow.is_empty());
        assert!(set.defaults.ipv6_prefix.is_none() && set.defaults.trusted_proxies.is_none());
        // SHA-256 of no bytes.
        assert_eq!(set.version, "e3b0c44298fc1c14");
    }

    #[test]
    fn a_file_over_one_mib_is_refused() {
        let text = format!("# {}\n", "x".repeat(MAX_FILE_BYTES));
        let e = err(&text);
        assert_eq!(e.line, None);
        assert_eq!(e.message, "the file is larger than 1 MiB");
        assert_eq!(e.render(), "the file is larger than 1 MiB");
    }

    #[test]
    fn render_puts_the_position_first() {
        let e = LimitsError::new(Some(12), Some(9), "limit must be at least 1");
        assert_eq!(e.render(), "line 12, column 9: limit must be at least 1");
        assert_eq!(e.to_string(), e.render());
        assert_eq!(LimitsError::new(Some(3), None, "x").render(), "line 3: x");
    }

    #[test]
    fn toml_syntax_errors_carry_line_and_column_and_a_clean_message() {
        let e = err("[shield]\nper_second = 5\nburst = = 3\n");
        assert_eq!(e.line, Some(3));
        assert!(e.column.is_some());
        assert!(!e.message.contains('\n'), "{e:?}");
        assert!(!e.message.contains("|"), "snippet leaked into {e:?}");

        let e = err("[[rule]]\nname = \"a\nkey = [\"ip\"]\n");
        assert_eq!(e.line, Some(2));

        // Duplicate keys are a TOML error too.
        let e = err("[shield]\nburst = 1\nburst = 2\n");
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn wrong_types_read_cleanly() {
        let e = err(&rule_with("count = 5"));
        assert_eq!(e.line, Some(6));
        let e = err("[[rule]]\nname = \"r\"\nkey = [\"ip\"]\nlimit = \"x\"\nwindow = \"1m\"\n");
        assert_eq!(e.line, Some(4));
        assert!(!e.message.contains("\"\""), "{e:?}");
        assert!(!e.message.contains("default."), "{e:?}");
    }

    #[test]
    fn unknown_fields_are_errors_everywhere() {
        let e = err(&rule_with("limt = 5"));
        assert_eq!(e.line, Some(6), "{e:?}");
        assert!(
            e.message
                .starts_with("unknown field `limt`, expected one of"),
            "{e:?}"
        );
        assert!(!e.message.contains("\"\""), "{e:?}");

        assert_eq!(err("[shield]\nper_second = 1\nbrust = 2\n").line, Some(3));
        assert_eq!(err("[defaults]\nipv6 = 64\n").line, Some(2));
        assert_eq!(err("\n[block]\nphone = []\n").line, Some(3));
        assert_eq!(err("\n\n[allow]\nip = []\n").line, Some(4));
        assert_eq!(err("rules = []\n").line, Some(1));
        assert_eq!(
            err(&rule_with("ban = { duration = \"1h\", afterr = 2 }")).line,
            Some(6)
        );
    }

    #[test]
    fn missing_required_fields_are_errors() {
        let e = err("\n[[rule]]\nname = \"r\"\nkey = [\"ip\"]\nwindow = \"1m\"\n");
        assert!(e.message.contains("limit"), "{e:?}");
        assert!(e.line.is_some(), "{e:?}");
        let e = err(&rule_with("ban = { after = 2 }"));
        assert!(e.message.contains("duration"), "{e:?}");
    }

    #[test]
    fn duplicate_rule_names_point_at_the_second() {
        let text = "[[rule]]\nname = \"a\"\nkey = [\"ip\"]\nlimit = 1\nwindow = \"1s\"\n\
                    [[rule]]\nname = \"a\"\nkey = [\"ip\"]\nlimit = 1\nwindow = \"1s\"\n";
        let e = err(text);
        assert_eq!(e.line, Some(7));
        assert_eq!(e.message, "rule name `a` is used twice (first at line 2)");
    }

    #[test]
    fn rule_names_are_checked() {
        let named = |name: &str| {
            format!("[[rule]]\nkey = [\"ip\"]\nlimit = 1\nwindow = \"1s\"\nname = \"{name}\"\n")
        };
        for bad in ["", "has space", "ünïcode", "a/b", &"x".repeat(65)] {
            assert_err(&named(bad), 5, "rule name is 1 to 64 characters");
        }
        for reserved in RESERVED_RULE_NAMES {
            assert_err(&named(reserved), 5, "is reserved");
        }
        for good in ["a", "A.b-c_9", &"x".repeat(64)] {
            assert!(RuleSet::parse(&named(good)).is_ok(), "{good}");
        }
    }

    #[test]
    fn limit_must_be_positive() {
        let text =
            "# rules\n\n[[rule]]\nname = \"r\"\nkey = [\"ip\"]\nwindow = \"1m\"\nlimit = 0\n";
        let e = err(text);
        assert_eq!(e.line, Some(7));
        assert_eq!(e.column, Some(9));
        assert_eq!(e.message, "limit must be at least 1");
        assert_eq!(e.render(), "line 7, column 9: limit must be at least 1");
        assert_err(
            &text.replace("limit = 0", "limit = -3"),
            7,
            "limit must be at least 1",
        );
    }

    #[test]
    fn windows_are_a_number_and_a_unit() {
        let with_window = |w: &str| {
            format!("[[rule]]\nname = \"r\"\nkey = [\"ip\"]\nlimit = 1\nwindow = \"{w}\"\n")
        };
        for zero in ["0s", "0m", "00h"] {
            assert_err(&with_window(zero), 5, "window must be longer than zero");
        }
        let form = "window is a number and a unit s, m, h or d, e.g. \"1m\"";
        for bad in [
            "5x", "", "m", "1", "1.5m", "-1m", " 1m", "1 m", "1ms", "1M", "1€",
        ] {
            let e = err(&with_window(bad));
            assert_eq!(e.line, Some(5), "{bad}");
            assert_eq!(e.message, form, "{bad}");
        }
        for long in [
            "31d",
            "721h",
            "99999999999999999999999d",
            "18446744073709551615d",
        ] {
            assert_err(&with_window(long), 5, "window must be at most 30d");
        }
        for (ok, ms) in [
            ("1s", 1_000),
            ("90s", 90_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("30d", 30 * 86_400_000),
        ] {
            let set = RuleSet::parse(&with_window(ok)).unwrap();
            assert_eq!(set.rules[0].window_ms, ms, "{ok}");
        }
    }

    #[test]
    fn keys_are_checked() {
        let keyed =
            |k: &str| format!("[[rule]]\nname = \"r\"\nlimit = 1\nwindow = \"1s\"\nkey = {k}\n");
        assert_err(&keyed("[]"), 5, "key needs at least one");
        assert_err(&keyed("[\"ip\", \"ip\"]"), 5, "`ip` is in the key twice");
        assert_err(
            &keyed("[\"ip\", \"email\"]"),
            5,
            "`email` is not a key part",
        );
        let e = err(&keyed("[\"ip\",\n  \"email\"]"));
        assert_eq!(e.line, Some(6), "the element's own line: {e:?}");

        let set = RuleSet::parse(&keyed(
            "[\"phone\", \"campaign\", \"device\", \"user\", \"ip\"]",
        ))
        .unwrap();
        let rule = &set.rules[0];
        assert_eq!(
            rule.key,
            [
                KeyPart::Phone,
                KeyPart::Campaign,
                KeyPart::Device,
                KeyPart::User,
                KeyPart::Ip
            ]
        );
        assert_eq!(
            rule.ban_kinds(),
            [BanKind::Phone, BanKind::Device, BanKind::Ip]
        );
    }

    #[test]
    fn distinct_is_checked() {
        assert_err(
            &rule_with("distinct = \"campaign\""),
            6,
            "distinct is one of ip, phone, device or user",
        );
        assert_err(&rule_with("distinct = \"email\""), 6, "distinct is one of");
        assert_err(&rule_with("distinct = \"ip\""), 6, "is part of the key");
        assert_err(
            &rule_with("count = \"failures\"\ndistinct = \"phone\""),
            7,
            "distinct counts requests only",
        );
        let set = RuleSet::parse(&rule_with("count = \"requests\"\ndistinct = \"user\"")).unwrap();
        assert_eq!(set.rules[0].distinct, Some(KeyPart::User));
    }

    #[test]
    fn words_are_checked() {
        assert_err(
            &rule_with("endpoint = \"claims\""),
            6,
            "endpoint is one of claim, redeem, validate or any",
        );
        assert_err(
            &rule_with("count = \"all\""),
            6,
            "count is one of requests, successes or failures",
        );
        assert_err(
            &rule_with("mode = \"dry-run\""),
            6,
            "mode is enforce or shadow",
        );
        let set = RuleSet::parse(&rule_with(
            "endpoint = \"validate\"\nmode = \"shadow\"\ncount = \"successes\"",
        ))
        .unwrap();
        let rule = &set.rules[0];
        assert_eq!(rule.endpoint, Endpoint::Validate);
        assert_eq!(rule.mode, Mode::Shadow);
        assert_eq!(rule.count, Count::Successes);
        let set = RuleSet::parse(&rule_with("")).unwrap();
        assert_eq!(set.rules[0].endpoint, Endpoint::Any);
        assert_eq!(set.rules[0].line, 1);
    }

    #[test]
    fn bans_are_checked() {
        assert_err(
            &rule_with("ban = { after = 0, duration = \"1h\" }"),
            6,
            "ban after must be at least 1",
        );
        assert_err(
            &rule_with("ban = { factor = 0, duration = \"1h\" }"),
            6,
            "ban factor must be at least 1",
        );
        assert_err(
            &rule_with("ban = { factor = 4294967296, duration = \"1h\" }"),
            6,
            "ban factor must be at most",
        );
        assert_err(
            &rule_with("ban = { duration = \"0m\" }"),
            6,
            "ban duration must be longer than zero",
        );
        assert_err(
            &rule_with("ban = { duration = \"1 hour\" }"),
            6,
            "ban duration is a number and a unit",
        );
        assert_err(
            &rule_with("ban = { duration = \"1h\", max = \"30m\" }"),
            6,
            "ban max must be at least the ban duration",
        );
        assert_err(
            &rule_with("ban = { duration = \"1h\", max = \"x\" }"),
            6,
            "ban max is a number and a unit",
        );
        assert_err(
            &rule_with("ban = { duration = \"366d\" }"),
            6,
            "ban duration must be at most 365d",
        );
        assert_err(
            &rule_with("mode = \"shadow\"\nban = { duration = \"1h\" }"),
            7,
            "a shadow rule never bans",
        );
        let user_keyed = "[[rule]]\nname = \"r\"\nkey = [\"user\", \"campaign\"]\nlimit = 5\nwindow = \"1m\"\nban = { duration = \"1h\" }\n";
        assert_err(user_keyed, 6, "ban needs ip, phone or device in the key");

        // The table form reports the line of the offending value.
        let e = err(&rule_with("[rule.ban]\nduration = \"1h\"\nmax = \"1m\""));
        assert_eq!(e.line, Some(8), "{e:?}");

        let set = RuleSet::parse(&rule_with("ban = { duration = \"1h\", max = \"1h\" }")).unwrap();
        assert_eq!(set.rules[0].ban.as_ref().unwrap().max_ms, Some(3_600_000));
    }

    #[test]
    fn campaign_globs_are_checked() {
        assert_err(
            &rule_with("campaign = \"double11-[\""),
            6,
            "is not a valid glob",
        );
        assert_err(
            &rule_with("campaign = \"Double11-*\""),
            6,
            "can never match",
        );
        assert_err(&rule_with("campaign = \"a.b\""), 6, "can never match");
        assert_err(&rule_with("campaign = \"\""), 6, "campaign glob is empty");
        let set = RuleSet::parse(&rule_with("campaign = \"{spring,summer}-??\"")).unwrap();
        let glob = set.rules[0].campaign.as_ref().unwrap();
        assert!(glob.is_match("spring-01"));
        assert!(!glob.is_match("autumn-01"));
        assert!(!glob.is_match("spring-001"));
    }

    #[test]
    fn lists_are_checked() {
        assert_err(
            "[block]\nips = [\"10.0.0.0/8\",\n  \"300.1.1.1/8\"]\n",
            3,
            "`300.1.1.1/8` is not a CIDR",
        );
        assert_err("[allow]\nips = [\"10.0.0.0/33\"]\n", 2, "is not a CIDR");
        assert_err("[allow]\nips = [\"example.com\"]\n", 2, "is not a CIDR");
        for bad in [
            "8617012345678",
            "+",
            "+*",
            "+86 170*",
            "+86170**",
            "+8617*0",
            "+1234567890123456",
            "+86a",
        ] {
            let text = format!("[block]\n\nphones = [\"{bad}\"]\n");
            assert_err(&text, 3, "is not a phone pattern");
        }
        assert_err("[block]\ndevices = [\"emu[\"]\n", 2, "is not a valid glob");
        assert_err("[block]\ndevices = [\"\"]\n", 2, "device pattern is empty");
    }

    #[test]
    fn defaults_are_checked() {
        assert_err(
            "[defaults]\nipv6_prefix = 31\n",
            2,
            "ipv6_prefix must be between 32 and 128",
        );
        assert_err(
            "[defaults]\nipv6_prefix = 129\n",
            2,
            "ipv6_prefix must be between 32 and 128",
        );
        assert_err(
            "[defaults]\nipv6_prefix = -64\n",
            2,
            "ipv6_prefix must be between 32 and 128",
        );
        assert_err(
            "[defaults]\ntrusted_proxies = [\"10.0.0.0/8\", \"localhost\"]\n",
            2,
            "`localhost` is not a CIDR",
        );
        let set = RuleSet::parse(
            "[defaults]\nipv6_prefix = 128\ntrusted_proxies = [\"::1\", \"10.1.2.3\"]\n",
        )
        .unwrap();
        assert_eq!(set.defaults.ipv6_prefix, Some(128));
        let proxies: Vec<String> = set
            .defaults
            .trusted_proxies
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(proxies, ["::1/128", "10.1.2.3/32"]);
    }

    #[test]
    fn the_shield_is_off_unless_both_numbers_are_positive() {
        let shield = |body: &str| RuleSet::parse(&format!("[shield]\n{body}\n")).map(|s| s.shield);
        assert_eq!(
            shield("per_second = 5\nburst = 10").unwrap(),
            Some(Shield {
                per_second: 5,
                burst: 10
            })
        );
        assert_eq!(shield("per_second = 5\nburst = 0").unwrap(), None);
        assert_eq!(shield("per_second = 0\nburst = 10").unwrap(), None);
        assert_eq!(shield("").unwrap(), None);
        assert_eq!(shield("burst = 0").unwrap(), None);
        assert_eq!(RuleSet::parse("").unwrap().shield, None);

        assert_err("[shield]\nburst = 10\n", 2, "burst but no per_second");
        assert_err("[shield]\nper_second = 10\n", 2, "per_second but no burst");
        assert_err(
            "[shield]\nper_second = -1\nburst = 10\n",
            2,
            "per_second must be 0 or more",
        );
        assert_err(
            "[shield]\nper_second = 1\nburst = 4294967296\n",
            3,
            "burst must be at most",
        );
    }

    #[test]
    fn the_topmost_error_is_reported() {
        let text = "[block]\nips = [\"nope\"]\n[[rule]]\nname = \"r\"\nkey = [\"ip\"]\nlimit = 0\nwindow = \"1m\"\n";
        assert_eq!(err(text).line, Some(2));
        let text = "[[rule]]\nname = \"r\"\nkey = [\"ip\"]\nlimit = 0\nwindow = \"0m\"\n[block]\nips = [\"nope\"]\n";
        assert_eq!(err(text).line, Some(4));
    }

    #[test]
    fn ban_durations_grow_and_are_capped() {
        let policy = BanPolicy {
            after: 3,
            duration_ms: 10 * 60_000,
            factor: 2,
            max_ms: Some(24 * 3_600_000),
        };
        let minutes: Vec<u64> = (1..=9).map(|l| policy.duration_for(l) / 60_000).collect();
        assert_eq!(minutes, [10, 20, 40, 80, 160, 320, 640, 1280, 1440]);
        assert_eq!(policy.duration_for(0), 10 * 60_000);
        assert_eq!(policy.duration_for(1000), 24 * 3_600_000);
        assert_eq!(policy.duration_for(u32::MAX), 24 * 3_600_000);

        let uncapped = BanPolicy {
            max_ms: None,
            factor: u32::MAX,
            ..policy.clone()
        };
        assert_eq!(uncapped.duration_for(1000), u64::MAX);
        let flat = BanPolicy {
            factor: 1,
            max_ms: None,
            ..policy
        };
        assert_eq!(flat.duration_for(1000), 10 * 60_000);
    }

    #[test]
    fn rules_apply_by_endpoint_and_campaign() {
        let set = RuleSet::parse(EXAMPLE).unwrap();
        let burst = set.rule("ip-claim-burst").unwrap();
        assert!(burst.applies(Endpoint::Claim, Some("double11-shoes")));
        assert!(!burst.applies(Endpoint::Claim, Some("618-shoes")));
        assert!(!burst.applies(Endpoint::Redeem, Some("double11-shoes")));
        // An unknown campaign (a forged code) is not caught by a glob rule.
        assert!(!burst.applies(Endpoint::Claim, None));

        let farm = set.rule("device-farm").unwrap();
        assert!(farm.applies(Endpoint::Claim, None));
        assert!(farm.applies(Endpoint::Claim, Some("anything")));
        assert!(!farm.applies(Endpoint::Validate, None));

        let any = RuleSet::parse(&rule_with("")).unwrap();
        let any = &any.rules[0];
        for endpoint in [
            Endpoint::Claim,
            Endpoint::Redeem,
            Endpoint::Validate,
            Endpoint::Any,
        ] {
            assert!(any.applies(endpoint, None));
            assert!(any.applies(endpoint, Some("c1")));
        }
    }

    #[test]
    fn block_lists_match_phones_ips_and_devices() {
        let set = RuleSet::parse(
            "[block]\n\
             phones = [\"+86170*\", \"+8613800138000\"]\n\
             ips = [\"203.0.113.0/24\", \"2001:db8::/32\", \"198.51.100.7\", \"10.9.8.7/8\"]\n\
             devices = [\"emulator-*\", \"bad?\"]\n",
        )
        .unwrap();
        let block = &set.block;

        assert!(block.has_phone("+8617012345678"));
        assert!(block.has_phone("+86170"));
        assert!(!block.has_phone("+8617112345678"));
        assert!(!block.has_phone("+8617"));
        assert!(block.has_phone("+8613800138000"));
        assert!(
            !block.has_phone("+86138001380001"),
            "an exact number is not a prefix"
        );
        assert!(!block.has_phone("+861380013800"));
        assert!(!block.has_phone(""));

        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(block.has_ip(ip("203.0.113.0")));
        assert!(block.has_ip(ip("203.0.113.255")));
        assert!(!block.has_ip(ip("203.0.114.1")));
        assert!(block.has_ip(ip("198.51.100.7")));
        assert!(!block.has_ip(ip("198.51.100.8")));
        assert!(
            block.has_ip(ip("10.200.0.1")),
            "host bits in the CIDR are ignored"
        );
        assert!(block.has_ip(ip("2001:db8:1::5")));
        assert!(!block.has_ip(ip("2001:db9::5")));
        assert!(block.has_ip(ip("::ffff:203.0.113.9")), "IPv4-mapped");
        assert!(!block.has_ip(ip("::ffff:203.0.114.9")));
        assert!(
            !block.has_ip(ip("::203.0.113.9")),
            "IPv4-compatible is not mapped"
        );
        assert_eq!(
            block.ip_nets(),
            [
                "203.0.113.0/24",
                "2001:db8::/32",
                "198.51.100.7/32",
                "10.9.8.7/8"
            ]
        );

        assert!(block.has_device("emulator-5554"));
        assert!(block.has_device("emulator-"));
        assert!(!block.has_device("Emulator-5554"), "case-sensitive");
        assert!(!block.has_device("my-emulator-1"));
        assert!(block.has_device("bad1"));
        assert!(!block.has_device("bad12"));

        let mapped = RuleSet::parse("[allow]\nips = [\"::ffff:0:0/96\"]\n").unwrap();
        assert!(mapped.allow.has_ip(ip("::ffff:1.2.3.4")));
        assert!(!mapped.allow.has_ip(ip("1.2.3.4")));

        let empty = IdentityList::default();
        assert!(empty.is_empty());
        assert!(!empty.has_phone("+1"));
        assert!(!empty.has_ip(ip("1.2.3.4")));
        assert!(!empty.has_device("x"));
    }

    #[test]
    fn rules_files_are_told_from_service_configs() {
        assert!(is_rules_file(EXAMPLE));
        assert!(is_rules_file("[shield]\nburst = 0\n"));
        assert!(is_rules_file("[[rule]]\nname = \"x\"\n"));
        assert!(is_rules_file("[allow]\n"));
        assert!(!is_rules_file(
            "listen = \"127.0.0.1:8080\"\nredis_url = \"redis://x\"\n"
        ));
        assert!(!is_rules_file("shield = 5\n"));
        assert!(!is_rules_file(""));
        assert!(!is_rules_file("[[rule]\n"));
    }

    #[test]
    fn words_round_trip() {
        for e in [
            Endpoint::Claim,
            Endpoint::Redeem,
            Endpoint::Validate,
            Endpoint::Any,
        ] {
            assert_eq!(Endpoint::parse(e.as_str()), Some(e));
        }
        for k in [
            KeyPart::Ip,
            KeyPart::Phone,
            KeyPart::Device,
            KeyPart::User,
            KeyPart::Campaign,
        ] {
            assert_eq!(KeyPart::parse(k.as_str()), Some(k));
        }
        for b in [BanKind::Phone, BanKind::Device, BanKind::Ip] {
            assert_eq!(BanKind::parse(b.as_str()), Some(b));
        }
        assert_eq!(BanKind::parse("user"), None);
        for c in [Count::Requests, Count::Successes, Count::Failures] {
            assert_eq!(Count::parse(c.as_str()), Some(c));
        }
        for m in [Mode::Enforce, Mode::Shadow] {
            assert_eq!(Mode::parse(m.as_str()), Some(m));
        }
    }

    /// Fragments of real rules files, so generated texts get past the TOML
    /// syntax often and exercise the validation, not only the tokenizer.
    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("[[rule]]\n".to_owned()),
            Just("[shield]\n".to_owned()),
            Just("[block]\n".to_owned()),
            Just("[allow]\n".to_owned()),
            Just("[defaults]\n".to_owned()),
            Just("[rule.ban]\n".to_owned()),
            "(name|endpoint|campaign|window|count|distinct|mode|duration|max) = \"[a-z0-9*?\\[\\]{}+-]{0,8}\"\n",
            "(limit|per_second|burst|after|factor|ipv6_prefix) = -?[0-9]{1,20}\n",
            "(key|phones|ips|devices|trusted_proxies) = \\[(\"[a-z0-9.:/+*-]{0,12}\", ){0,3}\\]\n",
            "ban = \\{ duration = \"[0-9]{1,3}[smhdx]\"(, (after|factor) = [0-9]{1,3})? \\}\n",
            any::<String>(),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_text(text in any::<String>()) {
            let _ = RuleSet::parse(&text);
            let _ = is_rules_file(&text);
        }

        #[test]
        fn parse_never_panics_on_near_misses(parts in prop::collection::vec(fragment(), 0..24)) {
            let text = parts.concat();
            match RuleSet::parse(&text) {
                Ok(set) => prop_assert_eq!(set.version.len(), 16),
                Err(e) => {
                    prop_assert!(!e.message.is_empty());
                    prop_assert!(!e.message.contains('\n'));
                    if let Some(line) = e.line {
                        prop_assert!(line >= 1 && line <= text.lines().count().max(1) + 1);
                    }
                }
            }
        }
    }
}
