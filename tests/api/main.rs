//! Integration tests: one binary, every test with its own redis-server.
#![allow(clippy::unwrap_used)]

mod auth;
mod claims;
mod embedded;
mod faults;
mod helpers;
mod idempotency;
mod problems;
mod redemptions;
