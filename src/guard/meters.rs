//! The rules' metrics (`stampede_rule_decisions_total`,
//! `stampede_rule_lease_events_total`: `deploy/README.md`), as handles made
//! once per rules file in force. `counter!` builds its key, copies the
//! rule's name and looks the series up in the recorder on every call: three
//! times a claim under a 3-rule file, about a tenth of the guard's work.
//! The handles are made on first use (by then the recorder is installed),
//! one set per rule, in the file's order.

use std::sync::OnceLock;

use metrics::Counter;

use crate::domain::limits::RuleSet;
use crate::store::rules::RuleStatus;

/// One rule's counters. The three decisions of every rule in force are
/// shown (at 0 until one happens) from the first decision of any rule; a
/// rule's lease events only once it has had one (most rules are never
/// leased).
#[derive(Debug)]
pub struct RuleMeters {
    name: String,
    /// allowed, limited, shadow_limited.
    decisions: [Counter; 3],
    /// asked, granted, not_granted, plain.
    leases: OnceLock<[Counter; 4]>,
}

/// What happened to a lease of a hot rule key (`guard::lease`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    Asked,
    Granted,
    NotGranted,
    /// Charged one unit, as without a lease (one ask at a time per key).
    Plain,
}

const DECISIONS: [&str; 3] = ["allowed", "limited", "shadow_limited"];
const LEASE_EVENTS: [&str; 4] = ["asked", "granted", "not_granted", "plain"];

impl RuleMeters {
    fn new(rule: &str) -> Self {
        Self {
            name: rule.to_owned(),
            decisions: DECISIONS.map(|d| {
                metrics::counter!("stampede_rule_decisions_total", "rule" => rule.to_owned(), "decision" => d)
            }),
            leases: OnceLock::new(),
        }
    }

    pub fn decision(&self, status: RuleStatus) {
        let i = match status {
            RuleStatus::Ok => 0,
            RuleStatus::Over => 1,
            RuleStatus::Shadow => 2,
        };
        self.decisions[i].increment(1);
    }

    pub fn lease(&self, event: LeaseEvent) {
        let leases = self.leases.get_or_init(|| {
            LEASE_EVENTS.map(|e| {
                metrics::counter!("stampede_rule_lease_events_total", "rule" => self.name.clone(), "event" => e)
            })
        });
        leases[event as usize].increment(1);
    }
}

/// The counters of a rules file's rules, made on first use.
#[derive(Debug, Default)]
pub struct Meters(OnceLock<Vec<RuleMeters>>);

impl Meters {
    /// Rule `index`'s counters (`set` is the file these were made for).
    pub fn rule(&self, set: &RuleSet, index: usize) -> &RuleMeters {
        let all = self
            .0
            .get_or_init(|| set.rules.iter().map(|r| RuleMeters::new(&r.name)).collect());
        &all[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_events_index_their_labels() {
        for (e, label) in [
            (LeaseEvent::Asked, "asked"),
            (LeaseEvent::Granted, "granted"),
            (LeaseEvent::NotGranted, "not_granted"),
            (LeaseEvent::Plain, "plain"),
        ] {
            assert_eq!(LEASE_EVENTS[e as usize], label);
        }
    }
}
