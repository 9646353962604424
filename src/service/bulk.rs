//! Bulk codes (`POST /v1/campaigns/{id}/codes`): reserve one range of serials
//! against stock in one script call, then mint and stream its codes as CSV.
//!
//! - Reservation: `lua/reserve_codes.lua` checks the campaign (exists, is
//!   `active` or `paused`, has `count` left), charges `issued`, records the
//!   batch in `st:{c}:batches` (which redeem and validate read), the audit
//!   entry, the stock alerts and the idempotency record, atomically.
//! - Idempotency: the client's `Idempotency-Key` is first owned by this
//!   request ([`Idempotency::own`]); the campaign-scoped record the script
//!   writes says `pending` (with a lease of [`LEASE_MS`]) while the codes are
//!   streamed and `done` once every line was handed to the response. A retry
//!   that finds it `done`, or `pending` past its lease (the first stream
//!   died), streams the same batch again and reserves nothing; one that finds
//!   it `pending` within the lease is `409 request_in_progress`.
//! - Streaming: a blocking task mints [`CHUNK_LINES`] lines at a time into a
//!   channel of [`CHANNEL_CHUNKS`]; the response reads from it. Memory is
//!   bounded by a few chunks whatever the count, minting overlaps the socket
//!   writes, and a client that goes away stops the minting.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

use crate::domain::campaign::CampaignId;
use crate::domain::clock::{Clock, from_ms, rfc3339};
use crate::domain::code::{CODE_LEN, CodeError, CodeKey, CodePayload};
use crate::error::ApiError;
use crate::service::RequestContext;
use crate::service::campaigns::parse_campaign_id;
use crate::service::catalog::{CampaignInfo, Catalog};
use crate::service::idempotency::Idempotency;
use crate::store::Store;
use crate::store::bulk::{Batch, ReserveIdem, ReserveOutcome};
use crate::store::keys::CampaignKeys;

/// The largest reservation one request may ask for.
pub const MAX_COUNT: i64 = 1_000_000;
/// Lines minted per chunk of the response (about 100 KB).
pub const CHUNK_LINES: usize = 2_000;
/// Chunks minted ahead of the socket.
pub const CHANNEL_CHUNKS: usize = 4;
/// How long a reservation being streamed keeps a duplicate out.
pub const LEASE_MS: u64 = 30_000;
/// The CSV's first line.
pub const CSV_HEADER: &str = "code,campaign_id,expires_at\n";

/// Why a reservation was refused.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error(transparent)]
    Api(#[from] ApiError),
    /// `409 sold_out`, saying how many are left.
    #[error("campaign {id} has {remaining} codes left, fewer than the {asked} asked for")]
    NotEnoughStock {
        id: String,
        remaining: u64,
        asked: u32,
    },
}

/// A parsed request.
#[derive(Debug, Clone)]
pub struct BulkCommand {
    pub campaign: CampaignId,
    pub count: u32,
}

impl BulkCommand {
    /// `count` must be 1..=[`MAX_COUNT`]; an unknown id is `404`.
    pub fn parse(raw_id: &str, count: Option<i64>) -> Result<Self, ApiError> {
        let campaign = parse_campaign_id(raw_id)?;
        let count = match count {
            Some(n) if (1..=MAX_COUNT).contains(&n) => n as u32,
            Some(_) => {
                return Err(ApiError::field(
                    "count",
                    format!("must be 1 to {MAX_COUNT}"),
                ));
            }
            None => return Err(ApiError::field("count", "is required")),
        };
        Ok(Self { campaign, count })
    }
}

#[derive(Debug)]
pub struct BulkService {
    store: Store,
    catalog: Arc<Catalog>,
    idem: Idempotency,
    codes: CodeKey,
    clock: Arc<dyn Clock>,
}

impl BulkService {
    pub fn new(
        store: Store,
        catalog: Arc<Catalog>,
        idem: Idempotency,
        codes: CodeKey,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            catalog,
            idem,
            codes,
            clock,
        }
    }

    /// Reserves the codes (or finds the reservation of an earlier attempt of
    /// the same request); the answer streams them.
    pub async fn reserve(
        &self,
        cmd: &BulkCommand,
        ctx: &RequestContext,
    ) -> Result<BulkCodes, BulkError> {
        let id = &cmd.campaign;
        let info = self
            .catalog
            .get(id)
            .await?
            .ok_or_else(|| ApiError::CampaignNotFound(id.to_string()))?;
        let count = cmd.count.to_string();
        let fingerprint = self
            .idem
            .digest(&[b"codes", id.as_str().as_bytes(), count.as_bytes()]);
        self.idem.own(&self.store, ctx, &fingerprint).await?;
        let rec = self.idem.record(ctx, fingerprint);
        let idem = ReserveIdem {
            digest: rec.digest,
            fingerprint: rec.fingerprint,
            ttl_secs: rec.ttl_secs,
            lease_ms: LEASE_MS,
            own: ctx.idempotency_key.is_none(),
        };
        // A sharded campaign reserves in shard 0 (always the same one, so a
        // retry finds its reservation there): its unclaimed stock is
        // gathered there first, then one range of its serials is taken.
        let keys = if info.shards > 1 {
            let _one = info.refill.lock().await;
            self.store
                .gather_stock(&info.keys, (&info.id, info.shards), 0, i64::from(cmd.count))
                .await
                .map_err(ApiError::from)?;
            info.shard_keys[0].clone()
        } else {
            info.keys.clone()
        };
        let outcome = self
            .store
            .reserve_codes(&keys, self.clock.now_ms(), cmd.count, &ctx.caller, &idem)
            .await
            .map_err(ApiError::from)?;
        let label = match &outcome {
            ReserveOutcome::Reserved(_) => "reserved",
            ReserveOutcome::Replay(_) => "replay",
            ReserveOutcome::InProgress => "request_in_progress",
            ReserveOutcome::KeyReused => "idempotency_key_reused",
            ReserveOutcome::NotFound => "campaign_not_found",
            ReserveOutcome::NotActive(_) => "campaign_not_active",
            ReserveOutcome::SoldOut { .. } => "sold_out",
        };
        metrics::counter!("stampede_bulk_reservations_total", "outcome" => label).increment(1);
        let (batch, replay) = match outcome {
            ReserveOutcome::Reserved(b) => (b, false),
            ReserveOutcome::Replay(b) => (b, true),
            ReserveOutcome::InProgress => return Err(ApiError::RequestInProgress.into()),
            ReserveOutcome::KeyReused => return Err(ApiError::IdempotencyKeyReused.into()),
            ReserveOutcome::NotFound => {
                return Err(ApiError::CampaignNotFound(id.to_string()).into());
            }
            ReserveOutcome::NotActive(state) => {
                return Err(ApiError::CampaignNotActive {
                    id: id.to_string(),
                    state,
                }
                .into());
            }
            ReserveOutcome::SoldOut { remaining } => {
                return Err(BulkError::NotEnoughStock {
                    id: id.to_string(),
                    remaining,
                    asked: cmd.count,
                });
            }
        };
        if batch.count != u64::from(cmd.count) {
            tracing::error!(
                ?batch,
                asked = cmd.count,
                "a reservation does not match its request"
            );
            return Err(ApiError::Internal.into());
        }
        if !replay {
            metrics::counter!("stampede_bulk_codes_total").increment(batch.count);
            if info.shards > 1 {
                // The shard's script wrote its audit entry in the shard's
                // slot; the campaign's trail gets one too (a second write:
                // lost only if this instance dies right here).
                let detail = format!(
                    "count={} first={} shard=0 of {}",
                    batch.count,
                    crate::store::shards::global_serial(batch.first, 0, info.shards),
                    info.shards
                );
                let audit = self
                    .store
                    .campaign_audit(
                        &info.keys,
                        id.as_str(),
                        self.clock.now_ms(),
                        &ctx.caller,
                        "campaign.codes",
                        &detail,
                    )
                    .await;
                if let Err(e) = audit {
                    tracing::warn!(error = %e, campaign = %id, "bulk codes not in the campaign's audit trail");
                }
            }
        }
        tracing::info!(campaign = %id, first = batch.first, count = batch.count, by = %ctx.caller, replay, "bulk codes");
        Ok(BulkCodes {
            lines: CsvLines::new(self.codes.clone(), &info, batch, CHUNK_LINES),
            batch,
            replay,
            finish: Finish {
                store: self.store.clone(),
                keys,
                info,
                idem,
                count: cmd.count,
                actor: ctx.caller.clone(),
                clock: self.clock.clone(),
            },
        })
    }
}

/// Marks the reservation's record `done` once its stream was produced.
struct Finish {
    store: Store,
    /// Where the reservation is (the campaign's keys, or its shard 0's).
    keys: CampaignKeys,
    info: Arc<CampaignInfo>,
    idem: ReserveIdem,
    count: u32,
    actor: String,
    clock: Arc<dyn Clock>,
}

impl Finish {
    async fn run(self) {
        let done = self
            .store
            .codes_streamed(
                &self.keys,
                self.clock.now_ms(),
                self.count,
                &self.actor,
                &self.idem,
            )
            .await;
        // Not fatal: the record stays `pending`, and a retry after the lease
        // streams the same batch again.
        if let Err(e) = done {
            tracing::warn!(error = %e, campaign = %self.info.id, "bulk codes not marked done");
        }
    }
}

/// A reservation and its codes, ready to stream.
pub struct BulkCodes {
    pub batch: Batch,
    /// The batch of an earlier attempt of the same request.
    pub replay: bool,
    lines: CsvLines,
    finish: Finish,
}

impl std::fmt::Debug for BulkCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkCodes")
            .field("campaign", &self.finish.info.id)
            .field("batch", &self.batch)
            .field("replay", &self.replay)
            .finish()
    }
}

impl BulkCodes {
    pub fn campaign_id(&self) -> &str {
        &self.finish.info.id
    }

    /// `<campaign>-codes-<first>-<last>.csv` (the same for a retry).
    pub fn filename(&self) -> String {
        format!(
            "{}-codes-{}-{}.csv",
            self.campaign_id(),
            self.batch.first,
            self.batch.first + self.batch.count - 1
        )
    }

    /// The CSV, chunk by chunk: minted on a blocking task a few chunks ahead
    /// of the reader; when the last chunk has been taken, the reservation is
    /// marked `done`. Dropping the stream stops the minting (the record stays
    /// `pending` until its lease runs out).
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, CodeError>> + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL_CHUNKS);
        let lines = self.lines;
        let producer = tokio::task::spawn_blocking(move || {
            for chunk in lines {
                let failed = chunk.is_err();
                if tx.blocking_send(chunk).is_err() || failed {
                    return false;
                }
            }
            true
        });
        struct State {
            rx: tokio::sync::mpsc::Receiver<Result<Bytes, CodeError>>,
            producer: tokio::task::JoinHandle<bool>,
            finish: Finish,
        }
        let state = State {
            rx,
            producer,
            finish: self.finish,
        };
        futures_util::stream::unfold(Some(state), |state| async move {
            let mut s = state?;
            match s.rx.recv().await {
                Some(Ok(chunk)) => Some((Ok(chunk), Some(s))),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "minting a bulk code failed");
                    Some((Err(e), None))
                }
                None => {
                    if matches!(s.producer.await, Ok(true)) {
                        s.finish.run().await;
                    }
                    None
                }
            }
        })
    }
}

/// The CSV lines of one batch, [`CsvLines::new`]'s `chunk_lines` at a time
/// (the header is the first chunk's first line). Pure CPU: mint + format.
#[derive(Debug)]
pub struct CsvLines {
    key: CodeKey,
    campaign_no: u32,
    /// `,<campaign id>,<expires_at>\n`: the same for every line of a batch.
    suffix: String,
    next: u64,
    end: u64,
    /// A code's serial is `local * stride` (a sharded campaign's shard 0:
    /// `stride` = its shard count, `store::shards::global_serial`; else 1).
    stride: u64,
    header: bool,
    chunk_lines: usize,
}

impl CsvLines {
    pub fn new(key: CodeKey, info: &CampaignInfo, batch: Batch, chunk_lines: usize) -> Self {
        Self {
            stride: u64::from(info.shards.max(1)),
            ..Self::for_campaign(key, info.no, &info.id, batch, chunk_lines)
        }
    }

    /// The lines of `batch` of campaign number `campaign_no`, id `campaign_id`.
    pub fn for_campaign(
        key: CodeKey,
        campaign_no: u32,
        campaign_id: &str,
        batch: Batch,
        chunk_lines: usize,
    ) -> Self {
        let expires = if batch.expires_ms > 0 {
            rfc3339(from_ms(batch.expires_ms))
        } else {
            String::new()
        };
        Self {
            key,
            campaign_no,
            suffix: format!(",{campaign_id},{expires}\n"),
            next: batch.first,
            end: batch.first + batch.count,
            stride: 1,
            header: true,
            chunk_lines: chunk_lines.max(1),
        }
    }
}

impl Iterator for CsvLines {
    type Item = Result<Bytes, CodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end && !self.header {
            return None;
        }
        let n = (self.end - self.next).min(self.chunk_lines as u64);
        let line = CODE_LEN + self.suffix.len();
        let mut buf = String::with_capacity(n as usize * line + CSV_HEADER.len());
        if std::mem::take(&mut self.header) {
            buf.push_str(CSV_HEADER);
        }
        for serial in self.next..self.next + n {
            let code = match self.key.mint(CodePayload {
                campaign_no: self.campaign_no,
                serial: serial * self.stride,
            }) {
                Ok(c) => c,
                Err(e) => {
                    self.next = self.end;
                    return Some(Err(e));
                }
            };
            buf.push_str(&code);
            buf.push_str(&self.suffix);
        }
        self.next += n;
        Some(Ok(Bytes::from(buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(first: u64, count: u64, chunk: usize) -> Vec<String> {
        let batch = Batch {
            first,
            count,
            expires_ms: 0,
        };
        CsvLines::for_campaign(CodeKey::new([7; 32]), 3, "c-1", batch, chunk)
            .map(|c| String::from_utf8(c.unwrap().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn chunks_hold_the_header_then_every_serial_once() {
        let chunks = lines(11, 5, 2);
        assert_eq!(chunks.len(), 3);
        let all = chunks.concat();
        let mut rows = all.lines();
        assert_eq!(rows.next(), Some("code,campaign_id,expires_at"));
        let key = CodeKey::new([7; 32]);
        let serials: Vec<u64> = rows
            .map(|r| {
                let (code, rest) = r.split_once(',').unwrap();
                assert_eq!(rest, "c-1,");
                key.verify(code).unwrap().serial
            })
            .collect();
        assert_eq!(serials, vec![11, 12, 13, 14, 15]);
    }

    #[test]
    fn expiry_is_rfc3339_on_every_line() {
        let batch = Batch {
            first: 1,
            count: 1,
            expires_ms: 1_700_000_000_000,
        };
        let text: Vec<_> = CsvLines::for_campaign(CodeKey::new([7; 32]), 3, "c-1", batch, 10)
            .map(|c| c.unwrap())
            .collect();
        let text = String::from_utf8(text.concat()).unwrap();
        assert!(text.ends_with(",c-1,2023-11-14T22:13:20.000Z\n"), "{text}");
    }

    #[test]
    fn count_is_bounded() {
        assert!(BulkCommand::parse("c-1", Some(0)).is_err());
        assert!(BulkCommand::parse("c-1", Some(MAX_COUNT + 1)).is_err());
        assert!(BulkCommand::parse("c-1", None).is_err());
        assert_eq!(
            BulkCommand::parse("c-1", Some(MAX_COUNT)).unwrap().count,
            1_000_000
        );
    }
}
