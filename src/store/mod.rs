//! Redis: the one atomic source of truth.
//!
//! - [`keys`] builds every key; all keys of one campaign share the hash tag
//!   `{<campaign id>}`, so each script touches one slot and runs unchanged on
//!   Redis Cluster.
//! - [`scripts`] embeds `lua/*.lua`; they are sent by EVALSHA and re-loaded
//!   on `NOSCRIPT` (a restarted or failed-over Redis has an empty script cache).
//! - [`redis`] is the typed store the domain talks to, with a deadline on
//!   every call.
//! - [`managed`] runs the embedded `redis-server` when no URL is configured.

pub mod keys;
pub mod managed;
pub mod redis;
pub mod scripts;

pub use self::redis::{ClaimOutcome, RedeemOutcome, Store, StoreError};
