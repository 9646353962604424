//! Building and running the service. [`Services::build`] makes everything
//! but HTTP (the embedded Redis when no URL is set, the secret, the store, the
//! use cases, the anti-abuse guard), for tests, a CLI and background workers;
//! [`Application`] builds on it and binds the HTTP server (port 0 in tests).

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use actix_web::dev::{Server, ServerHandle};
use actix_web::web;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::domain::clock::Clock;
use crate::domain::code::CodeKey;
use crate::domain::identity::Pseudonymizer;
use crate::domain::secret::Secret;
use crate::domain::webhook::UrlPolicy;
use crate::guard::Guard;
use crate::http::AppState;
use crate::http::body::BodyLimits;
use crate::service::bulk::BulkService;
use crate::service::campaigns::CampaignService;
use crate::service::catalog::Catalog;
use crate::service::claims::ClaimService;
use crate::service::idempotency::{IdemTtls, Idempotency};
use crate::service::lifecycle::LifecycleService;
use crate::service::redemptions::RedemptionService;
use crate::service::reports::ReportService;
use crate::settings::Validated;
use crate::store::Store;
use crate::store::managed::{ManagedConfig, ManagedError, ManagedRedis};
use crate::worker::webhooks::{WebhookConfig, Webhooks};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Managed(#[from] ManagedError),
    #[error("secret: {0}")]
    Secret(String),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("rules file: {0}")]
    Limits(String),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("durability: {0}")]
    Durability(String),
}

/// Everything the service is, without HTTP.
pub struct Services {
    pub settings: Validated,
    pub clock: Arc<dyn Clock>,
    pub store: Store,
    pub campaigns: CampaignService,
    pub claims: ClaimService,
    pub redemptions: RedemptionService,
    pub bulk: BulkService,
    pub lifecycle: LifecycleService,
    pub reports: ReportService,
    pub guard: Arc<Guard>,
    /// Client idempotency keys of the POSTs whose effect keeps no record of
    /// its own (`http::replay`).
    pub idem: crate::service::idempotency::Idempotency,
    /// Webhook delivery (its signing key, its consumer name); the worker holds it weakly.
    pub webhooks: Arc<Webhooks>,
    /// The war room's sampler and stream tokens (`GET /ops`).
    pub warroom: Arc<crate::service::warroom::WarRoom>,
    managed: Option<ManagedRedis>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("store", &self.store)
            .finish()
    }
}

impl Services {
    /// Starts the embedded Redis if no URL is set, opens the store and
    /// builds every use case.
    pub async fn build(settings: Validated, clock: Arc<dyn Clock>) -> Result<Self, StartupError> {
        let raw = &settings.raw;
        let managed = match &raw.redis_url {
            Some(_) => None,
            None => Some(
                ManagedRedis::start(ManagedConfig {
                    data_dir: raw.data_dir.clone(),
                    redis_server: raw.redis_server.clone(),
                    appendfsync: raw.redis_appendfsync.clone(),
                })
                .await?,
            ),
        };
        let url = match (&raw.redis_url, &managed) {
            (Some(u), _) => u.clone(),
            (None, Some(m)) => m.url(),
            (None, None) => unreachable!("managed is started when no URL is set"),
        };
        let secret = load_secret(&settings)?;
        let store = Store::open(&url, settings.store_deadline)?;
        // A Redis older than the scripts need is refused at start; one
        // unreachable now is checked by the first call that reaches it
        // (`Store::compatible`: no call goes to a Redis that is too old).
        if let Err(e @ crate::store::StoreError::TooOld(..)) = store.check_version().await {
            return Err(StartupError::Durability(e.to_string()));
        }
        let store = if raw.redis_wait_aof {
            // Refused at start rather than answering every claim 503.
            match store.supports_waitaof().await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(StartupError::Durability(
                        "redis_wait_aof needs WAITAOF (Redis 7.2+); this Redis does not have it"
                            .into(),
                    ));
                }
                Err(e) => {
                    return Err(StartupError::Durability(format!(
                        "redis_wait_aof: cannot check that Redis has WAITAOF: {e}"
                    )));
                }
            }
            // WAITAOF waits for the next fsync: with `everysec` that is up
            // to a second a claim batch (docs/scaling.md, measured).
            if let Some(mode) = store.appendfsync().await
                && mode != "always"
            {
                tracing::warn!(
                    appendfsync = %mode,
                    "redis_wait_aof with appendfsync other than always: each claim waits for the next fsync (up to 1 s); set appendfsync always"
                );
            }
            store.with_aof_wait(raw.redis_wait_replicas, raw.redis_wait_timeout_ms)
        } else {
            store.with_replica_wait(raw.redis_wait_replicas, raw.redis_wait_timeout_ms)
        };
        if let Err(e) = store.preload_scripts().await {
            tracing::warn!(error = %e, "could not preload scripts; they will load on first use");
        }
        // A claim carries its deadline into the script, which compares it
        // with Redis's clock: that needs the two clocks within the margin.
        if let Ok(skew) = store.clock_skew_ms().await {
            let margin = crate::store::redis::deadline_margin(settings.store_deadline);
            if skew.unsigned_abs() as u128 * 2 > margin.as_millis() {
                tracing::warn!(
                    skew_ms = skew,
                    margin_ms = margin.as_millis() as u64,
                    "Redis's clock is off from this host's by more than half the deadline margin: \
                     claims may be refused as late (Redis ahead) or charged after a 503 (Redis behind)"
                );
            }
        }
        let catalog = Arc::new(Catalog::new(store.clone()));
        let soldout = Arc::new(crate::service::soldout::SoldOut::default());
        let idem = Idempotency::new(
            &secret,
            IdemTtls {
                client_secs: raw.idempotency_ttl_secs,
                server_secs: raw.request_dedupe_ttl_secs,
            },
        );
        let policy = UrlPolicy {
            allow_loopback: raw.webhook_allow_loopback,
        };
        let codes = CodeKey::new(secret.derive("code"));
        let ids = Pseudonymizer::new(secret.derive("identity"));
        Ok(Self {
            idem: idem.clone(),
            campaigns: CampaignService::new(
                store.clone(),
                catalog.clone(),
                idem.clone(),
                clock.clone(),
                policy,
            ),
            lifecycle: LifecycleService::new(store.clone(), clock.clone(), policy, soldout.clone()),
            reports: ReportService::new(store.clone(), clock.clone()),
            claims: ClaimService::new(
                store.clone(),
                catalog.clone(),
                idem.clone(),
                codes.clone(),
                ids.clone(),
                clock.clone(),
                soldout,
            ),
            bulk: BulkService::new(
                store.clone(),
                catalog.clone(),
                idem.clone(),
                codes.clone(),
                clock.clone(),
            ),
            redemptions: RedemptionService::new(
                store.clone(),
                catalog,
                idem.clone(),
                codes,
                ids.clone(),
                clock.clone(),
            ),
            guard: Arc::new(
                Guard::new(&settings, store.clone(), ids.clone(), clock.clone())
                    .map_err(StartupError::Limits)?,
            ),
            webhooks: Arc::new(Webhooks::new(
                store.clone(),
                clock.clone(),
                secret.derive("webhook"),
                WebhookConfig {
                    policy,
                    retry_base: std::time::Duration::from_millis(raw.webhook_retry_base_ms),
                    claim_idle: std::time::Duration::from_millis(raw.webhook_claim_idle_ms),
                },
            )),
            warroom: Arc::new(crate::service::warroom::WarRoom::new(
                store.clone(),
                clock.clone(),
                secret.derive("ops-stream"),
            )),
            store,
            clock,
            managed,
            settings,
        })
    }

    /// The embedded `redis-server`'s pid, if this process runs one.
    pub fn managed_redis_pid(&self) -> Option<i32> {
        self.managed.as_ref().map(ManagedRedis::pid)
    }

    /// Stops the embedded Redis (if any), giving it `grace` to finish.
    pub async fn shutdown(self, grace: std::time::Duration) {
        if let Some(m) = self.managed {
            m.shutdown(grace).await;
        }
    }
}

/// A built service, bound to its port, not yet running.
pub struct Application {
    port: u16,
    server: Server,
    services: Arc<Services>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish()
    }
}

/// The process-wide Prometheus recorder (one per process, shared by every
/// app a test binary builds).
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
                .inspect(|handle| {
                    register_zero_series();
                    spawn_upkeep(handle.clone());
                })
        })
        .clone()
}

/// `install_recorder` starts no upkeep task: without one, every recorded
/// histogram value stays in memory until `/metrics` is scraped (8 bytes a
/// request, for as long as nobody scrapes). One thread for the process
/// drains them into their buckets every [`UPKEEP_EVERY`].
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "metrics upkeep thread not started");
    }
}

const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The error and refusal counters dashboards and alerts watch
/// (`deploy/`), shown at 0 from the start, so `rate()` and `increase()`
/// see their first event.
fn register_zero_series() {
    metrics::counter!("stampede_store_errors_total").increment(0);
    metrics::counter!("stampede_store_unavailable_total").increment(0);
    metrics::counter!("stampede_shield_refusals_total").increment(0);
    for result in ["ok", "rejected"] {
        metrics::counter!("stampede_rules_reloads_total", "result" => result).increment(0);
    }
    for reason in ["block_list", "ban"] {
        metrics::counter!("stampede_blocked_total", "reason" => reason).increment(0);
    }
}

/// The configured secret, or the one kept in `<data_dir>/secret` (generated
/// on first start, mode 0600).
fn load_secret(settings: &Validated) -> Result<Secret, StartupError> {
    if let Some(s) = &settings.raw.secret {
        return Secret::new(s.as_bytes().to_vec()).map_err(StartupError::Secret);
    }
    let dir = &settings.raw.data_dir;
    let path = dir.join("secret");
    let read = |p: &Path| std::fs::read_to_string(p).map(|s| s.trim().to_owned());
    let text = match read(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::create_dir_all(dir).map_err(|e| StartupError::Secret(e.to_string()))?;
            let s = Secret::generate_hex();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| StartupError::Secret(format!("{}: {e}", path.display())))?;
            f.write_all(s.as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| StartupError::Secret(e.to_string()))?;
            tracing::warn!(path = %path.display(), "no secret configured: generated one; set STAMPEDE_SECRET to share it across replicas");
            s
        }
        Err(e) => return Err(StartupError::Secret(format!("{}: {e}", path.display()))),
    };
    Secret::new(text.into_bytes()).map_err(StartupError::Secret)
}

impl Application {
    /// Builds the [`Services`] and binds the listener.
    pub async fn build(settings: Validated, clock: Arc<dyn Clock>) -> Result<Self, StartupError> {
        let services = Arc::new(Services::build(settings, clock).await?);
        crate::worker::start(&services);
        let settings = &services.settings;
        let raw = &settings.raw;
        if settings.api_keys.is_empty() {
            tracing::warn!(listen = %settings.listen, "no API keys configured: the service runs OPEN (loopback only)");
        }
        let state = web::Data::new(AppState {
            services: services.clone(),
            body_limits: BodyLimits {
                max_bytes: raw.max_body_bytes,
                max_depth: raw.max_json_depth,
                timeout: settings.body_timeout,
            },
            max_header_bytes: raw.max_header_bytes,
            api_keys: settings.api_keys.clone(),
            metrics: metrics_handle(),
        });

        let listener = TcpListener::bind(settings.listen)
            .map_err(|e| StartupError::Bind(settings.listen.to_string(), e))?;
        let port = listener
            .local_addr()
            .map_err(|e| StartupError::Bind(settings.listen.to_string(), e))?
            .port();
        let server = crate::http::conn::serve(
            listener,
            state,
            crate::http::conn::ServeOptions {
                head_timeout: settings.header_timeout,
                shutdown_grace: settings.shutdown_grace,
                workers: raw.workers,
            },
        )
        .map_err(|e| StartupError::Bind(settings.listen.to_string(), e))?;
        tracing::info!(port, "listening");
        Ok(Self {
            port,
            server,
            services,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// Stops the server (gracefully with `true`).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// The embedded `redis-server`'s pid, if this app runs one.
    pub fn managed_redis_pid(&self) -> Option<i32> {
        self.services.managed_redis_pid()
    }

    /// Serves until SIGTERM/SIGINT (or `handle().stop()`), lets in-flight
    /// requests finish within the grace period, then stops the embedded Redis.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        tracing::info!("HTTP server stopped");
        // The refusals counted in process since the last second's flush
        // (sold out, not active, blocked) go to the campaigns' stats now,
        // while the store is still there.
        self.services.claims.flush_remembered().await;
        let grace = self
            .services
            .settings
            .shutdown_grace
            .max(std::time::Duration::from_secs(5));
        // The server (and with it every worker's clone of the app state) is
        // gone, so this is the last reference unless a test still holds one.
        match Arc::try_unwrap(self.services) {
            Ok(services) => services.shutdown(grace).await,
            Err(_) => tracing::warn!(
                "services still referenced at shutdown; embedded Redis left to its drop"
            ),
        }
        result
    }
}
