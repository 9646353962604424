//! The war room: `GET /ops` (one HTML page, its script and styles embedded
//! in the binary: nothing is fetched from elsewhere), `POST /v1/ops/token`
//! (an admin or viewer key buys a 10-minute stream token) and
//! `GET /v1/ops/stream?token=…` (server-sent events: the snapshot of
//! `service::warroom` every second, the last 15 minutes of rates first).
//!
//! Why a token: `EventSource` cannot send an `Authorization` header, and a
//! long-lived API key must not sit in a URL (proxies and browsers keep
//! URLs). The page keeps the key in `sessionStorage` only, trades it for a
//! token, and trades again when the stream drops.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::permissions::Permission;

const PAGE: &str = include_str!("warroom.html");

/// The war-room page.
#[utoipa::path(get, path = "/ops", tag = "operations", responses(
    (status = 200, description = "The war-room page (HTML; its data comes from the stream)", body = String, content_type = "text/html"),
))]
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:",
        ))
        .body(PAGE)
}

/// A stream token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StreamToken {
    /// Pass as `token` to `GET /v1/ops/stream`.
    pub token: String,
    pub expires_at: String,
}

/// Trade an admin or viewer key for a 10-minute stream token.
#[utoipa::path(post, path = "/v1/ops/token", tag = "operations",
    responses(
        (status = 200, description = "A stream token", body = StreamToken),
        (status = 401, description = "unauthorized", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden: the client role reads no campaigns", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn token(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<web::Json<StreamToken>, ApiError> {
    caller.require(Permission::ReadCampaigns)?;
    let (token, expires) = state.services.warroom.token(&caller.name);
    Ok(web::Json(StreamToken {
        token,
        expires_at: crate::domain::clock::rfc3339(crate::domain::clock::from_ms(expires)),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct StreamQuery {
    /// From `POST /v1/ops/token`.
    pub token: Option<String>,
}

/// The war room's live data: server-sent events, `history` first (the last
/// 15 minutes of claims/s and redemptions/s), then a `snapshot` every second.
/// Each event's data is one JSON object.
#[utoipa::path(get, path = "/v1/ops/stream", tag = "operations",
    params(StreamQuery),
    responses(
        (status = 200, description = "text/event-stream: a `history` event (`{\"points\": [...]}`: claims/s and redemptions/s of the last 15 minutes), then a `snapshot` event (JSON object) every second", body = Object, content_type = "text/event-stream"),
        (status = 401, description = "unauthorized: no token, a forged one or an expired one", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn stream(
    state: web::Data<AppState>,
    query: web::Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    let room = state.services.warroom.clone();
    if !query.token.as_deref().is_some_and(|t| room.check_token(t)) {
        return Err(ApiError::Unauthorized);
    }
    let history = serde_json::to_string(&serde_json::json!({"points": room.history()}))
        .unwrap_or_else(|_| "{}".into());
    let mut first = format!("event: history\ndata: {history}\n\n");
    let rx = room.subscribe();
    if let Some(snap) = rx.borrow().clone()
        && let Ok(data) = serde_json::to_string(&*snap)
    {
        first.push_str(&format!("event: snapshot\ndata: {data}\n\n"));
    }
    let first = Bytes::from(first);
    let events = futures_util::stream::unfold((Some(first), rx), |(first, mut rx)| async move {
        if let Some(b) = first {
            return Some((Ok::<_, actix_web::Error>(b), (None, rx)));
        }
        // A comment every 15 s keeps proxies from closing an idle stream.
        let next = tokio::time::timeout(Duration::from_secs(15), rx.changed()).await;
        let chunk = match next {
            Ok(Ok(())) => {
                let snap = rx.borrow_and_update().clone();
                match snap.and_then(|s| serde_json::to_string(&*s).ok()) {
                    Some(data) => format!("event: snapshot\ndata: {data}\n\n"),
                    None => ": no snapshot yet\n\n".to_owned(),
                }
            }
            Ok(Err(_)) => return None,
            Err(_) => ": keep-alive\n\n".to_owned(),
        };
        Some((Ok(Bytes::from(chunk)), (None, rx)))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(events))
}
