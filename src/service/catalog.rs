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
        }
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

    /// The campaign `id`, from the cache or the store; `None` if it does not exist.
    pub async fn get(&self, id: &CampaignId) -> Result<Option<Arc<CampaignInfo>>, ApiError> {
        if let Some(i) = self
            .by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id.as_str())
        {
            return Ok(Some(i.clone()));
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
