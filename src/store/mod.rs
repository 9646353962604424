//! Redis: the one atomic source of truth.
//!
//! - [`keys`] builds every key; all keys of one campaign share the hash tag
//!   `{<campaign id>}`, so each script touches one slot and runs unchanged on
//!   Redis Cluster.
//! - [`scripts`] embeds `lua/*.lua`; they are sent by EVALSHA and re-loaded
//!   on `NOSCRIPT` (a restarted or failed-over Redis has an empty script cache).
//!   The claim script goes as a function library (`FCALL`, loaded again on
//!   `Function not found`; EVALSHA where the server refuses functions).
//! - [`redis`] is the connection with a deadline on every call, and the error
//!   classes; [`campaigns`] owns the campaign record's schema; [`claims`] the
//!   claim script (batched per campaign by `batch`: group commit) and its
//!   typed outcome; [`coupons`] the redeem / rollback scripts and theirs; [`rules`] the
//!   rate-rule counters, bans and the audit stream; [`bulk`] the bulk-code
//!   reservations; [`shards`] a campaign's stock split over hash tags
//!   (`stock_shards`): routing, serials, stock moved to a dry shard.
//! - [`outbox`] reads the webhook outboxes through their consumer group.
//! - [`managed`] runs the embedded `redis-server` when no URL is configured.
//! - [`version`] refuses a Redis older than the scripts need, at start or later.

mod batch;
pub mod bulk;
pub mod campaigns;
pub mod claims;
pub mod conn;
pub mod coupons;
pub mod keys;
pub mod managed;
pub mod outbox;
pub mod redis;
pub mod reports;
pub mod rules;
pub mod scripts;
pub mod shards;
pub mod version;

pub use self::campaigns::{CreateIdem, CreateOutcome, StoredCampaign};
pub use self::claims::{ClaimIds, ClaimOutcome};
pub use self::coupons::{CodeState, Idem, RedeemOutcome, RollbackOutcome};
pub use self::redis::{Store, StoreError};
