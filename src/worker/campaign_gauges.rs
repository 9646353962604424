//! Gauges for dashboards and alerts (`deploy/`), refreshed every
//! [`PERIOD`]: whether Redis answers (`stampede_redis_up`) and, for every
//! campaign this instance has served or created, its stock, what remains,
//! its low-stock threshold and its status:
//!
//! - `stampede_campaign_stock{campaign}`, `stampede_campaign_remaining{campaign}`,
//!   `stampede_campaign_issued{campaign}`, `stampede_campaign_redeemed{campaign}`;
//! - `stampede_campaign_low_stock_threshold{campaign}`: the remaining stock at
//!   which `campaign.low_stock` fires (absent when the campaign sets none);
//! - `stampede_campaign_status{campaign, status}`: 1 for the current status,
//!   0 for the one it left.
//!
//! Every instance reports the campaigns it knows, with the same values (they
//! are read from Redis), so a dashboard takes `max by (campaign)`. Campaign
//! ids are not identities; no phone, device or IP is a label.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use crate::domain::campaign::Status;
use crate::startup::Services;

/// How often the gauges are read from Redis.
pub const PERIOD: Duration = Duration::from_secs(2);

pub async fn run(services: Weak<Services>) {
    let mut tick = tokio::time::interval(PERIOD);
    let mut last_status: HashMap<String, &'static str> = HashMap::new();
    loop {
        tick.tick().await;
        let Some(s) = services.upgrade() else { return };
        refresh(&s, &mut last_status).await;
    }
}

/// One refresh of every gauge.
pub async fn refresh(s: &Services, last_status: &mut HashMap<String, &'static str>) {
    let up = s.store.ping().await.is_ok();
    metrics::gauge!("stampede_redis_up").set(if up { 1.0 } else { 0.0 });
    if !up {
        return;
    }
    let now = s.clock.now_ms();
    for id in s.campaigns.known_ids() {
        let Ok(c) = s.campaigns.get(&id).await else {
            continue;
        };
        let label = id.clone();
        let remaining = (c.spec.stock - c.issued).max(0);
        metrics::gauge!("stampede_campaign_stock", "campaign" => label.clone())
            .set(c.spec.stock as f64);
        metrics::gauge!("stampede_campaign_remaining", "campaign" => label.clone())
            .set(remaining as f64);
        metrics::gauge!("stampede_campaign_issued", "campaign" => label.clone())
            .set(c.issued as f64);
        metrics::gauge!("stampede_campaign_redeemed", "campaign" => label.clone())
            .set(c.redeemed as f64);
        let low = c.spec.low_stock_at();
        if low >= 0 {
            metrics::gauge!("stampede_campaign_low_stock_threshold", "campaign" => label.clone())
                .set(low as f64);
        }
        let status = status_word(Status::derive(&c.state, &c.spec, c.issued, now));
        if let Some(old) = last_status.insert(id, status)
            && old != status
        {
            metrics::gauge!("stampede_campaign_status", "campaign" => label.clone(), "status" => old)
                .set(0.0);
        }
        metrics::gauge!("stampede_campaign_status", "campaign" => label, "status" => status)
            .set(1.0);
    }
}

/// The status as its API word (a static label value).
pub fn status_word(s: Status) -> &'static str {
    match s {
        Status::Draft => "draft",
        Status::PendingApproval => "pending_approval",
        Status::Scheduled => "scheduled",
        Status::Active => "active",
        Status::Paused => "paused",
        Status::Ended => "ended",
        Status::SoldOut => "sold_out",
    }
}
