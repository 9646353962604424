//! Claim one coupon: pseudonymize, resolve the campaign from the catalog,
//! run the claim script once, mint the code for the serial it returns.

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use crate::domain::campaign::{CampaignId, Coupon};
use crate::domain::clock::Clock;
use crate::domain::code::{CodeKey, CodePayload};
use crate::domain::identity::{ClientIp, DeviceId, Phone, Pseudonym, Pseudonymizer};
use crate::error::ApiError;
use crate::service::RequestContext;
use crate::service::catalog::Catalog;
use crate::service::idempotency::Idempotency;
use crate::service::shards;
use crate::service::soldout::SoldOut;
use crate::service::tally::Tally;
use crate::store::keys::CampaignKeys;
use crate::store::rules::{RuleCall, RuleResult};
use crate::store::{ClaimIds, ClaimOutcome, Store};

/// A parsed claim.
#[derive(Debug, Clone)]
pub struct ClaimCommand {
    pub campaign: CampaignId,
    pub phone: Phone,
    pub device: DeviceId,
    pub user_id: Option<String>,
    pub channel: Option<String>,
}

/// The pseudonyms a claim is counted under (computed once per request and
/// shared with the rules engine).
#[derive(Debug, Clone)]
pub struct Claimant {
    pub phone: Pseudonym,
    pub device: Pseudonym,
    pub ip: Pseudonym,
}

/// A claim checked with its rules in one call.
#[derive(Debug)]
pub struct Checked {
    /// The rules' answers; `None` when the claim was refused before its
    /// script call, so its rules were not run.
    pub rules: Option<Vec<RuleResult>>,
    /// The claim's result; `None` when a rule refused it (not tried).
    pub result: Option<Result<Issued, ApiError>>,
}

/// An issued coupon.
#[derive(Debug, Clone)]
pub struct Issued {
    pub code: String,
    pub campaign_id: String,
    pub claimed_ms: i64,
    pub expires_ms: i64,
    pub coupon: Coupon,
}

/// A stable 0..99 bucket of a phone for staged rollouts: the first 32 bits
/// of its pseudonym (keyed, so nobody can pick a phone to land in a bucket;
/// stable, so raising the percent only ever lets more phones in).
pub fn rollout_bucket(phone: &Pseudonym) -> u8 {
    let head = phone.as_str().get(..8).unwrap_or("0");
    (u32::from_str_radix(head, 16).unwrap_or(0) % 100) as u8
}

#[derive(Debug)]
pub struct ClaimService {
    store: Store,
    soldout: Arc<SoldOut>,
    tally: Tally,
    catalog: Arc<Catalog>,
    idem: Idempotency,
    codes: CodeKey,
    ids: Pseudonymizer,
    clock: Arc<dyn Clock>,
}

impl ClaimService {
    pub fn new(
        store: Store,
        catalog: Arc<Catalog>,
        idem: Idempotency,
        codes: CodeKey,
        ids: Pseudonymizer,
        clock: Arc<dyn Clock>,
        soldout: Arc<SoldOut>,
    ) -> Self {
        Self {
            store,
            soldout,
            tally: Tally::default(),
            catalog,
            idem,
            codes,
            ids,
            clock,
        }
    }

    pub fn claimant(&self, cmd: &ClaimCommand, ip: &ClientIp) -> Claimant {
        Claimant {
            phone: self.ids.phone(&cmd.phone),
            device: self.ids.device(&cmd.device),
            ip: self.ids.ip(ip),
        }
    }

    /// The refusal every claim on `campaign` gets right now, when this
    /// instance remembers one (`service::soldout`): answered without Redis.
    /// Never for a claim under an `Idempotency-Key` (its retry must get the
    /// first answer).
    pub fn remembered_refusal(
        &self,
        campaign: &CampaignId,
        ctx: &RequestContext,
    ) -> Option<ApiError> {
        if ctx.idempotency_key.is_some() {
            return None;
        }
        let e = self
            .soldout
            .check(campaign.as_str(), (Instant::now(), self.clock.now_ms()))?;
        // The handles are made once: `counter!` looks its labels up in the
        // recorder's registry on every call, a cost this path shows.
        static COUNTERS: LazyLock<[[metrics::Counter; 2]; 2]> = LazyLock::new(|| {
            ["sold_out", "campaign_not_active"].map(|label| {
                [
                    metrics::counter!("stampede_claims_total", "outcome" => label),
                    metrics::counter!("stampede_claims_in_process_total", "outcome" => label),
                ]
            })
        });
        let which = usize::from(!matches!(e, ApiError::SoldOut(_)));
        for c in &COUNTERS[which] {
            c.increment(1);
        }
        Some(e)
    }

    /// Whether a claim on `campaign` without an `Idempotency-Key` is
    /// answered from memory right now ([`ClaimService::remembered_refusal`]):
    /// the edge makes no log span for such a claim, which logs nothing.
    pub fn answered_from_memory(&self, campaign: &str) -> bool {
        self.soldout
            .holds(campaign, (Instant::now(), self.clock.now_ms()))
    }

    /// Counts a claim on `campaign` that the block list or a ban refused
    /// (added to its stats by [`ClaimService::flush_remembered`]).
    pub fn count_blocked(&self, campaign: &CampaignId) {
        let known = self.catalog.cached(campaign.as_str()).is_some();
        self.tally.add(campaign.as_str(), "rej:blocked", known);
    }

    /// Counts the refusals answered from memory (sold out, not active) and
    /// those the guard decided in process (blocked, on campaigns that
    /// exist) in each campaign's stats.
    pub async fn flush_remembered(&self) {
        let mut counts = self.soldout.flush(Instant::now());
        // A campaign this instance does not hold in memory is looked up in
        // the store, at most LOOKUPS a flush: blocked claims on made-up ids
        // cost a bounded number of reads, and write no stats.
        const LOOKUPS: usize = 16;
        let mut lookups = 0;
        for (id, field, n) in self.tally.take() {
            let known = match self.catalog.cached(&id) {
                Some(_) => true,
                None if lookups < LOOKUPS => {
                    lookups += 1;
                    match CampaignId::parse(&id) {
                        Ok(cid) => matches!(self.catalog.get(&cid).await, Ok(Some(_))),
                        Err(_) => false,
                    }
                }
                None => false,
            };
            if known {
                counts.push((id, field, n));
            }
        }
        for (id, field, n) in counts {
            let Ok(id) = CampaignId::parse(&id) else {
                continue;
            };
            if let Err(e) = self
                .store
                .count_refusals(&CampaignKeys::new(&id), field, n)
                .await
            {
                tracing::debug!(error = %e, "in-process refusals not counted");
            }
        }
    }

    /// The request a client key is bound to: its campaign, phone, device,
    /// user and channel.
    fn fingerprint(&self, cmd: &ClaimCommand) -> String {
        self.idem.digest(&[
            b"claim",
            cmd.campaign.as_str().as_bytes(),
            cmd.phone.as_e164().as_bytes(),
            cmd.device.as_str().as_bytes(),
            cmd.user_id.as_deref().unwrap_or("").as_bytes(),
            cmd.channel.as_deref().unwrap_or("").as_bytes(),
        ])
    }

    /// The first answer to a claim under a client `Idempotency-Key`, when
    /// one is recorded: a retry is answered with it before any rate rule
    /// runs, so retrying a timed-out claim never uses up a rule's quota (nor
    /// earns a ban). `None` without a key, or when no answer is recorded
    /// yet (the claim then runs as usual, rules first).
    pub async fn recorded(
        &self,
        cmd: &ClaimCommand,
        who: &Claimant,
        ctx: &RequestContext,
    ) -> Result<Option<Result<Issued, ApiError>>, ApiError> {
        if ctx.idempotency_key.is_none() {
            return Ok(None);
        }
        let Some(info) = self.catalog.get(&cmd.campaign).await? else {
            return Ok(None);
        };
        let idem = self.idem.record(ctx, self.fingerprint(cmd));
        let (keys, shard) = info.route(&who.phone);
        let Some(outcome) = self.store.recorded_claim(&keys, &idem).await? else {
            return Ok(None);
        };
        let outcome = global(outcome, shard, &info);
        Ok(Some(self.answer(&info, &cmd.campaign, outcome, true)))
    }

    /// Claims one coupon for `who`.
    pub async fn claim(
        &self,
        cmd: &ClaimCommand,
        who: &Claimant,
        ctx: &RequestContext,
    ) -> Result<Issued, ApiError> {
        let checked = self.claim_with_rules(cmd, who, ctx, &[]).await?;
        checked.result.unwrap_or(Err(ApiError::Internal))
    }

    /// Claims one coupon for `who`, with `rules` checked (and charged) in
    /// the claim's own script call, before the claim (single node only).
    /// The rules are not run when the claim is refused before its call
    /// (`rules: None`): the caller runs them on their own then.
    pub async fn claim_with_rules(
        &self,
        cmd: &ClaimCommand,
        who: &Claimant,
        ctx: &RequestContext,
        rules: &[RuleCall],
    ) -> Result<Checked, ApiError> {
        let early = |e: ApiError| Checked {
            rules: None,
            result: Some(Err(e)),
        };
        let id = &cmd.campaign;
        let Some(info) = self.catalog.get(id).await? else {
            return Ok(early(ApiError::CampaignNotFound(id.to_string())));
        };
        // What a client key is bound to. Without a key nothing reads it (a
        // server id's record holds the answer alone), so it is not made: a
        // MAC a claim, and one more distinct string in the script's call.
        let fingerprint = match ctx.idempotency_key {
            Some(_) => self.fingerprint(cmd),
            None => "-".to_owned(),
        };
        if let Err(e) = self.idem.own(&self.store, ctx, &fingerprint).await {
            return match e {
                ApiError::Unavailable => Err(e),
                e => Ok(early(e)),
            };
        }
        if !info.channels.is_empty()
            && !cmd
                .channel
                .as_ref()
                .is_some_and(|c| info.channels.contains(c))
        {
            if let Err(e) = self.store.count_refusal(&info.keys, "rej:channel").await {
                tracing::debug!(error = %e, "refusal not counted");
            }
            return Ok(early(ApiError::NotEligible(format!(
                "channels: this campaign takes claims from {} only",
                info.channels.join(", ")
            ))));
        }
        let mut idem = self.idem.record(ctx, fingerprint);
        // A sharded campaign: the phone's shard (`service::shards`); a
        // dry shard's `sold_out` is not final, so not recorded under a key.
        let (keys, shard) = info.route(&who.phone);
        idem.shard_retries_sold_out = shard.is_some();
        let call = |rules| {
            self.store.claim(
                &keys,
                info.quota_buckets,
                self.clock.now_ms(),
                ClaimIds {
                    phone: &who.phone,
                    device: &who.device,
                    ip: &who.ip,
                },
                &idem,
                rollout_bucket(&who.phone),
                cmd.channel.as_deref().unwrap_or(""),
                rules,
            )
        };
        let mut reply = call(rules).await?;
        let mut campaign_dry = shard.is_none();
        if let Some(i) = shard {
            // Refilled until it issues, or the whole campaign is dry: a
            // claim is never told `sold_out` while another shard has stock.
            let until = std::time::Instant::now() + self.store.deadline();
            let mut repairs = 0;
            loop {
                let more = match &reply.outcome {
                    Some((ClaimOutcome::SoldOut, false)) => {
                        shards::refill(&self.store, &info, i).await?
                    }
                    Some((ClaimOutcome::NotFound, _)) if repairs < shards::MAX_REPAIRS => {
                        repairs += 1;
                        shards::repair(&self.store, &info).await?
                    }
                    _ => break,
                };
                if !more {
                    campaign_dry = true;
                    break;
                }
                if std::time::Instant::now() >= until {
                    // Others took each refill first for a whole deadline:
                    // stock is still moving. Not charged; a retry may win.
                    metrics::counter!("stampede_shard_refills_exhausted_total").increment(1);
                    return Err(ApiError::Unavailable);
                }
                // Its rules were charged by the first call: not again.
                reply.outcome = call(&[]).await?.outcome;
            }
        }
        if let (Some(_), Some((ClaimOutcome::SoldOut, false)), true) =
            (shard, &reply.outcome, idem.keep_rejections)
        {
            // The whole campaign is dry: now the key's answer.
            self.store.record_sold_out(&keys, &idem).await?;
        }
        let Some((outcome, replayed)) = reply.outcome else {
            return Ok(Checked {
                rules: Some(reply.rules),
                result: None,
            });
        };
        let outcome = global(outcome, shard, &info);
        // A dry shard is the campaign's sold-out only when every shard is.
        let remember = !replayed && (campaign_dry || outcome != ClaimOutcome::SoldOut);
        let result = self.answer(&info, id, outcome, !remember);
        Ok(Checked {
            rules: Some(reply.rules),
            result: Some(result),
        })
    }

    /// The answer to a claim the script ran: metrics, the in-process
    /// memory of refusals every claim gets (not when `replayed`: an old
    /// answer, or a dry shard of a campaign that is not), the minted code.
    fn answer(
        &self,
        info: &crate::service::catalog::CampaignInfo,
        id: &CampaignId,
        outcome: ClaimOutcome,
        replayed: bool,
    ) -> Result<Issued, ApiError> {
        // One handle per outcome, made once (as in `remembered_refusal`).
        const OUTCOMES: [&str; 9] = [
            "issued",
            "campaign_not_found",
            "campaign_not_active",
            "sold_out",
            "not_eligible",
            "per_phone",
            "per_device",
            "per_ip",
            "idempotency_key_reused",
        ];
        static COUNTERS: LazyLock<[metrics::Counter; 9]> = LazyLock::new(|| {
            OUTCOMES.map(|label| metrics::counter!("stampede_claims_total", "outcome" => label))
        });
        let label = match &outcome {
            ClaimOutcome::Issued { .. } => "issued",
            ClaimOutcome::NotFound => "campaign_not_found",
            ClaimOutcome::NotActive { .. } => "campaign_not_active",
            ClaimOutcome::SoldOut => "sold_out",
            ClaimOutcome::NotEligible(_) => "not_eligible",
            ClaimOutcome::Limit(q) => q.as_str(),
            ClaimOutcome::KeyReused => "idempotency_key_reused",
        };
        if let Some(i) = OUTCOMES.iter().position(|o| *o == label) {
            COUNTERS[i].increment(1);
        }
        // A refusal every claim gets now is remembered; a replay is an old
        // answer, so it is not.
        if !replayed {
            let now = (Instant::now(), self.clock.now_ms());
            match &outcome {
                ClaimOutcome::SoldOut => self.soldout.remember(id.as_str(), None, None, now),
                ClaimOutcome::NotActive { state, starts_ms } => {
                    self.soldout
                        .remember(id.as_str(), Some(state), *starts_ms, now)
                }
                _ => {}
            }
        }
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
                Ok(Issued {
                    code,
                    campaign_id: info.id.clone(),
                    claimed_ms,
                    expires_ms,
                    coupon: info.coupon.clone(),
                })
            }
            ClaimOutcome::NotFound => Err(ApiError::CampaignNotFound(id.to_string())),
            ClaimOutcome::NotActive { state, .. } => Err(ApiError::CampaignNotActive {
                id: id.to_string(),
                state,
            }),
            ClaimOutcome::SoldOut => Err(ApiError::SoldOut(id.to_string())),
            ClaimOutcome::NotEligible(_) => Err(ApiError::NotEligible(
                "rollout_percent: this phone is not in the campaign's staged rollout yet".into(),
            )),
            ClaimOutcome::Limit(q) => Err(ApiError::quota(q.as_str())),
            ClaimOutcome::KeyReused => Err(ApiError::IdempotencyKeyReused),
        }
    }
}

/// A claim's outcome with a stock shard's serial made the campaign's.
fn global(
    outcome: ClaimOutcome,
    shard: Option<u32>,
    info: &crate::service::catalog::CampaignInfo,
) -> ClaimOutcome {
    match (outcome, shard) {
        (
            ClaimOutcome::Issued {
                serial,
                claimed_ms,
                expires_ms,
            },
            Some(i),
        ) => ClaimOutcome::Issued {
            serial: crate::store::shards::global_serial(serial, i, info.shards),
            claimed_ms,
            expires_ms,
        },
        (o, _) => o,
    }
}
