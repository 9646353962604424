//! The use cases (create campaign, claim, redeem, roll back, validate): the
//! steps between a parsed HTTP request and the store.
//!
//! This layer sits between `http` and `store` and is not in STYLE.md's
//! folder list: handlers stay thin (extract, call one method here, render),
//! and the orchestration (verify the code offline, resolve the campaign from
//! the in-process cache, pseudonymize, pick the idempotency record, map
//! outcomes to API errors) is in one place that tests and benches can call
//! without HTTP.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::campaign::{
    CampaignId, CampaignSpec, CampaignView, Coupon, CreateCampaignRequest, Ineligible,
    campaign_no_in_range,
};
use crate::domain::clock::{Clock, from_ms, rfc3339};
use crate::domain::code::{CodeKey, CodePayload};
use crate::domain::error::{Errors, is_visible_ascii};
use crate::domain::identity::{ClientIp, DeviceId, Phone, Pseudonymizer};
use crate::domain::secret::hmac_sha256;
use crate::error::ApiError;
use crate::store::keys::CampaignKeys;
use crate::store::redis::{CreateOutcome, Idem, RollbackOutcome};
use crate::store::{ClaimOutcome, RedeemOutcome, Store};

/// What is known for ever about a campaign once it exists: its number and
/// coupon terms never change, so they are cached in-process and a claim or
/// redemption costs one Redis round trip.
#[derive(Debug)]
struct CampaignInfo {
    id: String,
    no: u32,
    coupon: Coupon,
    keys: CampaignKeys,
}

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

/// Timing knobs of the idempotency records.
#[derive(Debug, Clone, Copy)]
pub struct IdemTtls {
    pub client_secs: u64,
    pub server_secs: u64,
}

pub struct Coupons {
    store: Store,
    codes: CodeKey,
    ids: Pseudonymizer,
    digests: [u8; 32],
    clock: Arc<dyn Clock>,
    region: phonenumber::country::Id,
    ipv6_prefix: u8,
    ttls: IdemTtls,
    by_id: RwLock<HashMap<String, Arc<CampaignInfo>>>,
    by_no: RwLock<HashMap<u32, Arc<CampaignInfo>>>,
}

impl std::fmt::Debug for Coupons {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coupons")
            .field("store", &self.store)
            .finish()
    }
}

/// `POST /v1/campaigns/{id}/claims`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// Any common spelling; normalized to E.164 (default region CN).
    #[schema(
        required = true,
        example = "+8613800138000",
        min_length = 1,
        max_length = 40
    )]
    pub phone: Option<String>,
    /// 1..128 visible ASCII characters.
    #[schema(required = true, example = "ios-3f2a9c", pattern = "^[!-~]{1,128}$")]
    pub device_id: Option<String>,
    /// 1..128 visible ASCII characters.
    #[schema(example = "u-1001", pattern = "^[!-~]{1,128}$")]
    pub user_id: Option<String>,
    #[schema(example = "miniapp", pattern = "^[a-z0-9_-]{1,32}$")]
    pub channel: Option<String>,
}

/// `201` answer of a claim.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClaimResponse {
    #[schema(example = "0Fq3K9aQ7mZt2LwX1b")]
    pub code: String,
    pub campaign_id: String,
    pub claimed_at: String,
    /// Absent when the coupon never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub coupon: Coupon,
}

/// `POST /v1/redemptions`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeemRequest {
    #[schema(required = true, pattern = "^[0-9A-Za-z]{18}$")]
    pub code: Option<String>,
    /// 1..128 visible ASCII characters.
    #[schema(required = true, example = "o-77812", pattern = "^[!-~]{1,128}$")]
    pub order_id: Option<String>,
    /// Minor units; required when the coupon has a minimum or is a percentage.
    #[schema(example = 25900, minimum = 0, maximum = 1000000000000i64)]
    pub order_amount: Option<i64>,
    pub phone: Option<String>,
    /// Where the code was redeemed (offline), 1..64 visible ASCII characters.
    #[schema(example = "sh-jingan-01", pattern = "^[!-~]{1,64}$")]
    pub store_id: Option<String>,
}

/// `200` answer of a redemption (also of its safe retry).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RedeemResponse {
    pub code: String,
    pub order_id: String,
    pub campaign_id: String,
    pub discount: i64,
    pub redeemed_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_id: Option<String>,
    /// The SKU handed out, for gift coupons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gift_sku: Option<String>,
}

/// `POST /v1/redemptions/rollback`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    #[schema(required = true, pattern = "^[0-9A-Za-z]{18}$")]
    pub code: Option<String>,
    #[schema(required = true, pattern = "^[!-~]{1,128}$")]
    pub order_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RollbackResponse {
    pub code: String,
    pub order_id: String,
    pub campaign_id: String,
    /// False when the code was not redeemed (a repeated rollback).
    pub rolled_back: bool,
}

/// `POST /v1/codes/validate`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    #[schema(required = true)]
    pub code: Option<String>,
    #[schema(minimum = 0, maximum = 1000000000000i64)]
    pub order_amount: Option<i64>,
    pub phone: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ValidateResponse {
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discount: Option<i64>,
    /// Why not, as an error `code` of the API (`invalid_code`, `not_eligible`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

fn visible(
    field: &str,
    v: Option<&str>,
    max: usize,
    required: bool,
    errs: &mut Errors,
) -> Option<String> {
    match v {
        None if required => {
            errs.push(field, "is required");
            None
        }
        None => None,
        Some(s) if s.is_empty() || s.len() > max || !is_visible_ascii(s) => {
            errs.push(
                field,
                format!("must be 1 to {max} visible ASCII characters"),
            );
            None
        }
        Some(s) => Some(s.to_owned()),
    }
}

fn amount(field: &str, v: Option<i64>, errs: &mut Errors) -> Option<i64> {
    match v {
        Some(a) if !(0..=crate::domain::campaign::MAX_MONEY).contains(&a) => {
            errs.push(field, "must be between 0 and 1000000000000 (minor units)");
            None
        }
        a => a,
    }
}

impl Coupons {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        secret: &crate::domain::secret::Secret,
        clock: Arc<dyn Clock>,
        region: phonenumber::country::Id,
        ipv6_prefix: u8,
        ttls: IdemTtls,
    ) -> Self {
        Self {
            store,
            codes: CodeKey::new(secret.derive("code")),
            ids: Pseudonymizer::new(secret.derive("identity")),
            digests: secret.derive("request-digest"),
            clock,
            region,
            ipv6_prefix,
            ttls,
            by_id: RwLock::default(),
            by_no: RwLock::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn ipv6_prefix(&self) -> u8 {
        self.ipv6_prefix
    }

    /// A keyed digest: request fingerprints and idempotency keys may contain
    /// identities, so even their hashes are keyed.
    fn digest(&self, parts: &[&[u8]]) -> String {
        let mut joined: Vec<&[u8]> = Vec::with_capacity(parts.len() * 2);
        for p in parts {
            joined.push(p);
            joined.push(b"\0");
        }
        hex::encode(&hmac_sha256(&self.digests, &joined)[..16])
    }

    fn idem(&self, ctx: &RequestContext, fingerprint: String) -> Idem {
        match &ctx.idempotency_key {
            Some(k) => Idem {
                digest: self.digest(&[b"client", ctx.caller.as_bytes(), k.as_bytes()]),
                fingerprint,
                ttl_secs: self.ttls.client_secs,
                keep_rejections: true,
            },
            None => Idem {
                digest: self.digest(&[b"server", ctx.request_id.as_bytes()]),
                fingerprint,
                ttl_secs: self.ttls.server_secs,
                keep_rejections: false,
            },
        }
    }

    fn remember(&self, info: CampaignInfo) -> Arc<CampaignInfo> {
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

    fn stored_spec(id: &CampaignId, json: &str) -> Result<CampaignSpec, ApiError> {
        serde_json::from_str(json).map_err(|e| {
            tracing::error!(campaign = %id, error = %e, "stored campaign spec is unreadable");
            ApiError::Internal
        })
    }

    async fn campaign_info(&self, id: &CampaignId) -> Result<Option<Arc<CampaignInfo>>, ApiError> {
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
        let spec = Self::stored_spec(id, &stored.spec_json)?;
        Ok(Some(self.remember(CampaignInfo {
            id: id.to_string(),
            no: stored.no,
            coupon: spec.coupon,
            keys,
        })))
    }

    async fn campaign_by_code(&self, p: CodePayload) -> Result<Arc<CampaignInfo>, ApiError> {
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
        let info = self
            .campaign_info(&id)
            .await?
            .ok_or(ApiError::InvalidCode)?;
        if info.no != p.campaign_no {
            return Err(ApiError::InvalidCode);
        }
        Ok(info)
    }

    fn parse_campaign_id(raw: &str) -> Result<CampaignId, ApiError> {
        CampaignId::parse(raw)
            .map_err(|_| ApiError::CampaignNotFound(raw.chars().take(64).collect()))
    }

    fn verify_code(&self, raw: Option<&str>) -> Result<(String, CodePayload), ApiError> {
        let raw = raw.ok_or_else(|| ApiError::field("code", "is required"))?;
        match self.codes.verify(raw) {
            Ok(p) => Ok((raw.to_owned(), p)),
            Err(e) => {
                metrics::counter!("stampede_code_rejections_total", "reason" => format!("{e:?}"))
                    .increment(1);
                Err(ApiError::InvalidCode)
            }
        }
    }

    /// Creates a campaign.
    pub async fn create_campaign(
        &self,
        req: &CreateCampaignRequest,
        ctx: &RequestContext,
        raw_body: &[u8],
    ) -> Result<CampaignView, CreateResult> {
        let now = self.clock.now();
        let fingerprint = self.digest(&[b"create", raw_body]);
        // With an Idempotency-Key and no id, the id is derived from the key,
        // so a retry finds the campaign its first attempt created.
        let generated = match &ctx.idempotency_key {
            Some(k) => format!(
                "c-{}",
                &self.digest(&[b"campaign-id", ctx.caller.as_bytes(), k.as_bytes()])[..16]
            ),
            None => format!("c-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]),
        };
        let spec = CampaignSpec::parse(req, &generated, now)
            .map_err(|e| CreateResult::Error(ApiError::InvalidRequest(e)))?;
        let id =
            CampaignId::parse(&spec.id).map_err(|_| CreateResult::Error(ApiError::Internal))?;
        let keys = CampaignKeys::new(&id);

        let no = self
            .store
            .next_campaign_no()
            .await
            .map_err(|e| CreateResult::Error(e.into()))?;
        if !campaign_no_in_range(no) {
            tracing::error!(no, "campaign numbers are exhausted");
            return Err(CreateResult::Error(ApiError::Internal));
        }
        let no = no as u32;
        self.store
            .bind_campaign_no(no, id.as_str())
            .await
            .map_err(|e| CreateResult::Error(e.into()))?;
        let view = CampaignView::new(&spec, "active", 0, 0, crate::domain::clock::to_ms(now));
        let body =
            serde_json::to_string(&view).map_err(|_| CreateResult::Error(ApiError::Internal))?;
        let l = spec.limits;
        let fields = [
            (
                "spec",
                serde_json::to_string(&spec)
                    .map_err(|_| CreateResult::Error(ApiError::Internal))?,
            ),
            ("state", "active".to_owned()),
            ("no", no.to_string()),
            ("stock", spec.stock.to_string()),
            ("issued", "0".to_owned()),
            ("redeemed", "0".to_owned()),
            ("starts_ms", spec.starts_at_ms.to_string()),
            ("ends_ms", spec.ends_at_ms.to_string()),
            ("per_phone", l.per_phone.unwrap_or(0).to_string()),
            ("per_device", l.per_device.unwrap_or(0).to_string()),
            ("per_ip", l.per_ip.unwrap_or(0).to_string()),
            ("valid_ms", spec.valid_ms().to_string()),
        ];
        let idem = ctx
            .idempotency_key
            .as_ref()
            .map(|_| self.idem(ctx, fingerprint));
        match self
            .store
            .create_campaign(&keys, idem.as_ref(), &body, &fields)
            .await
            .map_err(|e| CreateResult::Error(e.into()))?
        {
            CreateOutcome::Created => {
                self.remember(CampaignInfo {
                    id: spec.id.clone(),
                    no,
                    coupon: spec.coupon.clone(),
                    keys,
                });
                Ok(view)
            }
            CreateOutcome::Replay(body) => Err(CreateResult::Replay(body)),
            CreateOutcome::KeyReused => Err(CreateResult::Error(ApiError::IdempotencyKeyReused)),
            CreateOutcome::Exists => Err(CreateResult::Error(ApiError::CampaignExists(spec.id))),
        }
    }

    pub async fn campaign(&self, raw_id: &str) -> Result<CampaignView, ApiError> {
        let id = Self::parse_campaign_id(raw_id)?;
        let keys = CampaignKeys::new(&id);
        let stored = self
            .store
            .campaign(&keys)
            .await?
            .ok_or_else(|| ApiError::CampaignNotFound(id.to_string()))?;
        let spec = Self::stored_spec(&id, &stored.spec_json)?;
        Ok(CampaignView::new(
            &spec,
            &stored.state,
            stored.issued,
            stored.redeemed,
            self.clock.now_ms(),
        ))
    }

    /// Claims one coupon.
    pub async fn claim(
        &self,
        raw_id: &str,
        req: &ClaimRequest,
        ip: ClientIp,
        ctx: &RequestContext,
    ) -> Result<ClaimResponse, ApiError> {
        let id = Self::parse_campaign_id(raw_id)?;
        let mut errs = Errors::default();
        let phone = match req.phone.as_deref() {
            None => {
                errs.push("phone", "is required");
                None
            }
            Some(p) => match Phone::parse(p, self.region) {
                Ok(p) => Some(p),
                Err(e) => {
                    errs.push("phone", e.to_string());
                    None
                }
            },
        };
        let device = match req.device_id.as_deref() {
            None => {
                errs.push("device_id", "is required");
                None
            }
            Some(d) => DeviceId::parse(d)
                .map_err(|m| errs.push("device_id", m))
                .ok(),
        };
        visible("user_id", req.user_id.as_deref(), 128, false, &mut errs);
        if let Some(c) = req.channel.as_deref()
            && (c.is_empty()
                || c.len() > 32
                || !c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                }))
        {
            errs.push("channel", "must match [a-z0-9_-]{1,32}");
        }
        let (Some(phone), Some(device)) = (phone, device) else {
            return Err(ApiError::InvalidRequest(errs.0));
        };
        errs.finish(()).map_err(ApiError::InvalidRequest)?;

        let info = self
            .campaign_info(&id)
            .await?
            .ok_or_else(|| ApiError::CampaignNotFound(id.to_string()))?;
        let p_phone = self.ids.phone(&phone);
        let p_device = self.ids.device(&device);
        let p_ip = self.ids.ip(&ip);
        let fingerprint = self.digest(&[
            b"claim",
            id.as_str().as_bytes(),
            phone.as_e164().as_bytes(),
            device.as_str().as_bytes(),
            req.user_id.as_deref().unwrap_or("").as_bytes(),
            req.channel.as_deref().unwrap_or("").as_bytes(),
        ]);
        let idem = self.idem(ctx, fingerprint);
        let now = self.clock.now_ms();
        let outcome = self
            .store
            .claim(&info.keys, now, &p_phone, &p_device, &p_ip, &idem)
            .await?;
        let label = match &outcome {
            ClaimOutcome::Issued { .. } => "issued",
            ClaimOutcome::NotFound => "campaign_not_found",
            ClaimOutcome::NotActive(_) => "campaign_not_active",
            ClaimOutcome::SoldOut => "sold_out",
            ClaimOutcome::Limit(q) => q.as_str(),
            ClaimOutcome::KeyReused => "idempotency_key_reused",
        };
        metrics::counter!("stampede_claims_total", "outcome" => label).increment(1);
        match outcome {
            ClaimOutcome::Issued {
                serial,
                claimed_ms,
                expires_ms,
            } => {
                let code = self
                    .codes
                    .mint(CodePayload {
                        campaign_no: info.no,
                        serial,
                    })
                    .map_err(|e| {
                        tracing::error!(error = %e, "minting a code failed");
                        ApiError::Internal
                    })?;
                Ok(ClaimResponse {
                    code,
                    campaign_id: info.id.clone(),
                    claimed_at: rfc3339(from_ms(claimed_ms)),
                    expires_at: (expires_ms > 0).then(|| rfc3339(from_ms(expires_ms))),
                    coupon: info.coupon.clone(),
                })
            }
            ClaimOutcome::NotFound => Err(ApiError::CampaignNotFound(id.to_string())),
            ClaimOutcome::NotActive(state) => Err(ApiError::CampaignNotActive {
                id: id.to_string(),
                state,
            }),
            ClaimOutcome::SoldOut => Err(ApiError::SoldOut(id.to_string())),
            ClaimOutcome::Limit(q) => Err(ApiError::LimitExceeded {
                limit: q.as_str(),
                retry_after: None,
            }),
            ClaimOutcome::KeyReused => Err(ApiError::IdempotencyKeyReused),
        }
    }

    fn discount(coupon: &Coupon, order_amount: Option<i64>) -> Result<i64, ApiError> {
        coupon.discount(order_amount).map_err(|e| match e {
            Ineligible::AmountRequired => ApiError::field("order_amount", e.to_string()),
            Ineligible::BelowMinimum { .. } => ApiError::NotEligible(e.to_string()),
        })
    }

    /// Redeems a code for an order.
    pub async fn redeem(
        &self,
        req: &RedeemRequest,
        ctx: &RequestContext,
    ) -> Result<RedeemResponse, ApiError> {
        let mut errs = Errors::default();
        if req.code.is_none() {
            errs.push("code", "is required");
        }
        let order_id = visible("order_id", req.order_id.as_deref(), 128, true, &mut errs);
        let store_id = visible("store_id", req.store_id.as_deref(), 64, false, &mut errs);
        let order_amount = amount("order_amount", req.order_amount, &mut errs);
        if let Some(p) = req.phone.as_deref()
            && let Err(e) = Phone::parse(p, self.region)
        {
            errs.push("phone", e.to_string());
        }
        errs.finish(()).map_err(ApiError::InvalidRequest)?;
        let order_id = order_id.ok_or(ApiError::Internal)?;
        let (code, payload) = self.verify_code(req.code.as_deref())?;
        let info = self.campaign_by_code(payload).await?;
        let discount = Self::discount(&info.coupon, order_amount)?;
        let fingerprint = self.digest(&[
            b"redeem",
            code.as_bytes(),
            order_id.as_bytes(),
            order_amount
                .map(|a| a.to_string())
                .unwrap_or_default()
                .as_bytes(),
            store_id.as_deref().unwrap_or("").as_bytes(),
        ]);
        let idem = self.idem(ctx, fingerprint);
        let outcome = self
            .store
            .redeem(
                &info.keys,
                self.clock.now_ms(),
                payload.serial,
                &order_id,
                discount,
                store_id.as_deref().unwrap_or(""),
                None,
                &idem,
            )
            .await?;
        let label = match &outcome {
            RedeemOutcome::Redeemed { .. } => "redeemed",
            RedeemOutcome::InvalidCode => "invalid_code",
            RedeemOutcome::AlreadyRedeemed => "already_redeemed",
            RedeemOutcome::Expired { .. } => "code_expired",
            RedeemOutcome::WrongClaimer => "wrong_claimer",
            RedeemOutcome::KeyReused => "idempotency_key_reused",
        };
        metrics::counter!("stampede_redemptions_total", "outcome" => label).increment(1);
        match outcome {
            RedeemOutcome::Redeemed {
                order_id,
                redeemed_ms,
                discount,
                store_id,
            } => Ok(RedeemResponse {
                code,
                order_id,
                campaign_id: info.id.clone(),
                discount,
                redeemed_at: rfc3339(from_ms(redeemed_ms)),
                store_id: (!store_id.is_empty()).then_some(store_id),
                gift_sku: match &info.coupon {
                    Coupon::Gift { gift_sku, .. } => Some(gift_sku.clone()),
                    _ => None,
                },
            }),
            RedeemOutcome::InvalidCode => Err(ApiError::InvalidCode),
            RedeemOutcome::AlreadyRedeemed => Err(ApiError::AlreadyRedeemed),
            RedeemOutcome::Expired { expires_ms } => {
                Err(ApiError::CodeExpired(rfc3339(from_ms(expires_ms))))
            }
            RedeemOutcome::WrongClaimer => Err(ApiError::NotEligible(
                "the code is bound to the phone that claimed it".into(),
            )),
            RedeemOutcome::KeyReused => Err(ApiError::IdempotencyKeyReused),
        }
    }

    /// Undoes a redemption (order cancelled or refunded).
    pub async fn rollback(&self, req: &RollbackRequest) -> Result<RollbackResponse, ApiError> {
        let mut errs = Errors::default();
        if req.code.is_none() {
            errs.push("code", "is required");
        }
        let order_id = visible("order_id", req.order_id.as_deref(), 128, true, &mut errs);
        errs.finish(()).map_err(ApiError::InvalidRequest)?;
        let order_id = order_id.ok_or(ApiError::Internal)?;
        let (code, payload) = self.verify_code(req.code.as_deref())?;
        let info = self.campaign_by_code(payload).await?;
        let outcome = self
            .store
            .rollback(&info.keys, self.clock.now_ms(), payload.serial, &order_id)
            .await?;
        let rolled_back = match outcome {
            RollbackOutcome::RolledBack => true,
            RollbackOutcome::NotRedeemed => false,
            RollbackOutcome::OtherOrder => return Err(ApiError::AlreadyRedeemed),
            RollbackOutcome::InvalidCode => return Err(ApiError::InvalidCode),
        };
        Ok(RollbackResponse {
            code,
            order_id,
            campaign_id: info.id.clone(),
            rolled_back,
        })
    }

    /// Tells whether a code would redeem for this order now; charges nothing.
    pub async fn validate(&self, req: &ValidateRequest) -> Result<ValidateResponse, ApiError> {
        let mut errs = Errors::default();
        if req.code.is_none() {
            errs.push("code", "is required");
        }
        let order_amount = amount("order_amount", req.order_amount, &mut errs);
        if let Some(p) = req.phone.as_deref()
            && let Err(e) = Phone::parse(p, self.region)
        {
            errs.push("phone", e.to_string());
        }
        errs.finish(()).map_err(ApiError::InvalidRequest)?;
        let invalid = |e: ApiError| -> Result<ValidateResponse, ApiError> {
            let (_, code, _) = e.parts();
            Ok(ValidateResponse {
                valid: false,
                discount: None,
                code: Some(code.to_owned()),
                detail: Some(e.to_string()),
                campaign_id: None,
                expires_at: None,
            })
        };
        let (_, payload) = match self.verify_code(req.code.as_deref()) {
            Ok(v) => v,
            Err(e) => return invalid(e),
        };
        let info = match self.campaign_by_code(payload).await {
            Ok(i) => i,
            Err(ApiError::InvalidCode) => return invalid(ApiError::InvalidCode),
            Err(e) => return Err(e),
        };
        let state = self.store.code_state(&info.keys, payload.serial).await?;
        let Some(exp) = state.claim_expires_ms else {
            return invalid(ApiError::InvalidCode);
        };
        let expires_at = (exp > 0).then(|| rfc3339(from_ms(exp)));
        let with_campaign = |mut r: ValidateResponse| {
            r.campaign_id = Some(info.id.clone());
            r.expires_at = expires_at.clone();
            r
        };
        if state.redeemed {
            return invalid(ApiError::AlreadyRedeemed).map(with_campaign);
        }
        if exp > 0 && self.clock.now_ms() >= exp {
            return invalid(ApiError::CodeExpired(rfc3339(from_ms(exp)))).map(with_campaign);
        }
        match Self::discount(&info.coupon, order_amount) {
            Ok(d) => Ok(with_campaign(ValidateResponse {
                valid: true,
                discount: Some(d),
                code: None,
                detail: None,
                campaign_id: None,
                expires_at: None,
            })),
            Err(ApiError::InvalidRequest(e)) => Err(ApiError::InvalidRequest(e)),
            Err(e) => invalid(e).map(with_campaign),
        }
    }
}

/// A create either fails, or is the replay of a first answer (the stored body).
#[derive(Debug)]
pub enum CreateResult {
    Error(ApiError),
    Replay(String),
}
