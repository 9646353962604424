//! Stock shards: one campaign's stock split over N hash tags, so its claims
//! spread over the masters of a Redis Cluster (`stock_shards`, see
//! `docs/scaling.md`).
//!
//! - The campaign record stays at `st:{c}:meta` (spec, state, `ver`, total
//!   stock). Shard `i` is `st:{c#i}:…` ([`CampaignKeys::shard`]): a meta
//!   hash with a copy of the claim rules the scripts read, its own stock
//!   slice, `issued`, `void`, `redeemed`, and its own quota buckets, claim
//!   records, request ids, idempotency records, redemptions and stats. So
//!   `claim.lua`, `redeem.lua`, `rollback.lua`, `inspect_code.lua` and
//!   `void_claim.lua` run unchanged on a shard's keys.
//! - A claim goes to shard [`shard_of`] its phone pseudonym, so one phone's
//!   quota bucket is in one shard and `per_phone` stays exact.
//! - Serials: shard `i` hands out local serials 1, 2, …; the code carries
//!   `local * N + i` ([`global_serial`]), unique across shards, and a
//!   redemption finds the shard again as `serial % N` ([`split_serial`]).
//! - A dry shard is refilled from the shard with the most unclaimed stock
//!   ([`Store::refill_shard`]): `shard_take.lua` on the donor moves units
//!   into a pending transfer in the donor's slot, `shard_give.lua` adds them
//!   to the receiver at most once. A crash between the two leaves the units
//!   pending, claimable nowhere, until the next refill of that campaign
//!   completes it: stock can be stranded for a while, never doubled.
//! - The claim rules are copied from the record by `shard_sync.lua`, tagged
//!   with the record's `ver`, after every create, transition and PATCH: an
//!   older copy never overwrites a newer one.

use futures_util::future::try_join_all;

use crate::domain::identity::Pseudonym;
use crate::store::campaigns::StoredCampaign;
use crate::store::keys::CampaignKeys;
use crate::store::redis::{Result, Store, StoreError};
use crate::store::scripts;

/// The shard a claim by `phone` goes to: bits 64..96 of its pseudonym
/// (the rollout bucket takes bits 0..32, the quota bucket 32..64, so the
/// three are independent).
pub fn shard_of(phone: &Pseudonym, shards: u32) -> u32 {
    let bits = phone
        .as_str()
        .get(16..24)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0);
    bits % shards.max(1)
}

/// The serial a code carries for local serial `local` of shard `i`.
pub fn global_serial(local: u64, i: u32, shards: u32) -> u64 {
    local * u64::from(shards) + u64::from(i)
}

/// The shard and local serial of a code's serial.
pub fn split_serial(serial: u64, shards: u32) -> (u32, u64) {
    let n = u64::from(shards.max(1));
    ((serial % n) as u32, serial / n)
}

/// Shard `i`'s stock at creation: `stock` split as evenly as it goes.
pub fn slice(stock: i64, shards: u32, i: u32) -> i64 {
    let (n, i) = (i64::from(shards.max(1)), i64::from(i));
    let stock = stock.max(0);
    stock / n + i64::from(i < stock % n)
}

/// One shard's counters and its outgoing transfers not yet confirmed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardLevel {
    /// Whether the shard's meta exists.
    pub exists: bool,
    pub stock: i64,
    pub issued: i64,
    pub void: i64,
    pub redeemed: i64,
    /// (transfer id, receiver, units) taken out of this shard.
    pub pending: Vec<(String, u32, i64)>,
}

impl ShardLevel {
    /// Unclaimed stock a claim on this shard can still take.
    pub fn free(&self) -> i64 {
        self.stock - (self.issued - self.void)
    }
}

fn int(v: Option<&String>) -> Result<i64> {
    match v {
        None => Ok(0),
        Some(s) => s
            .parse()
            .map_err(|_| StoreError::Protocol(format!("shard counter {s:?}"))),
    }
}

impl Store {
    /// Creates the shards of `c` that do not exist yet and copies the
    /// record's claim rules (at its `ver`) into every shard.
    pub async fn sync_shards(&self, c: &StoredCampaign) -> Result<()> {
        let n = c.spec.stock_shards;
        if n <= 1 {
            return Ok(());
        }
        let fields = crate::store::campaigns::shard_fields(c)?;
        let calls = (0..n).map(|i| {
            let keys = CampaignKeys::shard(&c.spec.id, i, n);
            let slice = slice(c.spec.stock, n, i).to_string();
            let fields = &fields;
            let ver = &c.ver;
            async move {
                let meta = keys.meta();
                let mut args: Vec<&str> = vec![ver.as_str(), slice.as_str()];
                for (k, v) in fields {
                    args.push(k);
                    args.push(v);
                }
                self.script(&scripts::SHARD_SYNC, &[&meta], &args).await
            }
        });
        try_join_all(calls).await.map(|_| ())
    }

    /// Every shard's counters and pending transfers (two reads a shard, the
    /// shards read concurrently).
    pub async fn shard_levels(&self, id: &str, shards: u32) -> Result<Vec<ShardLevel>> {
        let reads = (0..shards).map(|i| async move {
            let keys = CampaignKeys::shard(id, i, shards);
            let mut hm = redis::cmd("HMGET");
            hm.arg(keys.meta())
                .arg(&["stock", "issued", "void", "redeemed"]);
            let mut all = redis::cmd("HGETALL");
            all.arg(keys.transfers_out());
            let (m, out) = futures_util::future::try_join(
                self.query::<Vec<Option<String>>>(hm),
                self.query::<Vec<(String, String)>>(all),
            )
            .await?;
            let mut pending = Vec::with_capacity(out.len());
            for (xid, v) in out {
                let parsed = v
                    .split_once('|')
                    .and_then(|(r, k)| Some((r.parse::<u32>().ok()?, k.parse::<i64>().ok()?)));
                let Some((r, k)) = parsed else {
                    return Err(StoreError::Protocol(format!("transfer record {v:?}")));
                };
                pending.push((xid, r, k));
            }
            Ok(ShardLevel {
                exists: m.first().is_some_and(Option::is_some),
                stock: int(m.first().and_then(Option::as_ref))?,
                issued: int(m.get(1).and_then(Option::as_ref))?,
                void: int(m.get(2).and_then(Option::as_ref))?,
                redeemed: int(m.get(3).and_then(Option::as_ref))?,
                pending,
            })
        });
        try_join_all(reads).await
    }

    /// Completes one transfer: waits for the donor's replicas or AOF first
    /// when claims do (`redis_wait_replicas` / `redis_wait_aof`: a take a
    /// failover or crash could lose must not be given), adds the units to the receiver once, then drops the
    /// donor's record. True when the units are in the receiver's stock.
    async fn give_stock(
        &self,
        (id, shards): (&str, u32),
        donor: u32,
        receiver: u32,
        xid: &str,
        k: i64,
    ) -> Result<bool> {
        let d = CampaignKeys::shard(id, donor, shards);
        if !self.wait_durable(&self.conn(), &d.meta()).await? {
            // Left pending: the next refill tries again.
            tracing::warn!(
                donor,
                "a stock transfer's take was not confirmed as durable"
            );
            return Err(StoreError::Timeout(self.deadline()));
        }
        let r = CampaignKeys::shard(id, receiver, shards);
        let out = self
            .script(
                &scripts::SHARD_GIVE,
                &[&r.meta(), &r.transfers_in()],
                &[xid, &k.to_string()],
            )
            .await?;
        match out.first().map(String::as_str) {
            Some("given" | "already") => {}
            Some("missing") => return Ok(false),
            _ => return Err(StoreError::Protocol(format!("shard_give: {out:?}"))),
        }
        let mut del = redis::cmd("HDEL");
        del.arg(d.transfers_out()).arg(xid);
        self.query::<i64>(del).await?;
        Ok(true)
    }

    /// Refills shard `dry` of campaign `id`: completes every pending
    /// transfer, then moves half the unclaimed stock of the richest other
    /// shard to it. False when no shard has unclaimed stock and nothing is
    /// pending: the campaign is sold out.
    pub async fn refill_shard(&self, id: &str, shards: u32, dry: u32) -> Result<bool> {
        let levels = self.shard_levels(id, shards).await?;
        let mut refilled = false;
        for (donor, l) in levels.iter().enumerate() {
            for (xid, receiver, k) in &l.pending {
                let given = self
                    .give_stock((id, shards), donor as u32, *receiver, xid, *k)
                    .await?;
                refilled |= given && *receiver == dry;
            }
        }
        if refilled || levels.get(dry as usize).is_some_and(|l| l.free() > 0) {
            return Ok(true);
        }
        let Some((donor, free)) = levels
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != dry as usize)
            .map(|(i, l)| (i as u32, l.free()))
            .max_by_key(|(_, f)| *f)
        else {
            return Ok(false);
        };
        if free <= 0 {
            // Pending transfers to other shards were completed above: a
            // claim there takes those units.
            return Ok(levels.iter().any(|l| !l.pending.is_empty()));
        }
        let want = (free + 1) / 2;
        let xid = uuid::Uuid::new_v4().simple().to_string();
        let d = CampaignKeys::shard(id, donor, shards);
        let out = self
            .script(
                &scripts::SHARD_TAKE,
                &[&d.meta(), &d.transfers_out()],
                &[&xid, &dry.to_string(), &want.to_string()],
            )
            .await?;
        let k: i64 = crate::store::redis::parse(out.first(), "units")?;
        if k > 0 {
            self.give_stock((id, shards), donor, dry, &xid, k).await?;
        }
        metrics::counter!("stampede_shard_transfers_total").increment(1);
        tracing::debug!(
            campaign = id,
            donor,
            receiver = dry,
            units = k,
            "stock moved between shards"
        );
        Ok(true)
    }

    /// Shard `i`'s unclaimed stock (one read).
    pub async fn shard_free(&self, id: &str, i: u32, shards: u32) -> Result<i64> {
        let mut hm = redis::cmd("HMGET");
        hm.arg(CampaignKeys::shard(id, i, shards).meta())
            .arg(&["stock", "issued", "void"]);
        let m: Vec<Option<String>> = self.query(hm).await?;
        let v = |j: usize| int(m.get(j).and_then(Option::as_ref));
        Ok(v(0)? - (v(1)? - v(2)?))
    }

    /// The sums over a campaign's shards: (issued, redeemed), as the
    /// campaign record would hold them unsharded.
    pub async fn shard_totals(&self, id: &str, shards: u32) -> Result<(i64, i64)> {
        let levels = self.shard_levels(id, shards).await?;
        Ok(levels
            .iter()
            .fold((0, 0), |(i, r), l| (i + l.issued - l.void, r + l.redeemed)))
    }

    /// A campaign's stats hash with its shards' added in.
    pub async fn stats_all(
        &self,
        keys: &CampaignKeys,
        id: &str,
        shards: u32,
    ) -> Result<Vec<(String, i64)>> {
        let mut all = self.stats(keys).await?;
        if shards > 1 {
            let parts = try_join_all(
                (0..shards)
                    .map(|i| async move { self.stats(&CampaignKeys::shard(id, i, shards)).await }),
            )
            .await?;
            let mut sum: std::collections::BTreeMap<String, i64> = all.drain(..).collect();
            for (f, n) in parts.into_iter().flatten() {
                *sum.entry(f).or_default() += n;
            }
            all = sum.into_iter().collect();
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_unique_across_shards_and_find_their_shard() {
        let mut seen = std::collections::HashSet::new();
        for n in [1u32, 2, 3, 7] {
            seen.clear();
            for i in 0..n {
                for local in 1..200u64 {
                    let g = global_serial(local, i, n);
                    assert!(seen.insert(g), "{g} twice with {n} shards");
                    assert_eq!(split_serial(g, n), (i, local));
                }
            }
        }
    }

    #[test]
    fn slices_sum_to_the_stock() {
        for stock in [0i64, 1, 2, 10, 1001] {
            for n in 1..=7u32 {
                let total: i64 = (0..n).map(|i| slice(stock, n, i)).sum();
                assert_eq!(total, stock);
                let (lo, hi) = (slice(stock, n, n - 1), slice(stock, n, 0));
                assert!(hi - lo <= 1);
            }
        }
    }

    #[test]
    fn phones_spread_over_the_shards() {
        let ids = crate::domain::identity::Pseudonymizer::new([3; 32]);
        let mut counts = [0u32; 3];
        for k in 0..3000 {
            let d = crate::domain::identity::DeviceId::parse(&format!("d{k}")).unwrap();
            counts[shard_of(&ids.device(&d), 3) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }
}
