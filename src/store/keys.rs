//! Every Redis key the service uses is built here, and nowhere else.
//!
//! Layout (`c` is the campaign id, which is `[a-z0-9_-]` only, so it can
//! never contain the `{}` of a hash tag):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `st:{c}:meta` | hash | spec JSON, lifecycle state, stock/issued/redeemed counters (`issued` is also the serial counter), rules |
//! | `st:{c}:q:p:<b>` / `q:d:<b>` / `q:i:<b>` | hash | short pseudonym -> coupons claimed by that phone / device / IP; `b` is one of the campaign's quota buckets (below) |
//! | `st:{c}:cl:<serial / 64>` | hash | `serial % 64` -> `phone|claimed_ms|expires_ms|channel` (short phone pseudonym) |
//! | `st:{c}:rid:<s>` | hash | server request id -> the claim's answer, for the transport re-sends of calls whose deadline falls in second `s`; expires 2 s after it |
//! | `st:{c}:redemptions` | hash | serial -> redemption record (order, time, discount, store) |
//! | `st:{c}:rollbacks` | hash | serial -> last undone redemption |
//! | `st:{c}:idem:<digest>` | string | idempotency record, with a TTL |
//! | `st:{c}:audit` | stream | the campaign's audit trail (create, transitions, patches, bulk codes) |
//! | `st:{c}:outbox` | stream | webhook events, written by the script that crosses the threshold |
//! | `st:{c}:stats` | hash | refusals by code and limit, claims per minute, redemptions by store and channel |
//! | `st:{c#i.s}:…` | | stock shard `i` (`s`: a salt, see [`CampaignKeys::shard`]) of a campaign with `stock_shards` > 1: its own `meta` (a copy of what `claim.lua` reads, its stock slice, its `issued`/`void`/`redeemed`), quota buckets, claim records, request ids, idempotency records, redemptions, stats (`store::shards`) |
//! | `st:{c#i.s}:xout` | hash | transfer id -> `<receiver>|<units>`: stock taken out of shard `i`, not yet confirmed applied |
//! | `st:{c#i.s}:xin` | set | ids of the transfers shard `i` has received (a retried give adds nothing) |
//! | `st:{c}:xout` | hash | transfer id -> `<shard>|<units>`: a stock raise of a sharded campaign (`patch_campaign.lua`), not yet confirmed given to its shard |
//! | `st:{c}:fence` | string | `1`: written right before each `WAIT` / `WAITAOF` of the durability settings, on the same connection ([`fence_of`]) |
//! | `st:{c}:batches` | zset | bulk code reservations: first serial -> `first|count|created_ms|expires_ms` |
//! | `st:{k:<digest>}` | string | an `Idempotency-Key` claimed by one request of one caller (any campaign) |
//! | `st:{webhooks}` | set | ids of campaigns with a webhook (the outbox worker's list) |
//! | `st:campaign-seq` | string | last campaign number handed out |
//! | `st:campaign-no:<n>` | string | campaign id of number `n` (codes carry the number) |
//! | `st:{r:<shard>}:<rule>:e:<epoch>` | hash | a rate rule's buckets (or a `distinct` rule's members) of one epoch, one field per rule key (`lua/rules.lua`) |
//! | `st:{r:<shard>}:<rule>:b:<k>` | hash | a rule key's violations and ban level (rules that ban) |
//! | `st:{r:<shard>}:rc:<s>` | hash | call id -> the answer of a batched rule check (JSON), for the transport re-sends of calls whose last deadline falls in second `s`; expires 2 s after it |
//! | `st:{bans}` | hash | `<kind>:<pseudonym>` -> ban record (JSON); `~v` -> version |
//! | `st:{audit}` | stream | reloads, bans, unbans: who, why, when |
//!
//! # Compact layout (issue: 200 bytes a coupon)
//! Small hashes are stored by Redis as one listpack (about 4 bytes of
//! overhead an entry) while they hold at most 128 entries of at most 64
//! bytes (`hash-max-listpack-entries` / `-value`, the defaults); a bigger
//! hash becomes a hashtable at about 90 bytes an entry. So the per-campaign
//! maps that grow with the sale are cut into small hashes:
//! - quota counters into `quota_buckets` hashes per kind: the next power of
//!   two of `stock / 16` at create (at most 65,536), picked by bits 32..64
//!   of the pseudonym; about 8..16 entries each when a campaign of up to a
//!   million sells out (a bigger one, or a PATCH that raises the stock,
//!   fills them further: past 128 entries they turn into hashtables, still
//!   exact, just larger). A listpack is searched entry by entry: at 32..64
//!   entries a bucket cost a claim about 5 µs more of Redis time (3 reads,
//!   2 writes) than at 8..16, for about 10 more bytes a coupon (one key per
//!   8..16 entries);
//! - claim records into buckets of 64 serials (`cl:<serial / 64>`). The
//!   claim script picks that bucket from the serial it hands out, so its key
//!   is built in the script from `KEYS[2]` plus `:<serial / 64>`: same hash
//!   tag, same slot, so it runs unchanged on Redis Cluster.
//!
//! Pseudonyms inside a campaign are [`short`]: 96 bits in 16 base64url
//! characters (two of 10^9 identities collide with probability below
//! 10^18 / 2^97, about 6e-12).
//!
//! `<k>` is a digest of a rule key's values (the pseudonyms of its
//! identities, the campaign id): every rule keyed on the same values shares
//! the hash tag, so the rules of one request take one script call per slot.
//!
//! No key or value holds a phone, device id or IP in clear: only the
//! HMAC pseudonyms of [`crate::domain::identity`].

use crate::domain::campaign::CampaignId;
use crate::domain::identity::Pseudonym;

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

    /// The keys of stock shard `i` of `n` of a campaign with more than one
    /// stock shard: the same names under their own hash tag `{<c>#<i>.<s>}`
    /// (`store::shards`). `s` is the first salt that puts the tag's slot in
    /// the `i`-th `n`-th of the 16,384 slots, so the shards of a campaign
    /// spread over the slot space evenly: on a cluster whose masters own
    /// equal ranges (what `redis-cli --cluster create` makes), `n` shards
    /// over `n` masters are one a master. `#` is outside the id's alphabet,
    /// so no campaign's own tag can equal a shard's.
    pub fn shard(id: &str, i: u32, n: u32) -> Self {
        Self {
            prefix: format!("st:{{{}}}:", shard_tag(id, i, n)),
        }
    }

    /// Stock moved out of this shard (or, on the campaign record, granted by
    /// a stock raise) and not yet known to be applied by its receiver:
    /// transfer id -> `<receiver>|<units>` (`lua/shard_take.lua`,
    /// `lua/patch_campaign.lua`).
    pub fn transfers_out(&self) -> String {
        self.key("xout")
    }

    /// Ids of the transfers this shard has received (`lua/shard_give.lua`).
    pub fn transfers_in(&self) -> String {
        self.key("xin")
    }

    fn key(&self, suffix: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + suffix.len());
        k.push_str(&self.prefix);
        k.push_str(suffix);
        k
    }

    /// `suffix` then the number `n` (one allocation: these are named on
    /// every claim).
    fn numbered(&self, suffix: &str, n: impl itoa::Integer) -> String {
        let mut digits = itoa::Buffer::new();
        let n = digits.format(n);
        let mut k = String::with_capacity(self.prefix.len() + suffix.len() + n.len());
        k.push_str(&self.prefix);
        k.push_str(suffix);
        k.push_str(n);
        k
    }

    pub fn meta(&self) -> String {
        self.key("meta")
    }
    pub fn quota_phone(&self, bucket: u32) -> String {
        self.numbered("q:p:", bucket)
    }
    pub fn quota_device(&self, bucket: u32) -> String {
        self.numbered("q:d:", bucket)
    }
    pub fn quota_ip(&self, bucket: u32) -> String {
        self.numbered("q:i:", bucket)
    }
    /// The prefix of the claim-record buckets (the claim script appends
    /// `:<serial / 64>`).
    pub fn claims_prefix(&self) -> String {
        self.key("cl")
    }
    /// The claim-record bucket of `serial`, and the field inside it.
    pub fn claims(&self, serial: u64) -> (String, String) {
        claim_record(&self.claims_prefix(), serial)
    }
    /// The server request ids of the calls whose deadline falls in second `s`.
    pub fn request_ids(&self, s: i64) -> String {
        self.numbered("rid:", s)
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
    /// The campaign id back from any of its keys (a shard's too).
    pub fn campaign_of(key: &str) -> Option<&str> {
        let open = key.find('{')?;
        let close = open + key[open..].find('}')?;
        let tag = &key[open + 1..close];
        Some(tag.split_once('#').map_or(tag, |(c, _)| c))
    }
    /// `digest` is already a hash of the caller's key (never the raw header).
    pub fn idempotency(&self, digest: &str) -> String {
        self.key(&format!("idem:{digest}"))
    }
}

/// Redis Cluster's slot of a hash tag (CRC16/XMODEM mod 16,384).
pub fn slot(tag: &str) -> u16 {
    let mut crc: u16 = 0;
    for &b in tag.as_bytes() {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16_384
}

/// The fence key next to a campaign's (or shard's) `meta` key: written just
/// before a `WAIT` / `WAITAOF` on the same connection, so the wait covers
/// every earlier write to that slot (`store::conn`).
pub fn fence_of(meta: &str) -> String {
    let base = meta.strip_suffix("meta").unwrap_or(meta);
    let mut k = String::with_capacity(base.len() + 5);
    k.push_str(base);
    k.push_str("fence");
    k
}

/// The hash tag of shard `i` of `n` (see [`CampaignKeys::shard`]).
pub fn shard_tag(id: &str, i: u32, n: u32) -> String {
    let n = n.max(1);
    let (lo, hi) = (i * 16_384 / n, (i + 1) * 16_384 / n);
    for s in 0..100_000u32 {
        let tag = format!("{id}#{i}.{s}");
        let slot = u32::from(slot(&tag));
        if (lo..hi).contains(&slot) {
            return tag;
        }
    }
    format!("{id}#{i}.0")
}

/// Claim records per bucket (`cl:<serial / 64>`): the script's `64`.
pub const CLAIMS_PER_BUCKET: u64 = 64;

/// The claim-record bucket of `serial` under a campaign's claims prefix
/// (`CampaignKeys::claims_prefix`), and the field inside it.
pub fn claim_record(claims_prefix: &str, serial: u64) -> (String, String) {
    (
        format!("{claims_prefix}:{}", serial / CLAIMS_PER_BUCKET),
        (serial % CLAIMS_PER_BUCKET).to_string(),
    )
}

/// The number of quota buckets of a new campaign of `stock` (see the
/// module docs): the next power of two of `stock / 16`, 1..=65,536.
pub fn quota_buckets_for(stock: u64) -> u32 {
    let want = stock.div_ceil(16).clamp(1, 65_536);
    want.next_power_of_two() as u32
}

/// The quota bucket of a pseudonym (bits 32..64 of it: the rollout bucket
/// takes the first 32, so the two are independent).
pub fn quota_bucket(p: &Pseudonym, buckets: u32) -> u32 {
    let bits = p
        .as_str()
        .get(8..16)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0);
    bits % buckets.max(1)
}

/// The short form of a pseudonym stored inside a campaign: its first 96
/// bits in base64url (16 characters instead of 32 hex).
pub fn short(p: &Pseudonym) -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 12];
    if hex::decode_to_slice(p.as_str().get(..24).unwrap_or(""), &mut bytes).is_err() {
        return p.as_str().to_owned();
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// On a cluster, rule keys are spread over this many hash tags (slots); a
/// single node keeps one epoch hash per rule (a batch reads it with one
/// HMGET).
pub const RULE_SHARDS: u32 = 64;

/// The prefix of the epoch hashes of rule `rule` that hold the field of
/// the rule-key value `digest` (hex, names the value): the script appends
/// the epoch. Its hash tag is the shard of the digest (of `shards`), the
/// slot of the value's ban state too ([`ban_state`]). The few prefixes of
/// the rules in force are made once per thread (a claim with three rules
/// formatted three per request).
pub fn rule(digest: &str, rule: &str, shards: u32) -> std::sync::Arc<str> {
    use std::cell::RefCell;
    thread_local! {
        static PREFIXES: RefCell<foldhash::HashMap<String, Vec<Option<std::sync::Arc<str>>>>> =
            RefCell::default();
    }
    let shard = digest
        .get(..4)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0)
        % shards.max(1);
    PREFIXES.with_borrow_mut(|memo| {
        if !memo.contains_key(rule) {
            memo.insert(rule.to_owned(), Vec::new());
        }
        let by_shard = memo.get_mut(rule).expect("inserted above");
        if by_shard.len() <= shard as usize {
            by_shard.resize(shard as usize + 1, None);
        }
        by_shard[shard as usize]
            .get_or_insert_with(|| format!("st:{{r:{shard}}}:{rule}:e:").into())
            .clone()
    })
}

/// The ban state of the rule-key value `digest` of the rule whose epoch
/// hashes' prefix is `epochs` ([`rule`]): `st:{r:N}:<rule>:b:<digest>`, in
/// the same slot (`rules_core.lua` derives it the same way).
pub fn ban_state(epochs: &str, digest: &str) -> String {
    format!("{}b:{digest}", epochs.strip_suffix("e:").unwrap_or(epochs))
}

/// The hash tag of a rule key (for grouping the calls of a request by slot).
pub fn rule_tag(key: &str) -> &str {
    key.find('{')
        .and_then(|o| key[o..].find('}').map(|c| &key[o + 1..o + c]))
        .unwrap_or(key)
}

/// The answers of the batched rule checks on hash tag `tag` whose last
/// deadline falls in second `s` (`lua/rules.lua`'s batch mode).
pub fn rule_calls(tag: &str, s: i64) -> String {
    format!("st:{{{tag}}}:rc:{s}")
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
            k.quota_phone(7),
            k.quota_device(0),
            k.quota_ip(65_535),
            k.claims_prefix(),
            k.claims(1_000).0,
            k.request_ids(1_700_000_000),
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
    fn a_shards_keys_share_its_own_tag() {
        let k = CampaignKeys::shard("sale", 2, 3);
        let tag = shard_tag("sale", 2, 3);
        assert!(tag.starts_with("sale#2."), "{tag}");
        for key in [
            k.meta(),
            k.quota_phone(1),
            k.claims(70).0,
            k.request_ids(5),
            k.idempotency("d"),
            k.transfers_out(),
            k.transfers_in(),
            k.stats(),
            fence_of(&k.meta()),
        ] {
            assert_eq!(hash_tag(&key), tag, "{key}");
            assert_eq!(CampaignKeys::campaign_of(&key), Some("sale"));
        }
    }

    #[test]
    fn shard_tags_spread_over_the_slot_space() {
        // Redis's own examples: CLUSTER KEYSLOT.
        assert_eq!(slot("foo"), 12_182);
        assert_eq!(slot("123456789"), 12_739);
        for n in [2u32, 3, 7, 64] {
            for i in 0..n {
                let s = u32::from(slot(&shard_tag("double11", i, n)));
                assert!(s * n / 16_384 == i, "shard {i}/{n} on slot {s}");
            }
        }
    }

    #[test]
    fn quota_buckets_scale_with_stock_in_powers_of_two() {
        assert_eq!(quota_buckets_for(0), 1);
        assert_eq!(quota_buckets_for(16), 1);
        assert_eq!(quota_buckets_for(17), 2);
        assert_eq!(quota_buckets_for(64), 4);
        assert_eq!(quota_buckets_for(1_000_000), 65_536);
        assert_eq!(quota_buckets_for(u64::MAX), 65_536);
    }

    #[test]
    fn short_pseudonyms_are_16_chars_and_keep_distinct_inputs_distinct() {
        let ids = crate::domain::identity::Pseudonymizer::new([7; 32]);
        let a = ids.device(&crate::domain::identity::DeviceId::parse("a").unwrap());
        let b = ids.device(&crate::domain::identity::DeviceId::parse("b").unwrap());
        assert_eq!(short(&a).len(), 16);
        assert_ne!(short(&a), short(&b));
        assert!(!short(&a).contains('|'));
        assert!(quota_bucket(&a, 1) == 0 && quota_bucket(&a, 1024) < 1024);
    }

    #[test]
    fn claim_buckets_hold_64_serials() {
        let k = CampaignKeys::new(&CampaignId::parse("c").unwrap());
        assert_eq!(k.claims(63), ("st:{c}:cl:0".into(), "63".into()));
        assert_eq!(k.claims(64), ("st:{c}:cl:1".into(), "0".into()));
        assert_eq!(format!("{}:1", k.claims_prefix()), k.claims(64).0);
    }

    #[test]
    fn both_keys_of_a_rule_share_the_rule_key_tag() {
        let e = rule("0123abcd", "ip-burst", RULE_SHARDS);
        let b = ban_state(&e, "0123abcd");
        assert_eq!(&*e, "st:{r:35}:ip-burst:e:", "0x0123 % 64");
        assert_eq!(hash_tag(&e), "r:35");
        assert_eq!(hash_tag(&b), "r:35");
        assert_eq!(rule_tag(&b), "r:35");
        assert_eq!(b, "st:{r:35}:ip-burst:b:0123abcd");
        assert_eq!(&*rule("0123abcd", "ip-burst", 1), "st:{r:0}:ip-burst:e:");
        // Remembered per rule and shard: asked again, the same text.
        assert_eq!(
            &*rule("ffffabcd", "ip-burst", RULE_SHARDS),
            "st:{r:63}:ip-burst:e:"
        );
        assert_eq!(rule("0123ffff", "ip-burst", RULE_SHARDS), e);
        assert_eq!(
            &*rule("0123abcd", "phone-rate", RULE_SHARDS),
            "st:{r:35}:phone-rate:e:"
        );
    }
}
