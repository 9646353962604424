//! Claim, redeem, roll back, validate (client).

use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::ApiError;
use crate::guard::Client;
use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::body::read_json;
use crate::http::problem::Problem;
use crate::http::wire::{
    ClaimRequest, ClaimResponse, RedeemRequest, RedeemResponse, RollbackRequest, RollbackResponse,
    ValidateRequest, ValidateResponse,
};

/// Claim a coupon: stock, window and the per-phone/device/IP quotas are
/// checked and charged in one atomic step; a rejected claim charges nothing.
#[utoipa::path(
    post, path = "/v1/campaigns/{id}/claims", tag = "coupons",
    params(
        ("id" = String, Path, description = "campaign id, [a-z0-9_-]{1,64}", example = "double11-20off"),
        ("Idempotency-Key" = Option<String>, Header, description = "1..255 printable ASCII; a retry returns the first answer and charges nothing"),
    ),
    request_body = ClaimRequest,
    responses(
        (status = 201, description = "Issued", body = ClaimResponse),
        (status = 400, description = "malformed_request", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "campaign_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "sold_out / campaign_not_active", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request / idempotency_key_reused", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "limit_exceeded (per_phone / per_device / per_ip)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn claim(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    caller: Caller,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let (body, _): (ClaimRequest, _) = read_json(&req, payload, &state.body_limits).await?;
    let services = &state.services;
    let cmd = body.parse(&id, services.settings.region)?;
    let who = services.claims.claimant(&cmd, &client.ip);
    let res = ClaimResponse::from(services.claims.claim(&cmd, &who, &caller.ctx).await?);
    Ok(HttpResponse::Created().json(res))
}

/// Redeem a code for an order, exactly once. The same (code, order_id) again
/// is a safe 200 replay.
#[utoipa::path(
    post, path = "/v1/redemptions", tag = "coupons",
    params(("Idempotency-Key" = Option<String>, Header, description = "1..255 printable ASCII")),
    request_body = RedeemRequest,
    responses(
        (status = 200, description = "Redeemed (or the same order again)", body = RedeemResponse),
        (status = 400, description = "malformed_request", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "invalid_code", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "already_redeemed / code_expired", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request / not_eligible / idempotency_key_reused", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn redeem(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    caller: Caller,
) -> Result<web::Json<RedeemResponse>, ApiError> {
    let (body, _): (RedeemRequest, _) = read_json(&req, payload, &state.body_limits).await?;
    let services = &state.services;
    let cmd = body.parse(services.settings.region)?;
    let done = services.redemptions.redeem(&cmd, &caller.ctx).await?;
    Ok(web::Json(done.into()))
}

/// Undo a redemption (order cancelled or refunded): the code is usable again.
#[utoipa::path(
    post, path = "/v1/redemptions/rollback", tag = "coupons",
    request_body = RollbackRequest,
    responses(
        (status = 200, description = "Rolled back, or was not redeemed", body = RollbackResponse),
        (status = 400, description = "malformed_request", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "invalid_code", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "already_redeemed: redeemed by another order", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn rollback(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    _caller: Caller,
) -> Result<web::Json<RollbackResponse>, ApiError> {
    let (body, _): (RollbackRequest, _) = read_json(&req, payload, &state.body_limits).await?;
    let cmd = body.parse()?;
    Ok(web::Json(
        state.services.redemptions.rollback(&cmd).await?.into(),
    ))
}

/// Would this code redeem for this order now? Charges nothing.
#[utoipa::path(
    post, path = "/v1/codes/validate", tag = "coupons",
    request_body = ValidateRequest,
    responses(
        (status = 200, description = "valid, or why not", body = ValidateResponse),
        (status = 400, description = "malformed_request", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn validate(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    _caller: Caller,
) -> Result<web::Json<ValidateResponse>, ApiError> {
    let (body, _): (ValidateRequest, _) = read_json(&req, payload, &state.body_limits).await?;
    let services = &state.services;
    let cmd = body.parse(services.settings.region)?;
    Ok(web::Json(services.redemptions.validate(&cmd).await?.into()))
}
