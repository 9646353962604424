//! Claims, redemptions, rollbacks and code inspection: one script each, and
//! the typed outcome of each (no positional reply leaves this module).

use crate::domain::campaign::Quota;
use crate::domain::identity::Pseudonym;
use crate::store::keys::{self, CampaignKeys};
use crate::store::redis::{Result, Store, StoreError, parse};
use crate::store::scripts;

/// What a claim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    Issued {
        serial: u64,
        claimed_ms: i64,
        expires_ms: i64,
    },
    NotFound,
    /// Not active; `starts_ms` when only its start is still to come.
    NotActive {
        state: String,
        starts_ms: Option<i64>,
    },
    SoldOut,
    /// Outside a condition the script checks (the staged rollout).
    NotEligible(String),
    Limit(Quota),
    KeyReused,
}

/// What a redemption did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeemOutcome {
    Redeemed {
        order_id: String,
        redeemed_ms: i64,
        discount: i64,
        store_id: String,
    },
    InvalidCode,
    AlreadyRedeemed,
    Expired {
        expires_ms: i64,
    },
    WrongClaimer,
    KeyReused,
}

/// What a rollback did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackOutcome {
    RolledBack,
    NotRedeemed,
    OtherOrder,
    InvalidCode,
}

/// The read-only facts about one code.
#[derive(Debug, Clone, Default)]
pub struct CodeState {
    pub campaign_state: Option<String>,
    /// The claim's expiry (ms; 0: never), if the code was issued.
    pub claim_expires_ms: Option<i64>,
    /// The claimer's short phone pseudonym (none for bulk codes).
    pub claimer: Option<String>,
    pub redeemed: bool,
}

impl CodeState {
    /// True when the code has a claimer and it is not `phone`.
    pub fn claimed_by_other(&self, phone: &Pseudonym) -> bool {
        self.claimer
            .as_deref()
            .is_some_and(|c| c != keys::short(phone))
    }
}

/// Idempotency of one script call: the record's key digest, the request's
/// fingerprint, how long the record lives and whether rejections are kept.
#[derive(Debug, Clone)]
pub struct Idem {
    pub digest: String,
    pub fingerprint: String,
    pub ttl_secs: u64,
    pub keep_rejections: bool,
}

/// Who claims, as the claim script counts them (short pseudonyms, their
/// quota buckets).
#[derive(Debug, Clone, Copy)]
pub struct ClaimIds<'a> {
    pub phone: &'a Pseudonym,
    pub device: &'a Pseudonym,
    pub ip: &'a Pseudonym,
}

/// What it takes to undo one claim (see `lua/void_claim.lua`).
#[derive(Debug)]
struct VoidClaim {
    keys: CampaignKeys,
    quotas: [String; 3],
    ids: [String; 3],
    rids: String,
    rid: String,
}

impl Store {
    /// Takes back a claim whose answer came after the caller's 503 (logged
    /// and counted; if Redis cannot be reached for it either, the claim
    /// stays, as after a dropped connection).
    async fn void_claim(&self, v: VoidClaim, serial: u64) {
        let (claims, field) = v.keys.claims(serial);
        let meta = v.keys.meta();
        let k = [
            meta.as_str(),
            &v.quotas[0],
            &v.quotas[1],
            &v.quotas[2],
            &claims,
            &v.rids,
        ];
        let a = [field.as_str(), &v.ids[0], &v.ids[1], &v.ids[2], &v.rid];
        let outcome = match self.script(&scripts::VOID_CLAIM, &k, &a).await {
            Ok(out) if out.first().is_some_and(|s| s == "void") => "voided",
            Ok(_) => "gone",
            Err(e) => {
                tracing::error!(error = %e, serial, "a claim answered 503 could not be taken back");
                "failed"
            }
        };
        tracing::warn!(serial, outcome, "a claim's reply came after its 503");
        metrics::counter!("stampede_claims_voided_total", "outcome" => outcome).increment(1);
    }

    /// Claims one coupon. The call carries its deadline into the script
    /// (see [`Store::script_deadline_ms`]): a claim Redis reaches after the
    /// service has given up is refused there, so a `503` means not charged
    /// (unless the connection dropped, where the outcome stays unknown).
    #[allow(clippy::too_many_arguments)]
    pub async fn claim(
        &self,
        keys: &CampaignKeys,
        quota_buckets: u32,
        now_ms: i64,
        who: ClaimIds<'_>,
        idem: &Idem,
        rollout_bucket: u8,
        channel: &str,
    ) -> Result<(ClaimOutcome, bool)> {
        let deadline_ms = self.script_deadline_ms();
        let (phone, device, ip) = (
            keys::short(who.phone),
            keys::short(who.device),
            keys::short(who.ip),
        );
        // Server ids go to the hash of the second the deadline falls in;
        // it expires 2 s after it, when no re-send can charge any more.
        let rid_second = deadline_ms.div_euclid(1000);
        let (idem_key, mode, rid) = if idem.keep_rejections {
            (keys.idempotency(&idem.digest), "c", "")
        } else {
            (
                keys.request_ids(rid_second),
                "s",
                idem.digest.get(..16).unwrap_or(&idem.digest),
            )
        };
        let k = [
            keys.meta(),
            keys.quota_phone(keys::quota_bucket(who.phone, quota_buckets)),
            keys.quota_device(keys::quota_bucket(who.device, quota_buckets)),
            keys.quota_ip(keys::quota_bucket(who.ip, quota_buckets)),
            keys.claims_prefix(),
            idem_key,
            keys.outbox(),
            keys.stats(),
        ];
        let (now, ttl) = (now_ms.to_string(), idem.ttl_secs.to_string());
        let bucket = rollout_bucket.to_string();
        let (deadline, rid_expire) = (deadline_ms.to_string(), (rid_second + 2).to_string());
        // A reply that comes after the deadline, to a caller that has answered
        // 503: without a client key nobody can ever learn that code, so the
        // claim is taken back (with a key, the client's retry gets the code).
        let orphan = {
            let store = self.clone();
            let void = (mode == "s").then(|| VoidClaim {
                keys: keys.clone(),
                quotas: [k[1].clone(), k[2].clone(), k[3].clone()],
                ids: [phone.clone(), device.clone(), ip.clone()],
                rids: k[5].clone(),
                rid: rid.to_owned(),
            });
            move |late: Vec<String>| async move {
                let fresh = late.first().is_some_and(|s| s == "ok")
                    && late.last().is_some_and(|s| s == "0");
                let serial = late.get(1).and_then(|s| s.parse::<u64>().ok());
                if let (Some(void), Some(serial), true) = (void, serial, fresh) {
                    store.void_claim(void, serial).await;
                }
            }
        };
        let out = self
            .script_or_orphan(
                &scripts::CLAIM,
                &k.iter().map(String::as_str).collect::<Vec<_>>(),
                &[
                    &now,
                    &phone,
                    &device,
                    &ip,
                    &idem.fingerprint,
                    &ttl,
                    mode,
                    &bucket,
                    channel,
                    &deadline,
                    rid,
                    &rid_expire,
                ],
                orphan,
            )
            .await?;
        let bad = || StoreError::Protocol(format!("claim: {out:?}"));
        let replayed = out.len() > 1 && out.last().is_some_and(|r| r == "1");
        let outcome = match out.first().map(String::as_str) {
            Some("ok") => ClaimOutcome::Issued {
                serial: parse(out.get(1), "serial")?,
                claimed_ms: parse(out.get(2), "claimed_ms")?,
                expires_ms: parse(out.get(3), "expires_ms")?,
            },
            Some("late") => return Err(StoreError::Timeout(self.deadline())),
            Some("not_found") => ClaimOutcome::NotFound,
            Some("not_active") => ClaimOutcome::NotActive {
                state: out.get(1).cloned().ok_or_else(bad)?,
                starts_ms: (out.len() == 4)
                    .then(|| parse(out.get(2), "starts_ms"))
                    .transpose()?,
            },
            Some("sold_out") => ClaimOutcome::SoldOut,
            Some("not_eligible") => ClaimOutcome::NotEligible(out.get(1).cloned().ok_or_else(bad)?),
            Some("limit") => {
                ClaimOutcome::Limit(out.get(1).and_then(|q| Quota::parse(q)).ok_or_else(bad)?)
            }
            Some("reused") => ClaimOutcome::KeyReused,
            _ => return Err(bad()),
        };
        Ok((outcome, replayed))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn redeem(
        &self,
        keys: &CampaignKeys,
        now_ms: i64,
        serial: u64,
        order_id: &str,
        discount: i64,
        store_id: &str,
        claimer: Option<&Pseudonym>,
        idem: &Idem,
    ) -> Result<RedeemOutcome> {
        let (claims, field) = keys.claims(serial);
        let k = [
            keys.meta(),
            claims,
            keys.redemptions(),
            keys.idempotency(&idem.digest),
            keys.batches(),
            keys.stats(),
        ];
        let (now, serial, discount, ttl) = (
            now_ms.to_string(),
            serial.to_string(),
            discount.to_string(),
            idem.ttl_secs.to_string(),
        );
        let keep = if idem.keep_rejections { "1" } else { "0" };
        let out = self
            .script(
                &scripts::REDEEM,
                &k.iter().map(String::as_str).collect::<Vec<_>>(),
                &[
                    &now,
                    &serial,
                    order_id,
                    &discount,
                    store_id,
                    &idem.fingerprint,
                    &ttl,
                    keep,
                    &claimer.map(keys::short).unwrap_or_default(),
                    &field,
                ],
            )
            .await?;
        let bad = || StoreError::Protocol(format!("redeem: {out:?}"));
        Ok(match out.first().map(String::as_str) {
            Some("ok") => RedeemOutcome::Redeemed {
                order_id: out.get(1).cloned().ok_or_else(bad)?,
                redeemed_ms: parse(out.get(2), "redeemed_ms")?,
                discount: parse(out.get(3), "discount")?,
                store_id: out.get(4).cloned().unwrap_or_default(),
            },
            Some("invalid_code") => RedeemOutcome::InvalidCode,
            Some("already_redeemed") => RedeemOutcome::AlreadyRedeemed,
            Some("expired") => RedeemOutcome::Expired {
                expires_ms: parse(out.get(1), "expires_ms")?,
            },
            Some("wrong_claimer") => RedeemOutcome::WrongClaimer,
            Some("reused") => RedeemOutcome::KeyReused,
            _ => return Err(bad()),
        })
    }

    pub async fn rollback(
        &self,
        keys: &CampaignKeys,
        now_ms: i64,
        serial: u64,
        order_id: &str,
    ) -> Result<RollbackOutcome> {
        let k = [keys.meta(), keys.redemptions(), keys.rollbacks()];
        let (now, serial) = (now_ms.to_string(), serial.to_string());
        let out = self
            .script(
                &scripts::ROLLBACK,
                &k.iter().map(String::as_str).collect::<Vec<_>>(),
                &[&now, &serial, order_id],
            )
            .await?;
        match (
            out.first().map(String::as_str),
            out.get(1).map(String::as_str),
        ) {
            (Some("ok"), Some("1")) => Ok(RollbackOutcome::RolledBack),
            (Some("ok"), Some("0")) => Ok(RollbackOutcome::NotRedeemed),
            (Some("other_order"), _) => Ok(RollbackOutcome::OtherOrder),
            (Some("invalid_code"), _) => Ok(RollbackOutcome::InvalidCode),
            _ => Err(StoreError::Protocol(format!("rollback: {out:?}"))),
        }
    }

    pub async fn code_state(&self, keys: &CampaignKeys, serial: u64) -> Result<CodeState> {
        let (claims, field) = keys.claims(serial);
        let k = [keys.meta(), claims, keys.redemptions(), keys.batches()];
        let serial = serial.to_string();
        let out = self
            .script(
                &scripts::INSPECT_CODE,
                &k.iter().map(String::as_str).collect::<Vec<_>>(),
                &[&serial, &field],
            )
            .await?;
        // A claim record is 'phone|claimed_ms|expires_ms|channel'.
        let record = out.get(1).filter(|s| !s.is_empty());
        let field = |i: usize| record.and_then(|r| r.split('|').nth(i));
        let claim_expires_ms = match record {
            None => None,
            Some(_) => Some(
                field(2)
                    .and_then(|e| e.parse().ok())
                    .ok_or_else(|| StoreError::Protocol("corrupt claim record".into()))?,
            ),
        };
        Ok(CodeState {
            campaign_state: out.first().filter(|s| !s.is_empty()).cloned(),
            claim_expires_ms,
            claimer: field(0).filter(|p| !p.is_empty()).map(str::to_owned),
            redeemed: out.get(2).is_some_and(|s| !s.is_empty()),
        })
    }
}
