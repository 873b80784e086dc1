//! The JSON-lines file sink: one writer thread, off the async workers, appends records in batches (one write(2)
//! per batch), chains each to the previous one by SHA-256 (or HMAC-SHA256 with `audit.file.key`), and syncs them
//! as `audit.file.sync` says.
//!
//! With `chain: true` a record carries `prev` (the previous record's hash) and `hash`, the SHA-256 of the line
//! as written up to `,"hash"` with the closing brace, so editing or deleting a line breaks every later hash. With
//! a key, `"chain":"hmac-sha256"` comes before `prev` and the hash is the HMAC-SHA256 of the same bytes.
//! On open, a torn end (a crash in the middle of a write) is set aside in `PATH.torn` and cut from the file, so
//! the chain continues from the last complete record.
//!
//! With `audit.file.rotate` the writer closes the file by size (after the batch that reaches it) or at UTC
//! midnight, renames it (`rotate.rs`) and goes on in a new file; the chain goes on too, so the new file's first
//! `prev` is the old file's last hash. With `audit.checkpoints`, signed checkpoints join the batches.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntCounter;
use sha2::{Digest, Sha256};

use super::checkpoint;
use super::queue::{Io, Queue, Taken};
use super::record::{CheckpointRecord, Entry};
use super::rotate::{self, Job, Naming};
use super::siem::spool::count_lines;
use super::siem::Spools;
use super::verify::{split_hash, GENESIS, KEYED_MARK};
use crate::config::file::AuditSync;

/// The file sink's writer; `run` is the body of its thread.
pub(super) struct Writer {
    file: File,
    /// `AUDIT.lock` beside a regular file (`lockfile.rs`): held until the writer thread ends, it keeps other
    /// processes from writing the file.
    exclusive: Option<File>,
    /// Only regular files are synced: a pipe or a terminal cannot be.
    regular: bool,
    /// The previous record's hash, in hex, when the records are chained.
    chain: Option<[u8; 64]>,
    /// `audit.file.key`: the chain is HMAC-SHA256 with it.
    key: Option<ring::hmac::Key>,
    sync: AuditSync,
    /// The batch being written, reused from batch to batch.
    out: Vec<u8>,
    naming: Naming,
    /// Bytes and lines in the active file.
    size: u64,
    lines: u64,
    /// The active file's serial: one more than the last rotated file's.
    serial: u64,
    /// The UTC day the active file's records are from.
    day: u64,
    rotation: Option<Rotation>,
    checkpoints: Option<Checkpoints>,
    now: fn() -> SystemTime,
    /// Records written since the last sync (by the thread or a leader), and when that sync was.
    unsynced: bool,
    last_sync: Instant,
    /// A batch a leader could not finish (a failed or short write, a spool that did not take it): the writer
    /// thread finishes it, with retries, before anything else.
    handoff: Option<Handoff>,
    /// A leader's batch reached the rotation size: the thread rotates (after a last checkpoint) before its next.
    rotate_due: bool,
}

/// Where a leader's batch (in `Writer::out`) stopped.
#[derive(Debug, Clone, Copy)]
struct Handoff {
    /// Records in the batch, counted as written once it is done.
    records: u64,
    /// Bytes of the batch the file has (`None`: all of them).
    file_done: Option<usize>,
    /// The first SIEM spool that has not taken the batch.
    spool: usize,
}

/// The writer, shared by its thread and the request tasks that lead a batch (`Committer::lead`), with what a
/// written batch updates: the records counter and the SIEM spools.
pub(super) struct Committer {
    writer: Mutex<Writer>,
    written: IntCounter,
    siem: Spools,
}

/// How often a writer thread whose batches leaders may write looks at its timers (sync, checkpoint, midnight):
/// a leader's write does not wake it.
const LEADING_TIMER_CHECK: Duration = Duration::from_millis(250);

/// Records a leader writes at most before it leaves the rest to the writer thread (its own response waits).
const LEADER_BATCHES: usize = 4;

/// `audit.file.rotate`, and where rotated files go to be compressed.
pub(super) struct Rotation {
    pub size: Option<u64>,
    pub daily: bool,
    pub compressor: mpsc::Sender<Job>,
    pub rotations: IntCounter,
    /// A rename that failed is not tried again before this.
    pub retry_after: Option<Instant>,
}

/// `audit.checkpoints`.
pub(super) struct Checkpoints {
    pub every: Duration,
    pub key: ring::signature::Ed25519KeyPair,
    /// The sidecar every checkpoint is appended to.
    pub sidecar: File,
    pub written: IntCounter,
    pub last: Instant,
    /// Checkpoints in the batch being written, for the sidecar once the batch is.
    pub unwritten: Vec<u8>,
    /// Lines of the active file at the last checkpoint (and its serial): nothing new, no checkpoint.
    pub at: (u64, u64),
}

/// A torn end found on open: set aside in `kept_in`, and cut from the audit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Torn {
    /// Where the torn bytes began in the audit file (its length now).
    pub offset: u64,
    pub bytes: u64,
    pub kept_in: PathBuf,
}

/// The lock file of the audit file at `path`: its name with `.lock` added.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    path.with_file_name(name)
}

/// Largest batch buffer kept between batches; a larger one (after a burst) is given back.
const KEEP_BUFFER: usize = 1 << 20;

impl Writer {
    /// Opens (creating it and its directory) the file to append to; a regular file's torn end is repaired first.
    pub(super) fn open(path: &Path, chain: bool, sync: AuditSync) -> std::io::Result<(Self, Option<Torn>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let (existing, absent) = match std::fs::metadata(path) {
            // A pipe or terminal (e.g. /dev/stdout in a container) cannot be read back: its chain starts afresh.
            Ok(meta) => (meta.is_file(), false),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => (false, true),
            Err(error) => return Err(error),
        };
        // Taken before the torn end is repaired: the file is this process's alone (a pipe is nobody's to lock).
        let exclusive = (existing || absent)
            .then(|| crate::lockfile::hold(&lock_path(path), &path.display().to_string()))
            .transpose()?;
        let (torn, mut last) = if existing { repair(path)? } else { (None, None) };
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let metadata = file.metadata()?;
        let regular = metadata.is_file();
        let naming = Naming::new(path);
        let (mut serial, mut lines) = (1, 0);
        if regular {
            serial = naming.last_serial()? + 1;
            lines = count_lines(path, 0, u64::MAX)?;
            // An empty active file after a rotation: the chain continues from the last rotated file.
            if chain && last.is_none() && lines == 0 {
                last = last_hash_of_series(&naming)?;
            }
        }
        let chain = chain.then(|| {
            let mut prev = [0u8; 64];
            prev.copy_from_slice(last.as_deref().unwrap_or(GENESIS).as_bytes());
            prev
        });
        let now = SystemTime::now();
        let day = match metadata.modified() {
            Ok(modified) if lines > 0 => rotate::utc_day(modified),
            _ => rotate::utc_day(now),
        };
        let writer = Self {
            file,
            exclusive,
            regular,
            chain,
            key: None,
            sync,
            out: Vec::with_capacity(64 * 1024),
            naming,
            size: metadata.len(),
            lines,
            serial,
            day,
            rotation: None,
            checkpoints: None,
            now: SystemTime::now,
            unsynced: false,
            last_sync: Instant::now(),
            handoff: None,
            rotate_due: false,
        };
        Ok((writer, torn))
    }

    /// Keys the chain: HMAC-SHA256 with `key` instead of SHA-256.
    pub(super) fn keyed(mut self, key: ring::hmac::Key) -> Self {
        self.key = Some(key);
        self
    }

    /// Rotates the file as `rotation` says (a regular file only).
    pub(super) fn rotating(mut self, rotation: Rotation) -> std::io::Result<Self> {
        if !self.regular {
            return Err(std::io::Error::other("audit.file.rotate needs a regular file, not a pipe or a terminal"));
        }
        self.rotation = Some(rotation);
        Ok(self)
    }

    /// Takes the time from `now` (tests of the day boundary).
    #[cfg(test)]
    fn clocked(mut self, now: fn() -> SystemTime) -> Self {
        self.now = now;
        self.day = rotate::utc_day(now());
        self
    }

    /// Writes signed checkpoints as `checkpoints` says.
    pub(super) fn checkpointing(mut self, checkpoints: Checkpoints) -> Self {
        self.checkpoints = Some(checkpoints);
        self
    }

    /// Whether request tasks may write batches themselves (`Committer::lead`): a regular file synced at an
    /// interval, so that a leader's work is a `write(2)` to the page cache and never an fsync.
    pub(super) fn may_be_led(&self) -> bool {
        self.regular && matches!(self.sync, AuditSync::Every(_))
    }

    /// The writer thread: takes every queued record at once, writes them with one write(2), syncs per
    /// `audit.file.sync`, then tells the waiters. A failed write or sync is retried until it succeeds (the
    /// records stay counted against the queue meanwhile), or until shutdown gives up. Each batch is spooled for
    /// the SIEM sinks after the file write. Between batches it rotates the file and writes checkpoints when due.
    #[cfg(test)]
    pub(super) fn run(self, queue: &Queue, written: &IntCounter, siem: &Spools) {
        let committer = Committer::new(self, written.clone(), siem.clone());
        committer.run(queue);
    }

    /// The sync interval, when it is not per batch.
    fn interval(&self) -> Option<Duration> {
        match self.sync {
            AuditSync::Batch => None,
            AuditSync::Every(interval) => Some(interval),
        }
    }

    /// When the thread must wake without records: a sync, a checkpoint, midnight, or (`leading`) a look at them.
    fn deadline(&self, leading: bool) -> Option<Instant> {
        let sync_at =
            self.interval().filter(|_| self.unsynced && self.regular).map(|interval| self.last_sync + interval);
        let look = leading.then(|| Instant::now() + LEADING_TIMER_CHECK);
        [sync_at, self.timer_deadline(), look].into_iter().flatten().min()
    }

    /// One turn of the writer thread after `queue.wait`; false when it ends.
    fn turn(
        &mut self,
        taken: Taken,
        batch: &mut VecDeque<Entry>,
        queue: &Queue,
        written: &IntCounter,
        siem: &Spools,
    ) -> bool {
        if !self.finish_handoff(queue, written, siem) {
            return false;
        }
        let interval = self.interval();
        match taken {
            Taken::Records => queue.drain(batch),
            Taken::Deadline => {}
            Taken::Closed => {
                // The last checkpoint says how far the file goes at shutdown.
                self.out.clear();
                if self.checkpoint_pending() {
                    self.append_checkpoint();
                    self.unsynced |= self.emit(queue, siem);
                }
                if self.unsynced {
                    self.sync_all(queue, siem);
                }
                return false;
            }
        }
        if self.day_turned() || std::mem::take(&mut self.rotate_due) {
            // The old file is closed before a record of the new day (or past the size) is written.
            self.out.clear();
            if self.checkpoint_pending() {
                self.append_checkpoint();
                if !self.emit(queue, siem) {
                    return false;
                }
            }
            if !self.sync_all(queue, siem) {
                return false;
            }
            (self.last_sync, self.unsynced) = (Instant::now(), false);
            if !self.rotate(queue) {
                return false;
            }
        }
        let count = batch.len() as u64;
        self.out.clear();
        for record in batch.drain(..) {
            self.append(&record);
        }
        let full = self.full_after(self.out.len() as u64);
        if (full || self.checkpoint_due()) && self.checkpoint_pending() {
            self.append_checkpoint();
        }
        if !self.out.is_empty() {
            if !self.emit(queue, siem) {
                return false;
            }
            self.unsynced = true;
        }
        // With `sync` a duration, the thread syncs after the turn, without the writer (`Committer::run`): this
        // batch's waiters are woken once it is written, and leaders write while the data goes to the disk.
        if self.unsynced && (full || interval.is_none()) {
            if !self.sync_all(queue, siem) {
                return false;
            }
            (self.last_sync, self.unsynced) = (Instant::now(), false);
        }
        if full && !self.rotate(queue) {
            return false;
        }
        recovered(queue);
        if count > 0 {
            queue.advance(count);
            written.inc_by(count);
        }
        if self.out.capacity() > KEEP_BUFFER {
            self.out = Vec::with_capacity(64 * 1024);
        }
        true
    }

    /// Finishes the batch a leader left (with retries), and counts it written; false when shutdown gave up.
    fn finish_handoff(&mut self, queue: &Queue, written: &IntCounter, siem: &Spools) -> bool {
        let Some(handoff) = self.handoff.take() else { return true };
        if let Some(done) = handoff.file_done {
            if !self.write_out_from(done, queue) {
                return false;
            }
        }
        if !siem.append_from(handoff.spool, &self.out, queue) {
            return false;
        }
        self.unsynced = true;
        recovered(queue);
        queue.advance(handoff.records);
        written.inc_by(handoff.records);
        true
    }

    /// A leader's batch: serialized, chained, written with one `write(2)` and spooled, without retrying or
    /// waiting. `Err` leaves the rest to the writer thread (`handoff`); the records are counted written on `Ok`.
    fn lead_batch(&mut self, batch: &mut VecDeque<Entry>, queue: &Queue, siem: &Spools) -> Result<u64, ()> {
        let records = batch.len() as u64;
        self.out.clear();
        for record in batch.drain(..) {
            self.append(&record);
        }
        self.unsynced = true;
        queue.begin_io(Io::Write);
        let result = self.file.write(&self.out);
        queue.end_io(Io::Write);
        let done = match result {
            Ok(written) => {
                self.size += written as u64;
                written
            }
            Err(_) => 0,
        };
        if done < self.out.len() {
            self.handoff = Some(Handoff { records, file_done: Some(done), spool: 0 });
            return Err(());
        }
        if let Err(spool) = siem.try_append(&self.out) {
            self.handoff = Some(Handoff { records, file_done: None, spool });
            return Err(());
        }
        if self.full_after(0) {
            self.rotate_due = true;
        }
        if self.out.capacity() > KEEP_BUFFER {
            self.out = Vec::with_capacity(64 * 1024);
        }
        Ok(records)
    }

    /// Whether a leader may write the next batch: nothing for the thread to do first (a handoff, a rotation, a
    /// checkpoint, a new day, a failing sink).
    fn leader_may_write(&mut self) -> bool {
        self.handoff.is_none() && !self.rotate_due && !self.checkpoint_due() && !self.day_turned()
    }

    /// Writes the batch to the file, then spools it for each SIEM sink: records count as written only once both
    /// hold them. False when shutdown gave up on a failing sink.
    fn emit(&mut self, queue: &Queue, siem: &Spools) -> bool {
        self.write_out(queue) && siem.append(&self.out, queue)
    }

    /// Syncs the file, then the SIEM spools; false when shutdown gave up on a failing sink.
    fn sync_all(&mut self, queue: &Queue, siem: &Spools) -> bool {
        self.sync(queue) && siem.sync(queue)
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
            if self.key.is_some() {
                self.out.extend_from_slice(KEYED_MARK);
            }
            self.out.extend_from_slice(b",\"prev\":\"");
            self.out.extend_from_slice(prev);
            self.out.extend_from_slice(b"\"}");
            match &self.key {
                Some(key) => {
                    let tag = ring::hmac::sign(key, &self.out[start..]);
                    hex::encode_to_slice(tag.as_ref(), prev).expect("64 hex digits fit 64 bytes");
                }
                None => {
                    let hash = Sha256::digest(&self.out[start..]);
                    hex::encode_to_slice(hash, prev).expect("64 hex digits fit 64 bytes");
                }
            }
            self.out.pop();
            self.out.extend_from_slice(b",\"hash\":\"");
            self.out.extend_from_slice(prev);
            self.out.extend_from_slice(b"\"}");
        }
        self.out.push(b'\n');
        self.lines += 1;
    }

    /// The next moment a timer is due: a checkpoint while records wait for one, or midnight for a daily rotation
    /// of a file that has records.
    fn timer_deadline(&self) -> Option<Instant> {
        let checkpoint = self
            .checkpoints
            .as_ref()
            .filter(|_| self.checkpoint_pending())
            .map(|checkpoints| checkpoints.last + checkpoints.every);
        let midnight = self.rotation.as_ref().filter(|r| r.daily && self.lines > 0).map(|rotation| {
            let midnight = rotate::next_midnight(SystemTime::UNIX_EPOCH + Duration::from_secs(self.day * 86_400));
            let at = Instant::now() + midnight.duration_since((self.now)()).unwrap_or_default();
            // After a failed rename, not before it may be tried again.
            rotation.retry_after.map_or(at, |after| at.max(after))
        });
        [checkpoint, midnight].into_iter().flatten().min()
    }

    /// Whether a daily rotation is due: the active file has records of an earlier UTC day.
    fn day_turned(&mut self) -> bool {
        let Some(rotation) = &self.rotation else { return false };
        let today = rotate::utc_day((self.now)());
        if !rotation.daily || today <= self.day {
            return false;
        }
        if self.lines == 0 {
            self.day = today;
            return false;
        }
        rotation.retry_after.is_none_or(|after| Instant::now() >= after)
    }

    /// Whether the active file reaches the rotation size once `more` bytes are written.
    fn full_after(&self, more: u64) -> bool {
        self.rotation.as_ref().is_some_and(|rotation| {
            rotation.size.is_some_and(|size| self.size + more >= size)
                && rotation.retry_after.is_none_or(|after| Instant::now() >= after)
        })
    }

    /// Lines were written since the last checkpoint.
    fn checkpoint_pending(&self) -> bool {
        self.checkpoints.as_ref().is_some_and(|c| c.at != (self.serial, self.lines))
    }

    fn checkpoint_due(&self) -> bool {
        self.checkpoints.as_ref().is_some_and(|c| c.last.elapsed() >= c.every)
    }

    /// Appends a signed checkpoint of the active file as it is with the batch so far, and copies it to the
    /// sidecar. Lines already in `out` count: they are written with it, before it.
    fn append_checkpoint(&mut self) {
        let (Some(checkpoints), Some(prev)) = (&self.checkpoints, &self.chain) else { return };
        let last_hash = std::str::from_utf8(prev).unwrap_or(GENESIS).to_owned();
        let mut record = CheckpointRecord {
            ts: super::timestamp((self.now)()),
            id: format!("checkpoint-{}", &last_hash[..16]),
            kind: "checkpoint".into(),
            file: self.naming.active().file_name().unwrap_or_default().to_string_lossy().into_owned(),
            serial: self.serial,
            records: self.lines,
            last_hash,
            chain_hash: if self.key.is_some() { "hmac-sha256" } else { "sha256" }.into(),
            signature: String::new(),
        };
        checkpoint::sign(&mut record, &checkpoints.key);
        let start = self.out.len();
        self.append(&Entry::from(record));
        let checkpoints = self.checkpoints.as_mut().expect("checked above");
        // Copied to the sidecar once the file has it (`write_out`): a checkpoint there never claims more than the
        // file got, even when a crash cuts the write short.
        checkpoints.unwritten.extend_from_slice(&self.out[start..]);
        checkpoints.written.inc();
        checkpoints.last = Instant::now();
        checkpoints.at = (self.serial, self.lines);
    }

    /// Renames the active file to its rotated name, opens a new one (the chain goes on), and hands the rotated
    /// file to the compressor. A rename that fails is logged and tried again a minute later, the records going on
    /// into the same file; false only when shutdown gave up while a new file could not be opened.
    fn rotate(&mut self, queue: &Queue) -> bool {
        let now = (self.now)();
        let active = self.naming.active();
        let rotated = self.naming.rotated(self.serial, now);
        let Some(rotation) = self.rotation.as_mut() else { return true };
        if let Err(error) = std::fs::rename(&active, &rotated) {
            tracing::error!(%error, file = %active.display(), "cannot rotate the audit file; trying again in a minute");
            rotation.retry_after = Some(Instant::now() + Duration::from_secs(60));
            return true;
        }
        rotation.retry_after = None;
        let mut failures = 0;
        let file = loop {
            let opened = OpenOptions::new().create(true).append(true).open(&active);
            match opened.and_then(|file| rotate::sync_dir(self.naming.dir()).map(|()| file)) {
                Ok(file) => break file,
                Err(error) => {
                    if !retry(queue, &error, &mut failures) {
                        return false;
                    }
                }
            }
        };
        let rotation = self.rotation.as_mut().expect("checked above");
        rotation.rotations.inc();
        tracing::info!(
            file = %rotated.display(),
            serial = self.serial,
            lines = self.lines,
            bytes = self.size,
            "audit file rotated"
        );
        if rotation.compressor.send(Job::Compress(rotated)).is_err() {
            tracing::error!("the audit compressor has stopped: rotated files stay uncompressed until the next start");
        }
        self.file = file;
        (self.size, self.lines, self.serial, self.day) = (0, 0, self.serial + 1, rotate::utc_day(now));
        if let Some(checkpoints) = &mut self.checkpoints {
            // The new file has nothing to checkpoint until a record is written to it.
            checkpoints.at = (self.serial, 0);
        }
        true
    }

    /// Writes the batch (`out`); false when shutdown gave up on a failing sink. Every byte the file gets passes
    /// here, records and checkpoints alike; once written, the batch's checkpoints go to the sidecar.
    fn write_out(&mut self, queue: &Queue) -> bool {
        self.write_out_from(0, queue)
    }

    /// `write_out` of the batch's bytes from `done` on.
    fn write_out_from(&mut self, mut done: usize, queue: &Queue) -> bool {
        let mut failures = 0;
        while done < self.out.len() {
            queue.begin_io(Io::Write);
            let result = self.file.write(&self.out[done..]);
            queue.end_io(Io::Write);
            match result {
                Ok(0) => {
                    if !retry(queue, &std::io::ErrorKind::WriteZero.into(), &mut failures) {
                        return false;
                    }
                }
                Ok(written) => {
                    done += written;
                    self.size += written as u64;
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    if !retry(queue, &error, &mut failures) {
                        return false;
                    }
                }
            }
        }
        if let Some(checkpoints) = self.checkpoints.as_mut().filter(|c| !c.unwritten.is_empty()) {
            if let Err(error) = checkpoints.sidecar.write_all(&checkpoints.unwritten) {
                tracing::error!(%error, file = %self.naming.checkpoints().display(), "cannot append to the checkpoint file");
            }
            checkpoints.unwritten.clear();
        }
        true
    }

    /// Syncs the file's data to the disk (a regular file only); false when shutdown gave up on a failing sink.
    fn sync(&mut self, queue: &Queue) -> bool {
        if !self.regular {
            return true;
        }
        let sidecar = self.checkpoints.as_ref().map(|checkpoints| (&checkpoints.sidecar, self.naming.checkpoints()));
        sync_files(queue, &self.file, sidecar.as_ref().map(|(file, path)| (*file, path.as_path())))
    }

    /// With `sync` a duration that has passed since the last sync of written records: the files to sync without
    /// holding the writer (handles of their own), the file counted synced as of now. Records written meanwhile
    /// wait for the next one.
    fn take_periodic_sync(&mut self) -> Option<PeriodicSync> {
        let interval = self.interval()?;
        if !self.regular || !self.unsynced || self.last_sync.elapsed() < interval {
            return None;
        }
        (self.last_sync, self.unsynced) = (Instant::now(), false);
        let clones = self.file.try_clone().and_then(|file| {
            let sidecar = self
                .checkpoints
                .as_ref()
                .map(|checkpoints| {
                    Ok::<_, std::io::Error>((checkpoints.sidecar.try_clone()?, self.naming.checkpoints()))
                })
                .transpose()?;
            Ok((file, sidecar))
        });
        Some(match clones {
            Ok((file, sidecar)) => PeriodicSync::Apart { file, sidecar },
            // No descriptor to spare: synced with the writer held, as a batch is.
            Err(_) => PeriodicSync::Held,
        })
    }
}

impl Committer {
    pub(super) fn new(writer: Writer, written: IntCounter, siem: Spools) -> Self {
        Self { writer: Mutex::new(writer), written, siem }
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // A panic while writing leaves at worst a batch half written, which the chain and `verify` tell.
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The writer thread's body: waits for records or a timer, then takes the writer and writes; syncs (with
    /// `sync` a duration) without it.
    pub(super) fn run(&self, queue: &Queue) {
        let mut batch = VecDeque::new();
        let leading = queue.leading();
        loop {
            let deadline = self.lock().deadline(leading);
            let taken = queue.wait(deadline);
            let mut writer = self.lock();
            if !writer.turn(taken, &mut batch, queue, &self.written, &self.siem) {
                break;
            }
            let synced = match writer.take_periodic_sync() {
                None => true,
                Some(PeriodicSync::Held) => writer.sync_all(queue, &self.siem),
                Some(PeriodicSync::Apart { file, sidecar }) => {
                    // No request waits for a periodic sync: leaders write (and the thread's waiters were woken)
                    // while it runs.
                    drop(writer);
                    let sidecar = sidecar.as_ref().map(|(file, path)| (file, path.as_path()));
                    sync_files(queue, &file, sidecar) && self.siem.sync(queue)
                }
            };
            // A sync that failed and then succeeded is told healthy by the next turn, which also finishes what a
            // leader may have left.
            if !synced {
                break;
            }
        }
        // Nothing more is written (the queue refuses records from now on): another tollgate, or this one started
        // again in the same process, may take the file.
        self.lock().exclusive = None;
        queue.finish();
    }

    /// Leads (the caller became the leader when it queued its record): writes what is queued, batch after batch,
    /// until none is left, then resigns. What a leader must not do (wait for the writer thread's lock, retry a
    /// failed write, rotate, checkpoint, sync) is left to the writer thread, woken for it.
    pub(super) fn lead(&self, queue: &Queue) {
        let Ok(mut writer) = self.writer.try_lock() else {
            // The thread is writing or syncing: it takes what is queued when done.
            queue.resign();
            return;
        };
        let mut batch = VecDeque::new();
        for _ in 0..LEADER_BATCHES {
            if !writer.leader_may_write() {
                break;
            }
            if !queue.lead_take(&mut batch) {
                // Resigned: nothing is queued.
                return;
            }
            match writer.lead_batch(&mut batch, queue, &self.siem) {
                Ok(records) => {
                    queue.advance(records);
                    self.written.inc_by(records);
                }
                Err(()) => break,
            }
        }
        // Work for the thread (a handoff, a rotation, a checkpoint, a new day), or records still coming.
        let thread_work = !writer.leader_may_write();
        drop(writer);
        queue.resign();
        if thread_work {
            queue.wake_writer();
        }
    }
}

/// The last hash of the newest rotated file, compressed or not.
fn last_hash_of_series(naming: &Naming) -> std::io::Result<Option<String>> {
    let series = naming.series()?;
    let Some(newest) = series.iter().rev().find(|file| file.serial.is_some()) else { return Ok(None) };
    let mut last = None;
    let mut reader = rotate::open_series_file(&newest.path)?;
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line)? > 0 {
        if let Some(hash) = std::str::from_utf8(line.trim_ascii_end()).ok().and_then(hash_of) {
            last = Some(hash);
        }
        line.clear();
    }
    Ok(last)
}

/// What `Writer::take_periodic_sync` leaves to sync.
enum PeriodicSync {
    /// Handles of the audit file and of its checkpoint file (with its path), synced without the writer.
    Apart { file: File, sidecar: Option<(File, PathBuf)> },
    /// No handles of its own: synced with the writer held.
    Held,
}

/// Syncs the audit file's data (and the checkpoint file's, whose failure is only logged), retrying a failure as a
/// write is; false when shutdown gave up.
fn sync_files(queue: &Queue, file: &File, sidecar: Option<(&File, &Path)>) -> bool {
    if let Some((sidecar, path)) = sidecar {
        if let Err(error) = sidecar.sync_data() {
            tracing::error!(%error, file = %path.display(), "cannot sync the checkpoint file");
        }
    }
    let mut failures = 0;
    loop {
        queue.begin_io(Io::Sync);
        let result = file.sync_data();
        queue.end_io(Io::Sync);
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

/// Marks the sink healthy again after a write or sync succeeded, logging the end of a failure.
fn recovered(queue: &Queue) {
    if queue.recover() {
        tracing::warn!("audit records are written again");
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
        drop(writer);
        let (reopened, torn) = Writer::open(&path, true, AuditSync::Batch).unwrap();
        assert_eq!(torn, None);
        assert_eq!(reopened.chain, Some(expected), "the chain continues from the long record");
    }

    // ---- rotation, keys and checkpoints ------------------------------------------------------------------

    use crate::audit::rotate::SeriesFile;
    use crate::audit::verify::{verify_series, CheckpointCheck};
    use ring::signature::KeyPair;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The fake clock of `clocked` writers, in seconds since the epoch.
    static FAKE_NOW: AtomicU64 = AtomicU64::new(0);

    fn fake_now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(FAKE_NOW.load(Ordering::SeqCst))
    }

    fn set_fake_now(text: &str) {
        let at = humantime::parse_rfc3339(text).unwrap().duration_since(SystemTime::UNIX_EPOCH).unwrap();
        FAKE_NOW.store(at.as_secs(), Ordering::SeqCst);
    }

    fn record(id: &str) -> Entry {
        Entry::from(Record { id: id.into(), kind: "connect", decision: "allow", ..Record::default() })
    }

    fn rotating(size: Option<u64>, daily: bool) -> (Rotation, mpsc::Receiver<Job>) {
        let (compressor, jobs) = mpsc::channel();
        let rotations = IntCounter::new("rotations", "rotations").unwrap();
        (Rotation { size, daily, compressor, rotations, retry_after: None }, jobs)
    }

    #[test]
    fn with_sync_a_duration_a_batch_counts_written_before_its_sync_which_runs_without_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) =
            Writer::open(&dir.path().join("audit.jsonl"), true, AuditSync::Every(Duration::ZERO)).unwrap();
        let queue = Queue::new(16, None, false);
        let written = IntCounter::new("written", "written").unwrap();
        queue.try_push(record("a")).unwrap();
        let mut batch = VecDeque::new();
        assert!(writer.turn(Taken::Records, &mut batch, &queue, &written, &Spools::default()));
        assert_eq!(written.get(), 1, "written, its waiters woken, within the turn");
        assert!(writer.unsynced, "the sync that is due is not run within the turn (with the writer held)");
        assert!(matches!(writer.take_periodic_sync(), Some(PeriodicSync::Apart { sidecar: None, .. })));
        assert!(!writer.unsynced);
        assert!(writer.take_periodic_sync().is_none(), "nothing written since");

        // Per batch, the sync is part of the turn: waiters are woken once their batch is on the disk.
        writer.sync = AuditSync::Batch;
        queue.try_push(record("b")).unwrap();
        assert!(writer.turn(Taken::Records, &mut batch, &queue, &written, &Spools::default()));
        assert_eq!((written.get(), writer.unsynced), (2, false));
        assert!(writer.take_periodic_sync().is_none());
    }

    /// Runs `writer` on its thread, hands it each batch in turn (each written before the next is queued, with
    /// `between` called in between), then closes it.
    fn run_batches(writer: Writer, batches: &[&[&str]], between: impl Fn(usize)) {
        let queue = Queue::new(4096, None, false);
        let writer_queue = queue.clone();
        let written = IntCounter::new("written", "written").unwrap();
        let thread = std::thread::spawn(move || writer.run(&writer_queue, &written, &Spools::default()));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for (index, batch) in batches.iter().enumerate() {
            between(index);
            for id in *batch {
                queue.try_push(record(id)).unwrap();
            }
            runtime.block_on(queue.flush());
        }
        queue.close_now();
        thread.join().unwrap();
    }

    #[test]
    fn a_caller_that_finds_the_writer_asleep_writes_the_batch_itself_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let Asleep { path, written, committer, queue, thread } = asleep_writer(&dir);
        let first = queue.try_push_leading(record("a")).unwrap();
        assert!(first.leads, "the writer sleeps: the caller leads");
        let second = queue.try_push_leading(record("b")).unwrap();
        assert!(!second.leads, "one leader at a time: the second record is the leader's to write");
        committer.lead(&queue);
        // Written by the leader, on this thread: nothing is left for the writer thread.
        assert_eq!(queue.unwritten(), 0);
        assert_eq!(written.get(), 2);
        let third = queue.try_push_leading(record("c")).unwrap();
        assert!(third.leads, "the leader resigned with the queue empty");
        committer.lead(&queue);
        queue.close_now();
        thread.join().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(ids(&text), ["a", "b", "c"]);
        assert_eq!(verify_chain(&text), Ok(3));
    }

    #[test]
    fn a_leader_that_does_not_lead_leaves_its_records_to_the_writer_thread() {
        let dir = tempfile::tempdir().unwrap();
        let Asleep { path, queue, thread, .. } = asleep_writer(&dir);
        let queued = queue.try_push_leading(record("a")).unwrap();
        assert!(queued.leads);
        // Cancelled before it led (its response went away): it resigns, and the thread writes the record.
        queue.resign();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let done = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), queue.written(queued.sequence)).await });
        assert_eq!(done, Ok(true));
        queue.close_now();
        thread.join().unwrap();
        assert_eq!(ids(&std::fs::read_to_string(&path).unwrap()), ["a"]);
    }

    /// A writer thread on `dir/audit.jsonl` that callers may lead, once it sleeps for want of records.
    struct Asleep {
        path: std::path::PathBuf,
        written: IntCounter,
        committer: std::sync::Arc<Committer>,
        queue: std::sync::Arc<Queue>,
        thread: std::thread::JoinHandle<()>,
    }

    fn asleep_writer(dir: &tempfile::TempDir) -> Asleep {
        let path = dir.path().join("audit.jsonl");
        let (writer, _) = Writer::open(&path, true, AuditSync::Every(Duration::from_secs(1))).unwrap();
        assert!(writer.may_be_led(), "a regular file synced at an interval");
        let written = IntCounter::new("written", "written").unwrap();
        let committer = std::sync::Arc::new(Committer::new(writer, written.clone(), Spools::default()));
        let queue = Queue::with_leading(64, None, false, true);
        let thread = std::thread::spawn({
            let (committer, queue) = (committer.clone(), queue.clone());
            move || committer.run(&queue)
        });
        // The thread sleeps once it found nothing to write (bounded: 10 s).
        let asleep = Instant::now();
        while !queue.writer_idle() {
            assert!(asleep.elapsed() < Duration::from_secs(10), "the writer thread did not go to sleep");
            std::thread::yield_now();
        }
        Asleep { path, written, committer, queue, thread }
    }

    /// `text` with every `allow` turned into `deny` and every hash recomputed as plain SHA-256 from `first_prev`:
    /// the edit anyone can make without the chain key.
    fn denied_with_plain_hashes(text: &str, first_prev: &str) -> String {
        let mut prev = first_prev.to_owned();
        let mut forged = String::new();
        for line in text.lines() {
            let line = line.replace("\"decision\":\"allow\"", "\"decision\":\"deny\"");
            let (hashed, _) = split_hash(&line).unwrap();
            let at = hashed.rfind(",\"prev\":\"").unwrap();
            let hashed = format!("{},\"prev\":\"{prev}\"}}", &hashed[..at]);
            prev = hex::encode(Sha256::digest(hashed.as_bytes()));
            forged.push_str(&format!("{},\"hash\":\"{prev}\"}}\n", &hashed[..hashed.len() - 1]));
        }
        forged
    }

    /// Every line of the series, in order.
    fn series_text(naming: &Naming) -> (Vec<SeriesFile>, String) {
        let series = naming.series().unwrap();
        let mut text = String::new();
        for file in &series {
            rotate::open_series_file(&file.path).unwrap().read_to_string(&mut text).unwrap();
        }
        (series, text)
    }

    fn ids(text: &str) -> Vec<String> {
        text.lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|record| record["kind"] != "checkpoint")
            .map(|record| record["id"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn at_utc_midnight_the_file_is_rotated_before_the_new_day_is_written_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        set_fake_now("2026-12-05T23:59:58Z");
        let (rotation, jobs) = rotating(None, true);
        let (writer, _) = Writer::open(&path, true, AuditSync::Batch).unwrap();
        let writer = writer.clocked(fake_now).rotating(rotation).unwrap();
        run_batches(writer, &[&["a", "b"], &["c"], &["d"]], |index| match index {
            1 => set_fake_now("2026-12-05T23:59:59Z"),
            2 => set_fake_now("2026-12-06T00:00:01Z"),
            _ => {}
        });
        let rotated = dir.path().join("audit-000001-20261206T000001Z.jsonl");
        assert!(matches!(jobs.try_recv(), Ok(Job::Compress(path)) if path == rotated), "handed to the compressor");
        assert_eq!(ids(&std::fs::read_to_string(&rotated).unwrap()), ["a", "b", "c"]);
        assert_eq!(ids(&std::fs::read_to_string(&path).unwrap()), ["d"]);
        let (series, _) = series_text(&Naming::new(&path));
        let report = verify_series(&series, None, None);
        assert!(!report.broken, "{:?}", report.lines);
        assert_eq!(report.lines.len(), 2, "{:?}", report.lines);

        // The boundary is UTC midnight only: a new file with records of one day is not rotated.
        let (rotation, jobs) = rotating(None, true);
        let (writer, _) = Writer::open(&path, true, AuditSync::Batch).unwrap();
        let writer = writer.clocked(fake_now).rotating(rotation).unwrap();
        run_batches(writer, &[&["e"], &["f"]], |_| set_fake_now("2026-12-06T23:59:59Z"));
        assert!(jobs.try_recv().is_err());
        assert_eq!(ids(&std::fs::read_to_string(&path).unwrap()), ["d", "e", "f"]);
    }

    #[test]
    fn a_daily_writer_wakes_at_utc_midnight_only_when_its_file_has_records() {
        fn ten_seconds_to_midnight() -> SystemTime {
            humantime::parse_rfc3339("2026-12-05T23:59:50Z").unwrap()
        }
        let dir = tempfile::tempdir().unwrap();
        let (rotation, _jobs) = rotating(None, true);
        let (writer, _) = Writer::open(&dir.path().join("audit.jsonl"), true, AuditSync::Batch).unwrap();
        let mut writer = writer.clocked(ten_seconds_to_midnight).rotating(rotation).unwrap();
        assert_eq!(writer.timer_deadline(), None, "an empty file is not rotated");
        writer.lines = 1;
        let before = Instant::now();
        let wake = writer.timer_deadline().expect("midnight");
        let after = Instant::now();
        assert!(wake >= before + Duration::from_secs(10) && wake <= after + Duration::from_secs(10), "{wake:?}");
    }

    #[test]
    fn by_size_every_record_is_in_exactly_one_file_and_the_series_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (rotation, jobs) = rotating(Some(1024), false);
        let counter = rotation.rotations.clone();
        let (writer, _) = Writer::open(&path, true, AuditSync::Batch).unwrap();
        let writer = writer.rotating(rotation).unwrap();
        let names: Vec<String> = (0..60).map(|n| format!("r{n}")).collect();
        let batches: Vec<Vec<&str>> = names.chunks(3).map(|c| c.iter().map(String::as_str).collect()).collect();
        let batches: Vec<&[&str]> = batches.iter().map(Vec::as_slice).collect();
        run_batches(writer, &batches, |_| {});
        let rotated = jobs.try_iter().count() as u64;
        assert!(rotated >= 5, "{rotated} rotations");
        assert_eq!(counter.get(), rotated);
        let naming = Naming::new(&path);
        let (series, text) = series_text(&naming);
        assert_eq!(ids(&text), names, "every record once, in order");
        for file in series.iter().filter(|f| f.serial.is_some()) {
            let size = std::fs::metadata(&file.path).unwrap().len();
            assert!((1024..1024 + 3 * 300).contains(&size), "{}: {size} bytes", file.path.display());
        }
        let report = verify_series(&series, None, None);
        assert!(!report.broken, "{:?}", report.lines);

        // Reopened after the rotations, the writer goes on from the last file's serial and hash.
        std::fs::remove_file(&path).unwrap();
        let (writer, _) = Writer::open(&path, true, AuditSync::Batch).unwrap();
        assert_eq!(writer.serial, rotated + 1);
        run_batches(writer, &[&["after"]], |_| {});
        let (series, _) = series_text(&naming);
        assert!(!verify_series(&series, None, None).broken);
    }

    #[test]
    fn a_keyed_chain_refuses_a_recomputed_sha256_and_checkpoints_find_a_cut_tail_and_a_forgery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let keys = crate::audit::keys::keygen(&dir.path().join("keys")).unwrap();
        let chain_key = crate::audit::keys::load_chain_key(&keys.chain_key).unwrap();
        let signing = crate::audit::keys::load_signing_key(&keys.signing_key).unwrap();
        let public_key = signing.public_key().as_ref().to_vec();
        let (rotation, _jobs) = rotating(Some(4096), false);
        let checkpoints = Checkpoints {
            every: Duration::from_secs(3600),
            key: signing,
            sidecar: OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join("audit.checkpoints.jsonl"))
                .unwrap(),
            written: IntCounter::new("checkpoints", "checkpoints").unwrap(),
            last: Instant::now(),
            unwritten: Vec::new(),
            at: (0, 0),
        };
        let written = checkpoints.written.clone();
        let (writer, _) = Writer::open(&path, true, AuditSync::Batch).unwrap();
        let writer = writer.keyed(chain_key).rotating(rotation).unwrap().checkpointing(checkpoints);
        let names: Vec<String> = (0..23).map(|n| format!("r{n}")).collect();
        let batches: Vec<Vec<&str>> = names.chunks(2).map(|c| c.iter().map(String::as_str).collect()).collect();
        let batches: Vec<&[&str]> = batches.iter().map(Vec::as_slice).collect();
        run_batches(writer, &batches, |_| {});

        let naming = Naming::new(&path);
        let (series, text) = series_text(&naming);
        assert_eq!(ids(&text), names);
        let sidecar = naming.checkpoints();
        let checkpoints = crate::audit::verify::read_checkpoints(&sidecar).unwrap();
        assert_eq!(checkpoints.len() as u64, written.get());
        let counts: Vec<usize> =
            series.iter().map(|f| std::fs::read_to_string(&f.path).unwrap().lines().count()).collect();
        assert!(series.len() >= 2, "{series:?}");
        assert_eq!(
            checkpoints.len(),
            series.len(),
            "one at each rotation and one at shutdown: {counts:?} {checkpoints:?}"
        );
        let key = crate::audit::keys::load_chain_key(&keys.chain_key).unwrap();
        let check = CheckpointCheck { source: &sidecar, checkpoints: &checkpoints, public_key: &public_key };
        let report = verify_series(&series, Some(&key), Some(&check));
        assert!(!report.broken, "{:?}", report.lines);

        // Without the key: refused, saying why.
        let report = verify_series(&series, None, None);
        assert!(report.needs_key && report.lines[0].contains("--key"), "{:?}", report.lines);

        // An edit with every later hash recomputed as plain SHA-256 (what anyone can do without the key).
        let active = std::fs::read_to_string(&path).unwrap();
        let first_prev = serde_json::from_str::<serde_json::Value>(active.lines().next().unwrap()).unwrap()["prev"]
            .as_str()
            .unwrap()
            .to_owned();
        let forged = denied_with_plain_hashes(&active, &first_prev);
        std::fs::write(&path, &forged).unwrap();
        let report = verify_series(&series, Some(&key), None);
        assert!(report.broken, "{:?}", report.lines);
        assert!(report.lines.iter().any(|l| l.contains("keyed hash does not match")), "{:?}", report.lines);
        std::fs::write(&path, &active).unwrap();

        // A tail cut from the active file: the chain alone cannot tell, the last checkpoint can.
        assert!(active.lines().count() >= 2, "a record and the shutdown checkpoint: {active}");
        let cut: String = active.lines().take(active.lines().count() - 2).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, &cut).unwrap();
        assert!(!verify_series(&series, Some(&key), None).broken, "invisible to the chain");
        let report = verify_series(&series, Some(&key), Some(&check));
        assert!(report.lines.iter().any(|l| l.contains("truncated: the checkpoint of")), "{:?}", report.lines);
        std::fs::write(&path, &active).unwrap();

        // A forged checkpoint (the count changed to cover a cut) fails its signature.
        let mut forged = checkpoints.clone();
        forged.last_mut().unwrap().1.records -= 1;
        let check = CheckpointCheck { source: &sidecar, checkpoints: &forged, public_key: &public_key };
        let report = crate::audit::verify::verify_signatures(&check);
        assert!(report.lines.iter().any(|l| l.contains("signature does not hold")), "{:?}", report.lines);
        let check = CheckpointCheck { source: &sidecar, checkpoints: &checkpoints, public_key: &public_key };
        assert!(!crate::audit::verify::verify_signatures(&check).broken);
    }

    #[test]
    fn without_a_key_checkpoints_still_find_a_rewrite_with_recomputed_hashes_up_to_the_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let keys = crate::audit::keys::keygen(&dir.path().join("keys")).unwrap();
        let signing = crate::audit::keys::load_signing_key(&keys.signing_key).unwrap();
        let public_key = signing.public_key().as_ref().to_vec();
        let sidecar = dir.path().join("audit.checkpoints.jsonl");
        let checkpoints = Checkpoints {
            every: Duration::from_secs(3600),
            key: signing,
            sidecar: OpenOptions::new().create(true).append(true).open(&sidecar).unwrap(),
            written: IntCounter::new("checkpoints", "checkpoints").unwrap(),
            last: Instant::now(),
            unwritten: Vec::new(),
            at: (0, 0),
        };
        let (writer, _) = Writer::open(&path, true, AuditSync::Batch).unwrap();
        run_batches(writer.checkpointing(checkpoints), &[&["a", "b"], &["c"]], |_| {});
        let text = std::fs::read_to_string(&path).unwrap();
        // The edit, every hash after it recomputed: the plain chain verifies.
        let forged = denied_with_plain_hashes(&text, GENESIS);
        std::fs::write(&path, &forged).unwrap();
        let series = Naming::new(&path).series().unwrap();
        assert!(!verify_series(&series, None, None).broken, "the plain chain cannot tell");
        let checkpoints = crate::audit::verify::read_checkpoints(&sidecar).unwrap();
        let check = CheckpointCheck { source: &sidecar, checkpoints: &checkpoints, public_key: &public_key };
        let report = verify_series(&series, None, Some(&check));
        assert!(report.broken, "{:?}", report.lines);
        assert!(
            report.lines.iter().any(|l| l.contains("line 3: its hash is not the one the checkpoint of")),
            "{:?}",
            report.lines
        );
    }
}
