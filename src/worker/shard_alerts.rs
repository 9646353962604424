//! The stock webhooks of campaigns with `stock_shards` > 1, every
//! [`PERIOD`]: each known sharded campaign with a webhook has its shards'
//! `issued` summed (`Store::campaign`), and when what remains is at or below
//! its low-stock threshold, or nothing remains, `lua/shard_alert.lua` writes
//! `campaign.low_stock` / `campaign.sold_out` to its outbox, once each (the
//! webhook worker delivers them as for any campaign).
//!
//! Unsharded, the claim that crosses a threshold writes the event in its
//! own script. A shard sees only its slice, so here the event comes up to
//! one period after the crossing. Every instance runs this loop; the
//! script's flags make the event once per campaign, not once per instance.

use std::sync::Weak;
use std::time::Duration;

use crate::startup::Services;

/// How often the sharded campaigns' stock is summed.
pub const PERIOD: Duration = Duration::from_millis(500);

pub async fn run(services: Weak<Services>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = services.upgrade() else { return };
        check(&s).await;
    }
}

/// One check of every known sharded campaign with a webhook.
pub async fn check(s: &Services) {
    for id in s.campaigns.known_sharded_ids() {
        let Ok(c) = s.campaigns.get(&id).await else {
            continue;
        };
        if c.spec.stock_shards <= 1 || c.spec.alerts.webhook_url.is_none() {
            continue;
        }
        let remaining = (c.spec.stock - c.issued).max(0);
        if remaining > c.spec.low_stock_at().max(0) {
            continue;
        }
        let Ok(cid) = crate::domain::campaign::CampaignId::parse(&id) else {
            continue;
        };
        let keys = crate::store::keys::CampaignKeys::new(&cid);
        match s.store.shard_alert(&keys, c.issued, s.clock.now_ms()).await {
            Ok(events) if !events.is_empty() => {
                tracing::info!(campaign = %id, ?events, remaining, "stock webhook events written");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(campaign = %id, error = %e, "stock webhook check failed"),
        }
    }
}
