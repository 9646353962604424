//! Claims: the claim script's typed outcome, the batched call (one
//! `claim.lua` call carries the claims queued on a campaign, see
//! `store::batch`), and taking back a claim whose reply came after its 503.

use crate::domain::campaign::Quota;
use crate::domain::identity::Pseudonym;
use crate::store::Idem;
use crate::store::batch::{self, Answer};
use crate::store::coupons::Recorded;
use crate::store::keys::{self, CampaignKeys};
use crate::store::redis::{Result, Store, StoreError, parse};
use crate::store::rules::{RuleCall, RuleKind, RuleResult, parse_rule_results};
use crate::store::scripts;

/// One claim's own keys (quota buckets, idempotency record) and arguments,
/// as `claim.lua` takes them, and its rules (sent through the call's rule
/// table, see [`Store::flush_claims`]). Numbers stay numbers until they are
/// written into the call (redis-rs prints them in place), and what taking
/// the claim back needs is read from these fields when it happens
/// ([`VoidClaim::of`]): a claim allocates a handful of strings, not thirty.
pub(super) struct ClaimCall {
    /// Phone, device and IP quota buckets, then the idempotency record.
    keys: [String; 4],
    args: ClaimArgs,
    /// Its rules; as many answers (5 strings each) lead its reply.
    rules: Vec<RuleCall>,
}

/// A claim's 13 arguments (`claim.lua`'s header lists them).
struct ClaimArgs {
    now_ms: i64,
    /// Short pseudonyms: phone, device, IP.
    ids: [String; 3],
    /// `-` (no client key: most claims) is not copied.
    fingerprint: std::borrow::Cow<'static, str>,
    idem_ttl_secs: u64,
    /// 'c', 'k' or 's' (see `claim.lua`).
    mode: &'static str,
    rollout_bucket: u8,
    channel: String,
    deadline_ms: i64,
    request_id: String,
    rules: usize,
}

impl ClaimArgs {
    /// Writes the claim's arguments in `claim.lua`'s order: a server id
    /// (mode 's', most claims) sends its request id; a client key its
    /// fingerprint and TTL instead (an argument costs Redis about 1,000
    /// instructions to read: none is sent that the mode does not use; the
    /// server id's hash expires at a second the script derives from the
    /// deadline, as `keys::request_ids` names it).
    fn write(&self, cmd: &mut redis::Cmd) {
        cmd.arg(self.now_ms)
            .arg(&self.ids[0])
            .arg(&self.ids[1])
            .arg(&self.ids[2])
            .arg(self.mode)
            .arg(self.rollout_bucket)
            .arg(&self.channel)
            .arg(self.deadline_ms)
            .arg(self.rules);
        if self.mode == "s" {
            cmd.arg(&self.request_id);
        } else {
            cmd.arg(self.fingerprint.as_ref()).arg(self.idem_ttl_secs);
        }
    }
}

/// What the claim script answered for one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimReply {
    /// The answers of the rules checked in the claim's call (none when the
    /// call carried no rules).
    pub rules: Vec<RuleResult>,
    /// What the claim did, and whether it was a replay; `None` when an
    /// enforced rule refused it (the claim was not tried).
    pub outcome: Option<(ClaimOutcome, bool)>,
}

/// The error a claim gets when its batch was not confirmed by the
/// replicas it must wait for: `503`, as for a store that cannot be reached.
fn unreplicated_error() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the claim was not confirmed as redis_wait_replicas / redis_wait_aof ask",
    ))
}

/// What a claim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    Issued {
        serial: u64,
        claimed_ms: i64,
        expires_ms: i64,
    },
    NotFound,
    /// Not active; `starts_ms` when only its start is still to come.
    NotActive {
        state: String,
        starts_ms: Option<i64>,
    },
    SoldOut,
    /// Outside a condition the script checks (the staged rollout).
    NotEligible(String),
    Limit(Quota),
    KeyReused,
}

/// Who claims, as the claim script counts them (short pseudonyms, their
/// quota buckets).
#[derive(Debug, Clone, Copy)]
pub struct ClaimIds<'a> {
    pub phone: &'a Pseudonym,
    pub device: &'a Pseudonym,
    pub ip: &'a Pseudonym,
}

/// What it takes to undo one claim (see `lua/void_claim.lua`).
#[derive(Debug)]
struct VoidClaim {
    meta: String,
    /// The claim record's bucket and field.
    record: (String, String),
    quotas: [String; 3],
    ids: [String; 3],
    rids: String,
    rid: String,
}

impl VoidClaim {
    /// What undoes `call`, issued as `serial` on the campaign whose shared
    /// keys are `shared` (meta, claims prefix, ...); `None` for a claim under
    /// a client key (the client's retry gets the code: nothing to undo).
    fn of(call: &ClaimCall, shared: &[String; 4], serial: u64) -> Option<Self> {
        if call.args.mode != "s" {
            return None;
        }
        let [q_phone, q_device, q_ip, rids] = &call.keys;
        Some(Self {
            meta: shared[0].clone(),
            record: keys::claim_record(&shared[1], serial),
            quotas: [q_phone.clone(), q_device.clone(), q_ip.clone()],
            ids: call.args.ids.clone(),
            rids: rids.clone(),
            rid: call.args.request_id.clone(),
        })
    }
}

impl Store {
    /// Takes back a claim whose answer came after the caller's 503 (logged
    /// and counted; if Redis cannot be reached for it either, the claim
    /// stays, as after a dropped connection).
    async fn void_claim(&self, v: VoidClaim, serial: u64) {
        let k = [
            v.meta.as_str(),
            &v.quotas[0],
            &v.quotas[1],
            &v.quotas[2],
            &v.record.0,
            &v.rids,
        ];
        let a = [v.record.1.as_str(), &v.ids[0], &v.ids[1], &v.ids[2], &v.rid];
        let outcome = match self.script(&scripts::VOID_CLAIM, &k, &a).await {
            Ok(out) if out.first().is_some_and(|s| s == "void") => "voided",
            Ok(_) => "gone",
            Err(e) => {
                tracing::error!(error = %e, serial, "a claim answered 503 could not be taken back");
                "failed"
            }
        };
        tracing::warn!(serial, outcome, "a claim's reply came after its 503");
        metrics::counter!("stampede_claims_voided_total", "outcome" => outcome).increment(1);
    }

    /// Claims one coupon. The call carries its deadline into the script
    /// (see [`Store::script_deadline_ms`]): a claim Redis reaches after the
    /// service has given up is refused there, so a `503` means not charged
    /// (unless the connection dropped, where the outcome stays unknown).
    /// Claims on one campaign are sent to Redis in batches (`store::batch`).
    /// `rules` are checked (and charged) in the same call, before the claim:
    /// only on a single node, where every key is in one slot.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim(
        &self,
        keys: &CampaignKeys,
        quota_buckets: u32,
        now_ms: i64,
        who: ClaimIds<'_>,
        idem: &Idem,
        rollout_bucket: u8,
        channel: &str,
        rules: &[RuleCall],
    ) -> Result<ClaimReply> {
        debug_assert!(rules.is_empty() || !self.is_cluster());
        self.compatible().await?;
        let deadline_ms = self.script_deadline_ms();
        let (phone, device, ip) = (
            keys::short(who.phone),
            keys::short(who.device),
            keys::short(who.ip),
        );
        // Server ids go to the hash of the second the deadline falls in;
        // it expires 2 s after it, when no re-send can charge any more.
        let rid_second = deadline_ms.div_euclid(1000);
        let (idem_key, mode, rid) = if idem.keep_rejections {
            let mode = if idem.shard_retries_sold_out {
                "k"
            } else {
                "c"
            };
            (keys.idempotency(&idem.digest), mode, "")
        } else {
            (
                keys.request_ids(rid_second),
                "s",
                idem.digest.get(..16).unwrap_or(&idem.digest),
            )
        };
        let call = ClaimCall {
            keys: [
                keys.quota_phone(keys::quota_bucket(who.phone, quota_buckets)),
                keys.quota_device(keys::quota_bucket(who.device, quota_buckets)),
                keys.quota_ip(keys::quota_bucket(who.ip, quota_buckets)),
                idem_key,
            ],
            args: ClaimArgs {
                now_ms,
                ids: [phone, device, ip],
                fingerprint: match idem.fingerprint.as_str() {
                    "-" => "-".into(),
                    f => f.to_owned().into(),
                },
                idem_ttl_secs: idem.ttl_secs,
                mode,
                rollout_bucket,
                channel: channel.to_owned(),
                deadline_ms,
                request_id: rid.to_owned(),
                rules: rules.len(),
            },
            rules: rules.to_vec(),
        };
        let lane = keys.meta();
        // (Named only when this claim starts a flusher.)
        let out = self
            .enqueue(&self.claims, &lane, call, || {
                let shared = [
                    lane.clone(),
                    keys.claims_prefix(),
                    keys.outbox(),
                    keys.stats(),
                ];
                self.clone().flush_claims(shared)
            })
            .await?;
        let out = out.fields();
        match out.first().copied() {
            Some("late") => return Err(StoreError::Timeout(self.deadline())),
            Some("error") => {
                return Err(StoreError::Script(
                    out.get(1).copied().unwrap_or_default().to_owned(),
                ));
            }
            _ => {}
        }
        let split = (5 * rules.len()).min(out.len());
        let rule_results = parse_rule_results(&out[..split], rules.len())?;
        let out = &out[split..];
        if out.first().is_some_and(|s| *s == "refused") {
            return Ok(ClaimReply {
                rules: rule_results,
                outcome: None,
            });
        }
        let replayed = out.len() > 1 && out.last().is_some_and(|r| *r == "1");
        Ok(ClaimReply {
            rules: rule_results,
            outcome: Some((parse_outcome(out)?, replayed)),
        })
    }

    /// The answer recorded under a client key's claim record, when there is
    /// one: what a retry will be answered, read without running anything
    /// (`KeyReused` when the key came with another request).
    pub async fn recorded_claim(
        &self,
        keys: &CampaignKeys,
        idem: &Idem,
    ) -> Result<Option<ClaimOutcome>> {
        Ok(match self.recorded(keys, idem).await? {
            None => None,
            Some(Recorded::Reused) => Some(ClaimOutcome::KeyReused),
            Some(Recorded::Answer(answer)) => {
                // As claim.lua replays it: the fields, then the replay flag.
                let mut parts: Vec<&str> = answer.split('|').collect();
                parts.push("1");
                Some(parse_outcome(&parts)?)
            }
        })
    }
}

/// A claim's own answer as claim.lua returns it (after its rules' answers).
fn parse_outcome(out: &[&str]) -> Result<ClaimOutcome> {
    let bad = || StoreError::Protocol(format!("claim: {out:?}"));
    Ok(match out.first().copied() {
        Some("ok") => ClaimOutcome::Issued {
            serial: parse(out.get(1), "serial")?,
            claimed_ms: parse(out.get(2), "claimed_ms")?,
            expires_ms: parse(out.get(3), "expires_ms")?,
        },
        Some("not_found") => ClaimOutcome::NotFound,
        Some("not_active") => ClaimOutcome::NotActive {
            state: out.get(1).map(|s| (*s).to_owned()).ok_or_else(bad)?,
            starts_ms: (out.len() == 4)
                .then(|| parse(out.get(2), "starts_ms"))
                .transpose()?,
        },
        Some("sold_out") => ClaimOutcome::SoldOut,
        Some("not_eligible") => {
            ClaimOutcome::NotEligible(out.get(1).map(|s| (*s).to_owned()).ok_or_else(bad)?)
        }
        Some("limit") => {
            ClaimOutcome::Limit(out.get(1).and_then(|q| Quota::parse(q)).ok_or_else(bad)?)
        }
        Some("reused") => ClaimOutcome::KeyReused,
        _ => return Err(bad()),
    })
}

impl Store {
    /// Takes back a claim its caller was answered 503 for: only a fresh
    /// issue (not a replay) made without a client key (with one, the
    /// client's retry gets the code).
    fn take_back(&self, call: &ClaimCall, shared: &[String; 4], reply: &Answer) {
        let reply = reply.fields();
        let reply = reply.get(5 * call.rules.len()..).unwrap_or_default();
        let fresh =
            reply.first().is_some_and(|s| *s == "ok") && reply.last().is_some_and(|s| *s == "0");
        let serial = reply.get(1).and_then(|s| s.parse::<u64>().ok());
        let void = serial.and_then(|serial| Some((VoidClaim::of(call, shared, serial)?, serial)));
        if let (Some((void, serial)), true) = (void, fresh) {
            let store = self.clone();
            tokio::spawn(async move { store.void_claim(void, serial).await });
        }
    }

    /// Records `sold_out` under the client key of a claim on a stock shard
    /// (`claim.lua` left it out while the shard was refilled: mode 'k'),
    /// once the whole campaign is dry, so the key's retry gets the same
    /// answer as for any other refusal. A record already there wins.
    pub async fn record_sold_out(&self, keys: &CampaignKeys, idem: &Idem) -> Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(keys.idempotency(&idem.digest))
            .arg(format!("{}|sold_out", idem.fingerprint))
            .arg("EX")
            .arg(idem.ttl_secs)
            .arg("NX");
        self.query::<Option<String>>(cmd).await.map(|_| ())
    }

    /// Sends the campaign's queued claims, a batch at a time, until none
    /// waits (runs on the Redis runtime). `shared` are the campaign's keys
    /// every claim of the call uses (meta first: it names the lane).
    async fn flush_claims(self, shared: [String; 4]) {
        while let Some(batch) = self.claims.take(&shared[0]) {
            // The call's rule table: each distinct rule once (its prefix
            // as a key, its constants as one argument); a claim names its
            // rules by their place in it, with its field and member.
            let mut table: Vec<&RuleCall> = Vec::new();
            let places: Vec<Vec<usize>> = batch
                .iter()
                .map(|q| {
                    q.call
                        .rules
                        .iter()
                        .map(|r| match table.iter().position(|t| t.same_rule(r)) {
                            Some(j) => j + 1,
                            None => {
                                table.push(r);
                                table.len()
                            }
                        })
                        .collect()
                })
                .collect();
            let nkeys = shared.len() + table.len() + 4 * batch.len();
            let mut cmd = scripts::CLAIM_LIB.call(&self.functions_refused, nkeys);
            for k in &shared {
                cmd.arg(k);
            }
            for r in &table {
                cmd.arg(&*r.epochs);
            }
            for q in &batch {
                for k in &q.call.keys {
                    cmd.arg(k);
                }
            }
            cmd.arg(batch.len()).arg(table.len());
            for r in &table {
                r.write_constants(&mut cmd);
            }
            for (q, places) in batch.iter().zip(&places) {
                q.call.args.write(&mut cmd);
                // (A distinct rule's member only: the script reads the
                // others' members as ''.)
                for (r, j) in q.call.rules.iter().zip(places) {
                    cmd.arg(*j).arg(&r.field);
                    if r.kind == RuleKind::Distinct {
                        cmd.arg(&r.member);
                    }
                }
            }
            let mut conn = self.conn();
            let n = batch.len();
            let reply = scripts::run_claim(
                &scripts::CLAIM_LIB,
                &self.functions_refused,
                &cmd,
                &mut conn,
            )
            .await;
            // With a replica wait, a batch is acknowledged only once its
            // writes are on enough replicas; short of that, its claims are
            // answered 503 and taken back like a late reply.
            let unreplicated = match (&reply, self.wait) {
                (Ok(_), Some((replicas, _))) => {
                    let got = self.wait_durable(&conn, &shared[0]).await;
                    let short = !matches!(got, Ok(true));
                    if short {
                        metrics::counter!("stampede_claim_batches_unreplicated_total").increment(1);
                        tracing::warn!(
                            ?got,
                            replicas,
                            aof = self.wait_aof,
                            "a claim batch was not confirmed as redis_wait_replicas / redis_wait_aof ask"
                        );
                    }
                    short
                }
                _ => false,
            };
            let replies = batch::split(reply, n);
            metrics::histogram!("stampede_claim_batch_size").record(batch.len() as f64);
            for (q, reply) in batch.into_iter().zip(replies) {
                if unreplicated {
                    if let Ok(r) = reply {
                        self.take_back(&q.call, &shared, &r);
                    }
                    let _ = q.reply.send(Err(unreplicated_error()));
                    continue;
                }
                // Sending fails only when the caller stopped waiting (503).
                if let Err(Ok(late)) = q.reply.send(reply) {
                    self.take_back(&q.call, &shared, &late);
                }
            }
        }
    }
}
