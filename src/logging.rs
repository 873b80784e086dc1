//! Log output that stays off the request path: formatted lines are appended to a shared buffer and a
//! background thread writes them to stderr at most 50 ms after the first of them (sooner when 64 KiB are
//! waiting), and sleeps while there is nothing to write. A request neither blocks on a slow terminal or pipe nor
//! wakes another thread for each line.
//!
//! The buffer is bounded (`MAX_BUFFERED`): when stderr stalls (a full pipe nobody reads), further lines are
//! dropped and counted (`tollgate_log_lines_dropped_total`) instead of growing memory.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Buffered bytes that wake the writer early.
const FLUSH_AT: usize = 64 * 1024;
/// Buffered bytes beyond which lines are dropped.
const MAX_BUFFERED: usize = 4 << 20;

/// Lines dropped because the buffer was full, since the process started.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped so far because stderr did not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

#[derive(Debug, Default)]
struct Shared {
    lines: Mutex<(Vec<u8>, bool)>,
    wake: Condvar,
}

/// The `MakeWriter` handed to `tracing_subscriber`.
#[derive(Debug, Clone)]
pub struct BatchedStderr {
    shared: Arc<Shared>,
}

/// Flushes what is buffered and stops the writer thread when dropped: keep it alive in `main`.
#[derive(Debug)]
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts the writer thread.
pub fn batched_stderr() -> (BatchedStderr, FlushGuard) {
    let shared = Arc::new(Shared::default());
    let writer = shared.clone();
    let thread = std::thread::Builder::new()
        .name("tollgate-log".into())
        .spawn(move || write_loop(&writer))
        .expect("the log writer thread starts");
    (BatchedStderr { shared: shared.clone() }, FlushGuard { shared, thread: Some(thread) })
}

fn write_loop(shared: &Shared) {
    let mut stderr = std::io::stderr();
    let mut batch = Vec::new();
    loop {
        let stopping = {
            let mut guard = shared.lines.lock().unwrap_or_else(|p| p.into_inner());
            // Nothing to write: sleep until a line comes (the first line into an empty buffer wakes the thread),
            // not 20 times a second.
            while guard.0.is_empty() && !guard.1 {
                guard = shared.wake.wait(guard).unwrap_or_else(|p| p.into_inner());
            }
            if guard.0.len() < FLUSH_AT && !guard.1 {
                guard = shared.wake.wait_timeout(guard, FLUSH_EVERY).unwrap_or_else(|p| p.into_inner()).0;
            }
            // The buffers trade places: neither is allocated anew for each batch.
            std::mem::swap(&mut guard.0, &mut batch);
            guard.1
        };
        if !batch.is_empty() {
            let _ = stderr.write_all(&batch);
            let _ = stderr.flush();
            batch.clear();
            if batch.capacity() > 4 * FLUSH_AT {
                // A burst's buffer is not kept.
                batch = Vec::new();
            }
        }
        if stopping {
            return;
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lines.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event's writer: appends to the shared buffer.
pub struct Line<'a>(&'a Shared);

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut guard = self.0.lines.lock().unwrap_or_else(|p| p.into_inner());
        if guard.0.len() + bytes.len() > MAX_BUFFERED {
            // Counted once per line: the formatter writes a line in one call.
            DROPPED.fetch_add(1, Ordering::Relaxed);
            self.0.wake.notify_one();
            return Ok(bytes.len());
        }
        let was_empty = guard.0.is_empty();
        guard.0.extend_from_slice(bytes);
        // The writer sleeps untimed while the buffer is empty, and waits FLUSH_EVERY once a line is there.
        if was_empty || guard.0.len() >= FLUSH_AT {
            self.0.wake.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(&self.shared)
    }
}
