//! The campaign record: the one place that knows the fields of the
//! `st:{c}:meta` hash (the Lua scripts read them by the names written here),
//! and the calls that create and read it.

use crate::domain::campaign::CampaignSpec;
use crate::domain::lifecycle::{Action, State};
use crate::store::keys::{self, CampaignKeys};
use crate::store::redis::{Result, Store, StoreError, parse};
use crate::store::scripts;

/// What creating a campaign did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// The same idempotency key and request again: the spec the first
    /// attempt stored, so the first answer can be rebuilt exactly.
    Replay(Box<CampaignSpec>),
    KeyReused,
    Exists,
}

/// A campaign's stored state.
#[derive(Debug, Clone)]
pub struct StoredCampaign {
    pub spec: CampaignSpec,
    pub state: String,
    pub no: u32,
    pub issued: i64,
    pub redeemed: i64,
    /// Bumped by every transition and PATCH (the PATCH compare-and-set).
    pub ver: String,
    /// How many hashes each quota kind is cut into (fixed at create).
    pub quota_buckets: u32,
}

/// An idempotency record guarding one create: key digest, request fingerprint, TTL.
#[derive(Debug, Clone)]
pub struct CreateIdem {
    pub digest: String,
    pub fingerprint: String,
    pub ttl_secs: u64,
}

fn spec_from_json(json: &str) -> Result<CampaignSpec> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Protocol(format!("stored campaign spec is unreadable: {e}")))
}

/// The fields of the meta hash that follow from the spec: the spec (JSON,
/// for reads) and what the scripts check without decoding JSON. Written at
/// create and rewritten by every PATCH.
fn spec_fields(spec: &CampaignSpec) -> Result<Vec<(&'static str, String)>> {
    let l = spec.limits;
    Ok(vec![
        (
            "spec",
            serde_json::to_string(spec).map_err(|e| StoreError::Protocol(e.to_string()))?,
        ),
        ("stock", spec.stock.to_string()),
        ("starts_ms", spec.starts_at_ms.to_string()),
        ("ends_ms", spec.ends_at_ms.to_string()),
        ("per_phone", l.per_phone.unwrap_or(0).to_string()),
        ("per_device", l.per_device.unwrap_or(0).to_string()),
        ("per_ip", l.per_ip.unwrap_or(0).to_string()),
        ("valid_ms", spec.valid_ms().to_string()),
        ("rollout", spec.rollout_percent.to_string()),
        ("low_at", spec.low_stock_at().to_string()),
        (
            "webhook",
            if spec.alerts.webhook_url.is_some() {
                "1"
            } else {
                "0"
            }
            .to_owned(),
        ),
    ])
}

/// What a stock shard's meta copies from the record (`shard_sync.lua`):
/// the claim rules `claim.lua` reads, never its counters. A shard sends no
/// stock webhooks (`webhook` 0, `low_at` -1): a sharded campaign has none.
pub(super) fn shard_fields(c: &StoredCampaign) -> Result<Vec<(&'static str, String)>> {
    let mut f: Vec<(&'static str, String)> = spec_fields(&c.spec)?
        .into_iter()
        .filter(|(k, _)| !matches!(*k, "spec" | "stock" | "low_at" | "webhook"))
        .collect();
    f.extend([
        ("state", c.state.clone()),
        ("low_at", "-1".to_owned()),
        ("webhook", "0".to_owned()),
    ]);
    Ok(f)
}

/// How many hashes each quota kind of a new campaign is cut into (see
/// `store::keys`); stored at create and never changed.
pub fn new_quota_buckets(spec: &CampaignSpec) -> u32 {
    keys::quota_buckets_for(spec.stock.max(0) as u64)
}

/// The meta hash of a new campaign.
fn record_fields(
    spec: &CampaignSpec,
    no: u32,
    state: State,
) -> Result<Vec<(&'static str, String)>> {
    let mut f = spec_fields(spec)?;
    f.extend([
        ("state", state.as_str().to_owned()),
        ("no", no.to_string()),
        ("issued", "0".to_owned()),
        ("redeemed", "0".to_owned()),
        ("created_by", spec.created_by.clone()),
        ("ver", "0".to_owned()),
        ("qb", new_quota_buckets(spec).to_string()),
    ]);
    Ok(f)
}

/// What a lifecycle transition did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionOutcome {
    Done,
    NotFound,
    /// The state was no longer the one read.
    Moved(String),
    /// The creator tried to approve.
    Forbidden,
}

/// What a PATCH did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchOutcome {
    Done,
    NotFound,
    /// Changed since it was read.
    Moved,
    BelowIssued(i64),
}

impl Store {
    /// Hands out the next campaign number.
    pub async fn next_campaign_no(&self) -> Result<i64> {
        let mut cmd = redis::cmd("INCR");
        cmd.arg(keys::campaign_seq());
        self.query(cmd).await
    }

    /// Records which campaign a number belongs to. Written before the
    /// campaign itself, so no code can exist whose number does not resolve.
    pub async fn bind_campaign_no(&self, no: u32, id: &str) -> Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(keys::campaign_by_no(no)).arg(id);
        self.query(cmd).await
    }

    pub async fn campaign_id_by_no(&self, no: u32) -> Result<Option<String>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(keys::campaign_by_no(no));
        self.query(cmd).await
    }

    /// Creates the campaign once; with `idem`, a retry of the same request
    /// replays and another request under the same key is refused.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_campaign(
        &self,
        keys: &CampaignKeys,
        spec: &CampaignSpec,
        no: u32,
        state: State,
        now_ms: i64,
        idem: Option<CreateIdem>,
    ) -> Result<CreateOutcome> {
        let fields = record_fields(spec, no, state)?;
        let (digest, fp, ttl) = match &idem {
            Some(i) => (
                i.digest.as_str(),
                i.fingerprint.as_str(),
                i.ttl_secs.to_string(),
            ),
            None => ("none", "", "1".to_owned()),
        };
        let idem_key = keys.idempotency(digest);
        let (meta, audit) = (keys.meta(), keys.audit());
        // The replay record is the spec itself: the answer is rebuilt from it.
        let record = &fields[0].1;
        let now = now_ms.to_string();
        let mut args: Vec<&str> = vec![fp, &ttl, record, &spec.created_by, &now];
        for (k, v) in &fields {
            args.push(k);
            args.push(v.as_str());
        }
        let out = self
            .script(
                &scripts::CREATE_CAMPAIGN,
                &[&meta, &idem_key, &audit],
                &args,
            )
            .await?;
        match out.first().map(String::as_str) {
            Some("ok") => Ok(CreateOutcome::Created),
            Some("replay") => Ok(CreateOutcome::Replay(Box::new(spec_from_json(
                out.get(1).map_or("", String::as_str),
            )?))),
            Some("reused") => Ok(CreateOutcome::KeyReused),
            Some("exists") => Ok(CreateOutcome::Exists),
            _ => Err(StoreError::Protocol(format!("create_campaign: {out:?}"))),
        }
    }

    pub async fn campaign(&self, keys: &CampaignKeys) -> Result<Option<StoredCampaign>> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(keys.meta()).arg(&[
            "spec", "state", "no", "issued", "redeemed", "ver", "qb", "void",
        ]);
        let v: Vec<Option<String>> = self.query(cmd).await?;
        let [spec, state, no, issued, redeemed, ver, qb, void] = <[Option<String>; 8]>::try_from(v)
            .map_err(|v| StoreError::Protocol(format!("HMGET: {v:?}")))?;
        let Some(spec_json) = spec else {
            return Ok(None);
        };
        let mut c = StoredCampaign {
            spec: spec_from_json(&spec_json)?,
            state: state.unwrap_or_default(),
            no: parse(no.as_ref(), "campaign number")?,
            // Serials taken back after a 503 (`void_claim.lua`) were never issued.
            issued: parse::<i64, _>(issued.as_ref(), "issued")?
                - void
                    .as_deref()
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0),
            redeemed: parse(redeemed.as_ref(), "redeemed")?,
            ver: ver.as_deref().unwrap_or("0").to_owned(),
            quota_buckets: qb.as_deref().and_then(|b| b.parse().ok()).unwrap_or(1),
        };
        // A sharded campaign's claims and redemptions are counted in its shards.
        if c.spec.stock_shards > 1 {
            let (issued, redeemed) = self.shard_totals(&c.spec.id, c.spec.stock_shards).await?;
            c.issued += issued;
            c.redeemed += redeemed;
        }
        Ok(Some(c))
    }

    /// Moves `from` -> `to` if the state is still `from`, with the audit
    /// entry (and the webhook `event`, if any) in the same step.
    #[allow(clippy::too_many_arguments)]
    pub async fn transition(
        &self,
        keys: &CampaignKeys,
        from: State,
        to: State,
        action: Action,
        actor: &str,
        now_ms: i64,
        reason: &str,
        four_eyes: bool,
        event: &str,
    ) -> Result<TransitionOutcome> {
        let (meta, audit, outbox) = (keys.meta(), keys.audit(), keys.outbox());
        let now = now_ms.to_string();
        let out = self
            .script(
                &scripts::TRANSITION,
                &[&meta, &audit, &outbox],
                &[
                    from.as_str(),
                    to.as_str(),
                    action.as_str(),
                    actor,
                    &now,
                    reason,
                    if four_eyes { "1" } else { "0" },
                    event,
                ],
            )
            .await?;
        Ok(match out.first().map(String::as_str) {
            Some("ok") => TransitionOutcome::Done,
            Some("not_found") => TransitionOutcome::NotFound,
            Some("moved") => TransitionOutcome::Moved(out.get(1).cloned().unwrap_or_default()),
            Some("forbidden") => TransitionOutcome::Forbidden,
            _ => return Err(StoreError::Protocol(format!("transition: {out:?}"))),
        })
    }

    /// Writes a patched spec if the campaign is still at version `ver`.
    pub async fn patch_campaign(
        &self,
        keys: &CampaignKeys,
        ver: &str,
        patch: &PatchWrite<'_>,
        actor: &str,
        now_ms: i64,
    ) -> Result<PatchOutcome> {
        let PatchWrite {
            spec,
            detail,
            grants,
        } = *patch;
        let fields = spec_fields(spec)?;
        let (meta, audit, xout) = (keys.meta(), keys.audit(), keys.transfers_out());
        let (stock, now) = (spec.stock.to_string(), now_ms.to_string());
        let g = grants.len().to_string();
        let mut args: Vec<&str> = vec![ver, &stock, actor, &now, detail, &g];
        for (xid, to) in grants {
            args.push(xid);
            args.push(to);
        }
        for (k, v) in &fields {
            args.push(k);
            args.push(v.as_str());
        }
        let out = self
            .script(&scripts::PATCH_CAMPAIGN, &[&meta, &audit, &xout], &args)
            .await?;
        Ok(match out.first().map(String::as_str) {
            Some("ok") => PatchOutcome::Done,
            Some("not_found") => PatchOutcome::NotFound,
            Some("moved") => PatchOutcome::Moved,
            Some("below_issued") => PatchOutcome::BelowIssued(parse(out.get(1), "issued")?),
            _ => return Err(StoreError::Protocol(format!("patch: {out:?}"))),
        })
    }
}

/// What a PATCH writes.
#[derive(Debug, Clone, Copy)]
pub struct PatchWrite<'a> {
    /// The campaign as patched.
    pub spec: &'a CampaignSpec,
    /// What changed, for the audit trail.
    pub detail: &'a str,
    /// (transfer id, `<shard>|<units>`): a stock raise of a sharded
    /// campaign, recorded pending with the new stock (`store::shards`).
    pub grants: &'a [(String, String)],
}

/// Whose an `Idempotency-Key` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOwner {
    /// This request (or a retry of it) holds the key; with the first
    /// answer when one was recorded.
    Mine(Option<String>),
    /// The key was first sent with another request.
    Other,
}

impl Store {
    /// Claims `key` for the request `fingerprint` (across every campaign),
    /// or says whose it is: one `SET NX` plus, for a retry, one `GET`.
    pub async fn own_idempotency_key(
        &self,
        key: &str,
        fingerprint: &str,
        ttl_secs: u64,
    ) -> Result<KeyOwner> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(fingerprint)
            .arg("NX")
            .arg("EX")
            .arg(ttl_secs)
            .arg("GET");
        let prev: Option<String> = self.query(cmd).await?;
        Ok(match prev {
            None => KeyOwner::Mine(None),
            Some(p) => match p.split_once('|') {
                Some((fp, answer)) if fp == fingerprint => KeyOwner::Mine(Some(answer.to_owned())),
                None if p == fingerprint => KeyOwner::Mine(None),
                _ => KeyOwner::Other,
            },
        })
    }

    /// Records the first answer under an owned key (for uses cases whose
    /// effect has no record of its own, like a rollback).
    pub async fn record_idempotent_answer(
        &self,
        key: &str,
        fingerprint: &str,
        answer: &str,
        ttl_secs: u64,
    ) -> Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(format!("{fingerprint}|{answer}"))
            .arg("EX")
            .arg(ttl_secs);
        self.query(cmd).await
    }
}
