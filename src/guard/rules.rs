//! The rules engine: which rules of the file look at a request, the Redis
//! keys they count under, one script call per hash slot, and what the
//! answers mean (refuse, shadow-count, ban, RateLimit headers).
//!
//! Algorithms (see `lua/rules.lua`): `requests`, `successes` and `failures`
//! use a bucketed sliding window (10 buckets per window): it never admits
//! more than `limit` in any window of length w, and may refuse for at most
//! w/10 longer than an exact sliding log. `distinct` counts are exact (the
//! last-seen time per value, pruned to the window).
//!
//! Layout: no key per identity. A rule keeps one hash per epoch (11
//! buckets) and shard, with one field per rule key (the 64-bit digest of its
//! values); a single node has one shard, a cluster [`keys::RULE_SHARDS`]
//! (the shard is the hash tag, so the slots spread). A batch reads a
//! rule's epoch hashes with one HMGET each and writes each once.
//!
//! Atomicity: the rules of one request that share a hash slot are checked
//! and their `requests`/`distinct` charges made in one script call, before
//! the claim; a request refused by any rule of that call charges none of
//! them. On a single Redis node every rule of a request is one call. On a
//! cluster, rules on different slots are separate calls: a request refused
//! in one slot may already have been charged in another (it counts against
//! those rules; they can refuse early, never late). `successes`/`failures`
//! are checked before the request and charged after its outcome: with c
//! requests of one key in flight at once, such a rule can admit up to
//! `limit + c - 1` (each of them checks before any of them is charged).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::domain::identity::Pseudonym;
use crate::domain::limits::{Count, Endpoint, KeyPart, Mode, Rule, RuleSet};
use crate::domain::ratelimit::{RateState, ceil_secs};
use crate::store::keys;
use crate::store::rules::{RuleCall, RuleKind, RuleResult};

/// The identities and facts of one request, as the rules see them.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub campaign: Option<String>,
    pub ip: Option<Pseudonym>,
    pub phone: Option<Pseudonym>,
    pub device: Option<Pseudonym>,
    pub user: Option<Pseudonym>,
}

impl Subject {
    fn value(&self, part: KeyPart) -> Option<&str> {
        match part {
            KeyPart::Ip => self.ip.as_ref().map(Pseudonym::as_str),
            KeyPart::Phone => self.phone.as_ref().map(Pseudonym::as_str),
            KeyPart::Device => self.device.as_ref().map(Pseudonym::as_str),
            KeyPart::User => self.user.as_ref().map(Pseudonym::as_str),
            KeyPart::Campaign => self.campaign.as_deref(),
        }
    }
}

/// One rule that applies to a request, with its call.
#[derive(Debug, Clone)]
pub struct Planned<'a> {
    pub rule: &'a Rule,
    /// The rule's place in the file (`RuleSet::rules`).
    pub index: usize,
    pub call: RuleCall,
}

/// Longest a ban keeps escalating after it ended, at the least.
const MIN_DECAY_MS: u64 = 24 * 3_600_000;
/// A ban without `max` is still capped (and so is its arithmetic).
const BAN_CAP_MS: u64 = 365 * 86_400_000;

/// The digest that names a rule key's value (64 bits, hex): its field in
/// the rule's epoch hashes, and (by its shard) the keys' hash tag, so every
/// rule keyed on the same values lands in one slot. Two values share a
/// field with probability 2^-64 a pair: at a billion values of one rule,
/// about 3% that any two do somewhere (birthday bound), and such a pair
/// only shares a rate count.
fn key_tag(rule: &Rule, subject: &Subject) -> Option<String> {
    let mut h = Sha256::new();
    for part in &rule.key {
        h.update(part.as_str().as_bytes());
        h.update(b"=");
        h.update(subject.value(*part)?.as_bytes());
        h.update(b"\0");
    }
    Some(crate::domain::hex::lower(&h.finalize()[..8]))
}

/// A distinct value as a rule counts it: 16 hex digits (64 bits). A
/// pseudonym is hex already (its first 16 digits); a campaign id is hashed.
/// Two of one rule key's values collide with probability 2^-64 (`limit` of
/// them are compared).
fn member_digest(part: KeyPart, value: &str) -> String {
    match (part, value.get(..16)) {
        (KeyPart::Campaign, _) | (_, None) => {
            crate::domain::hex::lower(&Sha256::digest(value.as_bytes())[..8])
        }
        (_, Some(prefix)) => prefix.to_owned(),
    }
}

/// The rules of `set` that look at this request, with their calls. A rule
/// whose key (or distinct value) the request does not carry is skipped.
/// `shards`: how many hash tags the rule keys spread over (`keys::rule`).
pub fn plan<'a>(
    set: &'a RuleSet,
    endpoint: Endpoint,
    subject: &Subject,
    shards: u32,
) -> Vec<Planned<'a>> {
    set.rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.applies(endpoint, subject.campaign.as_deref()))
        .filter_map(|(index, rule)| {
            let tag = key_tag(rule, subject)?;
            let member = match rule.distinct {
                Some(p) => member_digest(p, subject.value(p)?),
                None => String::new(),
            };
            let epochs = keys::rule(&tag, &rule.name, shards);
            let kind = match (rule.distinct, rule.count) {
                (Some(_), _) => RuleKind::Distinct,
                (None, Count::Requests) => RuleKind::Requests,
                (None, _) => RuleKind::Outcomes,
            };
            let ban = rule.ban.as_ref();
            let ban_max_ms = ban.and_then(|b| b.max_ms).unwrap_or(BAN_CAP_MS);
            Some(Planned {
                rule,
                index,
                call: RuleCall {
                    epochs,
                    field: tag,
                    kind,
                    limit: rule.limit,
                    window_ms: rule.window_ms,
                    enforce: rule.mode == Mode::Enforce,
                    member,
                    ban_after: ban.map_or(0, |b| b.after),
                    ban_ms: ban.map_or(0, |b| b.duration_ms.min(BAN_CAP_MS)),
                    ban_factor: ban.map_or(1, |b| b.factor),
                    ban_max_ms,
                    // Escalation memory only where there are bans to escalate.
                    decay_ms: if ban.is_some() {
                        ban_max_ms.max(MIN_DECAY_MS)
                    } else {
                        0
                    },
                    lease: 0,
                },
            })
        })
        .collect()
}

/// The calls of one request, one group per hash slot (one group in all on
/// a single node).
pub fn by_slot<'a, 'b>(planned: &'b [Planned<'a>], cluster: bool) -> Vec<Vec<&'b Planned<'a>>> {
    if !cluster {
        return if planned.is_empty() {
            Vec::new()
        } else {
            vec![planned.iter().collect()]
        };
    }
    let mut groups: BTreeMap<&str, Vec<&Planned<'a>>> = BTreeMap::new();
    for p in planned {
        groups
            .entry(keys::rule_tag(&p.call.epochs))
            .or_default()
            .push(p);
    }
    groups.into_values().collect()
}

/// What a request's rules decided, before any ban or metric is recorded.
#[derive(Debug, Default)]
pub struct Decision {
    /// The enforced rules the request is over: (rule, result).
    pub refused_by: Vec<(String, RuleResult, RateState)>,
    /// The tightest enforced rule that admitted it (for the headers).
    pub tightest: Option<RateState>,
}

pub fn rate_state(rule: &Rule, r: &RuleResult) -> RateState {
    RateState {
        policy: rule.name.clone(),
        quota: rule.limit,
        window_secs: ceil_secs(rule.window_ms),
        remaining: r.remaining,
        reset_secs: ceil_secs(r.reset_ms),
    }
}

impl Decision {
    pub fn add(&mut self, rule: &Rule, r: &RuleResult) {
        if rule.mode == Mode::Shadow {
            return;
        }
        let state = rate_state(rule, r);
        if r.status == crate::store::rules::RuleStatus::Over {
            self.refused_by.push((rule.name.clone(), *r, state));
        } else {
            self.tightest = Some(match self.tightest.take() {
                Some(t) => t.tighter(state),
                None => state,
            });
        }
    }

    /// The refusal to answer with: the rule the client must wait longest for
    /// (Retry-After is never shorter than its `t`).
    pub fn refusal(&self) -> Option<&RateState> {
        self.refused_by
            .iter()
            .map(|(_, _, s)| s)
            .max_by_key(|s| s.reset_secs)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[rule]]
name = "ip-burst"
endpoint = "claim"
key = ["ip"]
limit = 20
window = "1m"

[[rule]]
name = "device-farm"
endpoint = "claim"
campaign = "double11-*"
key = ["device"]
distinct = "phone"
limit = 3
window = "24h"

[[rule]]
name = "ip-campaign"
key = ["ip", "campaign"]
limit = 5
window = "1h"

[[rule]]
name = "code-guessing"
endpoint = "redeem"
key = ["ip"]
count = "failures"
limit = 10
window = "10m"
ban = { duration = "1h" }
"#;

    fn pseudo(s: &str) -> Pseudonym {
        crate::domain::identity::Pseudonymizer::new([7; 32])
            .device(&crate::domain::identity::DeviceId::parse(s).unwrap())
    }

    fn subject() -> Subject {
        Subject {
            campaign: Some("double11-a".into()),
            ip: Some(pseudo("ip")),
            phone: Some(pseudo("phone")),
            device: Some(pseudo("device")),
            user: None,
        }
    }

    #[test]
    fn plans_only_matching_rules_with_their_keys() {
        let set = RuleSet::parse(FILE).unwrap();
        let p = plan(&set, Endpoint::Claim, &subject(), keys::RULE_SHARDS);
        let names: Vec<_> = p.iter().map(|p| p.rule.name.as_str()).collect();
        assert_eq!(names, ["ip-burst", "device-farm", "ip-campaign"]);
        assert_eq!(p[1].call.kind, RuleKind::Distinct);
        assert_eq!(p[1].call.member, &pseudo("phone").as_str()[..16]);
        // Another campaign: the glob rule drops out.
        let mut s = subject();
        s.campaign = Some("spring".into());
        assert_eq!(plan(&set, Endpoint::Claim, &s, keys::RULE_SHARDS).len(), 2);
        // A missing identity skips the rules keyed on it.
        s.device = None;
        assert_eq!(plan(&set, Endpoint::Claim, &s, keys::RULE_SHARDS).len(), 2);
        let r = plan(&set, Endpoint::Redeem, &subject(), keys::RULE_SHARDS);
        assert_eq!(r.len(), 2, "ip-campaign (any) and code-guessing");
        assert_eq!(r[1].call.kind, RuleKind::Outcomes);
        assert_eq!(r[1].call.ban_after, 1);
    }

    #[test]
    fn rules_on_the_same_values_share_a_slot_others_do_not() {
        let set = RuleSet::parse(FILE).unwrap();
        let p = plan(&set, Endpoint::Claim, &subject(), keys::RULE_SHARDS);
        assert_eq!(by_slot(&p, false).len(), 1);
        assert_eq!(by_slot(&p, true).len(), 3);
        let other = Subject {
            ip: Some(pseudo("other-ip")),
            ..subject()
        };
        let q = plan(&set, Endpoint::Claim, &other, keys::RULE_SHARDS);
        assert_ne!(q[0].call.field, p[0].call.field);
        assert_eq!(q[1].call.field, p[1].call.field, "same device, same key");
        assert_eq!(q[1].call.epochs, p[1].call.epochs);
    }
}
