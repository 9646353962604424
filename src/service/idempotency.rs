//! The idempotency record every script call carries: the client's
//! `Idempotency-Key` (scoped to its API key, kept `client_secs`), or else the
//! server-made request id (kept `server_secs`), so a transport re-send never
//! charges twice. Keys and fingerprints are keyed digests: both may contain
//! identities.

use crate::domain::secret::{Secret, hmac_sha256};
use crate::service::RequestContext;
use crate::store::{CreateIdem, Idem};

/// How long the records live.
#[derive(Debug, Clone, Copy)]
pub struct IdemTtls {
    pub client_secs: u64,
    pub server_secs: u64,
}

#[derive(Clone)]
pub struct Idempotency {
    key: [u8; 32],
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
            key: secret.derive("request-digest"),
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
        hex::encode(&hmac_sha256(&self.key, &joined)[..16])
    }

    /// The record for a claim or redemption with this request fingerprint.
    pub fn record(&self, ctx: &RequestContext, fingerprint: String) -> Idem {
        match &ctx.idempotency_key {
            Some(k) => Idem {
                digest: self.client_digest(ctx, k),
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

    fn client_digest(&self, ctx: &RequestContext, key: &str) -> String {
        self.digest(&[b"client", ctx.caller.as_bytes(), key.as_bytes()])
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
