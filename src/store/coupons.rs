//! Claims, redemptions, rollbacks and code inspection: one script each, and
//! the typed outcome of each (no positional reply leaves this module).

use crate::domain::identity::Pseudonym;
use crate::store::keys::{self, CampaignKeys};
use crate::store::redis::{Result, Store, StoreError, parse};
use crate::store::scripts;

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
    /// The client key came with another request.
    KeyReused,
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

/// What a client key's record holds for this request.
pub(super) enum Recorded {
    /// The key came with another request.
    Reused,
    /// The first answer, as the script recorded it (after the fingerprint).
    Answer(String),
}

/// Idempotency of one script call: the record's key digest, the request's
/// fingerprint, how long the record lives and whether rejections are kept.
#[derive(Debug, Clone)]
pub struct Idem {
    pub digest: String,
    pub fingerprint: String,
    pub ttl_secs: u64,
    pub keep_rejections: bool,
    /// A client key on a stock shard: a `sold_out` there is not recorded
    /// (the service refills the shard and tries again, then records it
    /// once the whole campaign is dry: [`Store::record_sold_out`]).
    pub shard_retries_sold_out: bool,
}

impl Store {
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
        parse_redeem(&out)
    }

    /// The answer recorded under a client key's redemption record, when
    /// there is one: what a retry will be answered, read without running
    /// anything (`KeyReused` when the key came with another request).
    pub async fn recorded_redemption(
        &self,
        keys: &CampaignKeys,
        idem: &Idem,
    ) -> Result<Option<RedeemOutcome>> {
        // As redeem.lua replays it: the answer is a JSON array.
        Ok(match self.recorded(keys, idem).await? {
            None => None,
            Some(Recorded::Reused) => Some(RedeemOutcome::KeyReused),
            Some(Recorded::Answer(answer)) => {
                let out: Vec<String> = serde_json::from_str(&answer)
                    .map_err(|e| StoreError::Protocol(format!("redemption record: {e}")))?;
                Some(parse_redeem(&out)?)
            }
        })
    }

    /// A claim's or redemption's record under a client key (`fingerprint
    /// '|' answer`, as its script wrote it), when there is one.
    pub(super) async fn recorded(
        &self,
        keys: &CampaignKeys,
        idem: &Idem,
    ) -> Result<Option<Recorded>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(keys.idempotency(&idem.digest));
        let Some(rec) = self.query::<Option<String>>(cmd).await? else {
            return Ok(None);
        };
        let Some((fp, answer)) = rec.split_once('|') else {
            return Err(StoreError::Protocol(format!("idempotency record: {rec:?}")));
        };
        Ok(Some(if fp == idem.fingerprint {
            Recorded::Answer(answer.to_owned())
        } else {
            Recorded::Reused
        }))
    }

    pub async fn rollback(
        &self,
        keys: &CampaignKeys,
        now_ms: i64,
        serial: u64,
        order_id: &str,
        idem: Option<&Idem>,
    ) -> Result<RollbackOutcome> {
        let k = [
            keys.meta(),
            keys.redemptions(),
            keys.rollbacks(),
            keys.idempotency(idem.map_or("none", |i| i.digest.as_str())),
        ];
        let (now, serial) = (now_ms.to_string(), serial.to_string());
        let (fp, ttl) = idem.map_or((String::new(), "1".to_owned()), |i| {
            (i.fingerprint.clone(), i.ttl_secs.to_string())
        });
        let out = self
            .script(
                &scripts::ROLLBACK,
                &k.iter().map(String::as_str).collect::<Vec<_>>(),
                &[&now, &serial, order_id, &fp, &ttl],
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
            (Some("reused"), _) => Ok(RollbackOutcome::KeyReused),
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

/// A redemption's answer as redeem.lua returns it (or records it).
fn parse_redeem(out: &[String]) -> Result<RedeemOutcome> {
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
