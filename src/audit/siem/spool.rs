//! A SIEM sink's durable spool: the audit writer appends each batch's lines (the bytes the file got), the sink's
//! delivery reads them back in order and acknowledges what the SIEM accepted.
//!
//! On disk, a directory of segment files named by the position of their first byte in the sink's stream of
//! records (`00000000000000001234.spool`), and `delivered`, the position up to which the SIEM has acknowledged
//! (overwritten in place, one `pwrite` per delivered batch).
//! A segment holds whole lines (it is rolled between batches); segments wholly delivered are deleted. After a
//! restart, delivery resumes at `delivered`: a record acknowledged but not yet recorded there is sent again (at
//! least once), never one skipped. At most `max` bytes wait: then the writer waits (`on_full: block`) or the oldest
//! segment is dropped (`on_full: drop_oldest`), its undelivered records counted and logged.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::file::SpoolFull;
use crate::config::siem::{Batch, Spool as SpoolConfig};
use crate::metrics::SiemMetrics;

/// The file holding the delivered position.
const DELIVERED: &str = "delivered";
const SEGMENT_SUFFIX: &str = ".spool";
/// How much of the spool a delivery reads at a time, until it holds a batch: a batch of small records is read
/// about once, not `batch.bytes` of it for every batch.
const READ_STEP: u64 = 64 * 1024;

/// One sink's spool, shared by the audit writer thread and the sink's delivery.
pub struct Spool {
    name: Arc<str>,
    dir: PathBuf,
    max: u64,
    on_full: SpoolFull,
    /// A segment this long is closed before the next batch.
    segment_bytes: u64,
    state: Mutex<State>,
    /// The `delivered` file, kept open: the delivery overwrites its fixed-width position in place.
    delivered_file: File,
    /// Wakes a writer waiting for room.
    room: Condvar,
    /// Wakes the delivery when records arrive.
    arrived: Notify,
    /// Lines appended since the spool was opened.
    lines: AtomicU64,
    /// An append wakes the delivery only once `lines` reaches `wake_lines` or the undelivered bytes `wake_bytes`
    /// (0, 0: any append), so that a delivery gathering a batch is not woken for each of the writer's batches.
    wake_lines: AtomicU64,
    wake_bytes: AtomicU64,
    metrics: SiemMetrics,
}

struct State {
    /// Oldest first; never empty: the last is the one appended to.
    segments: VecDeque<Segment>,
    active: File,
    /// Every byte before it was accepted by the SIEM (or dropped).
    delivered: u64,
    /// The records being sent, if any: a drop that takes them leaves their count to the delivery's outcome.
    sending: Option<Sending>,
}

/// The chunk being sent, and how far into it `drop_oldest` dropped meanwhile.
#[derive(Debug, Clone, Copy)]
struct Sending {
    start: u64,
    end: u64,
    /// Bytes of the chunk before this position are no longer in the spool (`start`: none dropped).
    dropped_to: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    start: u64,
    length: u64,
}

impl Segment {
    fn end(&self) -> u64 {
        self.start + self.length
    }
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Written,
    /// The spool is full (`on_full: block`): nothing was written; wait for room and try again.
    Full,
}

/// Records read for one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Their place in the sink's stream: acknowledge `end` once the SIEM has them.
    pub start: u64,
    pub end: u64,
    pub records: usize,
    /// More records wait after them (the batch is full).
    pub more: bool,
}

impl Spool {
    /// Opens the spool in `config.dir` (created when missing): finds its segments, cuts a torn end from the last,
    /// and reads the delivered position.
    pub fn open(name: Arc<str>, config: &SpoolConfig, metrics: SiemMetrics) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&config.dir)?;
        let mut starts: Vec<u64> = Vec::new();
        for entry in std::fs::read_dir(&config.dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(start) = file_name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)) else { continue };
            if let Ok(start) = start.parse() {
                starts.push(start);
            }
        }
        starts.sort_unstable();
        let (delivered_file, delivered) = open_delivered(&config.dir, &name)?;
        let mut segments = VecDeque::with_capacity(starts.len().max(1));
        for (index, start) in starts.iter().enumerate() {
            let path = segment_path(&config.dir, *start);
            let length =
                if index + 1 == starts.len() { cut_torn_end(&path, &name)? } else { std::fs::metadata(&path)?.len() };
            segments.push_back(Segment { start: *start, length });
        }
        if segments.is_empty() {
            segments.push_back(Segment { start: delivered, length: 0 });
        }
        let last = *segments.back().expect("never empty");
        let active = OpenOptions::new().create(true).append(true).open(segment_path(&config.dir, last.start))?;
        let delivered = delivered.clamp(segments[0].start, last.end());
        let spool = Arc::new(Self {
            name,
            dir: config.dir.clone(),
            max: config.max,
            on_full: config.on_full,
            segment_bytes: (config.max / 16).clamp(4096, 64 << 20),
            state: Mutex::new(State { segments, active, delivered, sending: None }),
            delivered_file,
            room: Condvar::new(),
            arrived: Notify::new(),
            lines: AtomicU64::new(0),
            wake_lines: AtomicU64::new(0),
            wake_bytes: AtomicU64::new(0),
            metrics,
        });
        let state = spool.lock();
        spool.update_gauge(&state);
        drop(state);
        Ok(spool)
    }

    /// The sink's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its bound in bytes.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Lines appended since the spool was opened (a cheap count for the delivery's batching).
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Acquire)
    }

    /// Appends notify `arrived` only once `lines()` reaches `lines` or `bytes` wait undelivered; `(0, 0)` for
    /// every append. Set before registering for `arrived`, then check the condition, so that no wake-up is missed.
    pub fn wake_at(&self, lines: u64, bytes: u64) {
        self.wake_lines.store(lines, Ordering::Release);
        self.wake_bytes.store(bytes, Ordering::Release);
    }

    /// Notified on appends, as `wake_at` says.
    pub fn arrived(&self) -> &Notify {
        &self.arrived
    }

    /// Appends whole lines (the audit writer). A full spool drops its oldest segments (`drop_oldest`) or answers
    /// `Full` (`block`); a batch longer than `max` is written into an empty spool all the same.
    pub fn append(&self, bytes: &[u8]) -> std::io::Result<Appended> {
        if bytes.is_empty() {
            return Ok(Appended::Written);
        }
        let mut state = self.lock();
        loop {
            let used = state.end() - state.segments[0].start;
            if used == 0 || used + bytes.len() as u64 <= self.max {
                break;
            }
            match self.on_full {
                SpoolFull::Block => return Ok(Appended::Full),
                SpoolFull::DropOldest => self.drop_oldest(&mut state)?,
            }
        }
        let active = *state.segments.back().expect("never empty");
        if active.length >= self.segment_bytes {
            self.roll(&mut state)?;
        }
        if let Err(error) = state.active.write_all(bytes) {
            // Whole lines only: cut what part of the batch was written.
            let length = state.segments.back().expect("never empty").length;
            let _ = state.active.set_len(length);
            return Err(error);
        }
        state.segments.back_mut().expect("never empty").length += bytes.len() as u64;
        let undelivered = self.update_gauge(&state);
        drop(state);
        let added = memchr::memchr_iter(b'\n', bytes).count() as u64;
        let lines = self.lines.fetch_add(added, Ordering::AcqRel) + added;
        if lines >= self.wake_lines.load(Ordering::Acquire) || undelivered >= self.wake_bytes.load(Ordering::Acquire) {
            self.arrived.notify_one();
        }
        Ok(Appended::Written)
    }

    /// Syncs the segment being appended to (with the audit file's sync).
    pub fn sync(&self) -> std::io::Result<()> {
        let file = self.lock().active.try_clone()?;
        file.sync_data()
    }

    /// The delivery is about to send `chunk`: false when `on_full: drop_oldest` dropped its records since they
    /// were read (they were counted as dropped, so they are not sent). Until `sent`, a drop that takes them does
    /// not count them: whether they were delivered or lost is known once the SIEM has answered.
    pub fn sending(&self, chunk: &Chunk) -> bool {
        let mut state = self.lock();
        if chunk.start < state.delivered.max(state.segments[0].start) {
            return false;
        }
        state.sending = Some(Sending { start: chunk.start, end: chunk.end, dropped_to: chunk.start });
        true
    }

    /// The SIEM has the first `accepted` bytes of the chunk being sent (`lines`, as read): they are acknowledged;
    /// the records after them that a drop took while they were sent are counted as dropped now, and not retried.
    pub fn sent(&self, accepted: u64, lines: &[u8]) -> std::io::Result<()> {
        // Only after `sending` said yes: without a chunk in flight there is nothing to acknowledge.
        let Some(sending) = self.lock().sending.take() else { return Ok(()) };
        let lost = lines.get(accepted as usize..(sending.dropped_to - sending.start) as usize).unwrap_or_default();
        let records = memchr::memchr_iter(b'\n', lost).count() as u64;
        if records > 0 {
            self.note_dropped(records, lost.len() as u64);
        }
        match accepted {
            0 => Ok(()),
            accepted => self.acknowledge(sending.start + accepted),
        }
    }

    /// Waits (the audit writer) until delivery makes room, or `timeout`.
    pub fn wait_for_room(&self, timeout: Duration) {
        let state = self.lock();
        let _ = self.room.wait_timeout(state, timeout);
    }

    /// Reads the oldest undelivered records (whole lines, at most `batch.records` and about `batch.bytes`; one
    /// longer record alone) into `out`; `None` when every record is delivered.
    pub fn read(&self, batch: &Batch, out: &mut Vec<u8>) -> std::io::Result<Option<Chunk>> {
        // A segment dropped (drop_oldest) while it is read is read again from the new oldest.
        for _ in 0..8 {
            let (from, end, segments) = {
                let state = self.lock();
                (state.delivered.max(state.segments[0].start), state.end(), state.segments.clone())
            };
            if from >= end {
                return Ok(None);
            }
            match read_range(&self.dir, &segments, from, end, batch, out) {
                Ok(chunk) => return Ok((chunk.records > 0).then_some(chunk)),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            }
        }
        Err(std::io::Error::other("the spool's segments changed under every read"))
    }

    /// Records up to `position` are delivered: deletes the segments wholly before it and records the position.
    pub fn acknowledge(&self, position: u64) -> std::io::Result<()> {
        let mut removed = Vec::new();
        let delivered = {
            let mut state = self.lock();
            state.delivered = state.delivered.max(position).min(state.end());
            while state.segments.len() > 1 && state.segments[0].end() <= state.delivered {
                removed.push(state.segments.pop_front().expect("checked").start);
            }
            self.update_gauge(&state);
            state.delivered
        };
        self.room.notify_all();
        for start in removed {
            remove_if_present(&segment_path(&self.dir, start))?;
        }
        write_delivered(&self.delivered_file, delivered)
    }

    /// The last line appended (with its newline), when the spool holds one.
    pub fn last_line(&self) -> std::io::Result<Option<Vec<u8>>> {
        let segments = self.lock().segments.clone();
        let Some(segment) = segments.iter().rev().find(|segment| segment.length > 0) else { return Ok(None) };
        let mut file = File::open(segment_path(&self.dir, segment.start))?;
        let mut window = 64 * 1024u64;
        loop {
            let start = segment.length.saturating_sub(window);
            let mut bytes = Vec::with_capacity((segment.length - start) as usize);
            file.seek(SeekFrom::Start(start))?;
            Read::by_ref(&mut file).take(segment.length - start).read_to_end(&mut bytes)?;
            // Segments end with a newline: the line is what follows the one before it.
            let body = &bytes[..bytes.len().saturating_sub(1)];
            match memchr::memrchr(b'\n', body) {
                Some(at) => return Ok(Some(bytes[at + 1..].to_vec())),
                None if start == 0 => return Ok(Some(bytes)),
                None => window *= 4,
            }
        }
    }

    /// Undelivered bytes.
    pub fn undelivered(&self) -> u64 {
        let state = self.lock();
        state.end() - state.delivered.max(state.segments[0].start)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change to the state is complete before anything that can panic.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets the spool-bytes gauge; returns the undelivered bytes.
    fn update_gauge(&self, state: &State) -> u64 {
        let undelivered = state.end() - state.delivered.max(state.segments[0].start);
        self.metrics.spool_bytes.set(i64::try_from(undelivered).unwrap_or(i64::MAX));
        undelivered
    }

    /// Closes the segment appended to and starts the next.
    fn roll(&self, state: &mut State) -> std::io::Result<()> {
        let end = state.end();
        let next = OpenOptions::new().create(true).append(true).open(segment_path(&self.dir, end))?;
        state.active.sync_data()?;
        state.active = next;
        state.segments.push_back(Segment { start: end, length: 0 });
        Ok(())
    }

    /// Drops the oldest segment (rolling first when it is the only one), counting its undelivered records; those
    /// being sent are counted by `sent` if the SIEM does not take them.
    fn drop_oldest(&self, state: &mut State) -> std::io::Result<()> {
        if state.segments.len() == 1 {
            self.roll(state)?;
        }
        let oldest = state.segments.pop_front().expect("two segments at least");
        let path = segment_path(&self.dir, oldest.start);
        let from = state.delivered.max(oldest.start);
        // Undelivered bytes of the segment outside the chunk being sent.
        let mut counted = vec![(from, oldest.end())];
        if let Some(sending) = &mut state.sending {
            let taken_to = sending.end.min(oldest.end());
            if sending.start < taken_to {
                sending.dropped_to = sending.dropped_to.max(taken_to);
                counted = vec![(from, sending.start.max(from)), (taken_to.max(from), oldest.end())];
            }
        }
        let mut records = 0;
        let mut bytes = 0;
        for (start, end) in counted.into_iter().filter(|(start, end)| start < end) {
            records += count_lines(&path, start - oldest.start, end - start)?;
            bytes += end - start;
        }
        remove_if_present(&path)?;
        state.delivered = state.delivered.max(state.segments[0].start);
        if records > 0 {
            self.note_dropped(records, bytes);
        }
        Ok(())
    }

    /// Counts and logs undelivered records dropped (`on_full: drop_oldest`).
    fn note_dropped(&self, records: u64, bytes: u64) {
        self.metrics.dropped.inc_by(records);
        tracing::warn!(
            sink = %self.name,
            spool = %self.dir.display(),
            records,
            bytes,
            "SIEM spool full (on_full: drop_oldest): the oldest undelivered records were dropped"
        );
    }
}

impl State {
    fn end(&self) -> u64 {
        self.segments.back().expect("never empty").end()
    }
}

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}{SEGMENT_SUFFIX}"))
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Opens (creating) `delivered` and reads the position it holds: 0 when it is new, or empty or zeroed (a power
/// cut before its first write reached the disk: the spool's records are sent again, never skipped).
fn open_delivered(dir: &Path, sink: &str) -> std::io::Result<(File, u64)> {
    let path = dir.join(DELIVERED);
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|error| std::io::Error::new(error.kind(), format!("{}: {error}", path.display())))?;
    let position = text.trim_matches(|c: char| c == '\0' || c.is_ascii_whitespace());
    if position.is_empty() {
        if !text.is_empty() {
            tracing::warn!(sink, file = %path.display(), "the SIEM spool's delivered position was lost: its records are sent again");
        }
        return Ok((file, 0));
    }
    let position = position.parse().map_err(|_| {
        let message = format!("{} does not hold a position: {text:?}", path.display());
        std::io::Error::new(std::io::ErrorKind::InvalidData, message)
    })?;
    Ok((file, position))
}

/// Overwrites `delivered` in place with `position`, always 20 digits and a newline, so that each write covers the
/// last (one `pwrite`, no new file and rename per batch). Not synced: a position lost to a power cut only sends
/// records again.
fn write_delivered(file: &File, position: u64) -> std::io::Result<()> {
    file.write_all_at(format!("{position:020}\n").as_bytes(), 0)
}

/// Cuts the file at `path` after its last newline (a batch cut short by a crash); returns its length.
fn cut_torn_end(path: &Path, sink: &str) -> std::io::Result<u64> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let length = file.metadata()?.len();
    let mut end = length;
    let mut buffer = vec![0u8; 64 * 1024];
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(buffer.len() as u64);
        let window = &mut buffer[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(window)?;
        if let Some(at) = memchr::memrchr(b'\n', window) {
            break start + at as u64 + 1;
        }
        end = start;
    };
    if keep < length {
        file.set_len(keep)?;
        file.sync_data()?;
        tracing::warn!(sink, segment = %path.display(), bytes = length - keep, "a torn end of the SIEM spool was cut");
    }
    Ok(keep)
}

/// Newlines in the file at `path` in the `length` bytes from `offset` (also the audit file's lines, counted on open).
pub(crate) fn count_lines(path: &Path, offset: u64, length: u64) -> std::io::Result<u64> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut file = file.take(length);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut lines = 0;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(lines);
        }
        lines += memchr::memchr_iter(b'\n', &buffer[..read]).count() as u64;
    }
}

/// Reads whole lines from `from` (before `end`) within `batch`'s bounds: `READ_STEP` bytes at a time, each segment
/// opened once, until `batch.records` lines or about `batch.bytes` are read.
fn read_range(
    dir: &Path,
    segments: &VecDeque<Segment>,
    from: u64,
    end: u64,
    batch: &Batch,
    out: &mut Vec<u8>,
) -> std::io::Result<Chunk> {
    out.clear();
    let available = end - from;
    let mut reader = SegmentReader { dir, segments, open: None };
    let mut limit = READ_STEP.min(batch.bytes).min(available);
    let mut most = batch.records;
    let (mut records, mut cut, mut scanned) = (0, 0, 0);
    loop {
        let wanted = limit - out.len() as u64;
        let read = reader.read(from + out.len() as u64, wanted, out)?;
        for newline in memchr::memchr_iter(b'\n', &out[scanned..]) {
            records += 1;
            cut = scanned + newline + 1;
            if records == most {
                break;
            }
        }
        scanned = out.len();
        // Everything there is: lines are appended whole, so an end without a newline is a record being written.
        let exhausted = read < wanted || out.len() as u64 >= available;
        if records == most || exhausted || (records > 0 && limit >= batch.bytes) {
            break;
        }
        if limit >= batch.bytes {
            // One record longer than batch.bytes: read on to its end, and it goes alone.
            most = 1;
            limit = (limit * 2).min(available);
        } else {
            limit = (limit + READ_STEP).min(batch.bytes).min(available);
        }
    }
    if records == 0 {
        out.clear();
        return Ok(Chunk { start: from, end: from, records: 0, more: false });
    }
    out.truncate(cut);
    let stop = from + cut as u64;
    Ok(Chunk { start: from, end: stop, records, more: stop < end })
}

/// Reads a spool's bytes by position across its segments, keeping the last segment it read open.
struct SegmentReader<'a> {
    dir: &'a Path,
    segments: &'a VecDeque<Segment>,
    open: Option<(u64, File)>,
}

impl SegmentReader<'_> {
    /// Appends to `out` up to `length` bytes from `position`; returns how many it read (fewer at the end).
    fn read(&mut self, mut position: u64, length: u64, out: &mut Vec<u8>) -> std::io::Result<u64> {
        let stop = position + length;
        let mut read = 0;
        out.reserve(length as usize);
        let start = position;
        for segment in self.segments.iter().filter(|segment| segment.end() > start && segment.start < stop) {
            if !matches!(&self.open, Some((start, _)) if *start == segment.start) {
                self.open = Some((segment.start, File::open(segment_path(self.dir, segment.start))?));
            }
            let (_, file) = self.open.as_mut().expect("opened just above");
            let wanted = segment.end().min(stop) - position;
            file.seek(SeekFrom::Start(position - segment.start))?;
            let got = Read::by_ref(file).take(wanted).read_to_end(out)? as u64;
            read += got;
            position += got;
            if got < wanted {
                break;
            }
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(dir: &Path, max: u64, on_full: SpoolFull) -> (Arc<Spool>, SiemMetrics) {
        let metrics = crate::metrics::Metrics::new().siem("test");
        let config = SpoolConfig { dir: dir.to_owned(), max, on_full };
        (Spool::open("test".into(), &config, metrics.clone()).unwrap(), metrics)
    }

    fn lines(from: usize, count: usize) -> Vec<u8> {
        (from..from + count).map(|n| format!("{{\"id\":\"{n:06}\"}}\n")).collect::<String>().into_bytes()
    }

    const BATCH: Batch = Batch { records: 10, bytes: 1 << 20, wait: Duration::from_millis(1) };

    #[test]
    fn records_are_read_in_order_and_delivery_resumes_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, metrics) = spool(dir.path(), 1 << 20, SpoolFull::Block);
        spool.append(&lines(0, 25)).unwrap();
        let mut out = Vec::new();
        let chunk = spool.read(&BATCH, &mut out).unwrap().unwrap();
        assert_eq!((chunk.start, chunk.records, chunk.more), (0, 10, true));
        assert_eq!(out, lines(0, 10));
        spool.acknowledge(chunk.end).unwrap();
        assert_eq!(metrics.spool_bytes.get() as usize, lines(10, 15).len());
        drop(spool);

        let (spool, _) = self::spool(dir.path(), 1 << 20, SpoolFull::Block);
        let chunk = spool.read(&BATCH, &mut out).unwrap().unwrap();
        assert_eq!(out, lines(10, 10), "resumed at the first unacknowledged record");
        spool.acknowledge(chunk.end).unwrap();
        spool.read(&BATCH, &mut out).unwrap().unwrap();
        assert_eq!(out, lines(20, 5));
    }

    #[test]
    fn a_batch_longer_than_a_read_step_is_read_whole_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        // 64 KiB segments; 10,000 lines of 16 bytes span three of them and several read steps.
        let (spool, _) = spool(dir.path(), 1 << 20, SpoolFull::Block);
        for batch in 0..100 {
            spool.append(&lines(batch * 100, 100)).unwrap();
        }
        assert!(spool.lock().segments.len() >= 3);
        let mut out = Vec::new();
        let chunk = spool.read(&Batch { records: 9000, ..BATCH }, &mut out).unwrap().unwrap();
        assert_eq!((chunk.records, chunk.more), (9000, true));
        assert!(out == lines(0, 9000), "the first 9000 lines, whole and in order");
        spool.acknowledge(chunk.end).unwrap();
        let chunk = spool.read(&Batch { records: 9000, ..BATCH }, &mut out).unwrap().unwrap();
        assert_eq!((chunk.records, chunk.more), (1000, false));
        assert!(out == lines(9000, 1000));

        // At most batch.bytes of whole lines.
        let (spool, _) = self::spool(&dir.path().join("bytes"), 1 << 20, SpoolFull::Block);
        spool.append(&lines(0, 10_000)).unwrap();
        let chunk = spool.read(&Batch { records: 100_000, bytes: 100_000, ..BATCH }, &mut out).unwrap().unwrap();
        assert_eq!(chunk.records, 100_000 / 16);
        assert!(out == lines(0, 100_000 / 16));
    }

    #[test]
    fn the_delivered_position_is_overwritten_in_place_and_read_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let delivered = dir.path().join(DELIVERED);
        let (spool, _) = spool(dir.path(), 1 << 20, SpoolFull::Block);
        spool.append(&lines(0, 20)).unwrap();
        let mut out = Vec::new();
        for expected in [160, 320] {
            let chunk = spool.read(&BATCH, &mut out).unwrap().unwrap();
            spool.acknowledge(chunk.end).unwrap();
            assert_eq!(std::fs::read_to_string(&delivered).unwrap(), format!("{expected:020}\n"));
        }
        drop(spool);

        // The variable-width position earlier versions wrote, and one lost to a power cut (empty or zeroed).
        for (text, first) in [("160\n", 10), ("", 0), ("\0\0\0\0", 0)] {
            std::fs::write(&delivered, text).unwrap();
            let (spool, _) = self::spool(dir.path(), 1 << 20, SpoolFull::Block);
            spool.read(&BATCH, &mut out).unwrap().unwrap();
            assert_eq!(out, lines(first, 10), "{text:?}");
        }
        std::fs::write(&delivered, "x\n").unwrap();
        let config = SpoolConfig { dir: dir.path().to_owned(), max: 1 << 20, on_full: SpoolFull::Block };
        let metrics = crate::metrics::Metrics::new().siem("test");
        let error = Spool::open("test".into(), &config, metrics).err().expect("a position that is not a number");
        assert!(error.to_string().contains("does not hold a position"), "{error}");
    }

    #[test]
    fn a_torn_end_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = spool(dir.path(), 1 << 20, SpoolFull::Block);
        spool.append(&lines(0, 2)).unwrap();
        drop(spool);
        let segment = segment_path(dir.path(), 0);
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(b"{\"id\":\"torn").unwrap();
        let (spool, _) = self::spool(dir.path(), 1 << 20, SpoolFull::Block);
        spool.append(&lines(2, 1)).unwrap();
        let mut out = Vec::new();
        spool.read(&BATCH, &mut out).unwrap().unwrap();
        assert_eq!(out, lines(0, 3));
    }

    #[test]
    fn a_full_spool_blocks_or_drops_its_oldest_records() {
        let dir = tempfile::tempdir().unwrap();
        // 64 KiB spools, 4 KiB segments; each line is 15 bytes.
        let (blocking, _) = spool(&dir.path().join("block"), 64 * 1024, SpoolFull::Block);
        let mut appended = 0;
        while blocking.append(&lines(appended, 100)).unwrap() == Appended::Written {
            appended += 100;
        }
        assert!(appended > 0);
        let mut out = Vec::new();
        let chunk = blocking.read(&Batch { records: 1000, ..BATCH }, &mut out).unwrap().unwrap();
        blocking.acknowledge(chunk.end).unwrap();
        assert_eq!(blocking.append(&lines(appended, 100)).unwrap(), Appended::Written, "room was made");

        let (dropping, metrics) = spool(&dir.path().join("drop"), 64 * 1024, SpoolFull::DropOldest);
        for batch in 0..100 {
            assert_eq!(dropping.append(&lines(batch * 100, 100)).unwrap(), Appended::Written);
        }
        let dropped = metrics.dropped.get();
        assert!(dropped > 0);
        let chunk = dropping.read(&BATCH, &mut out).unwrap().unwrap();
        assert_eq!(out, lines(dropped as usize, 10), "the oldest records went, the rest follow in order");
        assert!(chunk.more);
        assert!(dropping.undelivered() <= 64 * 1024);
    }

    /// Records dropped while they are being sent count as dropped only if the SIEM did not take them: delivered
    /// and dropped never both, whichever of the writer and the delivery comes first.
    #[test]
    fn records_dropped_while_sent_count_as_dropped_only_when_the_siem_did_not_take_them() {
        for taken in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (spool, metrics) = spool(dir.path(), 64 * 1024, SpoolFull::DropOldest);
            spool.append(&lines(0, 100)).unwrap();
            let mut out = Vec::new();
            let chunk = spool.read(&BATCH, &mut out).unwrap().unwrap();
            assert!(spool.sending(&chunk));
            let mut appended = 100;
            while metrics.dropped.get() == 0 && spool.lock().segments[0].start == 0 {
                spool.append(&lines(appended, 100)).unwrap();
                appended += 100;
            }
            // The first segment went: all of it counted but the 10 records in flight.
            let first_segment = metrics.dropped.get();
            assert!(first_segment > 0);
            spool.sent(if taken { out.len() as u64 } else { 0 }, &out).unwrap();
            let lost_in_flight = if taken { 0 } else { 10 };
            assert_eq!(metrics.dropped.get(), first_segment + lost_in_flight, "taken: {taken}");
            let next = spool.read(&BATCH, &mut out).unwrap().unwrap();
            assert!(next.start > chunk.end, "the records in flight are not read again (taken: {taken})");
        }
    }

    #[test]
    fn a_record_longer_than_a_batch_goes_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = spool(dir.path(), 1 << 20, SpoolFull::Block);
        let long = format!("{{\"id\":\"{}\"}}\n", "x".repeat(5000));
        spool.append(long.as_bytes()).unwrap();
        spool.append(&lines(0, 1)).unwrap();
        let mut out = Vec::new();
        let chunk = spool.read(&Batch { bytes: 1024, ..BATCH }, &mut out).unwrap().unwrap();
        assert_eq!(chunk.records, 1);
        assert!(out == long.as_bytes(), "the long record alone");
    }
}
