//! stampede: coupon issuance and anti-abuse over HTTP, with Redis Lua as the
//! one atomic source of truth.
//!
//! # Module map
//! Data flows one way: `http -> guard -> service -> domain / store -> lua`.
//! Nothing imports from a layer above it.
//!
//! - [`settings`]: layered config (defaults -> TOML file -> `STAMPEDE_*` env), validated once.
//! - [`telemetry`]: `tracing` setup; identities never reach a log line.
//! - [`startup`]: [`startup::Application`]: embedded Redis, store, HTTP server; port 0 in tests.
//! - [`http`]: actix routes and extractors, problem+json rendering, OpenAPI, the edge middleware.
//! - [`guard`]: the anti-abuse edge (client IP through trusted proxies; later rules and limiters).
//! - [`service`]: the use cases (claim, redeem, ...): parse, pseudonymize, resolve the campaign,
//!   call one script, map the outcome. Not in STYLE.md's list: it keeps handlers free of
//!   logic and lets tests and benches drive the use cases without HTTP.
//! - [`domain`]: pure rules, no actix, no Redis: campaigns and coupons, codes (mint/verify),
//!   identities (E.164, pseudonyms), the injected clock, the secret.
//! - [`store`]: Redis: every key built in `store::keys`, every script loaded in
//!   `store::scripts`, the typed store with deadlines, the embedded `redis-server`.
//! - [`error`]: the one error type of the API, rendered by `http::problem`.
//!
//! `lua/` holds the scripts; each opens with its KEYS, ARGV, returns and the
//! note on why it cannot fail after its first write.
//!
//! # Stack notes
//! - Redis: one redis-rs `ConnectionManager` (a multiplexed connection that
//!   reconnects by itself) on a dedicated runtime thread, not a deadpool
//!   pool: measured ~1.7x the claims/s of a pool checkout per request, and the
//!   only blocking/admin work there is would not need a pool either.
//! - `governor` (the in-process per-IP limiter) belongs to the rules engine of
//!   LIMITS.md and arrives with it, in `guard/`.
//! - mimalloc is the global allocator of the binary (see `main.rs`).

pub mod domain;
pub mod error;
pub mod guard;
pub mod http;
pub mod service;
pub mod settings;
pub mod startup;
pub mod store;
pub mod telemetry;
