//! The audit trail: one record per tunnel, request or refusal, written whatever the outcome.
//!
//! `request::finish` hands each record to the `Auditor`, which queues it (at most `audit.queue` records wait) for
//! one writer thread (`file.rs`) that chains, writes and syncs records in batches, off the async workers. With
//! `audit.on_failure: block` the caller waits until its record is written, and its response completes only then
//! (`Release`); with `continue` nothing waits, and a record that does not fit the queue is dropped and counted. A
//! sink that fails, stalls or fills up is unhealthy (`Health`): with `block`, admission refuses new requests and
//! `/readyz` says why, until it drains.

mod checkpoint;
mod file;
pub mod keys;
mod queue;
mod record;
pub mod rotate;
pub mod siem;
mod verify;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use prometheus::IntCounter;

pub use checkpoint::signature_holds;
pub use file::{torn_path, Torn};
pub use queue::{install_park_hook, worker_parks, Health, STALL_AFTER};
pub use record::{ActionRecord, AlertDelivery, AlertRecord, CheckpointRecord, Entry, OutcomeRecord, Record};
pub use verify::{
    read_checkpoints, verify, verify_chain, verify_series, verify_signatures, verify_with, ChainError, Check,
    CheckpointCheck, SeriesReport, Verified, VerifyError,
};

use crate::config::file::AuditFailure;
use crate::metrics::{AuditSample, Metrics};
use queue::Queue;

/// The file sink's name in metrics, logs and refusals.
const FILE_SINK: &str = "file";

/// Under `audit.on_failure: continue`, how long records are gathered before they are written.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);

/// The handle every connection holds to emit records.
pub struct Auditor {
    sink: Option<Sink>,
    on_failure: AuditFailure,
}

struct Sink {
    queue: Arc<Queue>,
    /// Under `audit.on_failure: block` with a regular file synced at an interval: the writer, for the request
    /// tasks that write a batch themselves (`queue.rs`, leaders).
    committer: Option<Arc<file::Committer>>,
    path: PathBuf,
    /// `tollgate_audit_records_total{sink="file",result="dropped"}`.
    dropped: IntCounter,
    /// The SIEM sinks' delivery threads (`audit.siem`).
    deliveries: siem::Deliveries,
}

/// A caller that became the leader of the next batch: it leads, or (dropped before, e.g. its response cancelled)
/// resigns, leaving the records to the writer thread.
struct Leadership<'a> {
    queue: &'a Queue,
    committer: Option<&'a file::Committer>,
}

impl Leadership<'_> {
    fn lead(mut self) {
        if let Some(committer) = self.committer.take() {
            committer.lead(self.queue);
        }
    }
}

impl Drop for Leadership<'_> {
    fn drop(&mut self) {
        if self.committer.is_some() {
            self.queue.resign();
        }
    }
}

/// Whether the caller of `Auditor::record` may wait for its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Under `audit.on_failure: block`, until the record is written.
    UntilWritten,
    /// Never: the record is queued if there is room, dropped and counted if not. For the refusals the sink's
    /// own failure causes, which could not otherwise be answered while it lasts.
    Never,
}

/// What a recorded request's response may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "under audit.on_failure: block, a response whose record was not written must not complete"]
pub enum Release {
    /// Complete it: its record is written, or the sink's policy does not hold responses.
    Complete,
    /// Cut it: shutdown stopped waiting before its record was written.
    Cut,
}

/// An unhealthy sink, as `/readyz` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unhealthy {
    pub sink: &'static str,
    pub path: PathBuf,
    pub health: Health,
    /// `audit.on_failure: block`: new requests are refused meanwhile.
    pub refusing: bool,
}

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "audit sink {} ({}) is {}; ", self.sink, self.path.display(), self.health)?;
        if self.refusing {
            f.write_str("requests are refused until it drains (audit.on_failure: block)")
        } else {
            f.write_str("records that do not fit the queue are dropped (audit.on_failure: continue)")
        }
    }
}

impl Auditor {
    /// Opens the sink (creating the file and its directory, setting aside a torn last line) and starts the
    /// writer thread.
    pub fn start(config: &crate::config::Audit, metrics: &Metrics) -> std::io::Result<Self> {
        let Some(file) = &config.file else {
            return Ok(Self { sink: None, on_failure: config.on_failure });
        };
        let (mut writer, torn) = file::Writer::open(&file.path, file.chain, file.sync)?;
        if let Some(path) = &file.key {
            writer = writer.keyed(keys::load_chain_key(path).map_err(std::io::Error::other)?);
        }
        if file.rotate_size.is_some() || file.rotate_daily {
            let naming = rotate::Naming::new(&file.path);
            let compressor = rotate::Compressor::new(naming, file.retention, metrics.audit_files_deleted.clone());
            writer = writer.rotating(file::Rotation {
                size: file.rotate_size,
                daily: file.rotate_daily,
                compressor: compressor.start()?,
                rotations: metrics.audit_rotations.clone(),
                retry_after: None,
            })?;
        }
        if let Some(checkpoints) = &config.checkpoints {
            let key = keys::load_signing_key(&checkpoints.signing_key).map_err(std::io::Error::other)?;
            let sidecar_path = rotate::Naming::new(&file.path).checkpoints();
            let sidecar = std::fs::OpenOptions::new().create(true).append(true).open(&sidecar_path)?;
            writer = writer.checkpointing(file::Checkpoints {
                every: checkpoints.every,
                key,
                sidecar,
                written: metrics.audit_checkpoints.clone(),
                last: std::time::Instant::now(),
                unwritten: Vec::new(),
                at: (0, 0),
            });
        }
        if let Some(torn) = &torn {
            metrics.audit_torn(FILE_SINK).inc();
            tracing::warn!(
                file = %file.path.display(),
                offset = torn.offset,
                bytes = torn.bytes,
                kept_in = %torn.kept_in.display(),
                "the audit file ended in a torn line (a write cut short by a crash): it is set aside, and the chain \
                 continues from the last complete record"
            );
        }
        // Nobody waits for records under `continue`: they are gathered for a moment, for fewer, larger writes.
        let gather = (config.on_failure == AuditFailure::Continue).then_some(GATHER);
        // Callers wait under `block`: with the runtime's park hook, the writer is woken once a burst is queued.
        let defer = gather.is_none() && queue::park_hook_installed();
        // Callers wait under `block`: with a file a write(2) to the page cache (no fsync per batch), a caller that
        // finds the writer asleep writes the batch itself, sparing two thread switches per batch.
        let leading = gather.is_none() && writer.may_be_led();
        let queue = Queue::with_leading(config.queue, gather, defer, leading);
        let written = metrics.audit_counter(FILE_SINK, "ok");
        let (spools, deliveries) = siem::start(&config.siem, config.pseudonymize.as_ref(), metrics)?;
        spools.catch_up(&file.path)?;
        let committer = Arc::new(file::Committer::new(writer, written, spools));
        let (writer_queue, writer_committer) = (queue.clone(), committer.clone());
        std::thread::Builder::new()
            .name("tollgate-audit".to_owned())
            .spawn(move || writer_committer.run(&writer_queue))?;
        let dropped = metrics.audit_counter(FILE_SINK, "dropped");
        let committer = leading.then_some(committer);
        let sink = Sink { queue, committer, path: file.path.clone(), dropped, deliveries };
        Ok(Self { sink: Some(sink), on_failure: config.on_failure })
    }

    /// Hands one record to the sink. Under `audit.on_failure: block` (and `Wait::UntilWritten`) waits for room in
    /// the queue, then until the record is written; otherwise never waits.
    pub fn record(&self, record: impl Into<Entry>, wait: Wait) -> impl Future<Output = Release> + Send + '_ {
        self.record_entry(record.into(), wait)
    }

    async fn record_entry(&self, record: Entry, wait: Wait) -> Release {
        let Some(sink) = &self.sink else { return Release::Complete };
        if self.holds_responses() && wait == Wait::UntilWritten {
            let Some(queued) = sink.queue.push(record, sink.committer.is_some()).await else { return Release::Cut };
            if let (true, Some(committer)) = (queued.leads, &sink.committer) {
                let leadership = Leadership { queue: &sink.queue, committer: Some(committer) };
                // The other ready tasks queue their records first: one write takes them all.
                tokio::task::yield_now().await;
                leadership.lead();
            }
            return match sink.queue.written(queued.sequence).await {
                true => Release::Complete,
                false => Release::Cut,
            };
        }
        if sink.queue.try_push(record).is_err() {
            sink.dropped.inc();
        }
        Release::Complete
    }

    /// Hands one record to the sink without waiting, from code that cannot wait (a response body being relayed).
    /// Under `audit.on_failure: block` it is queued even past the queue's bound, never dropped: the response it
    /// belongs to waits for its own record, written after this one. Otherwise dropped and counted when full.
    pub fn record_now(&self, record: impl Into<Entry>) {
        let Some(sink) = &self.sink else { return };
        let record = record.into();
        if self.holds_responses() {
            sink.queue.force_push(record);
        } else if sink.queue.try_push(record).is_err() {
            sink.dropped.inc();
        }
    }

    /// True when responses wait for their records: a sink with `audit.on_failure: block`.
    pub fn holds_responses(&self) -> bool {
        self.sink.is_some() && self.on_failure == AuditFailure::Block
    }

    /// The sink that cannot take records now, when `audit.on_failure: block` says to refuse requests meanwhile.
    pub fn unavailable_sink(&self) -> Option<&'static str> {
        let sink = self.sink.as_ref()?;
        (self.on_failure == AuditFailure::Block && !sink.queue.healthy()).then_some(FILE_SINK)
    }

    /// What is wrong with the sink, if anything.
    pub fn unhealthy(&self) -> Option<Unhealthy> {
        let sink = self.sink.as_ref()?;
        match sink.queue.health() {
            Health::Healthy => None,
            health => Some(Unhealthy {
                sink: FILE_SINK,
                path: sink.path.clone(),
                health,
                refusing: self.on_failure == AuditFailure::Block,
            }),
        }
    }

    /// The queue and health, for `/metrics`.
    pub fn sample(&self) -> Option<AuditSample> {
        let sink = self.sink.as_ref()?;
        Some(AuditSample { sink: FILE_SINK, queued: sink.queue.unwritten(), healthy: sink.queue.healthy() })
    }

    /// Waits until every record queued so far is written (no bound).
    pub async fn flush(&self) {
        if let Some(sink) = &self.sink {
            sink.queue.flush().await;
        }
    }

    /// Stops every wait for a record: responses still waiting for theirs are cut (shutdown, after the grace
    /// period).
    pub fn abandon(&self) {
        if let Some(sink) = &self.sink {
            sink.queue.abandon();
        }
    }

    /// Writes what is queued, syncs and stops the writer, waiting until `deadline` at most; returns the number of
    /// records not written (a stalled sink keeps them). Later records are not written.
    pub async fn close(&self, deadline: tokio::time::Instant) -> u64 {
        let Some(sink) = &self.sink else { return 0 };
        let unwritten = sink.queue.close(deadline).await;
        sink.queue.abandon();
        sink.deliveries.stop(deadline).await;
        unwritten
    }
}

impl Drop for Auditor {
    fn drop(&mut self) {
        // The writer thread writes what is queued and ends; a failing one stops retrying.
        if let Some(sink) = &self.sink {
            sink.queue.close_now();
            sink.queue.abandon();
            sink.deliveries.stop_now();
        }
    }
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("path", &self.sink.as_ref().map(|sink| &sink.path))
            .field("on_failure", &self.on_failure)
            .finish_non_exhaustive()
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn timestamp(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}
