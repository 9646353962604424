//! Claims on a campaign with `stock_shards` > 1 (`store::shards`): what a
//! claim does when its shard is dry or missing, before it answers.
//!
//! A claim goes to its phone's shard. Answered `sold_out` there (and not a
//! replay), it refills that shard from the others (one refill at a time per
//! campaign on this instance) and tries again, until it is issued or a
//! refill finds every shard dry and nothing pending: only then is the
//! answer `sold_out`, and remembered as the campaign's (`service::soldout`).
//! A claim that loses every refill to others for a whole store deadline
//! (stock still moving under contention) is answered 503, not charged. A claim
//! under an `Idempotency-Key` has its refusal recorded, so its shard is
//! refilled *before* its call when it looks dry. A shard that does not
//! exist (a create that died before its shards were written) is created
//! from the record, and the claim tried again.

use crate::error::ApiError;
use crate::service::catalog::CampaignInfo;
use crate::store::Store;

/// The most times one claim re-creates its campaign's missing shards.
pub const MAX_REPAIRS: usize = 2;

/// Refills shard `shard` of `info` (one refill at a time per campaign on
/// this instance); false when the whole campaign is dry.
pub async fn refill(store: &Store, info: &CampaignInfo, shard: u32) -> Result<bool, ApiError> {
    let _one = info.refill.lock().await;
    Ok(store
        .refill_shard(&info.keys, &info.id, info.shards, shard)
        .await?)
}

/// Before a claim under an `Idempotency-Key` (its refusal is final): refill
/// its shard when that has no unclaimed stock left.
pub async fn refill_if_dry(store: &Store, info: &CampaignInfo, shard: u32) -> Result<(), ApiError> {
    let free = store.shard_free(&info.id, shard, info.shards).await?;
    if free <= 0 {
        refill(store, info, shard).await?;
    }
    Ok(())
}

/// Creates a campaign's missing shards from its record; false when the
/// campaign itself is gone.
pub async fn repair(store: &Store, info: &CampaignInfo) -> Result<bool, ApiError> {
    let Some(c) = store.campaign(&info.keys).await? else {
        return Ok(false);
    };
    store.sync_shards(&c).await?;
    Ok(true)
}
