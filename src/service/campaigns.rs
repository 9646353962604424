//! Create and read campaigns.

use std::sync::Arc;

use crate::domain::campaign::{CampaignDraft, CampaignId, CampaignSpec, campaign_no_in_range};
use crate::domain::clock::{Clock, to_ms};
use crate::domain::lifecycle::State;
use crate::domain::webhook::UrlPolicy;
use crate::error::ApiError;
use crate::service::RequestContext;
use crate::service::catalog::{CampaignInfo, Catalog};
use crate::service::idempotency::Idempotency;
use crate::store::campaigns::new_quota_buckets;
use crate::store::keys::CampaignKeys;
use crate::store::{CreateOutcome, Store, StoredCampaign};

#[derive(Debug)]
pub struct CampaignService {
    store: Store,
    catalog: Arc<Catalog>,
    idem: Idempotency,
    clock: Arc<dyn Clock>,
    policy: UrlPolicy,
}

/// A created campaign; `replay` when it is the first answer of an earlier
/// request with the same `Idempotency-Key`.
#[derive(Debug)]
pub struct Created {
    pub spec: CampaignSpec,
    pub replay: bool,
}

/// A path id that is not a campaign id names no campaign: `404`.
pub fn parse_campaign_id(raw: &str) -> Result<CampaignId, ApiError> {
    CampaignId::parse(raw).map_err(|_| ApiError::CampaignNotFound(raw.chars().take(64).collect()))
}

impl CampaignService {
    pub fn new(
        store: Store,
        catalog: Arc<Catalog>,
        idem: Idempotency,
        clock: Arc<dyn Clock>,
        policy: UrlPolicy,
    ) -> Self {
        Self {
            store,
            catalog,
            idem,
            clock,
            policy,
        }
    }

    /// Creates a campaign. `raw_body` fingerprints the request for
    /// idempotency (the same key with another body is refused).
    pub async fn create(
        &self,
        draft: &CampaignDraft,
        ctx: &RequestContext,
        raw_body: &[u8],
    ) -> Result<Created, ApiError> {
        let now = self.clock.now();
        let fingerprint = self.idem.digest(&[b"create", raw_body]);
        self.idem.own(&self.store, ctx, &fingerprint).await?;
        // With an Idempotency-Key and no id, the id is derived from the key,
        // so a retry finds the campaign its first attempt created.
        let generated = match &ctx.idempotency_key {
            Some(k) => format!(
                "c-{}",
                &self
                    .idem
                    .digest(&[b"campaign-id", ctx.caller.as_bytes(), k.as_bytes()])[..16]
            ),
            None => format!("c-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]),
        };
        let spec = CampaignSpec::parse(draft, &generated, now, &ctx.caller, self.policy)
            .map_err(ApiError::InvalidRequest)?;
        let state = State::parse(&spec.initial_state).unwrap_or(State::Active);
        let id = CampaignId::parse(&spec.id).map_err(|_| ApiError::Internal)?;
        let keys = CampaignKeys::new(&id);

        let no = self.store.next_campaign_no().await?;
        if !campaign_no_in_range(no) {
            tracing::error!(no, "campaign numbers are exhausted");
            return Err(ApiError::Internal);
        }
        let no = no as u32;
        self.store.bind_campaign_no(no, id.as_str()).await?;
        let idem = self.idem.create_record(ctx, fingerprint);
        match self
            .store
            .create_campaign(&keys, &spec, no, state, to_ms(now), idem)
            .await?
        {
            CreateOutcome::Created => {
                if spec.stock_shards > 1 {
                    // The shards, from the record just written (a create
                    // that dies here is repaired by the first claim).
                    if let Some(c) = self.store.campaign(&keys).await? {
                        self.store.sync_shards(&c).await?;
                    }
                }
                self.catalog.remember(CampaignInfo::new(
                    &spec,
                    no,
                    keys.clone(),
                    new_quota_buckets(&spec),
                ));
                if spec.alerts.webhook_url.is_some() {
                    self.store.watch_webhooks(&spec.id).await?;
                }
                Ok(Created {
                    spec,
                    replay: false,
                })
            }
            CreateOutcome::Replay(spec) => Ok(Created {
                spec: *spec,
                replay: true,
            }),
            CreateOutcome::KeyReused => Err(ApiError::IdempotencyKeyReused),
            CreateOutcome::Exists => Err(ApiError::CampaignExists(spec.id)),
        }
    }

    /// A campaign with its live counters.
    pub async fn get(&self, raw_id: &str) -> Result<StoredCampaign, ApiError> {
        let id = parse_campaign_id(raw_id)?;
        self.store
            .campaign(&CampaignKeys::new(&id))
            .await?
            .ok_or_else(|| ApiError::CampaignNotFound(id.to_string()))
    }

    /// The newest `limit` campaigns with their live counters, newest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<StoredCampaign>, ApiError> {
        let mut out = Vec::new();
        for id in self.store.campaign_ids(limit).await? {
            let Ok(id) = CampaignId::parse(&id) else {
                continue;
            };
            if let Some(c) = self.store.campaign(&CampaignKeys::new(&id)).await? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Counts a claim refused by a rate rule on the campaign's stats (only
    /// for a campaign that exists: a flood at made-up ids creates nothing).
    pub async fn count_rule_refusal(&self, id: &CampaignId, rule: &str) {
        if let Ok(Some(info)) = self.catalog.get(id).await
            && let Err(e) = self
                .store
                .count_refusal(&info.keys, &format!("rule:{rule}"))
                .await
        {
            tracing::debug!(error = %e, "rule refusal not counted");
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The ids of the campaigns this instance has served or created (the
    /// ones its stock gauges report).
    pub fn known_ids(&self) -> Vec<String> {
        self.catalog.known_ids()
    }

    /// The known campaigns with `stock_shards` > 1 (no Redis read).
    pub fn known_sharded_ids(&self) -> Vec<String> {
        self.catalog.sharded_ids()
    }
}
