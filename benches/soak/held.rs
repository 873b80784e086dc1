//! Run `connections`: 10,000 client connections opened to the forward proxy and held, each sending a GET now and
//! then (every 20 s) so it stays a live keep-alive connection, while other workers send GETs back to back; RSS,
//! descriptors and open connections reported while they are held, and everything back to the baseline once they
//! close.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::time::{sleep, timeout};

use crate::client::Connection;
use crate::gateway::{start, Settings};
use crate::parameters::IO_TIMEOUT;
use crate::proxies::Harness;
use crate::route::Route;
use crate::traffic::{self, describe, read_response, Kind, Stream, Tally};
use crate::verdict::Verdict;
use crate::watch::{sample, settle_to, Watch};

/// A held connection sends a GET this often (tollgate closes keep-alive connections idle for 60 s).
const TOUCH_EVERY: Duration = Duration::from_secs(20);
/// Connections being opened at once.
const OPENING_AT_ONCE: usize = 200;
/// Time allowed to open them all.
const OPEN_WITHIN: Duration = Duration::from_secs(180);
/// Read buffer of a held connection (a response head and 100 bytes).
const HELD_READ_BUFFER: usize = 2048;
/// Descriptors the harness needs besides the held connections (origin side, workers, /proc).
pub const SPARE_DESCRIPTORS: u64 = 4096;

/// Runs it: `count` connections held for `length` once open; `open_files` is this process's descriptor limit.
pub async fn run(harness: &mut Harness, length: Duration, count: usize, open_files: u64) -> Result<Verdict, String> {
    if open_files < count as u64 + SPARE_DESCRIPTORS {
        return Err(format!(
            "RLIMIT_NOFILE is {open_files}; {count} connections need about {}",
            count as u64 + SPARE_DESCRIPTORS
        ));
    }
    // Room for the held connections, the workers' and the admin scrapes.
    let settings = Settings { server: format!("max_connections: {}", count + 1000), ..Settings::default() };
    let gateway = start(harness, "tollgate-connections", &settings).await?;
    let baseline = sample(gateway.pid(), gateway.admin, 0.0).await;
    println!("- baseline: {}", baseline.describe());
    let watch = Watch::start(gateway.pid(), gateway.admin, Duration::from_secs(5), true);

    let hot = traffic::start(
        vec![Stream {
            name: "forward keep-alive GET, back to back",
            kind: Kind::Forward,
            route: gateway.forward.clone(),
            workers: 4,
            pause: Duration::from_millis(2),
        }],
        OPEN_WITHIN + length,
        50_000_000,
    );

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let held = Arc::new(Tally::default());
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(count);
    for index in 0..count {
        let (route, stop, opened, held, opening) =
            (gateway.forward.clone(), stop.clone(), opened.clone(), held.clone(), opening.clone());
        // Touches spread evenly over the interval.
        let offset = TOUCH_EVERY.mul_f64(index as f64 / count as f64);
        handles.push(tokio::spawn(hold(route, stop, opened, held, opening, offset)));
    }
    while opened.load(Ordering::Relaxed) + held.counts().1 < count as u64 && started.elapsed() < OPEN_WITHIN {
        sleep(Duration::from_millis(200)).await;
    }
    let open_seconds = started.elapsed().as_secs_f64();
    let all_open = opened.load(Ordering::Relaxed);
    println!("- {all_open} of {count} connections open after {open_seconds:.1} s");
    let holding = sample(gateway.pid(), gateway.admin, started.elapsed().as_secs_f64()).await;
    println!("- holding: {}", holding.describe());
    sleep(length).await;
    let still = sample(gateway.pid(), gateway.admin, started.elapsed().as_secs_f64()).await;
    println!("- after {:.0} s held: {}", length.as_secs_f64(), still.describe());

    stop.store(true, Ordering::Relaxed);
    let (hot_ok, hot_failed) = hot.counts();
    let hot_line = hot.describe();
    hot.finish().await;
    for handle in handles {
        let _ = timeout(TOUCH_EVERY + IO_TIMEOUT, handle).await;
    }
    let samples = watch.finish().await;
    let after = settle_to(gateway.pid(), gateway.admin, &baseline, 0, Duration::from_secs(30)).await;

    let mut verdict = Verdict::new("connections");
    let (touches, touch_failures) = held.counts();
    verdict.check(
        all_open == count as u64,
        format!("{all_open} of {count} connections opened (each with one GET) in {open_seconds:.1} s"),
    );
    let gauge = |reading: Option<f64>| reading.unwrap_or(0.0);
    verdict.check(
        gauge(still.connections) >= count as f64,
        format!(
            "still open after {:.0} s: tollgate_connections_active {:.0} (with the workers'), {} descriptors",
            length.as_secs_f64(),
            gauge(still.connections),
            still.descriptors
        ),
    );
    verdict.check(
        touch_failures == 0 && hot_failed == 0,
        format!(
            "held connections: {touches} GETs, {touch_failures} failed ({}); {}",
            held.describe(),
            hot_line.join("; ")
        ),
    );
    let per_connection_kib = (holding.rss_kib as f64 - baseline.rss_kib as f64) / (all_open.max(1) as f64);
    verdict.note(format!(
        "RSS {:.1} MiB at baseline, {:.1} MiB with {all_open} connections held ({per_connection_kib:.1} KiB per \
         connection), {:.1} MiB after {:.0} s held, max {:.1} MiB; descriptors {} → {} → {}",
        baseline.rss_kib as f64 / 1024.0,
        holding.rss_kib as f64 / 1024.0,
        still.rss_kib as f64 / 1024.0,
        length.as_secs_f64(),
        samples.iter().map(|sample| sample.rss_kib).max().unwrap_or(0) as f64 / 1024.0,
        baseline.descriptors,
        holding.descriptors,
        still.descriptors
    ));
    verdict.note(format!("forward GETs back to back meanwhile: {hot_ok} ok"));
    verdict.check(
        after.back_to(&baseline, 0),
        format!("after closing them, back to the baseline: {} (baseline {})", after.describe(), baseline.describe()),
    );
    verdict.note(format!(
        "RSS after closing: {:.1} MiB (the allocator keeps some of what the peak needed)",
        after.rss_kib as f64 / 1024.0
    ));
    Ok(verdict)
}

/// One held connection: opened (taking a place among `OPENING_AT_ONCE`), one GET, then a GET every `TOUCH_EVERY`
/// (first after `offset`) until `stop`.
async fn hold(
    route: Route,
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
    tally: Arc<Tally>,
    opening: Arc<Semaphore>,
    offset: Duration,
) {
    let request = route.keep_alive_get();
    let connection = {
        let Ok(_permit) = opening.acquire().await else {
            return;
        };
        let outcome = timeout(IO_TIMEOUT, async {
            let mut connection = route.open(HELD_READ_BUFFER).await.map_err(|error| describe(&error))?;
            touch(&mut connection, &request).await.map(|()| connection)
        })
        .await;
        match outcome {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => return tally.fail(format!("open: {error}")),
            Err(_) => return tally.fail("open: timeout"),
        }
    };
    tally.ok.fetch_add(1, Ordering::Relaxed);
    opened.fetch_add(1, Ordering::Relaxed);
    let mut connection = connection;
    let mut next = Instant::now() + offset;
    loop {
        while Instant::now() < next {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            sleep((next - Instant::now()).min(Duration::from_millis(500))).await;
        }
        match timeout(IO_TIMEOUT, touch(&mut connection, &request)).await {
            Ok(Ok(())) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(error)) => return tally.fail(error),
            Err(_) => return tally.fail("GET: timeout"),
        }
        next += TOUCH_EVERY;
    }
}

/// One GET on the held connection, which must stay open.
async fn touch(connection: &mut Connection, request: &[u8]) -> Result<(), String> {
    connection.send(request).await.map_err(|error| format!("GET: {}", describe(&error)))?;
    let (head, _) = read_response(connection).await.map_err(|error| format!("GET: {}", describe(&error)))?;
    if head.status != 200 {
        return Err(format!("GET: status {}", head.status));
    }
    if !head.persistent() {
        return Err("GET: tollgate closed the connection".into());
    }
    Ok(())
}
