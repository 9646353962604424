//! Reading request bodies under limits: size (413), time (408, slow-loris),
//! JSON nesting depth, then typed JSON. Wrong JSON is a 400
//! `malformed_request` whose detail says what and where; a missing or
//! out-of-range field is left to the domain's 422.

use std::task::Poll;
use std::time::Duration;

use actix_web::HttpRequest;
use actix_web::web::{BytesMut, Payload};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The limits a body is read under.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub timeout: Duration,
}

/// Reads the whole body within the limits.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: Payload,
    limits: &BodyLimits,
) -> Result<BytesMut, ApiError> {
    if let Some(len) = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limits.max_bytes as u64
    {
        return Err(ApiError::PayloadTooLarge(limits.max_bytes));
    }
    let mut buf = BytesMut::new();
    // A small body usually comes in the request's first packet, and it is
    // read without arming the timer (a timer per request showed in the
    // profile of a sold-out flood). But actix calls the handler before it
    // hands that body over, later in the same turn of the connection: so
    // when nothing has come yet, the read first waits once without a timer,
    // having woken its own task, so it is polled again whatever the client
    // does. Only a body still missing then is read under the timer.
    let mut waited = false;
    let early = std::future::poll_fn(|cx| {
        loop {
            match payload.poll_next_unpin(cx) {
                Poll::Ready(Some(chunk)) => {
                    if let Err(e) = append(&mut buf, chunk, limits) {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(Some(Ok(()))),
                Poll::Pending if !waited => {
                    waited = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Ready(None),
            }
        }
    })
    .await;
    if let Some(done) = early {
        return done.map(|()| buf);
    }
    let read = async {
        while let Some(chunk) = payload.next().await {
            append(&mut buf, chunk, limits)?;
        }
        Ok(buf)
    };
    match tokio::time::timeout(limits.timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::RequestTimeout(limits.timeout.as_millis() as u64)),
    }
}

/// Adds a chunk of the body, within the size limit.
fn append(
    buf: &mut BytesMut,
    chunk: Result<actix_web::web::Bytes, actix_web::error::PayloadError>,
    limits: &BodyLimits,
) -> Result<(), ApiError> {
    let chunk = chunk
        .map_err(|e| ApiError::MalformedRequest(format!("the body could not be read: {e}")))?;
    if buf.len() + chunk.len() > limits.max_bytes {
        return Err(ApiError::PayloadTooLarge(limits.max_bytes));
    }
    buf.extend_from_slice(&chunk);
    Ok(())
}

/// Nesting depth of a JSON text, counted outside strings. Bounds the work of
/// the parser before it starts (serde_json's own limit is a fixed 128).
pub fn json_depth_exceeds(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_str {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses `bytes` as a `T` (a JSON object).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8], max_depth: usize) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedRequest(
            "the body is empty; a JSON object is expected".into(),
        ));
    }
    if json_depth_exceeds(bytes, max_depth) {
        return Err(ApiError::MalformedRequest(format!(
            "the JSON is nested deeper than {max_depth} levels"
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        let what = match e.classify() {
            Category::Io | Category::Eof => "the body ends before the JSON does",
            Category::Syntax => "the body is not valid JSON",
            Category::Data => "the JSON does not have the expected shape",
        };
        ApiError::MalformedRequest(format!("{what}: {e}"))
    })
}

/// Body, then JSON.
pub async fn read_json<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: Payload,
    limits: &BodyLimits,
) -> Result<(T, BytesMut), ApiError> {
    let bytes = read_body(req, payload, limits).await?;
    let v = parse_json(&bytes, limits.max_depth)?;
    Ok((v, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        a: Option<i64>,
    }

    #[test]
    fn depth_counts_outside_strings_only() {
        assert!(!json_depth_exceeds(br#"{"a": "[[[[[[[[[["}"#, 2));
        assert!(json_depth_exceeds(b"[[[1]]]", 2));
        assert!(!json_depth_exceeds(br#"{"a\"[[[": 1}"#, 1));
    }

    #[test]
    fn hostile_bodies_are_malformed_not_panics() {
        let deep = "[".repeat(10_000);
        for b in [
            &b""[..],
            b"null",
            b"[]",
            b"\xff\xfe",
            br#"{"a": 1, "a": 2}"#,
            br#"{"a": 1e309}"#,
            br#"{"a": 9223372036854775808}"#,
            br#"{"a": "1"}"#,
            br#"{"b": 1}"#,
            deep.as_bytes(),
        ] {
            let r = parse_json::<T>(b, 16);
            assert!(
                matches!(r, Err(ApiError::MalformedRequest(_))),
                "{:?}: {r:?}",
                String::from_utf8_lossy(b)
            );
        }
    }
}
