//! Integration tests: one binary, every test with its own redis-server.
#![allow(clippy::unwrap_used)]

mod auth;
mod bans;
mod batch;
mod binary;
mod bulk;
mod claims;
mod cli;
mod cluster;
mod cluster_shards;
mod cluster_support;
mod contract;
mod deadline;
mod deploy;
mod eligibility;
mod embedded;
mod faults;
mod functions;
mod helpers;
mod hostile;
mod idempotency;
mod leases;
mod lifecycle;
mod limits;
mod ops;
mod problems;
mod redemptions;
mod replication;
mod scripts;
mod shards;
mod soldout;
mod webhooks;
