//! The one place an error becomes a response: RFC 9457 problem+json with the
//! stable `code` of API.md. Infrastructure causes were logged where they
//! happened (see `crate::error`) and never reach the client.
//!
//! [`fallback`] catches every error response produced outside our handlers
//! (unknown route, wrong method, actix's own refusals) and gives it the same
//! shape, so no 4xx/5xx leaves the service without a problem body.

use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpResponse, ResponseError};
use bytes::Bytes;
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::FieldError;
use crate::domain::ratelimit::RateState;
use crate::error::ApiError;
use crate::http::wire::schemas::FieldErrorSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `/problems/<code with dashes>`.
    #[serde(rename = "type")]
    #[schema(example = "/problems/sold-out")]
    pub type_: String,
    #[schema(example = "Sold out")]
    pub title: &'static str,
    #[schema(example = 409)]
    pub status: u16,
    /// Stable, machine-readable: see the error table.
    #[schema(example = "sold_out")]
    pub code: &'static str,
    #[schema(example = "campaign spring-20 has no stock left")]
    pub detail: String,
    /// The fields that failed validation (`invalid_request`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<FieldErrorSchema>>)]
    pub errors: Option<Vec<FieldError>>,
    /// The quota or rule that was hit (`limit_exceeded`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// Why the client is refused (`blocked`): `block_list` or `ban`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(block_list|ban)$")]
    pub reason: Option<&'static str>,
}

impl ApiError {
    pub fn problem(&self) -> Problem {
        let (status, code, title) = self.parts();
        Problem {
            type_: format!("/problems/{}", code.replace('_', "-")),
            title,
            status,
            code,
            detail: self.to_string(),
            errors: match self {
                ApiError::InvalidRequest(e) => Some(e.clone()),
                _ => None,
            },
            limit: match self {
                ApiError::LimitExceeded { limit, .. } => Some(limit.to_string()),
                _ => None,
            },
            reason: match self {
                ApiError::Blocked { reason, .. } => Some(reason.as_str()),
                _ => None,
            },
        }
    }

    /// The problem+json body of this error.
    pub fn problem_body(&self) -> Bytes {
        render(self)
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Unavailable => Some(1),
            ApiError::RequestInProgress => Some(1),
            ApiError::LimitExceeded { retry_after, .. } => *retry_after,
            ApiError::Blocked { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.parts().0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let body = repeated_body(self).unwrap_or_else(|| render(self));
        let mut res = HttpResponse::build(self.status_code());
        res.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        if let Some(s) = self.retry_after() {
            res.insert_header((header::RETRY_AFTER, s));
        }
        if matches!(self, ApiError::Unauthorized) {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        let mut res = res.body(body);
        if let ApiError::LimitExceeded { rate: Some(r), .. } = self {
            insert_rate_headers(res.headers_mut(), r);
        }
        res
    }
}

/// The problem body of `e`.
fn render(e: &ApiError) -> Bytes {
    Bytes::from(serde_json::to_vec(&e.problem()).unwrap_or_default())
}

/// The body of a refusal a flood repeats (sold out, not active: the same
/// body for every claim on a campaign), kept per worker thread for the last
/// campaign and state it was made for. Rendering it again took about 4 % of
/// the CPU of a refusal answered from memory. `None` for any other error.
fn repeated_body(e: &ApiError) -> Option<Bytes> {
    use std::cell::RefCell;
    let (id, state) = match e {
        ApiError::SoldOut(id) => (id.as_str(), None),
        ApiError::CampaignNotActive { id, state } => (id.as_str(), Some(state.as_str())),
        _ => return None,
    };
    thread_local! {
        static LAST: RefCell<Option<(String, Option<String>, Bytes)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| {
        if let Some((i, st, body)) = last.as_ref()
            && i == id
            && st.as_deref() == state
        {
            return Some(body.clone());
        }
        let body = render(e);
        *last = Some((id.to_owned(), state.map(str::to_owned), body.clone()));
        Some(body)
    })
}

/// `RateLimit-Policy` and `RateLimit` for `state`.
pub fn insert_rate_headers(headers: &mut actix_web::http::header::HeaderMap, state: &RateState) {
    for (name, value) in [
        ("ratelimit-policy", state.policy_header()),
        ("ratelimit", state.limit_header()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(header::HeaderName::from_static(name), v);
        }
    }
}

/// `ErrorHandlers` default: rewrite any error response that is not already
/// problem+json.
pub fn fallback<B: MessageBody>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if is_problem {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let err = ApiError::from_status(status.as_u16());
    let (req, old) = res.into_parts();
    let mut new = err.error_response();
    // Keep the status actix chose (e.g. 411, 415) and our request id.
    *new.status_mut() = status;
    for (name, value) in old.headers() {
        if name.as_str().eq_ignore_ascii_case("x-request-id") {
            new.headers_mut().insert(name.clone(), value.clone());
        }
    }
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, new).map_into_right_body::<B>(),
    ))
}

/// Default service: no route matched.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

// Let a bare `ApiError` be a handler's return value.
impl actix_web::Responder for ApiError {
    type Body = actix_web::body::BoxBody;
    fn respond_to(self, _: &actix_web::HttpRequest) -> HttpResponse {
        self.error_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_refusal_has_the_body_of_its_own_campaign_and_state() {
        let sold = |id: &str| ApiError::SoldOut(id.into());
        let paused = |id: &str, st: &str| ApiError::CampaignNotActive {
            id: id.into(),
            state: st.into(),
        };
        for e in [
            sold("a"),
            sold("a"),
            sold("b"),
            paused("b", "paused"),
            paused("b", "paused"),
            paused("b", "ended"),
            sold("b"),
        ] {
            assert_eq!(repeated_body(&e), Some(render(&e)), "{e:?}");
        }
        assert_eq!(repeated_body(&ApiError::InvalidCode), None);
    }
}
