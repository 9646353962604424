//! Bulk codes: `lua/reserve_codes.lua` reserves one range of serials against
//! stock (with its audit entry, its alerts and its idempotency record in the
//! same step) and later marks the reservation's stream finished. The typed
//! outcome is built here; no positional reply leaves this module.

use crate::store::keys::CampaignKeys;
use crate::store::redis::{Result, Store, StoreError, parse};
use crate::store::scripts;

/// One range of serials: `first ..= first + count - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub first: u64,
    pub count: u64,
    /// When its codes expire (ms; 0: never).
    pub expires_ms: i64,
}

/// What a reservation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// Reserved now; the idempotency record says `pending` until [`Store::codes_streamed`].
    Reserved(Batch),
    /// The same request again, after its stream finished (or died): the same
    /// batch, nothing reserved.
    Replay(Batch),
    /// The same request is being streamed now (its lease has not run out).
    InProgress,
    KeyReused,
    NotFound,
    NotActive(String),
    /// Fewer serials than asked are left; how many are.
    SoldOut {
        remaining: u64,
    },
}

/// The idempotency record guarding one reservation.
#[derive(Debug, Clone)]
pub struct ReserveIdem {
    pub digest: String,
    pub fingerprint: String,
    pub ttl_secs: u64,
    /// How long a `pending` record keeps a duplicate out.
    pub lease_ms: u64,
    /// The record is this request's alone (the server's request id, no
    /// client key): a pending record of its fingerprint is this call sent
    /// again (Redis Cluster's client re-sends after a dropped connection),
    /// answered with its range rather than `in_progress`.
    pub own: bool,
}

fn keys_of(keys: &CampaignKeys, idem: &ReserveIdem) -> [String; 5] {
    [
        keys.meta(),
        keys.batches(),
        keys.idempotency(&idem.digest),
        keys.audit(),
        keys.outbox(),
    ]
}

impl Store {
    /// Reserves `count` serials of the campaign for bulk codes, or refuses
    /// and charges nothing.
    pub async fn reserve_codes(
        &self,
        keys: &CampaignKeys,
        now_ms: i64,
        count: u32,
        actor: &str,
        idem: &ReserveIdem,
    ) -> Result<ReserveOutcome> {
        let k = keys_of(keys, idem);
        let out = self
            .run_reserve(&k, "reserve", now_ms, count, actor, idem)
            .await?;
        let bad = || StoreError::Protocol(format!("reserve_codes: {out:?}"));
        let batch = || -> Result<Batch> {
            Ok(Batch {
                first: parse(out.get(1), "first")?,
                count: parse(out.get(2), "count")?,
                expires_ms: parse(out.get(3), "expires_ms")?,
            })
        };
        Ok(match out.first().map(String::as_str) {
            Some("ok") => ReserveOutcome::Reserved(batch()?),
            Some("replay") => ReserveOutcome::Replay(batch()?),
            Some("in_progress") => ReserveOutcome::InProgress,
            Some("reused") => ReserveOutcome::KeyReused,
            Some("not_found") => ReserveOutcome::NotFound,
            Some("not_active") => ReserveOutcome::NotActive(out.get(1).cloned().ok_or_else(bad)?),
            Some("sold_out") => ReserveOutcome::SoldOut {
                remaining: parse(out.get(1), "remaining")?,
            },
            _ => return Err(bad()),
        })
    }

    /// Marks the reservation's record `done` (its TTL kept): every code was
    /// handed to the response. Returns false when there was no pending record
    /// of this request (it expired, or the lease was taken over and finished).
    pub async fn codes_streamed(
        &self,
        keys: &CampaignKeys,
        now_ms: i64,
        count: u32,
        actor: &str,
        idem: &ReserveIdem,
    ) -> Result<bool> {
        let k = keys_of(keys, idem);
        let out = self
            .run_reserve(&k, "done", now_ms, count, actor, idem)
            .await?;
        match out.first().map(String::as_str) {
            Some("ok") => Ok(true),
            Some("gone") => Ok(false),
            _ => Err(StoreError::Protocol(format!("reserve_codes done: {out:?}"))),
        }
    }

    async fn run_reserve(
        &self,
        k: &[String; 5],
        mode: &str,
        now_ms: i64,
        count: u32,
        actor: &str,
        idem: &ReserveIdem,
    ) -> Result<Vec<String>> {
        let (now, count) = (now_ms.to_string(), count.to_string());
        let (ttl, lease) = (idem.ttl_secs.to_string(), idem.lease_ms.to_string());
        self.script(
            &scripts::RESERVE_CODES,
            &k.iter().map(String::as_str).collect::<Vec<_>>(),
            &[
                mode,
                &now,
                &count,
                &idem.fingerprint,
                &ttl,
                &lease,
                actor,
                if idem.own { "1" } else { "0" },
            ],
        )
        .await
    }
}
