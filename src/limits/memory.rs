//! The embedded backend: limit state in this process's memory, behind one short lock per operation. Rate and
//! concurrency state is memory only (a restart starts every bucket full and every count at zero); spend is
//! also written to an append-only ledger under `state.path`, so a restart keeps today's spend.
//!
//! Budget reservations in flight (`add_spend_held`) count in the counters but are held apart and never written:
//! the ledger holds settled spend only, so a restart after a crash (kill -9) starts from the spend that was
//! billed, not from the worst cases of the requests the crash cut.
//!
//! The ledger is `spend.jsonl`: one JSON object per change of settled spend,
//! `{"delta":D,"keys":[{"key":K,"period_end_ms":E}]}` (only the keys whose period had not ended). `open`
//! replays it — skipping a torn last line (a crash mid-write) and dropping keys whose period has ended — and
//! rewrites it compacted, one line per live counter, to a temp file (`spend.jsonl.PID.N.tmp`) that is fsync'd
//! and renamed over the old one. It is compacted the same way whenever it grows past twice its compacted size
//! (and at least `COMPACT_MIN_BYTES`).
//!
//! Each `add_spend` serialises its line into a small buffer and writes it with one `write_all` before the
//! counters change (a failed write changes nothing and is a `StateError`). There is no fsync per call: a
//! crashed process loses nothing the kernel already has, but a machine that loses power may lose the last
//! few seconds of spend. One process per directory: two processes sharing a `state.path` would overwrite each
//! other's ledger.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::backend::{millis, Admission, Backend, BoxFuture, Bucket, Local, Slot, SpendKey, StateError};
use super::gcra::{self, Step};

/// The hasher of the per-request maps: foldhash, seeded per process (keys carry user names), several times
/// faster than SipHash on short keys.
type FastHash = foldhash::fast::RandomState;

/// The ledger's file name in `state.path`.
pub const LEDGER_FILE: &str = "spend.jsonl";
/// The lock file beside it: one process writes a ledger.
pub const LOCK_FILE: &str = "spend.jsonl.lock";
/// Tells apart the temp files of compactions racing in one process (tests opening one directory twice).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);
/// The ledger is never compacted while smaller than this.
const COMPACT_MIN_BYTES: u64 = 4 << 20;
/// Ended spend counters are dropped from memory once there are more than this many counters (and twice as
/// many as after the last time).
const PRUNE_MIN_COUNTERS: usize = 100_000;

/// Counters for one process.
#[derive(Debug, Default)]
pub struct Memory {
    tats: Mutex<HashMap<String, u64, FastHash>>,
    slots: Mutex<HashMap<String, u32, FastHash>>,
    spend: Mutex<Spend>,
}

/// Spend counters, and the ledger they are written to (none for `Memory::default()`).
#[derive(Debug, Default)]
struct Spend {
    counters: HashMap<String, Counter>,
    prune_at: usize,
    ledger: Option<Ledger>,
    /// `spend.jsonl.lock` beside the ledger (`lockfile.rs`): held until `close`, it keeps other processes from
    /// writing the ledger (replicas share spend through Redis, never through one ledger).
    exclusive: Option<File>,
    /// `close` came: spend is no longer written (nor counted).
    closed: bool,
}

/// One key's value in its period. A key given with another period end starts again from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counter {
    period_end_ms: u64,
    /// Settled spend: what the ledger holds.
    value: i64,
    /// Reservations in flight, memory only; the key reads `value + held`.
    held: i64,
}

/// One line of the ledger, as written.
#[derive(Serialize)]
struct EntryOut<'a> {
    delta: i64,
    keys: &'a [&'a SpendKey],
}

/// One line of the ledger, as read.
#[derive(Deserialize)]
struct EntryIn {
    delta: i64,
    keys: Vec<SpendKey>,
}

/// The open ledger file, positioned at its end.
#[derive(Debug)]
struct Ledger {
    dir: PathBuf,
    file: File,
    /// Bytes written and whole: a failed append is cut back to this.
    len: u64,
    /// Compact once `len` reaches this.
    compact_at: u64,
    /// The line being written, kept to reuse its allocation.
    line: Vec<u8>,
}

impl Memory {
    /// The embedded backend with its spend ledger in `dir` (created if missing): replays `dir/spend.jsonl`
    /// and rewrites it compacted. A ledger that cannot be created, read or rewritten, or that has a damaged
    /// line other than a torn last one, is an error naming the path.
    pub fn open(dir: &Path) -> Result<Memory, StateError> {
        Self::open_at(dir, millis(SystemTime::now()))
    }

    /// `open`, with the time that decides which periods have ended.
    fn open_at(dir: &Path, now_ms: u64) -> Result<Memory, StateError> {
        fs::create_dir_all(dir)
            .map_err(|error| StateError(format!("cannot create the state directory {}: {error}", dir.display())))?;
        let path = dir.join(LEDGER_FILE);
        let what = format!("the spend ledger {}", path.display());
        let exclusive = crate::lockfile::hold(&dir.join(LOCK_FILE), &what).map_err(|error| match error.kind() {
            io::ErrorKind::WouldBlock => {
                StateError(format!("{error} (replicas share spend through state.backend: redis, not one ledger)"))
            }
            _ => StateError(format!("cannot lock {what}: {error}")),
        })?;
        let mut counters = match fs::read(&path) {
            Ok(bytes) => replay(&bytes, &path)?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => HashMap::new(),
            Err(error) => return Err(StateError(format!("cannot read the spend ledger {}: {error}", path.display()))),
        };
        counters.retain(|_, counter| counter.period_end_ms > now_ms);
        let ledger = Ledger::compacted(dir, &counters)
            .map_err(|error| StateError(format!("cannot rewrite the spend ledger {}: {error}", path.display())))?;
        let spend = Spend { counters, prune_at: 0, ledger: Some(ledger), exclusive: Some(exclusive), closed: false };
        Ok(Memory { spend: Mutex::new(spend), ..Memory::default() })
    }
}

impl Local for Memory {
    /// Takes one request from every bucket, or none.
    fn acquire_now(&self, buckets: &[Bucket], now_us: u64) -> Admission {
        let mut tats = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        let mut admitted = Vec::with_capacity(buckets.len());
        for (index, bucket) in buckets.iter().enumerate() {
            let tat = tats.get(&bucket.key).copied().unwrap_or(0);
            match gcra::step(bucket.rate, tat, now_us) {
                Step::Admit { tat_us } => admitted.push(tat_us),
                Step::Limited { retry_after_us } => return Admission::Limited { bucket: index, retry_after_us },
            }
        }
        // All or nothing: only when every bucket admits is a request taken from each.
        for (bucket, tat) in buckets.iter().zip(admitted) {
            // Update in place: a known key costs no allocation.
            match tats.get_mut(&bucket.key) {
                Some(known) => *known = tat,
                None => {
                    tats.insert(bucket.key.clone(), tat);
                }
            }
        }
        if tats.len() > 1_000_000 {
            tats.retain(|_, tat| *tat > now_us);
        }
        Admission::Admit
    }

    /// Takes a slot in every one of `slots`, or none; the index of a full one.
    fn enter_now(&self, slots: &[Slot]) -> Option<usize> {
        let mut counts = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(full) = slots.iter().position(|slot| counts.get(&slot.key).copied().unwrap_or(0) >= slot.max) {
            return Some(full);
        }
        for slot in slots {
            match counts.get_mut(&slot.key) {
                Some(count) => *count += 1,
                None => {
                    counts.insert(slot.key.clone(), 1);
                }
            }
        }
        None
    }

    /// Gives slots back.
    fn leave_now(&self, slots: &[Slot]) {
        let mut counts = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for slot in slots {
            if let Some(count) = counts.get_mut(&slot.key) {
                // Kept at zero rather than removed: the next request of this key then costs no allocation.
                *count = count.saturating_sub(1);
            }
        }
        if counts.len() > 1_000_000 {
            counts.retain(|_, count| *count > 0);
        }
    }
}

impl Backend for Memory {
    fn acquire<'a>(&'a self, buckets: &'a [Bucket], now_us: u64) -> BoxFuture<'a, Result<Admission, StateError>> {
        let admission = self.acquire_now(buckets, now_us);
        Box::pin(std::future::ready(Ok(admission)))
    }

    fn enter<'a>(&'a self, slots: &'a [Slot]) -> BoxFuture<'a, Result<Option<usize>, StateError>> {
        let full = self.enter_now(slots);
        Box::pin(std::future::ready(Ok(full)))
    }

    fn leave<'a>(&'a self, slots: &'a [Slot]) -> BoxFuture<'a, Result<(), StateError>> {
        self.leave_now(slots);
        Box::pin(std::future::ready(Ok(())))
    }

    fn add_spend<'a>(
        &'a self,
        keys: &'a [SpendKey],
        delta_micro_usd: i64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<i64>, StateError>> {
        // The ledger write happens under the lock, on this thread: one small write to the page cache.
        let values = self.spend.lock().unwrap_or_else(|p| p.into_inner()).add(keys, delta_micro_usd, 0, now_ms);
        Box::pin(std::future::ready(values))
    }

    /// The spent part is written to the ledger and counted; the held part is only counted, in memory.
    fn add_spend_held<'a>(
        &'a self,
        keys: &'a [SpendKey],
        spent_micro_usd: i64,
        held_micro_usd: i64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<i64>, StateError>> {
        let mut spend = self.spend.lock().unwrap_or_else(|p| p.into_inner());
        let values = spend.add(keys, spent_micro_usd, held_micro_usd, now_ms);
        Box::pin(std::future::ready(values))
    }

    fn spend<'a>(&'a self, keys: &'a [SpendKey], now_ms: u64) -> BoxFuture<'a, Result<Vec<i64>, StateError>> {
        let values = self.spend.lock().unwrap_or_else(|p| p.into_inner()).values(keys, now_ms);
        Box::pin(std::future::ready(Ok(values)))
    }

    fn name(&self) -> &'static str {
        "embedded"
    }

    fn close(&self) {
        let mut spend = self.spend.lock().unwrap_or_else(|p| p.into_inner());
        if spend.ledger.take().is_some() {
            spend.closed = true;
        }
        spend.exclusive = None;
    }

    fn local(&self) -> Option<&dyn Local> {
        Some(self)
    }
}

impl Spend {
    /// Writes the spent change to the ledger, then makes both: a change that could not be written is not made.
    /// `held` (reservations in flight) counts like spend but is never written.
    fn add(&mut self, keys: &[SpendKey], spent: i64, held: i64, now_ms: u64) -> Result<Vec<i64>, StateError> {
        if self.closed && spent != 0 {
            return Err(StateError("the spend ledger was closed at shutdown: this spend is not written".into()));
        }
        if let Some(ledger) = self.ledger.as_mut().filter(|_| spent != 0) {
            let live: Vec<&SpendKey> = keys.iter().filter(|key| !key.has_ended(now_ms)).collect();
            if !live.is_empty() {
                ledger.append(&live, spent).map_err(|error| ledger.error(error))?;
            }
        }
        let values = keys
            .iter()
            .map(|key| if key.has_ended(now_ms) { 0 } else { apply(&mut self.counters, key, spent, held) })
            .collect();
        self.tidy(now_ms);
        Ok(values)
    }

    fn values(&self, keys: &[SpendKey], now_ms: u64) -> Vec<i64> {
        keys.iter()
            .map(|key| match self.counters.get(&key.key) {
                Some(counter) if !key.has_ended(now_ms) && counter.period_end_ms == key.period_end_ms => {
                    counter.value.saturating_add(counter.held)
                }
                _ => 0,
            })
            .collect()
    }

    /// Drops ended counters from memory now and then, and compacts the ledger once it has grown enough.
    fn tidy(&mut self, now_ms: u64) {
        if self.counters.len() > self.prune_at.max(PRUNE_MIN_COUNTERS) {
            self.counters.retain(|_, counter| counter.period_end_ms > now_ms);
            self.prune_at = self.counters.len() * 2;
        }
        let Some(ledger) = self.ledger.as_mut() else { return };
        if ledger.len < ledger.compact_at {
            return;
        }
        self.counters.retain(|_, counter| counter.period_end_ms > now_ms);
        match Ledger::compacted(&ledger.dir, &self.counters) {
            Ok(compacted) => *ledger = compacted,
            Err(error) => {
                // The old ledger is still whole and still appended to; try again after as much growth.
                tracing::warn!(error = %ledger.error(error), "the spend ledger could not be compacted");
                ledger.compact_at = ledger.len.saturating_mul(2);
            }
        }
    }
}

/// Adds `spent` and `held` to `key`'s counter (a counter of another period starts again) and returns the new value
/// (both together).
fn apply(counters: &mut HashMap<String, Counter>, key: &SpendKey, spent: i64, held: i64) -> i64 {
    let fresh = Counter { period_end_ms: key.period_end_ms, value: 0, held: 0 };
    let counter = match counters.get_mut(&key.key) {
        Some(counter) => counter,
        None => counters.entry(key.key.clone()).or_insert(fresh),
    };
    if counter.period_end_ms != key.period_end_ms {
        *counter = fresh;
    }
    counter.value = counter.value.saturating_add(spent);
    counter.held = counter.held.saturating_add(held);
    counter.value.saturating_add(counter.held)
}

/// The counters a ledger adds up to (ended ones included; the caller drops them).
fn replay(bytes: &[u8], path: &Path) -> Result<HashMap<String, Counter>, StateError> {
    let mut counters = HashMap::new();
    let mut pieces = bytes.split(|&byte| byte == b'\n').enumerate().peekable();
    while let Some((index, line)) = pieces.next() {
        if pieces.peek().is_none() {
            // What follows the last newline: nothing when the file ends cleanly, else a write a crash cut short.
            if !line.is_empty() {
                let ledger = path.display();
                tracing::warn!(%ledger, line = index + 1, "skipping the torn last line of the spend ledger");
            }
            break;
        }
        if line.is_empty() {
            continue;
        }
        let entry: EntryIn = serde_json::from_slice(line).map_err(|error| {
            StateError(format!("the spend ledger {} is damaged at line {}: {error}", path.display(), index + 1))
        })?;
        for key in &entry.keys {
            apply(&mut counters, key, entry.delta, 0);
        }
    }
    Ok(counters)
}

impl Ledger {
    /// Writes `counters` (one line each, zeros left out) to a temp file, syncs it and renames it over the
    /// ledger; the result is open for appending.
    fn compacted(dir: &Path, counters: &HashMap<String, Counter>) -> io::Result<Ledger> {
        // Named for this process and compaction, so two processes wrongly sharing `dir` cannot interleave
        // their temp files (the last rename still wins: one process per directory).
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!("{LEDGER_FILE}.{}.{n}.tmp", std::process::id()));
        let written = Self::write_compacted(dir, &temp, counters);
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }

    fn write_compacted(dir: &Path, temp: &Path, counters: &HashMap<String, Counter>) -> io::Result<Ledger> {
        let mut out = BufWriter::new(File::create(temp)?);
        let mut live: Vec<(&String, &Counter)> = counters.iter().filter(|(_, counter)| counter.value != 0).collect();
        live.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut line = Vec::new();
        for (key, counter) in live {
            let key = SpendKey { key: key.clone(), period_end_ms: counter.period_end_ms };
            line.clear();
            serde_json::to_writer(&mut line, &EntryOut { delta: counter.value, keys: &[&key] })?;
            line.push(b'\n');
            out.write_all(&line)?;
        }
        let mut file = out.into_inner().map_err(|error| error.into_error())?;
        file.sync_all()?;
        fs::rename(temp, dir.join(LEDGER_FILE))?;
        // The rename survives a power loss once the directory is synced; best effort (not every system can).
        if let Ok(directory) = File::open(dir) {
            let _ = directory.sync_all();
        }
        let len = file.stream_position()?;
        Ok(Ledger { dir: dir.to_owned(), file, len, compact_at: COMPACT_MIN_BYTES.max(len.saturating_mul(2)), line })
    }

    /// Appends one line: serialised into `line`, then one `write_all` (nothing stays buffered; no fsync).
    fn append(&mut self, keys: &[&SpendKey], delta: i64) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, &EntryOut { delta, keys })?;
        self.line.push(b'\n');
        if let Err(error) = self.file.write_all(&self.line) {
            // Cut a partial line back off, so the next append does not follow a torn one.
            let _ = self.file.set_len(self.len).and_then(|()| self.file.seek(SeekFrom::Start(self.len)));
            return Err(error);
        }
        self.len += self.line.len() as u64;
        Ok(())
    }

    fn error(&self, error: io::Error) -> StateError {
        StateError(format!("cannot write the spend ledger {}: {error}", self.dir.join(LEDGER_FILE).display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2096 in ms, so periods ending after it have not ended by the real clock `open` uses.
    const NOW: u64 = 4_000_000_000_000;
    const DAY: u64 = 86_400_000;

    fn key(name: &str, period_end_ms: u64) -> SpendKey {
        SpendKey { key: name.to_owned(), period_end_ms }
    }

    fn add(memory: &Memory, keys: &[SpendKey], delta: i64, now_ms: u64) -> Vec<i64> {
        memory.spend.lock().unwrap().add(keys, delta, 0, now_ms).expect("ledger writes")
    }

    fn ledger_len(dir: &Path) -> u64 {
        fs::metadata(dir.join(LEDGER_FILE)).expect("ledger exists").len()
    }

    #[test]
    fn the_ledger_is_compacted_once_it_has_grown() {
        let dir = tempfile::tempdir().expect("temp dir");
        let memory = Memory::open_at(dir.path(), NOW).expect("opens");
        let (live, ended) = (key("spend:live", NOW + DAY), key("spend:ended", NOW + 10));
        for _ in 0..10 {
            add(&memory, &[live.clone(), ended.clone()], 3, NOW);
        }
        let grown = ledger_len(dir.path());
        memory.spend.lock().unwrap().ledger.as_mut().expect("a ledger").compact_at = grown;
        // This append reaches the threshold: the ledger is rewritten at NOW + 20, when `ended` has ended.
        assert_eq!(add(&memory, std::slice::from_ref(&live), 0, NOW + 20), vec![30]);
        let text = fs::read_to_string(dir.path().join(LEDGER_FILE)).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("spend:live") && !text.contains("spend:ended"), "{text}");
        assert!(ledger_len(dir.path()) < grown);
        // Appends go on after the compacted line.
        assert_eq!(add(&memory, std::slice::from_ref(&live), 4, NOW + 20), vec![34]);
        drop(memory);
        let reopened = Memory::open_at(dir.path(), NOW + 20).expect("reopens");
        assert_eq!(reopened.spend.lock().unwrap().values(&[live, ended], NOW + 20), vec![34, 0]);
        let mut names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, [LEDGER_FILE, LOCK_FILE].map(std::ffi::OsString::from), "no temp file is left behind");
    }

    #[test]
    fn one_process_writes_a_ledger_until_it_closes_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let memory = Memory::open_at(dir.path(), NOW).expect("opens");
        let live = key("spend:live", NOW + DAY);
        assert_eq!(add(&memory, std::slice::from_ref(&live), 5, NOW), vec![5]);
        let error = Memory::open_at(dir.path(), NOW).expect_err("a second writer");
        assert!(error.0.contains("is in use by process") && error.0.contains("state.backend: redis"), "{error}");
        memory.close();
        let refused = memory.spend.lock().unwrap().add(std::slice::from_ref(&live), 1, 0, NOW);
        assert!(refused.is_err(), "spend after close is refused, not lost silently");
        let reopened = Memory::open_at(dir.path(), NOW).expect("taken once closed, the first still alive");
        assert_eq!(reopened.spend.lock().unwrap().values(std::slice::from_ref(&live), NOW), vec![5]);
    }

    #[test]
    fn reservations_in_flight_count_but_a_restart_forgets_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let memory = Memory::open_at(dir.path(), NOW).expect("opens");
        let keys = [key("spend:org:day", NOW + DAY), key("spend:user:ana:day", NOW + DAY)];
        let hold = |spent, held| memory.spend.lock().unwrap().add(&keys, spent, held, NOW).expect("ledger writes");
        // Two reservations of 300 and 500; the first settles at 120, the second is in flight at the crash.
        assert_eq!(hold(0, 300), vec![300, 300]);
        assert_eq!(hold(0, 500), vec![800, 800], "held reservations count against the budget");
        assert_eq!(hold(120, -300), vec![620, 620]);
        // A third is refused and taken back; a fourth settles at exactly its estimate.
        assert_eq!(hold(0, 50), vec![670, 670]);
        assert_eq!(hold(0, -50), vec![620, 620]);
        assert_eq!(hold(0, 40), vec![660, 660]);
        assert_eq!(hold(40, -40), vec![660, 660]);
        let text = fs::read_to_string(dir.path().join(LEDGER_FILE)).unwrap();
        assert_eq!(text.lines().count(), 2, "only settled spend is written: {text}");
        // A crash (no settle, no drop of the reservation): the restart starts from the spend that was settled.
        drop(memory);
        let reopened = Memory::open_at(dir.path(), NOW).expect("reopens");
        assert_eq!(reopened.spend.lock().unwrap().values(&keys, NOW), vec![160, 160]);
        // Compaction keeps settled spend only.
        let memory = reopened;
        memory.spend.lock().unwrap().add(&keys, 0, 700, NOW).expect("ledger writes");
        let compacted = Ledger::compacted(dir.path(), &memory.spend.lock().unwrap().counters).expect("compacts");
        memory.spend.lock().unwrap().ledger = Some(compacted);
        drop(memory);
        let reopened = Memory::open_at(dir.path(), NOW).expect("reopens");
        assert_eq!(reopened.spend.lock().unwrap().values(&keys, NOW), vec![160, 160]);
    }

    #[test]
    fn a_key_given_another_period_starts_again() {
        let memory = Memory::default();
        assert_eq!(add(&memory, &[key("k", NOW + DAY)], 5, NOW), vec![5]);
        assert_eq!(add(&memory, &[key("k", NOW + 2 * DAY)], 7, NOW), vec![7]);
        assert_eq!(memory.spend.lock().unwrap().values(&[key("k", NOW + DAY)], NOW), vec![0]);
    }

    #[test]
    fn a_damaged_middle_line_is_an_error_naming_the_ledger() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = format!("{{\"delta\":1,\"keys\":[{{\"key\":\"k\",\"period_end_ms\":{}}}]}}\n", NOW + DAY);
        fs::write(dir.path().join(LEDGER_FILE), format!("{good}not json\n{good}")).unwrap();
        let error = Memory::open_at(dir.path(), NOW).expect_err("damaged");
        assert!(error.0.contains(LEDGER_FILE) && error.0.contains("line 2"), "{error}");
    }
}
