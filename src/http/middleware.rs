//! The edge every request passes: a request id (in the log span and the
//! `X-Request-Id` response header), the client address and the flood shield
//! (`guard`), the header-size limit, panic containment
//! (a panic becomes a 500 problem, never a dropped connection), metrics per
//! route and status, and one log line per request. Paths carry campaign ids,
//! never identities; the peer address is not logged.
//!
//! The claim route is dispatched here, not by actix's router, when its
//! campaign id is well formed ([`claim_campaign`]): matching every route's
//! pattern, the router's own middleware and the extractors cost a sold-out
//! flood about 5 % of its CPU (docs/benchmarks.md, "The claim route without
//! the router"). It calls the routed handler's own body
//! (`coupons::claim_request`), so both answer alike; any other path, method
//! or id goes through the router.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, ResponseError, web};
use futures_util::FutureExt;
use futures_util::future::LocalBoxFuture;
use tracing::Instrument;

use crate::domain::unique::unique_id;
use crate::error::ApiError;
use crate::guard::Client;
use crate::http::AppState;

// Header names as constants: a `&str` name is parsed on every lookup.
pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The server-made id of a request.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Counts a request in its route's metrics. The handles are kept per
/// (route, status) on each worker thread: `counter!` hashes its labels and
/// looks them up in the recorder's registry on every call. Routes are
/// interned patterns and statuses are few, so the map stays small. (This
/// map and the others of a sold-out refusal's path hash with foldhash, a
/// seeded hasher about three times as cheap as std's SipHash for keys this
/// short; SipHash was about 5 % of a refusal's instructions.)
fn record_request(route: &'static str, status: u16, elapsed_secs: f64) {
    use foldhash::HashMap;
    use metrics::{Counter, Histogram};
    use std::cell::RefCell;
    type Handles = HashMap<(&'static str, u16), (Counter, Histogram)>;
    thread_local! {
        static HANDLES: RefCell<Handles> = RefCell::new(HashMap::default());
    }
    HANDLES.with(|handles| {
        let mut handles = handles.borrow_mut();
        let (count, duration) = handles
            .entry((route, status))
            .or_insert_with(|| {
                (
                    metrics::counter!("stampede_http_requests_total", "route" => route, "status" => status_label(status)),
                    metrics::histogram!("stampede_http_request_duration_seconds", "route" => route),
                )
            });
        count.increment(1);
        duration.record(elapsed_secs);
    });
}

/// The route pattern of `req` (the metrics label), remembered per path on
/// each worker thread: actix finds it by matching every route's pattern
/// again, which cost more than the rest of a sold-out refusal. At most
/// [`ROUTES_REMEMBERED`] paths are kept (then the memory starts afresh), so
/// a flood of random paths costs memory for no more than that. Patterns are
/// interned once for the process (there are as many as routes), so a label
/// costs no allocation per request.
fn route_of(req: &ServiceRequest) -> &'static str {
    use foldhash::{HashMap, HashSet};
    use std::cell::RefCell;
    use std::sync::{LazyLock, Mutex};
    static PATTERNS: LazyLock<Mutex<HashSet<&'static str>>> =
        LazyLock::new(|| Mutex::new(HashSet::default()));
    thread_local! {
        static ROUTES: RefCell<HashMap<String, &'static str>> = RefCell::new(HashMap::default());
    }
    ROUTES.with(|routes| {
        let mut routes = routes.borrow_mut();
        if let Some(r) = routes.get(req.path()) {
            return *r;
        }
        let r: &'static str = match req.match_pattern() {
            None => "unmatched",
            Some(p) => {
                let mut interned = PATTERNS.lock().unwrap_or_else(|e| e.into_inner());
                match interned.get(p.as_str()) {
                    Some(r) => r,
                    None => {
                        let r: &'static str = Box::leak(p.into_boxed_str());
                        interned.insert(r);
                        r
                    }
                }
            }
        };
        if routes.len() >= ROUTES_REMEMBERED {
            routes.clear();
        }
        routes.insert(req.path().to_owned(), r);
        r
    })
}

/// The status as a label value, without an allocation for the usual ones.
fn status_label(status: u16) -> std::borrow::Cow<'static, str> {
    match status {
        200 => "200".into(),
        201 => "201".into(),
        400 => "400".into(),
        401 => "401".into(),
        403 => "403".into(),
        404 => "404".into(),
        409 => "409".into(),
        422 => "422".into(),
        429 => "429".into(),
        500 => "500".into(),
        503 => "503".into(),
        s => s.to_string().into(),
    }
}

const ROUTES_REMEMBERED: usize = 1024;

/// The campaign id of `POST /v1/campaigns/{id}/claims` when the id is a
/// well-formed one (`[a-z0-9_-]{1,64}`: nothing to decode); any other path,
/// method or id goes through the router.
fn claim_campaign(req: &ServiceRequest) -> Option<String> {
    if req.method() != actix_web::http::Method::POST {
        return None;
    }
    let id = req
        .path()
        .strip_prefix("/v1/campaigns/")?
        .strip_suffix("/claims")?;
    crate::domain::campaign::CampaignId::parse(id)
        .ok()
        .map(|_| id.to_owned())
}

pub async fn edge(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let id = unique_id();
    req.extensions_mut().insert(RequestId(id.clone()));
    // The client address, resolved once for every route (trusted proxies,
    // IPv6 prefix); handlers and the guard read it from the extensions.
    // Then the shield, before anything else costs work: no Redis.
    let mut shielded = None;
    // A claim this instance answers from memory (its campaign is sold out
    // or not active, `service::soldout`) logs nothing: it gets no span,
    // whose fields cost a tenth of such a refusal. Anything else does.
    // (Should the memory lapse between this look and the handler's, that
    // one claim goes to Redis without a span: its own lines below still
    // name its request id.)
    let fast_claim = claim_campaign(&req);
    let mut quiet = false;
    if let Some(state) = req.app_data::<web::Data<AppState>>() {
        quiet = fast_claim.as_deref().is_some_and(|c| {
            !req.headers().contains_key(IDEMPOTENCY_KEY)
                && state.services.claims.answered_from_memory(c)
        });
        let forwarded: Vec<&str> = req
            .headers()
            .get_all(X_FORWARDED_FOR)
            .filter_map(|v| v.to_str().ok())
            .collect();
        let guard = &state.services.guard;
        let client = guard.client(req.peer_addr().map(|a| a.ip()), &forwarded);
        shielded = guard.shield(&client).err();
        req.extensions_mut().insert(client);
    }
    let route = route_of(&req);
    let method = req.method().clone();
    // The span carries the request id and the route (every event inside the
    // request has them); the request's own lines below (5xx, panic, debug)
    // name the request id, method and route themselves, with no parent, so
    // they read the same with the span, without it (`quiet`), and at a
    // level where it is off.
    // Each span field is formatted when the span is made, on every request:
    // two strings, recorded with `Display` (`Debug` would escape them char
    // by char), no `Display` of the method.
    let span = if quiet {
        tracing::Span::none()
    } else {
        tracing::info_span!("http", request_id = %id.as_str(), route = %route)
    };

    let max_header_bytes = req
        .app_data::<web::Data<AppState>>()
        .map_or(usize::MAX, |s| s.max_header_bytes);
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    // The request is not cloned before routing: actix routes only requests it
    // holds alone. Errors and panics are returned as errors, which actix
    // renders through `ApiError::error_response` (problem+json).
    let mut result = if let Some(refusal) = shielded {
        Ok(req.into_response(refusal.error_response()))
    } else if header_bytes > max_header_bytes {
        Ok(req.into_response(ApiError::HeadersTooLarge(max_header_bytes).error_response()))
    } else {
        // A claim on a well-formed campaign id skips the router: matching
        // the routes' patterns and the extractors cost more than the rest of
        // a sold-out refusal. Same handler, same answers (`claim_request`).
        let handled: LocalBoxFuture<'_, Result<ServiceResponse<BoxBody>, actix_web::Error>> =
            match fast_claim {
                Some(id) => {
                    let (http, mut payload) = req.into_parts();
                    async move {
                        let payload = web::Payload::from_request(&http, &mut payload).await?;
                        let res = crate::http::coupons::claim_request(&http, payload, &id)
                            .await
                            .unwrap_or_else(|e| e.error_response());
                        Ok(ServiceResponse::new(http, res))
                    }
                    .boxed_local()
                }
                None => next
                    .call(req)
                    .map(|r| r.map(ServiceResponse::map_into_boxed_body))
                    .boxed_local(),
            };
        match std::panic::AssertUnwindSafe(handled.instrument(span.clone()))
            .catch_unwind()
            .await
        {
            Ok(Ok(res)) => Ok(res),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                tracing::error!(parent: None, request_id = %id, %method, route, "handler panicked");
                Err(ApiError::Internal.into())
            }
        }
    };
    if let (Ok(res), Ok(v)) = (&mut result, HeaderValue::from_str(&id)) {
        res.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), v);
    }
    let status = match &result {
        Ok(res) => res.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    let elapsed = started.elapsed();
    record_request(route, status, elapsed.as_secs_f64());
    let ms = elapsed.as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(parent: None, request_id = %id, %method, route, status, ms, "request failed");
    } else {
        tracing::debug!(parent: None, request_id = %id, %method, route, status, ms, "request");
    }
    result
}

/// The client of the request, as the edge resolved it.
impl actix_web::FromRequest for Client {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(
            req.extensions()
                .get::<Client>()
                .copied()
                .ok_or(ApiError::Internal),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::claim_campaign;
    use actix_web::test::TestRequest;

    #[test]
    fn only_a_post_on_a_well_formed_id_skips_the_router() {
        let id = |req: TestRequest| claim_campaign(&req.to_srv_request());
        let post = |uri: &str| TestRequest::post().uri(uri);
        assert_eq!(
            id(post("/v1/campaigns/sale-11_a/claims")).as_deref(),
            Some("sale-11_a")
        );
        assert_eq!(
            id(post("/v1/campaigns/sale/claims?x=1")).as_deref(),
            Some("sale")
        );
        for uri in [
            "/v1/campaigns//claims",
            "/v1/campaigns/a/b/claims",
            "/v1/campaigns/h%00x/claims",
            "/v1/campaigns/Sale/claims",
            "/v1/campaigns/sale/claims/",
            "/v1/campaigns/sale",
        ] {
            assert_eq!(id(post(uri)), None, "{uri}");
        }
        assert_eq!(
            id(TestRequest::get().uri("/v1/campaigns/sale/claims")),
            None
        );
        let long = format!("/v1/campaigns/{}/claims", "a".repeat(65));
        assert_eq!(id(post(&long)), None);
    }
}
