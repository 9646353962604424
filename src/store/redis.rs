//! The typed store: one call per use case, each a single script or command
//! under a deadline.
//!
//! The connection is one redis-rs `ConnectionManager`: a multiplexed
//! connection (every request pipelined on one socket, measured ~1.7x the
//! claims/s of a pool checkout per request) that reconnects by itself after
//! Redis restarts. Every call is bounded by `deadline`: a stalled Redis costs
//! a request at most that long, and it is answered `503 unavailable`.
//!
//! Every Redis call runs on one dedicated runtime ([`redis_runtime`]), not on
//! the caller's: a (re)connection spawns its socket driver on the runtime that
//! first polls it, and an actix worker's runtime ends when that worker does
//! (graceful shutdown stops idle workers first), which would cut the
//! connection out from under requests still draining on the other workers.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};

use crate::domain::campaign::Quota;
use crate::domain::identity::Pseudonym;
use crate::store::keys::{self, CampaignKeys};
use crate::store::scripts;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis did not answer in time; the call may or may not have run.
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis cannot be reached (refused, dropped, loading, busy).
    #[error("the store is unavailable")]
    Unavailable(#[source] RedisError),
    /// Redis answered with an error that retrying will not fix (a script
    /// error, a corrupt or wrong-type key).
    #[error("the store failed")]
    Failed(#[source] RedisError),
    /// Redis answered something the scripts never return.
    #[error("unexpected reply from the store: {0}")]
    Protocol(String),
}

impl StoreError {
    fn classify(e: RedisError) -> Self {
        let transient = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_cluster_error()
            || matches!(
                e.code(),
                Some("LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY")
            );
        if transient {
            StoreError::Unavailable(e)
        } else {
            StoreError::Failed(e)
        }
    }

    /// True when the caller should answer 503 and have the client retry.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Timeout(_) | StoreError::Unavailable(_))
    }
}

type Result<T> = std::result::Result<T, StoreError>;

/// What a claim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    Issued {
        serial: u64,
        claimed_ms: i64,
        expires_ms: i64,
    },
    NotFound,
    NotActive(String),
    SoldOut,
    Limit(Quota),
    KeyReused,
}

/// What a redemption did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeemOutcome {
    Redeemed {
        order_id: String,
        redeemed_ms: i64,
        discount: i64,
        store_id: String,
    },
    InvalidCode,
    AlreadyRedeemed,
    Expired {
        expires_ms: i64,
    },
    WrongClaimer,
    KeyReused,
}

/// What a rollback did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackOutcome {
    RolledBack,
    NotRedeemed,
    OtherOrder,
    InvalidCode,
}

/// What creating a campaign did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    Replay(String),
    KeyReused,
    Exists,
}

/// A campaign's stored state.
#[derive(Debug, Clone)]
pub struct StoredCampaign {
    pub spec_json: String,
    pub state: String,
    pub no: u32,
    pub issued: i64,
    pub redeemed: i64,
}

/// The read-only facts about one code.
#[derive(Debug, Clone, Default)]
pub struct CodeState {
    pub campaign_state: Option<String>,
    /// The claim's expiry (ms; 0: never), if the code was issued.
    pub claim_expires_ms: Option<i64>,
    pub redeemed: bool,
}

/// Idempotency of one script call: the record's key digest, the request's
/// fingerprint, how long the record lives and whether rejections are kept.
#[derive(Debug, Clone)]
pub struct Idem {
    pub digest: String,
    pub fingerprint: String,
    pub ttl_secs: u64,
    pub keep_rejections: bool,
}

/// The process-wide runtime all Redis I/O runs on (one thread: the work per
/// call is small, and one thread keeps the multiplexed socket's writes in order
/// without contention). It is never dropped.
pub fn redis_runtime() -> &'static tokio::runtime::Handle {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("stampede-redis")
            .enable_all()
            .build()
            .expect("the Redis runtime starts")
    })
    .handle()
}

/// The Redis-backed store.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    deadline: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("deadline", &self.deadline)
            .finish()
    }
}

fn parse<T: std::str::FromStr>(s: Option<&String>, what: &str) -> Result<T> {
    s.and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Protocol(format!("bad {what}")))
}

impl Store {
    /// A store on `url`; connects lazily and reconnects by itself, so the
    /// service starts (not ready) even while Redis is still down.
    pub fn open(url: &str, deadline: Duration) -> Result<Self> {
        // `rediss://` uses rustls; one crypto provider for the process
        // (an error only means one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _in_redis_runtime = redis_runtime().enter();
        let client = redis::Client::open(url).map_err(StoreError::Failed)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(deadline))
            .set_connection_timeout(Some(deadline))
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(2);
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(StoreError::Failed)?;
        Ok(Self { conn, deadline })
    }

    /// Runs `fut` on the Redis runtime, bounded by the deadline.
    async fn bounded<T: Send + 'static>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>> + Send + 'static,
    ) -> Result<T> {
        let task = redis_runtime().spawn(fut);
        match tokio::time::timeout(self.deadline, task).await {
            Ok(Ok(r)) => r.map_err(StoreError::classify),
            Ok(Err(join)) => Err(StoreError::Protocol(format!("store task failed: {join}"))),
            Err(_) => Err(StoreError::Timeout(self.deadline)),
        }
    }

    async fn script(
        &self,
        script: &'static Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Vec<String>> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        let mut conn = self.conn.clone();
        self.bounded(async move { inv.invoke_async::<Vec<String>>(&mut conn).await })
            .await
    }

    /// PING, for readiness.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        self.bounded(async move { redis::cmd("PING").query_async::<String>(&mut conn).await })
            .await
            .map(|_| ())
    }

    /// Loads every script, so the first claims after start pay no NOSCRIPT
    /// round trip. Failure is not fatal: scripts load on demand too.
    pub async fn preload_scripts(&self) -> Result<()> {
        for s in scripts::all() {
            let mut conn = self.conn.clone();
            self.bounded(async move { s.load_async(&mut conn).await })
                .await?;
        }
        Ok(())
    }

    /// Hands out the next campaign number.
    pub async fn next_campaign_no(&self) -> Result<i64> {
        let mut conn = self.conn.clone();
        self.bounded(async move {
            redis::cmd("INCR")
                .arg(keys::campaign_seq())
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
    }

    /// Records which campaign a number belongs to. Written before the
    /// campaign itself, so no code can exist whose number does not resolve.
    pub async fn bind_campaign_no(&self, no: u32, id: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let (key, id) = (keys::campaign_by_no(no), id.to_owned());
        self.bounded(async move {
            redis::cmd("SET")
                .arg(key)
                .arg(id)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    pub async fn campaign_id_by_no(&self, no: u32) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        let key = keys::campaign_by_no(no);
        self.bounded(async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut conn)
                .await
        })
        .await
    }

    pub async fn create_campaign(
        &self,
        keys: &CampaignKeys,
        idem: Option<&Idem>,
        body: &str,
        fields: &[(&str, String)],
    ) -> Result<CreateOutcome> {
        let (digest, fp, ttl) = match idem {
            Some(i) => (
                i.digest.as_str(),
                i.fingerprint.as_str(),
                i.ttl_secs.to_string(),
            ),
            None => ("none", "", "1".to_owned()),
        };
        let idem_key = keys.idempotency(digest);
        let meta = keys.meta();
        let mut args: Vec<&str> = vec![fp, &ttl, body];
        for (k, v) in fields {
            args.push(k);
            args.push(v);
        }
        let out = self
            .script(&scripts::CREATE_CAMPAIGN, &[&meta, &idem_key], &args)
            .await?;
        match out.first().map(String::as_str) {
            Some("ok") => Ok(CreateOutcome::Created),
            Some("replay") => Ok(CreateOutcome::Replay(
                out.get(1).cloned().unwrap_or_default(),
            )),
            Some("reused") => Ok(CreateOutcome::KeyReused),
            Some("exists") => Ok(CreateOutcome::Exists),
            _ => Err(StoreError::Protocol(format!("create_campaign: {out:?}"))),
        }
    }

    pub async fn campaign(&self, keys: &CampaignKeys) -> Result<Option<StoredCampaign>> {
        let mut conn = self.conn.clone();
        let meta = keys.meta();
        let v: Vec<Option<String>> = self
            .bounded(async move {
                redis::cmd("HMGET")
                    .arg(meta)
                    .arg(&["spec", "state", "no", "issued", "redeemed"])
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let [spec, state, no, issued, redeemed] = <[Option<String>; 5]>::try_from(v)
            .map_err(|v| StoreError::Protocol(format!("HMGET: {v:?}")))?;
        let Some(spec_json) = spec else {
            return Ok(None);
        };
        Ok(Some(StoredCampaign {
            spec_json,
            state: state.unwrap_or_default(),
            no: parse(no.as_ref(), "campaign number")?,
            issued: parse(issued.as_ref(), "issued")?,
            redeemed: parse(redeemed.as_ref(), "redeemed")?,
        }))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn claim(
        &self,
        keys: &CampaignKeys,
        now_ms: i64,
        phone: &Pseudonym,
        device: &Pseudonym,
        ip: &Pseudonym,
        idem: &Idem,
    ) -> Result<ClaimOutcome> {
        let k = [
            keys.meta(),
            keys.quota_phone(),
            keys.quota_device(),
            keys.quota_ip(),
            keys.claims(),
            keys.idempotency(&idem.digest),
        ];
        let (now, ttl) = (now_ms.to_string(), idem.ttl_secs.to_string());
        let keep = if idem.keep_rejections { "1" } else { "0" };
        let out = self
            .script(
                &scripts::CLAIM,
                &k.iter().map(String::as_str).collect::<Vec<_>>(),
                &[
                    &now,
                    phone.as_str(),
                    device.as_str(),
                    ip.as_str(),
                    &idem.fingerprint,
                    &ttl,
                    keep,
                ],
            )
            .await?;
        let bad = || StoreError::Protocol(format!("claim: {out:?}"));
        Ok(match out.first().map(String::as_str) {
            Some("ok") => ClaimOutcome::Issued {
                serial: parse(out.get(1), "serial")?,
                claimed_ms: parse(out.get(2), "claimed_ms")?,
                expires_ms: parse(out.get(3), "expires_ms")?,
            },
            Some("not_found") => ClaimOutcome::NotFound,
            Some("not_active") => ClaimOutcome::NotActive(out.get(1).cloned().ok_or_else(bad)?),
            Some("sold_out") => ClaimOutcome::SoldOut,
            Some("limit") => {
                ClaimOutcome::Limit(out.get(1).and_then(|q| Quota::parse(q)).ok_or_else(bad)?)
            }
            Some("reused") => ClaimOutcome::KeyReused,
            _ => return Err(bad()),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn redeem(
        &self,
        keys: &CampaignKeys,
        now_ms: i64,
        serial: u64,
        order_id: &str,
        discount: i64,
        store_id: &str,
        claimer: Option<&Pseudonym>,
        idem: &Idem,
    ) -> Result<RedeemOutcome> {
        let k = [
            keys.meta(),
            keys.claims(),
            keys.redemptions(),
            keys.idempotency(&idem.digest),
        ];
        let (now, serial, discount, ttl) = (
            now_ms.to_string(),
            serial.to_string(),
            discount.to_string(),
            idem.ttl_secs.to_string(),
        );
        let keep = if idem.keep_rejections { "1" } else { "0" };
        let out = self
            .script(
                &scripts::REDEEM,
                &k.iter().map(String::as_str).collect::<Vec<_>>(),
                &[
                    &now,
                    &serial,
                    order_id,
                    &discount,
                    store_id,
                    &idem.fingerprint,
                    &ttl,
                    keep,
                    claimer.map_or("", Pseudonym::as_str),
                ],
            )
            .await?;
        let bad = || StoreError::Protocol(format!("redeem: {out:?}"));
        Ok(match out.first().map(String::as_str) {
            Some("ok") => RedeemOutcome::Redeemed {
                order_id: out.get(1).cloned().ok_or_else(bad)?,
                redeemed_ms: parse(out.get(2), "redeemed_ms")?,
                discount: parse(out.get(3), "discount")?,
                store_id: out.get(4).cloned().unwrap_or_default(),
            },
            Some("invalid_code") => RedeemOutcome::InvalidCode,
            Some("already_redeemed") => RedeemOutcome::AlreadyRedeemed,
            Some("expired") => RedeemOutcome::Expired {
                expires_ms: parse(out.get(1), "expires_ms")?,
            },
            Some("wrong_claimer") => RedeemOutcome::WrongClaimer,
            Some("reused") => RedeemOutcome::KeyReused,
            _ => return Err(bad()),
        })
    }

    pub async fn rollback(
        &self,
        keys: &CampaignKeys,
        now_ms: i64,
        serial: u64,
        order_id: &str,
    ) -> Result<RollbackOutcome> {
        let k = [keys.meta(), keys.redemptions(), keys.rollbacks()];
        let (now, serial) = (now_ms.to_string(), serial.to_string());
        let out = self
            .script(
                &scripts::ROLLBACK,
                &k.iter().map(String::as_str).collect::<Vec<_>>(),
                &[&now, &serial, order_id],
            )
            .await?;
        match (
            out.first().map(String::as_str),
            out.get(1).map(String::as_str),
        ) {
            (Some("ok"), Some("1")) => Ok(RollbackOutcome::RolledBack),
            (Some("ok"), Some("0")) => Ok(RollbackOutcome::NotRedeemed),
            (Some("other_order"), _) => Ok(RollbackOutcome::OtherOrder),
            (Some("invalid_code"), _) => Ok(RollbackOutcome::InvalidCode),
            _ => Err(StoreError::Protocol(format!("rollback: {out:?}"))),
        }
    }

    pub async fn code_state(&self, keys: &CampaignKeys, serial: u64) -> Result<CodeState> {
        let k = [keys.meta(), keys.claims(), keys.redemptions()];
        let serial = serial.to_string();
        let out = self
            .script(
                &scripts::INSPECT_CODE,
                &k.iter().map(String::as_str).collect::<Vec<_>>(),
                &[&serial],
            )
            .await?;
        // A claim record is 'phone|device|ip|claimed_ms|expires_ms'.
        let claim_expires_ms = match out.get(1).filter(|s| !s.is_empty()) {
            None => None,
            Some(rec) => Some(
                rec.rsplit('|')
                    .next()
                    .and_then(|e| e.parse().ok())
                    .ok_or_else(|| StoreError::Protocol("corrupt claim record".into()))?,
            ),
        };
        Ok(CodeState {
            campaign_state: out.first().filter(|s| !s.is_empty()).cloned(),
            claim_expires_ms,
            redeemed: out.get(2).is_some_and(|s| !s.is_empty()),
        })
    }
}
