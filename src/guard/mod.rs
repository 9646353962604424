//! The anti-abuse edge, before any use case runs (LIMITS.md):
//!
//! 1. the client address, resolved once for every route (trusted proxies,
//!    IPv6 prefix: the service settings, overridden by the rules file's
//!    `[defaults]`);
//! 2. the [`shield`]: an in-process per-IP limiter in front of every route,
//!    no Redis;
//! 3. the block list (in-process), then running [`bans`] (an in-process view
//!    of the bans hash), then the allow list (skips the rules);
//! 4. the [`rules`] of the security team's file: one script call per hash
//!    slot before the use case; `successes`/`failures` settled after it. A
//!    hot key of a rule with a large limit is charged a [`lease`] of units
//!    at a time, and this instance hands out the spare ones.
//!
//! The rules file is loaded at start (a bad file stops the start) and
//! replaced whole by [`Guard::install`] when the watcher (`worker`) sees a
//! valid edit; an invalid edit is rejected whole and the last good rules
//! stay.

pub mod bans;
pub mod client_ip;
pub mod lease;
pub mod meters;
pub mod reload;
pub mod rules;
pub mod shield;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::domain::clock::Clock;
use crate::domain::identity::{ClientIp, DeviceId, Phone, Pseudonym, Pseudonymizer};
use crate::domain::limits::{BanKind, Count, Defaults, Endpoint, RuleSet};
use crate::domain::ratelimit::{RateState, ceil_secs};
use crate::error::{ApiError, BlockReason};
use crate::store::Store;
use crate::store::rules::{BanRecord, RuleCall, RuleResult};
use bans::BanCache;
use meters::{LeaseEvent, Meters};
pub use reload::read_rules;
use rules::{Decision, Planned, Subject, by_slot, plan};
use shield::Shield;

/// How the client address is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    pub trusted_proxies: Vec<IpNet>,
    pub ipv6_prefix: u8,
}

/// The client of one request: its address as seen (for CIDR lists) and as
/// counted (IPv6 cut to the configured prefix).
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub addr: IpAddr,
    pub ip: ClientIp,
}

/// The rules in force.
#[derive(Debug)]
pub struct Limits {
    pub set: RuleSet,
    pub loaded_ms: i64,
    pub shield: Option<Shield>,
    /// The rules' metrics handles.
    meters: Meters,
}

impl Limits {
    fn meters(&self, index: usize) -> &meters::RuleMeters {
        self.meters.rule(&self.set, index)
    }
}

/// The last edit of the rules file that was refused.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub at_ms: i64,
    pub error: String,
}

/// The identities of a request the rules and lists look at. Clear values
/// stay in request memory (block and allow lists match them); only
/// pseudonyms reach Redis.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub campaign: Option<&'a str>,
    pub ip: &'a Pseudonym,
    pub phone: Option<(&'a Phone, &'a Pseudonym)>,
    pub device: Option<(&'a DeviceId, &'a Pseudonym)>,
    pub user: Option<&'a str>,
}

/// What the rules said of an admitted request: the headers to send, and the
/// `successes`/`failures` rules to charge once its outcome is known.
#[derive(Debug, Default)]
pub struct Verdict {
    pub rate: Option<RateState>,
    settle: Vec<(Count, RuleCall)>,
}

/// The rules a request must still pass: which rules of the file in force
/// look at it, with their calls (see [`Guard::prepare`]).
#[derive(Debug)]
pub struct Pending {
    limits: Arc<Limits>,
    subject: Subject,
    /// Each rule's place in the file, and its call (same order).
    indices: Vec<usize>,
    calls: Vec<RuleCall>,
    /// The rules answered from a lease's spare unit (`lease`), by place.
    local: Vec<(usize, RuleResult)>,
    now_ms: i64,
}

impl Pending {
    fn none(limits: Arc<Limits>) -> Self {
        Self {
            limits,
            subject: Subject::default(),
            indices: Vec::new(),
            calls: Vec::new(),
            local: Vec::new(),
            now_ms: 0,
        }
    }

    /// True when no rule needs Redis for the request (none looks at it,
    /// or each that does was answered from a lease).
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// The rules' calls, in order (for a use case that checks them in its
    /// own script call).
    pub fn calls(&self) -> &[RuleCall] {
        &self.calls
    }
}

/// How a request ended, as `successes`/`failures` rules count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Neither (a 401/403, a malformed request, the store failing).
    Neither,
}

pub struct Guard {
    base: EdgeConfig,
    edge: ArcSwap<EdgeConfig>,
    limits: ArcSwap<Limits>,
    rejected: Mutex<Option<Rejected>>,
    file: Option<PathBuf>,
    bans: BanCache,
    store: Store,
    ids: Pseudonymizer,
    clock: Arc<dyn Clock>,
    /// Spare units of hot rule keys (`lease`).
    leases: lease::Leases,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("file", &self.file)
            .field("version", &self.limits.load().set.version)
            .finish()
    }
}

impl Guard {
    /// The guard for `settings`; with a rules file, the file must be valid.
    pub fn new(
        settings: &crate::settings::Validated,
        store: Store,
        ids: Pseudonymizer,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        let base = EdgeConfig {
            trusted_proxies: settings.raw.trusted_proxies.clone(),
            ipv6_prefix: settings.raw.ipv6_prefix,
        };
        let file = settings.raw.limits_file.clone();
        let set = match &file {
            Some(f) => read_rules(f).map_err(|e| format!("{}: {e}", f.display()))?,
            None => RuleSet::default(),
        };
        let guard = Self {
            edge: ArcSwap::from_pointee(base.clone()),
            base,
            limits: ArcSwap::from_pointee(Limits {
                set: RuleSet::default(),
                loaded_ms: 0,
                shield: None,
                meters: Meters::default(),
            }),
            rejected: Mutex::new(None),
            file,
            bans: BanCache::default(),
            store,
            ids,
            clock,
            leases: lease::Leases::default(),
        };
        guard.swap_in(set);
        Ok(guard)
    }

    pub fn file(&self) -> Option<&std::path::Path> {
        self.file.as_deref()
    }

    pub fn limits(&self) -> Arc<Limits> {
        self.limits.load_full()
    }

    pub fn last_rejected(&self) -> Option<Rejected> {
        self.rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn bans(&self) -> &BanCache {
        &self.bans
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn swap_in(&self, set: RuleSet) {
        self.apply_defaults(&set.defaults);
        let shield = set.shield.and_then(Shield::new);
        self.limits.store(Arc::new(Limits {
            set,
            loaded_ms: self.clock.now_ms(),
            shield,
            meters: Meters::default(),
        }));
    }

    /// Applies a rules file's `[defaults]`: each one set there overrides the
    /// service setting of the same name; one removed from the file falls back
    /// to the service setting.
    pub fn apply_defaults(&self, d: &Defaults) {
        self.edge.store(Arc::new(EdgeConfig {
            trusted_proxies: d
                .trusted_proxies
                .clone()
                .unwrap_or_else(|| self.base.trusted_proxies.clone()),
            ipv6_prefix: d.ipv6_prefix.unwrap_or(self.base.ipv6_prefix),
        }));
    }

    pub fn edge(&self) -> Arc<EdgeConfig> {
        self.edge.load_full()
    }

    /// The client of a request from its peer address and `X-Forwarded-For` values.
    pub fn client(&self, peer: Option<IpAddr>, forwarded_for: &[&str]) -> Client {
        let edge = self.edge.load();
        let addr = client_ip::client_ip(peer, forwarded_for, |ip| {
            edge.trusted_proxies.iter().any(|n| n.contains(&ip))
        });
        Client {
            addr,
            ip: ClientIp::new(addr, edge.ipv6_prefix),
        }
    }

    /// The shield: admits the request or refuses it in-process.
    pub fn shield(&self, client: &Client) -> Result<(), ApiError> {
        let limits = self.limits.load();
        let Some(shield) = &limits.shield else {
            return Ok(());
        };
        shield.admit(client.ip.addr()).map_err(|state| {
            metrics::counter!("stampede_shield_refusals_total").increment(1);
            ApiError::LimitExceeded {
                limit: "shield".into(),
                retry_after: Some(state.reset_secs),
                rate: Some(Box::new(state)),
            }
        })
    }

    /// Forgets idle shield buckets (called periodically).
    pub fn tidy(&self) {
        if let Some(s) = &self.limits.load().shield {
            s.forget_idle();
        }
    }

    fn blocked(&self, client: &Client, who: &Who<'_>) -> Option<ApiError> {
        let limits = self.limits.load();
        let block = &limits.set.block;
        let listed = block.has_ip(client.addr)
            || who.phone.is_some_and(|(p, _)| block.has_phone(p.as_e164()))
            || who
                .device
                .is_some_and(|(d, _)| block.has_device(d.as_str()));
        if listed {
            metrics::counter!("stampede_blocked_total", "reason" => "block_list").increment(1);
            return Some(ApiError::Blocked {
                reason: BlockReason::BlockList,
                retry_after: None,
            });
        }
        let now = self.clock.now_ms();
        let until = [
            Some((BanKind::Ip, who.ip)),
            who.phone.map(|(_, p)| (BanKind::Phone, p)),
            who.device.map(|(_, d)| (BanKind::Device, d)),
        ]
        .into_iter()
        .flatten()
        .filter_map(|(kind, p)| self.bans.active(kind, p, now))
        .max()?;
        metrics::counter!("stampede_blocked_total", "reason" => "ban").increment(1);
        Some(ApiError::Blocked {
            reason: BlockReason::Ban,
            retry_after: Some(ceil_secs((until - now).max(1) as u64)),
        })
    }

    fn allowed(&self, client: &Client, who: &Who<'_>) -> bool {
        let limits = self.limits.load();
        let allow = &limits.set.allow;
        !allow.is_empty()
            && (allow.has_ip(client.addr)
                || who.phone.is_some_and(|(p, _)| allow.has_phone(p.as_e164()))
                || who
                    .device
                    .is_some_and(|(d, _)| allow.has_device(d.as_str())))
    }

    /// Block list, bans, allow list, then the rules of `endpoint`: admits the
    /// request (with its RateLimit state) or refuses it.
    pub async fn check(
        &self,
        endpoint: Endpoint,
        client: &Client,
        who: Who<'_>,
    ) -> Result<Verdict, ApiError> {
        let pending = self.prepare(endpoint, client, who)?;
        self.run(pending).await
    }

    /// Block list, bans and allow list (in-process), then which rules of
    /// `endpoint` look at the request: the checks still to make, by
    /// [`Guard::run`] or inside the use case's own script call (a claim on
    /// a single node), then judged by [`Guard::decide`].
    pub fn prepare(
        &self,
        endpoint: Endpoint,
        client: &Client,
        who: Who<'_>,
    ) -> Result<Pending, ApiError> {
        if let Some(refusal) = self.blocked(client, &who) {
            return Err(refusal);
        }
        let limits = self.limits.load_full();
        if limits.set.rules.is_empty() || self.allowed(client, &who) {
            return Ok(Pending::none(limits));
        }
        let subject = Subject {
            campaign: who.campaign.map(str::to_owned),
            ip: Some(who.ip.clone()),
            phone: who.phone.map(|(_, p)| p.clone()),
            device: who.device.map(|(_, d)| d.clone()),
            user: who.user.map(|u| self.ids.user(u)),
        };
        let shards = if self.store.is_cluster() {
            crate::store::keys::RULE_SHARDS
        } else {
            1
        };
        let now_ms = self.clock.now_ms();
        let mut indices = Vec::new();
        let mut calls = Vec::new();
        let mut local = Vec::new();
        for p in plan(&limits.set, endpoint, &subject, shards) {
            let mut call = p.call;
            let size = lease::size(&call);
            if size > 1 {
                let event = match self.leases.take(&call, now_ms) {
                    lease::Take::Local(r) => {
                        local.push((p.index, r));
                        continue;
                    }
                    lease::Take::Ask => {
                        call.lease = size;
                        LeaseEvent::Asked
                    }
                    lease::Take::Plain => LeaseEvent::Plain,
                };
                // (Not for a spare unit: the decisions counter has those.)
                limits.meters(p.index).lease(event);
            }
            indices.push(p.index);
            calls.push(call);
        }
        Ok(Pending {
            limits,
            subject,
            indices,
            calls,
            local,
            now_ms,
        })
    }

    /// Checks the pending rules, one script call per hash slot, and judges.
    pub async fn run(&self, pending: Pending) -> Result<Verdict, ApiError> {
        if pending.is_empty() {
            if pending.local.is_empty() {
                return Ok(Verdict::default());
            }
            return self.decide(pending, &[]).await;
        }
        let planned: Vec<Planned<'_>> = pending
            .indices
            .iter()
            .zip(&pending.calls)
            .map(|(index, call)| Planned {
                rule: &pending.limits.set.rules[*index],
                index: *index,
                call: call.clone(),
            })
            .collect();
        let mut results = vec![None; planned.len()];
        for group in by_slot(&planned, self.store.is_cluster()) {
            let calls: Vec<RuleCall> = group.iter().map(|p| p.call.clone()).collect();
            let answers = self.store.check_rules(pending.now_ms, &calls).await?;
            for (p, r) in group.iter().zip(answers) {
                if let Some(pos) = planned.iter().position(|q| std::ptr::eq(q, *p)) {
                    results[pos] = Some(r);
                }
            }
        }
        let results: Vec<RuleResult> = results.into_iter().flatten().collect();
        drop(planned);
        self.decide(pending, &results).await
    }

    /// Judges the answers of the pending rules (in their order): metrics,
    /// bans started, then a refusal or the verdict of an admitted request.
    pub async fn decide(
        &self,
        pending: Pending,
        results: &[RuleResult],
    ) -> Result<Verdict, ApiError> {
        if results.len() != pending.calls.len() {
            tracing::error!(
                "the rules answered {} of {} checks",
                results.len(),
                pending.calls.len()
            );
            return Err(ApiError::Internal);
        }
        let now = pending.now_ms;
        let subject = &pending.subject;
        let mut decision = Decision::default();
        let mut bans: Vec<(String, BanRecord)> = Vec::new();
        for ((index, call), r) in pending.indices.iter().zip(&pending.calls).zip(results) {
            if call.lease > 1 {
                let event = if r.leased {
                    self.leases.grant(call, r, now);
                    LeaseEvent::Granted
                } else {
                    self.leases.not_granted(call);
                    LeaseEvent::NotGranted
                };
                pending.limits.meters(*index).lease(event);
            }
        }
        let checked = pending.indices.iter().zip(results);
        for (index, r) in checked.chain(pending.local.iter().map(|(i, r)| (i, r))) {
            let rule = &pending.limits.set.rules[*index];
            pending.limits.meters(*index).decision(r.status);
            decision.add(rule, r);
            if r.ban_ms > 0 {
                for kind in rule.ban_kinds() {
                    let who = match kind {
                        BanKind::Ip => subject.ip.as_ref(),
                        BanKind::Phone => subject.phone.as_ref(),
                        BanKind::Device => subject.device.as_ref(),
                    };
                    if let Some(who) = who {
                        bans.push((
                            bans::subject(kind, who),
                            BanRecord {
                                until_ms: now + r.ban_ms as i64,
                                started_ms: now,
                                source: format!("rule:{}", rule.name),
                                by: rule.name.clone(),
                                reason: format!("over the rule {} too often", rule.name),
                                level: r.level,
                            },
                        ));
                    }
                }
            }
        }
        if !bans.is_empty() {
            self.start_bans(&bans).await;
        }
        if let Some(state) = decision.refusal() {
            return Err(ApiError::LimitExceeded {
                limit: state.policy.clone().into(),
                retry_after: Some(state.reset_secs.max(1)),
                rate: Some(Box::new(state.clone())),
            });
        }
        let limits = &pending.limits;
        Ok(Verdict {
            rate: decision.tightest,
            settle: pending
                .indices
                .iter()
                .zip(pending.calls)
                .filter(|(index, _)| {
                    let rule = &limits.set.rules[**index];
                    rule.distinct.is_none() && rule.count != Count::Requests
                })
                .map(|(index, call)| (limits.set.rules[*index].count, call))
                .collect(),
        })
    }

    /// Charges the `successes` or `failures` rules of an admitted request.
    pub async fn settle(&self, verdict: Verdict, outcome: Outcome) {
        let want = match outcome {
            Outcome::Success => Count::Successes,
            Outcome::Failure => Count::Failures,
            Outcome::Neither => return,
        };
        let calls: Vec<RuleCall> = verdict
            .settle
            .into_iter()
            .filter(|(c, _)| *c == want)
            .map(|(_, call)| call)
            .collect();
        if calls.is_empty() {
            return;
        }
        let now = self.clock.now_ms();
        let groups: Vec<Vec<RuleCall>> = if self.store.is_cluster() {
            let mut m: std::collections::BTreeMap<String, Vec<RuleCall>> = Default::default();
            for c in calls {
                m.entry(crate::store::keys::rule_tag(&c.epochs).to_owned())
                    .or_default()
                    .push(c);
            }
            m.into_values().collect()
        } else {
            vec![calls]
        };
        for g in groups {
            if let Err(e) = self.store.settle_rules(now, &g).await {
                tracing::warn!(error = %e, "a successes/failures rule was not charged");
            }
        }
    }

    pub fn pseudonyms(&self) -> &Pseudonymizer {
        &self.ids
    }
}

/// How `successes`/`failures` rules read a use case's result. A failure is
/// what LIMITS.md says it is: only an `invalid_code` or `already_redeemed`
/// answer, the trace of someone walking the code space. Every other refusal
/// (a basket under the minimum, a malformed field, a reused idempotency
/// key, a quota) says nothing about guessing, and an answer the service
/// caused (store down, 5xx) or the edge gave is neither.
pub fn outcome_of<T>(result: &Result<T, ApiError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(ApiError::InvalidCode | ApiError::AlreadyRedeemed) => Outcome::Failure,
        Err(_) => Outcome::Neither,
    }
}
