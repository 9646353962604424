//! The one error type every request path ends in. Each variant is a row of
//! API.md's error table (plus a few transport-level extensions); the HTTP
//! layer renders it as RFC 9457 problem+json (`http::problem`).

use std::borrow::Cow;

use crate::domain::FieldError;
use crate::domain::ratelimit::RateState;
use crate::store::StoreError;

/// Why a client is refused outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    /// On the rules file's `[block]` list.
    BlockList,
    /// Serving a ban (from a rule's `ban`, or an admin's).
    Ban,
}

impl BlockReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::BlockList => "block_list",
            BlockReason::Ban => "ban",
        }
    }
}

fn limit_detail(limit: &str) -> String {
    match limit {
        "per_phone" | "per_device" | "per_ip" => {
            format!("the {limit} quota of this campaign is used up")
        }
        "shield" => "too many requests from this address; slow down".into(),
        rule => format!("over the rate rule {rule}"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedRequest(String),
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body did not arrive within {0} ms")]
    RequestTimeout(u64),
    #[error("the request headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// A head over actix-http's own caps (`http::conn`).
    #[error("the request head is larger than 128 KiB or has more than 96 headers")]
    HeadTooLarge,
    /// A request head not finished in time (`http::conn`).
    #[error("the request head did not arrive within {0} ms")]
    HeadTimeout(u64),
    #[error("a valid API key is required: Authorization: Bearer <key>")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("campaign {0} does not exist")]
    CampaignNotFound(String),
    #[error("the code is malformed, forged or unknown")]
    InvalidCode,
    #[error("campaign {id} is not active ({state})")]
    CampaignNotActive { id: String, state: String },
    #[error("campaign {0} has no stock left")]
    SoldOut(String),
    #[error("the code was redeemed by another order")]
    AlreadyRedeemed,
    #[error("the coupon expired at {0}")]
    CodeExpired(String),
    #[error("a request with this Idempotency-Key is still running")]
    RequestInProgress,
    #[error("this Idempotency-Key was first sent with a different request")]
    IdempotencyKeyReused,
    #[error("a campaign with id {0} exists")]
    CampaignExists(String),
    #[error("{0}")]
    InvalidTransition(String),
    #[error("some fields are invalid")]
    InvalidRequest(Vec<FieldError>),
    #[error("{0}")]
    NotEligible(String),
    #[error("{}", limit_detail(limit))]
    LimitExceeded {
        /// The quota (`per_phone`, ...), rule name, or `shield`.
        limit: Cow<'static, str>,
        retry_after: Option<u64>,
        /// The RateLimit header fields to send, for rules and the shield.
        rate: Option<Box<RateState>>,
    },
    #[error("{}", match reason { BlockReason::BlockList => "this client is on a block list", BlockReason::Ban => "this client is serving a ban" })]
    Blocked {
        reason: BlockReason,
        /// Seconds until a ban ends.
        retry_after: Option<u64>,
    },
    #[error("no such resource")]
    NotFound,
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    #[error("the store cannot be reached in time; retry")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// One invalid field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest(vec![FieldError::new(field, message)])
    }

    /// A campaign quota (`per_phone`, `per_device`, `per_ip`) is used up.
    pub fn quota(limit: &'static str) -> Self {
        ApiError::LimitExceeded {
            limit: Cow::Borrowed(limit),
            retry_after: None,
            rate: None,
        }
    }

    /// (HTTP status, stable `code`, title).
    pub fn parts(&self) -> (u16, &'static str, &'static str) {
        use ApiError::*;
        match self {
            MalformedRequest(_) => (400, "malformed_request", "Malformed request"),
            PayloadTooLarge(_) => (413, "malformed_request", "Request body too large"),
            RequestTimeout(_) => (408, "request_timeout", "Request timeout"),
            HeadersTooLarge(_) | HeadTooLarge => {
                (431, "malformed_request", "Request headers too large")
            }
            HeadTimeout(_) => (408, "request_timeout", "Request timeout"),
            Unauthorized => (401, "unauthorized", "Unauthorized"),
            Forbidden(_) => (403, "forbidden", "Forbidden"),
            Blocked { .. } => (403, "blocked", "Blocked"),
            CampaignNotFound(_) => (404, "campaign_not_found", "Campaign not found"),
            InvalidCode => (404, "invalid_code", "Invalid code"),
            CampaignNotActive { .. } => (409, "campaign_not_active", "Campaign not active"),
            SoldOut(_) => (409, "sold_out", "Sold out"),
            AlreadyRedeemed => (409, "already_redeemed", "Already redeemed"),
            CodeExpired(_) => (409, "code_expired", "Code expired"),
            RequestInProgress => (409, "request_in_progress", "Request in progress"),
            IdempotencyKeyReused => (422, "idempotency_key_reused", "Idempotency key reused"),
            CampaignExists(_) => (409, "campaign_exists", "Campaign exists"),
            InvalidTransition(_) => (409, "invalid_transition", "Invalid transition"),
            InvalidRequest(_) => (422, "invalid_request", "Invalid request"),
            NotEligible(_) => (422, "not_eligible", "Not eligible"),
            LimitExceeded { .. } => (429, "limit_exceeded", "Limit exceeded"),
            NotFound => (404, "not_found", "Not found"),
            MethodNotAllowed => (405, "method_not_allowed", "Method not allowed"),
            Unavailable => (503, "unavailable", "Service unavailable"),
            Internal => (500, "internal_error", "Internal error"),
        }
    }

    /// The problem for a bare status produced outside our handlers.
    pub fn from_status(status: u16) -> Self {
        match status {
            400 => ApiError::MalformedRequest("the request could not be read".into()),
            401 => ApiError::Unauthorized,
            404 => ApiError::NotFound,
            405 => ApiError::MethodNotAllowed,
            408 => ApiError::RequestTimeout(0),
            413 => ApiError::PayloadTooLarge(0),
            431 => ApiError::HeadersTooLarge(0),
            503 => ApiError::Unavailable,
            s if (400..500).contains(&s) => {
                ApiError::MalformedRequest("the request could not be handled".into())
            }
            _ => ApiError::Internal,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            metrics::counter!("stampede_store_unavailable_total").increment(1);
            tracing::warn!(error = %e, "store unavailable");
            ApiError::Unavailable
        } else {
            metrics::counter!("stampede_store_errors_total").increment(1);
            tracing::error!(error = ?e, "store error");
            ApiError::Internal
        }
    }
}
