//! The audit record: one JSON object per tunnel, request or deny, written whatever the outcome.
//!
//! Records go through a channel to a single writer task (`file.rs`), which hash-chains and appends them, so
//! the request path never waits on the disk.

mod file;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

pub use file::{verify_chain, ChainError};

use crate::config::file::AuditFailure;
use crate::metrics::Metrics;

/// One audit record; field names are the contract in DESIGN.md.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    pub ts: String,
    pub id: String,
    pub kind: &'static str,
    pub listener: Arc<str>,
    pub client: String,
    pub user: Option<Arc<str>>,
    pub team: Option<Arc<str>>,
    pub method: String,
    pub host: String,
    pub port: u16,
    pub path: Option<String>,
    pub decision: &'static str,
    pub rule: Option<Arc<str>>,
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::llm::usage::Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dlp: Vec<Arc<str>>,
    pub error: Option<String>,
}

enum Message {
    Record(Box<Record>),
    Flush(oneshot::Sender<()>),
}

/// The handle every connection holds to emit records.
#[derive(Debug)]
pub struct Auditor {
    sender: Option<mpsc::UnboundedSender<Message>>,
    healthy: Arc<AtomicBool>,
    on_failure: AuditFailure,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("audit message")
    }
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
