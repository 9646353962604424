//! Every Redis key the service uses is built here, and nowhere else.
//!
//! Layout (`c` is the campaign id, which is `[a-z0-9_-]` only, so it can
//! never contain the `{}` of a hash tag):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `st:{c}:meta` | hash | spec JSON, lifecycle state, stock/issued/redeemed counters (`issued` is also the serial counter), rules |
//! | `st:{c}:q:phone` / `q:device` / `q:ip` | hash | pseudonym -> coupons claimed |
//! | `st:{c}:claims` | hash | serial -> `phone|device|ip|claimed_ms|expires_ms` (pseudonyms) |
//! | `st:{c}:redemptions` | hash | serial -> redemption record (order, time, discount, store) |
//! | `st:{c}:rollbacks` | hash | serial -> last undone redemption |
//! | `st:{c}:idem:<digest>` | string | idempotency record, with a TTL |
//! | `st:{c}:audit` | stream | the campaign's audit trail (create, transitions, patches, bulk codes) |
//! | `st:{c}:outbox` | stream | webhook events, written by the script that crosses the threshold |
//! | `st:{c}:stats` | hash | refusals by code and limit, claims per minute, redemptions by store and channel |
//! | `st:{c}:batches` | zset | bulk code reservations: first serial -> `first|count|created_ms|expires_ms` |
//! | `st:{k:<digest>}` | string | an `Idempotency-Key` claimed by one request of one caller (any campaign) |
//! | `st:{webhooks}` | set | ids of campaigns with a webhook (the outbox worker's list) |
//! | `st:campaign-seq` | string | last campaign number handed out |
//! | `st:campaign-no:<n>` | string | campaign id of number `n` (codes carry the number) |
//! | `st:{r:<k>}:<rule>` | hash | a rate rule's buckets, violations and ban level for one rule key |
//! | `st:{r:<k>}:<rule>:d` | zset | a `distinct` rule's members -> last seen |
//! | `st:{bans}` | hash | `<kind>:<pseudonym>` -> ban record (JSON); `~v` -> version |
//! | `st:{audit}` | stream | reloads, bans, unbans: who, why, when |
//!
//! `<k>` is a digest of a rule key's values (the pseudonyms of its
//! identities, the campaign id): every rule keyed on the same values shares
//! the hash tag, so the rules of one request take one script call per slot.
//!
//! No key or value holds a phone, device id or IP in clear: only the
//! HMAC pseudonyms of [`crate::domain::identity`].

use crate::domain::campaign::CampaignId;

/// The keys of one campaign.
#[derive(Debug, Clone)]
pub struct CampaignKeys {
    prefix: String,
}

impl CampaignKeys {
    pub fn new(id: &CampaignId) -> Self {
        Self {
            prefix: format!("st:{{{}}}:", id.as_str()),
        }
    }

    fn key(&self, suffix: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + suffix.len());
        k.push_str(&self.prefix);
        k.push_str(suffix);
        k
    }

    pub fn meta(&self) -> String {
        self.key("meta")
    }
    pub fn quota_phone(&self) -> String {
        self.key("q:phone")
    }
    pub fn quota_device(&self) -> String {
        self.key("q:device")
    }
    pub fn quota_ip(&self) -> String {
        self.key("q:ip")
    }
    pub fn claims(&self) -> String {
        self.key("claims")
    }
    pub fn redemptions(&self) -> String {
        self.key("redemptions")
    }
    pub fn rollbacks(&self) -> String {
        self.key("rollbacks")
    }
    pub fn audit(&self) -> String {
        self.key("audit")
    }
    pub fn outbox(&self) -> String {
        self.key("outbox")
    }
    pub fn stats(&self) -> String {
        self.key("stats")
    }
    pub fn batches(&self) -> String {
        self.key("batches")
    }
    /// The campaign id back from any of its keys.
    pub fn campaign_of(key: &str) -> Option<&str> {
        let open = key.find('{')?;
        let close = open + key[open..].find('}')?;
        Some(&key[open + 1..close])
    }
    /// `digest` is already a hash of the caller's key (never the raw header).
    pub fn idempotency(&self, digest: &str) -> String {
        self.key(&format!("idem:{digest}"))
    }
}

/// The keys of one rule for one rule-key value (`tag` is the digest of the
/// values): the counter hash and the distinct set, one slot.
pub fn rule(tag: &str, rule: &str) -> (String, String) {
    let hash = format!("st:{{r:{tag}}}:{rule}");
    let zset = format!("{hash}:d");
    (hash, zset)
}

/// The hash tag of a rule key (for grouping the calls of a request by slot).
pub fn rule_tag(key: &str) -> &str {
    key.find('{')
        .and_then(|o| key[o..].find('}').map(|c| &key[o + 1..o + c]))
        .unwrap_or(key)
}

/// Where one caller's `Idempotency-Key` is claimed across campaigns.
pub fn idempotency_owner(digest: &str) -> String {
    format!("st:{{k:{digest}}}")
}

pub fn webhooks() -> &'static str {
    "st:{webhooks}"
}

pub fn bans() -> &'static str {
    "st:{bans}"
}

pub fn audit() -> &'static str {
    "st:{audit}"
}

pub fn campaign_seq() -> &'static str {
    "st:campaign-seq"
}

pub fn campaign_by_no(no: u32) -> String {
    format!("st:campaign-no:{no}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis Cluster hashes only what is inside the first `{...}`.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = open + key[open..].find('}').unwrap();
        &key[open + 1..close]
    }

    #[test]
    fn all_keys_of_a_campaign_share_one_hash_tag() {
        let k = CampaignKeys::new(&CampaignId::parse("double11-20off").unwrap());
        for key in [
            k.meta(),
            k.quota_phone(),
            k.quota_device(),
            k.quota_ip(),
            k.claims(),
            k.redemptions(),
            k.rollbacks(),
            k.idempotency("abc"),
            k.audit(),
            k.outbox(),
            k.stats(),
            k.batches(),
        ] {
            assert_eq!(hash_tag(&key), "double11-20off", "{key}");
        }
    }

    #[test]
    fn both_keys_of_a_rule_share_the_rule_key_tag() {
        let (h, z) = rule("0123abcd", "ip-burst");
        assert_eq!(hash_tag(&h), "r:0123abcd");
        assert_eq!(hash_tag(&z), "r:0123abcd");
        assert_eq!(rule_tag(&h), "r:0123abcd");
    }
}
