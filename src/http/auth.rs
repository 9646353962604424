//! API keys: `Authorization: Bearer <secret>`, looked up by the SHA-256 of
//! the secret (only hashes are held in memory). With no key configured the
//! service runs open (it refuses to start so on anything but loopback) and
//! every caller is `open` with the admin role.

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::http::AppState;
use crate::http::middleware::{IDEMPOTENCY_KEY, RequestId};
use crate::service::RequestContext;
use crate::settings::{ApiKey, Role};

/// The authenticated caller, with the request's idempotency context.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub ctx: RequestContext,
}

fn authenticate(req: &HttpRequest, keys: &[ApiKey]) -> Result<(String, Role), ApiError> {
    if keys.is_empty() {
        return Ok(("open".into(), Role::Admin));
    }
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthorized)?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or(ApiError::Unauthorized)?
        .trim();
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    // Compare every key's full digest without early exit.
    let mut found = None;
    for k in keys {
        let diff = k
            .secret_sha256
            .iter()
            .zip(digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            found = Some(k);
        }
    }
    found
        .map(|k| (k.name.clone(), k.role))
        .ok_or(ApiError::Unauthorized)
}

/// `Idempotency-Key`: 1..255 printable ASCII characters.
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bytes = v.as_bytes();
    if bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(ApiError::field(
            "Idempotency-Key",
            "must be 1 to 255 printable ASCII characters",
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return ready(Err(ApiError::Internal));
        };
        let result = authenticate(req, &state.api_keys).and_then(|(name, role)| {
            let request_id = req
                .extensions()
                .get::<RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
            Ok(Caller {
                ctx: RequestContext {
                    caller: name.clone(),
                    idempotency_key: idempotency_key(req)?,
                    request_id,
                },
                name,
                role,
            })
        });
        ready(result)
    }
}
