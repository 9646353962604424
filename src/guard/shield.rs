//! The flood shield: an in-process per-IP limiter (governor's GCRA) in front
//! of every route. It answers `429 limit_exceeded` (`limit: "shield"`)
//! without a Redis round trip, so a single-address flood costs the store
//! nothing, even while Redis is slow or stopped. Its state is per process:
//! with N replicas behind a balancer an address gets up to N times the quota,
//! which is the point (a cheap first line; the shared rules are the exact one).

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::domain::limits;
use crate::domain::ratelimit::{RateState, ceil_secs};

#[derive(Debug)]
pub struct Shield {
    config: limits::Shield,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl Shield {
    /// `None` when the config turns the shield off.
    pub fn new(config: limits::Shield) -> Option<Self> {
        let rate = NonZeroU32::new(config.per_second)?;
        let burst = NonZeroU32::new(config.burst)?;
        Some(Self {
            config,
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
        })
    }

    pub fn config(&self) -> limits::Shield {
        self.config
    }

    /// Admits one request from `ip` (already cut to the IPv6 prefix), or
    /// says how long to wait, as RateLimit header values.
    pub fn admit(&self, ip: IpAddr) -> Result<(), RateState> {
        self.limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            RateState {
                policy: "shield".into(),
                quota: u64::from(self.config.burst),
                window_secs: u64::from(self.config.burst)
                    .div_ceil(u64::from(self.config.per_second))
                    .max(1),
                remaining: 0,
                reset_secs: ceil_secs(wait.as_millis() as u64).max(1),
            }
        })
    }

    /// Forgets addresses whose buckets are full again (bounds memory).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_a_wait_per_address() {
        let s = Shield::new(limits::Shield {
            per_second: 1,
            burst: 3,
        })
        .unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(s.admit(a).is_ok());
        }
        let refused = s.admit(a).unwrap_err();
        assert_eq!(refused.policy, "shield");
        assert_eq!(refused.reset_secs, 1);
        assert_eq!(refused.policy_header(), r#""shield";q=3;w=3"#);
        assert!(s.admit(b).is_ok(), "another address has its own bucket");
    }

    #[test]
    fn zero_turns_it_off() {
        assert!(
            Shield::new(limits::Shield {
                per_second: 0,
                burst: 10
            })
            .is_none()
        );
    }
}
