//! `POST /v1/campaigns/{id}/codes`: bulk codes, streamed as CSV.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};

use crate::error::ApiError;
use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::body::read_json;
use crate::http::permissions::Permission;
use crate::http::problem::{PROBLEM_JSON, Problem};
use crate::http::wire::bulk::BulkCodesRequest;
use crate::service::bulk::BulkError;

/// Pre-issued codes for offline distribution (SMS, print, partners): `count`
/// serials are reserved against stock in one atomic step (only for an
/// `active` or `paused` campaign), then streamed as CSV
/// (`code,campaign_id,expires_at`, one line per code, `expires_at` empty when
/// codes never expire). The codes are bound to no one and each redeems once.
/// A retry with the same `Idempotency-Key` and body streams the same codes
/// and reserves nothing more; while the first attempt is still streaming it
/// is `409 request_in_progress`.
#[utoipa::path(
    post, path = "/v1/campaigns/{id}/codes", tag = "campaigns",
    params(
        ("id" = String, Path, description = "campaign id, [a-z0-9_-]{1,64}", example = "double11-20off"),
        ("Idempotency-Key" = Option<String>, Header, description = "1..255 printable ASCII; a retry streams the same codes and reserves nothing"),
    ),
    request_body = BulkCodesRequest,
    responses(
        (status = 200, description = "The codes, streamed: a header line, then one line per code", body = String, content_type = "text/csv",
            headers(("Content-Disposition" = String, description = "attachment; filename=\"<id>-codes-<first>-<last>.csv\""))),
        (status = 400, description = "malformed_request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "unauthorized", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden (only the admin role)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "campaign_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "campaign_not_active (draft, pending_approval, ended) / sold_out (fewer left than count; the detail says how many) / request_in_progress", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "malformed_request: the body is larger than max_body_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request (count outside 1..1000000) / idempotency_key_reused", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    caller: Caller,
) -> Result<HttpResponse, BulkError> {
    caller.require(Permission::ManageCampaigns)?;
    let (body, _): (BulkCodesRequest, _) = read_json(&req, payload, &state.body_limits).await?;
    let cmd = body.parse(&id)?;
    let codes = state.services.bulk.reserve(&cmd, &caller.ctx).await?;
    let disposition = format!("attachment; filename=\"{}\"", codes.filename());
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((header::CONTENT_DISPOSITION, disposition))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .streaming(codes.into_stream()))
}

impl ResponseError for BulkError {
    fn status_code(&self) -> StatusCode {
        match self {
            BulkError::Api(e) => e.status_code(),
            BulkError::NotEnoughStock { .. } => StatusCode::CONFLICT,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            BulkError::Api(e) => e.error_response(),
            BulkError::NotEnoughStock { id, .. } => {
                // `sold_out`, with a detail that says how many are left.
                let mut problem = ApiError::SoldOut(id.clone()).problem();
                problem.detail = self.to_string();
                HttpResponse::build(self.status_code())
                    .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)))
                    .body(serde_json::to_vec(&problem).unwrap_or_default())
            }
        }
    }
}
