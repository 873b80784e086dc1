//! The bounded queue between the request path and the writer thread, and what the writer tells back: how many
//! records are written, and whether the sink is healthy.
//!
//! Each record gets a sequence number as it is queued, and the writer writes records in that order, so one number,
//! "written through N", tells every waiter whether its record is on its way to disk (group commit: one write per
//! batch, every waiter woken once per batch). A record counts against `audit.queue` from the moment it is queued
//! until it is written, so memory stays bounded however long the sink stalls.
//!
//! Under `audit.on_failure: block` with a regular file (`leading`), a request task whose record finds the writer
//! thread asleep becomes the batch's leader instead of waking it: it lets the other ready tasks queue their records,
//! then writes the whole batch itself (`file::Committer::lead`) and wakes its waiters, with no thread switch. Records
//! queued while a leader leads are its to write: it resigns only with the queue empty, or hands what is left to the
//! writer thread (a write that fails, a rotation, a checkpoint, an fsync: whatever may block or retry).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::record::Entry;

/// Records that end a gathering early.
const GATHER_RECORDS: usize = 256;

/// A write (or sync) that has not returned after this long makes the sink stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(2);

/// Records a deferred wake-up may hold back before the writer is woken anyway.
const DEFER_RECORDS: usize = 64;
/// How long a writer with wake-ups deferred sleeps at most before it looks for records itself (a worker that stays
/// busy without parking would otherwise hold them back).
const DEFER_AT_MOST: Duration = Duration::from_millis(2);

/// Set when the async runtime calls `worker_parks` each time one of its workers runs out of work.
static PARK_HOOK: AtomicBool = AtomicBool::new(false);
/// Some queue holds records whose wake-up was deferred to the next worker park.
static DEFERRED: AtomicBool = AtomicBool::new(false);
/// The queues that defer their wake-ups.
static DEFERRING: Mutex<Vec<Weak<Queue>>> = Mutex::new(Vec::new());

/// Says that the runtime calls `worker_parks` (from `tokio::runtime::Builder::on_thread_park`): queues created from
/// then on under `audit.on_failure: block` defer waking their writer to the moment a worker runs out of work, so one
/// batch (one write, one wake-up of the waiters) takes every record of a burst instead of a few.
pub fn install_park_hook() {
    PARK_HOOK.store(true, Ordering::Release);
}

/// Whether the runtime calls `worker_parks`.
pub(super) fn park_hook_installed() -> bool {
    PARK_HOOK.load(Ordering::Acquire)
}

/// Called by each async worker as it is about to park: wakes the writers whose wake-up was deferred. One atomic
/// load when none was.
pub fn worker_parks() {
    if !DEFERRED.swap(false, Ordering::AcqRel) {
        return;
    }
    let queues = DEFERRING.lock().unwrap_or_else(|p| p.into_inner());
    for queue in queues.iter().filter_map(Weak::upgrade) {
        queue.wake_deferred();
    }
}

/// The queue of records waiting for the writer thread.
pub(super) struct Queue {
    state: Mutex<State>,
    /// Wakes the writer thread when records arrive, the queue closes or a sync is due.
    arrived: Condvar,
    /// What the writer has done, for the callers that wait on it.
    progress: watch::Sender<Progress>,
    /// Wakes callers waiting for room (`audit.on_failure: block` with a full queue).
    room: Notify,
    capacity: u64,
    /// When nobody waits for records (`audit.on_failure: continue`), how long the writer gathers records after
    /// the first before writing them, and how many end the gathering early.
    gather: Option<Duration>,
    gather_records: usize,
    /// Waking the writer is left to the next worker park (`worker_parks`) for up to `DEFER_RECORDS` records.
    defer: bool,
    /// A caller that finds the writer asleep may lead (write the batch itself) instead of waking it.
    leading: bool,
    /// Copies of `State::pushed` and `Progress::written`, read without a lock by health checks.
    pushed: AtomicU64,
    written: AtomicU64,
    /// Nanoseconds after `epoch`, plus one, at which the write and the sync in progress began (by `Io`); 0 when
    /// none is. Apart, because the thread's periodic sync runs beside a leader's writes.
    io_since: [AtomicU64; 2],
    epoch: Instant,
    /// The last write or sync failed; it is retried until it succeeds.
    failing: AtomicBool,
    failure: Mutex<String>,
}

struct State {
    records: VecDeque<Entry>,
    /// Records queued since the start: the next record's sequence number.
    pushed: u64,
    writer: WriterState,
    /// A caller waits for everything queued to be written: no gathering.
    flush_requested: bool,
    /// Records are queued and the writer sleeps: its wake-up was left to the next worker park.
    deferred: bool,
    /// A request task leads: it writes what is queued before it resigns (or wakes the writer).
    leader: bool,
    /// The sleeping writer looks for records itself every `DEFER_AT_MOST`, so a record's wake-up may be deferred to
    /// the next worker park; a writer that found nothing that way sleeps until woken (no wake-ups while idle).
    polling: bool,
    closing: bool,
}

/// What the writer thread is doing, so that only a wake-up it needs costs a system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterState {
    Busy,
    /// Asleep with nothing queued: the next record wakes it.
    Idle,
    /// Asleep gathering records: woken by enough of them, a flush, or its deadline.
    Gathering,
}

/// What the writer has done so far.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// Records written: every sequence number below it.
    written: u64,
    /// Shutdown stopped waiting for records: waiters give up.
    abandoned: bool,
    /// The writer thread has written what it could and ended.
    finished: bool,
}

/// How the sink is doing, as `/readyz` and admission see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// A write or sync has been in progress for this long (the disk or pipe does not take the bytes).
    Stalled(Duration),
    /// The last write or sync failed with this error; it is retried until it succeeds.
    Failing(String),
    /// `audit.queue` records are waiting to be written.
    Full(u64),
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Healthy => f.write_str("healthy"),
            Health::Stalled(since) => write!(f, "stalled: a write has not returned for {:.1}s", since.as_secs_f64()),
            Health::Failing(error) => write!(f, "failing: {error}"),
            Health::Full(records) => write!(f, "full: {records} records (audit.queue) are waiting to be written"),
        }
    }
}

/// A record queued by a caller that may lead: its sequence number, and whether it became the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Queued {
    pub sequence: u64,
    /// The writer slept and no one led: this caller writes the batch (`Leadership`), or resigns.
    pub leads: bool,
}

/// What is under way on the disk, for stall detection: a write (the thread's or a leader's) or a sync (the
/// thread's periodic one runs beside a leader's write).
#[derive(Debug, Clone, Copy)]
pub(super) enum Io {
    Write = 0,
    Sync = 1,
}

/// What the writer thread found when it asked for records.
pub(super) enum Taken {
    /// Records were moved into the batch.
    Records,
    /// The deadline passed with nothing queued.
    Deadline,
    /// The queue is closed and empty.
    Closed,
}

impl Queue {
    /// A queue of at most `capacity` records; with `gather`, the writer waits that long after a first record for
    /// more, unless someone waits for them. With `defer` (callers wait, and the runtime calls `worker_parks`),
    /// waking the writer is left to the next worker park.
    #[cfg(test)]
    pub(super) fn new(capacity: usize, gather: Option<Duration>, defer: bool) -> Arc<Self> {
        Self::with_leading(capacity, gather, defer, false)
    }

    /// A queue whose callers may lead (`leading`): see the module's documentation.
    pub(super) fn with_leading(capacity: usize, gather: Option<Duration>, defer: bool, leading: bool) -> Arc<Self> {
        let state = State {
            records: VecDeque::new(),
            pushed: 0,
            writer: WriterState::Busy,
            flush_requested: false,
            deferred: false,
            leader: false,
            polling: false,
            closing: false,
        };
        let queue = Arc::new(Self {
            state: Mutex::new(state),
            arrived: Condvar::new(),
            progress: watch::Sender::new(Progress::default()),
            room: Notify::new(),
            capacity: capacity as u64,
            gather,
            gather_records: (capacity / 2).clamp(1, GATHER_RECORDS),
            pushed: AtomicU64::new(0),
            written: AtomicU64::new(0),
            io_since: [AtomicU64::new(0), AtomicU64::new(0)],
            epoch: Instant::now(),
            failing: AtomicBool::new(false),
            failure: Mutex::new(String::new()),
            defer,
            leading,
        });
        if defer {
            let mut deferring = DEFERRING.lock().unwrap_or_else(|p| p.into_inner());
            deferring.retain(|queue| queue.strong_count() > 0);
            deferring.push(Arc::downgrade(&queue));
        }
        queue
    }

    /// Wakes the writer if its wake-up was deferred.
    fn wake_deferred(&self) {
        let mut state = self.lock();
        if !std::mem::take(&mut state.deferred) || state.writer != WriterState::Idle {
            return;
        }
        state.writer = WriterState::Busy;
        drop(state);
        self.arrived.notify_one();
    }

    /// With `wake`, marks the writer busy (no deferred wake-up left) and wakes it once the lock is released.
    fn wake_if(&self, mut state: MutexGuard<'_, State>, wake: bool) {
        if wake {
            state.writer = WriterState::Busy;
            state.deferred = false;
        }
        drop(state);
        if wake {
            self.arrived.notify_one();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the queue consistent (every change is one statement).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `record` when there is room; returns its sequence number, or gives it back.
    pub(super) fn try_push(&self, record: Entry) -> Result<u64, Entry> {
        self.push_unless_full(record, true, false).map(|queued| queued.sequence)
    }

    /// Queues `record` even beyond `audit.queue`: for a caller that waited for room and was cancelled (at most
    /// one record per request in flight, which admission bounds).
    pub(super) fn force_push(&self, record: Entry) {
        let _ = self.push_unless_full(record, false, false);
    }

    /// Queues `record`; with `may_lead`, a caller that finds the writer asleep (and no leader) becomes the leader
    /// instead of waking it, and must then lead or resign (`Leadership`).
    fn push_unless_full(&self, record: Entry, bounded: bool, may_lead: bool) -> Result<Queued, Entry> {
        let mut state = self.lock();
        if bounded && state.pushed - self.written.load(Ordering::Acquire) >= self.capacity {
            return Err(record);
        }
        let sequence = state.pushed;
        state.pushed += 1;
        self.pushed.store(state.pushed, Ordering::Release);
        state.records.push_back(record);
        let mut leads = false;
        // Only a sleeping writer needs the (system call) wake-up; a busy one takes the record with its next batch.
        // With the park hook, the worker that runs out of work wakes it, after queueing the rest of the burst. A
        // leader writes what is queued before it resigns.
        let wake = match state.writer {
            _ if state.leader => false,
            WriterState::Idle if may_lead && self.leading && !state.closing => {
                state.leader = true;
                leads = true;
                false
            }
            WriterState::Idle if self.defer && state.polling && state.records.len() < DEFER_RECORDS => {
                state.deferred = true;
                DEFERRED.store(true, Ordering::Release);
                false
            }
            WriterState::Idle => true,
            WriterState::Gathering => state.records.len() >= self.gather_records,
            WriterState::Busy => false,
        };
        self.wake_if(state, wake);
        Ok(Queued { sequence, leads })
    }

    /// Queues `record`, waiting for room while the queue is full. `None` when shutdown gave up first (the record
    /// is then queued anyway, for the last flush). Cancelled while waiting, it queues the record beyond the bound
    /// rather than lose it.
    pub(super) async fn push(&self, record: Entry, may_lead: bool) -> Option<Queued> {
        struct Pending<'a> {
            queue: &'a Queue,
            record: Option<Entry>,
        }
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                if let Some(record) = self.record.take() {
                    self.queue.force_push(record);
                }
            }
        }
        let mut pending = Pending { queue: self, record: Some(record) };
        loop {
            // Registered before the check, so room made in between is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            // Put back below after each failed try.
            let record = pending.record.take()?;
            match self.push_unless_full(record, true, may_lead) {
                Ok(queued) => return Some(queued),
                Err(record) => pending.record = Some(record),
            }
            if self.progress.borrow().abandoned {
                return None;
            }
            room.await;
        }
    }

    /// Waits until the record numbered `sequence` is written; false when shutdown gave up first.
    pub(super) async fn written(&self, sequence: u64) -> bool {
        if self.written.load(Ordering::Acquire) > sequence {
            return true;
        }
        let mut progress = self.progress.subscribe();
        let seen = progress.wait_for(|progress| progress.written > sequence || progress.abandoned).await;
        // The sender lives as long as the queue, which outlives this borrow.
        seen.is_ok_and(|progress| progress.written > sequence)
    }

    /// Waits until every record queued before the call is written (no bound: for tests and the usage report).
    pub(super) async fn flush(&self) {
        let target = self.pushed.load(Ordering::Acquire);
        let wake = {
            let mut state = self.lock();
            state.flush_requested = true;
            std::mem::replace(&mut state.writer, WriterState::Busy) != WriterState::Busy
        };
        if wake {
            self.arrived.notify_one();
        }
        if target > 0 {
            let _ = self.written(target - 1).await;
        }
    }

    /// Closes the queue (the writer writes what is queued, syncs and ends) and waits for the writer to finish,
    /// until `deadline`. Returns how many records were not written.
    pub(super) async fn close(&self, deadline: tokio::time::Instant) -> u64 {
        self.close_now();
        let mut progress = self.progress.subscribe();
        let _ = tokio::time::timeout_at(deadline, progress.wait_for(|progress| progress.finished)).await;
        self.unwritten()
    }

    /// Closes the queue without waiting.
    pub(super) fn close_now(&self) {
        let mut state = self.lock();
        state.closing = true;
        drop(state);
        self.arrived.notify_one();
    }

    /// Stops every wait: callers waiting for room or for their record give up (their responses are cut), and a
    /// failing writer stops retrying.
    pub(super) fn abandon(&self) {
        self.progress.send_modify(|progress| progress.abandoned = true);
        self.room.notify_waiters();
    }

    pub(super) fn abandoned(&self) -> bool {
        self.progress.borrow().abandoned
    }

    /// Records queued and not yet written.
    pub(super) fn unwritten(&self) -> u64 {
        self.pushed.load(Ordering::Acquire) - self.written.load(Ordering::Acquire)
    }

    /// Queues `record` as a caller that waits for it may (`try_push` with leading): the leader must lead or resign.
    #[cfg(test)]
    pub(super) fn try_push_leading(&self, record: Entry) -> Result<Queued, Entry> {
        self.push_unless_full(record, true, true)
    }

    /// The writer thread sleeps with nothing queued.
    #[cfg(test)]
    pub(super) fn writer_idle(&self) -> bool {
        self.lock().writer == WriterState::Idle
    }

    /// Whether callers may lead batches.
    pub(super) fn leading(&self) -> bool {
        self.leading
    }

    /// True unless a write fails, stalls, or the queue is full; cheap enough for every admission.
    pub(super) fn healthy(&self) -> bool {
        if self.failing.load(Ordering::Acquire) || self.unwritten() >= self.capacity {
            return false;
        }
        self.io_running().is_none_or(|running| running < STALL_AFTER)
    }

    /// How long the longest write or sync in progress has run; no clock is read when none is.
    fn io_running(&self) -> Option<Duration> {
        let began =
            self.io_since.iter().map(|since| since.load(Ordering::Acquire)).filter(|since| *since != 0).min()?;
        Some(self.epoch.elapsed().saturating_sub(Duration::from_nanos(began - 1)))
    }

    /// What is wrong with the sink, if anything.
    pub(super) fn health(&self) -> Health {
        if self.failing.load(Ordering::Acquire) {
            let failure = self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            return Health::Failing(failure.clone());
        }
        if let Some(running) = self.io_running().filter(|running| *running >= STALL_AFTER) {
            return Health::Stalled(running);
        }
        let unwritten = self.unwritten();
        if unwritten >= self.capacity {
            return Health::Full(unwritten);
        }
        Health::Healthy
    }

    // The leader's side.

    /// The leader takes every queued record into `batch`; with none left it resigns (under the same lock as a
    /// push, so no record is queued without someone to write it) and gets false.
    pub(super) fn lead_take(&self, batch: &mut VecDeque<Entry>) -> bool {
        let mut state = self.lock();
        if state.records.is_empty() {
            state.leader = false;
            return false;
        }
        state.flush_requested = false;
        std::mem::swap(&mut state.records, batch);
        true
    }

    /// The leader stops leading: what is queued (if anything) is left to the writer thread, woken if it sleeps.
    pub(super) fn resign(&self) {
        let mut state = self.lock();
        state.leader = false;
        let wake = !state.records.is_empty() && state.writer != WriterState::Busy;
        self.wake_if(state, wake);
    }

    /// Wakes the writer thread for work that is not a record (a rotation or checkpoint a leader left it).
    pub(super) fn wake_writer(&self) {
        let mut state = self.lock();
        let wake = state.writer != WriterState::Busy;
        state.writer = WriterState::Busy;
        drop(state);
        if wake {
            self.arrived.notify_one();
        }
    }

    // The writer thread's side.

    /// Moves every queued record into `batch`; sleeps until there is one, the queue closes, or `deadline`.
    #[cfg(test)]
    pub(super) fn take(&self, batch: &mut VecDeque<Entry>, deadline: Option<Instant>) -> Taken {
        let taken = self.wait(deadline);
        if matches!(taken, Taken::Records) {
            self.drain(batch);
        }
        taken
    }

    /// Moves every queued record into `batch` (none, when a leader took them first).
    pub(super) fn drain(&self, batch: &mut VecDeque<Entry>) {
        let mut state = self.lock();
        state.flush_requested = false;
        state.deferred = false;
        std::mem::swap(&mut state.records, batch);
    }

    /// Sleeps until a record is queued, the queue closes, or `deadline`; the records stay queued (`drain` them).
    pub(super) fn wait(&self, deadline: Option<Instant>) -> Taken {
        let mut state = self.lock();
        let mut slept = false;
        let mut quiet = false;
        loop {
            if !state.records.is_empty() {
                if slept {
                    // The rest of the burst is queued before the batch is drained.
                    drop(self.gather(state));
                }
                return Taken::Records;
            }
            if state.closing {
                return Taken::Closed;
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Taken::Deadline;
            }
            state.writer = WriterState::Idle;
            // A deferring writer also looks for records itself now and then (a busy worker may not park for a
            // while), until a look finds nothing: then records wake it at once, and an idle gateway sleeps. Leaders
            // write their batches themselves: their writer never polls.
            let poll = self.defer && !self.leading && !quiet;
            state.polling = poll;
            let wake_at = match (deadline, poll) {
                (deadline, false) => deadline,
                (Some(deadline), true) => Some(deadline.min(Instant::now() + DEFER_AT_MOST)),
                (None, true) => Some(Instant::now() + DEFER_AT_MOST),
            };
            state = match wake_at {
                Some(wake_at) => {
                    let wait = wake_at.saturating_duration_since(Instant::now());
                    self.arrived.wait_timeout(state, wait).unwrap_or_else(|p| p.into_inner()).0
                }
                None => self.arrived.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner()),
            };
            state.writer = WriterState::Busy;
            // Woken by its own look with nothing queued: the burst is over.
            quiet |= poll && state.records.is_empty() && !state.closing && !state.flush_requested;
            state.polling = false;
            slept = true;
        }
    }

    /// Woken by the first record of a burst, lets the rest be queued before the batch is taken, so that one write
    /// takes many records.
    fn gather<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let Some(gather) = self.gather else {
            if self.defer {
                // Woken by a parking worker: the burst is queued already.
                return state;
            }
            // Callers wait: no waiting on purpose, but the threads queueing the rest (on this core, perhaps) run
            // first. Without it, a writer sharing a core with the workers wrote one record per batch in the load
            // harness.
            drop(state);
            std::thread::yield_now();
            return self.lock();
        };
        let until = Instant::now() + gather;
        while state.records.len() < self.gather_records && !state.flush_requested && !state.closing {
            let now = Instant::now();
            if now >= until {
                break;
            }
            state.writer = WriterState::Gathering;
            state = self.arrived.wait_timeout(state, until - now).unwrap_or_else(|p| p.into_inner()).0;
            state.writer = WriterState::Busy;
        }
        state
    }

    /// Marks the start of a write or a sync (for stall detection).
    pub(super) fn begin_io(&self, io: Io) {
        let since = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.io_since[io as usize].store(since + 1, Ordering::Release);
    }

    pub(super) fn end_io(&self, io: Io) {
        self.io_since[io as usize].store(0, Ordering::Release);
    }

    /// A write or sync failed; true when this starts a failure (the caller logs it once).
    pub(super) fn fail(&self, error: &std::io::Error) -> bool {
        *self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = error.to_string();
        !self.failing.swap(true, Ordering::AcqRel)
    }

    /// Writes and syncs succeed again; true when a failure ended.
    pub(super) fn recover(&self) -> bool {
        self.failing.swap(false, Ordering::AcqRel)
    }

    /// `count` more records are written: wakes their waiters, and those waiting for room.
    pub(super) fn advance(&self, count: u64) {
        let written = self.written.fetch_add(count, Ordering::AcqRel) + count;
        self.progress.send_modify(|progress| progress.written = written);
        self.room.notify_waiters();
    }

    /// The writer thread has ended.
    pub(super) fn finish(&self) {
        self.progress.send_modify(|progress| progress.finished = true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Record;

    fn record(id: &str) -> Entry {
        Entry::from(Record { id: id.into(), ..Record::default() })
    }

    #[tokio::test]
    async fn a_full_queue_refuses_until_the_writer_advances() {
        let queue = Queue::new(2, None, false);
        assert_eq!(queue.try_push(record("a")).ok(), Some(0));
        assert_eq!(queue.try_push(record("b")).ok(), Some(1));
        assert!(queue.try_push(record("c")).is_err(), "a third record does not fit");
        assert_eq!(queue.health(), Health::Full(2));
        assert!(!queue.healthy());

        // Taken by the writer, the records still count until they are written.
        let mut batch = VecDeque::new();
        assert!(matches!(queue.take(&mut batch, None), Taken::Records));
        assert_eq!(batch.len(), 2);
        assert!(queue.try_push(record("c")).is_err());

        queue.advance(2);
        assert!(queue.healthy());
        assert!(queue.written(1).await);
        assert_eq!(queue.try_push(record("c")).ok(), Some(2));
    }

    #[tokio::test]
    async fn waiters_wake_when_their_record_is_written_or_shutdown_gives_up() {
        let queue = Queue::new(4, None, false);
        let first = queue.try_push(record("a")).unwrap();
        let second = queue.try_push(record("b")).unwrap();
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.written(second).await }
        });
        queue.advance(1);
        assert!(queue.written(first).await);
        queue.abandon();
        assert!(!waiting.await.unwrap(), "abandoned before the second record was written");
    }

    #[tokio::test]
    async fn a_push_waits_for_room_and_a_cancelled_one_keeps_its_record() {
        let queue = Queue::new(1, None, false);
        queue.try_push(record("a")).unwrap();
        let pushing = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(record("b"), false).await.map(|queued| queued.sequence) }
        });
        tokio::task::yield_now().await;
        assert_eq!(queue.unwritten(), 1, "the second record waits for room");
        queue.advance(1);
        assert_eq!(pushing.await.unwrap(), Some(1));

        // Cancelled while waiting: the record is queued beyond the bound rather than lost.
        tokio::select! {
            biased;
            _ = queue.push(record("c"), false) => panic!("there is no room for a third record"),
            () = std::future::ready(()) => {}
        }
        assert_eq!(queue.unwritten(), 2);
    }

    /// The writer's side on a thread: one `take`, the batch's size sent back, then the batch written.
    fn writer_takes_once(queue: &std::sync::Arc<Queue>) -> std::sync::mpsc::Receiver<usize> {
        let (sender, taken) = std::sync::mpsc::channel();
        let queue = queue.clone();
        std::thread::spawn(move || {
            let mut batch = VecDeque::new();
            assert!(matches!(queue.take(&mut batch, None), Taken::Records));
            let _ = sender.send(batch.len());
            queue.advance(batch.len() as u64);
        });
        taken
    }

    #[test]
    fn gathering_ends_with_enough_records_not_at_its_deadline() {
        // Gathering for a minute, ended by the second record (half the queue).
        let queue = Queue::new(4, Some(Duration::from_secs(60)), false);
        let taken = writer_takes_once(&queue);
        queue.try_push(record("a")).unwrap();
        queue.try_push(record("b")).unwrap();
        assert_eq!(taken.recv_timeout(Duration::from_secs(30)), Ok(2));
    }

    #[tokio::test]
    async fn a_flush_ends_gathering() {
        let queue = Queue::new(4, Some(Duration::from_secs(60)), false);
        let taken = writer_takes_once(&queue);
        queue.try_push(record("a")).unwrap();
        tokio::time::timeout(Duration::from_secs(30), queue.flush()).await.expect("flushed without gathering");
        assert_eq!(taken.recv_timeout(Duration::from_secs(30)), Ok(1));
    }

    #[test]
    fn a_write_that_does_not_return_is_a_stall() {
        let mut queue = Queue::new(4, None, false);
        queue.begin_io(Io::Write);
        assert!(queue.healthy(), "a write just begun is no stall");
        queue.end_io(Io::Write);
        // A write that began at an epoch twice STALL_AFTER ago.
        let only = Arc::get_mut(&mut queue).expect("the only handle");
        only.epoch = Instant::now().checked_sub(STALL_AFTER * 2).expect("the monotonic clock has run for 4 s");
        queue.io_since[Io::Write as usize].store(1, Ordering::Release);
        assert!(!queue.healthy());
        assert!(matches!(queue.health(), Health::Stalled(running) if running >= STALL_AFTER * 2));
        queue.end_io(Io::Write);
        assert_eq!(queue.health(), Health::Healthy);

        // A sync that does not return stays a stall while leaders' writes begin and end beside it.
        queue.io_since[Io::Sync as usize].store(1, Ordering::Release);
        queue.begin_io(Io::Write);
        queue.end_io(Io::Write);
        assert!(!queue.healthy());
        assert!(matches!(queue.health(), Health::Stalled(running) if running >= STALL_AFTER * 2));
        queue.end_io(Io::Sync);
        assert!(queue.healthy());
    }
}

#[cfg(test)]
mod deferred_tests {
    use super::*;
    use crate::audit::Record;

    #[test]
    fn with_the_park_hook_a_record_waits_for_a_parking_worker_to_wake_the_writer() {
        let queue = Queue::new(128, None, true);
        // The writer sleeps with nothing queued, looking for records itself now and then.
        {
            let mut state = queue.lock();
            state.writer = WriterState::Idle;
            state.polling = true;
        }
        queue.try_push(Entry::from(Record { id: "a".into(), ..Record::default() })).unwrap();
        let state = queue.lock();
        assert!(state.deferred && state.writer == WriterState::Idle, "the wake-up is left to the next park");
        drop(state);
        worker_parks();
        let state = queue.lock();
        assert!(!state.deferred && state.writer == WriterState::Busy, "a parking worker woke the writer");
        drop(state);
        // A burst of DEFER_RECORDS wakes the writer at once, park or not.
        {
            let mut state = queue.lock();
            state.writer = WriterState::Idle;
            state.polling = true;
        }
        for id in 0..DEFER_RECORDS {
            queue.try_push(Entry::from(Record { id: id.to_string(), ..Record::default() })).unwrap();
        }
        assert_eq!(queue.lock().writer, WriterState::Busy);
    }
}
