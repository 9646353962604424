//! stampede: coupon issuance and anti-abuse over HTTP, with Redis Lua as the
//! one atomic source of truth.
//!
//! # Module map
//! Data flows one way: `http -> guard -> service -> domain / store -> lua`.
//! Nothing imports from a layer above it.
//!
//! - [`settings`]: layered config (defaults -> TOML file -> `STAMPEDE_*` env), validated once.
//! - [`telemetry`]: `tracing` setup; identities never reach a log line.
//! - [`startup`]: [`startup::Services::build`] (embedded Redis, store, use cases, guard; no
//!   HTTP: tests, a CLI and workers use it) and [`startup::Application`] on top (binds, runs;
//!   port 0 in tests).
//! - [`http`]: actix routes and extractors, wire types with their OpenAPI schemas
//!   (`http::wire`: requests parsed into the service's commands), the route -> roles table
//!   (`http::permissions`: admin, client, viewer), problem+json, the edge middleware, and
//!   the server itself (`http::conn`: actix-web's app over actix-http, each socket wrapped
//!   so that the errors actix-http answers on its own leave as problem+json too).
//! - [`guard`]: the anti-abuse edge of LIMITS.md: the client address (trusted proxies,
//!   IPv6 prefix) resolved once for every route, the in-process flood shield (governor),
//!   block/allow lists, the in-process view of bans, and the rules engine (which rules
//!   apply, their keys, one script call per hash slot, RateLimit headers, bans, and
//!   `guard::lease`: a hot key's units charged a lease at a time; `guard::meters`: the
//!   rules' metrics handles, made once per rules file).
//! - [`worker`]: background loops: the rules-file watcher (notify), the bans refresh,
//!   webhook delivery (each campaign's outbox stream, at least once, SSRF-checked), and
//!   the gauges `deploy/`'s dashboard and alerts read (Redis up, each campaign's stock),
//!   and the stock webhooks of sharded campaigns (their shards' summed counters).
//! - [`service`]: one file per use case (campaigns, claims, redemptions, lifecycle and
//!   PATCH, bulk codes, reports: stats and audit) plus the campaign catalog and idempotency
//!   records: call the store, map the outcome to API errors.
//! - [`domain`]: pure rules, no actix, no Redis, no utoipa: campaigns, coupons, the lifecycle
//!   table, eligibility, codes (mint/verify), identities (E.164, pseudonyms), the rules-file
//!   model, webhook URL guard and signatures, RateLimit header values, the injected clock,
//!   the secret.
//! - [`store`]: Redis: every key built in `store::keys`, every script loaded in
//!   `store::scripts`, the campaign record's schema and its compare-and-set transitions
//!   (`store::campaigns`), typed script outcomes (`store::coupons`, `store::bulk`), rules,
//!   bans and audit (`store::rules`), outboxes (`store::outbox`), reports, stock shards
//!   (`store::shards`: one campaign's stock over several hash tags), the connection
//!   with deadlines (a single node or a Redis Cluster), the embedded `redis-server`.
//! - [`error`]: the one error type of the API, rendered by `http::problem`.
//! - [`cli`]: the admin CLI (`stampede campaign|codes|ban|limits|audit`), a client of the
//!   HTTP API (not of `Services`: see its module doc).
//!
//! `lua/` holds the scripts; each opens with its KEYS, ARGV, returns and the
//! note on why it cannot fail after its first write.
//!
//! # Stack notes
//! - Redis: one redis-rs `ConnectionManager` (a multiplexed connection that
//!   reconnects by itself) on a dedicated runtime thread, not a deadpool
//!   pool: measured ~1.7x the claims/s of a pool checkout per request, and the
//!   only blocking/admin work there is would not need a pool either.
//! - `governor` is the in-process per-IP shield (`guard::shield`); `notify` watches the
//!   rules file; `arc-swap` swaps a reloaded rule set in without locking the hot path.
//! - mimalloc is the global allocator of the binary (see `main.rs`).

pub mod cli;
pub mod domain;
pub mod error;
pub mod guard;
pub mod http;
pub mod service;
pub mod settings;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod worker;
