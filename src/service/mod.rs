//! The use cases, one file each: parse -> call the store -> map the outcome.
//!
//! This layer sits between `http`/`guard` and `store` and is not in
//! STYLE.md's folder list: handlers stay thin (extract, call one method here,
//! render), and the orchestration (verify the code offline, resolve the
//! campaign from the in-process cache, pseudonymize, pick the idempotency
//! record, map outcomes to API errors) is in one place that tests, benches and
//! a CLI can call without HTTP.
//!
//! - [`campaigns`]: create and read campaigns.
//! - [`claims`]: claim one coupon.
//! - [`bulk`]: reserve bulk codes and stream them as CSV.
//! - [`redemptions`]: redeem, roll back, validate a code (eligibility, bound codes).
//! - [`lifecycle`]: submit, approve, reject, pause, resume, end; PATCH.
//! - [`reports`]: stats and the audit trail.
//! - [`shards`]: a claim on a sharded campaign whose shard is dry or missing (refill, retry).
//! - [`soldout`]: the in-process memory of campaigns that cannot issue now (floods answered without Redis).
//! - [`tally`]: refusals decided in process (block list, bans), added to the campaigns' stats once a second.
//! - [`catalog`]: the in-process cache of what never changes about a campaign.
//! - [`idempotency`]: the record every script call carries (client key or server request id).

pub mod bulk;
pub mod campaigns;
pub mod catalog;
pub mod claims;
pub mod idempotency;
pub mod lifecycle;
pub mod redemptions;
pub mod reports;
pub mod shards;
pub mod soldout;
pub mod tally;
pub mod warroom;

/// Who is asking, and how their retries are recognised.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// API key name (`open` when the service runs without keys).
    pub caller: String,
    /// The `Idempotency-Key` header, validated.
    pub idempotency_key: Option<String>,
    /// Server-made id of this request.
    pub request_id: String,
}
