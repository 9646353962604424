//! `/v1/campaigns`: create, read, PATCH, lifecycle actions, stats; `/v1/audit`.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};

use crate::domain::lifecycle::Action;
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::body::read_json;
use crate::http::body::{parse_json, read_body};
use crate::http::permissions::Permission;
use crate::http::problem::Problem;
use crate::http::replay::{self, Begin};
use crate::http::wire::reports::{AuditQuery, AuditView, StatsView};
use crate::http::wire::{
    CampaignView, CreateCampaignRequest, PatchCampaignRequest, TransitionRequest,
};

/// Create a campaign.
#[utoipa::path(
    post, path = "/v1/campaigns", tag = "campaigns",
    request_body = CreateCampaignRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "1..255 printable ASCII; a retry returns the first answer")),
    responses(
        (status = 201, description = "Created", body = CampaignView),
        (status = 400, description = "Malformed JSON", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "campaign_exists", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request / idempotency_key_reused", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Permission::ManageCampaigns)?;
    let (body, raw): (CreateCampaignRequest, _) =
        read_json(&req, payload, &state.body_limits).await?;
    let created = state
        .services
        .campaigns
        .create(&body.into(), &caller.ctx, &raw)
        .await?;
    if !created.replay {
        tracing::info!(campaign = %created.spec.id, by = %caller.name, "campaign created");
    }
    let view = CampaignView::created(&created.spec);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/v1/campaigns/{}", view.id)))
        .json(view))
}

/// Read a campaign with its live counters.
#[utoipa::path(
    get, path = "/v1/campaigns/{id}", tag = "campaigns",
    params(("id" = String, Path, description = "campaign id, [a-z0-9_-]{1,64}", example = "double11-20off")),
    responses(
        (status = 200, description = "The campaign", body = CampaignView),
        (status = 404, description = "campaign_not_found", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    state: web::Data<AppState>,
    id: web::Path<String>,
    caller: Caller,
) -> Result<web::Json<CampaignView>, ApiError> {
    caller.require(Permission::ReadCampaigns)?;
    let c = state.services.campaigns.get(&id).await?;
    Ok(web::Json(CampaignView::new(
        &c.spec,
        &c.state,
        c.issued,
        c.redeemed,
        state.services.campaigns.now_ms(),
    )))
}

/// The newest campaigns (at most `limit`, default 100, up to 1,000), newest first.
#[utoipa::path(
    get, path = "/v1/campaigns", tag = "campaigns",
    params(("limit" = Option<u32>, Query, description = "1..1000, default 100")),
    responses(
        (status = 200, description = "The campaigns, newest first", body = crate::http::wire::campaigns::CampaignList),
        (status = 400, description = "malformed_request: limit is not a number", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "unauthorized", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request: limit out of range", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<crate::http::wire::campaigns::ListQuery>,
    caller: Caller,
) -> Result<web::Json<crate::http::wire::campaigns::CampaignList>, ApiError> {
    caller.require(Permission::ReadCampaigns)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 1000"));
    }
    let list = state.services.campaigns.list(limit as usize).await?;
    Ok(web::Json(crate::http::wire::campaigns::CampaignList {
        campaigns: list.iter().map(|c| view(&state, c)).collect(),
    }))
}

fn view(state: &AppState, c: &crate::store::StoredCampaign) -> CampaignView {
    CampaignView::new(
        &c.spec,
        &c.state,
        c.issued,
        c.redeemed,
        state.services.campaigns.now_ms(),
    )
}

/// Change name, window, limits, alerts, rollout, or the stock (never below what is issued).
#[utoipa::path(
    patch, path = "/v1/campaigns/{id}", tag = "campaigns",
    params(("id" = String, Path, description = "campaign id")),
    request_body = PatchCampaignRequest,
    responses(
        (status = 200, description = "The campaign after the change", body = CampaignView),
        (status = 400, description = "malformed_request", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "malformed_request: the body is larger than max_body_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "campaign_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "invalid_transition (ended) / request_in_progress", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request (e.g. stock below issued, a forbidden webhook URL)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn patch(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    caller: Caller,
) -> Result<web::Json<CampaignView>, ApiError> {
    caller.require(Permission::ManageCampaigns)?;
    let (body, _): (PatchCampaignRequest, _) = read_json(&req, payload, &state.body_limits).await?;
    let c = state
        .services
        .lifecycle
        .patch(&id, &body.into(), &caller.ctx)
        .await?;
    Ok(web::Json(view(&state, &c)))
}

/// Move the lifecycle: `submit`, `approve` (not by the creating key: four
/// eyes), `reject`, `pause`, `resume`, `end`. Each is checked and applied in
/// one atomic step with its audit entry.
#[utoipa::path(
    post, path = "/v1/campaigns/{id}/{action}", tag = "campaigns",
    params(
        ("id" = String, Path, description = "campaign id"),
        ("action" = String, Path, description = "submit, approve, reject, pause, resume or end"),
        ("Idempotency-Key" = Option<String>, Header, description = "1..255 printable ASCII; a retry returns the first answer"),
    ),
    request_body(content = Option<TransitionRequest>, description = "optional reason"),
    responses(
        (status = 200, description = "The campaign after the move", body = CampaignView),
        (status = 400, description = "malformed_request (query or body)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "malformed_request: the body is larger than max_body_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden (role, or four eyes)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "campaign_not_found / not_found (no such action)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "invalid_transition", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request (reason, Idempotency-Key) / idempotency_key_reused", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn act(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Permission::ManageCampaigns)?;
    let (id, raw_action) = path.into_inner();
    let action = Action::parse(&raw_action).ok_or(ApiError::NotFound)?;
    let body = read_body(&req, payload, &state.body_limits).await?;
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        String::new()
    } else {
        let r: TransitionRequest = parse_json(&body, state.body_limits.max_depth)?;
        let reason = r.reason.unwrap_or_default();
        if reason.chars().count() > 500 || reason.chars().any(char::is_control) {
            return Err(ApiError::field(
                "reason",
                "at most 500 characters, no control characters",
            ));
        }
        reason
    };
    let request: [&[u8]; 4] = [b"act", id.as_bytes(), raw_action.as_bytes(), &body];
    let keyed = match replay::begin(&state.services, &caller.ctx, &request).await? {
        Begin::Replay(first) => return Ok(first),
        Begin::Run(keyed) => keyed,
    };
    let c = state
        .services
        .lifecycle
        .act(&id, action, &reason, &caller.ctx)
        .await?;
    keyed
        .answer(
            &state.services,
            &caller.ctx,
            StatusCode::OK,
            &view(&state, &c),
        )
        .await
}

/// Issued, redeemed, rejections by code and by limit, claims per minute, redemptions by channel and store.
#[utoipa::path(
    get, path = "/v1/campaigns/{id}/stats", tag = "campaigns",
    params(("id" = String, Path, description = "campaign id")),
    responses(
        (status = 200, description = "Stats", body = StatsView),
        (status = 400, description = "malformed_request (query or body)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "campaign_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn stats(
    state: web::Data<AppState>,
    id: web::Path<String>,
    caller: Caller,
) -> Result<web::Json<StatsView>, ApiError> {
    caller.require(Permission::ReadCampaigns)?;
    let s = state.services.reports.stats(&id).await?;
    StatsView::new(s, state.services.campaigns.now_ms())
        .map(web::Json)
        .ok_or(ApiError::Internal)
}

/// Who created, approved, paused, patched, banned, reloaded rules, and when; newest first.
#[utoipa::path(
    get, path = "/v1/audit", tag = "campaigns",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of the audit trail", body = AuditView),
        (status = 400, description = "malformed_request (query or body)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "campaign_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request (cursor)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn audit(
    state: web::Data<AppState>,
    query: web::Query<AuditQuery>,
    caller: Caller,
) -> Result<web::Json<AuditView>, ApiError> {
    caller.require(Permission::ReadAudit)?;
    let page = state
        .services
        .reports
        .audit(
            query.campaign.as_deref(),
            query.cursor.as_deref(),
            query.limit.unwrap_or(100),
        )
        .await?;
    Ok(web::Json(page.into()))
}
