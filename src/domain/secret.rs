//! The server secret and the keys derived from it.
//!
//! One master secret is configured (or generated once into the data dir); each
//! use gets its own HMAC-derived key, so a code tag can never be replayed as an
//! identity pseudonym or the other way round.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA-256 of `parts` (joined without separators: callers pass
/// fixed-width or prefixed parts) under `key`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// An HMAC-SHA-256 key whose inner and outer pads are hashed once: each
/// MAC then costs the message's blocks and one more, not four blocks or
/// more (a claim makes about six).
#[derive(Clone)]
pub struct MacKey(HmacSha256);

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

impl MacKey {
    pub fn new(key: &[u8]) -> Self {
        Self(HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length"))
    }

    /// [`hmac_sha256`] of `parts` under this key.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.0.clone();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }
}

/// The master secret; at least 16 bytes.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub const MIN_LEN: usize = 16;

    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, String> {
        let bytes = bytes.into();
        if bytes.len() < Self::MIN_LEN {
            return Err(format!(
                "the secret must be at least {} bytes long",
                Self::MIN_LEN
            ));
        }
        Ok(Self(bytes))
    }

    /// A fresh random secret, hex-encoded, for first start.
    pub fn generate_hex() -> String {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).expect("the OS random source is available");
        hex::encode(b)
    }

    /// A sub-key for one purpose.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        hmac_sha256(&self.0, &[b"stampede/v1/", purpose.as_bytes()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mac_key_gives_the_hmac_of_its_key() {
        // RFC 4231, test case 2.
        let k = MacKey::new(b"Jefe");
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(
            hex::encode(k.mac(&[b"what do ya want ", b"for nothing?"])),
            want
        );
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", &[b"what do ya want for nothing?"])),
            want
        );
        // The key is reused, not consumed: the same answer twice.
        assert_eq!(k.mac(&[b"x"]), k.mac(&[b"x"]));
        assert_eq!(k.mac(&[b"x"]), hmac_sha256(b"Jefe", &[b"x"]));
    }
}
