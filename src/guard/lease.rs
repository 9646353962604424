//! Leases of a hot rule key's units: a request rule with a large limit
//! (one address behind a carrier NAT, a generous per-campaign cap) charges
//! its count a few units at a time, and this instance hands the spare units
//! to its next requests on that key without a round trip.
//!
//! How (the way quota servers lease tokens): when a request finds no spare
//! unit for its rule key, its rule call asks for a lease of `B` units
//! (`RuleCall::lease`; the script's kind `r<B>`). The script admits it as
//! always and, when `B` more still fit under the limit, charges all `B`
//! at once to the request's bucket and answers `lease`. This instance keeps
//! the other `B - 1` ([`Leases::grant`]); its next requests on the key take
//! one each ([`Leases::take`]) and skip the rule's script work. A spare
//! unit is good only while the clock is in the bucket the lease was charged
//! to, so each admitted request is counted in its own bucket, as if it had
//! gone to Redis: the sliding window (`rules_core.lua`) never admits more
//! than the limit. Units a lease charged and nobody used stay counted:
//! the error is on the strict side: less than `1.5 B` units a bucket and
//! instance (the next lease is asked when half of one is spent), and `B`
//! is at most 1/1024 of the limit, so under 1.5 % of the window's limit
//! an instance, its ten buckets together. A request that another rule
//! refuses, or that fails later, has still used its unit (also strict).
//!
//! What is leased: requests rules (`count = "requests"`, not distinct)
//! with a limit of at least [`MIN_LIMIT`]; smaller limits keep the exact
//! count of every request. One lease is asked at a time per key, when the
//! last one is half spent, so the spare units usually last until the next
//! arrives; the requests that find none spare while it is out go as
//! before (one unit each), so a burst does not take a lease a request.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::rules::{RuleCall, RuleKind, RuleResult, RuleStatus};

/// The smallest limit a lease is taken for.
pub const MIN_LIMIT: u64 = 2048;
/// The largest lease, in units.
pub const MAX_LEASE: u64 = 256;
/// Rule keys remembered at most (spent ones are dropped first).
const MAX_KEYS: usize = 4096;
/// How long an asked lease keeps other requests from asking (a call that
/// failed or was lost is asked again after this).
const ASK_MS: i64 = 1000;

/// The lease size for `call`: 0 when its rule is not leased.
pub fn size(call: &RuleCall) -> u32 {
    if call.kind != RuleKind::Requests || call.limit < MIN_LIMIT {
        return 0;
    }
    (call.limit / 1024).min(MAX_LEASE) as u32
}

/// What a request does about a leased rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A spare unit was taken: the rule's answer, without Redis.
    Local(RuleResult),
    /// None spare: the call asks for a lease.
    Ask,
    /// None spare and a lease is being asked: the call goes as it is.
    Plain,
}

#[derive(Debug)]
struct Entry {
    /// The bucket the spare units were charged to.
    bucket: i64,
    spare: u32,
    /// The rule's remaining at the grant, every unit of the lease counted.
    remaining: u64,
    /// When the rule's window has room, as the grant said (service clock).
    reset_at: i64,
    /// When a lease was last asked (`i64::MIN`: none outstanding).
    asked_at: i64,
}

/// This instance's spare units, by rule key.
#[derive(Debug, Default)]
pub struct Leases {
    map: Mutex<HashMap<String, Entry, foldhash::fast::RandomState>>,
}

/// The bucket of `now` for `call`'s window, as `rules_core.lua` counts it.
fn bucket(call: &RuleCall, now: i64) -> i64 {
    now.div_euclid((call.window_ms / 10).max(1) as i64)
}

/// `f` of `call`'s key in the map (`<epochs>|<field>`), made in a buffer
/// of the thread: a request that takes a spare unit allocates nothing.
fn with_key<R>(call: &RuleCall, f: impl FnOnce(&str) -> R) -> R {
    use std::cell::RefCell;
    thread_local! {
        static KEY: RefCell<String> = const { RefCell::new(String::new()) };
    }
    KEY.with_borrow_mut(|k| {
        k.clear();
        k.push_str(&call.epochs);
        k.push('|');
        k.push_str(&call.field);
        f(k)
    })
}

impl Leases {
    /// A unit of `call`'s lease for a request at `now`, or what to ask.
    /// `call` must be leased ([`size`] of at least 2).
    pub fn take(&self, call: &RuleCall, now: i64) -> Take {
        let b = bucket(call, now);
        with_key(call, |k| self.take_at(call, k, b, now))
    }

    fn take_at(&self, call: &RuleCall, k: &str, b: i64, now: i64) -> Take {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(k) {
            let asking = e.asked_at != i64::MIN && now - e.asked_at < ASK_MS;
            if e.bucket == b && e.spare > 0 {
                // Half spent: the next lease is asked (by this request,
                // whose own unit is in it) while the rest still serve.
                if !asking && e.spare <= size(call) / 2 {
                    e.asked_at = now;
                    return Take::Ask;
                }
                e.spare -= 1;
                return Take::Local(RuleResult {
                    status: RuleStatus::Ok,
                    // The units still spare here are not used yet.
                    remaining: e.remaining + u64::from(e.spare),
                    reset_ms: (e.reset_at - now).max(0) as u64,
                    ban_ms: 0,
                    level: 0,
                    leased: false,
                });
            }
            if asking {
                return Take::Plain;
            }
            e.asked_at = now;
            return Take::Ask;
        }
        if map.len() >= MAX_KEYS {
            map.retain(|_, e| e.spare > 0 && e.bucket >= b);
            if map.len() >= MAX_KEYS {
                map.clear();
            }
        }
        map.insert(
            k.to_owned(),
            Entry {
                bucket: b,
                spare: 0,
                remaining: 0,
                reset_at: now,
                asked_at: now,
            },
        );
        Take::Ask
    }

    /// Keeps the spare units of a lease `call` asked at `now` and `r`
    /// granted (`r.leased`).
    pub fn grant(&self, call: &RuleCall, r: &RuleResult, now: i64) {
        let b = bucket(call, now);
        let spare = call.lease.saturating_sub(1);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.entry(with_key(call, str::to_owned)).or_insert(Entry {
            bucket: b,
            spare: 0,
            remaining: 0,
            reset_at: now,
            asked_at: i64::MIN,
        });
        if e.bucket != b {
            e.bucket = b;
            e.spare = 0;
        }
        e.spare += spare;
        e.remaining = r.remaining;
        e.reset_at = now + r.reset_ms as i64;
        e.asked_at = i64::MIN;
    }

    /// An asked lease was not granted (the rule near its limit, a refusal):
    /// the next request may ask again.
    pub fn not_granted(&self, call: &RuleCall) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = with_key(call, |k| map.get_mut(k)) {
            e.asked_at = i64::MIN;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn call(limit: u64) -> RuleCall {
        RuleCall::requests("st:{r:0}:hot:e:".into(), "f".into(), limit, 60_000)
    }

    fn granted(remaining: u64) -> RuleResult {
        RuleResult {
            status: RuleStatus::Ok,
            remaining,
            reset_ms: 60_000,
            ban_ms: 0,
            level: 0,
            leased: true,
        }
    }

    #[test]
    fn only_large_request_limits_are_leased() {
        assert_eq!(size(&call(2047)), 0);
        assert_eq!(size(&call(2048)), 2);
        assert_eq!(size(&call(100_000_000)), MAX_LEASE as u32);
        assert_eq!(size(&call(100_000)), 97);
        let mut distinct = call(1_000_000);
        distinct.kind = RuleKind::Distinct;
        assert_eq!(size(&distinct), 0);
    }

    #[test]
    fn spare_units_serve_their_bucket_only_and_one_ask_at_a_time() {
        let leases = Leases::default();
        let mut c = call(100_000);
        c.lease = size(&c);
        assert_eq!(c.lease, 97);
        let local = |leases: &Leases, now: i64| match leases.take(&c, now) {
            Take::Local(r) => r.remaining,
            t => panic!("{t:?}"),
        };
        let now = 6_000 * 1000; // the start of a 6 s bucket
        assert_eq!(leases.take(&c, now), Take::Ask);
        // Asked and not granted yet: the others go as they are.
        assert_eq!(leases.take(&c, now + 1), Take::Plain);
        leases.grant(&c, &granted(1000), now);
        // 96 spare: half of them serve alone, each counting the units
        // still spare as unused.
        for i in 0..48u64 {
            assert_eq!(local(&leases, now + 2), 1000 + 95 - i);
        }
        // Half spent: this request asks the next lease; the rest serve
        // while it is out, then the others go as they are.
        assert_eq!(leases.take(&c, now + 2), Take::Ask);
        for _ in 0..48 {
            local(&leases, now + 2);
        }
        assert_eq!(leases.take(&c, now + 3), Take::Plain);
        leases.grant(&c, &granted(900), now + 3);
        assert_eq!(local(&leases, now + 4), 900 + 95);
        // The next bucket: the spare units of this one are not used.
        assert_eq!(leases.take(&c, now + 6_000), Take::Ask);
        // A lease not granted lets the next request ask at once.
        leases.not_granted(&c);
        assert_eq!(leases.take(&c, now + 6_001), Take::Ask);
        // An ask that never came back is asked again after a second.
        assert_eq!(leases.take(&c, now + 6_002), Take::Plain);
        assert_eq!(leases.take(&c, now + 6_001 + ASK_MS), Take::Ask);
    }
}
