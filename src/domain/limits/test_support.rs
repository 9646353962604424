//! What the tests of the rules file share: the example of LIMITS.md and
//! helpers to expect an error.

use super::{LimitsError, RuleSet};

/// The example of LIMITS.md, verbatim.
pub(super) const EXAMPLE: &str = r#"[defaults]
ipv6_prefix = 64                                   # IPv6 clients are counted per /64
trusted_proxies = ["127.0.0.1/32", "10.0.0.0/8"]   # X-Forwarded-For is believed only from these

[shield]                   # in-process per-IP limiter (governor), before anything else; no Redis
per_second = 50            # sustained requests per second per client IP (IPv6: per prefix)
burst = 100                # bucket size; 0, or no [shield] table, turns the shield off

[[rule]]
name = "ip-claim-burst"    # shown in 429 bodies (`limit`), RateLimit headers, metrics, audit
endpoint = "claim"         # claim | redeem | validate | any (default any)
campaign = "double11-*"    # optional glob on campaign id
key = ["ip"]               # any of ip, phone, device, user, campaign; several = one composite key
limit = 20
window = "1m"              # sliding window: s, m, h, d
count = "requests"         # requests (default) | successes | failures
mode = "enforce"           # enforce (default) | shadow: never blocks, counts what it would have blocked
ban = { after = 3, duration = "10m", factor = 2, max = "24h" }  # optional: 3 violations => ban; each new ban x2, capped

[[rule]]
name = "device-farm"       # one device cycling through many phone numbers
endpoint = "claim"
key = ["device"]
distinct = "phone"         # counts distinct phones per device instead of requests
limit = 3
window = "24h"

[[rule]]
name = "code-guessing"     # someone walking the code space
endpoint = "redeem"
key = ["ip"]
count = "failures"         # only invalid_code / already_redeemed answers count
limit = 10
window = "10m"
ban = { duration = "1h" }

[block]
phones  = ["+86170*", "+86171*"]   # E.164 prefixes ending in *, or whole numbers
ips     = ["203.0.113.0/24"]
devices = ["emulator-*"]

[allow]                             # never limited by rules (campaign quotas still apply)
ips = ["192.0.2.10/32"]
"#;

pub(super) fn err(text: &str) -> LimitsError {
    match RuleSet::parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

/// Asserts the error's line and that its message contains `needle`.
pub(super) fn assert_err(text: &str, line: usize, needle: &str) {
    let e = err(text);
    assert_eq!(e.line, Some(line), "wrong line for {e:?} in:\n{text}");
    assert!(e.column.is_some(), "no column: {e:?}");
    assert!(e.message.contains(needle), "{e:?} does not say {needle:?}");
    assert!(!e.message.contains('\n'), "multi-line message: {e:?}");
}

/// A valid rule with `extra` lines appended; the rule header is line 1,
/// so `extra`'s first line is line 6.
pub(super) fn rule_with(extra: &str) -> String {
    format!("[[rule]]\nname = \"r\"\nkey = [\"ip\"]\nlimit = 5\nwindow = \"1m\"\n{extra}\n")
}
