//! A SIEM sink's durable spool: the audit writer appends each batch's lines (the bytes the file got), the sink's
//! delivery takes them in order and acknowledges what the SIEM accepted.
//!
//! An append is a hand-off in memory: the batch joins `pending`, bytes not yet in the segment file. The delivery
//! sends records from memory; it reads the disk only for what memory no longer holds (after a restart or a long
//! backlog). Pending records the SIEM has accepted are never written: a spool whose SIEM keeps up writes little
//! more than its `delivered` file. The rest is written by the audit writer's sync (`Spools::sync`: every second by
//! default, before a rotation and at shutdown), many batches with one `write`, or by an append that finds
//! `PENDING_MAX` pending. A kill -9 can lose only the pending part, records the audit file already holds: on the
//! next start `Spools::catch_up` spools again the file's records after the spool's last known one (its files' last
//! line, or the last delivered one) (`docs/audit.md`, "SIEM delivery").
//!
//! On disk, a directory of segment files named by the position of their first byte in the sink's stream of
//! records (`00000000000000001234.spool`), and `delivered`: the position up to which the SIEM has acknowledged and
//! the line that ends there (overwritten in place, one `pwrite` per delivered batch). Positions the SIEM took
//! before they were written are in no file: the next write starts a segment at its own position.
//! A segment holds whole lines (it is rolled between batches); segments wholly delivered are deleted. After a
//! restart, delivery resumes at `delivered`: a record acknowledged but not yet recorded there is sent again (at
//! least once), never one skipped. At most `max` bytes wait: then the writer waits (`on_full: block`) or the oldest
//! segment is dropped (`on_full: drop_oldest`), its undelivered records counted and logged.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::config::file::SpoolFull;
use crate::config::siem::{Batch, Spool as SpoolConfig};
use crate::metrics::SiemMetrics;

/// The file holding the delivered position.
const DELIVERED: &str = "delivered";
/// The lock file: one process delivers a spool.
const LOCK: &str = "lock";
const SEGMENT_SUFFIX: &str = ".spool";
/// How much of the spool a delivery reads at a time, until it holds a batch: a batch of small records is read
/// about once, not `batch.bytes` of it for every batch.
const READ_STEP: u64 = 64 * 1024;
/// At most this much (or a segment, if less) waits in memory to be written: far less than `CATCH_UP_WINDOW`, so
/// that what a kill -9 loses from the spool is found again in the audit file. A delivery on a busy core (it runs
/// at the lowest priority) may lag a few MiB behind the writer: what it sends before that much waits is never
/// written.
const PENDING_MAX: u64 = 4 << 20;
/// Records already written stay in memory for the delivery up to this much; beyond it (a backlog) the oldest are
/// read back from the disk when their turn comes.
const MEMORY_MAX: u64 = 4 << 20;
/// The size of the blocks the audit writer copies batches into for the spools (`Spools`): a piece in memory is
/// no longer unless its batch is.
pub const BLOCK: usize = 128 * 1024;
/// The most pieces written with one `write_vectored` (within Linux's `IOV_MAX`, 1024).
const WRITE_PIECES: usize = 256;

/// One sink's spool, shared by the audit writer thread and the sink's delivery.
pub struct Spool {
    name: Arc<str>,
    dir: PathBuf,
    /// `LOCK` in the directory (`lockfile.rs`): held until the delivery ends (`release`), it keeps other
    /// processes from delivering the spool.
    exclusive: Mutex<Option<File>>,
    max: u64,
    on_full: SpoolFull,
    /// A segment this long is closed before the next batch.
    segment_bytes: u64,
    /// An append that finds this much pending writes it first.
    pending_max: u64,
    /// Every append is written at once (`write_through`).
    write_through: AtomicBool,
    state: Mutex<State>,
    /// The segment file being appended to, and the bytes handed to it. Locked while `state` is held (so that
    /// bytes are handed over in append order); the write happens with `state` released.
    file: Mutex<Active>,
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
    /// Oldest first; never empty: the last is the one appended to. Their lengths count the bytes handed to the
    /// file (`Active`), written or about to be.
    segments: VecDeque<Segment>,
    /// The newest records in memory, one piece per append, ending at `end()`: the last `pending` pieces
    /// (`pending_bytes`) are not handed to the file yet; those before them are kept for the delivery to send.
    memory: VecDeque<Bytes>,
    memory_bytes: u64,
    pending: usize,
    pending_bytes: u64,
    /// Every byte before it is in its segment file or was delivered before it was written (those after it, up to
    /// the segments' end, are being written).
    written: u64,
    /// The last delivered line, as `delivered` holds it: where catch-up starts when the segment files end before
    /// it.
    anchor: Option<Anchor>,
    /// A line of this spool is on disk (in a segment file or `delivered`): catch-up has a place to start from.
    anchored: bool,
    /// Every byte before it was accepted by the SIEM (or dropped).
    delivered: u64,
    /// The records being sent, if any: a drop that takes them leaves their count to the delivery's outcome.
    sending: Option<Sending>,
}

/// A line and the position after it.
type Anchor = (u64, Vec<u8>);

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

/// The segment file appended to and what is to be written to it, in order.
struct Active {
    /// The segment's first position, and its file.
    start: u64,
    file: File,
    queue: VecDeque<Piece>,
    /// The position of the next byte written.
    position: u64,
}

/// Something for the file to do.
enum Piece {
    /// Close the segment and start the one beginning at this position.
    Roll(u64),
    /// Bytes for the position given: after the file's end when the SIEM took those in between before they were
    /// written, which starts a segment there.
    Bytes(u64, Bytes),
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
        let exclusive = crate::lockfile::hold(
            &config.dir.join(LOCK),
            &format!("the spool of SIEM sink {name} ({})", config.dir.display()),
        )?;
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
        let (delivered_file, delivered, anchor) = open_delivered(&config.dir, &name)?;
        let mut segments = VecDeque::with_capacity(starts.len().max(1));
        for start in starts {
            let path = segment_path(&config.dir, start);
            let length = std::fs::metadata(&path)?.len();
            if length == 0 {
                // Left by a segment whose first write never came (the SIEM took its records first).
                remove_if_present(&path)?;
                continue;
            }
            segments.push_back(Segment { start, length });
        }
        if let Some(last) = segments.back_mut() {
            last.length = cut_torn_end(&segment_path(&config.dir, last.start), &name)?;
        }
        let written_end = segments.back().map_or(0, Segment::end);
        if anchor.is_some() && delivered > written_end {
            // Every record in the files is delivered, and those after them were delivered unwritten.
            for segment in segments.drain(..) {
                remove_if_present(&segment_path(&config.dir, segment.start))?;
            }
        }
        if segments.is_empty() {
            segments.push_back(Segment { start: delivered.max(written_end), length: 0 });
        }
        let anchored = anchor.is_some() || segments.iter().any(|segment| segment.length > 0);
        let last = *segments.back().expect("never empty");
        let file = OpenOptions::new().create(true).append(true).open(segment_path(&config.dir, last.start))?;
        let active = Active { start: last.start, file, queue: VecDeque::new(), position: last.end() };
        let delivered = delivered.clamp(segments[0].start, last.end());
        let segment_bytes = (config.max / 16).clamp(4096, 64 << 20);
        let state = State {
            segments,
            memory: VecDeque::new(),
            memory_bytes: 0,
            pending: 0,
            pending_bytes: 0,
            written: last.end(),
            delivered,
            sending: None,
            anchor,
            anchored,
        };
        let spool = Arc::new(Self {
            name,
            dir: config.dir.clone(),
            exclusive: Mutex::new(Some(exclusive)),
            max: config.max,
            on_full: config.on_full,
            segment_bytes,
            pending_max: segment_bytes.min(PENDING_MAX),
            write_through: AtomicBool::new(false),
            state: Mutex::new(state),
            file: Mutex::new(active),
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

    /// Lets another process (or a gateway started again in this one) take the spool: called once its delivery has
    /// ended, which a shutdown stops after the audit writer's last append.
    pub fn release(&self) {
        *self.exclusive.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Writes every append at once, on the appender's path (when no audit file keeps the records for
    /// `Spools::catch_up`).
    pub fn write_through(&self) {
        self.write_through.store(true, Ordering::Relaxed);
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

    /// Appends whole lines (the audit writer): in memory, shared with the other sinks' spools, written to the
    /// segment file later (by the delivery, the audit writer's sync, or here once `pending_max` waits). Pending
    /// bytes count against `max` as written ones do: a full spool drops its oldest segments (`drop_oldest`, after
    /// writing what is pending) or answers `Full` (`block`); a batch longer than `max` goes into an empty spool all
    /// the same.
    pub fn append(&self, bytes: &Bytes) -> std::io::Result<Appended> {
        if bytes.is_empty() {
            return Ok(Appended::Written);
        }
        let length = bytes.len() as u64;
        let mut state = self.lock();
        loop {
            let used = state.end() - state.segments[0].start;
            if used == 0 || used + length <= self.max {
                break;
            }
            match self.on_full {
                SpoolFull::Block => return Ok(Appended::Full),
                SpoolFull::DropOldest => {
                    // Dropped by segment: what is pending becomes one first.
                    self.write_locked(&mut state)?;
                    self.drop_oldest(&mut state)?;
                }
            }
        }
        // A spool with no line on disk yet writes at once: after a crash, the last line on disk is where catch-up
        // finds the records the spool missed in the audit file, and a spool without one looks new (nothing to catch
        // up), which would lose what was in memory only.
        let write_through = self.write_through.load(Ordering::Relaxed) || !state.anchored;
        if write_through || (state.pending_bytes > 0 && state.pending_bytes + length > self.pending_max) {
            // The delivery has not written for long (a slow SIEM, a busy core): bounded, so that what a crash can
            // take from the spool stays a small tail of the audit file.
            self.write_locked(&mut state)?;
        }
        state.memory.push_back(bytes.clone());
        state.memory_bytes += length;
        state.pending += 1;
        state.pending_bytes += length;
        if write_through {
            // Once handed to the file the batch is written by whoever writes next, this append's retry included
            // (which would duplicate it): a failure here is told by the next append's write above.
            let _ = self.write_locked(&mut state);
        }
        self.trim_memory(&mut state);
        let undelivered = self.update_gauge(&state);
        drop(state);
        let added = memchr::memchr_iter(b'\n', bytes).count() as u64;
        let lines = self.lines.fetch_add(added, Ordering::AcqRel) + added;
        if lines >= self.wake_lines.load(Ordering::Acquire) || undelivered >= self.wake_bytes.load(Ordering::Acquire) {
            self.arrived.notify_one();
        }
        Ok(Appended::Written)
    }

    /// Writes what is pending, then syncs the segment being appended to (with the audit file's sync).
    pub fn sync(&self) -> std::io::Result<()> {
        self.write_pending()?;
        let file = self.lock_file().file.try_clone()?;
        file.sync_data()
    }

    /// Writes every pending byte to the segment file, after what other threads handed over before.
    pub fn write_pending(&self) -> std::io::Result<()> {
        let mut active = loop {
            let mut state = self.lock();
            // Never wait for the file holding `state`: an append (the request path) would wait behind a delivery
            // thread at the lowest priority.
            match self.file.try_lock() {
                Ok(mut active) => {
                    self.hand_over(&mut state, &mut active);
                    break active;
                }
                Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                    let mut active = poisoned.into_inner();
                    self.hand_over(&mut state, &mut active);
                    break active;
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    drop(state);
                    drop(self.lock_file());
                }
            }
        };
        let position = write_queue(&self.dir, &mut active);
        drop(active);
        let mut state = self.lock();
        // Writes end in order: every byte before this one's end is written.
        state.written = state.written.max(position?);
        state.anchored |= state.segments.iter().any(|segment| segment.length > 0);
        Ok(())
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
    pub fn sent(&self, accepted: u64, lines: &Lines) -> std::io::Result<()> {
        // Only after `sending` said yes: without a chunk in flight there is nothing to acknowledge.
        let Some(sending) = self.lock().sending.take() else { return Ok(()) };
        let lost_to = (sending.dropped_to - sending.start).min(lines.len() as u64);
        let records = lines.count_lines(accepted, lost_to);
        if records > 0 {
            self.note_dropped(records, lost_to.saturating_sub(accepted));
        }
        match accepted {
            0 => Ok(()),
            accepted => self.acknowledge(sending.start + accepted, lines.line_ending_at(accepted)),
        }
    }

    /// Waits (the audit writer) until delivery makes room, or `timeout`.
    pub fn wait_for_room(&self, timeout: Duration) {
        let state = self.lock();
        let _ = self.room.wait_timeout(state, timeout);
    }

    /// Puts the oldest undelivered records (whole lines, at most `batch.records` and about `batch.bytes`; one
    /// longer record alone) into `out`; `None` when every record is delivered. Records still in memory (pending
    /// ones too) are handed out as they are held, older ones read from the segment files.
    pub fn read(&self, batch: &Batch, out: &mut Lines) -> std::io::Result<Option<Chunk>> {
        out.0.clear();
        // A segment dropped (drop_oldest) while it is read is read again from the new oldest.
        for _ in 0..8 {
            let (from, end, segments) = {
                let state = self.lock();
                let from = state.delivered.max(state.segments[0].start);
                let end = state.end();
                if from >= end {
                    return Ok(None);
                }
                if from >= state.end() - state.memory_bytes {
                    let pieces = state.memory_from(from, end, batch.bytes);
                    drop(state);
                    return Ok(take_lines(&pieces, from, end, batch, out));
                }
                // Memory does not reach back to `from`, and what it dropped is written; memory has what follows.
                (from, (state.written, end), state.segments.clone())
            };
            let (written, end) = end;
            let mut bytes = Vec::new();
            match read_range(&self.dir, &segments, from, written, batch, &mut bytes) {
                Ok(chunk) => {
                    out.0.push(bytes.into());
                    return Ok((chunk.records > 0).then_some(Chunk { more: chunk.end < end, ..chunk }));
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            }
        }
        Err(std::io::Error::other("the spool's segments changed under every read"))
    }

    /// Records up to `position` are delivered (`lines`: the bytes that end there, whole lines): pending ones need
    /// no writing any more; deletes the segments wholly before it and records the position with its line.
    pub fn acknowledge(&self, position: u64, lines: &[u8]) -> std::io::Result<()> {
        let body = &lines[..lines.len().saturating_sub(1)];
        let line = &lines[memchr::memrchr(b'\n', body).map_or(0, |at| at + 1)..];
        let mut removed = Vec::new();
        {
            let mut state = self.lock();
            if position <= state.delivered || position > state.end() || line.is_empty() {
                return Ok(());
            }
            state.delivered = position;
            self.skip_delivered(&mut state);
            // Once written whole: a segment's file may still be in the making.
            while state.segments.len() > 1 && state.segments[0].end() <= state.delivered.min(state.written) {
                removed.push(state.segments.pop_front().expect("checked").start);
            }
            self.trim_memory(&mut state);
            self.update_gauge(&state);
            let (anchor_position, anchor_line) = state.anchor.get_or_insert_with(Default::default);
            *anchor_position = position;
            anchor_line.clear();
            anchor_line.extend_from_slice(line);
            state.anchored = true;
        }
        self.room.notify_all();
        for start in removed {
            remove_if_present(&segment_path(&self.dir, start))?;
        }
        write_delivered(&self.delivered_file, position, line)
    }

    /// Takes out of `pending` the pieces the SIEM has accepted whole (they are never written): the segment the
    /// file writes next starts after them.
    fn skip_delivered(&self, state: &mut State) {
        let handed = state.segments.back().expect("never empty").end();
        let first = state.memory.len() - state.pending;
        let (mut to, mut skipped) = (handed, 0);
        for piece in state.memory.range(first..) {
            let end = to + piece.len() as u64;
            if end > state.delivered {
                break;
            }
            (to, skipped) = (end, skipped + 1);
        }
        if skipped == 0 {
            return;
        }
        state.pending -= skipped;
        state.pending_bytes -= to - handed;
        let last = state.segments.back_mut().expect("never empty");
        if last.length == 0 {
            // Nothing handed to it: it starts later (`write_queue` makes its file at its first write and removes the
            // empty one).
            last.start = to;
        } else {
            state.segments.push_back(Segment { start: to, length: 0 });
        }
    }

    /// The last line of this spool on disk (with its newline): its files' last line, or the last delivered one
    /// when that comes after it; `None` when the spool has none.
    pub fn last_line(&self) -> std::io::Result<Option<Vec<u8>>> {
        self.write_pending()?;
        let (segments, anchor) = {
            let state = self.lock();
            (state.segments.clone(), state.anchor.clone())
        };
        let segment = segments.iter().rev().find(|segment| segment.length > 0);
        if let Some((position, line)) = anchor {
            if segment.is_none_or(|segment| position >= segment.end()) {
                return Ok(Some(line));
            }
        }
        let Some(segment) = segment else { return Ok(None) };
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

    fn lock_file(&self) -> MutexGuard<'_, Active> {
        // The queue is changed only between whole pieces, and `position` after each write.
        self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands what is pending to the file (both locks held: the queue keeps the order of appends), rolling to a
    /// new segment first when the current one is long enough.
    fn hand_over(&self, state: &mut State, active: &mut Active) {
        if state.pending == 0 {
            return;
        }
        let last = *state.segments.back().expect("never empty");
        if last.length >= self.segment_bytes {
            state.segments.push_back(Segment { start: last.end(), length: 0 });
            active.queue.push_back(Piece::Roll(last.end()));
        }
        let first = state.memory.len() - state.pending;
        let mut position = state.segments.back().expect("never empty").end();
        active.queue.extend(state.memory.range(first..).map(|piece| {
            position += piece.len() as u64;
            Piece::Bytes(position - piece.len() as u64, piece.clone())
        }));
        state.segments.back_mut().expect("never empty").length += state.pending_bytes;
        (state.pending, state.pending_bytes) = (0, 0);
    }

    /// Writes what is pending with `state` held (an append that cannot wait for the delivery, a drop).
    fn write_locked(&self, state: &mut State) -> std::io::Result<()> {
        let mut active = self.lock_file();
        self.hand_over(state, &mut active);
        state.written = state.written.max(write_queue(&self.dir, &mut active)?);
        state.anchored |= state.segments.iter().any(|segment| segment.length > 0);
        Ok(())
    }

    /// Lets go of the records in memory that are delivered (or dropped), and of the oldest written ones beyond
    /// `MEMORY_MAX`.
    fn trim_memory(&self, state: &mut State) {
        let from = state.delivered.max(state.segments[0].start);
        let mut start = state.end() - state.memory_bytes;
        while state.memory.len() > state.pending {
            let length = state.memory[0].len() as u64;
            let end = start + length;
            if end > from && (state.memory_bytes <= MEMORY_MAX || end > state.written) {
                break;
            }
            state.memory.pop_front();
            state.memory_bytes -= length;
            start = end;
        }
    }

    /// Sets the spool-bytes gauge; returns the undelivered bytes.
    fn update_gauge(&self, state: &State) -> u64 {
        let undelivered = state.end() - state.delivered.max(state.segments[0].start);
        self.metrics.spool_bytes.set(i64::try_from(undelivered).unwrap_or(i64::MAX));
        undelivered
    }

    /// Closes the segment appended to and starts the next (nothing pending: `write_locked` came first).
    fn roll(&self, state: &mut State) -> std::io::Result<()> {
        let end = state.end();
        let mut active = self.lock_file();
        // Queued and recorded together: should the new file not open now, the next write opens it.
        active.queue.push_back(Piece::Roll(end));
        state.segments.push_back(Segment { start: end, length: 0 });
        write_queue(&self.dir, &mut active)?;
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
        self.trim_memory(state);
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

impl Drop for Spool {
    /// What is pending goes to the file when the spool closes (shutdown syncs it before).
    fn drop(&mut self) {
        if let Err(error) = self.write_pending() {
            tracing::error!(sink = %self.name, %error, "the SIEM spool's last records could not be written");
        }
    }
}

impl State {
    /// The position after the last byte appended.
    fn end(&self) -> u64 {
        self.segments.back().expect("never empty").end() + self.pending_bytes
    }

    /// The pieces in memory from `from` (the first cut to start there) before `before`, about `bytes` of them.
    fn memory_from(&self, from: u64, before: u64, bytes: u64) -> Vec<Bytes> {
        let mut start = self.end() - self.memory_bytes;
        let mut pieces = Vec::new();
        let mut taken = 0;
        for piece in &self.memory {
            if start >= before {
                break;
            }
            let end = start + piece.len() as u64;
            if end > from {
                let piece = piece.slice((from.max(start) - start) as usize..);
                taken += piece.len() as u64;
                pieces.push(piece);
                if taken >= bytes {
                    break;
                }
            }
            start = end;
        }
        pieces
    }
}

/// Does what `active`'s queue holds, in order: rolls and writes (consecutive pieces with one `write_vectored`).
/// On an error the rest stays queued, for the next writer; returns the position written to.
fn write_queue(dir: &Path, active: &mut Active) -> std::io::Result<u64> {
    loop {
        match active.queue.front() {
            None => return Ok(active.position),
            Some(Piece::Roll(start)) => {
                let start = *start;
                let next = OpenOptions::new().create(true).append(true).open(segment_path(dir, start))?;
                active.file.sync_data()?;
                (active.file, active.start) = (next, start);
                active.queue.pop_front();
            }
            Some(Piece::Bytes(position, _)) if *position != active.position => {
                // The SIEM took the bytes before it unwritten: a segment starts here.
                let (start, empty) = (*position, active.position == active.start);
                active.file = OpenOptions::new().create(true).append(true).open(segment_path(dir, start))?;
                let left = std::mem::replace(&mut active.start, start);
                active.position = start;
                if empty {
                    // A file that never got a byte (`Spool::open` removes one a crash leaves).
                    remove_if_present(&segment_path(dir, left))?;
                }
            }
            Some(Piece::Bytes(..)) => {
                // Consecutive pieces, while each starts where the one before it ends.
                let mut next = active.position;
                let slices: Vec<IoSlice> = active
                    .queue
                    .iter()
                    .take(WRITE_PIECES)
                    .map_while(|piece| match piece {
                        Piece::Bytes(position, bytes) if *position == next => {
                            next += bytes.len() as u64;
                            Some(bytes)
                        }
                        _ => None,
                    })
                    .map(|bytes| IoSlice::new(bytes))
                    .collect();
                let written = match active.file.write_vectored(&slices) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(written) => written,
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => 0,
                    Err(error) => return Err(error),
                };
                drop(slices);
                active.position += written as u64;
                let mut left = written;
                while left > 0 {
                    let Some(Piece::Bytes(position, bytes)) = active.queue.front_mut() else {
                        unreachable!("what was written came from the byte pieces first in the queue")
                    };
                    if bytes.len() <= left {
                        left -= bytes.len();
                        active.queue.pop_front();
                    } else {
                        bytes::Buf::advance(bytes, left);
                        *position += left as u64;
                        left = 0;
                    }
                }
            }
        }
    }
}

/// Whole lines from `pieces` (in memory, starting at `from`, before `end`; each holds whole lines) within
/// `batch`'s bounds, into `out` without copying them.
fn take_lines(pieces: &[Bytes], from: u64, end: u64, batch: &Batch, out: &mut Lines) -> Option<Chunk> {
    out.0.clear();
    let (mut records, mut taken) = (0, 0);
    for piece in pieces {
        let (mut cut, mut full) = (0, false);
        for newline in memchr::memchr_iter(b'\n', piece) {
            // About batch.bytes: whole lines within it, or one longer line alone.
            if records > 0 && taken + newline as u64 + 1 > batch.bytes {
                full = true;
                break;
            }
            records += 1;
            cut = newline + 1;
            if records == batch.records {
                full = true;
                break;
            }
        }
        if cut > 0 {
            out.0.push(piece.slice(..cut));
        }
        taken += cut as u64;
        if full || cut < piece.len() || (taken >= batch.bytes && records > 0) {
            break;
        }
    }
    let stop = from + taken;
    (records > 0).then_some(Chunk { start: from, end: stop, records, more: stop < end })
}

/// The records read for one delivery: whole lines, in pieces that each hold whole lines (the spool's own memory
/// where it still holds them, not copied).
#[derive(Default)]
pub struct Lines(Vec<Bytes>);

impl Lines {
    /// The pieces, in order.
    pub fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(|piece| &piece[..])
    }

    /// Their bytes.
    fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    /// Lets go of the pieces (the memory they are part of can be used again).
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The bytes, copied into one vector.
    #[cfg(test)]
    fn to_vec(&self) -> Vec<u8> {
        self.pieces().flatten().copied().collect()
    }

    /// The line that ends `offset` bytes in (at a line's end), with its newline.
    fn line_ending_at(&self, offset: u64) -> &[u8] {
        let mut start = 0;
        for piece in &self.0 {
            let end = start + piece.len() as u64;
            if offset <= end && offset > start {
                let piece = &piece[..(offset - start) as usize];
                let body = &piece[..piece.len() - 1];
                return &piece[memchr::memrchr(b'\n', body).map_or(0, |at| at + 1)..];
            }
            start = end;
        }
        &[]
    }

    /// Newlines from `start` bytes in to `end`.
    fn count_lines(&self, start: u64, end: u64) -> u64 {
        let mut at = 0;
        let mut lines = 0;
        for piece in &self.0 {
            let (from, to) = (start.max(at), end.min(at + piece.len() as u64));
            if from < to {
                lines += memchr::memchr_iter(b'\n', &piece[(from - at) as usize..(to - at) as usize]).count() as u64;
            }
            at += piece.len() as u64;
        }
        lines
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

/// Opens (creating) `delivered` and reads the position it holds, with the line that ends there: 0 when it is new,
/// or empty or zeroed (a power cut before its first write reached the disk: the spool's records are sent again,
/// never skipped); no line when the file has none whole (written by an earlier version, or torn).
fn open_delivered(dir: &Path, sink: &str) -> std::io::Result<(File, u64, Option<Anchor>)> {
    let path = dir.join(DELIVERED);
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|error| std::io::Error::new(error.kind(), format!("{}: {error}", path.display())))?;
    let (head, rest) = match memchr::memchr(b'\n', &bytes) {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (&bytes[..], &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let head = head.trim_matches(|c: char| c == '\0' || c.is_ascii_whitespace());
    if head.is_empty() {
        if !bytes.is_empty() {
            tracing::warn!(sink, file = %path.display(), "the SIEM spool's delivered position was lost: its records are sent again");
        }
        return Ok((file, 0, None));
    }
    let (position, length) = head.split_once(' ').map_or((head, None), |(position, length)| (position, Some(length)));
    let position = position.parse().map_err(|_| {
        let message = format!("{} does not hold a position: {head:?}", path.display());
        std::io::Error::new(std::io::ErrorKind::InvalidData, message)
    })?;
    let line = length
        .and_then(|length| length.parse::<usize>().ok())
        .and_then(|length| rest.get(..length))
        .filter(|line| memchr::memchr(b'\n', line) == Some(line.len() - 1));
    if length.is_some() && line.is_none() {
        tracing::warn!(sink, file = %path.display(), "the SIEM spool's last delivered line is torn: catch-up starts from its files");
    }
    Ok((file, position, line.map(|line| (position, line.to_vec()))))
}

/// Overwrites `delivered` in place: `position` (always 20 digits), the length of `line` and `line`, the one that
/// ends at `position` (one `pwrite`, no new file and rename per batch; a longer line written before leaves bytes
/// after it, which the length leaves out). Not synced: a position lost to a power cut only sends records again,
/// and catch-up then starts from an older line (the kernel writes it back within seconds).
fn write_delivered(file: &File, position: u64, line: &[u8]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(32 + line.len());
    let _ = writeln!(bytes, "{position:020} {}", line.len());
    bytes.extend_from_slice(line);
    file.write_all_at(&bytes, 0)
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
        for segment in
            self.segments.iter().filter(|segment| segment.end() > start.max(segment.start) && segment.start < stop)
        {
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

    fn lines(from: usize, count: usize) -> Bytes {
        (from..from + count).map(|n| format!("{{\"id\":\"{n:06}\"}}\n")).collect::<String>().into()
    }

    const BATCH: Batch = Batch { records: 10, bytes: 1 << 20, wait: Duration::from_millis(1) };

    #[test]
    fn records_are_read_in_order_and_delivery_resumes_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, metrics) = spool(dir.path(), 1 << 20, SpoolFull::Block);
        spool.append(&lines(0, 25)).unwrap();
        let mut out = Lines::default();
        let chunk = spool.read(&BATCH, &mut out).unwrap().unwrap();
        assert_eq!((chunk.start, chunk.records, chunk.more), (0, 10, true));
        assert_eq!(out.to_vec(), lines(0, 10));
        spool.acknowledge(chunk.end, &out.to_vec()).unwrap();
        assert_eq!(metrics.spool_bytes.get() as usize, lines(10, 15).len());
        drop(spool);

        let (spool, _) = self::spool(dir.path(), 1 << 20, SpoolFull::Block);
        let chunk = spool.read(&BATCH, &mut out).unwrap().unwrap();
        assert_eq!(out.to_vec(), lines(10, 10), "resumed at the first unacknowledged record");
        spool.acknowledge(chunk.end, &out.to_vec()).unwrap();
        spool.read(&BATCH, &mut out).unwrap().unwrap();
        assert_eq!(out.to_vec(), lines(20, 5));
    }

    #[test]
    fn a_batch_longer_than_a_read_step_is_read_whole_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        // 64 KiB segments; 10,000 lines of 16 bytes span three of them and several read steps.
        let (spool, _) = spool(dir.path(), 1 << 20, SpoolFull::Block);
        for batch in 0..100 {
            spool.append(&lines(batch * 100, 100)).unwrap();
            spool.sync().unwrap();
        }
        assert!(spool.lock().segments.len() >= 3);
        // Read back from the segment files (a new spool has nothing in memory).
        drop(spool);
        let (spool, _) = self::spool(dir.path(), 1 << 20, SpoolFull::Block);
        let mut out = Lines::default();
        let chunk = spool.read(&Batch { records: 9000, ..BATCH }, &mut out).unwrap().unwrap();
        assert_eq!((chunk.records, chunk.more), (9000, true));
        assert!(out.to_vec() == lines(0, 9000), "the first 9000 lines, whole and in order");
        spool.acknowledge(chunk.end, &out.to_vec()).unwrap();
        let chunk = spool.read(&Batch { records: 9000, ..BATCH }, &mut out).unwrap().unwrap();
        assert_eq!((chunk.records, chunk.more), (1000, false));
        assert!(out.to_vec() == lines(9000, 1000));

        // At most batch.bytes of whole lines.
        let (spool, _) = self::spool(&dir.path().join("bytes"), 1 << 20, SpoolFull::Block);
        spool.append(&lines(0, 10_000)).unwrap();
        let chunk = spool.read(&Batch { records: 100_000, bytes: 100_000, ..BATCH }, &mut out).unwrap().unwrap();
        assert_eq!(chunk.records, 100_000 / 16);
        assert!(out.to_vec() == lines(0, 100_000 / 16));
    }

    #[test]
    fn the_delivered_position_is_overwritten_in_place_and_read_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let delivered = dir.path().join(DELIVERED);
        let (spool, _) = spool(dir.path(), 1 << 20, SpoolFull::Block);
        spool.append(&lines(0, 20)).unwrap();
        let mut out = Lines::default();
        for expected in [160, 320] {
            let chunk = spool.read(&BATCH, &mut out).unwrap().unwrap();
            spool.acknowledge(chunk.end, &out.to_vec()).unwrap();
            let line = lines(expected / 16 - 1, 1);
            let text = format!("{expected:020} 16\n{}", std::str::from_utf8(&line).unwrap());
            assert_eq!(std::fs::read_to_string(&delivered).unwrap(), text, "the position and the line ending there");
        }
        drop(spool);

        // A shorter line over a longer one: the length says where it ends. A torn line is not taken.
        let long = format!("{}{}", "0".repeat(20), " 40\n{\"id\":\"000019\",\"x\":\"yyyyyyyyyyyy\"}\n");
        std::fs::write(&delivered, long).unwrap();
        let shorter = lines(19, 1);
        write_delivered(&File::options().write(true).open(&delivered).unwrap(), 320, &shorter).unwrap();
        let (_, position, anchor) = open_delivered(dir.path(), "test").unwrap();
        assert_eq!((position, anchor), (320, Some((320, shorter.to_vec()))));
        std::fs::write(&delivered, format!("{:020} 40\n{{\"id\":\"0000", 320)).unwrap();
        assert_eq!(open_delivered(dir.path(), "test").unwrap().2, None, "torn");

        // The variable-width position earlier versions wrote, and one lost to a power cut (empty or zeroed).
        for (text, first) in [("160\n", 10), ("", 0), ("\0\0\0\0", 0)] {
            std::fs::write(&delivered, text).unwrap();
            let (spool, _) = self::spool(dir.path(), 1 << 20, SpoolFull::Block);
            spool.read(&BATCH, &mut out).unwrap().unwrap();
            assert_eq!(out.to_vec(), lines(first, 10), "{text:?}");
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
        let mut out = Lines::default();
        let chunk = spool.read(&BATCH, &mut out).unwrap().unwrap();
        assert_eq!((&out.to_vec()[..], chunk.more), (&lines(0, 2)[..], true), "from the file, and memory has more");
        spool.acknowledge(chunk.end, &out.to_vec()).unwrap();
        spool.read(&BATCH, &mut out).unwrap().unwrap();
        assert_eq!(out.to_vec(), lines(2, 1));
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
        let mut out = Lines::default();
        let chunk = blocking.read(&Batch { records: 1000, ..BATCH }, &mut out).unwrap().unwrap();
        blocking.acknowledge(chunk.end, &out.to_vec()).unwrap();
        assert_eq!(blocking.append(&lines(appended, 100)).unwrap(), Appended::Written, "room was made");

        let (dropping, metrics) = spool(&dir.path().join("drop"), 64 * 1024, SpoolFull::DropOldest);
        for batch in 0..100 {
            assert_eq!(dropping.append(&lines(batch * 100, 100)).unwrap(), Appended::Written);
        }
        let dropped = metrics.dropped.get();
        assert!(dropped > 0);
        let chunk = dropping.read(&BATCH, &mut out).unwrap().unwrap();
        assert_eq!(out.to_vec(), lines(dropped as usize, 10), "the oldest records went, the rest follow in order");
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
            let mut out = Lines::default();
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

    /// An append is a hand-off in memory: records are sent from memory, and those the SIEM accepts before they
    /// are written are never written; the rest are written at the sync, in a segment that starts at their own
    /// position. After a crash, catch-up starts from the last delivered line.
    #[test]
    fn records_delivered_before_they_are_written_are_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = spool(dir.path(), 1 << 20, SpoolFull::Block);
        for batch in 0..5 {
            spool.append(&lines(batch * 3, 3)).unwrap();
        }
        // The first append only (a new spool's anchor, `a_new_spools_first_append_is_written_at_once`).
        let first = segment_path(dir.path(), 0);
        assert_eq!(std::fs::read(&first).unwrap(), lines(0, 3), "nothing more written on the appender's path");
        let mut out = Lines::default();
        let chunk = spool.read(&BATCH, &mut out).unwrap().unwrap();
        assert_eq!(out.to_vec(), lines(0, 10), "sent from memory");
        assert_eq!(std::fs::read(&first).unwrap(), lines(0, 3), "nothing written to send them");
        spool.acknowledge(chunk.end, &out.to_vec()).unwrap();
        assert!(!first.exists(), "its records are delivered");
        let anchor = open_delivered(dir.path(), "test").unwrap().2;
        assert_eq!(anchor, Some((160, lines(9, 1).to_vec())), "the last delivered line, on disk");

        // Appends 2 and 3 (lines 3 to 8) are delivered and never written; append 4 (lines 9 to 11) only in part:
        // it is written whole, from its own position, with append 5.
        spool.sync().unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert_eq!(files.len(), 3, "a segment, delivered and the lock: {files:?}");
        assert_eq!(std::fs::read(segment_path(dir.path(), 9 * 16)).unwrap(), lines(9, 6));
        assert_eq!(spool.last_line().unwrap().as_deref(), Some(&lines(14, 1)[..]), "the files' last line");

        // Resumed after a reopen at the first undelivered record, from the file.
        drop(spool);
        let (spool, _) = self::spool(dir.path(), 1 << 20, SpoolFull::Block);
        let chunk = spool.read(&BATCH, &mut out).unwrap().unwrap();
        assert_eq!(out.to_vec(), lines(10, 5));
        spool.acknowledge(chunk.end, &out.to_vec()).unwrap();
        assert_eq!(spool.read(&BATCH, &mut out).unwrap(), None);

        // Everything delivered, nothing in the files: a reopened spool still knows its last line (catch-up's
        // anchor), and its next records go to a segment at their position.
        spool.append(&lines(15, 2)).unwrap();
        let chunk = spool.read(&BATCH, &mut out).unwrap().unwrap();
        spool.acknowledge(chunk.end, &out.to_vec()).unwrap();
        drop(spool);
        let (spool, _) = self::spool(dir.path(), 1 << 20, SpoolFull::Block);
        assert_eq!(spool.last_line().unwrap().as_deref(), Some(&lines(16, 1)[..]));
        assert_eq!(spool.read(&BATCH, &mut out).unwrap(), None, "nothing sent twice");
        spool.append(&lines(17, 1)).unwrap();
        spool.sync().unwrap();
        assert_eq!(std::fs::read(segment_path(dir.path(), 17 * 16)).unwrap(), lines(17, 1));
        let chunk = spool.read(&BATCH, &mut out).unwrap().unwrap();
        assert_eq!((chunk.start, &out.to_vec()[..]), (17 * 16, &lines(17, 1)[..]));
    }

    /// With no audit file to spool records again from, appends are written at once.
    #[test]
    fn a_write_through_spool_writes_each_append() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = spool(dir.path(), 1 << 20, SpoolFull::Block);
        spool.write_through();
        spool.append(&lines(0, 3)).unwrap();
        spool.append(&lines(3, 3)).unwrap();
        assert_eq!(std::fs::read(segment_path(dir.path(), 0)).unwrap(), lines(0, 6));
    }

    /// A new spool's first append goes to its file at once (the anchor a restart's catch-up starts from); the
    /// next ones wait in memory.
    #[test]
    fn a_new_spools_first_append_is_written_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = spool(dir.path(), 1 << 20, SpoolFull::Block);
        spool.append(&lines(0, 3)).unwrap();
        spool.append(&lines(3, 3)).unwrap();
        assert_eq!(std::fs::read(segment_path(dir.path(), 0)).unwrap(), lines(0, 3));
    }

    /// Appends, syncs and reads on three threads: every record is delivered once, in order, and the segment file
    /// holds them in append order whoever wrote them.
    #[test]
    fn concurrent_appends_syncs_and_reads_keep_the_order() {
        const BATCHES: usize = 20_000;
        const EACH: usize = 5;
        let dir = tempfile::tempdir().unwrap();
        // One segment for all (64 MiB spool: 4 MiB segments); 1.6 MB appended, so the appender writes too.
        let (spool, _) = spool(dir.path(), 64 << 20, SpoolFull::Block);
        let done = Arc::new(AtomicBool::new(false));
        let appender = {
            let (spool, done) = (spool.clone(), done.clone());
            std::thread::spawn(move || {
                for batch in 0..BATCHES {
                    assert_eq!(spool.append(&lines(batch * EACH, EACH)).unwrap(), Appended::Written);
                }
                done.store(true, Ordering::Release);
            })
        };
        let syncer = {
            let (spool, done) = (spool.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Acquire) {
                    spool.sync().unwrap();
                }
            })
        };
        let mut received = Vec::new();
        let mut out = Lines::default();
        let batch = Batch { records: 700, bytes: 1 << 20, wait: Duration::from_millis(1) };
        while received.len() < BATCHES * EACH * 16 {
            if let Some(chunk) = spool.read(&batch, &mut out).unwrap() {
                assert_eq!(chunk.start, received.len() as u64);
                received.extend_from_slice(&out.to_vec());
                spool.acknowledge(chunk.end, &out.to_vec()).unwrap();
            }
        }
        appender.join().unwrap();
        syncer.join().unwrap();
        let all = lines(0, BATCHES * EACH);
        assert!(received == all, "delivered once each, in order");
        spool.sync().unwrap();
        // Whatever was written (records the SIEM took first are not) sits at its position, in append order.
        let mut written = 0;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let Some(start) = path.file_name().unwrap().to_str().unwrap().strip_suffix(SEGMENT_SUFFIX) else {
                continue;
            };
            let start: usize = start.parse().unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert!(bytes[..] == all[start..start + bytes.len()], "the segment at {start}");
            written += bytes.len();
        }
        assert!(written <= all.len());
    }

    /// Pending records count against `max` as written ones do.
    #[test]
    fn pending_records_fill_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        // 4 MiB: 256 KiB segments and as much pending at most.
        let (spool, _) = spool(dir.path(), 4 << 20, SpoolFull::Block);
        let first = lines(0, 10_000);
        assert_eq!(spool.append(&first).unwrap(), Appended::Written);
        let room = (4 << 20) - first.len();
        let second = lines(10_000, 10);
        assert_eq!(spool.append(&second).unwrap(), Appended::Written);
        let room = room - second.len();
        let too_long = Bytes::from(vec![b'\n'; room + 1]);
        assert_eq!(spool.append(&too_long).unwrap(), Appended::Full, "full with the second batch still in memory");
        assert_eq!(std::fs::metadata(segment_path(dir.path(), 0)).unwrap().len(), first.len() as u64, "the first");
        assert_eq!(spool.append(&too_long.slice(1..)).unwrap(), Appended::Written, "what fits");
        assert_eq!(spool.undelivered(), 4 << 20);
    }

    /// Records in memory are read without a copy, in the pieces they were appended in; a drop or an
    /// acknowledgement finds its lines across them.
    #[test]
    fn records_in_memory_are_read_in_their_pieces_without_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = spool(dir.path(), 1 << 20, SpoolFull::Block);
        let (first, second) = (lines(0, 3), lines(3, 4));
        spool.append(&first).unwrap();
        spool.append(&second).unwrap();
        let mut out = Lines::default();
        let chunk = spool.read(&Batch { records: 5, ..BATCH }, &mut out).unwrap().unwrap();
        let pieces: Vec<&[u8]> = out.pieces().collect();
        assert_eq!(pieces, [&first[..], &second[..32]], "whole lines, cut after the fifth");
        assert_eq!((pieces[0].as_ptr(), pieces[1].as_ptr()), (first.as_ptr(), second.as_ptr()), "not copied");
        assert_eq!((chunk.records, chunk.end, out.len()), (5, 80, 80));
        assert_eq!(out.line_ending_at(48), &lines(2, 1)[..]);
        assert_eq!(out.line_ending_at(64), &lines(3, 1)[..]);
        assert_eq!(out.line_ending_at(80), &lines(4, 1)[..]);
        assert_eq!((out.count_lines(0, 80), out.count_lines(32, 64), out.count_lines(40, 80)), (5, 2, 3));
    }

    #[test]
    fn a_record_longer_than_a_batch_goes_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = spool(dir.path(), 1 << 20, SpoolFull::Block);
        let long = format!("{{\"id\":\"{}\"}}\n", "x".repeat(5000));
        spool.append(&Bytes::from(long.clone())).unwrap();
        spool.append(&lines(0, 1)).unwrap();
        let mut out = Lines::default();
        let chunk = spool.read(&Batch { bytes: 1024, ..BATCH }, &mut out).unwrap().unwrap();
        assert_eq!(chunk.records, 1);
        assert!(out.to_vec() == long.as_bytes(), "the long record alone");
    }
}
