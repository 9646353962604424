//! `/v1/admin/limits` and `/v1/admin/bans` (admin): the rules in force, and
//! manual freeze and release. A ban is stored under the identity's pseudonym,
//! so a phone ban covers every spelling of the number and an IPv6 ban the
//! client's whole prefix.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::domain::identity::{ClientIp, DeviceId, Phone, Pseudonym};
use crate::domain::limits::BanKind;
use crate::error::ApiError;
use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::body::read_json;
use crate::http::permissions::Permission;
use crate::http::problem::Problem;
use crate::http::replay::{self, Begin};
use crate::http::wire::limits::{BanList, BanQuery, BanRequest, BanView, LimitsView, Unbanned};
use actix_web::http::StatusCode;

const DEFAULT_BAN: std::time::Duration = std::time::Duration::from_secs(86_400);
const MAX_BAN: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// The rules in force, their version and load time, and the last refused edit.
#[utoipa::path(
    get, path = "/v1/admin/limits", tag = "anti-abuse",
    responses(
        (status = 200, description = "The rules in force", body = LimitsView),
        (status = 401, description = "unauthorized", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "malformed_request (query or body)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn limits(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<web::Json<LimitsView>, ApiError> {
    caller.require(Permission::ReadLimits)?;
    let guard = &state.services.guard;
    Ok(web::Json(LimitsView::new(
        &guard.limits(),
        guard.file(),
        &guard.edge(),
        guard.last_rejected(),
    )))
}

fn kind(raw: Option<&str>) -> Result<BanKind, ApiError> {
    raw.and_then(BanKind::parse)
        .ok_or_else(|| ApiError::field("kind", "must be phone, device or ip"))
}

/// The pseudonym a ban on (`kind`, `value`) is stored under.
fn subject(state: &AppState, kind: BanKind, value: &str) -> Result<Pseudonym, ApiError> {
    let guard = &state.services.guard;
    let ids = guard.pseudonyms();
    Ok(match kind {
        BanKind::Phone => ids.phone(
            &Phone::parse(value, state.services.settings.region)
                .map_err(|e| ApiError::field("value", e.to_string()))?,
        ),
        BanKind::Device => {
            ids.device(&DeviceId::parse(value).map_err(|m| ApiError::field("value", m))?)
        }
        BanKind::Ip => {
            let addr = value
                .parse()
                .map_err(|_| ApiError::field("value", "is not an IP address"))?;
            ids.ip(&ClientIp::new(addr, guard.edge().ipv6_prefix))
        }
    })
}

/// Freeze a phone, device or IP.
#[utoipa::path(
    post, path = "/v1/admin/bans", tag = "anti-abuse",
    params(("Idempotency-Key" = Option<String>, Header, description = "1..255 printable ASCII; a retry returns the first answer")),
    request_body = BanRequest,
    responses(
        (status = 201, description = "Banned", body = BanView),
        (status = 400, description = "malformed_request", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "malformed_request: the body is larger than max_body_bytes", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn ban(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Permission::ManageBans)?;
    let (body, raw): (BanRequest, _) = read_json(&req, payload, &state.body_limits).await?;
    let kind = kind(body.kind.as_deref())?;
    let value = body
        .value
        .as_deref()
        .ok_or_else(|| ApiError::field("value", "is required"))?;
    let who = subject(&state, kind, value)?;
    let duration = match body.duration.as_deref() {
        None => DEFAULT_BAN,
        Some(d) => humantime::parse_duration(d)
            .ok()
            .filter(|d| !d.is_zero() && *d <= MAX_BAN)
            .ok_or_else(|| {
                ApiError::field("duration", "a duration up to 365d, e.g. \"24h\" or \"30m\"")
            })?,
    };
    let reason = body.reason.unwrap_or_default();
    if reason.chars().count() > 500 || reason.chars().any(char::is_control) {
        return Err(ApiError::field(
            "reason",
            "at most 500 characters, no control characters",
        ));
    }
    let keyed = match replay::begin(&state.services, &caller.ctx, &[b"ban", &raw]).await? {
        Begin::Replay(first) => return Ok(first),
        Begin::Run(keyed) => keyed,
    };
    let (field, rec) = state
        .services
        .guard
        .ban(
            kind,
            &who,
            duration.as_millis() as u64,
            &reason,
            &caller.name,
        )
        .await?;
    tracing::warn!(kind = kind.as_str(), by = %caller.name, "ban started by an admin");
    keyed
        .answer(
            &state.services,
            &caller.ctx,
            StatusCode::CREATED,
            &BanView::new(&field, &rec),
        )
        .await
}

/// Release a phone, device or IP.
#[utoipa::path(
    delete, path = "/v1/admin/bans/{kind}/{value}", tag = "anti-abuse",
    params(
        ("kind" = String, Path, description = "phone, device or ip"),
        ("value" = String, Path, description = "the phone (any spelling), device id or IP address"),
    ),
    responses(
        (status = 200, description = "Released (or was not banned)", body = Unbanned),
        (status = 400, description = "malformed_request (query or body)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn unban(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    caller: Caller,
) -> Result<web::Json<Unbanned>, ApiError> {
    caller.require(Permission::ManageBans)?;
    let (kind_raw, value) = path.into_inner();
    let kind = kind(Some(&kind_raw))?;
    let who = subject(&state, kind, &value)?;
    let removed = state.services.guard.unban(kind, &who, &caller.name).await?;
    Ok(web::Json(Unbanned {
        kind: kind.as_str().into(),
        subject: crate::guard::bans::subject(kind, &who),
        removed,
    }))
}

/// The bans running now.
#[utoipa::path(
    get, path = "/v1/admin/bans", tag = "anti-abuse",
    params(BanQuery),
    responses(
        (status = 200, description = "Running bans", body = BanList),
        (status = 400, description = "malformed_request (query or body)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn bans(
    state: web::Data<AppState>,
    query: web::Query<BanQuery>,
    caller: Caller,
) -> Result<web::Json<BanList>, ApiError> {
    caller.require(Permission::ReadLimits)?;
    let guard = &state.services.guard;
    // Read through to Redis, so the list is current on every replica.
    guard.refresh_bans().await?;
    let filter = match (query.kind.as_deref(), query.value.as_deref()) {
        (None, None) => None,
        (Some(k), None) => Some(format!("{}:", kind(Some(k))?.as_str())),
        (Some(k), Some(v)) => {
            let k = kind(Some(k))?;
            Some(crate::guard::bans::subject(k, &subject(&state, k, v)?))
        }
        (None, Some(_)) => return Err(ApiError::field("kind", "is required with value")),
    };
    let bans = guard
        .bans()
        .running(guard.now_ms())
        .into_iter()
        .filter(|(field, _)| {
            filter
                .as_ref()
                .is_none_or(|f| field.starts_with(f.as_str()))
        })
        .map(|(field, rec)| BanView::new(&field, &rec))
        .collect();
    Ok(web::Json(BanList { bans }))
}
