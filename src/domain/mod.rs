//! The pure domain: values that are parsed once at the edge and trusted after.
//!
//! Nothing here knows about actix or Redis, so every rule in this folder is
//! tested in-process (unit tests, proptest) and benchmarked with criterion.

pub mod campaign;
pub mod clock;
pub mod code;
pub mod coupon;
pub mod eligibility;
pub mod error;
pub mod hex;
pub mod identity;
pub mod lifecycle;
pub mod limits;
pub mod ratelimit;
pub mod secret;
pub mod unique;
pub mod webhook;

pub use error::FieldError;
