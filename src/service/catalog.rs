//! The in-process cache of what never changes about a campaign once it
//! exists (its number, its coupon terms, its keys), so a claim or redemption
//! costs one Redis round trip. Counters and state are never cached here.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::domain::campaign::{CampaignId, CampaignSpec, Coupon};
use crate::domain::code::CodePayload;
use crate::domain::eligibility::Eligibility;
use crate::error::ApiError;
use crate::store::Store;
use crate::store::keys::CampaignKeys;

/// The cached facts of one campaign: only what no PATCH or transition can
/// change (state, window, stock, limits, rollout and alerts are read by the
/// scripts from the campaign hash on every call, so every replica acts on a
/// change at once).
#[derive(Debug)]
pub struct CampaignInfo {
    pub id: String,
    pub no: u32,
    pub coupon: Coupon,
    pub channels: Vec<String>,
    pub bind_to_claimer: bool,
    pub eligibility: Eligibility,
    pub keys: CampaignKeys,
    /// How many hashes each quota kind is cut into (fixed at create).
    pub quota_buckets: u32,
    /// Stock shards (fixed at create; 1: claims go to `keys`).
    pub shards: u32,
    /// The shards' keys (empty unsharded).
    pub shard_keys: Vec<CampaignKeys>,
    /// Held while this instance moves stock to one of its shards, so a
    /// flood on a dry shard starts one transfer, not one per claim.
    pub refill: tokio::sync::Mutex<()>,
}

impl CampaignInfo {
    pub fn new(spec: &CampaignSpec, no: u32, keys: CampaignKeys, quota_buckets: u32) -> Self {
        Self {
            id: spec.id.clone(),
            no,
            coupon: spec.coupon.clone(),
            channels: spec.channels.clone(),
            bind_to_claimer: spec.bind_to_claimer,
            eligibility: spec.eligibility.clone(),
            keys,
            quota_buckets,
            shards: spec.stock_shards.max(1),
            shard_keys: if spec.stock_shards > 1 {
                (0..spec.stock_shards)
                    .map(|i| CampaignKeys::shard(&spec.id, i, spec.stock_shards))
                    .collect()
            } else {
                Vec::new()
            },
            refill: tokio::sync::Mutex::new(()),
        }
    }

    /// The keys a claim by `phone` goes to, and that shard's number (`None`
    /// for an unsharded campaign).
    pub fn route(&self, phone: &crate::domain::identity::Pseudonym) -> (CampaignKeys, Option<u32>) {
        if self.shards <= 1 {
            return (self.keys.clone(), None);
        }
        let i = crate::store::shards::shard_of(phone, self.shards);
        (self.shard_keys[i as usize].clone(), Some(i))
    }

    /// The keys a code's `serial` lives under and its serial there.
    pub fn locate(&self, serial: u64) -> (CampaignKeys, u64) {
        if self.shards <= 1 {
            return (self.keys.clone(), serial);
        }
        let (i, local) = crate::store::shards::split_serial(serial, self.shards);
        (self.shard_keys[i as usize].clone(), local)
    }
}

#[derive(Debug)]
pub struct Catalog {
    store: Store,
    by_id: RwLock<HashMap<String, Arc<CampaignInfo>>>,
    by_no: RwLock<HashMap<u32, Arc<CampaignInfo>>>,
}

impl Catalog {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            by_id: RwLock::default(),
            by_no: RwLock::default(),
        }
    }

    pub fn remember(&self, info: CampaignInfo) -> Arc<CampaignInfo> {
        let info = Arc::new(info);
        self.by_id
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(info.id.clone(), info.clone());
        self.by_no
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(info.no, info.clone());
        info
    }

    /// The ids of the campaigns this instance has served or created.
    pub fn known_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// The ids of the known campaigns with more than one stock shard.
    pub fn sharded_ids(&self) -> Vec<String> {
        self.by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, i)| i.shards > 1)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The campaign `id` when this instance has it in memory (no store call).
    pub fn cached(&self, id: &str) -> Option<Arc<CampaignInfo>> {
        self.by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The campaign `id`, from the cache or the store; `None` if it does not exist.
    pub async fn get(&self, id: &CampaignId) -> Result<Option<Arc<CampaignInfo>>, ApiError> {
        if let Some(i) = self.cached(id.as_str()) {
            return Ok(Some(i));
        }
        let keys = CampaignKeys::new(id);
        let Some(stored) = self.store.campaign(&keys).await? else {
            return Ok(None);
        };
        Ok(Some(self.remember(CampaignInfo::new(
            &stored.spec,
            stored.no,
            keys,
            stored.quota_buckets,
        ))))
    }

    /// The campaign a verified code belongs to; `invalid_code` when none.
    pub async fn by_code(&self, p: CodePayload) -> Result<Arc<CampaignInfo>, ApiError> {
        if let Some(i) = self
            .by_no
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&p.campaign_no)
        {
            return Ok(i.clone());
        }
        let id = self
            .store
            .campaign_id_by_no(p.campaign_no)
            .await?
            .and_then(|id| CampaignId::parse(&id).ok())
            .ok_or(ApiError::InvalidCode)?;
        let info = self.get(&id).await?.ok_or(ApiError::InvalidCode)?;
        if info.no != p.campaign_no {
            return Err(ApiError::InvalidCode);
        }
        Ok(info)
    }
}
