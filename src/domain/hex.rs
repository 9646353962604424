//! Lower-case hex text of bytes, on the hot path: ids, pseudonyms, digests.
//!
//! `hex::encode` collects its text char by char; a claim makes about ten
//! such strings, so this writes them through `hex::encode_to_slice`.

/// `bytes` in lower-case hex (`hex::encode`'s text, made in one buffer).
pub fn lower(bytes: &[u8]) -> String {
    let mut text = vec![0u8; bytes.len() * 2];
    // A buffer of twice the input's length cannot fail.
    if hex::encode_to_slice(bytes, &mut text).is_err() {
        return hex::encode(bytes);
    }
    String::from_utf8(text).unwrap_or_else(|_| hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::lower;

    #[test]
    fn is_hex_encode() {
        for b in [&b""[..], b"\x00", b"\x01\xab\xff", b"stampede/v1/"] {
            assert_eq!(lower(b), hex::encode(b));
        }
    }
}
