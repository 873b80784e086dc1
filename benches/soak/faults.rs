//! Run `faults`: upstreams that misbehave, asked at a steady rate through the forward proxy and through intercepted
//! tunnels: one resets the connection after the request, one never answers (tollgate's `upstream.idle_timeout` is
//! 2 s here), one sends its body slowly, one answers a TLS ClientHello with plain text, and a port that refuses.
//! Every client must get a clear status (502 or 504 with the error contract, or the slow body whole), and once the
//! load stops tollgate's connections, tunnels and descriptors go back to the baseline and its RSS near it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

use crate::gateway::{serve_each, start, Settings, FAULT_DOMAIN};
use crate::host::free_port;
use crate::proxies::Harness;
use crate::route::Route;
use crate::traffic::{self, Expect, Kind, Stream};
use crate::verdict::Verdict;
use crate::watch::{sample, settle_to, Watch};

/// What a fault upstream does once it has read a request head (or, for TLS, the ClientHello).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    /// Closes with a TCP reset (SO_LINGER 0).
    Reset,
    /// Never answers; holds the connection until tollgate closes it (at most `STALL_AT_MOST`).
    Stall,
    /// Answers 200 with a body of `SLOW_PIECES` pieces, `SLOW_GAP` apart.
    SlowBody,
    /// Answers whatever comes (a TLS ClientHello) with a plain HTTP response: the TLS handshake fails.
    NotTls,
}

/// A stalled upstream connection is dropped after this long if tollgate keeps it.
const STALL_AT_MOST: Duration = Duration::from_secs(60);
/// The slow body: pieces and the pause between them.
const SLOW_PIECES: usize = 20;
const SLOW_GAP: Duration = Duration::from_millis(50);
const SLOW_PIECE: &[u8] = b"0123456789";
/// Requests of the whole run at most.
const MAX_REQUESTS: u64 = 5_000_000;

/// Starts a fault upstream; its address.
async fn fault_upstream(fault: Fault) -> Result<SocketAddr, String> {
    serve_each("a fault upstream", move |stream| async move {
        let _ = misbehave(stream, fault).await;
    })
    .await
}

async fn misbehave(mut stream: TcpStream, fault: Fault) -> io::Result<()> {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut read = 0;
    // The request head (or the ClientHello's first read).
    loop {
        let more = timeout(Duration::from_secs(10), stream.read(&mut buffer[read..])).await??;
        if more == 0 {
            return Ok(());
        }
        read += more;
        if fault == Fault::NotTls
            || buffer[..read].windows(4).any(|window| window == b"\r\n\r\n")
            || read == buffer.len()
        {
            break;
        }
    }
    match fault {
        Fault::Reset => {
            socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
            drop(stream);
        }
        Fault::Stall => {
            // Read (and drop) until tollgate gives up and closes.
            let _ = timeout(STALL_AT_MOST, async {
                while stream.read(&mut buffer).await? > 0 {}
                Ok::<_, io::Error>(())
            })
            .await;
        }
        Fault::SlowBody => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                SLOW_PIECES * SLOW_PIECE.len()
            );
            stream.write_all(head.as_bytes()).await?;
            for _ in 0..SLOW_PIECES {
                sleep(SLOW_GAP).await;
                stream.write_all(SLOW_PIECE).await?;
            }
            // Keep-alive: wait for the next request or the close, briefly.
            let _ = timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
        }
        Fault::NotTls => {
            stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
        }
    }
    Ok(())
}

/// An absolute-form GET through the forward proxy to `address`, closing after the answer.
fn forward_get(address: SocketAddr) -> Vec<u8> {
    format!("GET http://{address}/fault HTTP/1.1\r\nHost: {address}\r\nUser-Agent: tollgate-soak\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// Runs it for `length`.
pub async fn run(harness: &mut Harness, length: Duration) -> Result<Verdict, String> {
    let quick = length < Duration::from_secs(30);
    let reset = fault_upstream(Fault::Reset).await?;
    let stall = fault_upstream(Fault::Stall).await?;
    let slow = fault_upstream(Fault::SlowBody).await?;
    let not_tls = fault_upstream(Fault::NotTls).await?;
    // A port nothing listens on (free a moment ago).
    let refused: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let host = |name: &str| format!("{name}.{FAULT_DOMAIN}");
    let settings = Settings {
        upstream: "idle_timeout: 2s, connect_timeout: 2s".into(),
        intercepted: vec![
            (host("reset"), format!("http://{reset}")),
            (host("stall"), format!("http://{stall}")),
            (host("tls"), format!("https://{not_tls}")),
            (host("refused"), format!("http://{refused}")),
        ],
        ..Settings::default()
    };
    let gateway = start(harness, "tollgate-faults", &settings).await?;
    let intercepted = |name: &str| gateway.intercepted_route(&host(name));
    let forward = gateway.forward.clone();
    let forward_expect = |statuses: &[u16]| Expect { statuses: statuses.to_vec(), anthropic: false };
    let model_expect = |statuses: &[u16]| Expect { statuses: statuses.to_vec(), anthropic: true };
    let probe = |name: &'static str, route: Route, request: Vec<u8>, expect: Expect, workers: usize| Stream {
        name,
        kind: Kind::Probe { request: Arc::new(request), expect },
        route,
        workers,
        pause: Duration::from_millis(50),
    };
    let messages = |route: &Route| route.messages_request(false);
    let reset_route = intercepted("reset")?;
    let stall_route = intercepted("stall")?;
    let tls_route = intercepted("tls")?;
    let refused_route = intercepted("refused")?;
    let streams = vec![
        probe("forward, upstream resets → 502", forward.clone(), forward_get(reset), forward_expect(&[502]), 2),
        probe("forward, upstream stalls → 504", forward.clone(), forward_get(stall), forward_expect(&[504]), 4),
        probe("forward, slow body → 200, whole", forward.clone(), forward_get(slow), forward_expect(&[200]), 2),
        probe("forward, connection refused → 502", forward.clone(), forward_get(refused), forward_expect(&[502]), 1),
        probe(
            "intercepted, upstream resets → 502",
            reset_route.clone(),
            messages(&reset_route),
            model_expect(&[502]),
            2,
        ),
        probe(
            "intercepted, upstream stalls → 504",
            stall_route.clone(),
            messages(&stall_route),
            model_expect(&[504]),
            4,
        ),
        probe(
            "intercepted, upstream TLS fails → 502",
            tls_route.clone(),
            messages(&tls_route),
            model_expect(&[502]),
            2,
        ),
        probe(
            "intercepted, connection refused → 502",
            refused_route.clone(),
            messages(&refused_route),
            model_expect(&[502]),
            1,
        ),
        Stream {
            name: "forward keep-alive GET to a healthy origin",
            kind: Kind::Forward,
            route: forward.clone(),
            workers: 2,
            pause: Duration::from_millis(10),
        },
    ];
    // The baseline after one round of every fault, so lazily made state (leaves, pools, the resolver) is in it.
    let warm = traffic::start(streams_once(&streams), Duration::from_secs(20), 1_000);
    sleep(Duration::from_secs(3)).await;
    warm.finish().await;
    let baseline = settle_to(
        gateway.pid(),
        gateway.admin,
        &sample(gateway.pid(), gateway.admin, 0.0).await,
        0,
        Duration::from_secs(5),
    )
    .await;
    println!("- baseline (after one round of each fault): {}", baseline.describe());
    let every = if quick { Duration::from_secs(2) } else { Duration::from_secs(5) };
    let watch = Watch::start(gateway.pid(), gateway.admin, every, true);
    let load = traffic::start(streams, length, MAX_REQUESTS);
    sleep(length).await;
    let lines = load.describe();
    let tallies: Vec<(&'static str, (u64, u64))> =
        load.tallies.iter().map(|(name, tally)| (*name, tally.counts())).collect();
    load.finish().await;
    let samples = watch.finish().await;
    // Stalled upstream connections end when tollgate's idle timeout fires: give it that and some.
    let after = settle_to(gateway.pid(), gateway.admin, &baseline, 0, Duration::from_secs(20)).await;

    let mut verdict = Verdict::new("faults");
    for ((name, (ok, failed)), line) in tallies.iter().zip(&lines) {
        verdict.check(*failed == 0 && *ok > 0, line.clone());
        let _ = name;
    }
    let peak = samples.iter().map(|sample| sample.rss_kib).max().unwrap_or(0);
    let peak_descriptors = samples.iter().map(|sample| sample.descriptors).max().unwrap_or(0);
    verdict.check(
        after.back_to(&baseline, 0),
        format!(
            "after the load, connections, tunnels and descriptors back to the baseline: {} (baseline {}; peak {} \
             descriptors)",
            after.describe(),
            baseline.describe(),
            peak_descriptors
        ),
    );
    let rss_bound_kib = baseline.rss_kib + (baseline.rss_kib / 5).max(8 * 1024);
    verdict.check(
        after.rss_kib <= rss_bound_kib,
        format!(
            "RSS back near the baseline: {:.1} MiB after, {:.1} MiB baseline, {:.1} MiB peak (bound {:.1} MiB)",
            after.rss_kib as f64 / 1024.0,
            baseline.rss_kib as f64 / 1024.0,
            peak as f64 / 1024.0,
            rss_bound_kib as f64 / 1024.0
        ),
    );
    Ok(verdict)
}

/// The same streams with one worker each (the warm-up round).
fn streams_once(streams: &[Stream]) -> Vec<Stream> {
    streams
        .iter()
        .map(|stream| Stream {
            name: stream.name,
            kind: stream.kind.clone(),
            route: stream.route.clone(),
            workers: 1,
            pause: Duration::from_millis(200),
        })
        .collect()
}
