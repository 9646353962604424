//! The server's version: the scripts use Redis 7.0 commands (`EXPIREAT …
//! NX`, `SET … GET` with NX), so on an older server a claim batch would be
//! charged and then fail. No call is sent to a Redis older than
//! [`MIN_REDIS`].
//!
//! The version is read at start ([`Store::check_version`]). When Redis is
//! unreachable then, every call answers `503` ([`StoreError::VersionUnknown`])
//! and starts one check in the background (one at a time), until a check
//! answers; so no call waits for two deadlines, and none reaches a Redis that
//! is too old. Once a Redis is found too old every call answers `503`
//! ([`StoreError::TooOld`]) and the version is read again at most every
//! [`RECHECK_MS`], so an upgrade in place is followed without a restart.
//! On a cluster `INFO` is answered by every master: the oldest counts (a
//! master down then, or an `INFO` refused, leaves the version unchecked
//! rather than every call refused). Concurrent first calls on a store that
//! nobody checked (a library user's; the service checks at start) may get
//! `503` while the first one checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};

use crate::store::redis::{Result, Store, StoreError, redis_runtime};

/// The oldest Redis the scripts run on.
pub const MIN_REDIS: (u32, u32) = (7, 0);

/// How often a Redis found too old is checked again.
pub const RECHECK_MS: i64 = 10_000;

/// The server's version as far as it is known: unknown until one `INFO`
/// answers, then OK, or the too-old version (`1 << 31 | major << 16 |
/// minor`), which refuses every call.
#[derive(Debug, Default)]
pub struct VersionGate {
    state: AtomicU32,
    /// A check is under way (one at a time).
    checking: AtomicBool,
    /// A check was made (or started) at least once.
    attempted: AtomicBool,
    /// [`mono_ms`] of the last check that answered.
    checked_ms: AtomicI64,
}

impl VersionGate {
    const UNKNOWN: u32 = 0;
    const OK: u32 = 1;
    const TOO_OLD: u32 = 1 << 31;

    /// `Ok(true)`: calls may go; `Ok(false)`: not known yet.
    fn get(&self) -> std::result::Result<bool, StoreError> {
        match self.state.load(Ordering::Acquire) {
            Self::UNKNOWN => Ok(false),
            Self::OK => Ok(true),
            v => Err(StoreError::TooOld((v & !Self::TOO_OLD) >> 16, v & 0xffff)),
        }
    }

    /// Records the version read (`None`: it cannot be read, e.g. `INFO`
    /// refused by an ACL: not checked) and tells whether calls may go.
    fn learn(&self, version: Option<(u32, u32)>, now_ms: i64) -> Result<()> {
        let state = match version {
            Some(v) if v < MIN_REDIS => Self::TOO_OLD | (v.0.min(0x7fff) << 16) | v.1.min(0xffff),
            _ => Self::OK,
        };
        self.state.store(state, Ordering::Release);
        self.checked_ms.store(now_ms, Ordering::Release);
        self.get().map(|_| ())
    }
}

/// Monotonic ms since the first call (a clock step cannot stop re-checks).
fn mono_ms() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as i64
}

impl Store {
    /// Reads the server's version (`INFO server`) and records it: a Redis
    /// older than [`MIN_REDIS`] is refused ([`StoreError::TooOld`]). A
    /// single Redis unreachable: the error, and the version stays unknown.
    /// `INFO` refused (`NOPERM`, renamed away), a failed AUTH, a cluster
    /// master down, or no version line: not checked (logged). Returns the
    /// version read (`None`: not checked).
    pub async fn check_version(&self) -> Result<Option<(u32, u32)>> {
        self.version.attempted.store(true, Ordering::Release);
        let conn = self.conn();
        let info = self
            .bounded_raw(async move {
                let mut conn = conn;
                redis::cmd("INFO")
                    .arg("server")
                    .query_async::<redis::Value>(&mut conn)
                    .await
            })
            .await;
        let version = match info {
            Ok(v) => oldest_version(&v),
            // On a cluster `INFO` goes to every master: one master down
            // fails it, and must not hold up the slots of the others.
            Err(e) if e.is_unavailable() && !self.is_cluster() => return Err(e),
            // Refused (NOPERM, renamed away), a failed AUTH, a master down
            // on a cluster: not checked. The calls then fail (or not) on
            // their own, with their own error in the log.
            Err(e) => {
                tracing::warn!(error = %e, "the Redis version could not be read: not checked");
                None
            }
        };
        self.version.learn(version, mono_ms()).map(|_| version)
    }

    /// Whether a call may go to this server now: one atomic load once the
    /// version is known; until then `503`, with one check started. (The
    /// first call on a store nobody checked yet checks first itself: the
    /// service checks at start, a library user need not.)
    pub(super) async fn compatible(&self) -> Result<()> {
        match self.version.get() {
            Ok(true) => Ok(()),
            Ok(false) if !self.version.attempted.swap(true, Ordering::AcqRel) => {
                self.check_version().await.map(|_| ())
            }
            Ok(false) => {
                self.check_in_background();
                Err(StoreError::VersionUnknown)
            }
            Err(e) => {
                if mono_ms() - self.version.checked_ms.load(Ordering::Acquire) >= RECHECK_MS {
                    self.check_in_background();
                }
                Err(e)
            }
        }
    }

    /// Starts a version check unless one is under way.
    fn check_in_background(&self) {
        if self.version.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.clone();
        let gate: Arc<VersionGate> = self.version.clone();
        redis_runtime().spawn(async move {
            if let Err(e) = store.check_version().await {
                match e {
                    StoreError::TooOld(..) => tracing::error!(error = %e, "Redis refused"),
                    e => tracing::debug!(error = %e, "Redis version not read yet"),
                }
            }
            gate.checking.store(false, Ordering::Release);
        });
    }
}

/// The oldest `redis_version` in an `INFO` reply: one text from a single
/// node, or a map of node to text from a cluster (every master answers).
fn oldest_version(v: &redis::Value) -> Option<(u32, u32)> {
    use redis::Value;
    match v {
        Value::BulkString(b) => parse_version(&String::from_utf8_lossy(b)),
        Value::SimpleString(s) => parse_version(s),
        Value::VerbatimString { text, .. } => parse_version(text),
        Value::Map(pairs) => pairs.iter().filter_map(|(_, t)| oldest_version(t)).min(),
        Value::Array(items) => items.iter().filter_map(oldest_version).min(),
        _ => None,
    }
}

/// `redis_version:7.0.15` in an `INFO` text, as (7, 0).
fn parse_version(info: &str) -> Option<(u32, u32)> {
    let v = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("redis_version:"))?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    #[test]
    fn the_oldest_version_is_read_from_one_node_or_every_master() {
        let info = |v: &str| format!("# Server\r\nredis_version:{v}\r\nredis_git_sha1:0\r\n");
        assert_eq!(parse_version(&info("7.0.15")), Some((7, 0)));
        assert_eq!(parse_version("nothing"), None);
        let one = Value::BulkString(info("7.2.4").into_bytes());
        assert_eq!(oldest_version(&one), Some((7, 2)));
        let verbatim = Value::VerbatimString {
            format: redis::VerbatimFormat::Text,
            text: info("8.0.1"),
        };
        assert_eq!(oldest_version(&verbatim), Some((8, 0)));
        let cluster = Value::Map(vec![
            (
                Value::SimpleString("127.0.0.1:7000".into()),
                Value::BulkString(info("7.2.4").into_bytes()),
            ),
            (
                Value::SimpleString("127.0.0.1:7001".into()),
                Value::BulkString(info("6.2.14").into_bytes()),
            ),
        ]);
        assert_eq!(oldest_version(&cluster), Some((6, 2)));
    }

    #[test]
    fn a_redis_too_old_is_refused_from_the_moment_it_is_known() {
        let gate = VersionGate::default();
        assert!(
            matches!(gate.get(), Ok(false)),
            "unknown until INFO answers"
        );
        assert!(matches!(
            gate.learn(Some((6, 2)), 5),
            Err(StoreError::TooOld(6, 2))
        ));
        assert!(matches!(gate.get(), Err(StoreError::TooOld(6, 2))));
        assert_eq!(gate.checked_ms.load(Ordering::Acquire), 5);
        let e = gate.get().unwrap_err();
        assert!(e.is_unavailable());
        assert_eq!(
            e.to_string(),
            "Redis 6.2 is too old: stampede needs Redis 7.0 or newer"
        );
        // Upgraded in place: the next check lets calls go again.
        assert!(gate.learn(Some((7, 0)), 6).is_ok());
        assert!(matches!(gate.get(), Ok(true)));
        for ok in [Some((8, 2)), None] {
            let gate = VersionGate::default();
            assert!(gate.learn(ok, 0).is_ok(), "{ok:?}");
            assert!(matches!(gate.get(), Ok(true)));
        }
    }
}
