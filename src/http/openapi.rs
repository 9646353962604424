//! The OpenAPI document, generated from the handlers' annotations and the
//! request/response types, served at `/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::problem::Problem;
use crate::http::wire::schemas::{CouponSchema, FieldErrorSchema, LimitsSchema, StatusSchema};
use crate::http::wire::{
    CampaignView, ClaimRequest, ClaimResponse, CouponRequest, CreateCampaignRequest, RedeemRequest,
    RedeemResponse, RollbackRequest, RollbackResponse, ValidateRequest, ValidateResponse,
};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "stampede",
        description = "Coupon issuance and anti-abuse: atomic claims and redemptions in Redis Lua. \
Every 4xx/5xx is application/problem+json with a stable `code`.",
    ),
    paths(
        crate::http::campaigns::create,
        crate::http::campaigns::get,
        crate::http::campaigns::list,
        crate::http::campaigns::patch,
        crate::http::campaigns::act,
        crate::http::campaigns::stats,
        crate::http::campaigns::audit,
        crate::http::codes::create,
        crate::http::coupons::claim,
        crate::http::coupons::redeem,
        crate::http::coupons::rollback,
        crate::http::coupons::validate,
        crate::http::admin::limits,
        crate::http::admin::ban,
        crate::http::admin::unban,
        crate::http::admin::bans,
        crate::http::ops::healthz,
        crate::http::ops::readyz,
        crate::http::ops::metrics,
        crate::http::ops::openapi,
        crate::http::warroom::page,
        crate::http::warroom::token,
        crate::http::warroom::stream,
    ),
    components(schemas(
        Problem, FieldErrorSchema, CreateCampaignRequest, CouponRequest, LimitsSchema, CouponSchema, CampaignView, StatusSchema,
        ClaimRequest, ClaimResponse, RedeemRequest, RedeemResponse, RollbackRequest, RollbackResponse,
        ValidateRequest, ValidateResponse,
        crate::http::wire::limits::LimitsView, crate::http::wire::limits::RuleView,
        crate::http::wire::limits::BanPolicyView, crate::http::wire::limits::ListView,
        crate::http::wire::limits::ShieldView, crate::http::wire::limits::RejectedView,
        crate::http::wire::limits::BanRequest, crate::http::wire::limits::BanView,
        crate::http::wire::limits::BanList, crate::http::wire::limits::Unbanned,
        crate::http::wire::PatchCampaignRequest, crate::http::wire::TransitionRequest,
        crate::http::wire::reports::StatsView, crate::http::wire::reports::Rejections,
        crate::http::wire::reports::MinuteCount, crate::http::wire::reports::RedemptionSplit,
        crate::http::wire::reports::AuditView, crate::http::wire::reports::AuditEntryView,
        crate::http::wire::coupons::OrderItemRequest, crate::http::wire::coupons::CustomerRequest,
        crate::http::wire::schemas::EligibilitySchema, crate::http::wire::schemas::AlertsSchema,
        crate::http::wire::bulk::BulkCodesRequest, crate::http::wire::campaigns::CampaignList,
        crate::http::warroom::StreamToken
    )),
    modifiers(&Bearer),
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
