//! Wire types: the JSON shapes of API.md, with their OpenAPI schemas
//! (utoipa). Requests are parsed here into the typed commands of `service`
//! (parse, don't validate: a handler never passes a raw string further);
//! responses are built here from the service's domain results.
//!
//! `domain` stays free of utoipa, so the domain values that appear on the wire
//! as they are (`Coupon`, `Limits`, `Status`) get doc-only mirrors in
//! [`schemas`]; the contract test (schemathesis) checks real answers against
//! them, so a mirror that drifts fails the suite.

pub mod bulk;
pub mod campaigns;
pub mod coupons;
pub mod limits;
pub mod reports;
pub mod schemas;

pub use campaigns::{
    CampaignView, CouponRequest, CreateCampaignRequest, PatchCampaignRequest, TransitionRequest,
};
pub use coupons::{
    ClaimRequest, ClaimResponse, RedeemRequest, RedeemResponse, RollbackRequest, RollbackResponse,
    ValidateRequest, ValidateResponse,
};
