//! HTTP: actix routes, extractors, wire types, and the one `ResponseError`
//! that renders problem+json. Handlers extract and parse input (into the
//! service's commands, see [`wire`]), call the guard and one use case, and
//! render the answer; they hold no logic.

pub mod admin;
pub mod auth;
pub mod body;
pub mod campaigns;
pub mod codes;
pub mod conn;
pub mod coupons;
pub mod middleware;
pub mod openapi;
pub mod ops;
pub mod permissions;
pub mod problem;
pub mod replay;
pub mod warroom;
pub mod wire;

use actix_web::middleware::{ErrorHandlers, from_fn};
use actix_web::web;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::settings::ApiKey;
use crate::startup::Services;

/// Everything a handler may need, shared by all workers.
#[derive(Debug)]
pub struct AppState {
    pub services: Arc<Services>,
    pub body_limits: body::BodyLimits,
    pub max_header_bytes: usize,
    pub api_keys: Vec<ApiKey>,
    pub metrics: Option<PrometheusHandle>,
}

/// The routes, used by the server and by tests alike.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // The claim route first: a flash sale's requests match it on the first
    // try (routes are tried in order).
    cfg.service(web::resource("/v1/campaigns/{id}/claims").route(web::post().to(coupons::claim)))
        .service(
            web::resource("/v1/campaigns")
                .route(web::post().to(campaigns::create))
                .route(web::get().to(campaigns::list)),
        )
        .service(
            web::resource("/v1/campaigns/{id}")
                .route(web::get().to(campaigns::get))
                .route(web::patch().to(campaigns::patch)),
        )
        .service(web::resource("/v1/campaigns/{id}/stats").route(web::get().to(campaigns::stats)))
        .service(web::resource("/v1/campaigns/{id}/codes").route(web::post().to(codes::create)))
        .service(web::resource("/v1/campaigns/{id}/{action}").route(web::post().to(campaigns::act)))
        .service(web::resource("/v1/audit").route(web::get().to(campaigns::audit)))
        .service(web::resource("/v1/redemptions").route(web::post().to(coupons::redeem)))
        .service(web::resource("/v1/redemptions/rollback").route(web::post().to(coupons::rollback)))
        .service(web::resource("/v1/codes/validate").route(web::post().to(coupons::validate)))
        .service(web::resource("/v1/admin/limits").route(web::get().to(admin::limits)))
        .service(
            web::resource("/v1/admin/bans")
                .route(web::get().to(admin::bans))
                .route(web::post().to(admin::ban)),
        )
        .service(
            web::resource("/v1/admin/bans/{kind}/{value}").route(web::delete().to(admin::unban)),
        )
        .service(web::resource("/ops").route(web::get().to(warroom::page)))
        .service(web::resource("/v1/ops/token").route(web::post().to(warroom::token)))
        .service(web::resource("/v1/ops/stream").route(web::get().to(warroom::stream)))
        .service(web::resource("/healthz").route(web::get().to(ops::healthz)))
        .service(web::resource("/readyz").route(web::get().to(ops::readyz)))
        .service(web::resource("/metrics").route(web::get().to(ops::metrics)))
        .service(web::resource("/openapi.json").route(web::get().to(ops::openapi)));
}

/// The complete app: routes, problem+json fallback, and the edge middleware.
pub fn app(
    state: web::Data<AppState>,
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    actix_web::App::new()
        .app_data(state)
        .configure(configure)
        .default_service(web::to(problem::not_found))
        .wrap(ErrorHandlers::new().default_handler(problem::fallback))
        .wrap(from_fn(middleware::edge))
}
