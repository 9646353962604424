//! Background loops. Each holds only a `Weak` reference to what it serves,
//! so it ends by itself when the service (or a test's app) is dropped.
//!
//! - [`limits_watch`]: the rules file, watched with `notify` (plus a 1 s
//!   check of its contents, for file systems that drop events); a valid edit
//!   is installed, an invalid one rejected whole.
//! - [`ban_refresh`]: the bans version, polled each second, and the shield's
//!   idle buckets, forgotten each minute.
//! - the refusals answered from the sold-out memory, added to the
//!   campaigns' stats each second.
//! - [`campaign_gauges`]: Redis up, and each known campaign's stock,
//!   remaining, low-stock threshold and status, every 2 s (for `deploy/`).
//! - the war room's snapshot (`service::warroom`), each second.
//! - [`shard_alerts`]: the low-stock and sold-out events of campaigns with
//!   `stock_shards` > 1, from their shards' summed counters, every 0.5 s.
//! - [`webhooks`]: the campaigns' outboxes, drained to their webhook URLs
//!   (at least once, retried with backoff), and `campaign.ended` at `ends_at`.

pub mod ban_refresh;
pub mod campaign_gauges;
pub mod limits_watch;
pub mod shard_alerts;
pub mod webhooks;

use std::sync::Arc;

use crate::startup::Services;

/// Starts every loop of `services` on the store's runtime.
pub fn start(services: &Arc<Services>) {
    let rt = crate::store::redis::redis_runtime();
    rt.spawn(flush_remembered(Arc::downgrade(services)));
    rt.spawn(campaign_gauges::run(Arc::downgrade(services)));
    rt.spawn(shard_alerts::run(Arc::downgrade(services)));
    rt.spawn(war_room(Arc::downgrade(&services.warroom)));
    start_loops(services);
}

/// Each second, the claims refused from memory (`service::soldout`) are
/// added to their campaigns' stats.
async fn flush_remembered(services: std::sync::Weak<Services>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(s) = services.upgrade() else { return };
        s.claims.flush_remembered().await;
    }
}

/// Each second, the war room's snapshot (`service::warroom`).
async fn war_room(room: std::sync::Weak<crate::service::warroom::WarRoom>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(room) = room.upgrade() else { return };
        room.sample().await;
    }
}

fn start_loops(services: &Services) {
    let rt = crate::store::redis::redis_runtime();
    let guard = &services.guard;
    rt.spawn(ban_refresh::run(Arc::downgrade(guard)));
    if let Some(path) = guard.file() {
        rt.spawn(limits_watch::run(Arc::downgrade(guard), path.to_path_buf()));
    }
    rt.spawn(webhooks::run(Arc::downgrade(&services.webhooks)));
}
