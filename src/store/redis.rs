//! The connection: one redis-rs `ConnectionManager` under a deadline, and the
//! error classes every store call ends in. The use cases are in the sibling
//! modules (`campaigns`, `claims`, `coupons`, `rules`), each an `impl Store`
//! block.
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
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::store::conn::{Conn, LazyCluster, cluster_seeds};
use redis::{RedisError, Script};

use crate::store::batch::Batcher;
use crate::store::claims::ClaimCall;
use crate::store::rules::RulesCall;
use crate::store::scripts;
use crate::store::version::{MIN_REDIS, VersionGate};

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
    /// A script refused one call's keys (a wrong-type key, a corrupt
    /// counter), having written nothing for it.
    #[error("the store refused a call: {0}")]
    Script(String),
    /// Redis answered something the scripts never return.
    #[error("unexpected reply from the store: {0}")]
    Protocol(String),
    /// The Redis server is older than the scripts need ([`MIN_REDIS`]):
    /// nothing is sent to it.
    #[error("Redis {0}.{1} is too old: stampede needs Redis {min0}.{min1} or newer", min0 = MIN_REDIS.0, min1 = MIN_REDIS.1)]
    TooOld(u32, u32),
    /// The server's version is not known yet (Redis was unreachable at
    /// start): no call is sent until it is (`store::version`).
    #[error("the store's version is being checked; retry")]
    VersionUnknown,
}

impl StoreError {
    pub(super) fn classify(e: RedisError) -> Self {
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
        matches!(
            self,
            StoreError::Timeout(_)
                | StoreError::Unavailable(_)
                | StoreError::TooOld(..)
                | StoreError::VersionUnknown
        )
    }
}

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

/// How much of a call's deadline is kept back from the script's own
/// deadline: the time the reply may take to reach the service (a fifth of
/// the deadline, 10..=200 ms). A script Redis starts within the deadline
/// less this margin is answered before the service gives up.
pub fn deadline_margin(deadline: Duration) -> Duration {
    (deadline / 5).clamp(Duration::from_millis(10), Duration::from_millis(200))
}

/// How long a reply is still awaited after its caller's deadline passed.
pub fn late_reply_window(deadline: Duration) -> Duration {
    (deadline * 10).max(Duration::from_secs(10))
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
    conn: Conn,
    deadline: Duration,
    /// Replicas a claim batch waits for, and how long (`WAIT`).
    pub(super) wait: Option<(u32, u64)>,
    /// The wait is `WAITAOF 1 <replicas>`: the master's AOF fsync too.
    pub(super) wait_aof: bool,
    /// The claims queued per campaign (`store::batch`).
    pub(super) claims: Arc<Batcher<ClaimCall>>,
    /// The rule checks queued per hash tag.
    pub(super) rules: Arc<Batcher<RulesCall>>,
    /// What is known of the server's version ([`Store::compatible`]).
    pub(super) version: Arc<VersionGate>,
    /// The server refused the claim library (`store::scripts::Library`).
    pub(super) functions_refused: Arc<scripts::Refused>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// A number (or other value) from a script's reply.
pub(super) fn parse<T: std::str::FromStr, S: AsRef<str> + ?Sized>(
    s: Option<&S>,
    what: &str,
) -> Result<T> {
    s.and_then(|s| s.as_ref().parse().ok())
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
        if let Some(seeds) = cluster_seeds(url) {
            let seeds = seeds.map_err(|e| {
                StoreError::Failed(RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "bad cluster URL",
                    e,
                )))
            })?;
            let conn = LazyCluster::new(&seeds, deadline, late_reply_window(deadline))
                .map_err(StoreError::Failed)?;
            return Ok(Self {
                conn: Conn::Cluster(conn),
                deadline,
                wait: None,
                wait_aof: false,
                claims: Arc::default(),
                rules: Arc::default(),
                version: Arc::default(),
                functions_refused: Arc::default(),
            });
        }
        let client = redis::Client::open(url).map_err(StoreError::Failed)?;
        // The caller's deadline is kept by `bounded`; the connection waits
        // longer for a reply, so a claim whose reply comes after its 503 is
        // still seen and taken back (`Store::script_or_orphan`). Past this,
        // a reply is dropped and such a claim's outcome stays unknown.
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(late_reply_window(deadline)))
            .set_connection_timeout(Some(deadline))
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(2);
        let conn =
            ConnectionManager::new_lazy_with_config(client, config).map_err(StoreError::Failed)?;
        Ok(Self {
            conn: Conn::Single(conn),
            deadline,
            wait: None,
            wait_aof: false,
            claims: Arc::default(),
            rules: Arc::default(),
            version: Arc::default(),
            functions_refused: Arc::default(),
        })
    }

    /// Acknowledge claims only once `replicas` replicas have them (`WAIT`
    /// after each batched claim call, at most `timeout_ms`).
    pub fn with_replica_wait(mut self, replicas: u32, timeout_ms: u64) -> Self {
        self.wait = (replicas > 0).then_some((replicas, timeout_ms));
        self
    }

    /// Acknowledge claims only once the master's AOF and `replicas`
    /// replicas' have them on disk (`WAITAOF 1 replicas timeout_ms` after
    /// each batched claim call; Redis 7.2+, see [`Store::supports_waitaof`]).
    pub fn with_aof_wait(mut self, replicas: u32, timeout_ms: u64) -> Self {
        self.wait = Some((replicas, timeout_ms));
        self.wait_aof = true;
        self
    }

    /// Waits after writes to the campaign (or shard) whose meta key is
    /// `meta`, as the durability setting says (`WAIT` or `WAITAOF`, after a
    /// write to its fence key: [`Conn::wait_replicas`]): true when it was
    /// confirmed as asked.
    pub(super) async fn wait_durable(&self, conn: &Conn, meta: &str) -> Result<bool> {
        let Some((replicas, timeout_ms)) = self.wait else {
            return Ok(true);
        };
        let fence = crate::store::keys::fence_of(meta);
        let got = if self.wait_aof {
            conn.wait_aof(&fence, replicas, timeout_ms).await
        } else {
            conn.wait_replicas(&fence, replicas, timeout_ms).await
        };
        let got = got.map_err(StoreError::classify)?;
        Ok(got >= i64::from(replicas))
    }

    /// Whether the server knows `WAITAOF` (Redis 7.2+): `COMMAND INFO`
    /// answers nil for a command it does not have.
    pub async fn supports_waitaof(&self) -> Result<bool> {
        let mut cmd = redis::cmd("COMMAND");
        cmd.arg("INFO").arg("WAITAOF");
        let v: Vec<redis::Value> = self.query(cmd).await?;
        Ok(v.first().is_some_and(|v| !matches!(v, redis::Value::Nil)))
    }

    /// The server's `appendfsync` (`CONFIG GET`; `None` where CONFIG is
    /// refused, as on some managed services).
    pub async fn appendfsync(&self) -> Option<String> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("appendfsync");
        let v: Vec<String> = self.query(cmd).await.ok()?;
        v.get(1).cloned()
    }

    /// A handle on the connection (a clone: cheap).
    pub(super) fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// Whether this store is a Redis Cluster: keys of different hash tags
    /// then go in separate calls (a single node runs one call for all of a
    /// request's rules, and a claim's rules in the claim's own call).
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// How long a call may take before it is answered `503`.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The wall-clock time (unix ms, Redis `TIME`) after which a charging
    /// script that starts now must refuse to charge: this call's deadline
    /// less [`deadline_margin`] for the reply's way back. It assumes the
    /// service's and Redis's clocks differ by less than that margin (the
    /// same host: no skew at all; see [`Store::clock_skew_ms`]).
    pub fn script_deadline_ms(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        now + (self.deadline - deadline_margin(self.deadline)).as_millis() as i64
    }

    /// Redis's clock minus this process's, in ms (from `TIME`, corrected by
    /// half the round trip), for the start-up check of the deadline's clock
    /// assumption.
    pub async fn clock_skew_ms(&self) -> Result<i64> {
        let wall = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64)
        };
        let before = wall();
        let (s, us): (i64, i64) = self.query(redis::cmd("TIME")).await?;
        let after = wall();
        Ok((s * 1_000_000 + us - (before + after) / 2) / 1000)
    }

    /// Runs `fut` on the Redis runtime, bounded by the deadline, once the
    /// server is known not to be too old ([`Store::compatible`]).
    pub(super) async fn bounded<T: Send + 'static>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>> + Send + 'static,
    ) -> Result<T> {
        self.compatible().await?;
        self.bounded_raw(fut).await
    }

    /// [`Store::bounded`] without the version check.
    pub(super) async fn bounded_raw<T: Send + 'static>(
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

    /// Runs a script (EVALSHA, loading it on NOSCRIPT) whose reply is a flat array of strings.
    pub(super) async fn script(
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

    /// Runs one command.
    pub(super) async fn query<T: redis::FromRedisValue + Send + 'static>(
        &self,
        cmd: redis::Cmd,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        self.bounded(async move { cmd.query_async::<T>(&mut conn).await })
            .await
    }

    /// PING, for readiness.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        self.bounded(async move { redis::cmd("PING").query_async::<String>(&mut conn).await })
            .await
            .map(|_| ())
    }

    /// Loads every script and the claim library, so the first claims after
    /// start pay no NOSCRIPT round trip. Failure is not fatal: scripts load
    /// on demand too.
    pub async fn preload_scripts(&self) -> Result<()> {
        for s in scripts::all() {
            let mut conn = self.conn.clone();
            self.bounded(async move { s.load_async(&mut conn).await })
                .await?;
        }
        let (mut conn, refused) = (self.conn.clone(), self.functions_refused.clone());
        self.bounded(async move { scripts::CLAIM_LIB.load(&refused, &mut conn).await })
            .await?;
        if !self
            .functions_refused
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let mut conn = self.conn.clone();
            match self
                .bounded(async move { scripts::CLAIM_LIB.drop_others(&mut conn).await })
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(libraries = n, "deleted other versions' claim libraries"),
                Err(e) => tracing::debug!(error = %e, "could not list the function libraries"),
            }
        }
        Ok(())
    }
}
