//! Password verification, bounded: argon2id takes milliseconds of CPU by design, so at most `workers` checks run
//! at once (about the core count, on the blocking pool), at most `queue` more wait for one, and anything beyond
//! is refused at once (`AuthError::Busy`, a 503) instead of queueing without bound. Concurrent checks of the same
//! credential run once and share the result, so a burst of connections opened with one valid password costs one
//! argon2 check, not one each. A check runs in a task of its own: a client that goes away while its check waits
//! or runs cannot leave the pool's count or the shared result behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Semaphore};

use super::basic::{self, Scratch};
use super::error::AuthError;

/// Checks allowed to wait for a worker, per worker.
const QUEUE_PER_WORKER: usize = 16;

/// One credential being checked: the user and a keyed digest of the password (never the password itself).
type Flight = (Arc<str>, [u8; 32]);

/// The shared outcome of one check, which every request with the same credential awaits.
type Verdict = watch::Receiver<Option<Result<bool, AuthError>>>;

/// The outcome of one request's check: the verdict, and whether this request started the check (only the
/// request that started it counts as an attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub verdict: Result<bool, AuthError>,
    pub started: bool,
}

/// The bounded pool of password checks.
#[derive(Debug)]
pub struct Verifiers {
    running: Arc<Semaphore>,
    /// Checks in flight: running or waiting for a worker.
    in_flight: AtomicUsize,
    capacity: usize,
    flights: Mutex<HashMap<Flight, Verdict>>,
    /// Checks run (argon2id computed) and refused, since start.
    run: AtomicU64,
    refused: AtomicU64,
    /// The memory of checks not running now, at most one per worker: reused, so the checks' memory stays that of
    /// the workers.
    scratch: Mutex<Vec<Scratch>>,
}

impl Default for Verifiers {
    /// As many workers as cores (at least one), each with `QUEUE_PER_WORKER` waiting checks.
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        Verifiers::new(workers, workers * QUEUE_PER_WORKER)
    }
}

impl Verifiers {
    pub fn new(workers: usize, queue: usize) -> Verifiers {
        let workers = workers.max(1);
        Verifiers {
            running: Arc::new(Semaphore::new(workers)),
            in_flight: AtomicUsize::new(0),
            capacity: workers + queue,
            flights: Mutex::default(),
            run: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            scratch: Mutex::default(),
        }
    }

    /// Whether `password` matches the argon2id `hash`; checks of the same `flight` share one verification. A new
    /// check first calls `begin` (which may refuse it: the failed-attempt limit counts a check before it runs);
    /// joining one in flight costs nothing. `Busy` when every worker is busy and the queue is full.
    pub async fn verify(
        self: &Arc<Self>,
        flight: Flight,
        hash: Arc<str>,
        password: String,
        begin: impl FnOnce() -> Result<(), AuthError>,
    ) -> Checked {
        let (mut verdict, started) = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get(&flight) {
                Some(verdict) => (verdict.clone(), false),
                None => {
                    if let Err(refused) = begin() {
                        return Checked { verdict: Err(refused), started: false };
                    }
                    if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.capacity {
                        self.in_flight.fetch_sub(1, Ordering::AcqRel);
                        self.refused.fetch_add(1, Ordering::Relaxed);
                        return Checked { verdict: Err(AuthError::Busy), started: true };
                    }
                    let (send, verdict) = watch::channel(None);
                    flights.insert(flight.clone(), verdict.clone());
                    let verifiers = self.clone();
                    tokio::spawn(async move {
                        let checked = verifiers.run(hash, password).await;
                        let _ = send.send(Some(checked));
                        verifiers.flights.lock().unwrap_or_else(|p| p.into_inner()).remove(&flight);
                        verifiers.in_flight.fetch_sub(1, Ordering::AcqRel);
                    });
                    (verdict, true)
                }
            }
        };
        let checked = match verdict.wait_for(Option::is_some).await {
            Ok(checked) => checked.clone().unwrap_or(Err(AuthError::Busy)),
            // The check's task ended without a verdict (the runtime is shutting down).
            Err(_) => Err(AuthError::Busy),
        };
        Checked { verdict: checked, started }
    }

    /// Runs one check on the blocking pool once a worker is free.
    async fn run(&self, hash: Arc<str>, password: String) -> Result<bool, AuthError> {
        let Ok(_worker) = self.running.clone().acquire_owned().await else { return Err(AuthError::Busy) };
        self.run.fetch_add(1, Ordering::Relaxed);
        let scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
        let (verified, scratch) = basic::verify_blocking(hash, password, scratch).await;
        self.scratch.lock().unwrap_or_else(|p| p.into_inner()).push(scratch);
        Ok(verified)
    }

    /// Checks run since start (argon2id computed).
    pub fn checks_run(&self) -> u64 {
        self.run.load(Ordering::Relaxed)
    }

    /// Checks refused since start because the pool was full.
    pub fn checks_refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Checks running or waiting now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_checks_of_one_credential_verify_once_and_a_full_queue_refuses() {
        let hash: Arc<str> = basic::hash_password("right").expect("hashes").into();
        let verifiers = Arc::new(Verifiers::new(1, 1));
        // The one worker is held: every check waits, so the queue fills deterministically.
        let worker = verifiers.running.clone().acquire_owned().await.expect("the semaphore is open");
        let flight = |password: &str| (Arc::<str>::from("alice"), [password.len() as u8; 32]);
        let check = |password: &'static str| {
            let (verifiers, hash) = (verifiers.clone(), hash.clone());
            tokio::spawn(async move { verifiers.verify(flight(password), hash, password.into(), || Ok(())).await })
        };
        let first = check("right");
        while verifiers.in_flight() < 1 {
            tokio::task::yield_now().await;
        }
        let joined = check("right");
        let second = check("wrong!");
        while verifiers.in_flight() < 2 {
            tokio::task::yield_now().await;
        }
        // One worker and one place in the queue, both taken by distinct credentials: a third is refused at once.
        let refused = verifiers.verify(flight("3rd"), hash.clone(), "3rd".into(), || Ok(())).await;
        assert_eq!(refused.verdict, Err(AuthError::Busy));
        drop(worker);
        assert_eq!(first.await.unwrap(), Checked { verdict: Ok(true), started: true });
        assert_eq!(joined.await.unwrap(), Checked { verdict: Ok(true), started: false });
        assert_eq!(second.await.unwrap(), Checked { verdict: Ok(false), started: true });
        assert_eq!(verifiers.in_flight(), 0);
        assert_eq!((verifiers.checks_run(), verifiers.checks_refused()), (2, 1), "one check for the shared credential");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_goes_away_leaves_nothing_behind() {
        let hash: Arc<str> = basic::hash_password("right").expect("hashes").into();
        let verifiers = Arc::new(Verifiers::new(1, 1));
        let worker = verifiers.running.clone().acquire_owned().await.expect("the semaphore is open");
        let flight = (Arc::<str>::from("alice"), [1; 32]);
        let gone = tokio::spawn({
            let (verifiers, hash, flight) = (verifiers.clone(), hash.clone(), flight.clone());
            async move { verifiers.verify(flight, hash, "right".into(), || Ok(())).await }
        });
        while verifiers.in_flight() < 1 {
            tokio::task::yield_now().await;
        }
        // The request waiting for its check is dropped (its client closed the connection).
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        drop(worker);
        // The check still ends on its own, gives its place back and leaves no shared result behind.
        let settled = async {
            while verifiers.in_flight() > 0 || !verifiers.flights.lock().unwrap().is_empty() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), settled).await.expect("the pool is whole again");
        assert_eq!(verifiers.checks_run(), 1);
        let again = verifiers.verify(flight, hash, "right".into(), || Ok(())).await;
        assert_eq!(again, Checked { verdict: Ok(true), started: true });
    }
}
