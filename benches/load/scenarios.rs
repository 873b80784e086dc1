//! The scenarios of the first table (a keep-alive GETs, b CONNECT + GET + close, c 1 GiB through one tunnel, d RSS
//! per idle tunnel), and the workers, statistics and keep-alive loads they share with the other scenarios.

use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::time::{sleep, timeout};

use crate::client::{closed_by_peer, exchange, Connection};
use crate::parameters::{
    BULK_LENGTH, BULK_READ_BUFFER, BULK_TIMEOUT, CONNECT_MAX_OPERATIONS, CONNECT_WORKERS, IO_TIMEOUT,
    KEEP_ALIVE_CONNECTIONS, KEEP_ALIVE_MAX_REQUESTS, MAX_ERRORS_PER_WORKER, MAX_SAMPLES_PER_WORKER, PACE_SLACK,
    SMALL_BODY_LENGTH, SMALL_READ_BUFFER, TUNNELS_OPEN_TIMEOUT, TUNNEL_OPENERS,
};
use crate::processes::{process_cpu_ns, tree_cpu_ns, tree_rss_kib, Proxy};
use crate::route::Route;

/// What one worker (or, merged, a round) counted.
#[derive(Default)]
pub struct Stats {
    pub successes: u64,
    pub errors: u64,
    pub connections_opened: u64,
    /// Requests retried on a new connection because the proxy had closed the kept-alive one.
    pub stale: u64,
    /// Paced loads: requests sent more than `PACE_SLACK` after their slot.
    pub late: u64,
    /// Each successful operation's latency (up to `MAX_SAMPLES_PER_WORKER` per worker).
    pub latencies_ns: Vec<u64>,
    /// Scenario sse: each streamed event's delay from the stub's send to the client's read.
    pub event_delays_ns: Vec<u64>,
    pub last_error: Option<String>,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.successes += other.successes;
        self.errors += other.errors;
        self.connections_opened += other.connections_opened;
        self.stale += other.stale;
        self.late += other.late;
        self.latencies_ns.extend(other.latencies_ns);
        self.event_delays_ns.extend(other.event_delays_ns);
        if other.last_error.is_some() {
            self.last_error = other.last_error;
        }
    }

    /// One failed operation.
    pub fn error(&mut self, error: impl std::fmt::Display) {
        self.errors += 1;
        self.last_error = Some(error.to_string());
    }

    /// One successful operation that started at `started`.
    pub fn record(&mut self, started: Instant) {
        self.sample(started.elapsed().as_nanos() as u64);
    }

    /// One successful operation that took `latency_ns`.
    pub fn sample(&mut self, latency_ns: u64) {
        self.successes += 1;
        if self.latencies_ns.len() < MAX_SAMPLES_PER_WORKER {
            self.latencies_ns.push(latency_ns);
        }
    }
}

/// The `quantile` of sorted nanoseconds, in µs (NaN when empty).
pub fn percentile_us(sorted_ns: &[u64], quantile: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted_ns.len() - 1) as f64 * quantile).round() as usize;
    sorted_ns[index] as f64 / 1000.0
}

/// The mean of nanoseconds, in µs (NaN when empty).
pub fn mean_us(values_ns: &[u64]) -> f64 {
    if values_ns.is_empty() {
        return f64::NAN;
    }
    values_ns.iter().map(|&value| value as f64).sum::<f64>() / values_ns.len() as f64 / 1000.0
}

/// One round of a rate scenario: operations per second and their latencies.
pub struct RateRound {
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub stats: Stats,
    /// The proxy's CPU time per successful operation (µs), and the share of the round it was runnable but
    /// waiting for its core (another process had it), when measured (`with_proxy_cpu`).
    pub cpu_us: Option<f64>,
    pub waiting: Option<f64>,
}

impl RateRound {
    /// The round on one line of the progress section.
    pub fn describe(&self, unit: &str) -> String {
        let mut text = format!(
            "{:.0} {unit}, p50 {:.0} µs, p99 {:.0} µs, {} ok, {} errors, {} connections opened",
            self.rate, self.p50_us, self.p99_us, self.stats.successes, self.stats.errors, self.stats.connections_opened
        );
        if self.stats.stale > 0 {
            let _ = write!(text, ", {} retried after the proxy closed a kept-alive connection", self.stats.stale);
        }
        if self.stats.late > 0 {
            let _ = write!(text, ", {} sent more than {PACE_SLACK:?} after their slot", self.stats.late);
        }
        if let (Some(cpu), Some(waiting)) = (self.cpu_us, self.waiting) {
            let _ = write!(
                text,
                ", proxy CPU {cpu:.1} µs per operation, runnable but waiting for its core {:.0}% of the round",
                waiting * 100.0
            );
        }
        if !self.stats.event_delays_ns.is_empty() {
            let mut delays = self.stats.event_delays_ns.clone();
            delays.sort_unstable();
            let _ = write!(
                text,
                ", {} events: delay mean {:.0} µs, p50 {:.0} µs, p99 {:.0} µs",
                delays.len(),
                mean_us(&delays),
                percentile_us(&delays, 0.50),
                percentile_us(&delays, 0.99)
            );
        }
        if let Some(error) = &self.stats.last_error {
            let _ = write!(text, " (last error: {error})");
        }
        text
    }
}

/// Runs `workers` copies of a worker for `duration`, bounded by `max_operations` in total: each gets the deadline
/// and the shared budget (`take_from_budget`).
pub async fn run_workers<F, Worker>(workers: usize, duration: Duration, max_operations: u64, worker: F) -> RateRound
where
    F: Fn(Instant, Arc<AtomicU64>) -> Worker,
    Worker: Future<Output = Stats> + Send + 'static,
{
    let budget = Arc::new(AtomicU64::new(max_operations));
    let start = Instant::now();
    let deadline = start + duration;
    let handles: Vec<_> = (0..workers).map(|_| tokio::spawn(worker(deadline, budget.clone()))).collect();
    let mut all = Stats::default();
    for handle in handles {
        match handle.await {
            Ok(stats) => all.merge(stats),
            Err(error) => all.error(format!("worker panicked: {error}")),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.latencies_ns.sort_unstable();
    RateRound {
        rate: all.successes as f64 / elapsed,
        p50_us: percentile_us(&all.latencies_ns, 0.50),
        p99_us: percentile_us(&all.latencies_ns, 0.99),
        max_us: percentile_us(&all.latencies_ns, 1.0),
        stats: all,
        cpu_us: None,
        waiting: None,
    }
}

/// `round`, with the CPU time the process tree of `pid` spent during it per successful operation, and the share
/// of the round it spent runnable but waiting for a core.
pub async fn with_proxy_cpu(pid: Option<u32>, round: impl Future<Output = RateRound>) -> RateRound {
    let Some(pid) = pid else {
        return round.await;
    };
    let (started, (running_before, waiting_before)) = (Instant::now(), tree_cpu_ns(pid));
    let mut round = round.await;
    let (running_after, waiting_after) = tree_cpu_ns(pid);
    if round.stats.successes > 0 {
        round.cpu_us =
            Some(running_after.saturating_sub(running_before) as f64 / round.stats.successes as f64 / 1000.0);
        round.waiting = Some(waiting_after.saturating_sub(waiting_before) as f64 / started.elapsed().as_nanos() as f64);
    }
    round
}

/// Takes one unit of the shared operation budget.
pub fn take_from_budget(budget: &AtomicU64) -> bool {
    budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok()
}

/// Scenario a: keep-alive GETs (absolute-form through a proxy, origin-form direct).
pub async fn keep_alive_gets(route: &Route, duration: Duration) -> RateRound {
    keep_alive_gets_at(route, duration, None).await
}

/// Scenario a paced: `rate` requests/s over the same connections (`run_keep_alive_load`), or back to back.
pub async fn keep_alive_gets_at(route: &Route, duration: Duration, rate: Option<u32>) -> RateRound {
    let load = KeepAliveLoad {
        connections: KEEP_ALIVE_CONNECTIONS,
        request: Arc::new(route.keep_alive_get()),
        body_length: SMALL_BODY_LENGTH as u64,
        tunnel: false,
        opened_ahead: Vec::new(),
        rate,
        max_requests: KEEP_ALIVE_MAX_REQUESTS,
    };
    run_keep_alive_load(route, duration, load).await
}

/// A keep-alive load: `connections` connections, each sending `request` and reading its answer, one at a time.
pub struct KeepAliveLoad {
    pub connections: usize,
    pub request: Arc<Vec<u8>>,
    /// The body length of the expected `200`.
    pub body_length: u64,
    /// Each connection is `Route::tunnel` (CONNECT, then TLS inside when the route says so); else
    /// `Route::open`, the proxy connection itself (absolute-form requests).
    pub tunnel: bool,
    /// Connections opened before the clock started (`open_ahead`), taken by the first workers; the others open
    /// theirs on the clock.
    pub opened_ahead: Vec<Connection>,
    /// Paced: requests/s over all connections, in evenly spaced slots; `None`: each connection back to back.
    pub rate: Option<u32>,
    pub max_requests: u64,
}

/// Runs a keep-alive load for `duration`. Paced, a connection takes the next free slot (`start + k / rate`), waits
/// for it, and sends: open loop as long as a connection is free, latency from the send.
pub async fn run_keep_alive_load(route: &Route, duration: Duration, load: KeepAliveLoad) -> RateRound {
    let route = route.clone();
    let slots = Arc::new(AtomicU64::new(0));
    let KeepAliveLoad { connections, request, body_length, tunnel, opened_ahead, rate, max_requests } = load;
    let interval = rate.map(|rate| Duration::from_secs(1) / rate.max(1));
    let opened_ahead = Arc::new(Mutex::new(opened_ahead));
    run_workers(connections, duration, max_requests, move |deadline, budget| {
        let (request, route, slots) = (request.clone(), route.clone(), slots.clone());
        let start = deadline - duration;
        let mut connection: Option<Connection> = opened_ahead.lock().ok().and_then(|mut opened| opened.pop());
        async move {
            let mut stats = Stats::default();
            stats.connections_opened += u64::from(connection.is_some());
            while Instant::now() < deadline && stats.errors < MAX_ERRORS_PER_WORKER && take_from_budget(&budget) {
                if let Some(interval) = interval {
                    let slot = start + interval * slots.fetch_add(1, Ordering::Relaxed) as u32;
                    if slot >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(slot.into()).await;
                    if slot.elapsed() > PACE_SLACK {
                        stats.late += 1;
                    }
                }
                let started = Instant::now();
                let outcome = timeout(IO_TIMEOUT, async {
                    let mut retried = false;
                    loop {
                        let reused = connection.is_some();
                        if !reused {
                            connection = Some(if tunnel {
                                route.tunnel(SMALL_READ_BUFFER).await?
                            } else {
                                route.open(SMALL_READ_BUFFER).await?
                            });
                            stats.connections_opened += 1;
                        }
                        let open = connection.as_mut().expect("connection just opened");
                        let seen = open.read_bytes;
                        match exchange(open, &request).await {
                            // The peer closed a kept-alive connection before answering: what
                            // any HTTP client does is retry on a new connection (counted).
                            Err(error) if reused && !retried && open.read_bytes == seen && closed_by_peer(&error) => {
                                connection = None;
                                retried = true;
                                stats.stale += 1;
                            }
                            answered => return answered,
                        }
                    }
                })
                .await;
                match outcome {
                    Ok(Ok(response)) => {
                        if response.status == 200 && response.body_length == body_length {
                            stats.record(started);
                        } else {
                            stats.error(format!("status {} body {}", response.status, response.body_length));
                        }
                        if !response.keep_alive {
                            connection = None;
                        }
                    }
                    Ok(Err(error)) => {
                        stats.error(error);
                        connection = None;
                        sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => {
                        stats.error("timeout");
                        connection = None;
                    }
                }
            }
            stats
        }
    })
    .await
}

/// `count` connections by `route` (`Route::tunnel` with `tunnel`, else `Route::open`), opened concurrently before
/// a load starts, so that its clock measures the steady state; those that fail are left out.
pub async fn open_ahead(route: &Route, count: usize, tunnel: bool) -> Vec<Connection> {
    let handles: Vec<_> = (0..count)
        .map(|_| {
            let route = route.clone();
            tokio::spawn(async move {
                let open = async {
                    if tunnel {
                        route.tunnel(SMALL_READ_BUFFER).await
                    } else {
                        route.open(SMALL_READ_BUFFER).await
                    }
                };
                timeout(IO_TIMEOUT, open).await.ok().and_then(Result::ok)
            })
        })
        .collect();
    let mut opened = Vec::with_capacity(count);
    for handle in handles {
        opened.extend(handle.await.ok().flatten());
    }
    opened
}

/// Scenario b: CONNECT + one GET + close (direct: connect + one GET + close).
pub async fn connect_get_close(route: &Route, duration: Duration) -> RateRound {
    let get = Arc::new(route.origin_form_get("/"));
    let route = route.clone();
    run_workers(CONNECT_WORKERS, duration, CONNECT_MAX_OPERATIONS, move |deadline, budget| {
        let get = get.clone();
        let route = route.clone();
        async move {
            let mut stats = Stats::default();
            while Instant::now() < deadline && stats.errors < MAX_ERRORS_PER_WORKER && take_from_budget(&budget) {
                let started = Instant::now();
                let outcome = timeout(IO_TIMEOUT, async {
                    let mut connection = route.tunnel(SMALL_READ_BUFFER).await?;
                    connection.send(&get).await?;
                    connection.response(false).await
                    // `connection` is dropped here: the client closes.
                })
                .await;
                stats.connections_opened += 1;
                match outcome {
                    Ok(Ok(response)) if response.status == 200 && response.body_length == SMALL_BODY_LENGTH as u64 => {
                        stats.record(started)
                    }
                    Ok(Ok(response)) => {
                        stats.error(format!("status {} body {}", response.status, response.body_length))
                    }
                    Ok(Err(error)) => {
                        stats.error(error);
                        sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => stats.error("timeout"),
                }
            }
            stats
        }
    })
    .await
}

/// One round of scenario c.
pub struct BulkRound {
    pub mib_per_second: f64,
    /// CPU time per MiB carried (µs): the proxy's process tree (all threads, kernel included), when there is a
    /// proxy, and this harness's (the client reading and the origin writing, on core 0).
    pub proxy_cpu_us_per_mib: Option<f64>,
    pub harness_cpu_us_per_mib: f64,
    /// The share of the download the proxy was on a core (1.0: its core was saturated).
    pub proxy_busy: Option<f64>,
}

impl BulkRound {
    /// The round on one line of the progress section.
    pub fn describe(&self) -> String {
        let mut text =
            format!("{:.0} MiB/s, harness CPU {:.0} µs per MiB", self.mib_per_second, self.harness_cpu_us_per_mib);
        if let (Some(cpu), Some(busy)) = (self.proxy_cpu_us_per_mib, self.proxy_busy) {
            let _ =
                write!(text, ", proxy CPU {cpu:.0} µs per MiB, proxy on its core {:.0}% of the download", busy * 100.0);
        }
        text
    }
}

/// Scenario c: 1 GiB through one tunnel (direct: a straight download), MiB/s, with the CPU time of the proxy `pid`
/// (if any) and of this harness per MiB.
pub async fn bulk_download(route: &Route, pid: Option<u32>) -> Result<BulkRound, String> {
    let outcome = timeout(BULK_TIMEOUT, async {
        let mut connection = route.tunnel(BULK_READ_BUFFER).await?;
        let (proxy_before, harness_before) = (pid.map(tree_cpu_ns), process_cpu_ns(std::process::id()));
        let started = Instant::now();
        connection.send(&route.origin_form_get("/bulk")).await?;
        let response = connection.response(false).await?;
        let elapsed = started.elapsed();
        let (proxy_after, harness_after) = (pid.map(tree_cpu_ns), process_cpu_ns(std::process::id()));
        let proxy_ns = proxy_before.zip(proxy_after).map(|((before, _), (after, _))| after.saturating_sub(before));
        Ok::<_, io::Error>((response, elapsed, proxy_ns, harness_after.0.saturating_sub(harness_before.0)))
    })
    .await;
    match outcome {
        Ok(Ok((response, elapsed, proxy_ns, harness_ns)))
            if response.status == 200 && response.body_length == BULK_LENGTH =>
        {
            let mib = response.body_length as f64 / (1024.0 * 1024.0);
            Ok(BulkRound {
                mib_per_second: mib / elapsed.as_secs_f64(),
                proxy_cpu_us_per_mib: proxy_ns.map(|ns| ns as f64 / 1000.0 / mib),
                harness_cpu_us_per_mib: harness_ns as f64 / 1000.0 / mib,
                proxy_busy: proxy_ns.map(|ns| ns as f64 / elapsed.as_nanos() as f64),
            })
        }
        Ok(Ok((response, ..))) => Err(format!("status {} body {} bytes", response.status, response.body_length)),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("not done within {BULK_TIMEOUT:?}")),
    }
}

/// One round of scenario d.
pub struct MemoryRound {
    pub kib_per_tunnel: f64,
    pub opened: usize,
    /// The summed RSS of the proxy's process tree before and after opening the tunnels.
    pub before_kib: u64,
    pub after_kib: u64,
    pub processes: usize,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// Scenario d: open `tunnels` idle CONNECT tunnels to the origin, compare the proxy's RSS.
pub async fn idle_tunnel_memory(proxy: &Proxy, route: &Route, tunnels: usize) -> Result<MemoryRound, String> {
    let pid = proxy.pid();
    // Warm up: a few tunnels used and closed, so one-time allocations are not counted.
    let get = route.origin_form_get("/");
    for _ in 0..20 {
        let outcome = timeout(IO_TIMEOUT, async {
            let mut connection = route.tunnel(SMALL_READ_BUFFER).await?;
            connection.send(&get).await?;
            connection.response(false).await
        })
        .await;
        if !matches!(outcome, Ok(Ok(ref response)) if response.status == 200) {
            return Err("warm-up tunnel failed".into());
        }
    }
    sleep(Duration::from_millis(500)).await;
    let (before_kib, _) = tree_rss_kib(pid).ok_or("cannot read /proc/PID/status")?;

    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + TUNNELS_OPEN_TIMEOUT;
    let handles: Vec<_> = (0..TUNNEL_OPENERS.min(tunnels))
        .map(|_| {
            let next = next.clone();
            let route = route.clone();
            tokio::spawn(async move {
                let mut open = Vec::new();
                let mut errors = 0u64;
                let mut last_error = None;
                while Instant::now() < deadline
                    && errors < MAX_ERRORS_PER_WORKER
                    && (next.fetch_add(1, Ordering::Relaxed) as usize) < tunnels
                {
                    match timeout(IO_TIMEOUT, route.tunnel(1024)).await {
                        Ok(Ok(connection)) => open.push(connection),
                        Ok(Err(error)) => {
                            errors += 1;
                            last_error = Some(error.to_string());
                        }
                        Err(_) => {
                            errors += 1;
                            last_error = Some("timeout".to_string());
                        }
                    }
                }
                (open, errors, last_error)
            })
        })
        .collect();
    let mut open_tunnels = Vec::with_capacity(tunnels);
    let mut errors = 0;
    let mut last_error = None;
    for handle in handles {
        if let Ok((open, opener_errors, opener_last_error)) = handle.await {
            open_tunnels.extend(open);
            errors += opener_errors;
            if opener_last_error.is_some() {
                last_error = opener_last_error;
            }
        }
    }
    if open_tunnels.is_empty() {
        return Err(format!("no tunnel opened ({errors} errors, last: {})", last_error.unwrap_or_default()));
    }
    sleep(Duration::from_secs(1)).await;
    let (after_kib, processes) = tree_rss_kib(pid).ok_or("cannot read /proc/PID/status")?;
    // Check that the last tunnel still carries traffic.
    if let Some(connection) = open_tunnels.last_mut() {
        let outcome = timeout(IO_TIMEOUT, async {
            connection.send(&get).await?;
            connection.response(false).await
        })
        .await;
        if !matches!(outcome, Ok(Ok(ref response)) if response.status == 200) {
            errors += 1;
            last_error = Some("an open tunnel did not carry a GET".into());
        }
    }
    let opened = open_tunnels.len();
    drop(open_tunnels);
    Ok(MemoryRound {
        kib_per_tunnel: (after_kib as f64 - before_kib as f64) / opened as f64,
        opened,
        before_kib,
        after_kib,
        processes,
        errors,
        last_error,
    })
}
