//! Webhook delivery: drains every webhook campaign's outbox stream
//! (`st:{c}:outbox`) to the campaign's `alerts.webhook_url`.
//!
//! # Delivery: at least once
//! The scripts write each event into the outbox in the same atomic step that
//! crosses its threshold, so an event exists exactly when its cause does.
//! Each replica polls about every 250 ms: for every campaign in
//! `st:{webhooks}` it reads new entries through the consumer group
//! `webhooks` (`XREADGROUP ... >`: a new entry goes to one replica only),
//! POSTs each, and `XACK`s it only after a 2xx answer. Until then the entry
//! stays in the group's pending list, in Redis, so neither a crash, a
//! restart nor a lost connection loses it.
//!
//! A failed delivery (a non-2xx answer, no answer within 5 s, a connection
//! or DNS error) is retried with exponential backoff: `webhook_retry_base_ms`
//! (1 s) after the first attempt, then 2 s, 4 s, ... capped at 5 minutes,
//! forever. The attempt count is the pending entry's delivery count in Redis
//! and the wait is its idle time (both from `XPENDING`), so the schedule
//! survives restarts and holds across replicas. A pending entry changes
//! hands only through `XCLAIM` with that minimum idle time, so of two
//! replicas reaching for it one gets it. The replica that last tried an
//! entry retries it when its backoff is over; any other replica takes it
//! only once it has also been idle for `webhook_claim_idle_ms` (30 s, which
//! is longer than a delivery may take), which is how the entries of a
//! consumer that died are taken over. This is `XAUTOCLAIM`'s rule entry by
//! entry: `XAUTOCLAIM` alone would also take the entries a live replica is
//! backing off from as soon as they are 30 s idle, shortening the backoff.
//! Each campaign is drained by its own task (at most 16 at once, one per
//! campaign), so a slow or failing receiver never holds up the others.
//!
//! Every request carries `Stampede-Event-Id: <stream entry id>`, the same on
//! every attempt. A crash (or a lost connection to Redis) between the
//! receiver's 2xx and the `XACK` makes the event go out again: one
//! duplicate, which the receiver drops by that id. Nothing else sends an
//! event twice to a receiver that answered 2xx.
//!
//! # The request
//! `POST` with `Content-Type: application/json`, body
//! `{"event", "campaign_id", "stock", "remaining", "at"}` (`at`: RFC 3339 UTC
//! with milliseconds), `Stampede-Signature: sha256=<hex HMAC-SHA-256 of the
//! exact body>` under a key derived from the service secret
//! (`secret.derive("webhook")`), and `Stampede-Event: <event>`.
//!
//! # SSRF
//! The URL was checked when it was stored; it is checked again before every
//! attempt ([`check_url`]), and a host name is resolved and **every** address
//! checked ([`address_allowed`]). The request then goes to the checked
//! addresses only (pinned with `ClientBuilder::resolve_to_addrs`, so a DNS answer that
//! changes between check and connect cannot redirect it), without a proxy,
//! and redirects are not followed (a 3xx is a failed attempt). A refused
//! destination can never succeed, so its event is logged, counted as
//! `refused` and acknowledged: it is dropped, not retried. So is an event
//! whose campaign no longer has a `webhook_url`.
//!
//! # `campaign.ended` without an `end`
//! Each second the worker also checks its campaigns' end time against the
//! service's clock; a live (`active` or `paused`) campaign whose `ends_at`
//! has passed and whose `ended_fired` is not set gets its `campaign.ended`
//! from `lua/expire_campaign.lua`, which checks, sets the flag and writes the
//! event in one step (`transition.lua` sets the same flag on `end`).
//!
//! Metrics: `stampede_webhook_deliveries_total{event, result}` with `result`
//! `delivered`, `failed` (will be retried) or `refused` (dropped). Each
//! failure and refusal is logged at warn with the campaign, the event and
//! its id (no identity is ever part of an event).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::domain::campaign::CampaignId;
use crate::domain::clock::{Clock, from_ms, rfc3339};
use crate::domain::webhook::{UrlPolicy, address_allowed, check_url, signature};
use crate::store::keys::CampaignKeys;
use crate::store::outbox::{ExpireOutcome, OutboxEntry, OutboxEvent};
use crate::store::redis::Result;
use crate::store::{Store, StoreError};

/// How often the outboxes are polled.
const POLL: Duration = Duration::from_millis(250);
/// The end times are checked every this many polls (each second).
const EXPIRY_EVERY: u64 = 4;
/// Gone consumers are looked for every this many polls (each minute).
const FORGET_EVERY: u64 = 240;
/// A consumer that held nothing and did nothing this long is gone.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// One attempt: DNS, connect, TLS, request and response head.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// New entries read per campaign per poll.
const READ_BATCH: usize = 16;
/// Pending entries looked at per campaign per poll.
const PENDING_BATCH: usize = 64;
/// Campaigns drained at once.
const CONCURRENCY: usize = 16;
const USER_AGENT: &str = concat!("stampede-webhooks/", env!("CARGO_PKG_VERSION"));

/// The settings the worker takes.
#[derive(Debug, Clone, Copy)]
pub struct WebhookConfig {
    pub policy: UrlPolicy,
    /// Wait after the first failed attempt; doubles per attempt.
    pub retry_base: Duration,
    /// How long an entry held by another consumer must sit idle before this
    /// one takes it over.
    pub claim_idle: Duration,
}

/// Everything delivery needs; the loop holds it weakly.
pub struct Webhooks {
    store: Store,
    clock: Arc<dyn Clock>,
    key: [u8; 32],
    consumer: String,
    config: WebhookConfig,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("consumer", &self.consumer)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The JSON body, fields in the documented order.
#[derive(Serialize)]
struct Payload<'a> {
    event: &'a str,
    campaign_id: &'a str,
    stock: i64,
    remaining: i64,
    at: String,
}

/// How one attempt went.
#[derive(Debug)]
enum Outcome {
    Delivered,
    /// Try again later.
    Failed(String),
    /// Can never succeed: acknowledged without delivery.
    Refused(String),
}

/// The event names the scripts write (also the metric's label values).
fn known_event(name: &str) -> Option<&'static str> {
    ["campaign.low_stock", "campaign.sold_out", "campaign.ended"]
        .into_iter()
        .find(|e| *e == name)
}

/// The wait after the `deliveries`-th attempt failed.
fn backoff(base: Duration, deliveries: u64) -> Duration {
    let doublings = deliveries.saturating_sub(1).min(20) as u32;
    base.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `host-pid-random`: unique per process, readable in `XINFO CONSUMERS`.
fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let mut r = [0u8; 4];
    getrandom::fill(&mut r).expect("the OS random source is available");
    format!("{host}-{}-{}", std::process::id(), hex::encode(r))
}

/// An error with its causes, without the URL (it may carry a token).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

impl Webhooks {
    /// `key` signs the bodies (`secret.derive("webhook")`).
    pub fn new(store: Store, clock: Arc<dyn Clock>, key: [u8; 32], config: WebhookConfig) -> Self {
        // reqwest's rustls uses the process-wide provider (as the store does).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            store,
            clock,
            key,
            consumer: consumer_name(),
            config,
        }
    }

    /// This process's name in the consumer groups.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// One attempt at delivering `event` (entry `id` of `campaign`) to `url`.
    async fn send(&self, url: Option<&str>, campaign: &str, id: &str, ev: &OutboxEvent) -> Outcome {
        let Some(raw) = url else {
            return Outcome::Refused("the campaign has no webhook_url any more".into());
        };
        let dest = match check_url(raw, self.config.policy) {
            Ok(d) => d,
            Err(m) => return Outcome::Refused(format!("webhook_url {m}")),
        };
        let mut client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(DELIVERY_TIMEOUT)
            .user_agent(USER_AGENT);
        if dest.ip.is_none() {
            let Some(host) = dest.url.host_str() else {
                return Outcome::Refused("webhook_url has no host".into());
            };
            let port = dest.url.port_or_known_default().unwrap_or(443);
            let addrs: Vec<SocketAddr> =
                match tokio::time::timeout(DELIVERY_TIMEOUT, tokio::net::lookup_host((host, port)))
                    .await
                {
                    Ok(Ok(a)) => a.collect(),
                    Ok(Err(e)) => return Outcome::Failed(format!("cannot resolve {host}: {e}")),
                    Err(_) => return Outcome::Failed(format!("resolving {host} timed out")),
                };
            if let Some(bad) = addrs
                .iter()
                .find(|a| !address_allowed(a.ip(), self.config.policy))
            {
                return Outcome::Refused(format!(
                    "{host} resolves to a forbidden address ({})",
                    bad.ip()
                ));
            }
            if addrs.is_empty() {
                return Outcome::Failed(format!("{host} resolves to no address"));
            }
            // Connect to the checked addresses only, never to a fresh lookup.
            client = client.resolve_to_addrs(host, &addrs);
        }
        let client = match client.build() {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(format!("HTTP client: {}", describe(e))),
        };
        let body = match serde_json::to_vec(&Payload {
            event: &ev.event,
            campaign_id: campaign,
            stock: ev.stock,
            remaining: ev.remaining,
            at: rfc3339(from_ms(ev.at_ms)),
        }) {
            Ok(b) => b,
            Err(e) => return Outcome::Refused(format!("body: {e}")),
        };
        let res = client
            .post(dest.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Stampede-Signature", signature(&self.key, &body))
            .header("Stampede-Event-Id", id)
            .header("Stampede-Event", &ev.event)
            .body(body)
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => Outcome::Delivered,
            Ok(r) => Outcome::Failed(format!("answered HTTP {}", r.status().as_u16())),
            Err(e) => Outcome::Failed(describe(e)),
        }
    }

    /// Delivers one entry (its `attempt`-th try) and settles it: acknowledged
    /// when delivered or refused, left pending when failed.
    async fn deliver(
        &self,
        keys: &CampaignKeys,
        campaign: &str,
        url: Option<&str>,
        entry: &OutboxEntry,
        attempt: u64,
    ) -> Result<()> {
        let (label, outcome) = match &entry.event {
            Some(ev) => match known_event(&ev.event) {
                Some(label) => (label, self.send(url, campaign, &entry.id, ev).await),
                None => ("unknown", Outcome::Refused("unknown event".into())),
            },
            None => ("unknown", Outcome::Refused("unreadable entry".into())),
        };
        let result = match &outcome {
            Outcome::Delivered => {
                self.store.outbox_ack(keys, &entry.id).await?;
                tracing::info!(campaign, event = label, event_id = %entry.id, attempt, "webhook delivered");
                "delivered"
            }
            Outcome::Refused(reason) => {
                tracing::warn!(campaign, event = label, event_id = %entry.id, %reason, "webhook refused; the event is dropped");
                self.store.outbox_ack(keys, &entry.id).await?;
                "refused"
            }
            Outcome::Failed(reason) => {
                let retry_in = backoff(self.config.retry_base, attempt);
                tracing::warn!(campaign, event = label, event_id = %entry.id, attempt, retry_in_ms = millis(retry_in), %reason, "webhook delivery failed; will retry");
                "failed"
            }
        };
        metrics::counter!("stampede_webhook_deliveries_total", "event" => label, "result" => result)
            .increment(1);
        Ok(())
    }

    /// Writes `campaign.ended` if the campaign's window closed unmarked.
    async fn expire(&self, keys: &CampaignKeys, campaign: &str) -> Result<()> {
        let Some(s) = self.store.end_state(keys).await? else {
            return Ok(());
        };
        let now = self.clock.now_ms();
        let due = !s.ended_fired
            && s.ends_ms > 0
            && s.ends_ms <= now
            && matches!(s.state.as_str(), "active" | "paused");
        if due && self.store.expire_campaign(keys, now).await? == ExpireOutcome::Fired {
            tracing::info!(
                campaign,
                "campaign reached its end time: campaign.ended written"
            );
        }
        Ok(())
    }

    /// The webhook URL the campaign has now (`None`: none, or no campaign).
    async fn url(&self, keys: &CampaignKeys) -> Result<Option<String>> {
        Ok(self
            .store
            .campaign(keys)
            .await?
            .and_then(|c| c.spec.alerts.webhook_url))
    }
}

/// Which campaigns are being drained, and whose group is known to exist.
#[derive(Default)]
struct Shared {
    busy: Mutex<HashSet<String>>,
    groups: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a pass does besides draining.
#[derive(Debug, Clone, Copy)]
struct Chores {
    expiry: bool,
    forget: bool,
}

/// Polls until the service is dropped.
pub async fn run(hooks: Weak<Webhooks>) {
    let shared = Arc::new(Shared::default());
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let Some(h) = hooks.upgrade() else { return };
        let campaigns = match h.store.webhook_campaigns().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "webhook campaigns not listed this time");
                continue;
            }
        };
        drop(h);
        let chores = Chores {
            expiry: n.is_multiple_of(EXPIRY_EVERY),
            forget: n.is_multiple_of(FORGET_EVERY),
        };
        n += 1;
        for campaign in campaigns {
            // One pass per campaign at a time; a slow one is skipped, not queued.
            if !lock(&shared.busy).insert(campaign.clone()) {
                continue;
            }
            let (hooks, shared, slots) = (hooks.clone(), shared.clone(), slots.clone());
            tokio::spawn(async move {
                if let Ok(_slot) = slots.acquire_owned().await {
                    pass(&hooks, &shared, &campaign, chores).await;
                }
                lock(&shared.busy).remove(&campaign);
            });
        }
    }
}

/// One campaign's turn: its chores, then its due retries, then its new entries.
async fn pass(hooks: &Weak<Webhooks>, shared: &Shared, campaign: &str, chores: Chores) {
    let Ok(id) = CampaignId::parse(campaign) else {
        tracing::debug!(campaign, "not a campaign id in the webhook list");
        return;
    };
    let keys = CampaignKeys::new(&id);
    if let Err(e) = drain(hooks, shared, &keys, campaign, chores).await {
        // The group may be gone with its stream: make sure of it next time.
        lock(&shared.groups).remove(campaign);
        log_store_error(campaign, &e, "outbox not drained this time");
    }
}

/// Redis being away is retried quietly; anything else (a wrong-type key)
/// needs a person.
fn log_store_error(campaign: &str, e: &StoreError, what: &str) {
    if e.is_unavailable() {
        tracing::debug!(campaign, error = %e, "{what}");
    } else {
        tracing::warn!(campaign, error = %e, "{what}");
    }
}

async fn drain(
    hooks: &Weak<Webhooks>,
    shared: &Shared,
    keys: &CampaignKeys,
    campaign: &str,
    chores: Chores,
) -> Result<()> {
    let Some(h) = hooks.upgrade() else {
        return Ok(());
    };
    if chores.expiry
        && let Err(e) = h.expire(keys, campaign).await
    {
        log_store_error(campaign, &e, "end time not checked this time");
    }
    if !lock(&shared.groups).contains(campaign) {
        h.store.outbox_group(keys).await?;
        lock(&shared.groups).insert(campaign.to_owned());
    }
    if chores.forget {
        let n = h
            .store
            .outbox_forget_consumers(keys, &h.consumer, millis(FORGET_AFTER))
            .await?;
        if n > 0 {
            tracing::info!(
                campaign,
                consumers = n,
                "forgot webhook consumers gone for an hour"
            );
        }
    }
    let me = h.consumer.clone();
    let (base, claim_idle) = (h.config.retry_base, h.config.claim_idle);
    // Pending entries whose wait is over: the backoff for the consumer that
    // tried last, and at least `claim_idle` for any other.
    let due: Vec<_> = h
        .store
        .outbox_pending(keys, millis(base), PENDING_BATCH)
        .await?
        .into_iter()
        .filter_map(|p| {
            let mut wait = backoff(base, p.deliveries);
            if p.consumer != me {
                wait = wait.max(claim_idle);
            }
            (p.idle_ms >= millis(wait)).then_some((p, wait))
        })
        .collect();
    let fresh = h.store.outbox_read_new(keys, &me, READ_BATCH).await?;
    if due.is_empty() && fresh.is_empty() {
        return Ok(());
    }
    let url = h.url(keys).await?;
    drop(h);

    // Each step holds the service only for itself, so a dropped service
    // stops its worker after at most one attempt.
    for (p, wait) in due {
        let Some(h) = hooks.upgrade() else {
            return Ok(());
        };
        if let Some(entry) = h.store.outbox_claim(keys, &me, millis(wait), &p.id).await? {
            if p.consumer != me {
                tracing::info!(campaign, event_id = %p.id, from = %p.consumer, "took over a pending webhook event");
            }
            h.deliver(keys, campaign, url.as_deref(), &entry, p.deliveries + 1)
                .await?;
        }
    }
    for entry in fresh {
        let Some(h) = hooks.upgrade() else {
            return Ok(());
        };
        h.deliver(keys, campaign, url.as_deref(), &entry, 1).await?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "webhooks_tests.rs"]
mod tests;
