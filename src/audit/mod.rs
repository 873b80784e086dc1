//! The audit record: one JSON object per tunnel, request or deny, written whatever the outcome.
//!
//! Records go through a channel to a single writer task (`file.rs`), which hash-chains and appends them, so
//! the request path never waits on the disk.

mod file;
mod record;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

pub use file::{verify_chain, ChainError};
pub use record::Record;

use file::Message;

use crate::config::file::AuditFailure;
use crate::metrics::Metrics;

/// The handle every connection holds to emit records.
#[derive(Debug)]
pub struct Auditor {
    sender: Option<mpsc::UnboundedSender<Message>>,
    healthy: Arc<AtomicBool>,
    on_failure: AuditFailure,
}

impl Auditor {
    /// Opens the sink (creating the file and its directory) and starts the writer task.
    pub fn start(
        config: &crate::config::Audit,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Self, Option<tokio::task::JoinHandle<()>>)> {
        let healthy = Arc::new(AtomicBool::new(true));
        let Some(sink) = &config.file else {
            return Ok((Self { sender: None, healthy, on_failure: config.on_failure }, None));
        };
        let writer = file::Writer::open(&sink.path, sink.chain)?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(writer.run(receiver, healthy.clone(), metrics));
        Ok((Self { sender: Some(sender), healthy, on_failure: config.on_failure }, Some(task)))
    }

    /// Queues one record.
    pub fn record(&self, record: Record) {
        if let Some(sender) = &self.sender {
            if sender.send(Message::Record(Box::new(record))).is_err() {
                self.healthy.store(false, Ordering::Relaxed);
            }
        }
    }

    /// True when records cannot be written and `audit.on_failure: block` says to refuse requests.
    pub fn refuses_requests(&self) -> bool {
        self.on_failure == AuditFailure::Block && !self.healthy.load(Ordering::Relaxed)
    }

    /// Waits until every record queued so far is on disk.
    pub async fn flush(&self) {
        if let Some(sender) = &self.sender {
            let (done, wait) = oneshot::channel();
            if sender.send(Message::Flush(done)).is_ok() {
                let _ = wait.await;
            }
        }
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn timestamp(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}
