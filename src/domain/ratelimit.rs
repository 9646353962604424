//! The state of the tightest limit a request met, and its rendering as the
//! IETF `RateLimit-Policy` / `RateLimit` header fields in the structured-field
//! form of draft-ietf-httpapi-ratelimit-headers-10:
//! `RateLimit-Policy: "ip-burst";q=20;w=60` and `RateLimit: "ip-burst";r=0;t=42`.

/// One limit as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateState {
    /// The policy name: a rule name from the rules file, or `shield`.
    pub policy: String,
    /// Quota units in the window (`q`).
    pub quota: u64,
    /// Window in seconds (`w`).
    pub window_secs: u64,
    /// Units left now (`r`).
    pub remaining: u64,
    /// Seconds until the quota has room again (`t`), 0 when it has now.
    pub reset_secs: u64,
}

impl RateState {
    /// `"name";q=20;w=60`. Rule names are `[A-Za-z0-9_.-]`, so they need no
    /// escaping inside an sf-string.
    pub fn policy_header(&self) -> String {
        self.field(("q", self.quota), ("w", self.window_secs.max(1)))
    }

    /// `"name";r=0;t=42`.
    pub fn limit_header(&self) -> String {
        self.field(("r", self.remaining), ("t", self.reset_secs))
    }

    /// `"<policy>";a=1;b=2`, written without `core::fmt` (every claim with
    /// rules answers both headers).
    fn field(&self, a: (&str, u64), b: (&str, u64)) -> String {
        let mut out = String::with_capacity(self.policy.len() + 32);
        let mut digits = itoa::Buffer::new();
        out.push('"');
        out.push_str(&self.policy);
        out.push('"');
        for (name, value) in [a, b] {
            out.push(';');
            out.push_str(name);
            out.push('=');
            out.push_str(digits.format(value));
        }
        out
    }

    /// The tighter of two states: fewer units left, then the longer wait.
    pub fn tighter(self, other: RateState) -> RateState {
        if (other.remaining, std::cmp::Reverse(other.reset_secs))
            < (self.remaining, std::cmp::Reverse(self.reset_secs))
        {
            other
        } else {
            self
        }
    }
}

/// Whole seconds, rounded up: a client told to wait `t` must not come back early.
pub fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(name: &str, r: u64, t: u64) -> RateState {
        RateState {
            policy: name.into(),
            quota: 20,
            window_secs: 60,
            remaining: r,
            reset_secs: t,
        }
    }

    #[test]
    fn headers_in_draft_10_form() {
        let s = st("ip-burst", 0, 42);
        assert_eq!(s.policy_header(), r#""ip-burst";q=20;w=60"#);
        assert_eq!(s.limit_header(), r#""ip-burst";r=0;t=42"#);
    }

    #[test]
    fn tightest_is_fewest_left_then_longest_wait() {
        assert_eq!(st("a", 3, 1).tighter(st("b", 1, 1)).policy, "b");
        assert_eq!(st("a", 0, 5).tighter(st("b", 0, 50)).policy, "b");
        assert_eq!(st("a", 0, 50).tighter(st("b", 0, 5)).policy, "a");
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(1000), 1);
        assert_eq!(ceil_secs(1001), 2);
    }
}
