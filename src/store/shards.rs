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
//! - A stock raise is recorded on the record as grants (`patch_campaign.lua`,
//!   the record's `xout`) with the new stock, and given once each
//!   ([`Store::give_grants`], also by every refill).
//! - Bulk codes gather the unclaimed stock into shard 0
//!   ([`Store::gather_stock`]) and reserve there.
//! - Stock webhooks: [`Store::shard_alert`] with the summed `issued`
//!   (`worker::shard_alerts`).

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

/// Transfer records (`xout`): id -> `<receiver>|<units>`.
fn parse_transfers(out: Vec<(String, String)>) -> Result<Vec<(String, u32, i64)>> {
    out.into_iter()
        .map(|(xid, v)| {
            let parsed = v
                .split_once('|')
                .and_then(|(r, k)| Some((r.parse::<u32>().ok()?, k.parse::<i64>().ok()?)));
            match parsed {
                Some((r, k)) => Ok((xid, r, k)),
                None => Err(StoreError::Protocol(format!("transfer record {v:?}"))),
            }
        })
        .collect()
}

/// A stock raise of `delta` on `shards` shards, as the grants
/// `patch_campaign.lua` records with the new stock: (fresh transfer id,
/// `<shard>|<units>`), split as evenly as [`slice`] splits a stock.
pub fn grants(delta: i64, shards: u32) -> Vec<(String, String)> {
    (0..shards.max(1))
        .map(|i| (i, slice(delta, shards, i)))
        .filter(|(_, k)| *k > 0)
        .map(|(i, k)| {
            (
                uuid::Uuid::new_v4().simple().to_string(),
                format!("{i}|{k}"),
            )
        })
        .collect()
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
            // The shard's last serial a code can carry (`local × n + i`).
            let max_serial =
                ((crate::domain::code::MAX_SERIAL - u64::from(i)) / u64::from(n)).to_string();
            let fields = &fields;
            let ver = &c.ver;
            async move {
                let meta = keys.meta();
                let mut args: Vec<&str> = vec![ver.as_str(), slice.as_str()];
                for (k, v) in fields {
                    args.push(k);
                    args.push(v);
                }
                args.push("max_serial");
                args.push(&max_serial);
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
            let pending = parse_transfers(out)?;
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
        d: &CampaignKeys,
        receiver: u32,
        xid: &str,
        k: i64,
    ) -> Result<bool> {
        if !self.wait_durable(&self.conn(), &d.meta()).await? {
            // Left pending: the next refill tries again.
            tracing::warn!(
                receiver,
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

    /// Gives the stock raises of campaign `record` that are still pending
    /// (`patch_campaign.lua` recorded them with the new stock; a crash or a
    /// lost reply may have stopped the service before it gave them): each
    /// is added to its shard once. The shards that got stock, with repeats.
    pub async fn give_grants(
        &self,
        record: &CampaignKeys,
        id: &str,
        shards: u32,
    ) -> Result<Vec<u32>> {
        let mut all = redis::cmd("HGETALL");
        all.arg(record.transfers_out());
        let pending = parse_transfers(self.query::<Vec<(String, String)>>(all).await?)?;
        let mut given = Vec::with_capacity(pending.len());
        for (xid, receiver, k) in pending {
            if receiver < shards
                && self
                    .give_stock((id, shards), record, receiver, &xid, k)
                    .await?
            {
                given.push(receiver);
            }
        }
        Ok(given)
    }

    /// Completes every pending stock raise and transfer of a campaign (each
    /// given once); the shards' levels as read before, and the shards that
    /// got stock (with repeats).
    async fn complete_pending(
        &self,
        record: &CampaignKeys,
        id: &str,
        shards: u32,
    ) -> Result<(Vec<ShardLevel>, Vec<u32>)> {
        let mut given = self.give_grants(record, id, shards).await?;
        let levels = self.shard_levels(id, shards).await?;
        for (donor, l) in levels.iter().enumerate() {
            let d = CampaignKeys::shard(id, donor as u32, shards);
            for (xid, receiver, k) in &l.pending {
                if self
                    .give_stock((id, shards), &d, *receiver, xid, *k)
                    .await?
                {
                    given.push(*receiver);
                }
            }
        }
        Ok((levels, given))
    }

    /// Moves up to `want` units of unclaimed stock from shard `donor` to
    /// shard `receiver` (take, then give); the units moved.
    async fn move_stock(
        &self,
        (id, shards): (&str, u32),
        donor: u32,
        receiver: u32,
        want: i64,
    ) -> Result<i64> {
        let xid = uuid::Uuid::new_v4().simple().to_string();
        let d = CampaignKeys::shard(id, donor, shards);
        let out = self
            .script(
                &scripts::SHARD_TAKE,
                &[&d.meta(), &d.transfers_out()],
                &[&xid, &receiver.to_string(), &want.to_string()],
            )
            .await?;
        let k: i64 = crate::store::redis::parse(out.first(), "units")?;
        if k > 0 {
            self.give_stock((id, shards), &d, receiver, &xid, k).await?;
        }
        metrics::counter!("stampede_shard_transfers_total").increment(1);
        tracing::debug!(
            campaign = id,
            donor,
            receiver,
            units = k,
            "stock moved between shards"
        );
        Ok(k)
    }

    /// Refills shard `dry` of campaign `id` (its record's keys: `record`):
    /// completes every pending transfer and stock raise, then moves half
    /// the unclaimed stock of the richest other shard to it. False when no
    /// shard has unclaimed stock and nothing is pending: the campaign is
    /// sold out.
    pub async fn refill_shard(
        &self,
        record: &CampaignKeys,
        id: &str,
        shards: u32,
        dry: u32,
    ) -> Result<bool> {
        let (levels, given) = self.complete_pending(record, id, shards).await?;
        if given.contains(&dry) || levels.get(dry as usize).is_some_and(|l| l.free() > 0) {
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
            // Pending transfers and raises to other shards were completed
            // above: a claim there takes those units.
            return Ok(!given.is_empty());
        }
        self.move_stock((id, shards), donor, dry, (free + 1) / 2)
            .await?;
        Ok(true)
    }

    /// Gathers unclaimed stock into shard `into` until it has `want` units
    /// (or every other shard is dry): for a bulk reservation, which takes
    /// one range of one shard's serials. The units it has then.
    pub async fn gather_stock(
        &self,
        record: &CampaignKeys,
        (id, shards): (&str, u32),
        into: u32,
        want: i64,
    ) -> Result<i64> {
        self.complete_pending(record, id, shards).await?;
        let levels = self.shard_levels(id, shards).await?;
        let mut have = levels.get(into as usize).map_or(0, ShardLevel::free);
        for (i, l) in levels.iter().enumerate() {
            if have >= want {
                break;
            }
            if i != into as usize && l.free() > 0 {
                have += self
                    .move_stock((id, shards), i as u32, into, (want - have).min(l.free()))
                    .await?;
            }
        }
        Ok(have)
    }

    /// Writes the stock webhooks a sharded campaign's summed `issued` calls
    /// for, once each (`lua/shard_alert.lua`); the names written.
    pub async fn shard_alert(
        &self,
        record: &CampaignKeys,
        issued: i64,
        now_ms: i64,
    ) -> Result<Vec<String>> {
        self.script(
            &scripts::SHARD_ALERT,
            &[&record.meta(), &record.outbox()],
            &[&issued.to_string(), &now_ms.to_string()],
        )
        .await
    }

    /// Appends an entry to a campaign's own audit trail (for what a shard's
    /// script did in the shard's slot, e.g. a bulk reservation).
    pub async fn campaign_audit(
        &self,
        record: &CampaignKeys,
        id: &str,
        at_ms: i64,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> Result<()> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(record.audit())
            .arg(&["MAXLEN", "~", "100000", "*", "at_ms"])
            .arg(at_ms)
            .arg("actor")
            .arg(actor)
            .arg("action")
            .arg(action)
            .arg("target")
            .arg(id)
            .arg(&["reason", "", "detail"])
            .arg(detail);
        self.query::<String>(cmd).await.map(|_| ())
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
