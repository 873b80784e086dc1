//! The JSON-lines file sink: appends records, each chained to the previous one by SHA-256.
//!
//! With `chain: true` a record carries `prev` (the previous record's hash) and `hash`, the SHA-256 of the line
//! as written up to `,"hash"` with the closing brace, so editing or deleting a line breaks every later hash.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use tokio::sync::oneshot;

use super::record::Record;
use crate::metrics::Metrics;

/// What the writer task receives.
pub(super) enum Message {
    Record(Box<Record>),
    Flush(oneshot::Sender<()>),
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("audit message")
    }
}

pub(super) struct Writer {
    out: BufWriter<File>,
    chain: Option<String>,
}

/// How long a record may wait in memory before it is written.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(10);
/// Buffered bytes that are written at once.
const FLUSH_AT: usize = 48 * 1024;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl Writer {
    pub(super) fn open(path: &Path, chain: bool) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let prev = if chain { Some(last_hash(path)?.unwrap_or_else(|| GENESIS.to_owned())) } else { None };
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { out: BufWriter::with_capacity(64 * 1024, file), chain: prev })
    }

    /// Appends records as they come. Under load the file is written once per 10 ms (or per 48 KiB), not once
    /// per record; an explicit `flush` (and the end of the stream) writes at once.
    pub(super) async fn run(
        mut self,
        mut receiver: mpsc::UnboundedReceiver<Message>,
        healthy: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) {
        let mut pending_flush = Vec::new();
        let mut flush_at: Option<tokio::time::Instant> = None;
        loop {
            let first = match flush_at {
                Some(deadline) => tokio::select! {
                    message = receiver.recv() => message,
                    () = tokio::time::sleep_until(deadline) => {
                        self.flush(&healthy);
                        flush_at = None;
                        continue;
                    }
                },
                None => receiver.recv().await,
            };
            let Some(first) = first else { break };
            let mut next = Some(first);
            while let Some(message) = next {
                match message {
                    Message::Record(record) => {
                        let result = self.append(&record);
                        metrics.audit_record("file", result.is_ok());
                        if let Err(error) = result {
                            healthy.store(false, Ordering::Relaxed);
                            tracing::error!(%error, "audit record could not be written");
                        }
                    }
                    Message::Flush(done) => pending_flush.push(done),
                }
                next = receiver.try_recv().ok();
            }
            if !pending_flush.is_empty() || self.out.buffer().len() >= FLUSH_AT {
                self.flush(&healthy);
                flush_at = None;
                for done in pending_flush.drain(..) {
                    let _ = done.send(());
                }
            } else if flush_at.is_none() {
                flush_at = Some(tokio::time::Instant::now() + FLUSH_EVERY);
            }
        }
        self.flush(&healthy);
    }

    fn flush(&mut self, healthy: &AtomicBool) {
        match self.out.flush() {
            Ok(()) => healthy.store(true, Ordering::Relaxed),
            Err(error) => {
                healthy.store(false, Ordering::Relaxed);
                tracing::error!(%error, "audit file could not be flushed");
            }
        }
    }

    fn append(&mut self, record: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        if let Some(prev) = &mut self.chain {
            line.pop(); // the closing brace
            line.extend_from_slice(b",\"prev\":\"");
            line.extend_from_slice(prev.as_bytes());
            line.extend_from_slice(b"\"}");
            let hash = hex::encode(Sha256::digest(&line));
            line.pop();
            line.extend_from_slice(b",\"hash\":\"");
            line.extend_from_slice(hash.as_bytes());
            line.extend_from_slice(b"\"}");
            *prev = hash;
        }
        line.push(b'\n');
        self.out.write_all(&line)
    }
}

/// The hash of the last record of an existing file, to continue its chain.
fn last_hash(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::metadata(path) {
        // A pipe or terminal (e.g. /dev/stdout in a container) cannot be read back: its chain starts afresh.
        Ok(meta) if !meta.is_file() => return Ok(None),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    }
    let file = File::open(path)?;
    let mut last = None;
    for line in BufReader::new(file).lines() {
        let line = line?;
        if let Some((_, hash)) = split_hash(&line) {
            last = Some(hash.to_owned());
        }
    }
    Ok(last)
}

/// Splits a chained line into the hashed part (with its closing brace restored) and the hash.
fn split_hash(line: &str) -> Option<(String, &str)> {
    let start = line.rfind(",\"hash\":\"")?;
    let hash = line[start + 9..].strip_suffix("\"}")?;
    Some((format!("{}}}", &line[..start]), hash))
}

/// A break in the chain: the 1-based line number and what is wrong.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ChainError {
    pub line: usize,
    pub problem: String,
}

/// Verifies every record of `text` (one file's contents); returns the number of records.
pub fn verify_chain(text: &str) -> Result<usize, ChainError> {
    let mut prev = GENESIS.to_owned();
    let mut count = 0;
    for (index, line) in text.lines().enumerate() {
        let broken = |problem: &str| ChainError { line: index + 1, problem: problem.to_owned() };
        let (hashed, hash) = split_hash(line).ok_or_else(|| broken("no hash"))?;
        let expected_prev = format!(",\"prev\":\"{prev}\"}}");
        if !hashed.ends_with(&expected_prev) {
            return Err(broken("prev does not match the previous record's hash (a record was removed or reordered)"));
        }
        if hex::encode(Sha256::digest(hashed.as_bytes())) != hash {
            return Err(broken("hash does not match the record (the record was edited)"));
        }
        prev = hash.to_owned();
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_detects_edits_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut writer = Writer::open(&path, true).unwrap();
        for id in ["a", "b", "c"] {
            writer.append(&Record { id: id.into(), kind: "connect", decision: "allow", ..Record::default() }).unwrap();
        }
        writer.out.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(verify_chain(&text), Ok(3));

        let mut reopened = Writer::open(&path, true).unwrap();
        reopened.append(&Record { id: "d".into(), ..Record::default() }).unwrap();
        reopened.out.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(verify_chain(&text), Ok(4));

        let edited = text.replacen("\"id\":\"b\"", "\"id\":\"x\"", 1);
        assert_eq!(verify_chain(&edited).unwrap_err().line, 2);
        let lines: Vec<&str> = text.lines().collect();
        let removed = format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3]);
        assert_eq!(verify_chain(&removed).unwrap_err().line, 2);
    }
}
