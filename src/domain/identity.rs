//! Identities: phone numbers, device ids and client IPs, parsed into typed
//! values and pseudonymized before anything is stored or logged.
//!
//! Only the HMAC pseudonyms ever leave this module towards Redis, logs or
//! metrics; the clear values live in request memory and nowhere else.

use foldhash::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{LazyLock, RwLock};

use crate::domain::error::is_visible_ascii;
use crate::domain::secret::MacKey;

/// A phone number in E.164 form, e.g. `+8613800138000`.
#[derive(Clone, PartialEq, Eq)]
pub struct Phone(String);

/// Why a phone number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("is not a phone number")]
    Unparsable,
    #[error("is not a valid phone number for its region")]
    Invalid,
}

/// The 11 national digits of a Chinese mobile number written in one of the
/// spellings a flash sale sees almost exclusively: `13800138000`, `+86 138 0013
/// 8000`, `+86-138-0013-8000`, `008613800138000` (spaces and dashes anywhere
/// after the prefix). Anything else returns `None` and takes the general path.
fn cn_mobile_digits(raw: &str, region: phonenumber::country::Id) -> Option<[u8; 11]> {
    let rest = if let Some(r) = raw.strip_prefix("+86") {
        r
    } else if let Some(r) = raw.strip_prefix("0086") {
        r
    } else if region == phonenumber::country::Id::CN {
        raw
    } else {
        return None;
    };
    let mut out = [0u8; 11];
    let mut n = 0;
    for b in rest.bytes() {
        match b {
            b'0'..=b'9' if n < 11 => {
                out[n] = b;
                n += 1;
            }
            b' ' | b'-' => {}
            _ => return None,
        }
    }
    (n == 11 && out[0] == b'1').then_some(out)
}

/// Whether the 7-digit prefix of a Chinese mobile number is an allocated
/// range, as libphonenumber's metadata says. The metadata decides CN mobile
/// validity by the leading digits and the length only (the property tests
/// below check this against the crate), so the crate's verdict for one
/// number holds for every number of its 7-digit prefix: this memo (at most
/// 900,000 entries of a byte) spares the crate's regex work on the hot path.
static CN_PREFIX_VALID: LazyLock<RwLock<HashMap<u32, bool>>> = LazyLock::new(RwLock::default);

impl Phone {
    /// Normalizes `raw` to E.164, reading national numbers in `region`.
    pub fn parse(raw: &str, region: phonenumber::country::Id) -> Result<Self, PhoneError> {
        // Bound the work the parser does on hostile input.
        if raw.is_empty() || raw.len() > 40 || raw.chars().any(char::is_control) {
            return Err(PhoneError::Unparsable);
        }
        if let Some(d) = cn_mobile_digits(raw, region) {
            let digits = std::str::from_utf8(&d).map_err(|_| PhoneError::Unparsable)?;
            let mut e164 = String::with_capacity(14);
            e164.push_str("+86");
            e164.push_str(digits);
            let prefix: u32 = digits[..7].parse().map_err(|_| PhoneError::Unparsable)?;
            let known = CN_PREFIX_VALID
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&prefix)
                .copied();
            let valid = match known {
                Some(v) => v,
                None => {
                    let v = Self::parse_general(&e164, region).is_ok();
                    CN_PREFIX_VALID
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(prefix, v);
                    v
                }
            };
            return if valid {
                Ok(Self(e164))
            } else {
                Err(PhoneError::Invalid)
            };
        }
        Self::parse_general(raw, region)
    }

    /// Any number, any spelling, through libphonenumber's rules.
    fn parse_general(raw: &str, region: phonenumber::country::Id) -> Result<Self, PhoneError> {
        // An international spelling carries its own country: the default
        // region is not passed (with one, the crate fails to read some valid
        // numbers, e.g. `+81112000000` with CN).
        let region = (!raw.trim_start().starts_with('+')).then_some(region);
        let n = phonenumber::parse(region, raw).map_err(|_| PhoneError::Unparsable)?;
        if !phonenumber::is_valid(&n) {
            return Err(PhoneError::Invalid);
        }
        let e164 = n.format().mode(phonenumber::Mode::E164).to_string();
        // The crate accepts a few spellings whose E.164 form it then refuses
        // (e.g. `+810112000000`, a Japanese number written with its trunk
        // 0): such a number would be one person under one spelling and
        // nobody under another, so it is refused whole. Normalization stays
        // idempotent, and a ban or quota on a number covers every spelling.
        match phonenumber::parse(None, &e164) {
            Ok(again) if phonenumber::is_valid(&again) => Ok(Self(e164)),
            _ => Err(PhoneError::Invalid),
        }
    }

    pub fn as_e164(&self) -> &str {
        &self.0
    }
}

// Identities must not reach logs by accident, so Debug hides them.
impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Phone(..)")
    }
}

/// A client-supplied device id: 1..=128 visible ASCII characters.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceId(String);

impl DeviceId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err("must be 1 to 128 characters");
        }
        if !is_visible_ascii(raw) {
            return Err("must be visible ASCII characters only");
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceId(..)")
    }
}

/// The address a per-IP quota counts: an IPv4 address, or an IPv6 address
/// truncated to its network prefix (a /64 by default, since one subscriber
/// usually holds a whole /64).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(IpAddr);

impl ClientIp {
    pub fn new(ip: IpAddr, ipv6_prefix: u8) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let bits = u128::from(v6);
                    let prefix = u32::from(ipv6_prefix.min(128));
                    let mask = if prefix == 0 {
                        0
                    } else {
                        u128::MAX << (128 - prefix)
                    };
                    IpAddr::V6((bits & mask).into())
                }
            },
            v4 => v4,
        };
        Self(ip)
    }

    pub fn addr(&self) -> IpAddr {
        self.0
    }
}

impl fmt::Debug for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientIp(..)")
    }
}

/// A keyed pseudonym: 128 bits of HMAC-SHA-256, hex. Stable for one secret,
/// so quotas count the same person across requests, and useless without it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pseudonym(String);

impl Pseudonym {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Turns identities into pseudonyms under the identity key.
#[derive(Clone)]
pub struct Pseudonymizer(MacKey);

impl fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pseudonymizer(..)")
    }
}

impl Pseudonymizer {
    pub fn new(key: [u8; 32]) -> Self {
        Self(MacKey::new(&key))
    }

    fn of(&self, kind: &[u8], value: &[u8]) -> Pseudonym {
        let mac = self.0.mac(&[kind, b"\0", value]);
        Pseudonym(crate::domain::hex::lower(&mac[..16]))
    }

    pub fn phone(&self, p: &Phone) -> Pseudonym {
        self.of(b"phone", p.0.as_bytes())
    }

    pub fn device(&self, d: &DeviceId) -> Pseudonym {
        self.of(b"device", d.0.as_bytes())
    }

    /// A caller-supplied user id (rules may key on it).
    pub fn user(&self, user_id: &str) -> Pseudonym {
        self.of(b"user", user_id.as_bytes())
    }

    pub fn ip(&self, ip: &ClientIp) -> Pseudonym {
        let bytes = match ip.0 {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        self.of(b"ip", &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonenumber::country::Id::CN;
    use proptest::prelude::*;

    #[test]
    fn chinese_mobile_numbers_in_every_common_form_are_one_person() {
        let forms = [
            "13800138000",
            "+86 138 0013 8000",
            "+8613800138000",
            "008613800138000",
            "138-0013-8000",
            "(+86) 138 0013 8000",
        ];
        for f in forms {
            assert_eq!(
                Phone::parse(f, CN).unwrap().as_e164(),
                "+8613800138000",
                "{f}"
            );
        }
    }

    #[test]
    fn foreign_numbers_keep_their_country() {
        let p = Phone::parse("+1 650 253 0000", CN).unwrap();
        assert_eq!(p.as_e164(), "+16502530000");
    }

    #[test]
    fn junk_is_refused() {
        for bad in [
            "",
            "abc",
            "12",
            "+86 123",
            "1380013800\u{0}0",
            &"9".repeat(41),
        ] {
            assert!(Phone::parse(bad, CN).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ipv6_counts_per_prefix_and_mapped_v4_is_v4() {
        let a = ClientIp::new("2001:db8:1:2:aaaa::1".parse().unwrap(), 64);
        let b = ClientIp::new("2001:db8:1:2:bbbb::9".parse().unwrap(), 64);
        let c = ClientIp::new("2001:db8:1:3::1".parse().unwrap(), 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let m = ClientIp::new("::ffff:203.0.113.7".parse().unwrap(), 64);
        assert_eq!(m.addr(), "203.0.113.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn pseudonyms_are_keyed_and_kind_separated() {
        let p = Phone::parse("13800138000", CN).unwrap();
        let k1 = Pseudonymizer::new([1; 32]);
        let k2 = Pseudonymizer::new([2; 32]);
        assert_eq!(k1.phone(&p), k1.phone(&p));
        assert_ne!(k1.phone(&p), k2.phone(&p));
        let d = DeviceId::parse("+8613800138000").unwrap();
        assert_ne!(k1.phone(&p), k1.device(&d));
        assert!(!k1.phone(&p).as_str().contains("138"));
        assert_eq!(format!("{p:?}"), "Phone(..)");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any valid CN mobile number, in any of the common spellings,
        /// normalizes to one E.164 value.
        #[test]
        fn cn_mobile_spellings_normalize_to_one_value(
            prefix in prop::sample::select(vec!["130", "138", "139", "150", "186", "199"]),
            rest in "[0-9]{8}",
        ) {
            let national = format!("{prefix}{rest}");
            let expected = format!("+86{national}");
            let spaced = format!("+86 {} {} {}", &national[..3], &national[3..7], &national[7..]);
            for form in [national.clone(), expected.clone(), spaced, format!("0086{national}")] {
                let p = Phone::parse(&form, CN);
                prop_assert!(p.is_ok(), "{} refused", form);
                let p = p.unwrap();
                prop_assert_eq!(p.as_e164(), expected.as_str());
            }
        }

        /// The memo's premise: for Chinese mobile numbers the crate's verdict
        /// depends on the 7-digit prefix only.
        #[test]
        fn cn_mobile_validity_depends_on_the_prefix_only(
            prefix in 1_000_000u32..2_000_000, a in 0u32..10_000, b in 0u32..10_000,
        ) {
            let one = Phone::parse_general(&format!("+86{prefix}{a:04}"), CN).is_ok();
            let two = Phone::parse_general(&format!("+86{prefix}{b:04}"), CN).is_ok();
            prop_assert_eq!(one, two, "prefix {}", prefix);
        }

        /// The fast path and the crate agree on every CN mobile spelling.
        #[test]
        fn fast_path_agrees_with_the_crate(
            number in 10_000_000_000u64..20_000_000_000,
            form in 0usize..4,
        ) {
            let n = number.to_string();
            let raw = match form {
                0 => n.clone(),
                1 => format!("+86{n}"),
                2 => format!("+86 {} {} {}", &n[..3], &n[3..7], &n[7..]),
                _ => format!("0086-{}-{}", &n[..3], &n[3..]),
            };
            let fast = Phone::parse(&raw, CN).map(|p| p.0);
            let slow = Phone::parse_general(&raw, CN).map(|p| p.0);
            prop_assert_eq!(fast.is_ok(), slow.is_ok(), "{}", raw);
            if let (Ok(f), Ok(s)) = (fast, slow) {
                prop_assert_eq!(f, s);
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,60}") {
            let _ = Phone::parse(&s, CN);
            let _ = DeviceId::parse(&s);
        }

        #[test]
        fn normalization_is_idempotent(s in "\\+?[0-9 ]{6,20}") {
            if let Ok(p) = Phone::parse(&s, CN) {
                let again = Phone::parse(p.as_e164(), CN).unwrap();
                prop_assert_eq!(again.as_e164(), p.as_e164());
            }
        }
    }
}
