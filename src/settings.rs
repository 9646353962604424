//! Layered configuration: built-in defaults, then an optional TOML file
//! (`--config FILE` or `STAMPEDE_CONFIG`), then `STAMPEDE_*` environment
//! variables (`STAMPEDE_REDIS_URL`, `STAMPEDE_MAX_BODY_BYTES`, ...).
//! [`Settings::validate`] turns it into [`Validated`] or the reason it is bad;
//! `stampede check-config FILE` runs exactly that.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::domain::secret::Secret;

/// Every setting, with its default. Durations are milliseconds or seconds as
/// the name says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address to listen on.
    pub listen: String,
    /// Redis URL; unset runs the embedded `redis-server`.
    pub redis_url: Option<String>,
    /// Where the embedded Redis keeps its AOF, and where a generated secret is kept.
    pub data_dir: PathBuf,
    /// The `redis-server` binary the embedded default runs.
    pub redis_server: String,
    /// `always` (default: nothing acknowledged is lost) or `everysec`.
    pub redis_appendfsync: String,
    /// Acknowledge a claim only once this many replicas have its write
    /// (`WAIT` after each batched claim call; 0: off). Needs `redis_url`.
    pub redis_wait_replicas: u32,
    /// How long a claim waits for those replicas (less than the deadline).
    pub redis_wait_timeout_ms: u64,
    /// Wait with `WAITAOF 1 <redis_wait_replicas>` instead of `WAIT`: a
    /// claim is acknowledged once the master's AOF (and that many
    /// replicas') fsynced it. Redis 7.2+: refused at start on older servers.
    pub redis_wait_aof: bool,
    /// Master secret (>= 16 bytes) for code tags and identity pseudonyms.
    /// Unset: read from, or generated once into, `<data_dir>/secret`.
    pub secret: Option<String>,
    /// `name:role:secret` entries, comma-separated; `secret` may be
    /// `sha256:<hex>` to keep only a hash in the file.
    pub api_keys: String,
    /// Region for national phone numbers (ISO 3166 alpha-2).
    pub default_region: String,
    /// Longest any Redis call may take before the request is answered 503.
    pub store_deadline_ms: u64,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted.
    pub max_json_depth: usize,
    /// Largest total size of request headers (actix itself caps at 128 KiB / 96 headers).
    pub max_header_bytes: usize,
    /// Time to receive a whole request body (slow-loris bodies).
    pub body_timeout_ms: u64,
    /// Time to receive the request head.
    pub header_timeout_ms: u64,
    /// How long an `Idempotency-Key` answer is kept.
    pub idempotency_ttl_secs: u64,
    /// How long a server-made request id guards against a transport re-send.
    pub request_dedupe_ttl_secs: u64,
    /// Time in-flight requests get to finish on SIGTERM/SIGINT.
    pub shutdown_grace_secs: u64,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// IPv6 clients are counted per this prefix.
    pub ipv6_prefix: u8,
    /// The security team's rules file (LIMITS.md); watched and hot-reloaded.
    pub limits_file: Option<PathBuf>,
    /// Let webhooks go to loopback `http` URLs (tests, local receivers).
    pub webhook_allow_loopback: bool,
    /// Wait after a failed webhook delivery; doubles per attempt, up to 5 minutes.
    pub webhook_retry_base_ms: u64,
    /// How long an undelivered webhook event held by another replica (or a
    /// process that died) sits idle before this one takes it over. Keep it
    /// above the 5 s a delivery attempt may take.
    pub webhook_claim_idle_ms: u64,
    /// HTTP worker threads; default: one per core.
    pub workers: Option<usize>,
    /// `text` or `json`.
    pub log_format: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            redis_url: None,
            data_dir: PathBuf::from("./data"),
            redis_server: "redis-server".into(),
            redis_appendfsync: "always".into(),
            redis_wait_replicas: 0,
            redis_wait_timeout_ms: 200,
            redis_wait_aof: false,
            secret: None,
            api_keys: String::new(),
            default_region: "CN".into(),
            store_deadline_ms: 1000,
            max_body_bytes: 16 * 1024,
            max_json_depth: 16,
            max_header_bytes: 16 * 1024,
            body_timeout_ms: 5000,
            header_timeout_ms: 5000,
            idempotency_ttl_secs: 24 * 3600,
            request_dedupe_ttl_secs: 60,
            shutdown_grace_secs: 10,
            trusted_proxies: Vec::new(),
            ipv6_prefix: 64,
            limits_file: None,
            webhook_allow_loopback: false,
            webhook_retry_base_ms: 1000,
            webhook_claim_idle_ms: 30_000,
            workers: None,
            log_format: "text".into(),
        }
    }
}

/// An API key's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Campaign management and everything a client may do.
    Admin,
    /// Claim, redeem, validate.
    Client,
    /// Read-only: campaigns, stats, audit, the rules in force.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Client => "client",
            Role::Viewer => "viewer",
        }
    }
}

/// One configured API key; only the SHA-256 of its secret is kept.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    pub role: Role,
    pub secret_sha256: [u8; 32],
}

/// Settings that passed validation, in the types the service uses.
#[derive(Debug, Clone)]
pub struct Validated {
    pub raw: Settings,
    pub listen: SocketAddr,
    pub api_keys: Vec<ApiKey>,
    pub region: phonenumber::country::Id,
    pub store_deadline: Duration,
    pub body_timeout: Duration,
    pub header_timeout: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{}", describe(.0))]
    Load(#[from] Box<figment::Error>),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// figment's errors, one line each, as `key: reason (source)`: without the
/// profile prefix (`default.`) its own Display puts on every key.
fn describe(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let from = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(src) => format!(" (from {src})"),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            let unknown = matches!(e.kind, figment::error::Kind::UnknownField(..));
            let kind = match &e.kind {
                figment::error::Kind::UnknownField(f, expected) => format!(
                    "unknown setting `{f}`; the settings are {}",
                    expected.join(", ")
                ),
                k => k.to_string(),
            };
            if unknown || key.is_empty() || key == "default" {
                format!("{kind}{from}")
            } else {
                format!("{key}: {kind}{from}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line that sets top-level `key`, if any.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// The key set on 1-based `line`, if that line is `key = ...`.
fn key_on_line(text: &str, line: usize) -> Option<&str> {
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let (k, _) = l.split_once('=')?;
    let k = k.trim();
    (!k.is_empty() && !k.starts_with('[')).then_some(k)
}

/// Checks a service config file's text as `check-config` does: the first
/// problem as `line N: key: reason`.
pub fn check_text(text: &str) -> Result<Validated, String> {
    let settings: Settings = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        let message = e.message().trim().replace('\n', " ");
        match (line, line.and_then(|l| key_on_line(text, l))) {
            (Some(l), Some(k)) if !message.contains(k) => format!("line {l}: {k}: {message}"),
            (Some(l), _) => format!("line {l}: {message}"),
            (None, _) => message,
        }
    })?;
    settings.validate().map_err(|e| match &e {
        SettingsError::Invalid { field, message } => match line_of_key(text, field) {
            Some(l) => format!("line {l}: {field}: {message}"),
            None => format!("{field}: {message}"),
        },
        SettingsError::Load(_) => e.to_string(),
    })
}

fn invalid(field: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        field,
        message: message.into(),
    }
}

impl Settings {
    /// Defaults <- `file` <- `STAMPEDE_*` environment.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        fig.merge(Env::prefixed("STAMPEDE_").ignore(&["config", "url", "key"]))
            .extract()
            .map_err(|e| SettingsError::Load(Box::new(e)))
    }

    pub fn validate(self) -> Result<Validated, SettingsError> {
        let listen: SocketAddr = self.listen.parse().map_err(|e| {
            invalid(
                "listen",
                format!("{e}: expected host:port, e.g. 127.0.0.1:8080"),
            )
        })?;
        let api_keys = parse_api_keys(&self.api_keys)?;
        if api_keys.is_empty() && !listen.ip().is_loopback() {
            return Err(invalid(
                "api_keys",
                "no API key is configured, so the service runs open, and it may only listen on loopback then",
            ));
        }
        let region = self
            .default_region
            .parse::<phonenumber::country::Id>()
            .map_err(|_| invalid("default_region", "an ISO 3166 alpha-2 region, e.g. CN"))?;
        if self.redis_wait_aof
            && (self.redis_wait_timeout_ms == 0
                || self.redis_wait_timeout_ms >= self.store_deadline_ms)
        {
            return Err(invalid(
                "redis_wait_timeout_ms",
                "between 1 and store_deadline_ms - 1",
            ));
        }
        if self.redis_wait_replicas > 0 {
            if self.redis_url.is_none() {
                return Err(invalid(
                    "redis_wait_replicas",
                    "the embedded Redis has no replicas: set redis_url",
                ));
            }
            if self.redis_wait_replicas > 16 {
                return Err(invalid("redis_wait_replicas", "at most 16"));
            }
            if self.redis_wait_timeout_ms == 0
                || self.redis_wait_timeout_ms >= self.store_deadline_ms
            {
                return Err(invalid(
                    "redis_wait_timeout_ms",
                    "between 1 and store_deadline_ms - 1",
                ));
            }
        }
        if !["always", "everysec", "no"].contains(&self.redis_appendfsync.as_str()) {
            return Err(invalid("redis_appendfsync", "always, everysec or no"));
        }
        if let Some(s) = &self.secret {
            Secret::new(s.as_bytes().to_vec()).map_err(|m| invalid("secret", m))?;
        }
        if let Some(url) = &self.redis_url {
            match crate::store::conn::cluster_seeds(url) {
                Some(seeds) => {
                    seeds.map_err(|e| invalid("redis_url", e))?;
                }
                None => {
                    redis::Client::open(url.as_str())
                        .map_err(|e| invalid("redis_url", e.to_string()))?;
                }
            }
        }
        let ranges: [(&'static str, u64, u64, u64); 8] = [
            ("store_deadline_ms", self.store_deadline_ms, 10, 60_000),
            ("body_timeout_ms", self.body_timeout_ms, 100, 300_000),
            ("header_timeout_ms", self.header_timeout_ms, 100, 300_000),
            (
                "idempotency_ttl_secs",
                self.idempotency_ttl_secs,
                86_400,
                30 * 86_400,
            ),
            (
                "request_dedupe_ttl_secs",
                self.request_dedupe_ttl_secs,
                10,
                86_400,
            ),
            ("shutdown_grace_secs", self.shutdown_grace_secs, 0, 600),
            (
                "webhook_retry_base_ms",
                self.webhook_retry_base_ms,
                10,
                300_000,
            ),
            (
                "webhook_claim_idle_ms",
                self.webhook_claim_idle_ms,
                100,
                3_600_000,
            ),
        ];
        for (field, v, lo, hi) in ranges {
            if !(lo..=hi).contains(&v) {
                return Err(invalid(field, format!("must be between {lo} and {hi}")));
            }
        }
        if !(64..=10 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(invalid("max_body_bytes", "must be between 64 and 10485760"));
        }
        if !(2..=128).contains(&self.max_json_depth) {
            return Err(invalid("max_json_depth", "must be between 2 and 128"));
        }
        if !(1024..=128 * 1024).contains(&self.max_header_bytes) {
            return Err(invalid(
                "max_header_bytes",
                "must be between 1024 and 131072",
            ));
        }
        if !(32..=128).contains(&self.ipv6_prefix) {
            return Err(invalid("ipv6_prefix", "must be between 32 and 128"));
        }
        if !["text", "json"].contains(&self.log_format.as_str()) {
            return Err(invalid("log_format", "text or json"));
        }
        Ok(Validated {
            listen,
            api_keys,
            region,
            store_deadline: Duration::from_millis(self.store_deadline_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            raw: self,
        })
    }
}

fn parse_api_keys(s: &str) -> Result<Vec<ApiKey>, SettingsError> {
    use sha2::{Digest, Sha256};
    let mut keys: Vec<ApiKey> = Vec::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let mut parts = entry.splitn(3, ':');
        let (Some(name), Some(role), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("api_keys", "each entry is name:role:secret"));
        };
        let role = match role {
            "admin" => Role::Admin,
            "client" => Role::Client,
            "viewer" => Role::Viewer,
            _ => {
                return Err(invalid(
                    "api_keys",
                    format!("key {name}: role is admin, client or viewer"),
                ));
            }
        };
        if name.is_empty() || !crate::domain::error::is_visible_ascii(name) {
            return Err(invalid("api_keys", "a key name is visible ASCII"));
        }
        let secret_sha256: [u8; 32] = match secret.strip_prefix("sha256:") {
            Some(h) => hex::decode(h)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    invalid(
                        "api_keys",
                        format!("key {name}: sha256: takes 64 hex digits"),
                    )
                })?,
            None if secret.len() >= 8 => Sha256::digest(secret.as_bytes()).into(),
            None => {
                return Err(invalid(
                    "api_keys",
                    format!("key {name}: secrets are at least 8 characters"),
                ));
            }
        };
        if keys
            .iter()
            .any(|k| k.name == name || k.secret_sha256 == secret_sha256)
        {
            return Err(invalid(
                "api_keys",
                format!("key {name}: names and secrets must be unique"),
            ));
        }
        keys.push(ApiKey {
            name: name.to_owned(),
            role,
            secret_sha256,
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_open_only_on_loopback() {
        assert!(Settings::default().validate().is_ok());
        let s = Settings {
            listen: "0.0.0.0:8080".into(),
            ..Settings::default()
        };
        assert!(s.validate().is_err());
    }

    #[test]
    fn redis_urls_of_every_documented_scheme_are_accepted() {
        for url in [
            "redis://127.0.0.1:6379",
            "rediss://redis.example:6380",
            "redis+unix:///run/redis.sock",
        ] {
            let s = Settings {
                redis_url: Some(url.into()),
                ..Settings::default()
            };
            assert!(s.validate().is_ok(), "{url}");
        }
        let s = Settings {
            redis_url: Some("http://nope".into()),
            ..Settings::default()
        };
        assert!(s.validate().is_err());
    }

    #[test]
    fn api_keys_plain_and_hashed() {
        let keys = parse_api_keys(
            "alice:admin:s3cret-long,shop:client:sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].role, Role::Admin);
        assert_eq!(keys[1].role, Role::Client);
        assert!(parse_api_keys("bob:root:whatever1").is_err());
        assert!(parse_api_keys("bob:admin").is_err());
        assert!(parse_api_keys("a:admin:same-secret,b:client:same-secret").is_err());
    }
}
