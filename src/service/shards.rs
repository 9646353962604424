//! Claims on a campaign with `stock_shards` > 1 (`store::shards`): what a
//! claim does when its shard is dry or missing, before it answers.
//!
//! A claim goes to its phone's shard. Answered `sold_out` there (and not a
//! replay), it refills that shard from the others (one refill at a time per
//! campaign on this instance) and tries again, until it is issued or a
//! refill finds every shard dry and nothing pending: only then is the
//! answer `sold_out`, and remembered as the campaign's (`service::soldout`).
//! A claim that loses every refill to others for a whole store deadline
//! (stock still moving under contention) is answered 503, not charged. Under
//! an `Idempotency-Key`, the shard's `sold_out` is not recorded (`claim.lua`
//! mode 'k'); the final one is, once the whole campaign is dry
//! (`Store::record_sold_out`), so the key's retry gets it. A shard that does not
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

/// Creates a campaign's missing shards from its record; false when the
/// campaign itself is gone.
pub async fn repair(store: &Store, info: &CampaignInfo) -> Result<bool, ApiError> {
    let Some(c) = store.campaign(&info.keys).await? else {
        return Ok(false);
    };
    store.sync_shards(&c).await?;
    Ok(true)
}
