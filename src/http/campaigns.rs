//! `/v1/campaigns`: create and read (admin).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::ApiError;
use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::body::read_json;
use crate::http::wire::{CampaignView, CreateCampaignRequest};

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
    caller.require_admin()?;
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
    caller.require_admin()?;
    let c = state.services.campaigns.get(&id).await?;
    Ok(web::Json(CampaignView::new(
        &c.spec,
        &c.state,
        c.issued,
        c.redeemed,
        state.services.campaigns.now_ms(),
    )))
}
