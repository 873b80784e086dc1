//! The JSON-lines file sink: one writer thread, off the async workers, appends records in batches (one write(2)
//! per batch), chains each to the previous one by SHA-256, and syncs them as `audit.file.sync` says.
//!
//! With `chain: true` a record carries `prev` (the previous record's hash) and `hash`, the SHA-256 of the line
//! as written up to `,"hash"` with the closing brace, so editing or deleting a line breaks every later hash.
//! On open, a torn end (a crash in the middle of a write) is set aside in `PATH.torn` and cut from the file, so
//! the chain continues from the last complete record.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::queue::{Queue, Taken};
use super::record::Entry;
use super::siem::Spools;
use super::verify::{split_hash, GENESIS};
use crate::config::file::AuditSync;

/// The file sink's writer; `run` is the body of its thread.
pub(super) struct Writer {
    file: File,
    /// Only regular files are synced: a pipe or a terminal cannot be.
    regular: bool,
    /// The previous record's hash, in hex, when the records are chained.
    chain: Option<[u8; 64]>,
    sync: AuditSync,
    /// The batch being written, reused from batch to batch.
    out: Vec<u8>,
}

/// A torn end found on open: set aside in `kept_in`, and cut from the audit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Torn {
    /// Where the torn bytes began in the audit file (its length now).
    pub offset: u64,
    pub bytes: u64,
    pub kept_in: PathBuf,
}

/// Largest batch buffer kept between batches; a larger one (after a burst) is given back.
const KEEP_BUFFER: usize = 1 << 20;

impl Writer {
    /// Opens (creating it and its directory) the file to append to; a regular file's torn end is repaired first.
    pub(super) fn open(path: &Path, chain: bool, sync: AuditSync) -> std::io::Result<(Self, Option<Torn>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let existing = match std::fs::metadata(path) {
            // A pipe or terminal (e.g. /dev/stdout in a container) cannot be read back: its chain starts afresh.
            Ok(meta) => meta.is_file(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
            Err(error) => return Err(error),
        };
        let (torn, last) = if existing { repair(path)? } else { (None, None) };
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let regular = file.metadata()?.is_file();
        let chain = chain.then(|| {
            let mut prev = [0u8; 64];
            prev.copy_from_slice(last.as_deref().unwrap_or(GENESIS).as_bytes());
            prev
        });
        Ok((Self { file, regular, chain, sync, out: Vec::with_capacity(64 * 1024) }, torn))
    }

    /// The writer thread: takes every queued record at once, writes them with one write(2), syncs per
    /// `audit.file.sync`, then tells the waiters. A failed write or sync is retried until it succeeds (the
    /// records stay counted against the queue meanwhile), or until shutdown gives up.
    pub(super) fn run(mut self, queue: &Queue, written: &prometheus::IntCounter, siem: &Spools) {
        let mut batch = VecDeque::new();
        let interval = match self.sync {
            AuditSync::Batch => None,
            AuditSync::Every(interval) => Some(interval),
        };
        let mut last_sync = Instant::now();
        let mut unsynced = false;
        loop {
            let deadline = interval.filter(|_| unsynced && self.regular).map(|interval| last_sync + interval);
            match queue.take(&mut batch, deadline) {
                Taken::Records => {}
                Taken::Deadline => {
                    if !self.sync(queue) || !siem.sync(queue) {
                        break;
                    }
                    (last_sync, unsynced) = (Instant::now(), false);
                    continue;
                }
                Taken::Closed => {
                    if unsynced && self.sync(queue) {
                        siem.sync(queue);
                    }
                    break;
                }
            }
            let count = batch.len() as u64;
            self.out.clear();
            for record in batch.drain(..) {
                self.append(&record);
            }
            if !self.write_out(queue) {
                break;
            }
            // Spooled for each SIEM sink before the records count as written.
            if !siem.append(&self.out, queue) {
                break;
            }
            unsynced = true;
            if interval.is_none_or(|interval| last_sync.elapsed() >= interval) {
                if !self.sync(queue) || !siem.sync(queue) {
                    break;
                }
                (last_sync, unsynced) = (Instant::now(), false);
            }
            if queue.recover() {
                tracing::warn!("audit records are written again");
            }
            queue.advance(count);
            written.inc_by(count);
            if self.out.capacity() > KEEP_BUFFER {
                self.out = Vec::with_capacity(64 * 1024);
            }
        }
        queue.finish();
    }

    /// Serializes one record into the batch, chained to the previous one.
    fn append(&mut self, record: &Entry) {
        let start = self.out.len();
        if serde_json::to_writer(&mut self.out, record).is_err() {
            // A record is strings and numbers: serializing it cannot fail. Should it, the line is left out.
            self.out.truncate(start);
            tracing::error!(id = %record.id(), "audit record could not be serialized");
            return;
        }
        if let Some(prev) = &mut self.chain {
            self.out.pop(); // the closing brace
            self.out.extend_from_slice(b",\"prev\":\"");
            self.out.extend_from_slice(prev);
            self.out.extend_from_slice(b"\"}");
            let hash = Sha256::digest(&self.out[start..]);
            hex::encode_to_slice(hash, prev).expect("64 hex digits fit 64 bytes");
            self.out.pop();
            self.out.extend_from_slice(b",\"hash\":\"");
            self.out.extend_from_slice(prev);
            self.out.extend_from_slice(b"\"}");
        }
        self.out.push(b'\n');
    }

    /// Writes the batch; false when shutdown gave up on a failing sink.
    fn write_out(&mut self, queue: &Queue) -> bool {
        let mut done = 0;
        let mut failures = 0;
        while done < self.out.len() {
            queue.begin_io();
            let result = self.file.write(&self.out[done..]);
            queue.end_io();
            match result {
                Ok(0) => {
                    if !retry(queue, &std::io::ErrorKind::WriteZero.into(), &mut failures) {
                        return false;
                    }
                }
                Ok(written) => done += written,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    if !retry(queue, &error, &mut failures) {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Syncs the file's data to the disk (a regular file only); false when shutdown gave up on a failing sink.
    fn sync(&mut self, queue: &Queue) -> bool {
        if !self.regular {
            return true;
        }
        let mut failures = 0;
        loop {
            queue.begin_io();
            let result = self.file.sync_data();
            queue.end_io();
            match result {
                Ok(()) => return true,
                Err(error) => {
                    if !retry(queue, &error, &mut failures) {
                        return false;
                    }
                }
            }
        }
    }
}

/// Marks the sink failing (logged once per failure), then waits a little before the next attempt; false when
/// shutdown has given up.
fn retry(queue: &Queue, error: &std::io::Error, failures: &mut u32) -> bool {
    if queue.fail(error) {
        tracing::error!(%error, "audit records cannot be written; retrying until they can");
    }
    if queue.abandoned() {
        return false;
    }
    *failures += 1;
    std::thread::sleep(Duration::from_millis(50 << (*failures).min(4)));
    true
}

/// Sets aside a torn end of the file at `path` (appended to `PATH.torn`, then cut), and returns it with the hash
/// of the last record, to continue the chain from.
///
/// Torn is: bytes after the last newline that are not a complete record, and the last newline-terminated line
/// when it is not a complete record either (a JSON object). Bytes after the last newline that are a complete
/// record lacked only their newline, which is added. Nothing before the last line is changed.
fn repair(path: &Path) -> std::io::Result<(Option<Torn>, Option<String>)> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let tail = Tail::read(&mut file)?;
    let mut torn_from = None;
    if !tail.fragment().is_empty() {
        if is_record(tail.fragment()) {
            file.seek(SeekFrom::End(0))?;
            file.write_all(b"\n")?;
            file.sync_data()?;
            tracing::warn!(file = %path.display(), "the last audit record lacked its newline: added");
        } else {
            torn_from = Some(tail.fragment_start());
        }
    }
    let last_line_torn = tail.last_line().is_some_and(|line| !is_record(line));
    if last_line_torn && (torn_from.is_some() || tail.fragment().is_empty()) {
        torn_from = tail.last_line_start();
    }
    let torn = match torn_from {
        Some(offset) => {
            let kept_in = torn_path(path);
            let bytes = &tail.bytes[(offset - tail.start) as usize..];
            let mut aside = OpenOptions::new().create(true).append(true).open(&kept_in)?;
            aside.write_all(bytes)?;
            if !bytes.ends_with(b"\n") {
                aside.write_all(b"\n")?;
            }
            aside.sync_data()?;
            file.set_len(offset)?;
            file.sync_data()?;
            Some(Torn { offset, bytes: bytes.len() as u64, kept_in })
        }
        None => None,
    };
    Ok((torn, last_hash(&mut file)?))
}

/// `PATH.torn`: where torn ends of `PATH` are kept.
pub fn torn_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".torn");
    path.with_file_name(name)
}

/// The end of a file: its last newline-terminated line and what follows the last newline.
struct Tail {
    /// Offset of `bytes` in the file.
    start: u64,
    bytes: Vec<u8>,
    /// In `bytes`: just after the last newline (0 when there is none), and the start of the line it ends.
    fragment_at: usize,
    last_line_at: Option<usize>,
}

impl Tail {
    /// Reads back from the end until the last line and the fragment after it are whole.
    fn read(file: &mut File) -> std::io::Result<Self> {
        let length = file.seek(SeekFrom::End(0))?;
        let mut window = 64 * 1024u64;
        loop {
            let start = length.saturating_sub(window);
            let mut bytes = Vec::with_capacity((length - start) as usize);
            file.seek(SeekFrom::Start(start))?;
            Read::by_ref(file).take(length - start).read_to_end(&mut bytes)?;
            let last_newline = memchr::memrchr(b'\n', &bytes);
            let line_start = last_newline.map(|end| memchr::memrchr(b'\n', &bytes[..end]).map_or(0, |at| at + 1));
            let whole = match (last_newline, line_start) {
                (None, _) => start == 0,
                (Some(_), Some(0)) => start == 0,
                _ => true,
            };
            if whole {
                let fragment_at = last_newline.map_or(0, |at| at + 1);
                return Ok(Tail { start, bytes, fragment_at, last_line_at: line_start });
            }
            window *= 4;
        }
    }

    fn fragment(&self) -> &[u8] {
        &self.bytes[self.fragment_at..]
    }

    fn fragment_start(&self) -> u64 {
        self.start + self.fragment_at as u64
    }

    /// The last newline-terminated line, without its newline.
    fn last_line(&self) -> Option<&[u8]> {
        self.last_line_at.map(|at| &self.bytes[at..self.fragment_at - 1])
    }

    fn last_line_start(&self) -> Option<u64> {
        self.last_line_at.map(|at| self.start + at as u64)
    }
}

/// A complete record: one JSON object.
fn is_record(line: &[u8]) -> bool {
    matches!(serde_json::from_slice::<serde_json::Value>(line), Ok(serde_json::Value::Object(_)))
}

/// The hash of the last record that has one: the last line's, or else found by reading the whole file.
fn last_hash(file: &mut File) -> std::io::Result<Option<String>> {
    let tail = Tail::read(file)?;
    if let Some(hash) = tail.last_line().and_then(|line| std::str::from_utf8(line).ok()).and_then(hash_of) {
        return Ok(Some(hash));
    }
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let mut last = None;
    while reader.read_until(b'\n', &mut line)? > 0 {
        if let Some(hash) = std::str::from_utf8(line.trim_ascii_end()).ok().and_then(hash_of) {
            last = Some(hash);
        }
        line.clear();
    }
    Ok(last)
}

fn hash_of(line: &str) -> Option<String> {
    split_hash(line).map(|(_, hash)| hash.to_owned()).filter(|hash| hash.len() == 64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::verify::verify_chain;
    use crate::audit::Record;

    fn write_records(path: &Path, ids: &[&str]) {
        let (mut writer, _) = Writer::open(path, true, AuditSync::Batch).unwrap();
        for id in ids {
            writer.append(&Entry::from(Record {
                id: (*id).into(),
                kind: "connect",
                decision: "allow",
                ..Record::default()
            }));
        }
        writer.file.write_all(&writer.out).unwrap();
    }

    #[test]
    fn the_chain_detects_edits_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        write_records(&path, &["a", "b", "c"]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(verify_chain(&text), Ok(3));

        write_records(&path, &["d"]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(verify_chain(&text), Ok(4));

        let edited = text.replacen("\"id\":\"b\"", "\"id\":\"x\"", 1);
        assert_eq!(verify_chain(&edited).unwrap_err().line, 2);
        let lines: Vec<&str> = text.lines().collect();
        let removed = format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3]);
        assert_eq!(verify_chain(&removed).unwrap_err().line, 2);
    }

    #[test]
    fn a_torn_end_is_set_aside_and_the_chain_continues_from_the_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        write_records(&path, &["a", "b"]);
        let complete = std::fs::read(&path).unwrap();
        const FRAGMENT: &[u8] = b"{\"ts\":\"2026-05-31T12:00:00.000Z\",\"id\":\"c";
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(FRAGMENT).unwrap();

        let (mut writer, torn) = Writer::open(&path, true, AuditSync::Batch).unwrap();
        let torn = torn.expect("the fragment is torn");
        assert_eq!((torn.offset, torn.bytes), (complete.len() as u64, FRAGMENT.len() as u64));
        assert_eq!(torn.kept_in, dir.path().join("audit.jsonl.torn"));
        assert_eq!(std::fs::read(&torn.kept_in).unwrap(), [FRAGMENT, b"\n"].concat());
        assert_eq!(std::fs::read(&path).unwrap(), complete, "cut back to the last complete record");

        writer.append(&Entry::from(Record { id: "d".into(), ..Record::default() }));
        writer.file.write_all(&writer.out).unwrap();
        assert_eq!(verify_chain(&std::fs::read_to_string(&path).unwrap()), Ok(3), "d chains to b");
    }

    #[test]
    fn a_bad_last_line_goes_with_the_fragment_and_a_record_lacking_only_its_newline_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        write_records(&path, &["a"]);
        let complete = std::fs::read(&path).unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"\0\0\0\0\n{\"id\":").unwrap();
        let (_, torn) = Writer::open(&path, true, AuditSync::Batch).unwrap();
        assert_eq!(torn.map(|t| (t.offset, t.bytes)), Some((complete.len() as u64, 11)));
        assert_eq!(std::fs::read(&path).unwrap(), complete);

        // A whole record whose newline was not written: only the newline is added.
        let text = String::from_utf8(complete).unwrap();
        std::fs::write(&path, text.trim_end()).unwrap();
        let (_, torn) = Writer::open(&path, true, AuditSync::Batch).unwrap();
        assert_eq!(torn, None);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

        // A file that is nothing but a fragment.
        std::fs::write(&path, "{\"ts\":").unwrap();
        let (_, torn) = Writer::open(&path, true, AuditSync::Batch).unwrap();
        assert_eq!(torn.map(|t| (t.offset, t.bytes)), Some((0, 6)));
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn a_long_last_line_is_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let long = "x".repeat(300 * 1024);
        let (mut writer, _) = Writer::open(&path, true, AuditSync::Batch).unwrap();
        writer.append(&Entry::from(Record { id: "a".into(), ..Record::default() }));
        writer.append(&Entry::from(Record { id: long.clone(), ..Record::default() }));
        writer.file.write_all(&writer.out).unwrap();
        let expected = writer.chain.unwrap();
        let (reopened, torn) = Writer::open(&path, true, AuditSync::Batch).unwrap();
        assert_eq!(torn, None);
        assert_eq!(reopened.chain, Some(expected), "the chain continues from the long record");
    }
}
