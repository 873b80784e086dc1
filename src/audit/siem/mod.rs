//! SIEM delivery (`audit.siem`): every batch the audit writer writes to the file is appended to each sink's spool
//! (`spool.rs`) before its records count as written; one thread per sink reads its spool and delivers in order, at
//! least once, retrying with backoff (`deliver.rs`), in the sink's wire shape (`event.rs`).
//!
//! The request path never waits for a SIEM: only for the local spool append (in memory: the spool's file is
//! written by the delivery, or the audit writer's sync), and that only while a spool with `on_full: block` is full
//! (the audit sink is unhealthy meanwhile, which `/readyz` and admission see). A record counts as written once it
//! is in the audit file and in every spool, in memory or on disk: a crash can take from a spool only records the
//! file holds, which `Spools::catch_up` spools again on the next start.

mod deliver;
pub mod event;
pub mod spool;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio_util::sync::CancellationToken;

use super::queue::Queue;
use crate::config::siem::{Pseudonymize, SiemSink};
use crate::metrics::Metrics;
use spool::{Appended, Spool, BLOCK};

/// The writer's side: every sink's spool, and the blocks the batches are copied into for them.
#[derive(Default, Clone)]
pub(super) struct Spools(Vec<Arc<Spool>>, Arc<Mutex<Blocks>>);

/// Blocks of `BLOCK` bytes that batches are copied into, the one being filled last. A block is taken again once
/// the spools have let go of every batch in it: its pages stay mapped, where fresh memory for each batch (freed
/// by the delivery threads) costs a page fault per page on the request path.
#[derive(Default)]
pub(super) struct Blocks(VecDeque<BytesMut>);

/// Blocks kept at most (8 MiB): beyond, the oldest is left to be freed with its last batch.
const BLOCKS_KEPT: usize = 64;

/// The delivery side: one thread per sink.
pub(super) struct Deliveries {
    stop: CancellationToken,
    finished: Vec<tokio::sync::watch::Receiver<bool>>,
}

/// Opens every sink's spool and starts its delivery thread.
pub(super) fn start(
    sinks: &[SiemSink],
    pseudonymize: Option<&Pseudonymize>,
    metrics: &Metrics,
) -> std::io::Result<(Spools, Deliveries)> {
    let stop = CancellationToken::new();
    let mut spools = Vec::with_capacity(sinks.len());
    let mut finished = Vec::with_capacity(sinks.len());
    for sink in sinks {
        let sink_metrics = metrics.siem(&sink.name);
        let spool = Spool::open(sink.name.clone(), &sink.spool, sink_metrics.clone()).map_err(|error| {
            std::io::Error::new(error.kind(), format!("SIEM spool {}: {error}", sink.spool.dir.display()))
        })?;
        let undelivered = spool.undelivered();
        if undelivered > 0 {
            tracing::info!(sink = %sink.name, bytes = undelivered, "SIEM spool holds undelivered records: resuming");
        }
        finished.push(deliver::spawn(sink.clone(), spool.clone(), pseudonymize.cloned(), sink_metrics, stop.clone())?);
        spools.push(spool);
    }
    Ok((Spools(spools, Arc::default()), Deliveries { stop, finished }))
}

/// How much of the audit file's end `catch_up` reads at most, looking for a spool's last record.
const CATCH_UP_WINDOW: u64 = 64 << 20;

impl Spools {
    /// Appends to each spool the records of the audit file after the spool's last one: those a crash left in
    /// the file between its write and the spool's. A spool that is empty (a new sink) starts with the next record.
    /// With the audit going to a pipe or a terminal there is no file to catch up from: appends are written to the
    /// spools at once, as the records' only copy on this host.
    pub(super) fn catch_up(&self, file: &Path) -> std::io::Result<()> {
        let regular = std::fs::metadata(file).is_ok_and(|metadata| metadata.is_file());
        for spool in &self.0 {
            if !regular {
                spool.write_through();
            }
            let Some(last) = spool.last_line()? else { continue };
            match records_after(file, &last)? {
                Some(missing) if missing.is_empty() => {}
                Some(missing) => {
                    let records = memchr::memchr_iter(b'\n', &missing).count();
                    if spool.append(&Bytes::from(missing))? == Appended::Full {
                        tracing::error!(sink = %spool.name(), records,
                            "the SIEM spool is full: records the file got before a crash are not spooled");
                    } else {
                        tracing::warn!(sink = %spool.name(), records,
                            "records written to the audit file before a crash were missing from the SIEM spool: spooled");
                    }
                }
                None => tracing::warn!(sink = %spool.name(), file = %file.display(),
                    "the SIEM spool's last record is not near the end of the audit file: nothing to catch up from"),
            }
        }
        Ok(())
    }

    /// Appends the batch's lines to every spool, retrying a failing or waiting for a full one (the sink is marked
    /// failing meanwhile, which `/readyz` tells); false when shutdown gave up.
    pub(super) fn append(&self, lines: &[u8], queue: &Queue) -> bool {
        self.append_from(0, lines, queue)
    }

    /// Appends the batch's lines once to each spool in turn, without retrying or waiting: `Err(n)` when spool
    /// number `n` did not take them (full or failing; those before it did), for `append_from` to finish. An
    /// append is a hand-off in memory (`spool.rs`): one copy of the batch, shared by the spools.
    pub(super) fn try_append(&self, lines: &[u8]) -> Result<(), usize> {
        if self.0.is_empty() {
            return Ok(());
        }
        let lines = self.shared(lines);
        for (index, spool) in self.0.iter().enumerate() {
            if !matches!(spool.append(&lines), Ok(Appended::Written)) {
                return Err(index);
            }
        }
        Ok(())
    }

    /// The batch as `Bytes` for every spool: one copy, into the current block, or a free one when it is full.
    fn shared(&self, lines: &[u8]) -> Bytes {
        if lines.len() > BLOCK {
            return Bytes::copy_from_slice(lines);
        }
        // The blocks change whole under the lock: a panic cannot leave them half changed.
        let Blocks(blocks) = &mut *self.1.lock().unwrap_or_else(PoisonError::into_inner);
        if blocks.back().is_none_or(|block| block.capacity() < lines.len()) {
            match blocks.iter_mut().position(|block| block.try_reclaim(BLOCK)) {
                Some(free) => {
                    let block = blocks.remove(free).expect("found just above");
                    blocks.push_back(block);
                }
                None => {
                    if blocks.len() >= BLOCKS_KEPT {
                        blocks.pop_front();
                    }
                    blocks.push_back(BytesMut::with_capacity(BLOCK));
                }
            }
        }
        let block = blocks.back_mut().expect("one is there or was added just above");
        block.extend_from_slice(lines);
        block.split().freeze()
    }

    /// `append`, from spool number `first` on.
    pub(super) fn append_from(&self, first: usize, lines: &[u8], queue: &Queue) -> bool {
        if self.0.len() <= first {
            return true;
        }
        let lines = self.shared(lines);
        for spool in self.0.iter().skip(first) {
            let mut failures = 0;
            loop {
                match spool.append(&lines) {
                    Ok(Appended::Written) => break,
                    Ok(Appended::Full) => {
                        let message = format!(
                            "SIEM spool {} ({}) is full ({} bytes, on_full: block): waiting for the SIEM to take records",
                            spool.name(),
                            spool.dir().display(),
                            spool.max()
                        );
                        if queue.fail(&std::io::Error::other(message)) {
                            tracing::error!(sink = %spool.name(), "SIEM spool full: audit records wait for delivery");
                        }
                        if queue.abandoned() {
                            return false;
                        }
                        spool.wait_for_room(Duration::from_millis(100));
                    }
                    Err(error) => {
                        if !retry(queue, spool, &error, &mut failures) {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    /// Writes what every spool holds pending and syncs it (with the audit file's sync: periodic, per batch with
    /// `sync: batch`, before a rotation and at shutdown); false when shutdown gave up on a failing one.
    pub(super) fn sync(&self, queue: &Queue) -> bool {
        for spool in &self.0 {
            let mut failures = 0;
            while let Err(error) = spool.sync() {
                if !retry(queue, spool, &error, &mut failures) {
                    return false;
                }
            }
        }
        true
    }
}

/// The bytes of `file` after the line `last` (with its newline), searched for in its last `CATCH_UP_WINDOW`
/// bytes; all of them when the file begins right after `last` (a rotation came after it: the first record's
/// `prev` is `last`'s `hash`), nothing when it is empty; `None` otherwise.
fn records_after(file: &Path, last: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    let mut file = match File::open(file) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let length = file.metadata()?.len();
    let start = length.saturating_sub(CATCH_UP_WINDOW);
    let mut tail = Vec::with_capacity((length - start) as usize);
    file.seek(SeekFrom::Start(start))?;
    file.take(length - start).read_to_end(&mut tail)?;
    let mut end = tail.len();
    while let Some(at) = memchr::memmem::rfind(&tail[..end], last) {
        // A whole line: at the start of the file or after a newline.
        if (at == 0 && start == 0) || (at > 0 && tail[at - 1] == b'\n') {
            return Ok(Some(tail[at + last.len()..].to_vec()));
        }
        end = at + last.len() - 1;
    }
    if start == 0 && (tail.is_empty() || chained_after(&tail, last)) {
        return Ok(Some(tail));
    }
    Ok(None)
}

/// Whether the first record of `records` is chained right after the record `last`.
fn chained_after(records: &[u8], last: &[u8]) -> bool {
    /// A record's links in the chain (`audit.file.chain`).
    #[derive(serde::Deserialize)]
    struct Links {
        prev: Option<String>,
        hash: Option<String>,
    }
    let first = records.split(|byte| *byte == b'\n').next().unwrap_or_default();
    let links = |line: &[u8]| serde_json::from_slice::<Links>(line.trim_ascii_end()).ok();
    match (links(first), links(last)) {
        (Some(Links { prev: Some(prev), .. }), Some(Links { hash: Some(hash), .. })) => prev == hash,
        _ => false,
    }
}

/// Marks the audit sink failing (logged once), then waits before the next attempt; false once shutdown gave up.
fn retry(queue: &Queue, spool: &Spool, error: &std::io::Error, failures: &mut u32) -> bool {
    let error = std::io::Error::new(error.kind(), format!("SIEM spool {}: {error}", spool.dir().display()));
    if queue.fail(&error) {
        tracing::error!(sink = %spool.name(), %error, "audit records cannot be spooled; retrying until they can");
    }
    if queue.abandoned() {
        return false;
    }
    *failures += 1;
    std::thread::sleep(Duration::from_millis(50 << (*failures).min(4)));
    true
}

impl Deliveries {
    /// Stops every delivery after the batch in flight (its answer is awaited, for `STOP_GRACE` at most, so that a
    /// clean restart sends nothing twice), waiting until `deadline` at most.
    pub(super) async fn stop(&self, deadline: tokio::time::Instant) {
        self.stop.cancel();
        let deadline = deadline.min(tokio::time::Instant::now() + deliver::STOP_GRACE + Duration::from_secs(1));
        for finished in &self.finished {
            let mut finished = finished.clone();
            let _ = tokio::time::timeout_at(deadline, finished.wait_for(|done| *done)).await;
        }
    }

    /// Stops every delivery without waiting.
    pub(super) fn stop_now(&self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_share_a_block_until_it_is_full() {
        let spools = Spools::default();
        let first = spools.shared(b"{\"id\":\"a\"}\n");
        let second = spools.shared(b"{\"id\":\"b\"}\n");
        assert_eq!((&first[..], &second[..]), (&b"{\"id\":\"a\"}\n"[..], &b"{\"id\":\"b\"}\n"[..]));
        assert_eq!(second.as_ptr(), first[first.len()..].as_ptr(), "the same block, one after the other");
        let rest = vec![b'x'; BLOCK - first.len() - second.len()];
        let third = spools.shared(&rest);
        assert!(third == rest);
        let fourth = spools.shared(b"{\"id\":\"c\"}\n");
        assert_ne!(fourth.as_ptr(), first.as_ptr(), "a new block while the first one's batches are held");
        assert_eq!(&first[..], b"{\"id\":\"a\"}\n", "earlier batches keep their bytes");
        let block = first.as_ptr();
        drop((first, second, third));
        let fifth = spools.shared(&vec![b'y'; BLOCK]);
        assert_eq!(fifth.as_ptr(), block, "the first block again once its batches are let go of");
    }

    #[test]
    fn records_after_finds_the_spools_last_line_as_a_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.jsonl");
        std::fs::write(&file, "{\"id\":\"a\"}\n{\"id\":\"xa\"}\n{\"id\":\"b\"}\n{\"id\":\"c\"}\n").unwrap();
        let after =
            |last: &str| records_after(&file, last.as_bytes()).unwrap().map(|bytes| String::from_utf8(bytes).unwrap());
        assert_eq!(after("{\"id\":\"b\"}\n").as_deref(), Some("{\"id\":\"c\"}\n"));
        assert_eq!(after("{\"id\":\"c\"}\n").as_deref(), Some(""), "nothing missing");
        assert_eq!(
            after("{\"id\":\"a\"}\n").as_deref(),
            Some("{\"id\":\"xa\"}\n{\"id\":\"b\"}\n{\"id\":\"c\"}\n"),
            "the first line"
        );
        assert_eq!(after("\"a\"}\n"), None, "only whole lines match");
        assert_eq!(after("{\"id\":\"z\"}\n"), None);
        assert_eq!(records_after(&dir.path().join("missing"), b"x\n").unwrap(), None);
    }

    /// Killed after a rotation with the new file's first records not yet in the spool's file: the spool's last
    /// record is in the rotated file, and the new file's first record is chained to it.
    #[test]
    fn records_after_takes_a_whole_file_that_begins_after_the_spools_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.jsonl");
        let last = b"{\"id\":\"a\",\"prev\":\"0\",\"hash\":\"1\"}\n";
        let next = "{\"id\":\"b\",\"prev\":\"1\",\"hash\":\"2\"}\n{\"id\":\"c\",\"prev\":\"2\",\"hash\":\"3\"}\n";
        std::fs::write(&file, next).unwrap();
        assert_eq!(records_after(&file, last).unwrap().as_deref(), Some(next.as_bytes()));
        std::fs::write(&file, next.replace("\"prev\":\"1\"", "\"prev\":\"9\"")).unwrap();
        assert_eq!(records_after(&file, last).unwrap(), None, "another chain");
        std::fs::write(&file, "").unwrap();
        assert_eq!(records_after(&file, last).unwrap().as_deref(), Some(&b""[..]), "a new file: nothing missing");
    }
}
