//! Group commit for claims: the claims on one campaign that arrive while
//! that campaign's claim calls are in flight are sent together, as one
//! `claim.lua` call, as soon as one of them returns.
//!
//! Nothing waits for a batch to fill: a claim on an idle campaign goes out
//! at once (a batch of one), so a quiet service pays no latency for this.
//! Under a flash sale the calls queue behind the ones in flight and leave in
//! batches of up to [`MAX_BATCH`], which spreads Redis's per-command cost
//! (the read, the EVALSHA dispatch, the reply) and this process's hop to the
//! Redis runtime over the whole batch. The script runs the claims one after
//! another, each checked and charged atomically and each answered on its
//! own, so batching changes no outcome: it is the order the claims reached
//! Redis in anyway.
//!
//! A campaign has at most [`MAX_IN_FLIGHT`] calls in flight; every key of a
//! call is under the campaign's hash tag, so a batch is one slot on Redis
//! Cluster as well. The rate rules' checks are batched the same way, one
//! lane per hash tag of their keys (`rules.lua`'s batch mode).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::store::redis::{Result, Store, StoreError, redis_runtime};

/// The most claims one call carries.
pub const MAX_BATCH: usize = 64;
/// The most calls one campaign has in flight at once. Two keep Redis
/// busy while a reply travels back and the next batch is built: with one,
/// Redis idled about a fifth of the time under a flash sale; two took a
/// 3-rule claim load from 12.8k/16.3k to 14.4k/17.5k claims/s
/// (`loadtest/cpu_per_claim.sh`, interleaved, `docs/benchmarks.md`). Redis
/// runs the calls one after another, each atomic, so this changes no
/// outcome.
pub const MAX_IN_FLIGHT: usize = 2;

/// The reply one waiting claim gets: its own answer of the script's reply,
/// or the error of the whole call.
pub(super) type Reply = std::result::Result<Answer, redis::RedisError>;

/// One call's answer. `claim.lua` joins its fields by `|` into one text,
/// kept whole here and read as slices ([`Answer::fields`]): one allocation
/// an answer, not one a field (a 3-rule claim has about 20). Other scripts
/// answer an array of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Answer {
    Joined(String),
    Parts(Vec<String>),
}

impl Answer {
    /// The answer's fields, in order.
    pub fn fields(&self) -> Vec<&str> {
        match self {
            Answer::Joined(s) => s.split('|').collect(),
            Answer::Parts(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// One queued claim: its own keys and arguments, and where its answer goes.
pub(super) struct Queued<T> {
    pub call: T,
    pub reply: oneshot::Sender<Reply>,
}

struct Lane<T> {
    running: usize,
    pending: Vec<Queued<T>>,
    /// The queue's length at which the claims whose callers gave up are
    /// dropped from it (doubles with the live queue: amortized O(1)).
    prune_at: usize,
}

/// A lane's queue is first pruned at this length.
const PRUNE_AT: usize = 1024;

/// Drops the calls whose callers stopped waiting (past their deadline,
/// answered 503): they never reach Redis, so they are not charged, and a
/// Redis that hangs cannot grow the queue past the callers still waiting.
fn prune<T>(pending: &mut Vec<Queued<T>>) {
    pending.retain(|q| !q.reply.is_closed());
}

/// The claims waiting, per campaign (keyed by the campaign's meta key).
pub(super) struct Batcher<T> {
    lanes: Mutex<HashMap<String, Lane<T>>>,
}

impl<T> Default for Batcher<T> {
    fn default() -> Self {
        Self {
            lanes: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Batcher<T> {
    /// Queues a claim; true when the caller must start a flusher for
    /// `lane` (none is running, or fewer than [`MAX_IN_FLIGHT`]).
    pub fn push(&self, lane: &str, q: Queued<T>) -> bool {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let l = match lanes.get_mut(lane) {
            Some(l) => l,
            None => lanes.entry(lane.to_owned()).or_insert(Lane {
                running: 0,
                pending: Vec::new(),
                prune_at: PRUNE_AT,
            }),
        };
        if l.pending.len() >= l.prune_at {
            prune(&mut l.pending);
            l.prune_at = PRUNE_AT.max(2 * l.pending.len());
        }
        l.pending.push(q);
        if l.running < MAX_IN_FLIGHT {
            l.running += 1;
            true
        } else {
            false
        }
    }

    /// The next batch of `lane` for a running flusher; `None` (and the
    /// flusher stops) when nothing waits.
    pub fn take(&self, lane: &str) -> Option<Vec<Queued<T>>> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let l = lanes.get_mut(lane)?;
        prune(&mut l.pending);
        if l.pending.is_empty() {
            l.running -= 1;
            if l.running == 0 {
                lanes.remove(lane);
            }
            return None;
        }
        let n = l.pending.len().min(MAX_BATCH);
        Some(l.pending.drain(..n).collect())
    }
}

/// One reply per queued call from a batched script's reply (an array with
/// one answer per call), or the call's error for each. An answer is an
/// array of strings, or those strings joined by `|` into one (claim.lua's
/// answers but `error`: one bulk reply is cheaper to send and to read).
pub(super) fn split(reply: redis::RedisResult<Vec<redis::Value>>, n: usize) -> Vec<Reply> {
    match reply {
        Ok(r) if r.len() == n => r.into_iter().map(answer).collect(),
        Ok(r) => {
            let e = redis::RedisError::from((
                redis::ErrorKind::Parse,
                "a batched script answered the wrong number of calls",
                format!("{} for {n}", r.len()),
            ));
            vec![Err(e); n]
        }
        Err(e) => vec![Err(e); n],
    }
}

/// One call's answer.
fn answer(v: redis::Value) -> Reply {
    match v {
        redis::Value::BulkString(b) => match String::from_utf8(b) {
            Ok(s) => Ok(Answer::Joined(s)),
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "a batched script's answer is not UTF-8",
            ))),
        },
        v => redis::from_redis_value(v)
            .map(Answer::Parts)
            .map_err(redis::RedisError::from),
    }
}

impl Store {
    /// Queues `call` on `lane` of `batcher`, starting `flush` on the Redis
    /// runtime when the lane has room for another call in flight, and waits
    /// for this call's reply within the deadline. A reply that comes after
    /// it is the flusher's to deal with (its send fails).
    pub(super) async fn enqueue<T, Fut>(
        &self,
        batcher: &Batcher<T>,
        lane: &str,
        call: T,
        flush: impl FnOnce() -> Fut,
    ) -> Result<Answer>
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (reply, mut rx) = oneshot::channel();
        if batcher.push(lane, Queued { call, reply }) {
            redis_runtime().spawn(flush());
        }
        let got = match tokio::time::timeout(self.deadline(), &mut rx).await {
            Ok(got) => got,
            Err(_) => {
                // Closed first, then read: a reply sent before the close is
                // this caller's answer (late, but the caller is still here);
                // after it, the flusher's send fails and it takes the call
                // back. No reply can fall between the two.
                rx.close();
                rx.try_recv()
                    .map_err(|_| StoreError::Timeout(self.deadline()))
                    .map(Ok)?
            }
        };
        match got {
            Ok(r) => r.map_err(StoreError::classify),
            Err(_) => Err(StoreError::Protocol("store task failed".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(n: u32) -> (Queued<u32>, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        (Queued { call: n, reply }, rx)
    }

    #[test]
    fn the_first_claims_start_the_flushers_and_the_rest_queue_behind_them() {
        let b = Batcher::default();
        let mut rxs = Vec::new();
        for i in 1..=MAX_IN_FLIGHT as u32 {
            let (q, r) = queued(i);
            assert!(b.push("c", q), "flusher {i} of {MAX_IN_FLIGHT}");
            rxs.push(r);
        }
        let last = MAX_IN_FLIGHT as u32 + 2;
        for i in MAX_IN_FLIGHT as u32 + 1..=last {
            let (q, r) = queued(i);
            assert!(
                !b.push("c", q),
                "{MAX_IN_FLIGHT} calls in flight per campaign"
            );
            rxs.push(r);
        }
        // Another campaign has its own lane.
        let (o, _ro) = queued(99);
        assert!(b.push("other", o));
        let first: Vec<u32> = b.take("c").unwrap().into_iter().map(|q| q.call).collect();
        assert_eq!(first, (1..=last).collect::<Vec<_>>());
        for _ in 0..MAX_IN_FLIGHT {
            assert!(
                b.take("c").is_none(),
                "each flusher stops when nothing waits"
            );
        }
        let (again, _r) = queued(100);
        assert!(b.push("c", again), "an idle lane starts a new flusher");
    }

    #[test]
    fn calls_whose_callers_gave_up_never_leave_the_queue() {
        let b = Batcher::default();
        let mut kept = Vec::new();
        for i in 0..(PRUNE_AT as u32 * 3) {
            let (q, r) = queued(i);
            b.push("c", q);
            // Every other caller stops waiting (its deadline passed).
            if i % 2 == 0 {
                kept.push(r);
            }
        }
        {
            let lanes = b.lanes.lock().unwrap();
            assert!(
                lanes["c"].pending.len() < PRUNE_AT * 2,
                "the queue is pruned while it grows"
            );
        }
        let sent: Vec<u32> = std::iter::from_fn(|| b.take("c"))
            .flatten()
            .map(|q| q.call)
            .collect();
        assert_eq!(
            sent,
            (0..PRUNE_AT as u32 * 3).step_by(2).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_batch_carries_at_most_max_batch_claims_in_arrival_order() {
        let b = Batcher::default();
        let mut rxs = Vec::new();
        for i in 0..(MAX_BATCH as u32 * 2 + 1) {
            let (q, r) = queued(i);
            b.push("c", q);
            rxs.push(r);
        }
        let sizes: Vec<Vec<u32>> = std::iter::from_fn(|| b.take("c"))
            .map(|v| v.into_iter().map(|q| q.call).collect())
            .collect();
        assert_eq!(
            sizes.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![MAX_BATCH, MAX_BATCH, 1]
        );
        assert_eq!(
            sizes.concat(),
            (0..(MAX_BATCH as u32 * 2 + 1)).collect::<Vec<_>>()
        );
    }
}
