//! The campaign record: the one place that knows the fields of the
//! `st:{c}:meta` hash (the Lua scripts read them by the names written here),
//! and the calls that create and read it.

use crate::domain::campaign::CampaignSpec;
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

/// The meta hash of a new campaign: the spec (JSON, for reads) and the
/// flattened fields the claim script checks without decoding JSON.
fn record_fields(spec: &CampaignSpec, no: u32) -> Result<Vec<(&'static str, String)>> {
    let l = spec.limits;
    Ok(vec![
        (
            "spec",
            serde_json::to_string(spec).map_err(|e| StoreError::Protocol(e.to_string()))?,
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
    ])
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
    pub async fn create_campaign(
        &self,
        keys: &CampaignKeys,
        spec: &CampaignSpec,
        no: u32,
        idem: Option<CreateIdem>,
    ) -> Result<CreateOutcome> {
        let fields = record_fields(spec, no)?;
        let (digest, fp, ttl) = match &idem {
            Some(i) => (
                i.digest.as_str(),
                i.fingerprint.as_str(),
                i.ttl_secs.to_string(),
            ),
            None => ("none", "", "1".to_owned()),
        };
        let idem_key = keys.idempotency(digest);
        let meta = keys.meta();
        // The replay record is the spec itself: the answer is rebuilt from it.
        let record = &fields[0].1;
        let mut args: Vec<&str> = vec![fp, &ttl, record];
        for (k, v) in &fields {
            args.push(k);
            args.push(v.as_str());
        }
        let out = self
            .script(&scripts::CREATE_CAMPAIGN, &[&meta, &idem_key], &args)
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
        cmd.arg(keys.meta())
            .arg(&["spec", "state", "no", "issued", "redeemed"]);
        let v: Vec<Option<String>> = self.query(cmd).await?;
        let [spec, state, no, issued, redeemed] = <[Option<String>; 5]>::try_from(v)
            .map_err(|v| StoreError::Protocol(format!("HMGET: {v:?}")))?;
        let Some(spec_json) = spec else {
            return Ok(None);
        };
        Ok(Some(StoredCampaign {
            spec: spec_from_json(&spec_json)?,
            state: state.unwrap_or_default(),
            no: parse(no.as_ref(), "campaign number")?,
            issued: parse(issued.as_ref(), "issued")?,
            redeemed: parse(redeemed.as_ref(), "redeemed")?,
        }))
    }
}
