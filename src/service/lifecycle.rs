//! Lifecycle actions and PATCH: read the campaign, decide with the domain's
//! table, apply with one compare-and-set script that writes the audit entry
//! (and any webhook event) in the same step; retry when another request
//! moved the campaign in between.

use std::sync::Arc;

use crate::domain::campaign::{CampaignPatch, CampaignSpec};
use crate::domain::clock::Clock;
use crate::domain::lifecycle::{Action, State};
use crate::domain::webhook::UrlPolicy;
use crate::error::ApiError;
use crate::service::RequestContext;
use crate::service::campaigns::parse_campaign_id;
use crate::service::soldout::SoldOut;
use crate::store::campaigns::{PatchOutcome, PatchWrite, TransitionOutcome};
use crate::store::keys::CampaignKeys;
use crate::store::{Store, StoredCampaign};

/// A read-then-compare-and-set gives up after this many lost races.
const RETRIES: usize = 8;

#[derive(Debug)]
pub struct LifecycleService {
    store: Store,
    soldout: Arc<SoldOut>,
    clock: Arc<dyn Clock>,
    policy: UrlPolicy,
}

impl LifecycleService {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        policy: UrlPolicy,
        soldout: Arc<SoldOut>,
    ) -> Self {
        Self {
            store,
            soldout,
            clock,
            policy,
        }
    }

    async fn read(&self, keys: &CampaignKeys, id: &str) -> Result<StoredCampaign, ApiError> {
        self.store
            .campaign(keys)
            .await?
            .ok_or_else(|| ApiError::CampaignNotFound(id.to_owned()))
    }

    /// The campaign after a change, with the change copied into its stock
    /// shards (`store::shards`; a no-op unsharded). Until every shard has
    /// it, claims on the others follow the old rules: one call per shard,
    /// and a sync that fails is answered 503 (the change itself is made;
    /// the next change or the client's retry copies it again).
    async fn read_synced(&self, keys: &CampaignKeys, id: &str) -> Result<StoredCampaign, ApiError> {
        let c = self.read(keys, id).await?;
        self.store.sync_shards(&c).await?;
        Ok(c)
    }

    /// Applies `action` to the campaign; returns it as it is after.
    pub async fn act(
        &self,
        raw_id: &str,
        action: Action,
        reason: &str,
        ctx: &RequestContext,
    ) -> Result<StoredCampaign, ApiError> {
        let id = parse_campaign_id(raw_id)?;
        let keys = CampaignKeys::new(&id);
        for _ in 0..RETRIES {
            let c = self.read(&keys, id.as_str()).await?;
            let from = State::parse(&c.state).ok_or(ApiError::Internal)?;
            let to = action
                .apply(from, c.spec.require_approval)
                .ok_or_else(|| ApiError::InvalidTransition(action.refusal(from)))?;
            let event = if to == State::Ended {
                "campaign.ended"
            } else {
                ""
            };
            match self
                .store
                .transition(
                    &keys,
                    from,
                    to,
                    action,
                    &ctx.caller,
                    self.clock.now_ms(),
                    reason,
                    action == Action::Approve,
                    event,
                )
                .await?
            {
                TransitionOutcome::Done => {
                    self.soldout.forget(id.as_str());
                    tracing::info!(campaign = %id, action = action.as_str(), by = %ctx.caller, from = from.as_str(), to = to.as_str(), "campaign moved");
                    return self.read_synced(&keys, id.as_str()).await;
                }
                TransitionOutcome::NotFound => {
                    return Err(ApiError::CampaignNotFound(id.to_string()));
                }
                TransitionOutcome::Forbidden => {
                    return Err(ApiError::Forbidden(
                        "four eyes: the key that created a campaign may not approve it".into(),
                    ));
                }
                TransitionOutcome::Moved(_) => continue,
            }
        }
        Err(ApiError::RequestInProgress)
    }

    /// Applies a PATCH; returns the campaign as it is after.
    pub async fn patch(
        &self,
        raw_id: &str,
        patch: &CampaignPatch,
        ctx: &RequestContext,
    ) -> Result<StoredCampaign, ApiError> {
        let id = parse_campaign_id(raw_id)?;
        let keys = CampaignKeys::new(&id);
        for _ in 0..RETRIES {
            let c = self.read(&keys, id.as_str()).await?;
            if c.state == State::Ended.as_str() {
                return Err(ApiError::InvalidTransition(
                    "an ended campaign cannot be changed".into(),
                ));
            }
            let next = c
                .spec
                .patched(patch, self.policy)
                .map_err(ApiError::InvalidRequest)?;
            // A sharded campaign's stock can be raised: the units are
            // granted to its shards with the new stock, in the same script
            // (`store::shards`). Lowering it would have to take unclaimed
            // units back from every shard while they sell: refused.
            let shards = c.spec.stock_shards;
            if shards > 1 && next.stock < c.spec.stock {
                return Err(ApiError::field(
                    "stock",
                    "the stock of a campaign with stock_shards > 1 can be raised, not lowered",
                ));
            }
            let grants = if shards > 1 {
                crate::store::shards::grants(next.stock - c.spec.stock, shards)
            } else {
                Vec::new()
            };
            let detail = changes(&c.spec, &next);
            match self
                .store
                .patch_campaign(
                    &keys,
                    &c.ver,
                    &PatchWrite {
                        spec: &next,
                        detail: &detail,
                        grants: &grants,
                    },
                    &ctx.caller,
                    self.clock.now_ms(),
                )
                .await?
            {
                PatchOutcome::Done => {
                    self.soldout.forget(id.as_str());
                    if !grants.is_empty() {
                        // Made: a failure here leaves the raise pending,
                        // given by the next refill of any shard.
                        self.store.give_grants(&keys, id.as_str(), shards).await?;
                    }
                    if next.alerts.webhook_url.is_some() {
                        self.store.watch_webhooks(id.as_str()).await?;
                    }
                    tracing::info!(campaign = %id, by = %ctx.caller, %detail, "campaign patched");
                    return self.read_synced(&keys, id.as_str()).await;
                }
                PatchOutcome::NotFound => return Err(ApiError::CampaignNotFound(id.to_string())),
                PatchOutcome::BelowIssued(issued) => {
                    return Err(ApiError::field(
                        "stock",
                        format!("cannot be below the {issued} coupons already issued"),
                    ));
                }
                PatchOutcome::Moved => continue,
            }
        }
        Err(ApiError::RequestInProgress)
    }
}

/// `name, stock 100->200, ...`: what a PATCH changed, for the audit trail.
fn changes(a: &CampaignSpec, b: &CampaignSpec) -> String {
    let mut out = Vec::new();
    if a.name != b.name {
        out.push("name".to_owned());
    }
    if a.stock != b.stock {
        out.push(format!("stock {}->{}", a.stock, b.stock));
    }
    if a.starts_at_ms != b.starts_at_ms || a.ends_at_ms != b.ends_at_ms {
        out.push("window".into());
    }
    if a.limits != b.limits {
        out.push("limits".into());
    }
    if a.alerts != b.alerts {
        out.push("alerts".into());
    }
    if a.rollout_percent != b.rollout_percent {
        out.push(format!(
            "rollout_percent {}->{}",
            a.rollout_percent, b.rollout_percent
        ));
    }
    out.join(", ")
}
