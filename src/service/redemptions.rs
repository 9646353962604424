//! Redeem, roll back and validate a code: verify it offline (a forged or
//! mistyped code never reaches Redis), find its campaign in the catalog, run
//! one script.

use std::sync::Arc;

use crate::domain::campaign::{Coupon, Ineligible};
use crate::domain::clock::{Clock, from_ms, rfc3339};
use crate::domain::code::{CodeKey, CodePayload};
use crate::domain::eligibility::OrderFacts;
use crate::domain::identity::{Phone, Pseudonym, Pseudonymizer};
use crate::error::ApiError;
use crate::service::RequestContext;
use crate::service::catalog::{CampaignInfo, Catalog};
use crate::service::idempotency::Idempotency;
use crate::store::{RedeemOutcome, RollbackOutcome, Store};

/// A parsed redemption.
#[derive(Debug, Clone)]
pub struct RedeemCommand {
    pub code: String,
    pub order_id: String,
    pub order_amount: Option<i64>,
    pub phone: Option<Phone>,
    pub store_id: Option<String>,
    pub order: OrderFacts,
}

#[derive(Debug, Clone)]
pub struct RollbackCommand {
    pub code: String,
    pub order_id: String,
}

#[derive(Debug, Clone)]
pub struct ValidateCommand {
    pub code: String,
    pub order_amount: Option<i64>,
    pub phone: Option<Phone>,
    pub order: OrderFacts,
}

#[derive(Debug, Clone)]
pub struct Redeemed {
    pub code: String,
    pub order_id: String,
    pub campaign_id: String,
    pub discount: i64,
    pub redeemed_ms: i64,
    pub store_id: Option<String>,
    pub gift_sku: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RolledBack {
    pub code: String,
    pub order_id: String,
    pub campaign_id: String,
    pub rolled_back: bool,
}

/// Whether a code would redeem now, and if not, why (an API error `code`).
#[derive(Debug, Clone, Default)]
pub struct Validation {
    pub valid: bool,
    pub discount: Option<i64>,
    pub code: Option<&'static str>,
    pub detail: Option<String>,
    pub campaign_id: Option<String>,
    pub expires_ms: Option<i64>,
}

impl Validation {
    fn invalid(e: &ApiError) -> Self {
        Self {
            code: Some(e.parts().1),
            detail: Some(e.to_string()),
            ..Self::default()
        }
    }
}

#[derive(Debug)]
pub struct RedemptionService {
    store: Store,
    catalog: Arc<Catalog>,
    idem: Idempotency,
    codes: CodeKey,
    ids: Pseudonymizer,
    clock: Arc<dyn Clock>,
}

/// The discount the order gets, after the campaign's eligibility rules.
fn discount(
    info: &CampaignInfo,
    order_amount: Option<i64>,
    order: &OrderFacts,
) -> Result<i64, ApiError> {
    info.eligibility
        .check(order)
        .map_err(|u| ApiError::NotEligible(u.to_string()))?;
    if let (Some(min), Some(amount)) = (info.coupon.min_order_amount(), order_amount)
        && amount < min
    {
        return Err(ApiError::NotEligible(
            Ineligible::BelowMinimum { amount, min }.to_string(),
        ));
    }
    let base = info.eligibility.discount_base(order, order_amount);
    info.coupon.discount(base).map_err(|e| match e {
        Ineligible::AmountRequired => ApiError::field("order_amount", e.to_string()),
        Ineligible::BelowMinimum { .. } => ApiError::NotEligible(e.to_string()),
    })
}

impl RedemptionService {
    pub fn new(
        store: Store,
        catalog: Arc<Catalog>,
        idem: Idempotency,
        codes: CodeKey,
        ids: Pseudonymizer,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            catalog,
            idem,
            codes,
            ids,
            clock,
        }
    }

    /// The claimer a redemption must match: the phone's pseudonym when the
    /// campaign binds codes to their claimer (then the phone is required).
    fn claimer(
        &self,
        info: &CampaignInfo,
        phone: Option<&Phone>,
    ) -> Result<Option<Pseudonym>, ApiError> {
        if !info.bind_to_claimer {
            return Ok(None);
        }
        match phone {
            Some(p) => Ok(Some(self.ids.phone(p))),
            None => Err(ApiError::NotEligible(
                "bind_to_claimer: this code is bound to the phone that claimed it; send phone"
                    .into(),
            )),
        }
    }

    /// Checks a code's signature offline.
    pub fn verify(&self, raw: &str) -> Result<CodePayload, ApiError> {
        self.codes.verify(raw).map_err(|e| {
            metrics::counter!("stampede_code_rejections_total", "reason" => e.label()).increment(1);
            ApiError::InvalidCode
        })
    }

    /// The campaign of a code (verified offline first).
    pub async fn campaign_of(&self, raw: &str) -> Result<Arc<CampaignInfo>, ApiError> {
        let p = self.verify(raw)?;
        self.catalog.by_code(p).await
    }

    /// The request fingerprint of a redemption (its idempotency record's).
    fn redeem_fingerprint(&self, cmd: &RedeemCommand) -> String {
        self.idem.digest(&[
            b"redeem",
            cmd.code.as_bytes(),
            cmd.order_id.as_bytes(),
            cmd.order_amount
                .map(|a| a.to_string())
                .unwrap_or_default()
                .as_bytes(),
            cmd.store_id.as_deref().unwrap_or("").as_bytes(),
            cmd.phone.as_ref().map_or("", Phone::as_e164).as_bytes(),
            format!("{:?}", cmd.order).as_bytes(),
        ])
    }

    /// The first answer to a redemption under the client's
    /// `Idempotency-Key`, when one is recorded: a retry is answered with it
    /// before any rate rule runs (API.md: a retry changes nothing, rule
    /// quotas and failure counts included). `None` without a key, for a
    /// code that does not verify or has no campaign, or when nothing is
    /// recorded yet: the redemption then runs as usual, rules first.
    pub async fn recorded(
        &self,
        cmd: &RedeemCommand,
        ctx: &RequestContext,
    ) -> Result<Option<Result<Redeemed, ApiError>>, ApiError> {
        if ctx.idempotency_key.is_none() {
            return Ok(None);
        }
        let Ok(payload) = self.codes.verify(&cmd.code) else {
            return Ok(None);
        };
        let Ok(info) = self.catalog.by_code(payload).await else {
            return Ok(None);
        };
        let idem = self.idem.record(ctx, self.redeem_fingerprint(cmd));
        let (keys, _) = info.locate(payload.serial);
        Ok(self
            .store
            .recorded_redemption(&keys, &idem)
            .await?
            .map(|outcome| redeemed(cmd, &info, outcome)))
    }

    /// Redeems a code for an order.
    pub async fn redeem(
        &self,
        cmd: &RedeemCommand,
        ctx: &RequestContext,
    ) -> Result<Redeemed, ApiError> {
        let fingerprint = self.redeem_fingerprint(cmd);
        self.idem.own(&self.store, ctx, &fingerprint).await?;
        let payload = self.verify(&cmd.code)?;
        let info = self.catalog.by_code(payload).await?;
        let discount = discount(&info, cmd.order_amount, &cmd.order)?;
        let claimer = self.claimer(&info, cmd.phone.as_ref())?;
        let idem = self.idem.record(ctx, fingerprint);
        let (keys, serial) = info.locate(payload.serial);
        let outcome = self
            .store
            .redeem(
                &keys,
                self.clock.now_ms(),
                serial,
                &cmd.order_id,
                discount,
                cmd.store_id.as_deref().unwrap_or(""),
                claimer.as_ref(),
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
        redeemed(cmd, &info, outcome)
    }

    /// Undoes a redemption (order cancelled or refunded).
    pub async fn rollback(
        &self,
        cmd: &RollbackCommand,
        ctx: &RequestContext,
    ) -> Result<RolledBack, ApiError> {
        let fingerprint =
            self.idem
                .digest(&[b"rollback", cmd.code.as_bytes(), cmd.order_id.as_bytes()]);
        if let Some(first) = self.idem.own(&self.store, ctx, &fingerprint).await? {
            return Ok(RolledBack {
                code: cmd.code.clone(),
                order_id: cmd.order_id.clone(),
                campaign_id: self.campaign_of(&cmd.code).await?.id.clone(),
                rolled_back: first == "1",
            });
        }
        let payload = self.verify(&cmd.code)?;
        let info = self.catalog.by_code(payload).await?;
        let (keys, serial) = info.locate(payload.serial);
        // Under a client key, the answer is recorded in the rollback's own
        // step (a retry after a lost reply gets the first answer).
        let record = ctx
            .idempotency_key
            .is_some()
            .then(|| self.idem.record(ctx, fingerprint));
        let outcome = self
            .store
            .rollback(
                &keys,
                self.clock.now_ms(),
                serial,
                &cmd.order_id,
                record.as_ref(),
            )
            .await?;
        let rolled_back = match outcome {
            RollbackOutcome::RolledBack => true,
            RollbackOutcome::NotRedeemed => false,
            RollbackOutcome::OtherOrder => return Err(ApiError::AlreadyRedeemed),
            RollbackOutcome::InvalidCode => return Err(ApiError::InvalidCode),
            RollbackOutcome::KeyReused => return Err(ApiError::IdempotencyKeyReused),
        };
        Ok(RolledBack {
            code: cmd.code.clone(),
            order_id: cmd.order_id.clone(),
            campaign_id: info.id.clone(),
            rolled_back,
        })
    }

    /// Tells whether a code would redeem for this order now; charges nothing.
    pub async fn validate(&self, cmd: &ValidateCommand) -> Result<Validation, ApiError> {
        let payload = match self.verify(&cmd.code) {
            Ok(p) => p,
            Err(e) => return Ok(Validation::invalid(&e)),
        };
        let info = match self.catalog.by_code(payload).await {
            Ok(i) => i,
            Err(ApiError::InvalidCode) => return Ok(Validation::invalid(&ApiError::InvalidCode)),
            Err(e) => return Err(e),
        };
        let (keys, serial) = info.locate(payload.serial);
        let state = self.store.code_state(&keys, serial).await?;
        let Some(exp) = state.claim_expires_ms else {
            return Ok(Validation::invalid(&ApiError::InvalidCode));
        };
        let with_campaign = |r: Validation| Validation {
            campaign_id: Some(info.id.clone()),
            expires_ms: Some(exp),
            ..r
        };
        if state.redeemed {
            return Ok(with_campaign(Validation::invalid(
                &ApiError::AlreadyRedeemed,
            )));
        }
        if exp > 0 && self.clock.now_ms() >= exp {
            let e = ApiError::CodeExpired(rfc3339(from_ms(exp)));
            return Ok(with_campaign(Validation::invalid(&e)));
        }
        match self.claimer(&info, cmd.phone.as_ref()) {
            Err(e) => return Ok(with_campaign(Validation::invalid(&e))),
            Ok(Some(p)) if state.claimed_by_other(&p) => {
                let e = ApiError::NotEligible(
                    "bind_to_claimer: the code is bound to the phone that claimed it".into(),
                );
                return Ok(with_campaign(Validation::invalid(&e)));
            }
            Ok(_) => {}
        }
        match discount(&info, cmd.order_amount, &cmd.order) {
            Ok(d) => Ok(with_campaign(Validation {
                valid: true,
                discount: Some(d),
                ..Validation::default()
            })),
            Err(ApiError::InvalidRequest(e)) => Err(ApiError::InvalidRequest(e)),
            Err(e) => Ok(with_campaign(Validation::invalid(&e))),
        }
    }
}

/// A redemption's answer, from what its script did (or recorded).
fn redeemed(
    cmd: &RedeemCommand,
    info: &CampaignInfo,
    outcome: RedeemOutcome,
) -> Result<Redeemed, ApiError> {
    match outcome {
        RedeemOutcome::Redeemed {
            order_id,
            redeemed_ms,
            discount,
            store_id,
        } => Ok(Redeemed {
            code: cmd.code.clone(),
            order_id,
            campaign_id: info.id.clone(),
            discount,
            redeemed_ms,
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
