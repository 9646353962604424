//! The raw shape of a rules file, as serde reads it from TOML, before any
//! check.

use serde::Deserialize;
use toml::Spanned;

// ---------------------------------------------------------------------------
// Raw shape of the file
// ---------------------------------------------------------------------------
//
// Every value that is checked after deserializing keeps its span, so an error
// points at the value rather than at the table. Words (endpoint, count, ...)
// are read as strings and parsed here, for messages that name the choices.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a rules file")]
pub(super) struct RawFile {
    pub(super) defaults: Option<RawDefaults>,
    pub(super) shield: Option<RawShield>,
    #[serde(default)]
    pub(super) rule: Vec<Spanned<RawRule>>,
    pub(super) block: Option<RawList>,
    pub(super) allow: Option<RawList>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [defaults] table")]
pub(super) struct RawDefaults {
    pub(super) ipv6_prefix: Option<Spanned<Int>>,
    pub(super) trusted_proxies: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [shield] table")]
pub(super) struct RawShield {
    pub(super) per_second: Option<Spanned<Int>>,
    pub(super) burst: Option<Spanned<Int>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[rule]] table")]
pub(super) struct RawRule {
    pub(super) name: Spanned<String>,
    pub(super) endpoint: Option<Spanned<String>>,
    pub(super) campaign: Option<Spanned<String>>,
    pub(super) key: Spanned<Vec<Spanned<String>>>,
    pub(super) limit: Spanned<Int>,
    pub(super) window: Spanned<String>,
    pub(super) count: Option<Spanned<String>>,
    pub(super) distinct: Option<Spanned<String>>,
    pub(super) mode: Option<Spanned<String>>,
    pub(super) ban: Option<Spanned<RawBan>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a ban table, e.g. { duration = \"1h\" }"
)]
pub(super) struct RawBan {
    pub(super) after: Option<Spanned<Int>>,
    pub(super) duration: Spanned<String>,
    pub(super) factor: Option<Spanned<Int>>,
    pub(super) max: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of phones, ips and devices")]
pub(super) struct RawList {
    #[serde(default)]
    pub(super) phones: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) ips: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) devices: Vec<Spanned<String>>,
}

/// An integer read for checking. Its own visitor, so that a wrong type reads
/// "expected an integer" rather than serde's "expected i64".
pub(super) struct Int(pub(super) i64);

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
