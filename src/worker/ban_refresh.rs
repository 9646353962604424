//! Polls the bans version each second; forgets idle shield buckets each minute.

use std::sync::Weak;
use std::time::Duration;

use crate::guard::Guard;

pub async fn run(guard: Weak<Guard>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let Some(g) = guard.upgrade() else { return };
        if let Err(e) = g.refresh_bans().await {
            tracing::debug!(error = %e, "bans not refreshed this time");
        }
        n += 1;
        if n.is_multiple_of(60) {
            g.tidy();
        }
    }
}
