//! Validation of the raw file into the model: every problem is recorded
//! with its line and column, and the one nearest the top is reported.

use std::collections::HashMap;
use std::ops::Range;

use globset::GlobSetBuilder;
use ipnet::IpNet;
use toml::Spanned;

use super::raw::{RawBan, RawDefaults, RawFile, RawList, RawRule, RawShield};
use super::values::{
    PhonePattern, at_least_one_u32, check_rule_name, parse_device_glob, parse_duration_ms,
    parse_net, parse_phone_pattern, shield_number, version_of,
};
use super::{
    BanPolicy, CampaignGlob, Count, Defaults, Endpoint, IdentityList, KeyPart, LimitsError,
    MAX_BAN_MS, MAX_WINDOW_MS, Mode, Rule, RuleSet, Shield,
};

/// Reads and validates a rules file whose size [`RuleSet::parse`] has
/// already checked.
pub(super) fn rule_set(text: &str) -> Result<RuleSet, LimitsError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    let cx = Cx {
        text,
        errors: Vec::new(),
    };
    cx.build(raw)
}

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
