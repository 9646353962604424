//! Coupon codes: minted from a (campaign number, serial) pair and a truncated
//! HMAC-SHA-256 tag, written as fixed-length base62.
//!
//! Layout of the 104-bit value (big-endian, left-padded with `0` to
//! [`CODE_LEN`] characters of `0-9A-Za-z`):
//!
//! | bits | field |
//! |---|---|
//! | 24 | campaign number (allocated once per campaign, never reused) |
//! | 32 | serial inside the campaign (a Redis counter that only grows) |
//! | 48 | tag: the first 6 bytes of HMAC(code key, "code" ‖ number ‖ serial) |
//!
//! Uniqueness comes from the pair (numbers are never reused, serials never go
//! back); unguessability and offline verification come from the tag: a
//! forged or mistyped code is refused here, before Redis is asked, except with
//! probability 2^-48 per attempt.

use crate::domain::secret::MacKey;

/// Characters in every code.
pub const CODE_LEN: usize = 18;
/// Largest campaign number a code can carry.
pub const MAX_CAMPAIGN_NO: u32 = (1 << 24) - 1;
/// Largest serial a code can carry: also the ceiling on a campaign's stock.
pub const MAX_SERIAL: u64 = (1 << 32) - 1;

const TAG_BITS: u32 = 48;
const SERIAL_BITS: u32 = 32;
const VALUE_BITS: u32 = 24 + SERIAL_BITS + TAG_BITS;

/// What a code stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodePayload {
    pub campaign_no: u32,
    pub serial: u64,
}

/// Why a text is not a valid code. The API answers all of them the same way
/// (`404 invalid_code`); the distinction is for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("a code has {CODE_LEN} characters of 0-9, A-Z, a-z")]
    Malformed,
    #[error("the code's signature does not match")]
    BadSignature,
    #[error("campaign number or serial out of range")]
    OutOfRange,
}

impl CodeError {
    /// The snake_case label of metrics.
    pub fn label(self) -> &'static str {
        match self {
            CodeError::Malformed => "malformed",
            CodeError::BadSignature => "bad_signature",
            CodeError::OutOfRange => "out_of_range",
        }
    }
}

/// Mints and verifies codes under one key.
#[derive(Clone)]
pub struct CodeKey(MacKey);

impl std::fmt::Debug for CodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeKey(..)")
    }
}

impl CodeKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(MacKey::new(&key))
    }

    fn tag(&self, p: CodePayload) -> u64 {
        let no = p.campaign_no.to_be_bytes();
        let serial = (p.serial as u32).to_be_bytes();
        let mac = self.0.mac(&[b"code", &no[1..], &serial]);
        let mut t = [0u8; 8];
        t[2..].copy_from_slice(&mac[..6]);
        u64::from_be_bytes(t)
    }

    /// The code text of a payload.
    pub fn mint(&self, p: CodePayload) -> Result<String, CodeError> {
        if p.campaign_no > MAX_CAMPAIGN_NO || p.serial > MAX_SERIAL {
            return Err(CodeError::OutOfRange);
        }
        let value = (u128::from(p.campaign_no) << (SERIAL_BITS + TAG_BITS))
            | (u128::from(p.serial) << TAG_BITS)
            | u128::from(self.tag(p));
        let text = base62::encode(value);
        Ok(format!("{text:0>CODE_LEN$}"))
    }

    /// The payload of a code text, if its tag checks out.
    pub fn verify(&self, text: &str) -> Result<CodePayload, CodeError> {
        if text.len() != CODE_LEN || !text.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CodeError::Malformed);
        }
        let value = base62::decode(text).map_err(|_| CodeError::Malformed)?;
        if value >> VALUE_BITS != 0 {
            return Err(CodeError::Malformed);
        }
        let tag = (value & ((1u128 << TAG_BITS) - 1)) as u64;
        let p = CodePayload {
            campaign_no: (value >> (SERIAL_BITS + TAG_BITS)) as u32,
            serial: ((value >> TAG_BITS) & u128::from(MAX_SERIAL)) as u64,
        };
        // Constant-time comparison: no early exit on the first differing bit.
        if (self.tag(p) ^ tag) != 0 {
            return Err(CodeError::BadSignature);
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> CodeKey {
        CodeKey::new([7u8; 32])
    }

    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

    proptest! {
        #[test]
        fn mint_then_verify_round_trips(no in 0..=MAX_CAMPAIGN_NO, serial in 0..=MAX_SERIAL) {
            let p = CodePayload { campaign_no: no, serial };
            let code = key().mint(p).unwrap();
            prop_assert_eq!(code.len(), CODE_LEN);
            prop_assert_eq!(key().verify(&code), Ok(p));
        }

        #[test]
        fn every_single_character_change_is_refused(
            no in 0..=MAX_CAMPAIGN_NO, serial in 0..=MAX_SERIAL,
            pos in 0..CODE_LEN, replacement in 0..ALPHABET.len(),
        ) {
            let code = key().mint(CodePayload { campaign_no: no, serial }).unwrap();
            let mut bytes = code.clone().into_bytes();
            prop_assume!(bytes[pos] != ALPHABET[replacement]);
            bytes[pos] = ALPHABET[replacement];
            let mutated = String::from_utf8(bytes).unwrap();
            prop_assert!(key().verify(&mutated).is_err(), "{} accepted", mutated);
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,40}") {
            let _ = key().verify(&s);
        }

        #[test]
        fn another_key_refuses(no in 0..=MAX_CAMPAIGN_NO, serial in 0..=MAX_SERIAL) {
            let code = key().mint(CodePayload { campaign_no: no, serial }).unwrap();
            prop_assert_eq!(CodeKey::new([8u8; 32]).verify(&code), Err(CodeError::BadSignature));
        }
    }

    #[test]
    fn distinct_payloads_give_distinct_codes() {
        let k = key();
        let mut seen = std::collections::HashSet::new();
        for no in 1..4 {
            for serial in 1..2000 {
                assert!(
                    seen.insert(
                        k.mint(CodePayload {
                            campaign_no: no,
                            serial
                        })
                        .unwrap()
                    )
                );
            }
        }
    }

    #[test]
    fn out_of_range_and_malformed() {
        let k = key();
        assert_eq!(
            k.mint(CodePayload {
                campaign_no: MAX_CAMPAIGN_NO + 1,
                serial: 1
            }),
            Err(CodeError::OutOfRange)
        );
        assert_eq!(k.verify("short"), Err(CodeError::Malformed));
        assert_eq!(k.verify("zzzzzzzzzzzzzzzzzz"), Err(CodeError::Malformed));
        assert_eq!(k.verify("00000000000000000-"), Err(CodeError::Malformed));
        assert_eq!(k.verify("ÄÄÄÄÄÄÄÄÄ"), Err(CodeError::Malformed));
    }
}

#[cfg(test)]
mod exhaustive {
    use super::*;

    /// Every one-character change of real codes, at every position, to every
    /// other character of the alphabet, is refused.
    #[test]
    fn flipping_any_one_character_is_refused() {
        let k = CodeKey::new(*b"an exhaustive test key of 32 b!!");
        let alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        for (no, serial) in [
            (1, 1),
            (2, 99),
            (4_000, 1_234_567),
            (MAX_CAMPAIGN_NO, MAX_SERIAL),
        ] {
            let code = k
                .mint(CodePayload {
                    campaign_no: no,
                    serial,
                })
                .unwrap();
            for pos in 0..CODE_LEN {
                for &c in alphabet {
                    let mut b = code.clone().into_bytes();
                    if b[pos] == c {
                        continue;
                    }
                    b[pos] = c;
                    let m = String::from_utf8(b).unwrap();
                    assert!(k.verify(&m).is_err(), "{m} (from {code}) was accepted");
                }
            }
        }
    }
}
