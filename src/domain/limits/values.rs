//! The syntax of single values in a rules file: rule names, numbers,
//! durations, nets, phone patterns, device globs; and the file's version.

use std::net::IpAddr;

use globset::Glob;
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::{
    DAY_MS, HOUR_MS, MAX_E164_DIGITS, MAX_RULE_NAME_LEN, MINUTE_MS, RESERVED_RULE_NAMES, SECOND_MS,
};

pub(super) fn version_of(text: &str) -> String {
    let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    crate::domain::hex::lower(&digest[..8])
}

pub(super) fn check_rule_name(name: &str) -> Result<String, String> {
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

pub(super) fn shield_number(what: &str, v: i64) -> Result<u32, String> {
    if v < 0 {
        return Err(format!("{what} must be 0 or more"));
    }
    u32::try_from(v).map_err(|_| format!("{what} must be at most {}", u32::MAX))
}

pub(super) fn at_least_one_u32(what: &str, v: i64) -> Result<u32, String> {
    if v < 1 {
        return Err(format!("{what} must be at least 1"));
    }
    u32::try_from(v).map_err(|_| format!("{what} must be at most {}", u32::MAX))
}

/// `<integer><unit>`, unit one of s, m, h, d; greater than zero, at most `max_ms`.
pub(super) fn parse_duration_ms(s: &str, what: &str, max_ms: u64) -> Result<u64, String> {
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
pub(super) fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{s}` is not a CIDR"))
}

pub(super) enum PhonePattern {
    Exact(String),
    /// Without the trailing `*`.
    Prefix(String),
}

pub(super) fn parse_phone_pattern(s: &str) -> Result<PhonePattern, String> {
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

pub(super) fn parse_device_glob(s: &str) -> Result<Glob, String> {
    if s.is_empty() {
        return Err("device pattern is empty".to_owned());
    }
    Glob::new(s).map_err(|e| format!("`{s}` is not a valid glob: {}", e.kind()))
}
