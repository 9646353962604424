//! The idempotency record every script call carries: the client's
//! `Idempotency-Key` (scoped to its API key, kept `client_secs`), or else the
//! server-made request id (kept `server_secs`), so a transport re-send never
//! charges twice. Keys and fingerprints are keyed digests: both may contain
//! identities. A server-made request id carries none and is unique, so its
//! record is named by the id itself ([`server_digest`]).
//!
//! A client key belongs to its caller, not to a campaign: before the effect,
//! [`Idempotency::own`] claims the key for this request's fingerprint in a
//! caller-scoped record (`st:{k:<digest>}`, its own slot), so the same key
//! with another request on another campaign is refused. The campaign-scoped
//! record stays the one written atomically with the effect (the claim script
//! is single-slot). Cost: one extra round trip, only for requests that send
//! an `Idempotency-Key`.

use crate::domain::secret::{MacKey, Secret};
use crate::error::ApiError;
use crate::service::RequestContext;
use crate::store::campaigns::KeyOwner;
use crate::store::keys;
use crate::store::{CreateIdem, Idem, Store};

/// The record name of a server-made request id (`domain::unique`: a
/// process's 64 random bits, then a counter; 32 hex digits): the id itself,
/// its first 64 bits mixed with the counter. It carries no identity and
/// no other request has it, so it needs no keyed digest (a MAC was 5 % of
/// a claim's instructions). The mix matters because the claim script keeps
/// the first 64 bits only (`store::claims`): there two processes' ids
/// collide with probability 2^-64 a pair, as two digests' halves would.
/// `None` for an id of another shape.
fn server_digest(id: &str) -> Option<String> {
    if id.len() != 32 {
        return None;
    }
    let v = u128::from_str_radix(id, 16).ok()?;
    let (prefix, counter) = ((v >> 64) as u64, v as u64);
    let mixed = prefix ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&mixed.to_be_bytes());
    bytes[8..].copy_from_slice(&counter.to_be_bytes());
    Some(crate::domain::hex::lower(&bytes))
}

/// How long the records live.
#[derive(Debug, Clone, Copy)]
pub struct IdemTtls {
    pub client_secs: u64,
    pub server_secs: u64,
}

#[derive(Clone)]
pub struct Idempotency {
    key: MacKey,
    ttls: IdemTtls,
}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("ttls", &self.ttls)
            .finish()
    }
}

impl Idempotency {
    pub fn new(secret: &Secret, ttls: IdemTtls) -> Self {
        Self {
            key: MacKey::new(&secret.derive("request-digest")),
            ttls,
        }
    }

    /// A keyed digest of `parts` (NUL-separated), 128 bits in hex.
    pub fn digest(&self, parts: &[&[u8]]) -> String {
        let mut joined: Vec<&[u8]> = Vec::with_capacity(parts.len() * 2);
        for p in parts {
            joined.push(p);
            joined.push(b"\0");
        }
        crate::domain::hex::lower(&self.key.mac(&joined)[..16])
    }

    /// The record for a claim or redemption with this request fingerprint.
    pub fn record(&self, ctx: &RequestContext, fingerprint: String) -> Idem {
        match &ctx.idempotency_key {
            Some(k) => Idem {
                digest: self.client_digest(ctx, k),
                fingerprint,
                ttl_secs: self.ttls.client_secs,
                keep_rejections: true,
                shard_retries_sold_out: false,
            },
            None => Idem {
                digest: server_digest(&ctx.request_id)
                    .unwrap_or_else(|| self.digest(&[b"server", ctx.request_id.as_bytes()])),
                fingerprint,
                ttl_secs: self.ttls.server_secs,
                keep_rejections: false,
                shard_retries_sold_out: false,
            },
        }
    }

    fn client_digest(&self, ctx: &RequestContext, key: &str) -> String {
        self.digest(&[b"client", ctx.caller.as_bytes(), key.as_bytes()])
    }

    /// Makes sure the client's `Idempotency-Key` (if any) belongs to this
    /// request: the same key with another request, on any campaign, is
    /// `422 idempotency_key_reused`. Returns the first answer when one was
    /// recorded under the key.
    pub async fn own(
        &self,
        store: &Store,
        ctx: &RequestContext,
        fingerprint: &str,
    ) -> Result<Option<String>, ApiError> {
        let Some(k) = &ctx.idempotency_key else {
            return Ok(None);
        };
        let key = keys::idempotency_owner(&self.client_digest(ctx, k));
        match store
            .own_idempotency_key(&key, fingerprint, self.ttls.client_secs)
            .await?
        {
            KeyOwner::Mine(answer) => Ok(answer),
            KeyOwner::Other => Err(ApiError::IdempotencyKeyReused),
        }
    }

    /// Records the first answer under the client's key, if it sent one.
    pub async fn remember_answer(
        &self,
        store: &Store,
        ctx: &RequestContext,
        fingerprint: &str,
        answer: &str,
    ) -> Result<(), ApiError> {
        let Some(k) = &ctx.idempotency_key else {
            return Ok(());
        };
        let key = keys::idempotency_owner(&self.client_digest(ctx, k));
        store
            .record_idempotent_answer(&key, fingerprint, answer, self.ttls.client_secs)
            .await?;
        Ok(())
    }

    /// The record of a create: only with a client key (a create without one
    /// is guarded by the campaign id itself: a second create is `409`).
    pub fn create_record(&self, ctx: &RequestContext, fingerprint: String) -> Option<CreateIdem> {
        let k = ctx.idempotency_key.as_ref()?;
        Some(CreateIdem {
            digest: self.client_digest(ctx, k),
            fingerprint,
            ttl_secs: self.ttls.client_secs,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::server_digest;

    #[test]
    fn server_ids_name_their_records_uniquely_in_their_first_64_bits() {
        let a = server_digest("00112233445566770000000000000001").unwrap();
        let b = server_digest("00112233445566770000000000000002").unwrap();
        let c = server_digest("8899aabbccddeeff0000000000000001").unwrap();
        assert_eq!(a.len(), 32);
        // One process's ids, and two processes' ids with one counter.
        assert_ne!(a[..16], b[..16]);
        assert_ne!(a[..16], c[..16]);
        assert_eq!(
            a,
            server_digest("00112233445566770000000000000001").unwrap()
        );
        assert!(server_digest("not-a-request-id").is_none());
    }
}
