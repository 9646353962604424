//! Claim, redeem, roll back, validate (client).

use actix_web::{FromRequest, HttpRequest, HttpResponse, web};

use crate::error::ApiError;
use actix_web::ResponseError;

use crate::domain::identity::Phone;
use crate::domain::limits::Endpoint;
use crate::guard::{Client, Guard, Outcome, Pending, Verdict, Who, outcome_of};
use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::body::read_json;
use crate::http::permissions::Permission;
use crate::http::problem::Problem;
use crate::http::problem::insert_rate_headers;
use crate::http::replay::{self, Begin};
use crate::http::wire::{
    ClaimRequest, ClaimResponse, RedeemRequest, RedeemResponse, RollbackRequest, RollbackResponse,
    ValidateRequest, ValidateResponse,
};
use crate::startup::Services;
use actix_web::http::StatusCode;

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
        (status = 201, description = "Issued", body = ClaimResponse, headers(("RateLimit-Policy" = String, description = "the tightest rate rule that applied"), ("RateLimit" = String, description = "its remaining quota and reset"))),
        (status = 400, description = "malformed_request", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "campaign_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "sold_out / campaign_not_active", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "malformed_request: the body is larger than max_body_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request / idempotency_key_reused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "blocked: on a block list or serving a ban (`reason`); Retry-After while a ban runs", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "limit_exceeded: a campaign quota (per_phone / per_device / per_ip), a rate rule, or the shield; `limit` names it", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "seconds"), ("RateLimit-Policy" = String, description = "draft-ietf-httpapi-ratelimit-headers-10"), ("RateLimit" = String, description = "remaining and reset of the tightest rule"))),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn claim(
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    claim_request(&req, payload, &id).await
}

/// The claim handler's work, for the routed handler above and for the
/// edge, which sends a claim on a well-formed campaign id here without
/// the router (`middleware::edge`: a sold-out flood is mostly routing and
/// extraction otherwise). The extractors are the routed handler's own.
pub async fn claim_request(
    req: &HttpRequest,
    payload: web::Payload,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let mut none = actix_web::dev::Payload::None;
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or(ApiError::Internal)?;
    let caller = Caller::from_request(req, &mut none).await?;
    let client = Client::from_request(req, &mut none).await?;
    caller.require(Permission::UseCoupons)?;
    let (body, _): (ClaimRequest, _) = read_json(req, payload, &state.body_limits).await?;
    let services = &state.services;
    let cmd = body.parse(id, services.settings.region)?;
    // Sold out or not active, as this instance saw it less than 500 ms ago:
    // answered here, before any pseudonym, rule or Redis call.
    if let Some(refusal) = services
        .claims
        .remembered_refusal(&cmd.campaign, &caller.ctx)
    {
        return Err(refusal);
    }
    let claimant = services.claims.claimant(&cmd, &client.ip);
    let who = Who {
        campaign: Some(cmd.campaign.as_str()),
        ip: &claimant.ip,
        phone: Some((&cmd.phone, &claimant.phone)),
        device: Some((&cmd.device, &claimant.device)),
        user: cmd.user_id.as_deref(),
    };
    let pending = refused_by_guard(
        services,
        &cmd.campaign,
        services.guard.prepare(Endpoint::Claim, &client, who),
    )
    .await?;
    // On a single node the rules go in the claim's own script call (one
    // round trip, one batch); a claim under an Idempotency-Key keeps the
    // order of its own key's record (rules, then the key) with two calls.
    let together =
        !pending.is_empty() && caller.ctx.idempotency_key.is_none() && !services.store.is_cluster();
    let (verdict, result) = if together {
        let checked = services
            .claims
            .claim_with_rules(&cmd, &claimant, &caller.ctx, pending.calls())
            .await?;
        let verdict = match checked.rules {
            Some(results) => services.guard.decide(pending, &results).await,
            None => services.guard.run(pending).await,
        };
        let verdict = refused_by_guard(services, &cmd.campaign, verdict).await?;
        (verdict, checked.result.unwrap_or(Err(ApiError::Internal)))
    } else {
        // A retry under a client key whose first answer is recorded gets it
        // back before any rule runs: a retry changes nothing, rule quotas
        // included (API.md).
        if let Some(first) = services
            .claims
            .recorded(&cmd, &claimant, &caller.ctx)
            .await?
        {
            return Ok(match first {
                Ok(i) => HttpResponse::Created().json(ClaimResponse::from(i)),
                Err(e) => e.error_response(),
            });
        }
        let verdict = services.guard.run(pending).await;
        let verdict = refused_by_guard(services, &cmd.campaign, verdict).await?;
        let result = services.claims.claim(&cmd, &claimant, &caller.ctx).await;
        (verdict, result)
    };
    let outcome = outcome_of(&result);
    finish(
        &services.guard,
        verdict,
        outcome,
        result.map(|i| HttpResponse::Created().json(ClaimResponse::from(i))),
    )
    .await
}

/// Counts a claim the guard refused (a rate rule, the block list, a ban)
/// in its campaign's statistics.
async fn refused_by_guard<T>(
    services: &Services,
    campaign: &crate::domain::campaign::CampaignId,
    verdict: Result<T, ApiError>,
) -> Result<T, ApiError> {
    match &verdict {
        Err(ApiError::LimitExceeded { limit, .. }) => {
            services.campaigns.count_rule_refusal(campaign, limit).await;
        }
        Err(ApiError::Blocked { .. }) => services.claims.count_blocked(campaign),
        _ => {}
    }
    verdict
}

/// Settles the outcome rules and sends the RateLimit headers of the
/// tightest rule with whatever the use case answered.
async fn finish(
    guard: &Guard,
    mut verdict: Verdict,
    outcome: Outcome,
    result: Result<HttpResponse, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let rate = verdict.rate.take();
    guard.settle(verdict, outcome).await;
    let mut res = match result {
        Ok(r) => r,
        Err(e) => e.error_response(),
    };
    if let Some(rate) = rate {
        insert_rate_headers(res.headers_mut(), &rate);
    }
    Ok(res)
}

/// The guard's in-process part for a request that carries a code (and maybe
/// a phone): block list, bans, allow list, and the rules still to check. The
/// campaign is the code's, when the code is genuine and known.
async fn prepare_code_request(
    services: &Services,
    client: &Client,
    endpoint: Endpoint,
    code: &str,
    phone: Option<&Phone>,
) -> Result<Pending, ApiError> {
    let campaign = services.redemptions.campaign_of(code).await.ok();
    let ids = services.guard.pseudonyms();
    let ip = ids.ip(&client.ip);
    let phone_p = phone.map(|p| ids.phone(p));
    let who = Who {
        campaign: campaign.as_ref().map(|c| c.id.as_str()),
        ip: &ip,
        phone: phone.zip(phone_p.as_ref()),
        device: None,
        user: None,
    };
    services.guard.prepare(endpoint, client, who)
}

/// The guard's whole check of a request that carries a code.
async fn check_code_request(
    services: &Services,
    client: &Client,
    endpoint: Endpoint,
    code: &str,
    phone: Option<&Phone>,
) -> Result<Verdict, ApiError> {
    let pending = prepare_code_request(services, client, endpoint, code, phone).await?;
    services.guard.run(pending).await
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
        (status = 413, description = "malformed_request: the body is larger than max_body_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request / not_eligible / idempotency_key_reused", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "blocked: on a block list or serving a ban (`reason`); Retry-After while a ban runs", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "limit_exceeded: a rate rule of the rules file (or the shield); `limit` names it", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "seconds"), ("RateLimit-Policy" = String, description = "draft-ietf-httpapi-ratelimit-headers-10"), ("RateLimit" = String, description = "remaining and reset of the tightest rule"))),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn redeem(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    caller: Caller,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    caller.require(Permission::UseCoupons)?;
    let (body, _): (RedeemRequest, _) = read_json(&req, payload, &state.body_limits).await?;
    let services = &state.services;
    let cmd = body.parse(services.settings.region)?;
    let pending = prepare_code_request(
        services,
        &client,
        Endpoint::Redeem,
        &cmd.code,
        cmd.phone.as_ref(),
    )
    .await?;
    // A retry under a client key whose first answer is recorded gets it
    // back before any rule runs (after the block list and bans), as a
    // claim's does.
    if let Some(first) = services.redemptions.recorded(&cmd, &caller.ctx).await? {
        return Ok(match first {
            Ok(r) => HttpResponse::Ok().json(RedeemResponse::from(r)),
            Err(e) => e.error_response(),
        });
    }
    let verdict = services.guard.run(pending).await?;
    let result = services.redemptions.redeem(&cmd, &caller.ctx).await;
    let outcome = outcome_of(&result);
    finish(
        &services.guard,
        verdict,
        outcome,
        result.map(|r| HttpResponse::Ok().json(RedeemResponse::from(r))),
    )
    .await
}

/// Undo a redemption (order cancelled or refunded): the code is usable again.
#[utoipa::path(
    post, path = "/v1/redemptions/rollback", tag = "coupons",
    params(("Idempotency-Key" = Option<String>, Header, description = "1..255 printable ASCII; a retry returns the first answer")),
    request_body = RollbackRequest,
    responses(
        (status = 200, description = "Rolled back, or was not redeemed", body = RollbackResponse),
        (status = 400, description = "malformed_request", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "invalid_code", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "already_redeemed: redeemed by another order", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "malformed_request: the body is larger than max_body_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "blocked: on a block list or serving a ban (`reason`); Retry-After while a ban runs", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "limit_exceeded: a rate rule of the rules file (or the shield); `limit` names it", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "seconds"), ("RateLimit-Policy" = String, description = "draft-ietf-httpapi-ratelimit-headers-10"), ("RateLimit" = String, description = "remaining and reset of the tightest rule"))),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn rollback(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    caller: Caller,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    caller.require(Permission::UseCoupons)?;
    let (body, _): (RollbackRequest, _) = read_json(&req, payload, &state.body_limits).await?;
    let services = &state.services;
    let cmd = body.parse()?;
    let verdict = check_code_request(services, &client, Endpoint::Any, &cmd.code, None).await?;
    let result = services.redemptions.rollback(&cmd, &caller.ctx).await;
    let outcome = outcome_of(&result);
    finish(
        &services.guard,
        verdict,
        outcome,
        result.map(|r| HttpResponse::Ok().json(RollbackResponse::from(r))),
    )
    .await
}

/// Would this code redeem for this order now? Charges nothing.
#[utoipa::path(
    post, path = "/v1/codes/validate", tag = "coupons",
    params(("Idempotency-Key" = Option<String>, Header, description = "1..255 printable ASCII; a retry returns the first answer")),
    request_body = ValidateRequest,
    responses(
        (status = 200, description = "valid, or why not", body = ValidateResponse),
        (status = 400, description = "malformed_request", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "malformed_request: the body is larger than max_body_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "blocked: on a block list or serving a ban (`reason`); Retry-After while a ban runs", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "limit_exceeded: a rate rule of the rules file (or the shield); `limit` names it", body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u64, description = "seconds"), ("RateLimit-Policy" = String, description = "draft-ietf-httpapi-ratelimit-headers-10"), ("RateLimit" = String, description = "remaining and reset of the tightest rule"))),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn validate(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    caller: Caller,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    caller.require(Permission::UseCoupons)?;
    let (body, raw): (ValidateRequest, _) = read_json(&req, payload, &state.body_limits).await?;
    let services = &state.services;
    let cmd = body.parse(services.settings.region)?;
    // A retry under a client key gets the first answer, before any rule.
    let keyed = match replay::begin(services, &caller.ctx, &[b"validate", &raw]).await? {
        Begin::Replay(first) => return Ok(first),
        Begin::Run(keyed) => keyed,
    };
    let verdict = check_code_request(
        services,
        &client,
        Endpoint::Validate,
        &cmd.code,
        cmd.phone.as_ref(),
    )
    .await?;
    let result = services.redemptions.validate(&cmd).await;
    // A code that is not valid is a failed guess, though the answer is 200.
    let outcome = match &result {
        Ok(v) if matches!(v.code, Some("invalid_code" | "already_redeemed")) => Outcome::Failure,
        r => outcome_of(r),
    };
    let response = match result {
        Ok(v) => {
            keyed
                .answer(
                    services,
                    &caller.ctx,
                    StatusCode::OK,
                    &ValidateResponse::from(v),
                )
                .await
        }
        Err(e) => Err(e),
    };
    finish(&services.guard, verdict, outcome, response).await
}
