//! Operations: liveness, readiness, metrics, the OpenAPI document.

use actix_web::{HttpResponse, web};
use utoipa::OpenApi;

use crate::error::ApiError;
use crate::http::AppState;

/// `200` while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive", body = String)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

/// `200` only when the store answers within the deadline.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "ready", body = String),
    (status = 503, description = "the store does not answer", body = crate::http::problem::Problem, content_type = "application/problem+json"),
))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.services.store.ping().await?;
    Ok(HttpResponse::Ok().content_type("text/plain").body("ready"))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "metrics", body = String, content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3 document", body = Object)))]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(crate::http::openapi::ApiDoc::openapi())
}
