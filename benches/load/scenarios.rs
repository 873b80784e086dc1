//! The scenarios of the first table (a keep-alive GETs, b CONNECT + GET + close, c 1 GiB through one tunnel, d RSS
//! per idle tunnel), and the workers, statistics and rounds they share with the other scenarios.

use std::fmt::Write as _;
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
use crate::processes::{tree_cpu_ns, tree_rss_kib, Proxy};
use crate::route::Route;

#[derive(Default)]
pub struct Stats {
    pub ok: u64,
    pub errors: u64,
    pub connections_opened: u64,
    /// Requests retried on a new connection because the proxy had closed the kept-alive one.
    pub stale: u64,
    /// Paced loads: requests sent more than `PACE_SLACK` after their slot.
    pub late: u64,
    pub latencies_ns: Vec<u64>,
    /// Scenario sse: each streamed event's delay from the stub's send to the client's read.
    pub event_delays_ns: Vec<u64>,
    pub last_error: Option<String>,
}

impl Stats {
    pub fn merge(&mut self, o: Stats) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.connections_opened += o.connections_opened;
        self.stale += o.stale;
        self.late += o.late;
        self.latencies_ns.extend(o.latencies_ns);
        self.event_delays_ns.extend(o.event_delays_ns);
        if o.last_error.is_some() {
            self.last_error = o.last_error;
        }
    }

    pub fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        self.last_error = Some(e.to_string());
    }

    pub fn record(&mut self, t0: Instant) {
        self.sample(t0.elapsed().as_nanos() as u64);
    }

    /// One successful operation that took `ns`.
    pub fn sample(&mut self, ns: u64) {
        self.ok += 1;
        if self.latencies_ns.len() < MAX_SAMPLES_PER_WORKER {
            self.latencies_ns.push(ns);
        }
    }
}

pub fn percentile_us(sorted_ns: &[u64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_ns.len() - 1) as f64 * q).round() as usize;
    sorted_ns[i] as f64 / 1000.0
}

pub fn mean_us(ns: &[u64]) -> f64 {
    if ns.is_empty() {
        return f64::NAN;
    }
    ns.iter().map(|&v| v as f64).sum::<f64>() / ns.len() as f64 / 1000.0
}

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
    pub fn describe(&self, unit: &str) -> String {
        let mut s = format!(
            "{:.0} {unit}, p50 {:.0} µs, p99 {:.0} µs, {} ok, {} errors, {} connections opened",
            self.rate, self.p50_us, self.p99_us, self.stats.ok, self.stats.errors, self.stats.connections_opened
        );
        if self.stats.stale > 0 {
            let _ = write!(s, ", {} retried after the proxy closed a kept-alive connection", self.stats.stale);
        }
        if self.stats.late > 0 {
            let _ = write!(s, ", {} sent more than {PACE_SLACK:?} after their slot", self.stats.late);
        }
        if let (Some(cpu), Some(waiting)) = (self.cpu_us, self.waiting) {
            let _ = write!(
                s,
                ", proxy CPU {cpu:.1} µs per operation, runnable but waiting for its core {:.0}% of the round",
                waiting * 100.0
            );
        }
        if !self.stats.event_delays_ns.is_empty() {
            let mut ev = self.stats.event_delays_ns.clone();
            ev.sort_unstable();
            let _ = write!(
                s,
                ", {} events: delay mean {:.0} µs, p50 {:.0} µs, p99 {:.0} µs",
                ev.len(),
                mean_us(&ev),
                percentile_us(&ev, 0.50),
                percentile_us(&ev, 0.99)
            );
        }
        if let Some(e) = &self.stats.last_error {
            let _ = write!(s, " (last error: {e})");
        }
        s
    }
}

/// Runs `workers` copies of a worker for `dur`, bounded by `max_ops` in total.
pub async fn run_workers<F, Fut>(workers: usize, duration: Duration, max_ops: u64, worker: F) -> RateRound
where
    F: Fn(Instant, Arc<AtomicU64>) -> Fut,
    Fut: std::future::Future<Output = Stats> + Send + 'static,
{
    let budget = Arc::new(AtomicU64::new(max_ops));
    let start = Instant::now();
    let deadline = start + duration;
    let handles: Vec<_> = (0..workers).map(|_| tokio::spawn(worker(deadline, budget.clone()))).collect();
    let mut all = Stats::default();
    for h in handles {
        match h.await {
            Ok(s) => all.merge(s),
            Err(e) => all.error(format!("worker panicked: {e}")),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.latencies_ns.sort_unstable();
    RateRound {
        rate: all.ok as f64 / elapsed,
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
pub async fn with_proxy_cpu(pid: Option<u32>, round: impl std::future::Future<Output = RateRound>) -> RateRound {
    let Some(pid) = pid else {
        return round.await;
    };
    let (t0, (run0, wait0)) = (Instant::now(), tree_cpu_ns(pid));
    let mut r = round.await;
    let (run1, wait1) = tree_cpu_ns(pid);
    if r.stats.ok > 0 {
        r.cpu_us = Some(run1.saturating_sub(run0) as f64 / r.stats.ok as f64 / 1000.0);
        r.waiting = Some(wait1.saturating_sub(wait0) as f64 / t0.elapsed().as_nanos() as f64);
    }
    r
}

/// Takes one unit of the shared operation budget.
pub fn take_from_budget(budget: &AtomicU64) -> bool {
    budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1)).is_ok()
}

/// Scenario a: keep-alive GETs (absolute-form through a proxy, origin-form direct).
pub async fn keep_alive_gets(t: &Route, duration: Duration) -> RateRound {
    let load = KeepAliveLoad {
        conns: KEEP_ALIVE_CONNECTIONS,
        req: Arc::new(t.get_ka()),
        body: SMALL_BODY_LENGTH as u64,
        tunnel: false,
        warm: Vec::new(),
        rate: None,
        max_requests: KEEP_ALIVE_MAX_REQUESTS,
    };
    run_keep_alive_load(t, duration, load).await
}

/// A keep-alive load: `conns` connections, each sending `req` and reading its answer, one at a time.
pub struct KeepAliveLoad {
    pub conns: usize,
    pub req: Arc<Vec<u8>>,
    /// The body length of the expected `200`.
    pub body: u64,
    /// Each connection is `Route::tunnel` (CONNECT, then TLS inside when the target says so); else
    /// `Route::open`, the proxy connection itself (absolute-form requests).
    pub tunnel: bool,
    /// Connections opened before the clock started (`open_ahead`), taken by the first workers; the others open
    /// theirs on the clock.
    pub warm: Vec<Connection>,
    /// Paced: requests/s over all connections, in evenly spaced slots; `None`: each connection back to back.
    pub rate: Option<u32>,
    pub max_requests: u64,
}

/// Runs a keep-alive load for `dur`. Paced, a connection takes the next free slot (`start + k / rate`), waits
/// for it, and sends: open loop as long as a connection is free, latency from the send.
pub async fn run_keep_alive_load(t: &Route, duration: Duration, load: KeepAliveLoad) -> RateRound {
    let t = t.clone();
    let slots = Arc::new(AtomicU64::new(0));
    let KeepAliveLoad { conns, req, body, tunnel, warm, rate, max_requests } = load;
    let interval = rate.map(|r| Duration::from_secs(1) / r.max(1));
    let opened = Arc::new(Mutex::new(warm));
    run_workers(conns, duration, max_requests, move |deadline, budget| {
        let (req, t, slots) = (req.clone(), t.clone(), slots.clone());
        let start = deadline - duration;
        let mut conn: Option<Connection> = opened.lock().ok().and_then(|mut v| v.pop());
        async move {
            let mut stats = Stats::default();
            stats.connections_opened += u64::from(conn.is_some());
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
                let t0 = Instant::now();
                let res = timeout(IO_TIMEOUT, async {
                    let mut retried = false;
                    loop {
                        let reused = conn.is_some();
                        if !reused {
                            conn = Some(if tunnel {
                                t.tunnel(SMALL_READ_BUFFER).await?
                            } else {
                                t.open(SMALL_READ_BUFFER).await?
                            });
                            stats.connections_opened += 1;
                        }
                        let c = conn.as_mut().expect("connection just opened");
                        let seen = c.read_bytes;
                        match exchange(c, &req).await {
                            // The peer closed a kept-alive connection before answering: what
                            // any HTTP client does is retry on a new connection (counted).
                            Err(e) if reused && !retried && c.read_bytes == seen && closed_by_peer(&e) => {
                                conn = None;
                                retried = true;
                                stats.stale += 1;
                            }
                            r => return r,
                        }
                    }
                })
                .await;
                match res {
                    Ok(Ok(r)) => {
                        if r.status == 200 && r.body == body {
                            stats.record(t0);
                        } else {
                            stats.error(format!("status {} body {}", r.status, r.body));
                        }
                        if !r.keep_alive {
                            conn = None;
                        }
                    }
                    Ok(Err(e)) => {
                        stats.error(e);
                        conn = None;
                        sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => {
                        stats.error("timeout");
                        conn = None;
                    }
                }
            }
            stats
        }
    })
    .await
}

/// `n` connections to `t` (`Route::tunnel` with `tunnel`, else `Route::open`), opened concurrently before a
/// load starts, so that its clock measures the steady state; those that fail are left out.
pub async fn open_ahead(t: &Route, n: usize, tunnel: bool) -> Vec<Connection> {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move {
                let open = async {
                    if tunnel {
                        t.tunnel(SMALL_READ_BUFFER).await
                    } else {
                        t.open(SMALL_READ_BUFFER).await
                    }
                };
                timeout(IO_TIMEOUT, open).await.ok().and_then(Result::ok)
            })
        })
        .collect();
    let mut opened = Vec::with_capacity(n);
    for h in handles {
        opened.extend(h.await.ok().flatten());
    }
    opened
}

/// Scenario b: CONNECT + one GET + close (direct: connect + one GET + close).
pub async fn connect_get_close(t: &Route, duration: Duration) -> RateRound {
    let get = Arc::new(t.get_origin_form("/"));
    let t = t.clone();
    run_workers(CONNECT_WORKERS, duration, CONNECT_MAX_OPERATIONS, move |deadline, budget| {
        let get = get.clone();
        let t = t.clone();
        async move {
            let mut stats = Stats::default();
            while Instant::now() < deadline && stats.errors < MAX_ERRORS_PER_WORKER && take_from_budget(&budget) {
                let t0 = Instant::now();
                let res = timeout(IO_TIMEOUT, async {
                    let mut c = t.tunnel(SMALL_READ_BUFFER).await?;
                    c.send(&get).await?;
                    c.response(false).await
                    // `c` is dropped here: the client closes.
                })
                .await;
                stats.connections_opened += 1;
                match res {
                    Ok(Ok(r)) if r.status == 200 && r.body == SMALL_BODY_LENGTH as u64 => stats.record(t0),
                    Ok(Ok(r)) => stats.error(format!("status {} body {}", r.status, r.body)),
                    Ok(Err(e)) => {
                        stats.error(e);
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

/// Scenario c: 1 GiB through one tunnel (direct: a straight download), MiB/s.
pub async fn bulk_download(t: &Route) -> Result<f64, String> {
    let res = timeout(BULK_TIMEOUT, async {
        let mut c = t.tunnel(BULK_READ_BUFFER).await?;
        let t0 = Instant::now();
        c.send(&t.get_origin_form("/bulk")).await?;
        let r = c.response(false).await?;
        Ok::<_, io::Error>((r, t0.elapsed()))
    })
    .await;
    match res {
        Ok(Ok((r, el))) if r.status == 200 && r.body == BULK_LENGTH => {
            Ok(r.body as f64 / (1024.0 * 1024.0) / el.as_secs_f64())
        }
        Ok(Ok((r, _))) => Err(format!("status {} body {} bytes", r.status, r.body)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("not done within {BULK_TIMEOUT:?}")),
    }
}

pub struct MemoryRound {
    pub kib_per_tunnel: f64,
    pub opened: usize,
    pub before_kib: u64,
    pub after_kib: u64,
    pub processes: usize,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// Scenario d: open `n` idle CONNECT tunnels to the origin, compare the proxy's RSS.
pub async fn idle_tunnel_memory(proxy: &Proxy, t: &Route, n: usize) -> Result<MemoryRound, String> {
    let pid = proxy.pid();
    // Warm up: a few tunnels used and closed, so one-time allocations are not counted.
    let get = t.get_origin_form("/");
    for _ in 0..20 {
        let res = timeout(IO_TIMEOUT, async {
            let mut c = t.tunnel(SMALL_READ_BUFFER).await?;
            c.send(&get).await?;
            c.response(false).await
        })
        .await;
        if !matches!(res, Ok(Ok(ref r)) if r.status == 200) {
            return Err("warm-up tunnel failed".into());
        }
    }
    sleep(Duration::from_millis(500)).await;
    let (before_kib, _) = tree_rss_kib(pid).ok_or("cannot read /proc/PID/status")?;

    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + TUNNELS_OPEN_TIMEOUT;
    let handles: Vec<_> = (0..TUNNEL_OPENERS.min(n))
        .map(|_| {
            let next = next.clone();
            let t = t.clone();
            tokio::spawn(async move {
                let mut open = Vec::new();
                let mut errors = 0u64;
                let mut last_error = None;
                while Instant::now() < deadline
                    && errors < MAX_ERRORS_PER_WORKER
                    && (next.fetch_add(1, Ordering::Relaxed) as usize) < n
                {
                    match timeout(IO_TIMEOUT, t.tunnel(1024)).await {
                        Ok(Ok(c)) => open.push(c),
                        Ok(Err(e)) => {
                            errors += 1;
                            last_error = Some(e.to_string());
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
    let mut tunnels = Vec::with_capacity(n);
    let mut errors = 0;
    let mut last_error = None;
    for h in handles {
        if let Ok((open, e, le)) = h.await {
            tunnels.extend(open);
            errors += e;
            if le.is_some() {
                last_error = le;
            }
        }
    }
    if tunnels.is_empty() {
        return Err(format!("no tunnel opened ({errors} errors, last: {})", last_error.unwrap_or_default()));
    }
    sleep(Duration::from_secs(1)).await;
    let (after_kib, processes) = tree_rss_kib(pid).ok_or("cannot read /proc/PID/status")?;
    // Check that the last tunnel still carries traffic.
    if let Some(c) = tunnels.last_mut() {
        let res = timeout(IO_TIMEOUT, async {
            c.send(&get).await?;
            c.response(false).await
        })
        .await;
        if !matches!(res, Ok(Ok(ref r)) if r.status == 200) {
            errors += 1;
            last_error = Some("an open tunnel did not carry a GET".into());
        }
    }
    let opened = tunnels.len();
    drop(tunnels);
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
